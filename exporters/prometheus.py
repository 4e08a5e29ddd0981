"""Prometheus metrics of every call: the ``spendgate_*`` set served on ``GET /metrics``.

Metrics live in the ``CollectorRegistry`` passed in (no module-level state), so tests build a
fresh registry and read ``get_sample_value``. One ``export`` per batch of records, from the
pipeline's worker thread; the proxy touches only the in-flight gauge on the hot path.

Money is summed exactly: ``spendgate_cost_usd_total`` keeps a ``Decimal`` per label set and
converts to float only when scraped, so millions of micro-dollar calls never drift.

Label values for ``project`` and ``model`` are capped (``label_limit`` distinct values each,
none over ``labels.MAX_VALUE_CHARS``), and so are their combinations: past ``pair_limit``
distinct (project, model) pairs, a new pair keeps its project and its model reads
``labels.OTHER`` (``labels.PairCap``, one for every metric here, so all of them fold a pair
alike). A caller cannot explode the series count, nor the size of a scrape.

Tags (``attribution.tag_keys`` only): ``spendgate_tag_cost_usd_total`` and
``spendgate_tag_requests_total`` by ``tag_key, tag_value, upstream, model``, one series per
key and value (a call counts once under each accounted key, ``tag_value=""`` when it lacks
that key), never per combination of tags. Each key's values are capped on their own
(``label_limit`` distinct values, then ``labels.OTHER``), so a key's series still sum to
the whole: over its values, ``spendgate_tag_cost_usd_total`` is ``spendgate_cost_usd_total``.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from spendgate.exporters.base import RecordSink
from spendgate.exporters.exact import ExactCounter
from spendgate.exporters.outcomes import error_kind
from spendgate.labels import LabelCap, PairCap
from spendgate.records import UsageRecord

LLM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0,
               60.0, 120.0, 300.0)
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0)
OVERHEAD_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                    0.05, 0.1, 0.25, 1.0)
COST_LABELS = ("upstream", "provider", "model", "project")
LATENCY_LABELS = ("upstream", "model", "project")
TAG_LABELS = ("tag_key", "tag_value", "upstream", "model")


def trace_exemplar(record: UsageRecord) -> dict[str, str] | None:
    """The OpenMetrics exemplar linking a latency point to its trace: sampled spans only."""
    trace = record.trace
    return {"trace_id": trace.trace_id} if trace is not None and trace.sampled else None


class PrometheusSink(RecordSink):
    """The ``spendgate_*`` metrics. ``export`` runs on the pipeline thread only."""

    name = "prometheus"
    takes_charges = True    # spendgate_cost_usd_total counts a GPU's idle cost too

    def __init__(self, registry: CollectorRegistry, label_limit: int = 200,
                 pair_limit: int = 1000, exemplars: bool = False,
                 tag_keys: Sequence[str] = ()) -> None:
        self.registry = registry
        # On when spans are exported: latency histograms then carry trace-id exemplars.
        self.exemplars = exemplars
        self._project = LabelCap(label_limit)
        self._model = LabelCap(label_limit)
        self._pairs = PairCap(pair_limit)
        self.requests = Counter("spendgate_requests", "Proxied calls by final HTTP status "
                                "(499: the caller hung up).",
                                ("upstream", "provider", "model", "project", "status"),
                                registry=registry)
        self.tokens = Counter("spendgate_tokens", "Tokens by normalised type and by source "
                              "(reported by the upstream, or estimated by spendgate).",
                              ("upstream", "provider", "model", "project", "type", "source"),
                              registry=registry)
        self.cost = ExactCounter("spendgate_cost_usd", "Spend in USD, exact sum of priced calls.",
                                 COST_LABELS)
        registry.register(self.cost)
        self.duration = Histogram("spendgate_request_duration_seconds",
                                  "Whole call, arrival to last byte.", LATENCY_LABELS,
                                  buckets=LLM_BUCKETS, registry=registry)
        self.ttft = Histogram("spendgate_time_to_first_token_seconds",
                              "Streams: arrival to the first event.", LATENCY_LABELS,
                              buckets=LLM_BUCKETS, registry=registry)
        self.tpot = Histogram("spendgate_time_per_output_token_seconds",
                              "Generation time per output token.", LATENCY_LABELS,
                              buckets=TPOT_BUCKETS, registry=registry)
        self.overhead = Histogram("spendgate_proxy_overhead_seconds",
                                  "Time spent in the proxy itself, upstream waits excluded.",
                                  LATENCY_LABELS, buckets=OVERHEAD_BUCKETS, registry=registry)
        self.in_flight = Gauge("spendgate_in_flight_requests", "Calls being proxied now.",
                               ("upstream",), registry=registry)
        self.unpriced = Counter("spendgate_unpriced_requests", "Calls whose model has no price "
                                "(costed at 0).", ("model",), registry=registry)
        self.price_fallbacks = Counter(
            "spendgate_price_fallbacks", "Calls priced with a base rate because the price has "
            "no rate for what was served (reason: tier, context, cache_ttl, fee, modality).",
            ("model", "reason"), registry=registry)
        self.tool_calls = Counter("spendgate_tool_calls", "Server-side tool calls the "
                                  "provider charges per request (web_search, web_fetch).",
                                  ("upstream", "model", "project", "tool"), registry=registry)
        self.usage_missing = Counter("spendgate_usage_missing", "Calls whose usage had to be "
                                     "estimated, wholly or in part.", LATENCY_LABELS,
                                     registry=registry)
        self.call_errors = Counter("spendgate_call_errors", "Calls that went wrong, by kind "
                                   "(exporters/outcomes.py: upstream_cut, client_closed, "
                                   "upstream_timeout, budget_exceeded, ...), whatever status "
                                   "the caller got.", (*LATENCY_LABELS, "error_type"),
                                   registry=registry)
        self.sink_errors = Counter("spendgate_sink_errors", "Exports that failed, by sink.",
                                   ("sink",), registry=registry)
        # Per accounted tag key (attribution.tag_keys): a cap on its values and one on its
        # (value, model) pairs, since two capped labels still multiply.
        self._tag_caps = {key: (LabelCap(label_limit), PairCap(pair_limit)) for key in tag_keys}
        self.tag_requests = Counter("spendgate_tag_requests", "Proxied calls by tag (the "
                                    "keys of attribution.tag_keys; tag_value \"\": untagged).",
                                    TAG_LABELS, registry=registry)
        self.tag_cost = ExactCounter("spendgate_tag_cost_usd", "Spend in USD by tag (the keys "
                                     "of attribution.tag_keys), exact sum of priced calls.",
                                     TAG_LABELS)
        registry.register(self.tag_cost)

    def errors_by_kind(self) -> dict[str, float]:
        """``spendgate_call_errors_total`` of this process, summed by ``error_type``."""
        totals: dict[str, float] = {}
        for family in self.call_errors.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    kind = sample.labels["error_type"]
                    totals[kind] = totals.get(kind, 0.0) + sample.value
        return totals

    def count_sink_error(self, sink: str) -> None:
        """The record pipeline's report of a sink that failed."""
        self.sink_errors.labels(sink).inc()

    def export(self, records: Sequence[UsageRecord]) -> None:
        for record in records:
            self._export_one(record)

    def _export_one(self, r: UsageRecord) -> None:
        model_value = self._model(r.model)
        project, model = self._pairs(self._project(r.project), model_value)
        tagged = [(key, *pairs(values(r.tags.get(key, "")), model_value))
                  for key, (values, pairs) in self._tag_caps.items()] if self._tag_caps else ()
        if r.charge_only:   # a GPU's idle cost: no call, but spend (under tag_value "")
            self.cost.add((r.upstream, r.provider, model, project), r.cost_usd)
            for key, value, tag_model in tagged:
                self.tag_cost.add((key, value, r.upstream, tag_model), r.cost_usd)
            return
        self.requests.labels(r.upstream, r.provider, model, project, str(r.status)).inc()
        for key, value, tag_model in tagged:
            self.tag_requests.labels(key, value, r.upstream, tag_model).inc()
        latency = (r.upstream, model, project)
        kind = error_kind(r)
        if kind is not None:
            self.call_errors.labels(*latency, kind).inc()
        exemplar = trace_exemplar(r) if self.exemplars else None
        if r.operation != "batch":  # a batch's result lines have no latency of their own
            self.duration.labels(*latency).observe(r.duration_s, exemplar)
            self.overhead.labels(*latency).observe(r.overhead_s)
        if r.ttft_s is not None:
            self.ttft.labels(*latency).observe(r.ttft_s, exemplar)
        if r.tpot_s is not None:
            self.tpot.labels(*latency).observe(r.tpot_s)
        if not r.metered:
            return
        for token_type, count in r.usage.items():
            if count:
                self.tokens.labels(r.upstream, r.provider, model, project, token_type,
                                   r.usage.source(token_type)).inc(count)
        if r.usage.estimated:
            self.usage_missing.labels(*latency).inc()
        if r.cost_usd:
            self.cost.add((r.upstream, r.provider, model, project), r.cost_usd)
            for key, value, tag_model in tagged:
                self.tag_cost.add((key, value, r.upstream, tag_model), r.cost_usd)
        if not r.priced and not r.usage.is_empty:
            self.unpriced.labels(model_value).inc()  # no project: no pair to fold
        for reason in r.price_fallbacks:
            self.price_fallbacks.labels(model_value, reason).inc()
        for tool in ("web_search", "web_fetch"):
            if calls := r.usage.get(tool):
                self.tool_calls.labels(r.upstream, model, project, tool).inc(calls)
