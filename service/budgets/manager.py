"""Budgets in one process: gate, ledger, settlement sink, metrics and alerts, wired together.

The composition root (``app.Spendgate``) builds one ``BudgetManager`` and uses it as: the
source of the proxy's ``BudgetGate`` (``proxy_gate``: None when no budget blocks), a
record sink (``export``: the ledger's ``LedgerSink``), readiness (``problem``), the admin
views and reload (``update``). The ledger (and its store) exists when budgets, rate limits
(``spendgate.limits`` keep their counts in the same store) or an admin key are configured,
or ``store`` is set explicitly; without one, everything here is a no-op and no file is
created.

Lifetime: construct (opens the store: a SQLite file is created, Redis is not contacted),
``await start()`` in the event loop, ``await close()`` after the record pipeline is closed
(its last records are settled first). Reload builds a new book, catalog and gate and swaps
them as whole objects; calls in flight keep the reservations they made.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from datetime import UTC
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter

from spendgate.accounting.pricing import PriceCatalog
from spendgate.budgets.alerts import AlertNotifier
from spendgate.budgets.book import Budget, BudgetBook, describe
from spendgate.budgets.gate import BudgetGate
from spendgate.budgets.history import RANGES, buckets
from spendgate.budgets.journal import Journal
from spendgate.budgets.ledger import Ledger
from spendgate.budgets.metrics import BudgetCollector
from spendgate.budgets.settlement import LedgerSink
from spendgate.budgets.store import StoreError, open_store
from spendgate.budgets.store.base import Dims, HistoryKey, Store, Totals, tag_window
from spendgate.budgets.windows import WINDOW_KINDS, Clock, Window, iso, system_clock, window_at
from spendgate.config import Config, StoreConfig
from spendgate.errors import ConfigError
from spendgate.exporters.base import RecordSink
from spendgate.money import nano_to_float
from spendgate.records import UsageRecord

log = logging.getLogger("spendgate.budgets")
_R = TypeVar("_R")
GROUPS = ("upstream", "project", "model", "key")
TAG_GROUP = "tag:"        # group_by=tag:KEY: spend per value of a tag key


def journal_path(store: StoreConfig) -> Path | None:
    """Where the spend journal lives: ``store.journal``, else beside a SQLite store's file,
    else ``spendgate-data/journal.log``; None when turned off."""
    if store.journal is False:
        return None
    if store.journal:
        return Path(store.journal)
    if store.url.startswith("sqlite:///"):
        return Path(store.url.removeprefix("sqlite:///")).with_name("journal.log")
    return Path("spendgate-data/journal.log")


def wants_ledger(config: Config) -> bool:
    return bool(config.budgets or config.limits or config.admin_key
                or "store" in config.model_fields_set
                or any(up.admin_key for up in config.upstreams.values()))


class BudgetManager(RecordSink):
    name = "ledger"
    takes_charges = True    # a GPU upstream's idle cost is spend of that upstream

    def __init__(self, config: Config, catalog: PriceCatalog, registry: CollectorRegistry,
                 clock: Clock | None = None) -> None:
        self.clock = clock or system_clock()
        self.config = config
        self.blocked = Counter("spendgate_budget_blocked", "Calls refused by a block budget.",
                               ("budget",), registry=registry)
        self.store_errors = Counter("spendgate_store_errors", "Budget store operations that "
                                    "failed or timed out, by operation.", ("operation",),
                                    registry=registry)
        self.ledger: Ledger | None = None
        self.notifier: AlertNotifier | None = None
        self._sink: LedgerSink | None = None
        self._running = False
        self._threads = False
        if wants_ledger(config):
            self._open(config)
        self._gate = self._build_gate(BudgetBook(config.budgets), catalog)
        registry.register(BudgetCollector(lambda: self._gate.book, lambda: self.ledger,
                                          self.clock))

    @property
    def book(self) -> BudgetBook:
        return self._gate.book

    @property
    def gate(self) -> BudgetGate:
        """The current gate (replaced whole on reload)."""
        return self._gate

    def proxy_gate(self) -> BudgetGate | None:
        """What the hot path should ask: the gate when a budget blocks or a virtual key has
        a ``max_reserve_usd`` ceiling, else nothing."""
        if self._gate.book.any_block and self.ledger is not None:
            return self._gate
        ceilings = any(k.max_reserve_usd is not None for k in self.config.keys or ())
        return self._gate if ceilings else None

    def _build_gate(self, book: BudgetBook, catalog: PriceCatalog) -> BudgetGate:
        return BudgetGate(book, catalog, self.ledger, self.clock,
                          self.config.store.on_error, self.blocked_call_counted,
                          self._on_blocked)

    def _open(self, config: Config) -> None:
        store_config = config.store
        try:
            store = open_store(store_config.url, store_config.timeout_s,
                               store_config.reservation_lease_s, store_config.key_prefix)
        except StoreError as error:
            raise ConfigError([f"store.url: {error}"]) from None
        journal = None
        if (path := journal_path(store_config)) is not None:
            try:
                journal = Journal(path, store_config.journal_fsync)
            except StoreError as error:
                store.close()
                raise ConfigError([str(error)]) from None
        ledger = self.ledger = Ledger(store, self.clock, self._count_store_error, journal,
                                      self._on_totals)
        self.notifier = AlertNotifier(config.alerts, ledger.claim, self.clock)
        self._sink = LedgerSink(ledger, lambda: self._gate.book, self.clock,
                                history_days=store_config.history_days,
                                tag_keys=config.attribution.tag_keys)
        log.info("budget ledger: %s; spend journal: %s", store.description,
                 journal.path if journal is not None else "off")

    def blocked_call_counted(self, budget: str) -> None:
        self.blocked.labels(budget).inc()

    def _count_store_error(self, operation: str) -> None:
        self.store_errors.labels(operation).inc()

    def _on_blocked(self, budget: Budget, window: Window, spend: int, reserved: int,
                    amount: int) -> None:
        if self.notifier is not None:
            self.notifier.observe(budget, window, spend, reserved, refused=amount)

    def _on_totals(self, totals: Totals) -> None:
        notifier, book = self.notifier, self._gate.book
        if notifier is None:
            return
        now = self.clock()
        for (name, window_id), (spend, _) in totals.items():
            budget = book.by_name.get(name)
            if budget is not None and budget.window(now).id == window_id:
                notifier.observe(budget, budget.window(now), spend)

    # -- RecordSink ---------------------------------------------------------------------------

    def export(self, records: Sequence[UsageRecord]) -> None:
        if self._sink is not None:
            self._sink.export(records)

    def settle_now(self) -> None:
        """Write the spend recorded so far to the store now, not at the ledger's next tick
        (a ``/metrics`` scrape: what it counts is then in the store too). Blocking."""
        if self.ledger is not None:
            self.ledger.flush()

    # -- lifetime -----------------------------------------------------------------------------

    async def start(self) -> None:
        self._running = True
        self._start_threads()

    def _start_threads(self) -> None:
        if self.ledger is not None and self.notifier is not None and not self._threads:
            self._threads = True
            self.ledger.start()
            self.notifier.start()

    async def close(self) -> None:
        ledger, notifier = self.ledger, self.notifier
        if notifier is not None:
            await asyncio.to_thread(notifier.close)
        if ledger is not None:
            await ledger.store.aclose()
            await asyncio.to_thread(ledger.close)

    def update(self, config: Config, catalog: PriceCatalog) -> None:
        """Reload: new budgets, prices and alert settings (``store`` needs a restart)."""
        book = BudgetBook(config.budgets)
        self.config = config
        if self.ledger is None and wants_ledger(config):
            self._open(config)
            if self._running:
                self._start_threads()
        if self.notifier is not None:
            self.notifier.reconfigure(config.alerts)
        self._gate = self._build_gate(book, catalog)

    # -- health and views ---------------------------------------------------------------------

    def problem(self) -> str | None:
        return self.ledger.health.problem() if self.ledger is not None else None

    def history(self, days: Sequence[str]) -> dict[HistoryKey, int]:
        """The ledger's daily history of ``days`` (reconciliation); raises ``StoreError``."""
        return self._read(lambda store: store.history(days))

    def budgets_view(self) -> dict[str, Any]:
        """``GET /admin/budgets``. Blocking (store reads): call off the event loop."""
        book, now = self._gate.book, self.clock()
        keys = [(b.name, b.window(now).id) for b in book.budgets]
        totals: Totals = {}
        error = None
        if self.ledger is not None:
            self.ledger.flush()  # calls that ended are in the store, their reservations gone
            try:
                totals = self.ledger.totals(keys)
            except StoreError as failure:
                error = str(failure)
                totals = {k: self.ledger.known(*k) for k in keys}
        return {
            "now": iso(now),
            "store": {"backend": self.ledger.store.backend if self.ledger else None,
                      "ok": error is None, "error": error},
            "budgets": [describe(b, *totals.get(k, (0, 0)), now)
                        for b, k in zip(book.budgets, keys, strict=True)],
        }

    def spend_view(self, group_by: Sequence[str], window: str) -> dict[str, Any]:
        """``GET /admin/spend``: spend per ``group_by`` in the current UTC ``window``.
        ``group_by`` takes ``GROUPS``, or one ``tag:KEY`` (a key of ``attribution.tag_keys``)
        with ``upstream`` and ``model`` at most: tags are a dimension family of their own
        (``store.base.tag_window``). Raises ``ValueError`` on bad arguments and
        ``StoreError`` when the store fails."""
        columns, family = self._columns(group_by)
        if window not in WINDOW_KINDS:
            raise ValueError(f"window: choose from {list(WINDOW_KINDS)}")
        current = window_at(window, UTC, self.clock())
        rows = self._dims(current.id if family is None else tag_window(family, current.id))
        grouped: dict[tuple[str, ...], int] = {}
        for dims, nano in rows.items():
            key = tuple(dims[c] for c in columns)
            grouped[key] = grouped.get(key, 0) + nano
        ordered = sorted(grouped.items(), key=lambda item: -item[1])
        return {
            "window": window, "window_id": current.id,
            "start": iso(current.start) if current.end is not None else None,
            "end": iso(current.end), "group_by": list(group_by),
            "tag_keys": list(self.config.attribution.tag_keys),   # what tag:KEY may name
            "total_usd": nano_to_float(sum(grouped.values())),
            "rows": [{**dict(zip(group_by, key, strict=True)), "spend_usd": nano_to_float(nano)}
                     for key, nano in ordered],
        }

    def _columns(self, group_by: Sequence[str]) -> tuple[list[int], str | None]:
        """The ``Dims`` positions ``group_by`` reads, and the tag key whose family it reads
        (None: the main dimensions)."""
        tagged = [g.removeprefix(TAG_GROUP) for g in group_by if g.startswith(TAG_GROUP)]
        known = self.config.attribution.tag_keys
        if unknown := [g for g in group_by if g not in GROUPS and not g.startswith(TAG_GROUP)]:
            raise ValueError(f"group_by: unknown {unknown}; choose from {list(GROUPS)} or "
                             f"{[TAG_GROUP + k for k in known]}")
        if not tagged:
            return [GROUPS.index(g) for g in group_by], None
        if missing := [t for t in tagged if t not in known]:
            raise ValueError(f"group_by: {[TAG_GROUP + t for t in missing]} is not accounted: "
                             f"attribution.tag_keys lists {known}")
        if len(tagged) > 1 or set(group_by) - {TAG_GROUP + tagged[0], "upstream", "model"}:
            raise ValueError("group_by: a tag:KEY goes alone or with upstream and model "
                             "(tags are accounted apart from project and key, one key at a "
                             "time)")
        # A tag family's Dims hold the tag value where the main ones hold the project.
        return [1 if g.startswith(TAG_GROUP) else GROUPS.index(g) for g in group_by], tagged[0]

    def _dims(self, window_id: str) -> dict[Dims, int]:
        return self._read(lambda store: store.dims(window_id))

    def _read(self, read: Callable[[Store], _R]) -> _R:
        """One read of the shared store; a failure is counted and raised (``StoreError``)."""
        if self.ledger is None:
            raise StoreError("no budget store configured (set store.url, budgets or admin_key)")
        self.ledger.flush()  # spend recorded here is in what the store answers
        try:
            return read(self.ledger.store)
        except StoreError as error:
            self.ledger.health.failed("read", error)
            raise

    def series_view(self, range_name: str, by: str) -> dict[str, Any]:
        """The console's chart: spend and calls per bucket of ``range_name`` (``history``:
        minutes of the last hour, hours of the last day, days of the last month), each
        split by one of ``GROUPS``. Blocking (one store read per bucket and measure): call
        off the event loop. Raises ``ValueError`` and ``StoreError`` like ``spend_view``."""
        if by not in GROUPS:
            raise ValueError(f"by: choose from {list(GROUPS)}")
        if range_name not in RANGES:
            raise ValueError(f"range: choose from {list(RANGES)}")
        column = GROUPS.index(by)
        out = []
        for bucket in buckets(range_name, self.clock()):
            groups: dict[str, dict[str, float]] = {}
            for measure, window_id in (("spend_usd", bucket.spend_id),
                                       ("calls", bucket.calls_id)):
                for dims, amount in self._dims(window_id).items():
                    entry = groups.setdefault(dims[column], {"spend_usd": 0, "calls": 0})
                    entry[measure] += amount
            spent = sum(int(e["spend_usd"]) for e in groups.values())   # exact nano-dollars
            for entry in groups.values():
                entry["spend_usd"] = nano_to_float(int(entry["spend_usd"]))
            out.append({"start": iso(bucket.start), "label": bucket.label,
                        "spend_usd": nano_to_float(spent),
                        "calls": sum(int(e["calls"]) for e in groups.values()),
                        "groups": groups})
        return {"range": range_name, "resolution": RANGES[range_name][0], "by": by,
                "buckets": out}
