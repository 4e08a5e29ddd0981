"""The hot path: a raw ASGI app that forwards ``/{upstream}/{path}`` and measures the call.

Per call it does the minimum on the event loop: check the ``Host`` it was reached by
(``exposure``), route, authenticate, check a browser's ``Origin`` and attribute the call,
all from its headers (``attribution``: no body is read for a caller without a valid key),
read the body, parse it once (provider), admit it under rate limits and budgets (the
``RateLimiter`` and ``BudgetGate`` Protocols), forward with a pooled keep-alive connection, and
send the upstream's status, headers and bytes back as they arrive. Usage extraction,
estimation, pricing and every export happen later, in the ``RecordPipeline`` thread, after
the caller has its last byte; the proxy hands over one ``CallOutcome`` per call.

Transparency rules: request bodies go upstream byte for byte (the one sanctioned rewrite is
the provider's ``stream_options.include_usage``); responses come back with hop-by-hop headers
dropped and everything else unchanged; SSE is forwarded event by event, never re-encoded: only
the usage-only chunk the proxy itself asked for is withheld, and the ``"usage":null`` member
asking for it added to the other chunks is cut out of their bytes. The caller hears the
call's id as ``x-spendgate-request-id`` only (an ``x-request-id`` would pass for the
provider's).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import unquote_plus

from spendgate.asgi import CUT_SHORT, Receive, Scope, Send
from spendgate.config import Config, UpstreamConfig
from spendgate.errors import (
    BadRequest,
    BodyTooLarge,
    ClientClosed,
    ForbiddenOrigin,
    MisdirectedRequest,
    ProxyError,
    error_body,
    error_headers,
)
from spendgate.hotpath.attribution import (
    CREDENTIAL_HEADERS,
    UNKNOWN_PROJECT,
    KeyRing,
    admit,
    authenticate,
    check_key,
    check_model,
)
from spendgate.hotpath.exposure import HostAllowList, OriginAllowList
from spendgate.hotpath.headers import metered_method, response_headers, upstream_headers
from spendgate.hotpath.routing import Route, route
from spendgate.hotpath.tracecontext import request_id, start_trace
from spendgate.providers import PROVIDERS, Provider, StreamTracker
from spendgate.providers.base import StreamSplitter
from spendgate.providers.sse import SSEEvent
from spendgate.records import STATUS_CLIENT_CLOSED, CallOutcome
from spendgate.upstream.client import UpstreamClient, UpstreamTarget, iter_body, read_body
from spendgate.upstream.credentials import RequestSigner, signer_for

log = logging.getLogger("spendgate.proxy")

MISDIRECTED = ("this proxy does not serve that Host name: list it in server.allowed_hosts "
               "(on loopback the default is localhost, 127.0.0.1 and ::1)")
FORBIDDEN_ORIGIN = ("calls from a browser page are refused unless server.allowed_origins "
                    "lists its Origin")

_WELL_KNOWN_HOSTS = {
    "api.openai.com": "openai", "api.anthropic.com": "anthropic",
    "generativelanguage.googleapis.com": "gcp.gemini", "api.mistral.ai": "mistral_ai",
    "api.deepseek.com": "deepseek", "api.x.ai": "x_ai", "api.groq.com": "groq",
    "api.perplexity.ai": "perplexity", "api.cohere.com": "cohere",
}


_PROTOCOL_NAMES = {"gemini": "gcp.gemini", "bedrock": "aws.bedrock"}


def provider_name_for(config: UpstreamConfig, host: str) -> str:
    """``gen_ai.provider.name`` of an upstream: configured, else known by host, else protocol."""
    if config.provider_name:
        return config.provider_name
    if host.endswith(".openai.azure.com"):
        return "azure.ai.openai"
    if config.provider == "gemini" and (host.endswith("aiplatform.googleapis.com")
                                        or config.google_credentials):
        return "gcp.vertex_ai"
    return _WELL_KNOWN_HOSTS.get(host, _PROTOCOL_NAMES.get(config.provider, config.provider))


class Upstream:
    """One configured upstream, with everything the hot path needs precomputed."""

    __slots__ = ("config", "credential", "custody_headers", "in_flight", "name", "protocol",
                 "provider", "provider_name", "signer", "target")

    def __init__(self, name: str, config: UpstreamConfig, in_flight: Any) -> None:
        self.name = name
        self.config = config
        self.protocol = config.provider
        self.provider: Provider = PROVIDERS[config.provider]
        self.target = UpstreamTarget(name, config)
        self.provider_name = provider_name_for(config, self.target.host)
        self.in_flight = in_flight
        self.credential: tuple[str, str] | None = None
        # The caller's credential headers the proxy drops when it holds the key itself.
        self.custody_headers = CREDENTIAL_HEADERS
        self.signer: RequestSigner | None = signer_for(name, config)
        if config.api_key:
            header = (config.api_key_header or self.provider.key_header).lower()
            value = f"Bearer {config.api_key}" if header == "authorization" else config.api_key
            self.credential = (header, value)
            self.custody_headers = CREDENTIAL_HEADERS | {header.encode("latin-1")}


class BudgetGate(Protocol):
    """Admission control for spend (implemented by ``budgets.gate``): reserve a call's
    worst-case cost.

    ``reserve`` raises ``ProxyError`` (429 ``BudgetExceeded``) to refuse the call; it records
    what it reserved on the outcome so the ledger can settle it from the ``UsageRecord``.
    """

    async def reserve(self, outcome: CallOutcome) -> None: ...


class RateLimiter(Protocol):
    """Admission control for rate (implemented by ``limits.gate``): requests and tokens per
    minute, calls in flight.

    ``admit`` (asked only while ``active``) raises ``ProxyError`` (429 ``RateLimitExceeded``)
    to refuse the call; it records what the call holds on ``outcome.limit_ticket``, which
    ``release`` frees once the call has ended, whatever its outcome.
    """

    @property
    def active(self) -> bool: ...

    async def admit(self, outcome: CallOutcome) -> None: ...

    async def release(self, ticket: object) -> None: ...


class OutcomeSink(Protocol):
    """Where a finished call goes (``accounting.pipeline.RecordPipeline``): once per call,
    after the caller has its last byte."""

    def submit(self, outcome: CallOutcome) -> None: ...


class ProxyApp:
    """ASGI app for ``/{upstream}/{path}``.

    Built with everything it uses: the upstream client (connections open inside the running
    loop, on first use), where outcomes go, the in-flight gauge per upstream, the ``Host``
    names and browser origins it serves (``exposure``), and telemetry's two decisions
    (``propagate``: this proxy's spans are recorded, so the upstream sees them as parents;
    ``sample_new_traces``: a bool or a trace-id ratio). ``reconfigure`` swaps the keys and
    the budget gate on reload, each as a whole object, so a call sees the old or the new
    pair, never a mix.
    """

    def __init__(self, config: Config, client: UpstreamClient, outcomes: OutcomeSink,
                 in_flight: Callable[[str], Any], *, hosts: HostAllowList,
                 origins: OriginAllowList, gate: BudgetGate | None = None,
                 limiter: RateLimiter | None = None,
                 propagate: bool = False, sample_new_traces: bool | float = True) -> None:
        self.upstreams = {name: Upstream(name, cfg, in_flight(name))
                          for name, cfg in config.upstreams.items()}
        # What routing needs of each upstream: where its protocol takes an encoded "/".
        self._routes = {name: upstream.provider.encoded_slash_after
                        for name, upstream in self.upstreams.items()}
        self.max_body = int(config.server.max_body_mb * 1024 * 1024)
        self.max_event = int(config.server.max_event_kb * 1024)
        # A batch's results are streamed through and a copy kept up to this many bytes.
        self.max_kept = int(config.server.max_decoded_mb * 1024 * 1024)
        self.client = client
        self.outcomes = outcomes
        self.hosts = hosts
        self.origins = origins
        self.propagate = propagate
        self.sample_new_traces = sample_new_traces
        self._policy: tuple[KeyRing, BudgetGate | None] = (KeyRing(config.keys), gate)
        self.limiter = limiter   # one for the process: it swaps its own limits on reload

    def reconfigure(self, keyring: KeyRing, gate: BudgetGate | None) -> None:
        """Reload: the virtual keys and the budget gate new calls are admitted with."""
        self._policy = (keyring, gate)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        headers = dict(scope["headers"])
        try:
            if not self.hosts.allows(headers.get(b"host")):
                raise MisdirectedRequest(MISDIRECTED)
            target = route(scope.get("raw_path") or scope["path"].encode(),
                           scope["query_string"], self._routes)
        except ProxyError as error:
            outcome = CallOutcome("unknown", "unknown", _guess_protocol(headers), time.time(),
                                  started)
            outcome.method, outcome.path = scope["method"], scope.get("raw_path") or b""
            try:
                await _reply_error(send, error, outcome)
            finally:
                outcome.duration_s = outcome.overhead_s = time.perf_counter() - started
                self.outcomes.submit(outcome)
            return
        upstream = self.upstreams[target.upstream]
        outcome = CallOutcome(upstream.name, upstream.provider_name, upstream.protocol,
                              time.time(), started)
        outcome.method, outcome.path = scope["method"], scope.get("raw_path") or b""
        upstream.in_flight.inc()
        try:
            await self._forward(scope, receive, send, headers, upstream, target, outcome)
        except ProxyError as error:
            if outcome.status == 0:
                await _reply_error(send, error, outcome)
            else:  # the caller has the head: its answer stays truncated, the cause recorded
                outcome.error_type = error.error_type
                outcome.error_message = error.message
                scope[CUT_SHORT] = True
        except asyncio.CancelledError:
            # The server cancelled the call (its shutdown timeout): recorded as cut, not as
            # a success, then the cancellation goes on.
            outcome.error_type = outcome.error_type or "cancelled"
            outcome.error_message = outcome.error_message or "cut by the proxy's shutdown"
            scope[CUT_SHORT] = True
            raise
        except Exception:
            log.exception("proxy failure on a call to %s", upstream.name)
            if outcome.status == 0:
                await _reply_error(send, ProxyError("spendgate failed on this call"), outcome)
            outcome.error_type = "proxy_error"
        finally:
            upstream.in_flight.dec()
            outcome.duration_s = time.perf_counter() - started
            ticket = outcome.limit_ticket
            self.outcomes.submit(outcome)
            if ticket is not None and self.limiter is not None:
                # After the caller has its last byte, before this call's task ends: a caller
                # that waits for each answer finds its slot free for the next call.
                await self.limiter.release(ticket)

    async def _forward(self, scope: Scope, receive: Receive, send: Send,
                       headers: dict[bytes, bytes], upstream: Upstream, target: Route,
                       outcome: CallOutcome) -> None:
        rid = outcome.request_id = request_id(headers)
        keyring, gate = self._policy
        # Headers alone admit a call: a caller without a valid key is refused before the
        # proxy reads (let alone buffers) a byte of its body.
        query_key = upstream.provider.key_query
        query_secret = _query_param(target.raw_query, query_key) if query_key else None
        key = authenticate(headers, keyring, query_secret)
        if key is not None:
            # A refusal below counts for the key (its project and name, never the secret).
            outcome.project, outcome.virtual_key = key.project, key.name
            check_key(key, upstream.name, time.time())
            outcome.key_max_reserve = key.max_reserve
        if not self.origins.allows(headers.get(b"origin")):
            raise ForbiddenOrigin(FORBIDDEN_ORIGIN)
        admission = admit(headers, key, upstream.config)
        outcome.project, outcome.user = admission.project, admission.user
        outcome.tags = admission.tags
        body = await _read_request(receive, self.max_body, headers.get(b"content-length"))
        method: str = scope["method"]
        info = upstream.provider.parse_request(metered_method(method, headers), target.view,
                                               body)
        outcome.request = info
        if info.invalid is not None:  # a request no upstream serves, nor the ledger bounds
            raise BadRequest(info.invalid)
        if key is not None:
            check_model(key, info, method)
        out_headers = upstream_headers(
            scope["headers"],
            upstream.custody_headers if admission.drop_caller_credentials else frozenset(),
            info.stream, keyring)
        if upstream.credential is not None:
            out_headers.append(upstream.credential)
        query = target.raw_query
        if query_secret is not None and (upstream.credential is not None or upstream.signer
                                         or (keyring.enabled and keyring.match(query_secret))):
            query = _without_param(query, query_key or "")  # custody, or a virtual key
        trace = outcome.trace = start_trace(headers, self.sample_new_traces)
        if self.propagate:
            out_headers.append(("traceparent", trace.traceparent()))
        elif trace.parent_span_id is not None:  # no span of ours: the caller's stays the parent
            out_headers.append(("traceparent", trace.parent_traceparent()))
        limiter = self.limiter
        if limiter is not None and limiter.active:
            await limiter.admit(outcome)
        if gate is not None:
            await gate.reserve(outcome)
        payload = info.upstream_body if body or method in ("POST", "PUT", "PATCH") else None
        url = upstream.target.url(target.path, query)
        if upstream.signer is not None:
            out_headers = await upstream.signer.sign(
                method, str(url), upstream.target.endpoint.host_header, out_headers, payload)
        overhead = outcome.overhead_s = time.perf_counter() - outcome.started
        async with self.client.open(upstream.target, method, url, out_headers, payload) as resp:
            out = response_headers(resp.raw_headers)
            # Ours only: an x-request-id of ours would pass for the provider's request id.
            out.append((b"x-spendgate-request-id", rid.encode()))
            content_type = resp.headers.get("content-type", "")
            # An error is buffered whole, whatever its framing: it generated nothing to bill.
            splitter = (upstream.provider.stream_splitter(info, content_type, self.max_event)
                        if info.metered and resp.status < 400 else None)
            if splitter is not None:
                overhead += await self._stream_events(receive, send, resp, out,
                                                      upstream, outcome, splitter)
            elif info.metered or resp.status >= 400:
                data = await read_body(resp, upstream.target)
                received = time.perf_counter()
                outcome.response_body = data
                outcome.response_encoding = resp.headers.get("content-encoding")
                out.append((b"content-length", str(len(data)).encode()))
                outcome.status = resp.status
                await send({"type": "http.response.start", "status": resp.status,
                            "headers": out})
                await send({"type": "http.response.body", "body": data})
                overhead += time.perf_counter() - received
            else:
                outcome.status = resp.status
                kept = await _pass_through(send, resp, out, upstream.target,
                                           self.max_kept if info.keep_body else 0)
                if kept is not None:  # a batch's response, for the accounting to read
                    outcome.response_body = kept
                    outcome.response_encoding = resp.headers.get("content-encoding")
        outcome.overhead_s = overhead

    async def _stream_events(self, receive: Receive, send: Send, resp: Any,
                             headers: list[tuple[bytes, bytes]], upstream: Upstream,
                             outcome: CallOutcome, splitter: StreamSplitter) -> float:
        """Forward a stream (SSE, or another framing its provider cuts into events) event by
        event; returns the time spent in the proxy."""
        assert outcome.request is not None
        tracker = upstream.provider.stream_tracker(outcome.request)
        outcome.tracker = tracker
        outcome.status = resp.status
        await send({"type": "http.response.start", "status": resp.status,
                    "headers": headers})
        hung_up = asyncio.ensure_future(_wait_disconnect(receive))
        overhead = 0.0
        try:
            async for chunk in iter_body(resp, upstream.target):
                arrived = time.perf_counter()
                events = splitter.feed(chunk)
                if events:
                    outcome.chunks += len(events)
                    if outcome.ttft_s is None:
                        outcome.ttft_s = arrived - outcome.started
                    out = _forwarded(events, tracker)
                    if out:
                        await send({"type": "http.response.body", "body": out,
                                    "more_body": True})
                if hung_up.done():
                    # Stop the upstream generating for nobody; what it sent so far is billed.
                    outcome.client_closed = True
                    outcome.status = STATUS_CLIENT_CLOSED
                    outcome.error_type = "client_closed"
                    resp.close()
                    break
                overhead += time.perf_counter() - arrived
            rest = splitter.flush()
            await send({"type": "http.response.body", "body": rest, "more_body": False})
        finally:
            hung_up.cancel()
            if splitter.oversized_events:
                log.warning("%d stream event(s) over server.max_event_kb (%d KiB) from upstream %s "
                            "were forwarded unparsed; usage they carried is estimated",
                            splitter.oversized_events, self.max_event // 1024, upstream.name)
        return overhead


def _forwarded(events: list[SSEEvent], tracker: StreamTracker) -> bytes:
    """What the caller gets of ``events``: each as the tracker says (``StreamTracker``)."""
    parts: list[bytes] = []
    for event in events:
        kept = tracker.feed(event)
        if kept is True:
            parts.append(event.raw)
        elif kept:
            parts.append(kept)
    return b"".join(parts)


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _pass_through(send: Send, resp: Any, headers: list[tuple[bytes, bytes]],
                        target: UpstreamTarget, keep: int = 0) -> bytes | None:
    """Unmetered paths (files, audio, models): bytes straight through, nothing buffered.
    With ``keep``, a copy of the body is returned if it is at most ``keep`` bytes (else None):
    batch results, which the accounting reads after the caller has them."""
    length = resp.headers.get("content-length")
    if length is not None:
        headers.append((b"content-length", length.encode()))
    await send({"type": "http.response.start", "status": resp.status, "headers": headers})
    kept: list[bytes] | None = [] if keep else None
    size = 0
    async for chunk in iter_body(resp, target):
        if kept is not None:
            size += len(chunk)
            if size <= keep:
                kept.append(chunk)
            else:  # too large to read: forwarded all the same, not accounted
                kept = None
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    return b"".join(kept) if kept is not None else None


async def _read_request(receive: Receive, limit: int, declared: bytes | None) -> bytes:
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"request body is over the {limit // (1024 * 1024)} MB limit")
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientClosed("the caller hung up before sending its request body")
    body: bytes = message.get("body", b"")
    if not message.get("more_body"):
        return body
    chunks = [body]
    size = len(body)
    while message.get("more_body"):
        message = await receive()
        if message["type"] == "http.disconnect":  # never forward a truncated body
            raise ClientClosed("the caller hung up in the middle of its request body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"request body is over the {limit // (1024 * 1024)} MB limit")
        chunks.append(chunk)
    return b"".join(chunks)


def _guess_protocol(headers: dict[bytes, bytes]) -> str:
    if b"anthropic-version" in headers:
        return "anthropic"
    if b"x-goog-api-key" in headers:
        return "gemini"
    if headers.get(b"authorization", b"").startswith(b"AWS4-HMAC-SHA256"):
        return "bedrock"
    return "openai"


def _query_param(query: str, name: str) -> bytes | None:
    """The value of parameter ``name`` (its name percent-decoded, as servers read it)."""
    for item in query.split("&"):
        key, _, value = item.partition("=")
        if unquote_plus(key) == name:
            return unquote_plus(value).encode("utf-8", "surrogateescape")
    return None


def _without_param(query: str, name: str) -> str:
    """``query`` without any parameter ``name`` (however its name is encoded)."""
    return "&".join(item for item in query.split("&")
                    if unquote_plus(item.partition("=")[0]) != name)


async def _reply_error(send: Send, error: ProxyError, outcome: CallOutcome) -> None:
    body = error_body(error, outcome.protocol)
    outcome.status = error.status
    outcome.error_type = error.error_type
    outcome.error_message = error.message
    if error.refused:  # counted with nothing the caller claimed (errors.py)
        outcome.request = None
        if outcome.virtual_key is None:
            outcome.project = UNKNOWN_PROJECT
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode()), *error.headers,
               *error_headers(error, outcome.protocol)]
    if outcome.request_id is not None:
        headers.append((b"x-spendgate-request-id", outcome.request_id.encode()))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
