"""One finished call's record: usage read, gaps estimated, priced.

``RecordBuilder.build`` is what the record pipeline's thread runs per call: the provider
reads the usage the upstream reported (a streamed call's tracker already has it; a buffered
body is decoded first), the tokenizer estimates what is missing (a hang-up is billed for
what was generated), the catalog prices it exactly, and one immutable ``UsageRecord``
carries all of it to the sinks.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Mapping
from decimal import Decimal

from spendgate.accounting.pricing import PriceCatalog
from spendgate.accounting.tokens import EncodingDataError, TokenEstimator
from spendgate.providers.base import Provider, ResponseSummary
from spendgate.records import STATUS_CLIENT_CLOSED, CallOutcome, UsageRecord
from spendgate.usage import Usage

log = logging.getLogger("spendgate.pipeline")


class RecordBuilder:
    """Turns one finished ``CallOutcome`` into its ``UsageRecord``.

    ``keep_request``: records carry the parsed request body (span request attributes);
    ``keep_output``: they carry the generated text too (opt-in content capture). Its state:
    the catalog (swapped whole on reload, ``use_catalog``) and the names it has already
    logged a warning for. Used from the pipeline's one thread; ``use_catalog`` from any.
    """

    def __init__(self, providers: Mapping[str, Provider], catalog: PriceCatalog,
                 estimator: TokenEstimator, keep_request: bool = False,
                 keep_output: bool = False) -> None:
        self.providers = providers
        self.catalog = catalog
        self.estimator = estimator
        self.keep_request = keep_request
        self.keep_output = keep_output
        self._unpriced_logged: set[str] = set()

    def use_catalog(self, catalog: PriceCatalog) -> None:
        """Reload: price later records with ``catalog``."""
        self.catalog = catalog

    def summary(self, outcome: CallOutcome) -> ResponseSummary:
        info = outcome.request
        if outcome.tracker is not None:
            return outcome.tracker.summary()
        if outcome.response_body is not None and info is not None and info.metered:
            body = _decoded(outcome.response_body, outcome.response_encoding)
            return self.providers[outcome.protocol].parse_response(info, body)
        return ResponseSummary()

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
            usage, cost, priced, price_source = self._account(outcome, summary, model)
        except Exception:
            log.exception("could not read the usage of a call to %s", outcome.upstream)
            summary, usage = ResponseSummary(), Usage()
            cost, priced, price_source = Decimal(0), True, None
            error_type = "record_build_failed"
        return UsageRecord(
            start_unix=outcome.start_unix, upstream=outcome.upstream, provider=outcome.provider,
            protocol=outcome.protocol, operation=info.operation if info else "other",
            model=model, response_model=summary.response_model, project=outcome.project,
            user=outcome.user, virtual_key=outcome.virtual_key, status=outcome.status,
            stream=bool(info and info.stream), metered=metered, usage=usage, cost_usd=cost,
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
        )

    def _account(self, outcome: CallOutcome, summary: ResponseSummary, model: str,
                 ) -> tuple[Usage, Decimal, bool, str | None]:
        """Usage (gaps estimated) and its price: (usage, cost, priced, price source)."""
        info = outcome.request
        usage = summary.usage
        metered = info is not None and info.metered
        generated = outcome.tracker is not None or 200 <= outcome.status < 300
        if metered and info is not None and generated:
            usage = self._fill_gaps(outcome, usage, summary)
        if not metered or usage.is_empty:
            return usage, Decimal(0), True, None
        for candidate in (summary.response_model, model):
            if candidate:
                resolved = self.catalog.resolve(candidate, upstream=outcome.upstream,
                                                provider=outcome.provider)
                if resolved is not None:
                    return usage, resolved.price.cost(usage), True, resolved.source
        self._log_unpriced(model)
        return usage, Decimal(0), False, None

    def _fill_gaps(self, outcome: CallOutcome, usage: Usage, summary: ResponseSummary) -> Usage:
        """Estimate the types the upstream did not report; a hang-up is billed as generated."""
        info = outcome.request
        assert info is not None
        prompt = output = None
        try:
            if usage.input is None:
                prompt = self.estimator.estimate_prompt(
                    info.operation, info.json, info.model,
                    protocol="anthropic" if outcome.protocol == "anthropic" else "openai")
            if usage.output is None and info.operation != "embeddings":
                output = self.estimator.count_text(summary.output_text, info.model)
        except EncodingDataError as error:  # the call still counts, with what was reported
            if "tokenizer" not in self._unpriced_logged:
                self._unpriced_logged.add("tokenizer")
                log.error("cannot estimate tokens: %s", error)
        return usage.with_estimates(input=prompt, output=output)

    def _log_unpriced(self, model: str) -> None:
        if model not in self._unpriced_logged:
            self._unpriced_logged.add(model)
            log.warning("no price for model %r: its calls cost 0 until it is priced "
                        "(pricing.overrides or an upstream's pricing)", model)


def _decoded(body: bytes, encoding: str | None) -> bytes:
    """Undo the content-encoding the caller accepted (the proxy forwards it unchanged)."""
    if not encoding or encoding == "identity":
        return body
    try:
        if encoding == "gzip":
            return zlib.decompress(body, wbits=31)
        if encoding == "deflate":
            try:
                return zlib.decompress(body)
            except zlib.error:  # some servers send raw deflate without the zlib header
                return zlib.decompress(body, wbits=-15)
    except zlib.error:
        log.warning("could not decode a %s response body; its usage will be estimated", encoding)
    return body


def _time_per_output_token(outcome: CallOutcome, usage: Usage) -> float | None:
    output = usage.output
    if not output or (outcome.status == STATUS_CLIENT_CLOSED and outcome.ttft_s is None):
        return None
    if outcome.ttft_s is not None:
        return (outcome.duration_s - outcome.ttft_s) / (output - 1) if output > 1 else None
    return outcome.duration_s / output
