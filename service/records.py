"""The two shapes of a call: ``CallOutcome`` while it runs, ``UsageRecord`` once it is done.

``CallOutcome`` is filled in by the proxy on the event loop, a few attribute writes per call;
it is handed to the ``RecordPipeline`` exactly once, after the caller has its last byte, and
not touched by the proxy afterwards. The pipeline turns it into one immutable ``UsageRecord``
(usage extracted, gaps estimated, priced), which every sink and the budget ledger receive.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from spendgate.providers.base import RequestInfo, StreamTracker
from spendgate.tags import NO_TAGS
from spendgate.usage import Usage

STATUS_CLIENT_CLOSED = 499  # nginx's convention: the caller hung up before the response ended


class CallOutcome:
    """Mutable facts about one call in flight. Owned by the proxy until handed off."""

    __slots__ = (
        "budget_decision",
        "chunks",
        "client_closed",
        "duration_s",
        "error_message",
        "error_type",
        "key_max_reserve",
        "limit_ticket",
        "method",
        "overhead_s",
        "path",
        "project",
        "protocol",
        "provider",
        "request",
        "request_id",
        "reservation",
        "response_body",
        "response_encoding",
        "start_unix",
        "started",
        "status",
        "tags",
        "trace",
        "tracker",
        "ttft_s",
        "upstream",
        "user",
        "virtual_key",
    )

    def __init__(self, upstream: str, provider: str, protocol: str, start_unix: float,
                 started: float) -> None:
        self.upstream = upstream
        self.provider = provider            # gen_ai provider name, e.g. openai, azure.ai.openai
        self.protocol = protocol            # wire protocol: openai | anthropic | gemini | bedrock
        self.start_unix = start_unix
        self.started = started              # perf_counter() at arrival
        self.project = "default"
        self.user: str | None = None
        self.virtual_key: str | None = None  # the key's project-scoped name, never the secret
        self.key_max_reserve: int | None = None  # its max_reserve_usd in nano-dollars
        self.tags: Mapping[str, str] = NO_TAGS  # x-spendgate-tags under the key's fixed tags
        self.request: RequestInfo | None = None
        self.status = 0
        self.error_type: str | None = None
        self.client_closed = False
        self.response_body: bytes | None = None
        self.response_encoding: str | None = None  # content-encoding of response_body
        self.tracker: StreamTracker | None = None
        self.ttft_s: float | None = None
        self.chunks = 0                      # SSE events received from the upstream
        self.duration_s = 0.0
        self.overhead_s = 0.0
        self.request_id: str | None = None
        self.trace: Any = None               # telemetry's per-call state, opaque here
        self.reservation: Any = None         # spendgate.budgets.gate.Reservation, when one was made
        self.budget_decision: str | None = None  # "allowed" | "blocked"; None: no block budget
        self.limit_ticket: Any = None        # spendgate.limits.gate.LimitTicket, when admitted
        self.method = ""                     # the request's method and raw path (no query),
        self.path = b""                      # made safe to log by the record builder
        self.error_message: str | None = None  # the ProxyError's message: the cause in words


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One finished call, as every sink sees it. Immutable and safe to share between threads.

    ``model`` is the model the caller asked for (``unknown`` when the body had none);
    ``response_model`` is what the upstream reported (a dated snapshot, usually). ``cost_usd``
    is exact; it is 0 when ``priced`` is False.
    """

    start_unix: float
    upstream: str
    provider: str
    protocol: str
    operation: str
    model: str
    response_model: str | None
    project: str
    user: str | None
    virtual_key: str | None
    status: int
    stream: bool
    metered: bool
    usage: Usage
    cost_usd: Decimal
    priced: bool
    price_source: str | None
    duration_s: float
    ttft_s: float | None
    tpot_s: float | None
    overhead_s: float
    error_type: str | None
    client_closed: bool
    response_id: str | None
    finish_reasons: tuple[str, ...]
    service_tier: str | None
    request_id: str | None
    max_tokens: int | None
    trace: Any = None
    chunks: int = 0                                # SSE events of a streamed response
    # Kept only when a sink needs them (see RecordBuilder): the parsed request body for span
    # request attributes and content capture, and the generated text for content capture.
    request_json: dict[str, Any] | None = None
    output_text: str | None = None
    # Budgets (spendgate.budgets.gate): the reservation the call held (settled by the ledger sink)
    # and the admission decision: "allowed", "blocked", or None when no block budget covers it.
    reservation: Any = None
    budget_decision: str | None = None
    # The price's detail (accounting.rates.Quote): the service tier and context tier its rates
    # came from ("standard" and None for the base), the per-request fees inside cost_usd, and
    # the fallback reasons taken (tier, context, cache_ttl, fee, modality).
    price_tier: str | None = None
    context_tier: str | None = None
    fees_usd: Decimal = Decimal(0)
    price_fallbacks: tuple[str, ...] = ()
    # No call behind it: a self-hosted GPU's cost no call carries (an idle interval, traffic
    # that bypassed the proxy; accounting.gpu). Only sinks with ``takes_charges`` get it.
    charge_only: bool = False
    # The access log's: the request's method and path (no query; non-printable characters
    # escaped, at most 256 characters) and, for a call the proxy answered or cut, the cause
    # in words, as the caller's error message said it (no secrets).
    method: str = ""
    path: str = ""
    error_message: str | None = None
    # The call's tags (x-spendgate-tags, a virtual key's fixed tags winning): key -> value.
    # Shared, never mutated.
    tags: Mapping[str, str] = field(default_factory=lambda: NO_TAGS)
    # spendgate.limits.gate.LimitTicket: the rate limits the call was admitted under.
    limit_ticket: Any = None

    @property
    def usage_estimated(self) -> bool:
        return bool(self.usage.estimated)
