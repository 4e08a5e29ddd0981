"""Server-sent events, split only on complete events.

``SSESplitter`` is fed raw bytes as they arrive from the upstream and hands back each
*complete* event as the exact bytes the upstream sent (terminator included), so the proxy can
forward an event unchanged or drop it, and never re-encodes. A partial event waits in the
splitter until its terminating blank line arrives. One splitter per stream; not thread-safe.
"""

from __future__ import annotations

from dataclasses import dataclass

_TERMINATORS = (b"\n\n", b"\r\n\r\n", b"\r\r")


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One complete event: its raw bytes and its parsed ``event:`` name and ``data:`` payload."""

    raw: bytes
    event: str | None
    data: bytes


def parse_event(raw: bytes) -> SSEEvent:
    """Parse the fields of one complete event (the SSE spec's line rules)."""
    name: str | None = None
    data_lines: list[bytes] = []
    for line in raw.splitlines():
        if not line or line.startswith(b":"):
            continue
        key, sep, value = line.partition(b":")
        if sep and value.startswith(b" "):
            value = value[1:]
        if key == b"data":
            data_lines.append(value)
        elif key == b"event":
            name = value.decode("utf-8", "replace")
    return SSEEvent(raw=raw, event=name, data=b"\n".join(data_lines))


class SSESplitter:
    """Accumulates bytes and yields complete events in order."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        buffer = self._buffer + chunk if self._buffer else chunk
        events: list[SSEEvent] = []
        start = 0
        while True:
            end = _find_terminator(buffer, start)
            if end < 0:
                break
            events.append(parse_event(buffer[start:end]))
            start = end
        self._buffer = buffer[start:]
        return events

    def flush(self) -> bytes:
        """What is left when the stream ends without a final blank line."""
        rest, self._buffer = self._buffer, b""
        return rest


def _find_terminator(buffer: bytes, start: int) -> int:
    """Index just past the first event terminator at or after ``start``, or -1."""
    best = -1
    for terminator in _TERMINATORS:
        i = buffer.find(terminator, start)
        if i >= 0 and (best < 0 or i + len(terminator) < best):
            best = i + len(terminator)
    return best
