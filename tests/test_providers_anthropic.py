"""AnthropicProvider against literal Messages API transcripts (prompt caching, thinking, tools)."""

from __future__ import annotations

import random

import pytest

from spendgate.providers import PROVIDERS
from spendgate.providers.anthropic import AnthropicProvider
from spendgate.providers.base import ResponseSummary
from spendgate.providers.sse import parse_event
from spendgate.usage import Usage
from tests.fake_upstream import fixture
from tests.sse_feed import feed_transcript

P = AnthropicProvider()
INFO = P.parse_request("POST", "/v1/messages", b'{"model":"claude-sonnet-4-5","stream":true}')
CACHED = Usage(input=21 + 188 + 3072, output=57, cached_input=3072, cache_write=188,
               cache_write_1h=0)



def run(raw: bytes, sizes: list[int] | None = None) -> tuple[ResponseSummary, bytes]:
    return feed_transcript(P.stream_tracker(INFO), raw, sizes)


def test_registered() -> None:
    assert isinstance(PROVIDERS["anthropic"], AnthropicProvider)
    assert PROVIDERS["anthropic"].name == "anthropic"


@pytest.mark.parametrize(("method", "path", "operation"), [
    ("POST", "/v1/messages", "chat"),
    ("POST", "/anthropic/v1/messages/", "chat"),
    ("POST", "/v1/messages/count_tokens", "other"),
    ("POST", "/v1/messages/batches", "batch_create"),
    ("GET", "/v1/messages/batches/msgbatch_01/results", "batch_results"),
    ("GET", "/v1/messages/batches/msgbatch_01", "other"),
    ("GET", "/v1/messages", "other"),
    ("GET", "/v1/models", "other"),
])
def test_operation_by_path(method: str, path: str, operation: str) -> None:
    info = P.parse_request(method, path, b'{"model":"claude-sonnet-4-5","max_tokens":1024}')
    assert info.operation == operation
    assert info.metered is (operation == "chat")


def test_request_fields_and_body_never_rewritten() -> None:
    for body in (b'{"model":"claude-sonnet-4-5","max_tokens":1024,"stream":true,"messages":[]}',
                 b'{"model":"claude-sonnet-4-5","max_tokens":1024,"messages":[]}'):
        info = P.parse_request("POST", "/v1/messages", body)
        assert info.upstream_body is body and not info.strip_usage_chunk
        assert (info.model, info.max_tokens) == ("claude-sonnet-4-5", 1024)
        assert info.stream is (b'"stream":true' in body)
        assert info.json is not None and info.json["messages"] == []
    info = P.parse_request("POST", "/v1/messages/count_tokens", b'{"model":"claude-haiku-4-5"}')
    assert (info.model, info.metered, info.max_tokens) == ("claude-haiku-4-5", False, None)


def test_absurd_max_tokens_makes_a_messages_call_invalid() -> None:
    for value, invalid in ((b"1e300", True), (b"18446744073709551616", True),
                           (b"2147483647", False), (b"64000", False)):
        body = b'{"model":"claude-haiku-4-5","max_tokens":%s,"messages":[]}' % value
        assert (P.parse_request("POST", "/v1/messages", body).invalid is not None) is invalid
        assert P.parse_request("POST", "/v1/messages/count_tokens", body).invalid is None


@pytest.mark.parametrize("body", [
    b"", b"nope", b"[]", b"\xff", b'{"model": ["x"], "max_tokens": "9", "stream": 1}',
    b'{"model":"claude"', b"{" * 5000,
])
def test_malformed_request_bodies_are_forwarded_unchanged(body: bytes) -> None:
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        info = P.parse_request("POST", path, body)
        assert info.model is None and info.upstream_body is body and info.max_tokens is None
        assert P.parse_response(info, body) == ResponseSummary()


def test_response_with_prompt_caching_and_thinking() -> None:
    s = P.parse_response(INFO, fixture("anthropic_messages_response_cached.json"))
    assert s.usage == CACHED
    assert (s.response_model, s.response_id) == ("claude-sonnet-4-5-20250929",
                                                 "msg_01Aq9w938a90dw8q4Hf2jK6M")
    assert (s.finish_reasons, s.service_tier) == (("end_turn",), "standard")
    assert s.output_text == "Short factual question.Paris is the capital of France."


def test_response_without_cache_fields_leaves_them_unreported() -> None:
    s = P.parse_response(INFO, fixture("anthropic_messages_response_tool_use.json"))
    assert s.usage == Usage(input=472, output=89)
    assert s.usage.cached_input is None and s.usage.cache_write is None
    assert s.finish_reasons == ("tool_use",)
    assert s.output_text == 'Okay, let me check the weather.{"location":"San Francisco, CA"}'


def test_thinking_tokens_are_reasoning() -> None:
    body = (b'{"content":[],"usage":{"input_tokens":10,"cache_read_input_tokens":0,'
            b'"output_tokens":300,"output_tokens_details":{"thinking_tokens":240}}}')
    assert P.parse_response(INFO, body).usage == Usage(input=10, output=300, cached_input=0,
                                                       reasoning=240)


@pytest.mark.parametrize("body", [
    b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}',
    b'{"content":"x","usage":[],"stop_reason":7}', b'{"content":[null,1,{"type":"text"}]}',
    b'{"usage":{"cache_read_input_tokens":50,"output_tokens":"5"}}', b"<html></html>",
])
def test_malformed_responses_never_raise(body: bytes) -> None:
    s = P.parse_response(INFO, body)
    assert s.usage.input is None and s.usage.output is None


def test_stream_with_prompt_caching_matches_the_non_streamed_usage() -> None:
    raw = fixture("anthropic_messages_stream_cached.sse")
    summary, kept = run(raw)
    assert kept == raw  # Anthropic events are never hidden
    assert summary.usage == CACHED
    assert (summary.response_model, summary.response_id) == ("claude-sonnet-4-5-20250929",
                                                             "msg_01Hq8mVbYq4kZt3WcJx2Rk7N")
    assert (summary.finish_reasons, summary.service_tier) == (("end_turn",), "standard")
    assert summary.output_text == ("The user asks for the capital of France."
                                   "The capital of France is Paris.")


def test_stream_with_tool_use_and_output_only_message_delta() -> None:
    summary, _ = run(fixture("anthropic_messages_stream_tool_use.sse"))
    assert summary.usage == Usage(input=472, output=89)  # not 2 (message_start) nor 91
    assert summary.finish_reasons == ("tool_use",)
    assert summary.output_text == ('Okay, let me check the weather.'
                                   '{"location": "San Francisco, CA"}')


def test_stream_cut_before_message_delta_reports_input_only() -> None:
    raw = fixture("anthropic_messages_stream_cached.sse")
    summary, _ = run(raw[:raw.index(b"event: message_delta")])
    assert summary.usage == Usage(input=3281, cached_input=3072, cache_write=188,
                                  cache_write_1h=0)
    assert summary.usage.output is None  # message_start's provisional 1 is not billed
    assert summary.output_text.endswith("is Paris.") and summary.finish_reasons == ()


def test_message_delta_values_win_and_nulls_do_not_erase() -> None:
    raw = fixture("anthropic_messages_stream_tool_use.sse").replace(
        b'"usage":{"output_tokens":89}',
        b'"usage":{"input_tokens":1503,"cache_creation_input_tokens":null,'
        b'"cache_read_input_tokens":64,"output_tokens":89,"server_tool_use":'
        b'{"web_search_requests":1}}')
    summary, _ = run(raw)
    assert summary.usage == Usage(input=1503 + 64, output=89, cached_input=64, web_search=1)


def test_cache_ttls_and_server_tools_streamed_and_not() -> None:
    # message_start has the TTL split; message_delta's usage is cumulative: it replaces.
    raw = fixture("anthropic_messages_stream_cache_ttl_web_search.sse")
    streamed, _ = run(raw)
    whole = P.parse_response(INFO, fixture("anthropic_messages_response_cache_ttl_web_search.json"))
    expected = Usage(input=10 + 3000, output=100, cached_input=0, cache_write=3000,
                     cache_write_1h=2000, web_search=4, web_fetch=1)
    assert streamed.usage == expected and whole.usage == expected
    assert streamed.service_tier == whole.service_tier == "standard"


GARBAGE = [
    b"event: error\ndata: {\"type\": \"error\", \"error\": {\"type\": \"overloaded_error\", "
    b"\"message\": \"Overloaded\"}}\n\n",
    b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":[]}\n\n",
    b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":5}}\n\n",
    b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":[1]}\n\n",
    b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\","
    b"\"delta\":{\"type\":{\"a\":1},\"text\":5}}\n\n",
    b"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":null,\"usage\":7}\n\n",
    b"event: message_delta\ndata: {\n\n", b"data: \xff\xfe\n\n", b": comment\n\n",
    b"data: [DONE]\n\n", b"event: message_delta\ndata: " + b"[" * 3000 + b"\n\n",
    b"data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":\"many\"}}\n\n",
]


def test_garbage_events_never_raise_and_are_forwarded() -> None:
    tracker = P.stream_tracker(INFO)
    assert all(tracker.feed(parse_event(raw)) for raw in GARBAGE)
    assert tracker.summary().usage.is_empty


def test_events_without_event_lines_are_read_by_type() -> None:
    raw = fixture("anthropic_messages_stream_cached.sse")
    bare = b"\n".join(line for line in raw.split(b"\n") if not line.startswith(b"event:"))
    assert run(bare)[0] == run(raw)[0]


@pytest.mark.parametrize("name", ["anthropic_messages_stream_cached.sse",
                                  "anthropic_messages_stream_tool_use.sse"])
def test_arbitrary_splits_give_the_same_result(name: str) -> None:
    raw = fixture(name)
    whole = run(raw)
    rng = random.Random(name)
    for sizes in ([1], [2, 3], [7], [64], [rng.randint(1, 300) for _ in range(50)]):
        assert run(raw, sizes) == whole
    assert run(raw.replace(b"\n", b"\r\n"), [5])[0] == whole[0]
