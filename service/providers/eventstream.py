"""AWS event-stream binary frames (``application/vnd.amazon.eventstream``), split as they arrive.

Bedrock's ``converse-stream`` and ``invoke-with-response-stream`` answer a sequence of
frames, each::

    total length (uint32 BE) | headers length (uint32 BE) | prelude CRC32 (uint32)
    headers: name length (1 byte), name, value type (1 byte), value  -- repeated
    payload (JSON) | message CRC32 (uint32)

``EventStreamSplitter`` hands each *complete* frame on as the exact bytes received
(``SSEEvent.raw``: the proxy forwards it untouched), with its payload in ``data`` and its
name in ``event``: the ``:event-type`` header of an event (``contentBlockDelta``,
``metadata``, ``chunk``...), or ``exception:{:exception-type}`` / ``error:{:error-code}`` for
the frames that report a failure after the HTTP 200. A partial frame waits for its bytes.

Bounded: a frame over ``max_event`` bytes is not held: its bytes go on as they arrive,
unparsed (``oversized``), and ``oversized_events`` counts it. A frame whose prelude does not
check out (length under 16, CRC mismatch) means the framing is lost: from there on every
byte goes on as it arrives, unparsed. Header values are read for the string type (7) and
skipped by their length for the others. One splitter per stream; not thread-safe.
"""

from __future__ import annotations

import struct
import zlib

from spendgate.providers.sse import DEFAULT_MAX_EVENT, SSEEvent

_PRELUDE = 12
_MINIMUM = 16               # prelude + message CRC, no headers, no payload
_FIXED_SIZES = {0: 0, 1: 0, 2: 1, 3: 2, 4: 4, 5: 8, 8: 8, 9: 16}  # by header value type
_VARIABLE = (6, 7)          # byte array, string: a 2-byte length first


def _unparsed(piece: bytes) -> SSEEvent:
    return SSEEvent(raw=piece, event=None, data=b"", oversized=True)


def frame_headers(headers: bytes) -> dict[str, str]:
    """The string-valued headers of one frame; stops quietly at anything malformed."""
    found: dict[str, str] = {}
    i, end = 0, len(headers)
    while i < end:
        size = headers[i]
        name = headers[i + 1:i + 1 + size].decode("utf-8", "replace")
        i += 1 + size
        if i >= end:
            break
        kind = headers[i]
        i += 1
        if kind in _VARIABLE:
            if i + 2 > end:
                break
            length = int.from_bytes(headers[i:i + 2], "big")
            if kind == 7:
                found[name] = headers[i + 2:i + 2 + length].decode("utf-8", "replace")
            i += 2 + length
        elif kind in _FIXED_SIZES:
            i += _FIXED_SIZES[kind]
        else:
            break
    return found


def parse_frame(frame: bytes) -> SSEEvent:
    """One complete frame as an event (see the module docstring)."""
    headers_length = int.from_bytes(frame[4:8], "big")
    headers = frame_headers(frame[_PRELUDE:_PRELUDE + headers_length])
    payload = frame[_PRELUDE + headers_length:-4]
    kind = headers.get(":message-type", "event")
    if kind == "exception":
        name = "exception:" + headers.get(":exception-type", "")
    elif kind == "error":
        name = "error:" + headers.get(":error-code", "")
    else:
        name = headers.get(":event-type", "")
    return SSEEvent(raw=frame, event=name, data=payload)


class EventStreamSplitter:
    """See the module docstring. ``max_event``: the largest frame, in bytes, parsed."""

    __slots__ = ("_buffer", "_lost", "_max", "_skip", "oversized_events")

    def __init__(self, max_event: int = DEFAULT_MAX_EVENT) -> None:
        self._max = max_event
        self._buffer = b""      # the start of a frame not complete yet (under max_event)
        self._skip = 0          # bytes of an oversized frame still to pass on unparsed
        self._lost = False      # the framing broke: everything passes on unparsed
        self.oversized_events = 0

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        events: list[SSEEvent] = []
        if self._lost:
            return [_unparsed(chunk)] if chunk else []
        if self._skip:
            piece = chunk[:self._skip]
            self._skip -= len(piece)
            events.append(_unparsed(piece))
            chunk = chunk[len(piece):]
        data = self._buffer + chunk if self._buffer else chunk
        start = 0
        while len(data) - start >= _PRELUDE:
            total, _ = struct.unpack_from(">II", data, start)
            crc = int.from_bytes(data[start + 8:start + 12], "big")
            if total < _MINIMUM or zlib.crc32(data[start:start + 8]) != crc:
                self._lost = True
                events.append(_unparsed(data[start:]))
                self._buffer = b""
                return events
            if total > self._max:
                piece = data[start:start + total]
                self.oversized_events += 1
                self._skip = total - len(piece)
                events.append(_unparsed(piece))
                start += len(piece)
                continue
            if len(data) - start < total:
                break
            events.append(parse_frame(data[start:start + total]))
            start += total
        self._buffer = data[start:]
        return events

    def flush(self) -> bytes:
        """The bytes of a frame the stream ended in the middle of."""
        rest, self._buffer = self._buffer, b""
        return rest
