"""One OpenTelemetry span per proxied call, built after the call from its ``UsageRecord``.

The hot path never touches the SDK: ``hotpath.tracecontext`` only decides the call's ids
(continuing the caller's trace, or starting one) and whether it is sampled, and sends the
upstream a ``traceparent`` naming the span-to-be. This sink, on the pipeline thread, then
creates that span with exactly those ids: the parent is the caller's span (a remote
``NonRecordingSpan`` carrying its ``tracestate``), the span's own id (and, for a new trace,
the trace id) come from ``PresetIds``, an ``IdGenerator`` that hands out the ids set just
before ``start_span``. Start and end times are the call's (``start_unix``, ``duration_s``),
so the span covers the whole call, up to the last byte or the caller hanging up
(``client_closed``; ``error.type`` ``client_closed``).

Only sampled calls become spans: the hot path's decision is final (so the span's flags always
match the ``traceparent`` the upstream saw); the provider's sampler is ALWAYS_ON.

Attributes: ``exporters.genai.span_attributes``; with content capture,
``gen_ai.input.messages``, ``gen_ai.output.messages`` and ``gen_ai.system_instructions``
(``exporters.genai_content``). Export: the SDK's ``BatchSpanProcessor`` (its own thread,
``OTEL_BSP_*`` settings). Thread-safety: ``export`` runs on the pipeline thread only, which
is what makes ``PresetIds`` safe.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from opentelemetry import context as context_api
from opentelemetry import trace as trace_api
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.span import TraceFlags, TraceState

from spendgate import __version__
from spendgate.exporters import semconv as sc
from spendgate.exporters.base import RecordSink
from spendgate.exporters.genai import AttributeValue, Server, error_type, span_attributes, span_name
from spendgate.exporters.genai_content import input_messages, output_messages, to_json
from spendgate.records import UsageRecord

_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
# The SDK's flush blocks through every export retry (up to OTEL_EXPORTER_OTLP_TIMEOUT, 10 s
# by default, more with backoff) when the collector is down: never hold a shutdown that long.
FLUSH_BUDGET_S = 2.5
SHUTDOWN_BUDGET_S = 1.0
log = logging.getLogger("spendgate.telemetry")


def run_bounded(action: Callable[[], Any], timeout_s: float, what: str) -> bool:
    """Run ``action`` on a daemon thread for at most ``timeout_s``; True if it finished and
    returned something truthy (or None). A late one is left behind, logged, and dies with
    the process."""
    result: list[Any] = []
    worker = threading.Thread(target=lambda: result.append(action()), daemon=True,
                              name=f"spendgate-{what}")
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        log.warning("%s did not finish within %.0f s (is the collector reachable?); "
                    "giving up on it", what, timeout_s)
        return False
    return bool(result and result[0] is not False)


class PresetIds(IdGenerator):
    """Hands out the ids the sink set for the span about to start. One thread only."""

    def __init__(self) -> None:
        self.trace_id = trace_api.INVALID_TRACE_ID
        self.span_id = trace_api.INVALID_SPAN_ID

    def generate_span_id(self) -> int:
        return self.span_id

    def generate_trace_id(self) -> int:
        return self.trace_id

    def is_trace_id_random(self) -> bool:
        return True  # ours come from random.getrandbits, as the SDK's own


class SpanSink(RecordSink):
    """Turns each sampled record into a finished span on ``provider`` (built with a
    ``PresetIds`` id generator, see ``telemetry``). ``servers`` maps upstream names
    to ``server.address``/``server.port``; ``content_max_chars`` None means no content."""

    name = "otel_traces"

    def __init__(self, provider: TracerProvider, ids: PresetIds,
                 servers: Mapping[str, Server], content_max_chars: int | None = None) -> None:
        self._provider = provider
        self._ids = ids
        self._servers = servers
        self._content = content_max_chars
        self._tracer = provider.get_tracer(sc.SCOPE_NAME, __version__,
                                           schema_url=f"https://opentelemetry.io/schemas/"
                                                      f"{sc.SEMCONV_VERSION}")

    def export(self, records: Sequence[UsageRecord]) -> None:
        for record in records:
            trace = record.trace
            if trace is not None and trace.sampled:
                self._span(record)

    def _span(self, record: UsageRecord) -> None:
        trace = record.trace
        if trace.parent_span_id is not None:
            parent = SpanContext(
                int(trace.trace_id, 16), int(trace.parent_span_id, 16), is_remote=True,
                trace_flags=_SAMPLED,
                trace_state=TraceState.from_header([trace.tracestate]) if trace.tracestate
                else None)
            context = trace_api.set_span_in_context(NonRecordingSpan(parent))
        else:
            context = context_api.Context()  # a root: nothing inherited from this thread
        self._ids.trace_id = int(trace.trace_id, 16)
        self._ids.span_id = int(trace.span_id, 16)
        attributes = span_attributes(record, self._servers.get(record.upstream))
        if self._content is not None:
            self._add_content(record, attributes)
        start_ns = int(record.start_unix * 1e9)
        span = self._tracer.start_span(span_name(record), context, SpanKind.CLIENT, attributes,
                                       start_time=start_ns)
        error = error_type(record)
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, "the caller hung up" if record.client_closed
                                   else None))
        span.end(end_time=start_ns + int(record.duration_s * 1e9))

    def _add_content(self, record: UsageRecord,
                     attributes: dict[str, AttributeValue]) -> None:
        assert self._content is not None
        messages, system = input_messages(record.protocol, record.operation,
                                          record.request_json, self._content)
        if messages:
            attributes[sc.INPUT_MESSAGES] = to_json(messages)
        if system:
            attributes[sc.SYSTEM_INSTRUCTIONS] = to_json(system)
        generated = 200 <= record.status < 300 or record.client_closed
        if record.output_text is not None and record.operation != "embeddings" and generated:
            attributes[sc.OUTPUT_MESSAGES] = to_json(output_messages(
                record.output_text or "", record.finish_reasons, record.client_closed,
                self._content))

    def force_flush(self, timeout_s: float = 30.0) -> bool:
        budget = min(timeout_s, FLUSH_BUDGET_S)
        return run_bounded(lambda: self._provider.force_flush(int(budget * 1000)), budget,
                           "span export")

    def shutdown(self) -> None:
        run_bounded(self._provider.shutdown, SHUTDOWN_BUDGET_S, "span exporter shutdown")
