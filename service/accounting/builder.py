"""One finished call's record: usage read, gaps estimated, priced.

``RecordBuilder.build`` is what the record pipeline's thread runs per call: the provider
reads the usage the upstream reported (a streamed call's tracker already has it; a buffered
body is decoded first), the tokenizer estimates what is missing (a hang-up is billed for
what was generated), the catalog prices it exactly, and one immutable ``UsageRecord``
carries all of it to the sinks.

Bounded: a gzip or deflate body is decoded to at most ``max_decoded`` bytes (the caller got
the upstream's bytes unchanged long before). A body that decodes to more, or does not
decode, has unreadable usage: it is read as reporting none, so the call is estimated
(``source="estimated"``, ``spendgate_usage_missing_total``) and one warning of fixed length
says so. Unpriced models are logged once each, the name cut to ``LOGGED_NAME_CHARS``, for
at most ``LOGGED_MODELS`` distinct names per process; past that, one line says that later
ones are only counted (``spendgate_unpriced_requests_total``).
"""

from __future__ import annotations

import logging
import re
import zlib
from collections.abc import Mapping
from decimal import Decimal

from spendgate.accounting.batches import PARSERS, BatchBook, Owner
from spendgate.accounting.pricing import PriceCatalog, Quote
from spendgate.accounting.tokens import EncodingDataError, TokenEstimator
from spendgate.providers.base import BatchLine, Provider, ResponseSummary
from spendgate.records import STATUS_CLIENT_CLOSED, CallOutcome, UsageRecord
from spendgate.usage import Usage

log = logging.getLogger("spendgate.pipeline")

DEFAULT_MAX_DECODED = 64 * 1024 * 1024   # server.max_decoded_mb's default
LOGGED_MODELS = 256                      # distinct unpriced model names logged per process
LOGGED_NAME_CHARS = 100                  # of a model name, in a log line
_INFLATE_STEP = 1024 * 1024


class RecordBuilder:
    """Turns one finished ``CallOutcome`` into its ``UsageRecord``.

    ``keep_request``: records carry the parsed request body (span request attributes);
    ``keep_output``: they carry the generated text too (opt-in content capture);
    ``max_decoded``: the most bytes a buffered body is decoded to (``server.max_decoded_mb``).
    Its state: the catalog (swapped whole on reload, ``use_catalog``), the unpriced names it
    has logged (at most ``LOGGED_MODELS``) and whether it has logged a tokenizer failure.
    Used from the pipeline's one thread; ``use_catalog`` from any.
    """

    def __init__(self, providers: Mapping[str, Provider], catalog: PriceCatalog,
                 estimator: TokenEstimator, keep_request: bool = False,
                 keep_output: bool = False, max_decoded: int = DEFAULT_MAX_DECODED,
                 batches: BatchBook | None = None) -> None:
        self.providers = providers
        self.batches = batches if batches is not None else BatchBook()
        self.catalog = catalog
        self.estimator = estimator
        self.keep_request = keep_request
        self.keep_output = keep_output
        self.max_decoded = max_decoded
        self._unpriced_logged: set[str] = set()
        self._tokenizer_failure_logged = False

    def use_catalog(self, catalog: PriceCatalog) -> None:
        """Reload: price later records with ``catalog``."""
        self.catalog = catalog

    def summary(self, outcome: CallOutcome) -> ResponseSummary:
        info = outcome.request
        if outcome.tracker is not None:
            return outcome.tracker.summary()
        if outcome.response_body is not None and info is not None and info.metered:
            body = self._readable_body(outcome)
            if body is None:  # unreadable: no usage reported, so it is estimated
                return ResponseSummary()
            return self.providers[outcome.protocol].parse_response(info, body)
        return ResponseSummary()

    def _readable_body(self, outcome: CallOutcome) -> bytes | None:
        """The buffered body with its content-encoding undone, or None when it cannot be
        read within ``max_decoded`` bytes (one warning, of fixed length, per such call)."""
        body, encoding = outcome.response_body or b"", outcome.response_encoding
        try:
            return _decoded(body, encoding, self.max_decoded)
        except _TooLarge:
            log.warning("a %s response body from upstream %s decodes to more than "
                        "server.max_decoded_mb (%d MiB): not read, its usage is estimated",
                        encoding, outcome.upstream, self.max_decoded // (1024 * 1024))
        except zlib.error:
            log.warning("could not decode a %s response body from upstream %s; its usage "
                        "is estimated", encoding, outcome.upstream)
        return None

    def build_all(self, outcome: CallOutcome) -> list[UsageRecord]:
        """The records of one call: its own, or, for a batch's results downloaded the first
        time, one per result line (operation ``batch``, at batch prices, attributed to the
        batch's creator; see ``batches``). Never raises."""
        info = outcome.request
        if info is None or not info.keep_body or not 200 <= outcome.status < 300:
            return [self.build(outcome)]
        try:
            lines = self._batch(outcome)
        except Exception:
            log.exception("could not read a batch response from %s", outcome.upstream)
            lines = []
        if not lines:
            return [self.build(outcome)]
        assert info.batch_ref is not None  # _batch returns lines only for batch results
        owner = self.batches.owner(outcome.upstream, info.batch_ref) or Owner(
            outcome.project, outcome.user, outcome.virtual_key, outcome.tags)
        return [self._line_record(outcome, line, owner, i == 0) for i, line in enumerate(lines)]

    def _batch(self, outcome: CallOutcome) -> list[BatchLine]:
        """Remember a batch's creator and output file; the result lines to account."""
        info = outcome.request
        parsers = PARSERS.get(outcome.protocol)
        if info is not None and info.operation == "batch_results" and (
                outcome.response_body is None):
            log.warning("batch results from upstream %s were over server.max_decoded_mb: "
                        "forwarded, but their calls are not accounted", outcome.upstream)
        body = self._readable_body(outcome) if outcome.response_body is not None else None
        if info is None or parsers is None or body is None:
            return []
        ids, results = parsers
        upstream = outcome.upstream
        if info.operation in ("batch_create", "batch_status"):
            batch_id, file_id = ids(body)
            if batch_id and info.operation == "batch_create":
                self.batches.created(upstream, batch_id, Owner(
                    outcome.project, outcome.user, outcome.virtual_key, outcome.tags))
            if batch_id and file_id:
                self.batches.output_file(upstream, file_id, batch_id)
            return []
        if info.operation != "batch_results" or not info.batch_ref:
            return []
        lines = results(body)
        if not lines or not self.batches.first_download(upstream, info.batch_ref):
            return []  # not batch results, or already accounted
        return lines

    def _line_record(self, outcome: CallOutcome, line: BatchLine, owner: Owner,
                     first: bool) -> UsageRecord:
        model = line.model or "unknown"
        quote, priced, source = None, True, None
        if not line.usage.is_empty:
            quote, priced, source = self._quote(line.usage, (model,), outcome, "batch", None)
            if not priced:
                self._log_unpriced(model)
        quote = quote or _FREE
        return UsageRecord(
            start_unix=outcome.start_unix, upstream=outcome.upstream, provider=outcome.provider,
            protocol=outcome.protocol, operation="batch", model=model,
            response_model=line.model, project=owner.project, user=owner.user,
            virtual_key=owner.virtual_key, tags=owner.tags, status=line.status, stream=False,
            metered=True,
            usage=line.usage, cost_usd=quote.cost, priced=priced, price_source=source,
            duration_s=0.0, ttft_s=None, tpot_s=None, overhead_s=0.0,
            error_type=line.error_type, client_closed=False, response_id=line.response_id,
            finish_reasons=(), service_tier="batch", request_id=outcome.request_id,
            max_tokens=None, reservation=outcome.reservation if first else None,
            budget_decision=outcome.budget_decision if first else None,
            price_tier=quote.tier if source else None, context_tier=quote.context_tier,
            fees_usd=quote.fees, price_fallbacks=tuple(sorted(quote.fallbacks)))

    def build(self, outcome: CallOutcome) -> UsageRecord:
        """The call's record. Never raises: if reading usage or pricing fails (a bug), the
        call is still recorded, with no usage and ``error_type`` ``record_build_failed``, so
        it is counted and its budget reservation released."""
        info = outcome.request
        metered = info is not None and info.metered
        model = (info.model if info is not None else None) or "unknown"
        error_type = outcome.error_type
        try:
            summary = self.summary(outcome)
            error_type = error_type or summary.error_type  # an error frame after the 200
            usage, quote, priced, price_source = self._account(outcome, summary, model)
        except Exception:
            log.exception("could not read the usage of a call to %s", outcome.upstream)
            summary, usage = ResponseSummary(), Usage()
            quote, priced, price_source = None, True, None
            error_type = "record_build_failed"
        quote = quote or _FREE
        return UsageRecord(
            start_unix=outcome.start_unix, upstream=outcome.upstream, provider=outcome.provider,
            protocol=outcome.protocol, operation=info.operation if info else "other",
            model=model, response_model=summary.response_model, project=outcome.project,
            user=outcome.user, virtual_key=outcome.virtual_key, status=outcome.status,
            stream=bool(info and info.stream), metered=metered, usage=usage,
            cost_usd=quote.cost,
            priced=priced, price_source=price_source, duration_s=outcome.duration_s,
            ttft_s=outcome.ttft_s, tpot_s=_time_per_output_token(outcome, usage),
            overhead_s=outcome.overhead_s, error_type=error_type,
            client_closed=outcome.client_closed, response_id=summary.response_id,
            finish_reasons=summary.finish_reasons, service_tier=summary.service_tier,
            request_id=outcome.request_id, max_tokens=info.max_tokens if info else None,
            trace=outcome.trace, chunks=outcome.chunks,
            request_json=info.json if self.keep_request and info is not None else None,
            output_text=summary.output_text if self.keep_output else None,
            reservation=outcome.reservation, budget_decision=outcome.budget_decision,
            tags=outcome.tags, limit_ticket=outcome.limit_ticket,
            price_tier=quote.tier if price_source else None, context_tier=quote.context_tier,
            fees_usd=quote.fees, price_fallbacks=tuple(sorted(quote.fallbacks)),
            method=outcome.method[:16], path=loggable_path(outcome.path),
            error_message=outcome.error_message,
        )

    def _account(self, outcome: CallOutcome, summary: ResponseSummary, model: str,
                 ) -> tuple[Usage, Quote | None, bool, str | None]:
        """Usage (gaps estimated) and its price: (usage, quote, priced, price source). The
        tier is the one the upstream says it served, else the one asked for."""
        info = outcome.request
        usage = summary.usage
        metered = info is not None and info.metered
        generated = outcome.tracker is not None or 200 <= outcome.status < 300
        if metered and info is not None and generated:
            usage = self._fill_gaps(outcome, usage, summary)
        if not metered or usage.is_empty:
            return usage, None, True, None
        request = (info.json if info is not None else None) or {}
        tier = summary.service_tier or _text(request.get("service_tier"))
        quote, priced, source = self._quote(usage, (summary.response_model, model), outcome,
                                            tier, _search_size(request))
        if not priced:
            self._log_unpriced(model)
        return usage, quote, priced, source

    def _quote(self, usage: Usage, models: tuple[str | None, ...], outcome: CallOutcome,
               tier: str | None, search_size: str | None,
               ) -> tuple[Quote | None, bool, str | None]:
        """The price of ``usage`` for the first of ``models`` the catalog knows:
        (quote, priced, price source); (None, False, None) when none is."""
        for candidate in models:
            if candidate:
                resolved = self.catalog.resolve(candidate, upstream=outcome.upstream,
                                                provider=outcome.provider)
                if resolved is not None:
                    quote = resolved.price.quote(usage, tier, search_size,
                                                 self.catalog.multiplier(outcome.upstream))
                    return quote, True, resolved.source
        return None, False, None

    def _fill_gaps(self, outcome: CallOutcome, usage: Usage, summary: ResponseSummary) -> Usage:
        """Estimate the types the upstream did not report; a hang-up is billed as generated."""
        info = outcome.request
        assert info is not None
        prompt = output = None
        try:
            if usage.input is None and info.prompt_view is not None:  # another wire shape
                prompt = self.estimator.estimate_prompt(info.operation, info.prompt_view,
                                                        info.model)
            elif usage.input is None:
                prompt = self.estimator.estimate_prompt(
                    info.operation, info.json, info.model,
                    protocol="anthropic" if outcome.protocol == "anthropic" else "openai")
            if usage.output is None and info.operation != "embeddings":
                output = self.estimator.count_text(summary.output_text, info.model)
        except EncodingDataError as error:  # the call still counts, with what was reported
            if not self._tokenizer_failure_logged:
                self._tokenizer_failure_logged = True
                log.error("cannot estimate tokens: %s", error)
        return usage.with_estimates(input=prompt, output=output)

    def _log_unpriced(self, model: str) -> None:
        """Once per name, for the first ``LOGGED_MODELS`` names: a caller picks the model
        name, so neither a line nor the set of names logged may grow with it."""
        logged = self._unpriced_logged
        if len(logged) > LOGGED_MODELS:
            return
        name = model[:LOGGED_NAME_CHARS]
        if name in logged:
            return
        logged.add(name)
        if len(logged) > LOGGED_MODELS:
            log.warning("more than %d unpriced models: later ones are counted in "
                        "spendgate_unpriced_requests_total, not logged", LOGGED_MODELS)
            return
        shown = name if len(model) <= LOGGED_NAME_CHARS else f"{name}... ({len(model)} chars)"
        log.warning("no price for model %r: its calls cost 0 until it is priced "
                    "(pricing.overrides or an upstream's pricing)", shown)


_FREE = Quote(cost=Decimal(0), tier="standard")


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _search_size(request: dict[str, object]) -> str | None:
    """The web search context size a request asked for: Responses ``tools[]`` of type
    ``web_search*``, or Chat Completions ``web_search_options``; None: the default."""
    tools = request.get("tools")
    for tool in tools if isinstance(tools, list) else ():
        if isinstance(tool, dict) and str(tool.get("type", "")).startswith("web_search"):
            return _text(tool.get("search_context_size"))
    options = request.get("web_search_options")
    return _text(options.get("search_context_size")) if isinstance(options, dict) else None


class _TooLarge(Exception):
    """A body decodes to more than the limit."""


def _decoded(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo the content-encoding the caller accepted (the proxy forwards it unchanged),
    producing at most ``limit`` bytes: raises ``_TooLarge`` past it, ``zlib.error`` for a
    body that does not decode (truncated included). Other encodings are returned as they
    are (and then do not parse)."""
    if encoding == "gzip":
        return _inflate(body, 31, limit)
    if encoding == "deflate":
        try:
            return _inflate(body, 15, limit)
        except zlib.error:  # some servers send raw deflate without the zlib header
            return _inflate(body, -15, limit)
    return body


def _inflate(body: bytes, wbits: int, limit: int) -> bytes:
    """Decode in steps of ``_INFLATE_STEP``, so that what is held never passes the limit by
    more than one step (one ``decompress`` call sized to the limit would hold its output
    twice: the growing buffer, then the bytes made of it)."""
    inflater = zlib.decompressobj(wbits)
    parts: list[bytes] = []
    size, data = 0, body
    while not inflater.eof:
        part = inflater.decompress(data, _INFLATE_STEP)
        data = inflater.unconsumed_tail
        if not part and not data:
            raise zlib.error("truncated stream")
        size += len(part)
        if size > limit:
            raise _TooLarge
        parts.append(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


LOGGED_PATH_CHARS = 256
_UNSAFE = re.compile(rb"[^\x21-\x5b\x5d-\x7e]")


def loggable_path(raw: bytes) -> str:
    """A request path safe for a log line: its first ``LOGGED_PATH_CHARS`` bytes, those
    outside printable ASCII (space and backslash included) written ``\\xNN``, so no path
    can forge a line or a field."""
    return _UNSAFE.sub(lambda m: b"\\x%02x" % m.group()[0], raw[:LOGGED_PATH_CHARS]
                       ).decode("ascii")


def _time_per_output_token(outcome: CallOutcome, usage: Usage) -> float | None:
    output = usage.output
    if not output or (outcome.status == STATUS_CLIENT_CLOSED and outcome.ttft_s is None):
        return None
    if outcome.ttft_s is not None:
        return (outcome.duration_s - outcome.ttft_s) / (output - 1) if output > 1 else None
    return outcome.duration_s / output
