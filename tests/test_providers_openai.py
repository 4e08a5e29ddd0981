"""OpenAIProvider against literal transcripts in the shape OpenAI, vLLM and Ollama send."""

from __future__ import annotations

import random

import orjson
import pytest

from spendgate.providers import PROVIDERS
from spendgate.providers.base import RequestInfo, ResponseSummary
from spendgate.providers.openai import OpenAIProvider
from spendgate.providers.sse import SSEEvent, SSESplitter, parse_event
from spendgate.usage import Usage
from tests.fake_upstream import fixture
from tests.sse_feed import feed_transcript

P = OpenAIProvider()
INCLUDE = b'"stream_options":{"include_usage":true}'



def events(raw: bytes) -> list[SSEEvent]:
    splitter = SSESplitter()
    out = splitter.feed(raw)
    assert splitter.flush() == b""
    return out


def run(info: RequestInfo, raw: bytes, sizes: list[int] | None = None
        ) -> tuple[ResponseSummary, bytes]:
    return feed_transcript(P.stream_tracker(info), raw, sizes)


def chat_info(*, strip: bool, operation: str = "chat") -> RequestInfo:
    return RequestInfo(operation=operation, model="m", stream=True, upstream_body=b"{}",
                       strip_usage_chunk=strip)


def test_registered() -> None:
    assert isinstance(PROVIDERS["openai"], OpenAIProvider)
    assert PROVIDERS["openai"].name == "openai"


@pytest.mark.parametrize(("method", "path", "operation"), [
    ("POST", "/v1/chat/completions", "chat"),
    ("POST", "/chat/completions", "chat"),
    ("POST", "/openai/deployments/my-gpt4o/chat/completions", "chat"),
    ("post", "/v1/chat/completions/", "chat"),
    ("POST", "/v1/completions", "text_completion"),
    ("POST", "/v1/embeddings", "embeddings"),
    ("POST", "/openai/deployments/emb/embeddings", "embeddings"),
    ("POST", "/v1/responses", "responses"),
    ("GET", "/v1/responses/resp_123", "other"),
    ("POST", "/v1/responses/resp_123/cancel", "other"),
    ("GET", "/v1/chat/completions", "other"),
    ("GET", "/v1/models", "other"),
    ("POST", "/v1/files", "other"),
    ("POST", "/v1/audio/transcriptions", "other"),
])
def test_operation_by_path_suffix(method: str, path: str, operation: str) -> None:
    info = P.parse_request(method, path, b'{"model":"gpt-4o"}')
    assert info.operation == operation
    assert info.metered is (operation != "other")


def test_other_reads_model_from_json_only() -> None:
    body = b'{"input_file_id":"file-abc","endpoint":"/v1/chat/completions","model":"gpt-4o"}'
    info = P.parse_request("POST", "/v1/batches", body)
    assert (info.model, info.metered, info.upstream_body) == ("gpt-4o", False, body)
    multipart = b'--xyz\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
    info = P.parse_request("POST", "/v1/audio/transcriptions", multipart)
    assert (info.model, info.json, info.upstream_body) == (None, None, multipart)
    assert P.parse_request("GET", "/v1/models", b"").model is None
    assert P.parse_response(info, fixture("openai_chat_response.json")) == ResponseSummary()


def test_azure_deployment_is_the_model_when_body_has_none() -> None:
    path = "/openai/deployments/my-gpt4o/chat/completions"
    info = P.parse_request("POST", path, b'{"messages":[{"role":"user","content":"hi"}]}')
    assert info.model == "my-gpt4o"
    assert P.parse_request("POST", path, b'{"model":"gpt-4o","messages":[]}').model == "gpt-4o"
    assert P.parse_request("POST", path, b"garbage").model == "my-gpt4o"


@pytest.mark.parametrize(("path", "body", "expected"), [
    ("/v1/chat/completions", b'{"model":"m","max_tokens":100}', 100),
    ("/v1/chat/completions", b'{"model":"m","max_completion_tokens":2000}', 2000),
    ("/v1/completions", b'{"model":"m","max_tokens":16}', 16),
    ("/v1/responses", b'{"model":"m","max_output_tokens":512}', 512),
    ("/v1/chat/completions", b'{"model":"m","max_tokens":"lots"}', None),
    ("/v1/chat/completions", b'{"model":"m","max_tokens":true}', None),
    ("/v1/embeddings", b'{"model":"m","input":"x"}', None),
])
def test_max_tokens(path: str, body: bytes, expected: int | None) -> None:
    assert P.parse_request("POST", path, body).max_tokens == expected


@pytest.mark.parametrize(("path", "field", "value", "invalid"), [
    ("/v1/chat/completions", "max_tokens", "2147483647", False),
    ("/v1/chat/completions", "max_tokens", "2147483648", True),
    ("/v1/chat/completions", "max_tokens", "1e300", True),
    ("/v1/chat/completions", "max_tokens", "Infinity", True),
    ("/v1/chat/completions", "max_tokens", "NaN", False),        # not a count: upstream's call
    ("/v1/chat/completions", "max_tokens", "-1", False),
    ("/v1/chat/completions", "max_completion_tokens", "9223372036854775808", True),
    ("/v1/completions", "n", "1e19", True),
    ("/v1/responses", "max_output_tokens", "1" + "0" * 400, True),
    ("/v1/embeddings", "max_tokens", "1e300", True),             # bounded whatever the operation
    ("/v1/models", "max_tokens", "1e300", False),                # unmetered: not ours to judge
])
def test_absurd_limits_make_the_request_invalid(path: str, field: str, value: str,
                                                invalid: bool) -> None:
    body = b'{"model":"m","%s":%s}' % (field.encode(), value.encode())
    info = P.parse_request("POST", path, body)
    assert (info.invalid is not None) is invalid
    if invalid:
        assert info.invalid is not None and field in info.invalid and "2147483647" in info.invalid


def test_n_is_read_once_as_choices() -> None:
    for n, choices in (("3", 3), ("3.0", 3), ("0", 1), ("true", 1), ('"4"', 1), ("2.5", 1)):
        body = b'{"model":"m","n":%s}' % n.encode()
        assert P.parse_request("POST", "/v1/chat/completions", body).choices == choices


def test_non_stream_body_is_the_same_object() -> None:
    body = b'{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}'
    info = P.parse_request("POST", "/v1/chat/completions", body)
    assert info.upstream_body is body
    assert (info.stream, info.strip_usage_chunk, info.json) == (False, False, orjson.loads(body))


@pytest.mark.parametrize("body", [
    b'{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}',
    b'  \n{ "model" : "gpt-4o",\n  "stream": true,\n  "temperature": 0.70 }\n',
    b'{"stream":true}',
])
def test_stream_without_options_gets_a_byte_insertion(body: bytes) -> None:
    info = P.parse_request("POST", "/v1/chat/completions", body)
    brace = body.index(b"{") + 1
    assert info.upstream_body == body[:brace] + INCLUDE + b"," + body[brace:]
    assert orjson.loads(info.upstream_body) == {
        **orjson.loads(body), "stream_options": {"include_usage": True}}
    assert info.stream and info.strip_usage_chunk
    assert "stream_options" not in info.json  # type: ignore[operator]  # caller's view


def test_byte_insertion_into_an_empty_object() -> None:
    from spendgate.providers.openai import _with_include_usage

    out = _with_include_usage(b" {\n} ", {})
    assert out == b" {" + INCLUDE + b"\n} "
    assert orjson.loads(out) == {"stream_options": {"include_usage": True}}


@pytest.mark.parametrize(("options", "expected"), [
    ({"continuous_usage_stats": True}, {"continuous_usage_stats": True, "include_usage": True}),
    ({"include_usage": False, "include_obfuscation": False},
     {"include_usage": True, "include_obfuscation": False}),
    (None, {"include_usage": True}),
])
def test_existing_stream_options_are_kept(options: object, expected: dict[str, bool]) -> None:
    body = orjson.dumps({"model": "m", "stream": True, "stream_options": options, "n": 2})
    info = P.parse_request("POST", "/v1/completions", body)
    assert orjson.loads(info.upstream_body) == {
        "model": "m", "stream": True, "stream_options": expected, "n": 2}
    assert info.strip_usage_chunk


def test_include_usage_already_true_is_untouched() -> None:
    body = b'{"model":"m","stream":true,"stream_options":{"include_usage":true}}'
    info = P.parse_request("POST", "/v1/chat/completions", body)
    assert info.upstream_body is body and not info.strip_usage_chunk


def test_responses_and_embeddings_are_never_rewritten() -> None:
    body = b'{"model":"o4-mini","stream":true,"input":"hi"}'
    info = P.parse_request("POST", "/v1/responses", body)
    assert info.upstream_body is body and info.stream and not info.strip_usage_chunk
    body = b'{"model":"e","stream":true,"input":"hi"}'
    assert P.parse_request("POST", "/v1/embeddings", body).upstream_body is body


@pytest.mark.parametrize("body", [
    b"", b"not json", b"[1, 2]", b'"str"', b"\xff\xfe{", b'{"model": 5, "stream": "yes"}',
    b'{"model":"m","stream":true', b"[" * 5000, b'{"n": 99999999999999999999999}',
    b'{"model": NaN', b'\xef\xbb\xbf[1]', b"[" * 100000 + b"]" * 100000,
])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/responses", "/v1/files"])
def test_malformed_request_bodies_are_forwarded_unchanged(path: str, body: bytes) -> None:
    info = P.parse_request("POST", path, body)
    assert info.model is None and info.upstream_body is body and not info.strip_usage_chunk
    assert P.parse_response(info, body).usage.is_empty


@pytest.mark.parametrize("body", [
    b'{"model": "gpt-4.1", "temperature": NaN, "top_p": Infinity, "messages": []}',
    b'{"model": "gpt-4.1", "messages": [{"role": "user", "content": "a\\ud800b"}]}',
    b'\xef\xbb\xbf{"model": "gpt-4.1", "messages": []}',
    b'{"model": "gpt-4.1", "frequency_penalty": 1e400, "seed": 1' + b"0" * 5000 + b"}",
    '{"model": "gpt-4.1", "messages": []}'.encode("utf-16"),
])
def test_bodies_python_json_reads_have_their_model_read(body: bytes) -> None:
    # Python servers (FastAPI's request.json()) read these; orjson refuses every one.
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(body)
    info = P.parse_request("POST", "/v1/chat/completions", body)
    assert (info.model, info.operation, info.metered) == ("gpt-4.1", "chat", True)
    assert info.upstream_body is body and info.json is not None
    # Handed on in orjson's domain: no lone surrogate, no integer past 64 bits.
    text = orjson.dumps(info.json).decode()
    assert ("a\ufffdb" in text) is (b"ud800" in body)


def test_lenient_stream_bodies_get_usage_only_by_inserted_bytes() -> None:
    bom = b'\xef\xbb\xbf {"model":"m","stream":true,"temperature":NaN}'
    info = P.parse_request("POST", "/v1/chat/completions", bom)
    assert info.strip_usage_chunk
    assert info.upstream_body == b'\xef\xbb\xbf {' + INCLUDE + b"," + bom[5:]
    # Re-serialising would turn NaN into null, and UTF-16 takes no inserted bytes: as sent.
    for body in (b'{"model":"m","stream":true,"stream_options":{},"temperature":NaN}',
                 '{"model":"m","stream":true}'.encode("utf-16-le")):
        info = P.parse_request("POST", "/v1/chat/completions", body)
        assert info.upstream_body is body and not info.strip_usage_chunk and info.stream


def test_chat_response_usage() -> None:
    info = P.parse_request("POST", "/v1/chat/completions", b'{"model":"o4-mini"}')
    s = P.parse_response(info, fixture("openai_chat_response.json"))
    assert s.usage == Usage(input=1236, output=201, cached_input=1152, reasoning=192,
                            input_audio=0, output_audio=0)
    assert s.usage.cache_write is None  # OpenAI reports no cache writes
    assert (s.response_model, s.response_id) == ("o4-mini-2025-04-16",
                                                 "chatcmpl-BxT3a8Lm2Qp9Rs4Tu5Vw6Xy7Za1Bc")
    assert (s.finish_reasons, s.service_tier) == (("stop",), "default")
    assert s.output_text == "The capital of France is Paris."


def test_responses_response_usage() -> None:
    info = P.parse_request("POST", "/v1/responses", b'{"model":"gpt-4.1"}')
    s = P.parse_response(info, fixture("openai_responses_response.json"))
    assert s.usage == Usage(input=3110, output=27, cached_input=2944, reasoning=0, web_search=0)
    assert (s.finish_reasons, s.service_tier) == (("completed",), "default")
    assert s.output_text == '{"location":"Paris, France"}Checking the weather in Paris.'


def test_embeddings_and_completions_usage() -> None:
    info = P.parse_request("POST", "/v1/embeddings", b'{"model":"text-embedding-3-small"}')
    s = P.parse_response(info, fixture("openai_embeddings_response.json"))
    assert s.usage == Usage(input=8) and s.response_model == "text-embedding-3-small"
    info = P.parse_request("POST", "/v1/completions", b'{"model":"gpt-3.5-turbo-instruct"}')
    s = P.parse_response(info, fixture("openai_completions_response.json"))
    assert s.usage == Usage(input=5, output=7)
    assert (s.output_text, s.finish_reasons) == ("\n\nThis is indeed a test", ("length",))


def test_cache_write_is_taken_only_when_reported() -> None:
    info = P.parse_request("POST", "/v1/chat/completions", b"{}")
    body = (b'{"usage":{"prompt_tokens":900,"completion_tokens":3,"prompt_tokens_details":'
            b'{"cached_tokens":0,"cache_write_tokens":896}}}')
    assert P.parse_response(info, body).usage == Usage(input=900, output=3, cached_input=0,
                                                       cache_write=896)


@pytest.mark.parametrize("body", [
    b'{"choices":[{"message":{"content":"hi"},"finish_reason":"stop"}],"usage":null}',
    b'{"choices":[{"message":{"content":"hi"},"finish_reason":"stop"}],"usage":'
    b'{"prompt_tokens":null,"completion_tokens":null,"prompt_tokens_details":null}}',
])
def test_null_usage_is_not_reported(body: bytes) -> None:
    info = P.parse_request("POST", "/v1/chat/completions", b"{}")
    s = P.parse_response(info, body)
    assert s.usage.is_empty and s.output_text == "hi" and s.finish_reasons == ("stop",)


@pytest.mark.parametrize("body", [
    b"", b"<html>502 Bad Gateway</html>", b"[]", b'{"error":{"message":"rate limited"}}',
    b'{"choices":"x","usage":[1],"output":{"a":1}}', b'{"choices":[null,5,{"message":[]}]}',
    b'{"output":[null,{"content":"x"},{"content":[5,{"text":7}]}],"usage":{"input_tokens":-3}}',
    b'{"usage":{"prompt_tokens":"12","completion_tokens":1.5,"prompt_tokens_details":[]}}',
])
def test_malformed_response_bodies_never_raise(body: bytes) -> None:
    for operation in ("chat", "responses", "embeddings"):
        info = RequestInfo(operation=operation, model=None, stream=False, upstream_body=b"")
        assert P.parse_response(info, body).usage.is_empty


def test_chat_stream_usage_chunk_is_dropped_only_when_stripping() -> None:
    raw = fixture("openai_chat_stream.sse")
    usage_chunk = events(raw)[-2].raw
    assert b'"choices":[]' in usage_chunk
    summary, kept = run(chat_info(strip=True), raw)
    assert kept == raw.replace(usage_chunk, b"")
    assert summary.usage == Usage(input=1236, output=201, cached_input=1152, reasoning=192,
                                  input_audio=0, output_audio=0)
    assert (summary.response_model, summary.service_tier) == ("o4-mini-2025-04-16", "default")
    assert summary.response_id == "chatcmpl-BxT1q9u7Zr2mKc4Yy0vHn5eQw3LpA"
    assert (summary.output_text, summary.finish_reasons) == ("The capital of France is Paris.",
                                                             ("stop",))
    assert run(chat_info(strip=False), raw) == (summary, raw)


def test_vllm_last_usage_wins_and_reasoning_counts_as_output() -> None:
    raw = fixture("openai_chat_stream_vllm.sse")
    summary, kept = run(chat_info(strip=True), raw)
    assert summary.usage == Usage(input=18, output=11)
    assert summary.output_text == "Simple greeting.Hello!"
    # Content chunks carrying running usage stay; only the choices-less one is hidden.
    assert kept == raw.replace(events(raw)[-2].raw, b"")


def test_azure_prompt_filter_chunk_is_kept_and_empty_ids_ignored() -> None:
    info = P.parse_request("POST", "/openai/deployments/my-gpt4o/chat/completions",
                           b'{"stream":true,"messages":[]}')
    assert (info.model, info.strip_usage_chunk) == ("my-gpt4o", True)
    raw = fixture("azure_openai_chat_stream.sse")
    summary, kept = run(info, raw)
    # The first chunk also has "choices": [] but no usage: it must reach the caller.
    assert kept == raw.replace(events(raw)[-2].raw, b"")
    assert (summary.response_model, summary.response_id) == (
        "gpt-4o-2024-11-20", "chatcmpl-BxV2kLq8Zt5Yw3Nm1Rp7Hs9Gd4Fa")
    assert summary.usage == Usage(input=1580, output=9, cached_input=1408, reasoning=0,
                                  input_audio=0, output_audio=0)
    assert summary.output_text == "Hello! How can I help?"


def test_stream_without_usage_keeps_text_for_estimation() -> None:
    summary, kept = run(chat_info(strip=True), fixture("openai_chat_stream_ollama_no_usage.sse"))
    assert summary.usage.is_empty and kept == fixture("openai_chat_stream_ollama_no_usage.sse")
    assert (summary.output_text, summary.response_model) == (
        "Why did the chicken cross the road?", "llama3.2")


def test_completions_stream() -> None:
    summary, _ = run(chat_info(strip=True, operation="text_completion"),
                     fixture("openai_completions_stream.sse"))
    assert summary.usage == Usage(input=5, output=7)
    assert (summary.output_text, summary.finish_reasons) == ("\n\nThis is a test.", ("length",))


def test_multiple_choices_finish_reasons_by_index() -> None:
    raw = (b'data: {"choices":[{"index":1,"delta":{"content":"b"},"finish_reason":"length"}]}\n\n'
           b'data: {"choices":[{"index":0,"delta":{"content":"a"},"finish_reason":"stop"}]}\n\n')
    summary, _ = run(chat_info(strip=False), raw)
    assert summary.finish_reasons == ("stop", "length") and summary.output_text == "ba"


def test_responses_stream() -> None:
    info = P.parse_request("POST", "/v1/responses", b'{"model":"o4-mini","stream":true}')
    raw = fixture("openai_responses_stream.sse")
    summary, kept = run(info, raw)
    assert kept == raw
    assert summary.usage == Usage(input=2059, output=330, cached_input=1920, reasoning=320,
                                  web_search=0)
    assert (summary.response_model, summary.finish_reasons) == ("o4-mini-2025-04-16",
                                                                ("completed",))
    assert summary.service_tier == "default"  # the tier used, not "auto" from response.created
    assert summary.output_text == "Under a silver moon, the unicorn slept."
    assert summary.response_id == "resp_6887a1f2c3d48190b5e6f7a8091a2b3c0d4e5f6a7b8c9d0e"


def test_responses_stream_cut_off_and_incomplete() -> None:
    info = P.parse_request("POST", "/v1/responses", b'{"model":"o4-mini","stream":true}')
    raw = fixture("openai_responses_stream.sse")
    cut = raw[:raw.index(b"event: response.output_text.done")]
    summary, _ = run(info, cut)
    assert summary.usage.is_empty and summary.finish_reasons == ()
    assert (summary.response_model, summary.output_text) == (
        "o4-mini-2025-04-16", "Under a silver moon, the unicorn slept.")
    incomplete = (b'event: response.incomplete\ndata: {"type":"response.incomplete","response":'
                  b'{"id":"resp_1","status":"incomplete","model":"o4-mini-2025-04-16",'
                  b'"usage":{"input_tokens":9,"output_tokens":64,"output_tokens_details":'
                  b'{"reasoning_tokens":64},"input_tokens_details":{"cached_tokens":0}}}}\n\n')
    summary, _ = run(info, incomplete)
    assert summary.usage == Usage(input=9, output=64, cached_input=0, reasoning=64)
    assert summary.finish_reasons == ("incomplete",)


GARBAGE = [
    b"data: {\n\n", b": keep-alive\n\n", b"data: [DONE]\n\n", b"data:\n\n", b"\n\n",
    b'data: {"choices": 5, "usage": 3}\n\n', b'data: {"choices": [null, 1, {"delta": 5}]}\n\n',
    b'data: {"choices":[{"delta":{"tool_calls":[null,{"function":7}]},"index":"x"}]}\n\n',
    b"data: \xff\xfe\n\n", b"data: [1,2]\n\n",
    b'data: {"choices":[{}],"usage":{"prompt_tokens":-1}}\n\n',
    b'data: {"type":{"a":1}}\n\n', b'data: {"type":["response.completed"]}\n\n',
    b'event: response.completed\ndata: {"type":"response.completed","response":[]}\n\n',
    b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta"}\n\n',
    b'data: {"type":"response.failed","response":{"usage":"x","status":5}}\n\n',
    b'event: error\ndata: {"type":"error","code":"server_error","message":"boom"}\n\n',
    b"data: " + b"[" * 3000 + b"\n\n",
]


@pytest.mark.parametrize("operation", ["chat", "responses", "other"])
def test_garbage_events_never_raise(operation: str) -> None:
    tracker = P.stream_tracker(chat_info(strip=True, operation=operation))
    assert all(tracker.feed(parse_event(raw)) for raw in GARBAGE)
    assert tracker.summary().usage.is_empty


@pytest.mark.parametrize(("name", "operation"), [
    ("openai_chat_stream.sse", "chat"), ("openai_chat_stream_vllm.sse", "chat"),
    ("azure_openai_chat_stream.sse", "chat"),
    ("openai_completions_stream.sse", "text_completion"),
    ("openai_responses_stream.sse", "responses"),
])
def test_arbitrary_splits_give_the_same_result(name: str, operation: str) -> None:
    raw = fixture(name)
    info = chat_info(strip=True, operation=operation)
    whole = run(info, raw)
    rng = random.Random(name)
    for sizes in ([1], [2, 3], [7], [64], [rng.randint(1, 300) for _ in range(50)]):
        assert run(info, raw, sizes) == whole
    crlf = raw.replace(b"\n", b"\r\n")  # servers may use CRLF line ends
    assert run(info, crlf, [5])[0] == whole[0]


def test_rewritten_request_end_to_end() -> None:
    body = b'{"model":"o4-mini","stream":true,"messages":[{"role":"user","content":"Capital?"}]}'
    info = P.parse_request("POST", "/v1/chat/completions", body)
    assert orjson.loads(info.upstream_body)["stream_options"] == {"include_usage": True}
    summary, kept = run(info, fixture("openai_chat_stream.sse"), [100])
    assert b'"usage":{' not in kept and b"data: [DONE]" in kept
    assert summary.usage.input == 1236


@pytest.mark.parametrize(("raw", "cut"), [
    (b'data: {"id":"c","choices":[{"delta":{"content":"a"}}],"usage":null,"x":1}\n\n',
     b'data: {"id":"c","choices":[{"delta":{"content":"a"}}],"x":1}\n\n'),
    (b'data: {"id":"c","choices":[],"usage" : null }\n\n',
     b'data: {"id":"c","choices":[] }\n\n'),
    (b'data: {"usage":null}\n\n', None),                          # no comma: left as sent
    # A look-alike inside a string, escaped: the real member is still cut, the text kept.
    (b'data: {"choices":[{"delta":{"content":"\\"usage\\":null"}}],"usage":null}\n\n',
     b'data: {"choices":[{"delta":{"content":"\\"usage\\":null"}}]}\n\n'),
    # Nested "usage":null besides the member: not certain which, so nothing is cut.
    (b'data: {"choices":[{"delta":{"usage":null}}],"usage":null}\n\n', None),
    # The member spelled with an escape, a nested one in plain: never cut the wrong one.
    (b'data: {"choices":[{"delta":{"usage":null,"a":1}}],"\\u0075sage":null}\n\n', None),
])
def test_usage_null_is_cut_only_when_certain(raw: bytes, cut: bytes | None) -> None:
    from spendgate.providers.openai import without_usage_null
    from spendgate.providers.sse import parse_event
    chunk = orjson.loads(parse_event(raw).data)
    assert without_usage_null(raw, chunk) == cut
    tracker = P.stream_tracker(P.parse_request("POST", "/v1/chat/completions",
                                               b'{"model":"m","stream":true}'))
    assert tracker.feed(parse_event(raw)) == (cut if cut is not None else True)
