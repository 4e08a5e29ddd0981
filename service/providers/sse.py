"""Server-sent events, split only on complete events, in time linear in the bytes received.

``SSESplitter`` is fed raw bytes as they arrive from the upstream and hands back each
*complete* event as the exact bytes the upstream sent (terminator included), so the proxy can
forward an event unchanged or drop it, and never re-encodes. A partial event waits in the
splitter until its terminating blank line arrives.

An event ends at the first blank line: the first ``\\n\\n``, ``\\r\\r`` or ``\\r\\n\\r\\n``
(whichever ends first) after its start. Each byte is scanned once: a new chunk is searched
alone, plus the last three bytes before it for a terminator that straddles the two, and the
pieces of a partial event are kept as a list, joined once when it completes.

Bounded: an event larger than ``max_event`` bytes is not held until its terminator. Its
bytes come out as they arrive, as ``SSEEvent``s with ``oversized`` set and nothing parsed
(``event`` None, ``data`` empty: no tracker reads anything in them), until the terminator
ends it; the proxy forwards them like any event, and the call's usage, if it was in there,
is estimated. ``oversized_events`` counts such events. Splitting then goes on as before.

One splitter per stream; not thread-safe.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_MAX_EVENT = 1024 * 1024   # server.max_event_kb's default
_OVERLAP = 3                      # a terminator (at most 4 bytes) straddling two chunks
_TERMINATOR = re.compile(rb"\n\n|\r\r|\r\n\r\n")


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One complete event: its raw bytes and its parsed ``event:`` name and ``data:`` payload;
    or (``oversized``) a piece of an event over the size limit, unparsed."""

    raw: bytes
    event: str | None
    data: bytes
    oversized: bool = False


def parse_event(raw: bytes) -> SSEEvent:
    """Parse the fields of one complete event (the SSE spec's line rules)."""
    name: str | None = None
    data_lines: list[bytes] = []
    # Most upstreams end lines with LF only: split on it, cheaper than splitlines().
    lines = raw.split(b"\n") if b"\r" not in raw else raw.splitlines()
    for line in lines:
        if not line or line[0] == 58:  # b":": a comment
            continue
        key, sep, value = line.partition(b":")
        if sep and value[:1] == b" ":
            value = value[1:]
        if key == b"data":
            data_lines.append(value)
        elif key == b"event":
            name = value.decode("utf-8", "replace")
    data = data_lines[0] if len(data_lines) == 1 else b"\n".join(data_lines)
    return SSEEvent(raw=raw, event=name, data=data)


def _oversized(piece: bytes) -> SSEEvent:
    return SSEEvent(raw=piece, event=None, data=b"", oversized=True)


class SSESplitter:
    """Accumulates bytes and yields complete events in order (see the module docstring).

    ``max_event``: the largest event, in bytes, that is held and parsed.
    """

    __slots__ = ("_big", "_max", "_parts", "_size", "_tail", "oversized_events")

    def __init__(self, max_event: int = DEFAULT_MAX_EVENT) -> None:
        self._max = max_event
        self._parts: list[bytes] = []   # the partial event's bytes, while it is held
        self._size = 0                  # bytes of the partial event so far (held or not)
        self._tail = b""                # its last bytes, for a straddling terminator
        self._big = False               # the partial event is oversized: passed on, not held
        self.oversized_events = 0

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        events: list[SSEEvent] = []
        start = 0
        if self._size:
            start = self._continue(chunk, events)
            if start < 0:
                return events
        # From here on ``start`` is the start of an event, and nothing before it is pending.
        find_end = _first_end if b"\r" in chunk else _first_lf_end
        limit = self._max
        while (end := find_end(chunk, start)) >= 0:
            if end - start > limit:
                self.oversized_events += 1
                events.append(_oversized(chunk[start:end]))
            else:
                events.append(parse_event(chunk[start:end] if start or end < len(chunk)
                                          else chunk))
            start = end
        if start < len(chunk):
            rest = chunk[start:] if start else chunk
            self._size = len(rest)
            self._tail = rest[-_OVERLAP:]
            if self._size > limit:
                self._big = True
                self.oversized_events += 1
                events.append(_oversized(rest))
            else:
                self._parts.append(rest)
        return events

    def _continue(self, chunk: bytes, events: list[SSEEvent]) -> int:
        """Extend the partial event with ``chunk``: where in ``chunk`` the next event
        starts, or -1 when the partial event goes on past ``chunk``."""
        tail = self._tail
        # The probe holds every terminator that ends in the chunk's first bytes, straddling
        # or not (none lies in the tail alone): one found there ends before any other.
        end = _first_end(tail + chunk[:_OVERLAP], 0) - len(tail)
        if end < 0:  # none straddles the two: the chunk alone
            end = _first_end(chunk, 0) if b"\r" in chunk else _first_lf_end(chunk, 0)
        if end < 0:
            self._size += len(chunk)
            self._tail = chunk[-_OVERLAP:] if len(chunk) >= _OVERLAP else (tail + chunk)[-_OVERLAP:]
            if self._big:
                events.append(_oversized(chunk))
            elif self._size > self._max:
                self._big = True
                self.oversized_events += 1
                self._parts.append(chunk)
                events.append(_oversized(b"".join(self._parts)))
                self._parts.clear()
            else:
                self._parts.append(chunk)
            return -1
        piece = chunk[:end]
        size = self._size + end
        if self._big:
            events.append(_oversized(piece))
        elif size > self._max:
            self.oversized_events += 1
            self._parts.append(piece)
            events.append(_oversized(b"".join(self._parts)))
        else:
            self._parts.append(piece)
            events.append(parse_event(b"".join(self._parts)))
        self._parts.clear()
        self._size, self._tail, self._big = 0, b"", False
        return end

    def flush(self) -> bytes:
        """What is left when the stream ends without a final blank line (not yet handed
        out: the held part of a partial event; nothing of an oversized one)."""
        rest = b"".join(self._parts)
        self._parts.clear()
        self._size, self._tail, self._big = 0, b"", False
        return rest


def _first_lf_end(buffer: bytes, start: int) -> int:
    """``_first_end`` for a buffer without CR: only ``\\n\\n`` can end an event."""
    i = buffer.find(b"\n\n", start)
    return i + 2 if i >= 0 else -1


def _first_end(buffer: bytes, start: int) -> int:
    """Index just past the first event terminator at or after ``start``, or -1.

    The leftmost terminator is also the one that ends first (a ``\\r\\n\\r\\n`` holds no
    shorter one that ends sooner), so one regex scan finds it: linear, whatever the mix.
    """
    match = _TERMINATOR.search(buffer, start)
    return match.end() if match is not None else -1
