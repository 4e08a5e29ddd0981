"""Counters of money: a ``Decimal`` sum per label set, a float only when scraped.

Millions of micro-dollar additions in floats drift; these never do. Used for
``spendgate_cost_usd_total`` (``prometheus.py``) and the self-hosted GPU cost counters
(``accounting/gpu_metrics.py``). Thread-safe: ``add`` from any thread, ``collect`` from
scrapes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from decimal import Decimal

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector


class ExactCounter(Collector):
    """A counter family (``name`` without ``_total``) summed exactly per label set."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str]) -> None:
        self._family = (name, documentation, tuple(labels))
        self._totals: dict[tuple[str, ...], Decimal] = {}
        self._lock = threading.Lock()

    def add(self, labels: tuple[str, ...], amount: Decimal) -> None:
        with self._lock:
            self._totals[labels] = self._totals.get(labels, Decimal(0)) + amount

    def total(self, labels: tuple[str, ...]) -> Decimal:
        with self._lock:
            return self._totals.get(labels, Decimal(0))

    def collect(self) -> Iterable[CounterMetricFamily]:
        name, documentation, labels = self._family
        family = CounterMetricFamily(name, documentation, labels=labels)
        with self._lock:
            items = list(self._totals.items())
        for values, total in items:
            family.add_metric(list(values), float(total))
        yield family
