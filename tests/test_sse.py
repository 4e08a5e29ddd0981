"""SSE splitting: complete events only, raw bytes kept, any chunking gives the same events."""

from __future__ import annotations

import pytest

from spendgate.providers.sse import SSESplitter, parse_event
from tests.fake_upstream import fixture

TRANSCRIPTS = ["openai_chat_stream.sse", "anthropic_messages_stream_cached.sse",
               "openai_responses_stream.sse"]


@pytest.mark.parametrize("name", TRANSCRIPTS)
@pytest.mark.parametrize("size", [1, 7, 64, 4096])
def test_any_chunking_yields_the_same_raw_events(name: str, size: int) -> None:
    data = fixture(name)
    whole = SSESplitter().feed(data)
    splitter = SSESplitter()
    pieces = []
    for i in range(0, len(data), size):
        pieces.extend(splitter.feed(data[i:i + size]))
    assert [e.raw for e in pieces] == [e.raw for e in whole]
    assert b"".join(e.raw for e in whole) + splitter.flush() == data


def test_partial_event_waits_for_its_terminator() -> None:
    splitter = SSESplitter()
    assert splitter.feed(b"event: ping\ndata: {") == []
    (event,) = splitter.feed(b'"a":1}\n\n')
    assert (event.event, event.data) == ("ping", b'{"a":1}')


def test_field_rules() -> None:
    event = parse_event(b": comment\r\nevent:x\r\ndata: one\r\ndata:two\r\n\r\n")
    assert (event.event, event.data) == ("x", b"one\ntwo")
    assert parse_event(b"data: [DONE]\n\n").data == b"[DONE]"


def test_an_event_over_the_limit_is_passed_on_as_it_arrives_unparsed() -> None:
    splitter = SSESplitter(max_event=1024)
    assert splitter.feed(b"data: " + b"x" * 500) == []          # held: under the limit
    (first,) = splitter.feed(b"x" * 600)                         # over it: out, unparsed
    assert first.raw == b"data: " + b"x" * 1100 and first.oversized
    assert (first.event, first.data) == (None, b"")
    (second,) = splitter.feed(b"x" * 100)                        # then as the bytes arrive
    assert second.raw == b"x" * 100 and second.oversized
    third, after = splitter.feed(b"\n\ndata: ok\n\n")            # its end, and on as before
    assert third.raw == b"\n\n" and third.oversized
    assert (after.raw, after.data, after.oversized) == (b"data: ok\n\n", b"ok", False)
    assert splitter.oversized_events == 1
    assert splitter.flush() == b""


def test_an_event_over_the_limit_that_arrives_whole_is_not_parsed() -> None:
    splitter = SSESplitter(max_event=16)
    big, small = b"data: " + b"y" * 20 + b"\n\n", b"data: z\n\n"
    events = splitter.feed(small + big + small + b"data: " + b"w" * 20)
    assert [(e.raw, e.oversized) for e in events] == [
        (small, False), (big, True), (small, False), (b"data: " + b"w" * 20, True)]
    assert splitter.oversized_events == 2


@pytest.mark.parametrize("stream", [
    b"data: a\r\n\r\ndata: b\r\rdata: c\n\ndata: d\r\n\r\n",
    b"data: a\r\r\n\r\ndata: b\n\r\n\r\n\n",
    b"data: \r\r\r\r\n\n\n\r\n\r\n\r\r",
])
def test_terminators_straddling_any_chunk_boundary(stream: bytes) -> None:
    whole = SSESplitter()
    expected = [e.raw for e in whole.feed(stream)], whole.flush()
    for cut in range(len(stream) + 1):
        for second_cut in range(cut, len(stream) + 1):
            splitter = SSESplitter()
            got = [e.raw for part in (stream[:cut], stream[cut:second_cut], stream[second_cut:])
                   for e in splitter.feed(part)]
            assert (got, splitter.flush()) == expected, (cut, second_cut)
