"""The ledger: a ``Store`` plus what keeps spend safe when the store is down or slow.

* A circuit breaker (``StoreHealth``): after a failure the store is not asked again for a
  backoff (0.25 s doubling to 0.75 s, each jittered down to half), so a dead Redis costs
  the hot path next to nothing; the ``ledger-sync`` thread (ticking every
  ``SETTLE_EVERY_S``) probes it as soon as the backoff ends, with or without traffic, so
  a store that is back is seen within a second
  (``store.on_error: closed`` stops refusing, ``/readyz`` passes again).
* Settlements are written in bulk: ``record`` (the pipeline's thread) only journals a batch
  and adds it to the pending spend (``pending.PendingSpend``: summed per budget window,
  dimensions and day, so memory stays bounded through any outage); the ``ledger-sync``
  thread writes all of it as one store transaction every ``SETTLE_EVERY_S``, and ``flush``
  at once (a ``/metrics`` scrape, shutdown). Reservations are released in that same
  transaction as their spend is charged, so ``spend + reserved`` in the store never drops
  below what the calls cost: the cap holds across replicas while spend waits here.
* Nothing recorded is lost: a settlement the store did not take is kept (a batch that may
  have been applied is retried under its own sequence number, which the store applies once)
  and written when the store answers again. Nor when the process dies: with a ``Journal``
  every batch is on local disk when ``record`` returns, and leaves it once the store
  acknowledged it; what an earlier process left there is sent first (``journal.py``).
* ``known(budget, window)``: the last totals the store reported plus spend not written yet,
  which the gate uses to keep blocking exhausted budgets while the store is unreachable.

Every store failure is counted through ``count_error(operation)``
(``spendgate_store_errors_total{operation}``); ``on_totals`` receives the totals the store
reported after each write (alert thresholds). Thread-safety: all methods may be called from
any thread; ``reserve`` from the event loop. Lifetime: ``start`` once, ``close`` once.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TypeVar

from spendgate.budgets.journal import Journal
from spendgate.budgets.pending import PendingSpend
from spendgate.budgets.store.base import (
    Hold,
    Refusal,
    SettleBatch,
    Store,
    StoreError,
    Totals,
)
from spendgate.budgets.windows import Clock, iso
from spendgate.money import usd

log = logging.getLogger("spendgate.ledger")
SETTLE_EVERY_S = 0.05             # the sync thread's tick: pending spend written this often
_MAX_BACKOFF_S = 0.75            # + one tick: the store is seen back within 1 s
_COMPACT_ROWS = 1000              # unsent journal rows summed into one past this
_T = TypeVar("_T")


class StoreDown(StoreError):
    """The breaker is open: the store failed recently and is not being asked."""


class StoreHealth:
    """Failure state of the store. Cheap to read on the hot path."""

    def __init__(self, count_error: Callable[[str], None], clock: Clock) -> None:
        self._count = count_error
        self._clock = clock
        self._backoff = 0.0
        self._retry_at = 0.0
        self.down_since: float | None = None
        self.last_error: str | None = None
        self.errors = 0

    def usable(self) -> bool:
        return self._retry_at <= time.monotonic()

    def failed(self, operation: str, error: BaseException) -> None:
        self.errors += 1
        self._count(operation)
        self._backoff = min(max(self._backoff * 2, 0.25), _MAX_BACKOFF_S)
        # Jittered, so replicas that lost the store together do not probe (nor fail and
        # pass /readyz) in lockstep.
        self._retry_at = time.monotonic() + self._backoff * random.uniform(0.5, 1.0)
        if self.down_since is None:
            self.down_since = self._clock()
            log.error("budget store failed (%s): %s; spend is kept locally until it is back",
                      operation, error)
        self.last_error = f"{operation}: {error}"

    def ok(self) -> None:
        if self.down_since is not None:
            log.warning("budget store is back after %.1f s", self._clock() - self.down_since)
        self.down_since = None
        self._backoff = 0.0
        self._retry_at = 0.0

    def count_journal_error(self, error: StoreError) -> None:
        self._count("journal")
        log.error("%s; that spend is kept in memory only", error)

    def problem(self) -> str | None:
        if self.down_since is None:
            return None
        return f"budget store failing since {iso(self.down_since)} ({self.last_error})"


class Ledger:
    """Store access for the gate (hot path), the settlement sink and the readers."""

    def __init__(self, store: Store, clock: Clock, count_error: Callable[[str], None],
                 journal: Journal | None = None,
                 on_totals: Callable[[Totals], None] | None = None) -> None:
        self.store = store
        self.clock = clock
        self.health = StoreHealth(count_error, clock)
        self._on_totals = on_totals
        self._lock = threading.Lock()          # guards the fields below
        self._flushing = threading.Lock()      # one writer to the store at a time
        # Held while a batch goes into the journal and the pending spend, and while the
        # pending spend is taken and the journal's rows replaced by it (stamp, compact): a
        # row is never replaced by a sum that lacks it.
        self._intake = threading.Lock()
        self._sent: list[SettleBatch] = []   # stamped, not yet acknowledged, in order
        self._pending = PendingSpend()       # recorded, not yet stamped
        self._known: Totals = {}
        self.source = uuid.uuid4().hex[:16]   # this process, as a writer to the store
        self._seq = 0
        self.journal = journal
        self._journal_rows = 0               # unstamped rows in the journal
        if journal is not None:
            leftover = journal.leftover()
            self._sent = leftover.stamped
            for batch in leftover.unstamped:
                self._pending.add(batch)
            self._journal_rows = len(leftover.unstamped)
            if leftover.stamped or leftover.unstamped:
                log.warning("spend journal %s: %s of spend left by an earlier process is "
                            "being sent to the budget store", journal.path,
                            usd(self.pending()))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sync, name="spendgate-ledger-sync",
                                        daemon=True)

    # -- hot path ---------------------------------------------------------------------------

    async def reserve(self, rid: str, holds: Sequence[Hold], now: float) -> Refusal | None:
        """Raises ``StoreError`` (``StoreDown`` without trying while the breaker is open)."""
        if not self.health.usable():
            raise StoreDown(self.health.last_error or "store down")
        try:
            refusal = await self.store.reserve_async(rid, holds, now)
        except StoreError as error:
            self.health.failed("reserve", error)
            raise
        except Exception as error:  # an unexpected reply must not fail the call either
            self.health.failed("reserve", error)
            raise StoreError(f"{type(error).__name__}: {error}") from error
        self.health.ok()
        if refusal is not None:
            self._known[(refusal.budget, refusal.window)] = (refusal.spend, refusal.reserved)
        return refusal

    # -- settlement (pipeline thread) --------------------------------------------------------

    def record(self, batch: SettleBatch) -> None:
        """Journal ``batch`` and add it to the pending spend, written within
        ``SETTLE_EVERY_S`` (or by ``flush``). Local work only: never waits for the store."""
        if not batch:
            return
        with self._intake:
            self._journal("append", batch)
            with self._lock:
                self._pending.add(batch)

    def _journal(self, operation: str, batch: SettleBatch) -> None:
        """Write ``batch`` to the journal (``append``, ``stamp``, ``compact``, ``done``); a
        failing journal (disk full) is counted and logged, and the spend stays in memory."""
        journal = self.journal
        if journal is None:
            return
        try:
            getattr(journal, operation)(batch)
        except StoreError as error:
            self.health.count_journal_error(error)
            return
        if operation == "append":
            self._journal_rows += 1
        elif operation in ("stamp", "compact"):
            self._journal_rows = int(operation == "compact")

    def _stamp(self, batch: SettleBatch) -> None:
        """Number a batch as it is first sent: each only after the previous one applied."""
        self._seq += 1
        batch.source, batch.seq = self.source, self._seq

    def flush(self) -> Totals | None:
        """Write what is pending now (unless the breaker is open); the totals it touched,
        None when the store did not take it. Blocking: call off the event loop."""
        if not self.health.usable():
            return None
        with self._flushing:
            return self._flush()

    def _flush(self) -> Totals | None:
        """Write what is pending; called with ``_flushing`` held."""
        totals: Totals = {}
        while True:
            with self._lock:
                batch = self._sent[0] if self._sent else None
            if batch is None:
                with self._intake:
                    with self._lock:
                        if not self._pending:
                            break
                        batch = self._pending.batch()
                        self._pending = PendingSpend()
                        self._stamp(batch)
                        self._sent.append(batch)
                    # This stamped batch now stands for every unsent row of the journal.
                    self._journal("stamp", batch)
            try:
                totals.update(self.store.settle(batch, self.clock()))
            except Exception as error:  # StoreError, or a reply we could not read
                self.health.failed("settle", error)
                return None
            self.health.ok()
            self._journal("done", batch)
            with self._lock:
                self._sent.remove(batch)
            self._remember(totals)
        if totals and self._on_totals is not None:
            self._on_totals(totals)
        return totals

    def waiting(self) -> bool:
        """Anything recorded here that the store has not acknowledged."""
        with self._lock:
            return bool(self._sent or self._pending)

    def pending(self) -> int:
        """Spend (nano-dollars) recorded here and not yet in the store."""
        with self._lock:
            waiting = self._pending.spend()
            for batch in self._sent:
                waiting += sum(c.amount for c in batch.charges)
            return waiting

    def _remember(self, totals: Totals) -> None:
        self._known.update(totals)

    def known(self, budget: str, window: str) -> tuple[int, int]:
        """Last (spend, reserved) the store reported, plus spend not written to it yet."""
        spend, reserved = self._known.get((budget, window), (0, 0))
        with self._lock:
            spend += self._pending.charged(budget, window)
            for batch in self._sent:
                spend += sum(c.amount for c in batch.charges
                             if (c.budget, c.window) == (budget, window))
        return spend, reserved

    # -- reads -------------------------------------------------------------------------------

    def totals(self, keys: Sequence[tuple[str, str]]) -> Totals:
        """Fresh totals, including spend not yet written; raises ``StoreError``."""
        if not self.health.usable():
            raise StoreDown(self.health.last_error or "store down")
        try:
            totals = self.store.totals(keys, self.clock())
        except StoreError as error:
            self.health.failed("read", error)
            raise
        self._remember(totals)
        return {key: self.known(*key) for key in keys}

    def claim(self, name: str, ttl_s: int) -> bool:
        try:
            return self.store.claim(name, ttl_s, self.clock())
        except StoreError as error:
            self.health.failed("claim", error)
            raise

    def remember(self, name: str, value: str, ttl_s: int) -> None:
        """``Store.remember`` behind the breaker; raises ``StoreError``."""
        self._ask("remember", lambda: self.store.remember(name, value, ttl_s, self.clock()))

    def recall(self, name: str) -> str | None:
        """``Store.recall`` behind the breaker; raises ``StoreError``."""
        return self._ask("recall", lambda: self.store.recall(name, self.clock()))

    def _ask(self, operation: str, ask: Callable[[], _T]) -> _T:
        if not self.health.usable():
            raise StoreDown(self.health.last_error or "store down")
        try:
            answer = ask()
        except StoreError as error:
            self.health.failed(operation, error)
            raise
        self.health.ok()
        return answer

    # -- lifetime ----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def _sync(self) -> None:
        while not self._stop.wait(SETTLE_EVERY_S):
            if self.waiting() and self.health.usable():
                try:
                    with self._flushing:
                        self._flush()
                except Exception:  # keep syncing: the batch stays queued for the next try
                    log.exception("budget ledger sync failed")
            elif self.health.down_since is not None and self.health.usable():
                self.probe()
            elif self._journal_rows > _COMPACT_ROWS:
                with self._flushing, self._intake:  # a long outage: one row for all unsent
                    with self._lock:
                        batch = self._pending.batch()
                    self._journal("compact", batch)
            if self.journal is not None:
                self.journal.maintain()

    def probe(self) -> None:
        """Ask the store a cheap question, to learn whether it is back."""
        try:
            self.store.ping(self.clock())
        except Exception as error:  # StoreError, or a reply we could not read
            self.health.failed("probe", error)
            return
        self.health.ok()

    def close(self) -> None:
        """Stop the sync thread, try a last write, close the journal and the store."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        with self._flushing:
            if self._flush() is None and self.pending():
                if self.journal is not None:
                    log.warning("budget store unreachable at shutdown: %s of recorded spend "
                                "stays in the spend journal %s and is sent when the proxy "
                                "next starts", usd(self.pending()), self.journal.path)
                else:
                    log.error("budget store unreachable at shutdown: %s of recorded spend "
                              "could not be written to it (store.journal is off)",
                              usd(self.pending()))
            if self.journal is not None:
                self.journal.close()
        self.store.close()
