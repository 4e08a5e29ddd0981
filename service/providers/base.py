"""The extension point for wire protocols: a ``Provider`` and its per-call ``StreamTracker``.

A provider knows one wire protocol (OpenAI-compatible, Anthropic). It never does I/O and
never raises on bad input: a body it cannot read yields a ``RequestInfo`` with
``model=None`` (counted as model ``unknown``) and is forwarded unchanged, because the
upstream, not the proxy, judges requests. The one exception is a request no upstream serves
and the proxy cannot account for (a token limit past ``jsonread.LIMIT_MAX``): the provider
says why in ``RequestInfo.invalid`` and the proxy answers 400 in the caller's protocol.

Lifetimes: a ``Provider`` is stateless and shared by every call (thread-safe). A
``StreamTracker`` belongs to one streamed call and is fed on the event loop, event by event.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from spendgate.providers.sse import SSEEvent, SSESplitter
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
    choices: int = 1                    # completions asked for (OpenAI's ``n``)
    strip_usage_chunk: bool = False
    metered: bool = True                # False: a path that never carries usage (models, files)
    invalid: str | None = None          # set: refuse with 400, saying this (never forwarded)
    # Batches (operation batch_create, batch_status, batch_results): unmetered, but the
    # response is kept for the accounting, which remembers who created a batch and accounts
    # each result line; ``batch_ref`` is the batch or results file id in the path.
    keep_body: bool = False
    batch_ref: str | None = None
    # The prompt in OpenAI chat (or embeddings ``input``) shape, for estimation, when the
    # wire body has another shape (Gemini ``contents``, Bedrock Converse ``messages``).
    prompt_view: dict[str, Any] | None = None
    # Which reader of the protocol the response goes to, when one protocol carries several
    # dialects (Vertex AI's Anthropic models: "anthropic"); None: the protocol's own.
    reader: str | None = None


@dataclass(slots=True)
class ResponseSummary:
    """What an upstream reported about one call. ``usage`` holds only reported counts."""

    usage: Usage = field(default_factory=Usage)
    response_model: str | None = None
    response_id: str | None = None
    finish_reasons: tuple[str, ...] = ()
    service_tier: str | None = None
    output_text: str = ""               # generated text seen, for estimating unreported output
    error_type: str | None = None       # an error the stream itself reported after its 200


@dataclass(frozen=True, slots=True)
class BatchLine:
    """One result of a downloaded batch: one call, accounted at batch prices."""

    key: str                            # the line's id (or custom_id) within its results
    model: str | None
    usage: Usage
    status: int                         # the call's HTTP status (200: it succeeded)
    error_type: str | None = None
    response_id: str | None = None


class StreamTracker(Protocol):
    """Follows one stream, event by event. ``feed`` says what the caller gets of the event:
    True its bytes as they are, False nothing (withheld), or ``bytes`` to send instead (a
    byte-level cut of ``event.raw``, never a re-encoding)."""

    def feed(self, event: SSEEvent) -> bool | bytes: ...

    def summary(self) -> ResponseSummary: ...


class StreamSplitter(Protocol):
    """Cuts one streamed response into events as its bytes arrive (``sse.SSESplitter``, and
    the framings of ``jsonarray`` and ``eventstream``). ``feed`` returns the events complete
    so far, whose ``raw`` bytes, joined, are every byte fed (nothing held back but a partial
    event); ``flush`` returns what is left at the end; ``oversized_events`` counts events over
    the size bound, forwarded unparsed. One per stream; not thread-safe."""

    oversized_events: int

    def feed(self, chunk: bytes) -> list[SSEEvent]: ...

    def flush(self) -> bytes: ...


def sse_splitter(content_type: str, max_event: int) -> StreamSplitter | None:
    """An ``SSESplitter`` for a ``text/event-stream`` response, else None."""
    return SSESplitter(max_event) if content_type.startswith("text/event-stream") else None


class Provider(Protocol):
    """One wire protocol. Listed by name in ``providers.PROVIDERS``.

    Paths: the proxy canonicalises every request path once (``hotpath/routing.py``) and
    forwards that canonical form; a provider classifies the call from its lenient *view*:
    percent-decoded, ``;params`` stripped per segment, no empty segments, no trailing slash
    (``/v1/chat/%63ompletions/`` and ``/v1//chat/completions;x=1`` are both
    ``/v1/chat/completions``). Classify as leniently as any upstream might route (suffixes,
    case-insensitive): metering a call the upstream answers 404 costs nothing, not metering
    one it serves is a way around every budget. A protocol needs no special case in routing:

    - a ``:`` verb (Gemini's ``/v1beta/models/{model}:generateContent``) is ``:`` in the
      view whether the caller sent ``:`` or ``%3A``; match it there;
    - an encoded ``/`` (``%2F``) is refused (400) everywhere, because upstreams disagree on
      whether it separates segments, except in the segment right after one whose view is in
      ``encoded_slash_after``. Bedrock would set ``frozenset({"model"})``: in
      ``/model/{modelId}/converse`` the model id is percent-encoded and an ARN holds ``%3A``
      and ``%2F`` (``arn%3Aaws%3Abedrock%3A...%3Ainference-profile%2Fus.anthropic...``). The
      canonical path keeps that ``%2F`` encoded (what Bedrock expects); the view decodes it,
      so there the id spans two segments and the call still ends in ``/converse``.
    """

    name: str
    encoded_slash_after: frozenset[str]   # segment names an opaque, %2F-holding one follows
    key_header: str                       # where a custody ``api_key`` goes, by default
    key_query: str | None                 # a query parameter callers may send their key in

    def parse_request(self, method: str, path: str, body: bytes) -> RequestInfo:
        """Read a request; ``path`` is the view of the upstream path (``/v1/chat/completions``,
        see the class docstring). Never raises: a bound broken goes in ``invalid``."""
        ...

    def parse_response(self, info: RequestInfo, body: bytes) -> ResponseSummary:
        """Read a complete (non-streamed) response body; never raises."""
        ...

    def stream_tracker(self, info: RequestInfo) -> StreamTracker:
        """A fresh tracker for one streamed call."""
        ...

    def stream_splitter(self, info: RequestInfo, content_type: str,
                        max_event: int) -> StreamSplitter | None:
        """How a response of ``content_type`` to a metered call is cut into events for its
        ``stream_tracker`` (events at most ``max_event`` bytes are parsed); None: it is not
        a stream, and is buffered whole."""
        ...
