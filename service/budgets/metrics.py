"""Budget metrics read from the shared ledger, so every replica reports the same numbers.

A custom Prometheus collector, registered in the app's registry, that at scrape time yields:

* ``spendgate_budget_limit_usd{budget}``
* ``spendgate_budget_spend_usd{budget}``: settled spend of the budget's current window,
  read from the store (all replicas' calls), plus spend this replica could not write yet
* ``spendgate_budget_window_reset_timestamp_seconds{budget}``: when the window ends
  (absent for ``window: total``)
* ``spendgate_budget_info{budget, window, action}`` = 1

Store reads are cached for ``max_age_s`` (1 s) and bounded by ``store.timeout_s``; while the
store is failing (breaker open) nothing is read and the last known values are served; read
errors are counted by the ledger (``spendgate_store_errors_total{operation="read"}``).
``collect`` does blocking I/O, so the registry is encoded off the event loop (``/metrics``).
The per-process counters (``spendgate_budget_blocked_total``, ``spendgate_store_errors_total``)
are ordinary ``Counter``s, created by ``budgets.manager``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from spendgate.budgets.book import BudgetBook
from spendgate.budgets.ledger import Ledger
from spendgate.budgets.store.base import StoreError, Totals
from spendgate.budgets.windows import Clock
from spendgate.money import nano_to_float


class BudgetCollector(Collector):
    def __init__(self, book: Callable[[], BudgetBook], ledger: Callable[[], Ledger | None],
                 clock: Clock, max_age_s: float = 1.0) -> None:
        self._book = book
        self._ledger = ledger
        self._clock = clock
        self._max_age_s = max_age_s
        self._lock = threading.Lock()
        self._read_at = -1e9
        self._cache: Totals = {}

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return self._families()

    def _families(self) -> list[GaugeMetricFamily]:
        return [
            GaugeMetricFamily("spendgate_budget_limit_usd", "Budget limit in USD.",
                              labels=["budget"]),
            GaugeMetricFamily("spendgate_budget_spend_usd", "Spend of the budget's current "
                              "window in USD, from the shared ledger.", labels=["budget"]),
            GaugeMetricFamily("spendgate_budget_window_reset_timestamp_seconds",
                              "When the budget's current window ends (unix time).",
                              labels=["budget"]),
            GaugeMetricFamily("spendgate_budget_info", "Budget settings as labels (value 1).",
                              labels=["budget", "window", "action"]),
        ]

    def _totals(self, keys: list[tuple[str, str]]) -> Totals:
        ledger = self._ledger()
        if ledger is None:
            return {}
        with self._lock:  # concurrent scrapes share one read
            fresh = time.monotonic() - self._read_at < self._max_age_s
            if not fresh or any(k not in self._cache for k in keys):
                self._read_at = time.monotonic()
                try:
                    self._cache = ledger.totals(keys)
                except StoreError:  # counted by the ledger; serve what this replica knows
                    self._cache = {k: ledger.known(*k) for k in keys}
            return self._cache

    def collect(self) -> Iterable[GaugeMetricFamily]:
        book = self._book()
        now = self._clock()
        windows = {b.name: b.window(now) for b in book.budgets}
        totals = self._totals([(b.name, windows[b.name].id) for b in book.budgets])
        limit, spend, reset, info = self._families()
        for budget in book.budgets:
            window = windows[budget.name]
            limit.add_metric([budget.name], nano_to_float(budget.limit))
            spend.add_metric([budget.name],
                             nano_to_float(totals.get((budget.name, window.id), (0, 0))[0]))
            if window.end is not None:
                reset.add_metric([budget.name], window.end)
            info.add_metric([budget.name, budget.config.window, budget.config.action], 1)
        return [limit, spend, reset, info]
