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
