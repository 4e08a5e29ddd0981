"""Fuzzing (hypothesis) of what reads untrusted bytes: the SSE splitter and each provider's
request, response and stream reader. They never raise, never take superlinear time (the
same input shape at n and 8n bytes), and the splitter agrees with two simple references:
the rule its docstring states, on any input, and the SSE specification's line reading, on
valid streams. Bounded for CI: a few seconds in all (``max_examples`` per test).
"""

from __future__ import annotations

import gc
import re
import time
from collections.abc import Callable
from itertools import pairwise
from typing import Any

import orjson
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from spendgate.providers import PROVIDERS
from spendgate.providers.base import RequestInfo
from spendgate.providers.eventstream import EventStreamSplitter
from spendgate.providers.jsonarray import JsonArraySplitter
from spendgate.providers.sse import SSEEvent, SSESplitter

FUZZ = settings(max_examples=100, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])
# Stream cases are costly to draw (lists of events): fewer of them.
FUZZ_STREAMS = settings(FUZZ, max_examples=50)
TIMED = settings(max_examples=4, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# 8x the input may take at most this many times as long: linear is about 8, quadratic 64.
SUPERLINEAR = 20

# ---- references ---------------------------------------------------------------------------

TERMINATORS = (b"\n\n", b"\r\r", b"\r\n\r\n")


def split_by_the_rule(data: bytes) -> tuple[list[bytes], bytes]:
    """The splitter's documented rule, the slow obvious way: an event ends at whichever of
    the terminators found after its start ends first."""
    events, start = [], 0
    while True:
        ends = [i + len(t) for t in TERMINATORS if (i := data.find(t, start)) >= 0]
        if not ends:
            return events, data[start:]
        events.append(data[start:min(ends)])
        start = min(ends)


LINE = re.compile(rb"([^\r\n]*)(\r\n|\r|\n)")


def read_as_the_spec_does(data: bytes) -> tuple[list[tuple[bytes, str | None, bytes]], bytes]:
    """The SSE specification's reading (lines end in CRLF, LF or CR; a blank line ends an
    event): each event's raw bytes, ``event`` field and ``data`` lines joined by LF."""
    events: list[tuple[bytes, str | None, bytes]] = []
    start = pos = 0
    name: str | None = None
    data_lines: list[bytes] = []
    while (line := LINE.match(data, pos)) is not None:
        pos = line.end()
        text = line.group(1)
        if text == b"":
            events.append((data[start:pos], name, b"\n".join(data_lines)))
            start, name, data_lines = pos, None, []
        elif not text.startswith(b":"):
            field, _, value = text.partition(b":")
            value = value[1:] if value.startswith(b" ") else value
            if field == b"data":
                data_lines.append(value)
            elif field == b"event":
                name = value.decode("utf-8", "replace")
    return events, data[start:]


# ---- inputs -------------------------------------------------------------------------------

TOKENS = [b"data:", b"data: ", b"event: ", b"id: 7", b":", b" ", b"x", b"{}", b"\n", b"\r",
          b"\r\n", b"\n\n", b"\r\r", b"\r\n\r\n", b"\xff", b"\x00"]
any_stream = st.one_of(st.binary(max_size=400),
                       st.lists(st.sampled_from(TOKENS), max_size=80).map(b"".join))
cuts = st.lists(st.integers(min_value=0, max_value=400), max_size=12)

# Valid streams: events of field lines, each event with one line ending of its own.
field_value = st.binary(max_size=30).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
field_line = st.one_of(
    st.tuples(st.sampled_from([b"data", b"event", b"id", b"retry"]),
              st.sampled_from([b":", b": "]), field_value).map(b"".join),
    field_value.map(lambda v: b":" + v),                # a comment
    st.just(b"data"))                                   # a field with no colon
valid_event = st.tuples(st.lists(field_line, min_size=1, max_size=4),
                        st.sampled_from([b"\n", b"\r\n", b"\r"])).map(
    lambda e: b"".join(line + e[1] for line in e[0]) + e[1])
valid_stream = st.tuples(st.lists(valid_event, max_size=8),
                         st.lists(field_line, max_size=2).map(lambda ls: b"\n".join(ls))).map(
    lambda s: b"".join(s[0]) + s[1])


def pieces(data: bytes, at: list[int]) -> list[bytes]:
    bounds = sorted({min(i, len(data)) for i in at} | {0, len(data)})
    return [data[a:b] for a, b in pairwise(bounds)] or [b""]


def feed(splitter: SSESplitter, chunks: list[bytes]) -> list[SSEEvent]:
    return [event for chunk in chunks for event in splitter.feed(chunk)]


# ---- the splitter -------------------------------------------------------------------------

@FUZZ
@given(any_stream, cuts)
@example(b"data: a\r\n\r", [9])
@example(b"a\r\r\n\r\n", [1, 2, 3])
def test_splitter_follows_its_rule_on_any_input_in_any_chunks(data: bytes,
                                                              at: list[int]) -> None:
    splitter = SSESplitter(max_event=1 << 30)
    events = feed(splitter, pieces(data, at))
    expected, rest = split_by_the_rule(data)
    assert [e.raw for e in events] == expected
    assert splitter.flush() == rest
    assert not any(e.oversized for e in events)


@FUZZ
@given(valid_stream, cuts)
def test_splitter_reads_valid_streams_as_the_spec_does(data: bytes, at: list[int]) -> None:
    splitter = SSESplitter(max_event=1 << 30)
    events = feed(splitter, pieces(data, at))
    expected, rest = read_as_the_spec_does(data)
    assert [(e.raw, e.event, e.data) for e in events] == expected
    assert splitter.flush() == rest


@FUZZ
@given(any_stream, cuts, st.integers(min_value=1, max_value=64))
def test_with_an_event_limit_every_byte_still_comes_out_once_in_order(
        data: bytes, at: list[int], limit: int) -> None:
    splitter = SSESplitter(max_event=limit)
    out = feed(splitter, pieces(data, at))
    rest = splitter.flush()
    assert b"".join(e.raw for e in out) + rest == data
    expected, expected_rest = split_by_the_rule(data)
    # Events within the limit come out whole and parsed; larger ones as unparsed pieces.
    position = 0
    for raw in expected:
        if len(raw) <= limit:
            assert (out[position].raw, out[position].oversized) == (raw, False)
            position += 1
            continue
        taken = b""
        while len(taken) < len(raw):
            assert out[position].oversized and out[position].data == b""
            taken += out[position].raw
            position += 1
        assert taken == raw
    unfinished = b"".join(e.raw for e in out[position:])
    assert all(e.oversized for e in out[position:])
    assert unfinished + rest == expected_rest
    assert (unfinished == b"") == (len(expected_rest) <= limit)
    assert splitter.oversized_events == sum(len(r) > limit for r in expected) + (
        len(expected_rest) > limit)


def best_time(run: Callable[[], Any], repeat: int) -> float:
    """The best of ``repeat`` runs, the cyclic GC off (its passes are not the code's time)."""
    best = float("inf")
    gc.disable()
    try:
        for _ in range(repeat):
            started = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - started)
    finally:
        gc.enable()
    return best


def assert_linear(make_input: Callable[[int], Any], run: Callable[[Any], Any],
                  size: int) -> None:
    """``run`` on an input of ``size`` bytes and of 8x that: at most ``SUPERLINEAR`` times
    the time. Sizes stay small (tens of KiB): larger inputs leave the CPU caches, which
    alone makes 8x the bytes cost up to 16x, linear code included."""
    small, large = make_input(size), make_input(8 * size)
    # Measured up to three times: one scheduling stall on a shared 2-core machine can make
    # a linear pass look superlinear once, a quadratic one is superlinear every time.
    tries = []
    for _ in range(3):
        small_s = best_time(lambda: run(small), repeat=7)
        large_s = best_time(lambda: run(large), repeat=5)
        tries.append((small_s, large_s))
        if large_s < SUPERLINEAR * small_s + 0.002:
            return
    raise AssertionError(f"8x the input took over {SUPERLINEAR}x the time: {tries}")


@TIMED
@given(st.lists(st.sampled_from(TOKENS), min_size=1, max_size=12).map(b"".join),
       st.integers(min_value=64, max_value=4096))
@example(b"x", 64)            # one event that never ends: rescanning it is quadratic
@example(b"data: x\r", 256)   # CRs but no terminator kind of \n\n
@example(b"\n\n", 1024)       # many tiny events per chunk
def test_splitter_time_is_linear(pattern: bytes, chunk: int) -> None:
    def make(size: int) -> list[bytes]:
        data = pattern * (size // len(pattern) + 1)
        return [data[i:i + chunk] for i in range(0, size, chunk)]

    def run(chunks: list[bytes]) -> None:
        splitter = SSESplitter()
        for piece in chunks:
            splitter.feed(piece)
        splitter.flush()

    assert_linear(make, run, 16 * 1024)


# ---- the providers' readers ---------------------------------------------------------------

json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)
# Request bodies shaped like the real ones, every field possibly of the wrong type.
request_object = st.fixed_dictionaries({}, optional={
    "model": st.text(max_size=20) | json_value, "stream": st.booleans() | json_value,
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": json_value})
    | json_value,
    "messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system"]),
                                                "content": json_value}), max_size=3)
    | json_value,
    "max_tokens": json_value, "max_completion_tokens": json_value,
    "max_output_tokens": json_value, "input": json_value})
usage_object = st.dictionaries(st.sampled_from([
    "prompt_tokens", "completion_tokens", "input_tokens", "output_tokens",
    "prompt_tokens_details", "completion_tokens_details", "input_tokens_details",
    "output_tokens_details", "cache_creation_input_tokens", "cache_read_input_tokens",
    "service_tier"]), json_value, max_size=6)
response_object = st.fixed_dictionaries({}, optional={
    "id": json_value, "model": json_value, "usage": usage_object | json_value,
    "choices": st.lists(st.dictionaries(st.sampled_from(
        ["index", "text", "message", "delta", "finish_reason"]), json_value), max_size=3)
    | json_value,
    "output": json_value, "content": st.lists(st.dictionaries(st.sampled_from(
        ["type", "text", "thinking", "input"]), json_value), max_size=3) | json_value,
    "type": st.sampled_from(["message_start", "message_delta", "content_block_delta",
                             "response.completed", "response.created",
                             "response.output_text.delta"]) | json_value,
    "usageMetadata": usage_object | json_value, "candidates": json_value,
    "modelVersion": json_value, "bytes": json_value, "metrics": json_value,
    "message": json_value, "delta": json_value, "response": json_value,
    "stop_reason": json_value, "status": json_value, "service_tier": json_value})


def dumped(value: Any) -> bytes:
    return orjson.dumps(value)


def mangled(base: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """The object's JSON, or that JSON cut short, or with bytes spliced in, or raw bytes."""
    as_json = base.map(dumped)
    return st.one_of(
        as_json,
        st.tuples(as_json, st.integers(min_value=0)).map(lambda t: t[0][:t[1] % (len(t[0]) + 1)]),
        st.tuples(as_json, st.integers(min_value=0),
                  st.sampled_from([b"NaN", b"\xed\xa0\x80", b"\xef\xbb\xbf", b"1e400", b"{",
                                   b'"', b"\\", b"\x00"])).map(
            lambda t: t[0][:t[1] % (len(t[0]) + 1)] + t[2] + t[0][t[1] % (len(t[0]) + 1):]),
        st.binary(max_size=200))


PATHS = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses",
         "/v1/messages", "/v1/messages/count_tokens", "/v1/models", "messages",
         "/openai/deployments/my-gpt/chat/completions", "/v1/chat/completions?x=1", "", "/",
         "/v1beta/models/gemini-2.5-pro:generateContent", "/v1/models/g:streamGenerateContent",
         "/v1/projects/p/locations/l/publishers/anthropic/models/c@1:streamRawPredict",
         "/model/us.anthropic.c-v1:0/converse-stream", "/model/m/invoke-with-response-stream",
         "/model/arn:aws:bedrock:x/y/converse", "/model/m/invoke"]


@FUZZ
@given(st.sampled_from(sorted(PROVIDERS)), st.sampled_from(["POST", "GET", "post", "PUT"]),
       st.sampled_from(PATHS) | st.text(max_size=40), mangled(request_object))
def test_request_readers_never_raise(protocol: str, method: str, path: str,
                                     body: bytes) -> None:
    info = PROVIDERS[protocol].parse_request(method, path, body)
    assert isinstance(info, RequestInfo)
    if info.upstream_body != body:  # the one sanctioned rewrite: include_usage, added
        assert protocol == "openai" and info.strip_usage_chunk
        rewritten = orjson.loads(info.upstream_body)
        assert rewritten["stream_options"]["include_usage"] is True


def request_infos() -> list[tuple[str, RequestInfo]]:
    out = []
    for protocol, provider in sorted(PROVIDERS.items()):
        for path in PATHS:
            for body in (b'{"model":"m"}', b'{"model":"m","stream":true}'):
                out.append((protocol, provider.parse_request("POST", path, body)))
    return out


INFOS = request_infos()


@FUZZ
@given(st.sampled_from(INFOS), mangled(response_object))
def test_response_readers_never_raise(case: tuple[str, RequestInfo], body: bytes) -> None:
    protocol, info = case
    summary = PROVIDERS[protocol].parse_response(info, body)
    assert isinstance(summary.output_text, str)


event_names = st.none() | (st.sampled_from([
    "message_start", "message_delta", "content_block_delta", "ping", "response.completed",
    "response.created", "response.output_text.delta", "response.failed", "chunk", "metadata",
    "contentBlockDelta", "messageStop", "exception:throttlingException", "error:x"])
    | st.text(max_size=10))
events = st.lists(st.tuples(event_names, mangled(response_object) | st.just(b"[DONE]")).map(
    lambda t: SSEEvent(raw=b"data: " + t[1] + b"\n\n", event=t[0], data=t[1])), max_size=6)


@FUZZ_STREAMS
@given(st.sampled_from(INFOS), events)
def test_stream_readers_never_raise(case: tuple[str, RequestInfo],
                                    stream: list[SSEEvent]) -> None:
    protocol, info = case
    tracker = PROVIDERS[protocol].stream_tracker(info)
    for event in stream:
        kept = tracker.feed(event)
        assert kept in (True, False) or (isinstance(kept, bytes) and len(kept) < len(event.raw))
    tracker.summary()


# ---- the providers' readers in linear time ------------------------------------------------

@TIMED
@given(st.sampled_from(sorted(PROVIDERS)),
       st.sampled_from(["/v1/chat/completions", "/v1/responses", "/v1/messages"]),
       st.fixed_dictionaries({"role": st.just("user"), "content": json_value}))
def test_request_reading_time_is_linear(protocol: str, path: str,
                                        message: dict[str, Any]) -> None:
    item = dumped(message)

    def make(size: int) -> bytes:
        count = size // (len(item) + 1) + 1
        return b'{"model":"m","stream":true,"messages":[' + b",".join([item] * count) + b"]}"

    provider = PROVIDERS[protocol]
    assert_linear(make, lambda body: provider.parse_request("POST", path, body), 16 * 1024)


@TIMED
@given(st.sampled_from(INFOS), response_object)
def test_response_reading_time_is_linear(case: tuple[str, RequestInfo],
                                         shape: dict[str, Any]) -> None:
    protocol, info = case
    choice = {"index": 0, "message": {"content": "text " * 4}, "text": "t", "finish_reason": "s"}
    block = {"type": "text", "text": "text " * 4}

    def make(size: int) -> bytes:
        count = size // 80 + 1
        return dumped({**shape, "choices": [choice] * count, "content": [block] * count,
                       "output": [{"content": [block]}] * count})

    provider = PROVIDERS[protocol]
    assert_linear(make, lambda body: provider.parse_response(info, body), 16 * 1024)


@TIMED
@given(st.sampled_from(INFOS), response_object, event_names)
def test_stream_reading_time_is_linear(case: tuple[str, RequestInfo], shape: dict[str, Any],
                                       name: str | None) -> None:
    protocol, info = case
    data = dumped(shape)
    event = SSEEvent(raw=b"data: " + data + b"\n\n", event=name, data=data)

    def make(size: int) -> list[SSEEvent]:
        return [event] * (size // len(event.raw) + 1)

    def run(stream: list[SSEEvent]) -> None:
        tracker = PROVIDERS[protocol].stream_tracker(info)
        for item in stream:
            tracker.feed(item)
        tracker.summary()

    assert_linear(make, run, 16 * 1024)


# ---- the providers' readers agree with the documented mapping on valid input ---------------
# The reference is the wire format's own definition, written out here field by field: OpenAI's
# prompt_tokens include cached ones; Anthropic's input_tokens exclude cache reads and writes.

counts = st.integers(min_value=0, max_value=2**40)
names = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1,
                max_size=40)


@FUZZ
@given(names, st.integers(min_value=1, max_value=2**31 - 1), st.booleans(),
       st.sampled_from([("openai", "/v1/chat/completions", "max_tokens"),
                        ("openai", "/v1/chat/completions", "max_completion_tokens"),
                        ("openai", "/v1/responses", "max_output_tokens"),
                        ("anthropic", "/v1/messages", "max_tokens")]))
def test_request_readers_agree_with_the_body(model: str, limit: int, stream: bool,
                                             where: tuple[str, str, str]) -> None:
    protocol, path, limit_key = where
    body = {"model": model, limit_key: limit, "stream": stream,
            "messages": [{"role": "user", "content": "Hi"}]}
    info = PROVIDERS[protocol].parse_request("POST", path, orjson.dumps(body))
    assert (info.model, info.max_tokens, info.stream, info.invalid) == (
        model, limit, stream, None)


@FUZZ
@given(names, counts, counts, counts, counts, st.text(max_size=30))
def test_openai_readers_agree_with_the_documented_usage(model: str, prompt: int, cached: int,
                                                        completion: int, reasoning: int,
                                                        text: str) -> None:
    usage = {"prompt_tokens": prompt, "completion_tokens": completion,
             "total_tokens": prompt + completion,
             "prompt_tokens_details": {"cached_tokens": cached},
             "completion_tokens_details": {"reasoning_tokens": reasoning}}
    provider = PROVIDERS["openai"]
    whole = provider.parse_response(
        provider.parse_request("POST", "/v1/chat/completions", b'{"model":"m"}'),
        orjson.dumps({"model": model, "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text},
             "finish_reason": "stop"}], "usage": usage}))
    expected = (prompt, cached, completion, reasoning)
    got = whole.usage
    assert (got.input, got.cached_input, got.output, got.reasoning) == expected
    assert (whole.response_model, whole.output_text, whole.finish_reasons) == (
        model, text, ("stop",))
    # The same call streamed: content chunks, then the usage-only chunk include_usage adds.
    info = provider.parse_request("POST", "/v1/chat/completions",
                                  b'{"model":"m","stream":true}')
    tracker = provider.stream_tracker(info)
    chunks = [{"model": model, "choices": [{"index": 0, "delta": {"content": piece},
                                            "finish_reason": None}]}
              for piece in (text[:len(text) // 2], text[len(text) // 2:])]
    chunks.append({"model": model, "choices": [{"index": 0, "delta": {},
                                                "finish_reason": "stop"}]})
    chunks.append({"model": model, "choices": [], "usage": usage})
    for chunk in chunks:
        data = orjson.dumps(chunk)
        tracker.feed(SSEEvent(raw=b"data: " + data + b"\n\n", event=None, data=data))
    tracker.feed(SSEEvent(raw=b"data: [DONE]\n\n", event=None, data=b"[DONE]"))
    streamed = tracker.summary()
    got = streamed.usage
    assert (got.input, got.cached_input, got.output, got.reasoning) == expected
    assert (streamed.response_model, streamed.output_text, streamed.finish_reasons) == (
        model, text, ("stop",))


@FUZZ
@given(names, counts, counts, counts, counts, st.integers(min_value=0, max_value=5),
       st.text(max_size=30))
def test_anthropic_readers_agree_with_the_documented_usage(
        model: str, fresh: int, read: int, written: int, output: int, first_output: int,
        text: str) -> None:
    usage = {"input_tokens": fresh, "cache_read_input_tokens": read,
             "cache_creation_input_tokens": written, "output_tokens": output}
    provider = PROVIDERS["anthropic"]
    whole = provider.parse_response(
        provider.parse_request("POST", "/v1/messages", b'{"model":"m","max_tokens":1}'),
        orjson.dumps({"type": "message", "model": model, "role": "assistant",
                      "content": [{"type": "text", "text": text}],
                      "stop_reason": "end_turn", "usage": usage}))
    expected = (fresh + read + written, read, written, output)
    got = whole.usage
    assert (got.input, got.cached_input, got.cache_write, got.output) == expected
    assert (whole.response_model, whole.output_text) == (model, text)
    # Streamed: message_start carries the prompt's usage and an early output count;
    # message_delta's usage is cumulative and replaces it.
    info = provider.parse_request("POST", "/v1/messages",
                                  b'{"model":"m","max_tokens":1,"stream":true}')
    tracker = provider.stream_tracker(info)
    events = [("message_start", {"type": "message_start", "message": {
                  "model": model, "role": "assistant", "content": [],
                  "usage": {**usage, "output_tokens": first_output}}}),
              ("content_block_start", {"type": "content_block_start", "index": 0,
                                       "content_block": {"type": "text", "text": ""}}),
              ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                       "delta": {"type": "text_delta", "text": text}}),
              ("content_block_stop", {"type": "content_block_stop", "index": 0}),
              ("message_delta", {"type": "message_delta",
                                 "delta": {"stop_reason": "end_turn"},
                                 "usage": {"output_tokens": output}}),
              ("message_stop", {"type": "message_stop"})]
    for name, event in events:
        data = orjson.dumps(event)
        tracker.feed(SSEEvent(raw=b"event: " + name.encode() + b"\ndata: " + data + b"\n\n",
                              event=name, data=data))
    streamed = tracker.summary()
    got = streamed.usage
    assert (got.input, got.cached_input, got.cache_write, got.output) == expected
    assert (streamed.response_model, streamed.output_text) == (model, text)


@FUZZ
@given(st.binary(max_size=600) | st.lists(st.sampled_from(
    [b"[", b"]", b"{", b"}", b'"', b"\\", b",", b"a", b'{"usageMetadata":{}}']),
    max_size=80).map(b"".join), st.lists(st.integers(1, 50), min_size=1, max_size=8),
    st.integers(1, 64))
def test_stream_splitters_never_raise_and_lose_no_byte(data: bytes, sizes: list[int],
                                                       bound: int) -> None:
    """Every byte fed comes out, in order, from each framing (Gemini's array, AWS frames)."""
    for splitter in (JsonArraySplitter(bound), EventStreamSplitter(bound)):
        out, pos, i = [], 0, 0
        while pos < len(data):
            step = sizes[i % len(sizes)]
            out += [e.raw for e in splitter.feed(data[pos:pos + step])]
            pos, i = pos + step, i + 1
        assert b"".join(out) + splitter.flush() == data
