"""A JSON array streamed in pieces, read element by element as its bytes arrive.

Gemini's ``:streamGenerateContent`` without ``?alt=sse`` answers one JSON array whose
elements (``GenerateContentResponse`` objects) are written as they are generated::

    [{"candidates": [...], "usageMetadata": {...}, "modelVersion": "gemini-2.5-pro"}
    ,
    {"candidates": [...], "usageMetadata": {...}}
    ]

``JsonArraySplitter`` forwards every chunk at once, as it came (``SSEEvent.raw`` is the
chunk: nothing is held back, so the caller reads the array as the provider writes it), and
hands each complete top-level object (an element of the array, or a lone object such as an
error body) to the tracker in ``SSEEvent.data``: one event per chunk, plus one with empty
``raw`` for each further element completed in the same chunk.

It follows strings, escapes and nesting over the structural bytes only (one regex scan,
linear in the bytes). Bounded: an element over ``max_event`` bytes is not held; it is
counted in ``oversized_events`` and never parsed (its usage, if it carried any, is then
estimated or taken from a later element). One splitter per stream; not thread-safe.
"""

from __future__ import annotations

import re

from spendgate.providers.sse import DEFAULT_MAX_EVENT, SSEEvent

_STRUCTURAL = re.compile(rb'[{}\[\]"\\]')
_OPEN, _CLOSE, _QUOTE, _BACKSLASH = ord("{"), ord("}"), ord('"'), ord("\\")
_OPEN_ARRAY, _CLOSE_ARRAY = ord("["), ord("]")


class JsonArraySplitter:
    """See the module docstring. ``max_event``: the largest element, in bytes, parsed."""

    __slots__ = ("_depth", "_element_depth", "_escaped_at", "_held", "_in_string", "_max",
                 "_offset", "_open", "_size", "_too_big", "oversized_events")

    def __init__(self, max_event: int = DEFAULT_MAX_EVENT) -> None:
        self._max = max_event
        self._depth = 0
        self._in_string = False
        self._escaped_at = -1       # stream offset of the byte a backslash escapes
        self._offset = 0            # stream offset of the current chunk's first byte
        self._open = False          # inside a top-level object (an element)
        self._element_depth = 0     # the depth its opening brace was found at
        self._held: list[bytes] = []
        self._size = 0              # bytes of the open element so far
        self._too_big = False
        self.oversized_events = 0

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        elements: list[bytes] = []
        base = self._offset
        start = 0                   # where the open element's bytes in this chunk begin
        for match in _STRUCTURAL.finditer(chunk):
            i = match.start()
            byte = chunk[i]
            if self._in_string:
                if base + i == self._escaped_at:
                    continue
                if byte == _BACKSLASH:
                    self._escaped_at = base + i + 1
                elif byte == _QUOTE:
                    self._in_string = False
            elif byte == _QUOTE:
                self._in_string = True
            elif byte in (_OPEN, _OPEN_ARRAY):
                if byte == _OPEN and not self._open and self._depth <= 1:
                    self._open, self._element_depth, start = True, self._depth, i
                self._depth += 1
            else:
                self._depth -= 1
                if self._open and self._depth == self._element_depth:
                    self._hold(chunk[start:i + 1])
                    if not self._too_big:
                        elements.append(b"".join(self._held))
                    self._held.clear()
                    self._open, self._size, self._too_big = False, 0, False
        if self._open:
            self._hold(chunk[start:])
        self._offset = base + len(chunk)
        first = SSEEvent(raw=chunk, event=None, data=elements[0] if elements else b"")
        return [first, *(SSEEvent(raw=b"", event=None, data=e) for e in elements[1:])]

    def _hold(self, piece: bytes) -> None:
        self._size += len(piece)
        if self._too_big:
            return
        if self._size > self._max:
            self._too_big = True
            self.oversized_events += 1
            self._held.clear()
            return
        self._held.append(piece)

    def flush(self) -> bytes:
        """Nothing is ever held back from the caller: every chunk went out as it came."""
        self._held.clear()
        return b""
