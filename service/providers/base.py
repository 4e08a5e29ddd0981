"""The extension point for wire protocols: a ``Provider`` and its per-call ``StreamTracker``.

A provider knows one wire protocol (OpenAI-compatible, Anthropic). It never does I/O and
never raises on bad input: a body it cannot read yields a ``RequestInfo`` with
``model=None`` (counted as model ``unknown``) and is forwarded unchanged, because the
upstream, not the proxy, judges requests.

Lifetimes: a ``Provider`` is stateless and shared by every call (thread-safe). A
``StreamTracker`` belongs to one streamed call and is fed on the event loop, event by event.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from spendgate.providers.sse import SSEEvent
from spendgate.usage import Usage


@dataclass(slots=True)
class RequestInfo:
    """What the proxy needs to know about a request, parsed once from its body.

    ``upstream_body`` is the body to send: the caller's bytes, unchanged, except for the one
    sanctioned rewrite (OpenAI streams get ``stream_options.include_usage``, and then
    ``strip_usage_chunk`` tells the tracker to hide the usage-only chunk from the caller).
    """

    operation: str                      # chat, text_completion, embeddings, responses, other
    model: str | None                   # the model the caller asked for
    stream: bool
    upstream_body: bytes
    json: dict[str, Any] | None = None  # the parsed body, for estimation and telemetry
    max_tokens: int | None = None
    strip_usage_chunk: bool = False
    metered: bool = True                # False: a path that never carries usage (models, files)


@dataclass(slots=True)
class ResponseSummary:
    """What an upstream reported about one call. ``usage`` holds only reported counts."""

    usage: Usage = field(default_factory=Usage)
    response_model: str | None = None
    response_id: str | None = None
    finish_reasons: tuple[str, ...] = ()
    service_tier: str | None = None
    output_text: str = ""               # generated text seen, for estimating unreported output


class StreamTracker(Protocol):
    """Follows one SSE stream. ``feed`` returns False for an event the caller must not see."""

    def feed(self, event: SSEEvent) -> bool: ...

    def summary(self) -> ResponseSummary: ...


class Provider(Protocol):
    """One wire protocol. Listed by name in ``providers.PROVIDERS``."""

    name: str

    def parse_request(self, method: str, path: str, body: bytes) -> RequestInfo:
        """Read a request; ``path`` is the upstream path (``/v1/chat/completions``)."""
        ...

    def parse_response(self, info: RequestInfo, body: bytes) -> ResponseSummary:
        """Read a complete (non-streamed) response body; never raises."""
        ...

    def stream_tracker(self, info: RequestInfo) -> StreamTracker:
        """A fresh tracker for one streamed call."""
        ...
