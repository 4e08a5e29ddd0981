"""Reconciliation runs: the sources a config names, one comparison over the lookback days,
and in ``serve`` the background job that repeats it and exports the result.

``build_sources(config)``: one ``UsageSource`` per upstream with an ``admin_key`` (by its
wire protocol: ``openai`` or ``anthropic``). ``run(...)``: the comparison of the complete
UTC days before today, and the error of each upstream whose admin API failed.

``ReconcileJob`` (``serve``): a daemon thread that runs every ``reconcile.interval_s``, the
first time at start, and exports for the last complete UTC day, as the provider reports it:

* ``spendgate_provider_cost_usd{upstream,model}``, ``spendgate_provider_tokens{upstream,
  model,type}``, ``spendgate_reconciliation_drift_ratio{upstream}`` (``(provider - ours) /
  provider``);
* ``spendgate_reconciliation_last_success_timestamp_seconds{upstream}``;
* ``spendgate_reconciliation_errors_total{upstream}``: failed runs (admin API or ledger).

An upstream's series are replaced whole on each success and kept as they were on a failure
(the timestamp says how old they are). Nothing here touches a call. Thread-safety: the
collector's snapshot is swapped under a lock; ``start`` and ``close`` once each.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, date, datetime, timedelta

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from spendgate.config import Config, ReconcileConfig
from spendgate.reconcile.anthropic import AnthropicUsage
from spendgate.reconcile.base import HistoryReader, UsageSource
from spendgate.reconcile.compare import Comparison, compare
from spendgate.reconcile.openai import OpenAIUsage

log = logging.getLogger("spendgate.reconcile")
SOURCES: dict[str, type[UsageSource]] = {"openai": OpenAIUsage, "anthropic": AnthropicUsage}


def build_sources(config: Config) -> dict[str, UsageSource]:
    return {name: SOURCES[up.provider](up.url, up.admin_key, up.provider_key_id,
                                       config.reconcile.timeout_s)
            for name, up in sorted(config.upstreams.items()) if up.admin_key}


def complete_days(now: float, count: int) -> list[str]:
    """The ``count`` complete UTC days before the one ``now`` is in, oldest first."""
    today = datetime.fromtimestamp(now, UTC).date()
    return [(today - timedelta(days=n)).isoformat() for n in range(count, 0, -1)]


def run(sources: Mapping[str, UsageSource], history: HistoryReader, days: list[str],
        warn_ratio: float) -> tuple[dict[str, Comparison], dict[str, str]]:
    """Compare every source over ``days``: (comparison per upstream, error per upstream)."""
    done: dict[str, Comparison] = {}
    errors: dict[str, str] = {}
    first, last = date.fromisoformat(days[0]), date.fromisoformat(days[-1])
    try:
        ours = history(days)
    except Exception as error:  # the store's own error type: the message has no secrets
        return done, {name: f"ledger history: {error}" for name in sources}
    for name, source in sources.items():
        try:
            report = source.fetch(first, last)
        except Exception as error:  # ReconcileError, or an answer we could not read
            errors[name] = f"{type(error).__name__}: {error}"
            continue
        done[name] = compare(name, days, report, ours, warn_ratio)
    return done, errors


class _Snapshot(Collector):
    """The last successful comparison of each upstream, for its last day."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_upstream: dict[str, tuple[Comparison, float]] = {}

    def put(self, upstream: str, comparison: Comparison, when: float) -> None:
        with self._lock:
            self._by_upstream[upstream] = (comparison, when)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        cost = GaugeMetricFamily("spendgate_provider_cost_usd", "Cost the provider reports "
                                 "for the last complete UTC day, by model.",
                                 labels=("upstream", "model"))
        tokens = GaugeMetricFamily("spendgate_provider_tokens", "Tokens the provider reports "
                                   "for the last complete UTC day, by model and type.",
                                   labels=("upstream", "model", "type"))
        ratio = GaugeMetricFamily("spendgate_reconciliation_drift_ratio",
                                  "(provider - spendgate) / provider cost, last complete "
                                  "UTC day.", labels=("upstream",))
        success = GaugeMetricFamily("spendgate_reconciliation_last_success_timestamp_seconds",
                                    "When the provider's usage was last read.",
                                    labels=("upstream",))
        with self._lock:
            items = list(self._by_upstream.items())
        for upstream, (comparison, when) in items:
            last = comparison.days[-1] if comparison.days else None
            for row in comparison.rows:
                if last is None or row.day != last.day:
                    continue
                if row.provider_cost or row.provider_tokens:
                    cost.add_metric([upstream, row.model], float(row.provider_cost))
                for kind, count in sorted(row.provider_tokens.items()):
                    tokens.add_metric([upstream, row.model, kind], count)
            if last is not None:
                ratio.add_metric([upstream], last.ratio)
            success.add_metric([upstream], when)
        yield from (cost, tokens, ratio, success)


class ReconcileJob:
    """Every ``settings.interval_s``: compare, export, log drift; failures logged, counted."""

    def __init__(self, sources: Mapping[str, UsageSource], history: HistoryReader,
                 settings: ReconcileConfig, registry: CollectorRegistry,
                 clock: Callable[[], float] = time.time) -> None:
        self.sources = dict(sources)
        self.history = history
        self.settings = settings
        self.clock = clock
        self.snapshot = _Snapshot()
        registry.register(self.snapshot)
        self.errors = Counter("spendgate_reconciliation_errors", "Reconciliation runs that "
                              "failed (the provider's admin API, or the ledger's history).",
                              ("upstream",), registry=registry)
        for name in self.sources:
            self.errors.labels(name)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="spendgate-reconcile",
                                        daemon=True)

    def run_once(self) -> dict[str, Comparison]:
        now = self.clock()
        days = complete_days(now, self.settings.lookback_days)
        done, errors = run(self.sources, self.history, days, self.settings.drift_warn_ratio)
        for name, message in errors.items():
            self.errors.labels(name).inc()
            log.error("reconcile %s: %s; calls are not affected, retrying in %g s", name,
                      message, self.settings.interval_s)
        for name, comparison in done.items():
            self.snapshot.put(name, comparison, now)
            for day in comparison.days:
                if day.drifted:
                    log.warning("reconcile %s %s: the provider reports $%s, spendgate counted "
                                "$%s (drift %+.2f%%)", name, day.day, day.provider_cost,
                                day.our_cost, day.ratio * 100)
        return done

    def _loop(self) -> None:
        while True:
            try:
                self.run_once()
            except Exception:  # a bug must not end the job: it is logged, the next run tries
                log.exception("reconciliation run failed")
            if self._stop.wait(self.settings.interval_s):
                return

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
