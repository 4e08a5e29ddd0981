"""Feeding a literal SSE transcript to a stream tracker, in arbitrary pieces, as the proxy does."""

from __future__ import annotations

from spendgate.providers.base import ResponseSummary, StreamTracker
from spendgate.providers.sse import SSESplitter


def feed_transcript(tracker: StreamTracker, raw: bytes, sizes: list[int] | None = None,
                    ) -> tuple[ResponseSummary, bytes]:
    """Feed ``raw`` in pieces of ``sizes`` (cycled; whole if None): summary, bytes kept."""
    splitter = SSESplitter()
    kept, pos, i = [], 0, 0
    while pos < len(raw):
        step = len(raw) if not sizes else sizes[i % len(sizes)]
        for event in splitter.feed(raw[pos:pos + step]):
            if tracker.feed(event):
                kept.append(event.raw)
        pos, i = pos + step, i + 1
    assert splitter.flush() == b""
    return tracker.summary(), b"".join(kept)
