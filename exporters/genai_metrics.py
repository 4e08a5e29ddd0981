"""The GenAI conventions' client metrics, on ``/metrics`` and, when configured, over OTLP.

One table (``INSTRUMENTS``) defines each instrument once: name, unit, description, the
convention's advised bucket boundaries and its attributes. From it come both the
prometheus_client histograms in our registry (translated names: ``gen_ai_client_token_usage``,
``gen_ai_client_operation_duration_seconds``, ...; attribute keys as underscore labels) and,
when a ``Meter`` is given, the OpenTelemetry histograms with the same boundaries as advice.

Recorded per metered call (inference operations only):

* ``gen_ai.client.token.usage``: input and output tokens (``gen_ai.token.type``), reported
  or, where the upstream did not report them, estimated by spendgate.
* ``gen_ai.client.operation.duration``: arrival to last byte; ``error.type`` on failures.
* ``gen_ai.client.operation.time_to_first_chunk`` (streams).
* ``gen_ai.client.operation.time_per_output_chunk`` (streams): one observation per streamed
  call, its mean interval between chunks, ``(duration - time to first chunk) / (chunks - 1)``
  (chunks: SSE events). The convention records every interval; spendgate does not time
  chunks one by one on the hot path, and one observation keeps the cost of a call
  independent of its length (a 4,000-chunk answer is not 4,000 OpenTelemetry records).

Model labels pass a ``labels.LabelCap`` (``metrics.label_limit``, as ``exporters.prometheus``)
and their combination a ``labels.PairCap`` (``metrics.pair_limit``): these metrics carry no
project, so the pair is (response model, request model), and past the cap the request model,
the one a caller chooses, reads ``other``.
Absent attributes are empty Prometheus labels. ``export`` runs on the pipeline thread only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Histogram

from spendgate.exporters import semconv as sc
from spendgate.exporters.base import RecordSink
from spendgate.exporters.genai import Server, error_type, metric_attributes, operation_name
from spendgate.exporters.prometheus import trace_exemplar
from spendgate.labels import LabelCap, PairCap
from spendgate.records import UsageRecord


@dataclass(frozen=True, slots=True)
class InstrumentSpec:
    """One convention histogram, as both Prometheus and OpenTelemetry see it."""

    name: str
    unit: str
    description: str
    buckets: tuple[float, ...]
    attributes: tuple[str, ...]

    @property
    def prometheus_name(self) -> str:
        return sc.prometheus_name(self.name, self.unit)

    @property
    def prometheus_labels(self) -> tuple[str, ...]:
        return tuple(sc.prometheus_label(key) for key in self.attributes)


_COMMON = (sc.OPERATION_NAME, sc.PROVIDER_NAME, sc.REQUEST_MODEL, sc.RESPONSE_MODEL,
           sc.SERVER_ADDRESS, sc.SERVER_PORT)

TOKEN_USAGE = InstrumentSpec(sc.METRIC_TOKEN_USAGE, "{token}",
                             "Number of input and output tokens used.", sc.TOKEN_BUCKETS,
                             (*_COMMON, sc.TOKEN_TYPE))
OPERATION_DURATION = InstrumentSpec(sc.METRIC_OPERATION_DURATION, "s",
                                    "GenAI operation duration.", sc.DURATION_BUCKETS,
                                    (*_COMMON, sc.ERROR_TYPE))
TIME_TO_FIRST_CHUNK = InstrumentSpec(
    sc.METRIC_TIME_TO_FIRST_CHUNK, "s",
    "Time to receive the first chunk, measured from when the client issues the generation "
    "request to when the first chunk is received in the response stream.",
    sc.DURATION_BUCKETS, _COMMON)
TIME_PER_OUTPUT_CHUNK = InstrumentSpec(
    sc.METRIC_TIME_PER_OUTPUT_CHUNK, "s",
    "Time per output chunk, recorded for each chunk received after the first one.",
    sc.DURATION_BUCKETS, _COMMON)
INSTRUMENTS = (TOKEN_USAGE, OPERATION_DURATION, TIME_TO_FIRST_CHUNK, TIME_PER_OUTPUT_CHUNK)


class _Instrument:
    """One spec made real: a Prometheus histogram and, optionally, an OpenTelemetry one.
    Prometheus children are cached by label values (bounded by the label caps)."""

    __slots__ = ("children", "otel", "prom", "spec")

    def __init__(self, spec: InstrumentSpec, registry: CollectorRegistry | None,
                 meter: Any) -> None:
        self.spec = spec
        self.children: dict[tuple[str, ...], Any] = {}
        self.prom = None if registry is None else Histogram(
            spec.prometheus_name, spec.description, spec.prometheus_labels,
            buckets=spec.buckets, registry=registry)
        self.otel = None if meter is None else meter.create_histogram(
            spec.name, unit=spec.unit, description=spec.description,
            explicit_bucket_boundaries_advisory=list(spec.buckets))

    def record(self, value: float, labels: tuple[str, ...],
               attributes: Mapping[str, str | int] | None,
               exemplar: dict[str, str] | None = None) -> None:
        """``labels``: Prometheus label values in ``spec.attributes`` order; ``attributes``:
        the same as OpenTelemetry attributes (absent ones omitted), None without a meter."""
        if self.prom is not None:
            child = self.children.get(labels)
            if child is None:
                child = self.children[labels] = self.prom.labels(*labels)
            child.observe(value, exemplar)
        if self.otel is not None and attributes is not None:
            self.otel.record(value, attributes)


class GenAIMetricsSink(RecordSink):
    """Records the convention metrics of each record: into ``registry`` (None: not on
    /metrics) and, given an OpenTelemetry ``meter`` (API object), over OTLP too.
    ``servers`` maps upstream names to their ``server.address``/``server.port``.
    ``exemplars``: attach the trace id of sampled calls to the latency histograms.
    """

    name = "gen_ai_metrics"

    def __init__(self, registry: CollectorRegistry | None, servers: Mapping[str, Server],
                 label_limit: int = 200, meter: Any = None, exemplars: bool = False,
                 pair_limit: int = 1000) -> None:
        self._servers = servers
        self._server_labels = {name: (host, "" if port is None else str(port))
                               for name, (host, port) in servers.items()}
        self._request_model = LabelCap(label_limit)
        self._response_model = LabelCap(label_limit)
        self._pairs = PairCap(pair_limit)
        self._exemplars = exemplars
        self._otel = meter is not None
        self.token_usage, self.duration, self.ttfc, self.tpoc = (
            _Instrument(spec, registry, meter) for spec in INSTRUMENTS)

    def export(self, records: Sequence[UsageRecord]) -> None:
        for record in records:
            operation = operation_name(record)
            if record.metered and operation is not None:
                self._export_one(record, operation)

    def _export_one(self, r: UsageRecord, operation: str) -> None:
        response_model = self._response_model(r.response_model) if r.response_model else ""
        request_model = ""  # absent, and so never folded into "other"
        if r.model != "unknown":
            response_model, request_model = self._pairs(response_model,
                                                         self._request_model(r.model))
        # Label values in _COMMON order: operation, provider, models, server address, port.
        base = (operation, r.provider, request_model, response_model,
                *self._server_labels.get(r.upstream, ("", "")))
        attributes = metric_attributes(r, self._servers.get(r.upstream), request_model,
                                       response_model) if self._otel else None
        exemplar = trace_exemplar(r) if self._exemplars else None
        for token_type, count in ((sc.TOKEN_TYPE_INPUT, r.usage.input),
                                  (sc.TOKEN_TYPE_OUTPUT, r.usage.output)):
            if count is not None:
                self.token_usage.record(
                    count, (*base, token_type),
                    None if attributes is None else {**attributes, sc.TOKEN_TYPE: token_type})
        error = error_type(r)
        self.duration.record(
            r.duration_s, (*base, error or ""),
            {**attributes, sc.ERROR_TYPE: error} if attributes is not None and error
            else attributes, exemplar)
        if r.stream and r.ttft_s is not None:
            self.ttfc.record(r.ttft_s, base, attributes, exemplar)
            if r.chunks > 1:
                mean = max(r.duration_s - r.ttft_s, 0.0) / (r.chunks - 1)
                self.tpoc.record(mean, base, attributes, exemplar)
