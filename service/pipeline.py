"""From ``CallOutcome`` to ``UsageRecord`` to every sink, off the event loop.

The proxy calls ``RecordPipeline.submit`` once per call, after the caller has its last byte;
that is one ``SimpleQueue.put``. A single daemon worker thread then extracts usage, estimates
what the upstream did not report (tiktoken must not run on the event loop), prices the call
and hands batches of immutable records to each sink in turn. A sink that raises is logged
(once per sink and error type) and counted; the others still get the batch.

``flush`` waits until everything submitted so far has reached every sink; ``close`` drains
the queue, then shuts the sinks down. Thread-safety: ``submit`` from any thread or the loop.
"""

from __future__ import annotations

import logging
import queue
import threading
import zlib
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal

from exporters.base import RecordSink
from service.pricing import PriceCatalog
from service.providers.base import Provider, ResponseSummary
from service.records import STATUS_CLIENT_CLOSED, CallOutcome, UsageRecord
from service.tokens import EncodingDataError, TokenEstimator
from service.usage import Usage

log = logging.getLogger("spendgate.pipeline")
_BATCH = 512
_STOP = object()


class RecordBuilder:
    """Pure: turns one finished ``CallOutcome`` into its ``UsageRecord``. Thread-safe.

    ``keep_request``: records carry the parsed request body (span request attributes);
    ``keep_output``: they carry the generated text too (opt-in content capture).
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


class RecordPipeline:
    """Queue plus one worker thread feeding ``sinks``. Start with ``start``; end with ``close``."""

    def __init__(self, builder: RecordBuilder, sinks: Sequence[RecordSink],
                 on_sink_error: Callable[[str], None] | None = None) -> None:
        self.builder = builder
        self.sinks = list(sinks)
        self._on_sink_error = on_sink_error
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._submitted = 0
        self._done = 0
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="spendgate-records", daemon=True)
        self._logged_failures: set[tuple[str, str]] = set()

    def start(self) -> None:
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def submit(self, outcome: CallOutcome) -> None:
        self._submitted += 1
        self._queue.put(outcome)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every call submitted before this one has reached every sink."""
        target = self._submitted
        with self._cond:
            return self._cond.wait_for(lambda: self._done >= target, timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout_s)
        for sink in self.sinks:
            try:
                sink.force_flush(timeout_s)
                sink.shutdown()
            except Exception:
                log.exception("sink %s failed to shut down", sink.name)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch: list[CallOutcome] = []
            item = self._queue.get()
            while True:
                if item is _STOP:
                    stopping = True
                    break
                assert isinstance(item, CallOutcome)
                batch.append(item)
                if len(batch) >= _BATCH:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._process(batch)

    def _process(self, batch: list[CallOutcome]) -> None:
        records: list[UsageRecord] = []
        for outcome in batch:
            try:
                record = self.builder.build(outcome)
            except Exception:  # build() falls back on its own; this guards the thread itself
                log.exception("could not record a call to %s", outcome.upstream)
                self._sink_failed("pipeline", "build")
                continue
            if record.error_type == "record_build_failed":
                self._sink_failed("pipeline", "build")
            records.append(record)
        for sink in self.sinks:
            try:
                sink.export(records)
            except Exception as error:
                self._sink_failed(sink.name, type(error).__name__, error)
        with self._cond:
            self._done += len(batch)
            self._cond.notify_all()

    def _sink_failed(self, name: str, kind: str, error: BaseException | None = None) -> None:
        if self._on_sink_error is not None:
            self._on_sink_error(name)
        if (name, kind) not in self._logged_failures:
            self._logged_failures.add((name, kind))
            log.error("sink %s failed (%s: %s); counted in spendgate_sink_errors_total, "
                      "further failures of this kind are not logged", name, kind, error)
