"""The metrics of self-hosted GPU cost (``gpu.py``), in the registry passed in.

* ``spendgate_gpu_cost_usd_total{upstream,kind}``: the GPUs' bill as it is allocated,
  ``kind="allocated"`` (tokens served: the proxy's calls, and traffic that bypassed it,
  project ``(bypass)``) or ``"idle"`` (intervals without a token, project ``(idle)``);
  summed in ``Decimal``, so allocated + idle is exactly hourly_usd x count x hours.
* ``spendgate_effective_price_usd_per_mtok{upstream,model,type}``: what the proxy's calls
  were charged per million tokens of ``type`` (``input``, ``output``) over the last hour.
* ``spendgate_api_equivalent_cost_usd_total{upstream,model,project}`` (with
  ``gpu.compare_to``): what the same calls would have cost at the ``compare_to`` model's
  API price; ``model`` is the model the call asked for, as on ``spendgate_cost_usd_total``.
* ``spendgate_gpu_metrics_errors_total{upstream}`` (with ``gpu.metrics_url``): readings of
  the server's own counters that failed (that interval counts the proxy's tokens only).

Written from the record pipeline's thread, read by scrapes: each collector takes a lock.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from fractions import Fraction

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from spendgate.exporters.exact import ExactCounter
from spendgate.money import NANO

WINDOW_S = 3600.0


class EffectivePrice(Collector):
    """Allocated cost and tokens per (upstream, model, type) over the last ``WINDOW_S``,
    summed per interval close: memory grows with intervals and label sets, not calls."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._closes: deque[tuple[float, dict[tuple[str, str, str], list[Fraction]]]] = deque()
        self._lock = threading.Lock()

    def add(self, when: float, labels: tuple[str, str, str], nano: Fraction,
            tokens: int) -> None:
        with self._lock:
            if not self._closes or self._closes[-1][0] != when:
                self._closes.append((when, {}))
            entry = self._closes[-1][1].setdefault(labels, [Fraction(0), Fraction(0)])
            entry[0] += nano
            entry[1] += tokens

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily("spendgate_effective_price_usd_per_mtok",
                                   "Allocated GPU cost per million tokens of each type, "
                                   "realised over the last hour.",
                                   labels=("upstream", "model", "type"))
        since = self._clock() - WINDOW_S
        sums: dict[tuple[str, str, str], list[Fraction]] = {}
        with self._lock:
            while self._closes and self._closes[0][0] < since:
                self._closes.popleft()
            for _, parts in self._closes:
                for labels, (nano, tokens) in parts.items():
                    entry = sums.setdefault(labels, [Fraction(0), Fraction(0)])
                    entry[0] += nano
                    entry[1] += tokens
        for labels, (nano, tokens) in sums.items():
            if tokens:
                family.add_metric(list(labels), float(nano * 1_000_000 / (NANO * tokens)))
        yield family


class GpuMetrics:
    """Every GPU metric, registered at construction for the upstreams given."""

    def __init__(self, registry: CollectorRegistry, upstreams: Sequence[str],
                 scraped: Sequence[str], compared: bool, clock: Callable[[], float]) -> None:
        self.cost = ExactCounter("spendgate_gpu_cost_usd", "Self-hosted GPU cost in USD as "
                                 "allocated: to tokens served (allocated) or to idle "
                                 "intervals (idle).", ("upstream", "kind"))
        for upstream in upstreams:
            for kind in ("allocated", "idle"):
                self.cost.add((upstream, kind), Decimal(0))
        registry.register(self.cost)
        self.price = EffectivePrice(clock)
        registry.register(self.price)
        self.api_equivalent: ExactCounter | None = None
        if compared:
            self.api_equivalent = ExactCounter(
                "spendgate_api_equivalent_cost_usd", "What self-hosted calls would have cost "
                "at their upstream's gpu.compare_to model's API price.",
                ("upstream", "model", "project"))
            registry.register(self.api_equivalent)
        self.scrape_errors = Counter("spendgate_gpu_metrics_errors", "Readings of a "
                                     "self-hosted server's token counters that failed.",
                                     ("upstream",), registry=registry)
        for upstream in scraped:
            self.scrape_errors.labels(upstream)
