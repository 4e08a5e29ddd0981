"""The default budget store: a local SQLite file (one proxy, or several on one host).

Every operation of ``base.Store`` runs as one transaction on a dedicated thread that owns
the connection; ``sqlite3`` errors and timeouts become ``StoreError`` in one place
(``_guarded``, ``_run``). Two exceptions, the per-call operations, for which the hand-off
to that thread and back cost as much as the transaction itself (a few indexed rows of a
local file):

* the hot path's ``reserve_async`` runs on the event loop, on a connection of its own that
  never waits for a lock (``busy_timeout`` 0) nor checkpoints the WAL; only when another
  writer holds the file (a settlement, another process) does it go to the store's thread,
  which waits up to ``timeout_s`` as every other operation does;
* ``settle`` runs on the caller's thread (the ledger's sync thread), on a connection of its
  own that waits up to ``timeout_s`` for the write lock; every 0.25 s at most it then has
  the WAL checkpointed (PASSIVE) by a thread of the store's own, which holds nothing a
  reservation or a settlement waits for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any, TypeVar

import spendgate.budgets.store.sqlite_limits as sqlite_limits
from spendgate.budgets.store.base import (
    DIM_CAP,
    HISTORY_CAP,
    DayCharge,
    DimCharge,
    Dims,
    HistoryKey,
    Hold,
    LimitEnd,
    LimitHold,
    LimitState,
    Refusal,
    SettleBatch,
    Store,
    StoreError,
    Totals,
    fits,
)
from spendgate.labels import OTHER

T = TypeVar("T")
log = logging.getLogger("spendgate.budgets")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS budget_spend (budget TEXT NOT NULL, win TEXT NOT NULL,
    spend INTEGER NOT NULL DEFAULT 0, reserved INTEGER NOT NULL DEFAULT 0, expires REAL,
    PRIMARY KEY (budget, win)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reservations (rid TEXT NOT NULL, budget TEXT NOT NULL,
    win TEXT NOT NULL, amount INTEGER NOT NULL, lease_until REAL NOT NULL,
    PRIMARY KEY (rid, budget, win)) WITHOUT ROWID;
-- No index by lease (files of earlier versions had one): each reservation would write one
-- more page; expired leases are looked for only before a refusal and by the prune, among
-- the calls in flight.
DROP INDEX IF EXISTS reservations_by_lease;
CREATE TABLE IF NOT EXISTS dim_spend (win TEXT NOT NULL, upstream TEXT NOT NULL,
    project TEXT NOT NULL, model TEXT NOT NULL, vkey TEXT NOT NULL,
    spend INTEGER NOT NULL DEFAULT 0, expires REAL,
    PRIMARY KEY (win, upstream, project, model, vkey)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS day_usage (day TEXT NOT NULL, upstream TEXT NOT NULL,
    model TEXT NOT NULL, kind TEXT NOT NULL, amount INTEGER NOT NULL DEFAULT 0, expires REAL,
    PRIMARY KEY (day, upstream, model, kind)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS claims (name TEXT PRIMARY KEY, expires REAL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS settled (source TEXT PRIMARY KEY, seq INTEGER NOT NULL,
    expires REAL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS memos (name TEXT PRIMARY KEY, value TEXT NOT NULL, expires REAL)
    WITHOUT ROWID;
"""
_PRUNE_EVERY_S = 60.0
_CHECKPOINT_PAGES = 4000
_CHECKPOINT_EVERY_S = 0.25
_WAL_LIMIT_BYTES = 16 << 20    # the WAL file is cut back to this when a checkpoint empties it
_RELEASES_PER_STATEMENT = 300   # x 4 values at most, far under SQLite's 32,766
_SETTLED_TTL_S = 86400
# A hold that fits, in one statement (``base.fits``): ?1 amount, ?2 expires, ?5 limit.
_RESERVE_IF_FITS = ("UPDATE budget_spend SET reserved=reserved+?1, expires=?2 WHERE budget=?3 "
                    "AND win=?4 AND spend+reserved<?5 AND spend+reserved+?1<=?5")


class _Busy(Exception):
    """Another connection holds the file's write lock."""


def _busy(error: sqlite3.OperationalError) -> bool:
    """Another connection holds the lock (any extended code of SQLITE_BUSY or _LOCKED)."""
    return error.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _expires(now: float, ttl_s: int) -> float | None:
    return None if ttl_s <= 0 else now + ttl_s


class SQLiteStore(Store):
    """A WAL-mode SQLite file: one connection per use (module docstring).

    Write transactions are ``BEGIN IMMEDIATE``, so several processes may share the file.
    Commits are ``synchronous=NORMAL``: a crashed process loses nothing committed.
    """

    backend = "sqlite"

    def __init__(self, path: Path, timeout_s: float, lease_s: float) -> None:
        super().__init__(timeout_s, lease_s)
        self.description = f"sqlite file {path.resolve()}"
        self._path = path
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="spendgate-sqlite")
        self._db: sqlite3.Connection | None = None
        self._loop_db: sqlite3.Connection | None = None   # reserve_async's, on the loop
        self._settle_db: sqlite3.Connection | None = None  # settle's, under _settle_lock
        self._settle_lock = threading.Lock()
        self._checkpointer: threading.Thread | None = None  # started by _checkpoint
        self._checkpoint_lock = threading.Lock()
        self._checkpoint_due = threading.Event()
        self._checkpointed = 0.0
        self._closing = False
        self._pruned = 0.0
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreError(f"cannot create {path.parent}: {error.strerror}") from None
        self._run(self._open, timeout_s=max(timeout_s, 10.0))

    # -- plumbing: everything runs on the store's own thread --------------------------------

    def _open(self) -> None:
        db = sqlite3.connect(self._path, timeout=self.timeout_s, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        # A backstop only: settlements checkpoint the WAL (``_checkpoint``).
        db.execute(f"PRAGMA wal_autocheckpoint={_CHECKPOINT_PAGES}")
        db.execute(f"PRAGMA journal_size_limit={_WAL_LIMIT_BYTES}")
        db.executescript(_SCHEMA)
        db.executescript(sqlite_limits.SCHEMA)
        self._db = db

    def _run(self, fn: Callable[..., T], *args: Any, timeout_s: float | None = None) -> T:
        future = self._executor.submit(self._guarded, fn, *args)
        try:
            return future.result(timeout_s or self.timeout_s)
        except FutureTimeout:
            future.cancel()
            raise StoreError(f"{self.description} did not answer in "
                             f"{timeout_s or self.timeout_s:g} s") from None

    def _guarded(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return fn(*args)
        except sqlite3.Error as error:
            raise StoreError(f"{self.description}: {error}") from None

    def _transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        result: T = self._run(self._write, fn)
        return result

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        db = self._db
        if db is None:
            raise StoreError(f"{self.description} is closed")
        return self._write_on(db, fn)

    @staticmethod
    def _write_on(db: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T],
                  busy_ok: bool = False) -> T:
        """``fn`` in one write transaction; ``busy_ok``: ``_Busy`` (nothing done) when
        another connection holds the write lock."""
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as error:
            if busy_ok and _busy(error):
                raise _Busy from None
            raise
        try:
            result = fn(db)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return result

    # -- operations -------------------------------------------------------------------------

    def reserve(self, rid: str, holds: Sequence[Hold], now: float) -> Refusal | None:
        return self._transaction(lambda db: self._reserve(db, rid, holds, now))

    async def reserve_async(self, rid: str, holds: Sequence[Hold],
                            now: float) -> Refusal | None:
        return await self._write_async(lambda db: self._reserve(db, rid, holds, now))

    async def _write_async(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn`` in one write transaction from the event loop (reservations, rate limits):
        on the loop's own connection, or on the store's thread when another writer has the
        file."""
        try:
            return self._on_loop(fn)
        except _Busy:
            pass  # another writer has the file: wait for it on the store's thread
        loop = asyncio.get_running_loop()
        job = loop.run_in_executor(self._executor, self._guarded, self._write_after_settle, fn)
        try:
            return await asyncio.wait_for(job, self.timeout_s)
        except TimeoutError:
            raise StoreError(f"{self.description} did not answer in {self.timeout_s:g} s"
                             ) from None

    def _write_after_settle(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``_write``, once this process's settlement (usually the writer in the way) has
        committed: woken as it ends, rather than by SQLite's busy handler, which polls
        after 1, 2, 5, 10... ms."""
        with self._settle_lock:
            pass
        return self._write(fn)

    def _on_loop(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn`` in one write transaction on the loop's connection; ``_Busy`` when the
        write lock is taken (nothing was done), ``StoreError`` on any other failure."""
        try:
            db = self._loop_db
            if db is None:
                db = sqlite3.connect(self._path, timeout=0, isolation_level=None,
                                     check_same_thread=False)  # closed from close()'s thread
                # The file is already in WAL mode; synchronous is per connection. The WAL
                # is checkpointed by settlements (``_checkpoint``), never on the loop.
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute("PRAGMA wal_autocheckpoint=0")
                # The loop's commits are those that restart an emptied WAL: cut it back then.
                db.execute(f"PRAGMA journal_size_limit={_WAL_LIMIT_BYTES}")
                self._loop_db = db
            return self._write_on(db, fn, busy_ok=True)
        except sqlite3.Error as error:
            raise StoreError(f"{self.description}: {error}") from None

    def _reserve(self, db: sqlite3.Connection, rid: str, holds: Sequence[Hold],
                 now: float) -> Refusal | None:
        """The usual call: per hold, one UPDATE that adds the amount only if it fits (and
        the window's row exists), then the reservation's row. Anything else (a hold that
        does not fit, a window's first call) undoes those updates and takes
        ``_reserve_checked`` in the same transaction, which reclaims expired leases first:
        a lease that expired (its replica died) never refuses a call, and is otherwise
        reclaimed by the periodic prune (``_settle``)."""
        for n, h in enumerate(holds):
            if db.execute(_RESERVE_IF_FITS, (h.amount, _expires(now, h.ttl_s), h.budget,
                                             h.window, h.limit)).rowcount != 1:
                for done in holds[:n]:
                    db.execute("UPDATE budget_spend SET reserved=reserved-? WHERE budget=? "
                               "AND win=?", (done.amount, done.budget, done.window))
                return self._reserve_checked(db, rid, holds, now)
        lease_until = now + self.lease_s
        for h in holds:
            db.execute("INSERT OR REPLACE INTO reservations VALUES (?, ?, ?, ?, ?)",
                       (rid, h.budget, h.window, h.amount, lease_until))
        return None

    def _reserve_checked(self, db: sqlite3.Connection, rid: str, holds: Sequence[Hold],
                         now: float) -> Refusal | None:
        for h in holds:  # reclaim leases of calls whose proxy never settled them
            self._reclaim(db, "budget=? AND win=? AND lease_until<=?",
                          (h.budget, h.window, now))
        for h in holds:
            row = db.execute("SELECT spend, reserved FROM budget_spend WHERE budget=? AND win=?",
                             (h.budget, h.window)).fetchone()
            spend, reserved = row if row else (0, 0)
            if not fits(spend, reserved, h.amount, h.limit):
                return Refusal(h.budget, h.window, spend, reserved, h.amount)
        for h in holds:
            db.execute("INSERT INTO budget_spend (budget, win, reserved, expires) "
                       "VALUES (?, ?, ?, ?) ON CONFLICT (budget, win) DO UPDATE SET "
                       "reserved=reserved+excluded.reserved, expires=excluded.expires",
                       (h.budget, h.window, h.amount, _expires(now, h.ttl_s)))
            db.execute("INSERT OR REPLACE INTO reservations VALUES (?, ?, ?, ?, ?)",
                       (rid, h.budget, h.window, h.amount, now + self.lease_s))
        return None

    @staticmethod
    def _reclaim(db: sqlite3.Connection, where: str, args: tuple[Any, ...]) -> None:
        """Delete the reservations ``where`` selects (expired leases, at most 1,000 at once)
        and take their amounts off ``reserved``."""
        expired = db.execute("DELETE FROM reservations WHERE (rid, budget, win) IN (SELECT "
                             f"rid, budget, win FROM reservations WHERE {where} LIMIT 1000) "
                             "RETURNING budget, win, amount", args).fetchall()
        for budget, window, amount in expired:
            db.execute("UPDATE budget_spend SET reserved=reserved-? WHERE budget=? AND win=?",
                       (amount, budget, window))

    def settle(self, batch: SettleBatch, now: float) -> Totals:
        """On the caller's thread (the ledger's, never the loop), on a connection of its own
        that waits up to ``timeout_s`` for the write lock: the hand-off to the store's thread
        and back cost as much as the transaction itself."""
        with self._settle_lock:
            try:
                db = self._settle_db
                if db is None:
                    db = sqlite3.connect(self._path, timeout=self.timeout_s,
                                         isolation_level=None, check_same_thread=False)
                    db.execute("PRAGMA synchronous=NORMAL")
                    db.execute("PRAGMA wal_autocheckpoint=0")   # ``_checkpoint``, below
                    db.execute(f"PRAGMA journal_size_limit={_WAL_LIMIT_BYTES}")
                    self._settle_db = db
                totals = self._write_on(db, lambda db: self._settle(db, batch, now))
            except sqlite3.Error as error:
                raise StoreError(f"{self.description}: {error}") from None
        self._checkpoint()
        return totals

    def _checkpoint(self) -> None:
        """Ask for a PASSIVE checkpoint of the WAL, every ``_CHECKPOINT_EVERY_S`` at most,
        once a settlement committed; the ``spendgate-sqlite-checkpoint`` thread runs it. Run
        inside a commit (SQLite's autocheckpoint) it held up the reservations that waited
        for that commit; run by the settling thread, its fsyncs delayed the next
        settlements. On a thread of its own it holds nothing anyone waits for: a PASSIVE
        checkpoint never takes the write lock, and releases the GIL. Frequent, it copies
        few pages (the same rows are written over and over), so the WAL stays a few MB at a
        few thousand calls a second."""
        started = time.monotonic()
        if started - self._checkpointed < _CHECKPOINT_EVERY_S:
            return
        self._checkpointed = started
        with self._checkpoint_lock:
            if self._checkpointer is None and not self._closing:
                self._checkpointer = threading.Thread(
                    target=self._checkpoints, name="spendgate-sqlite-checkpoint", daemon=True)
                self._checkpointer.start()
        self._checkpoint_due.set()

    def _checkpoints(self) -> None:
        """The checkpoint thread: one PASSIVE checkpoint per request, until ``close``."""
        db = sqlite3.connect(self._path, timeout=0, isolation_level=None)
        try:
            while True:
                self._checkpoint_due.wait()
                self._checkpoint_due.clear()
                if self._closing:
                    return
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as error:  # asked again after the next settlement
                    log.warning("%s: WAL checkpoint failed: %s", self.description, error)
        finally:
            db.close()

    def _settle(self, db: sqlite3.Connection, batch: SettleBatch, now: float) -> Totals:
        touched = list(dict.fromkeys([(b, w) for _, b, w in batch.releases]
                                     + [(c.budget, c.window) for c in batch.charges]))
        last = db.execute("SELECT seq FROM settled WHERE source=?", (batch.source,)).fetchone()
        if last is None or batch.seq > last[0]:
            db.execute("INSERT INTO settled VALUES (?, ?, ?) ON CONFLICT (source) DO UPDATE "
                       "SET seq=excluded.seq, expires=excluded.expires",
                       (batch.source, batch.seq, now + _SETTLED_TTL_S))
            self._release(db, batch.releases)
            for c in batch.charges:
                db.execute("INSERT INTO budget_spend (budget, win, spend, expires) "
                           "VALUES (?, ?, ?, ?) ON CONFLICT (budget, win) DO UPDATE SET "
                           "spend=spend+excluded.spend, expires=excluded.expires",
                           (c.budget, c.window, c.amount, _expires(now, c.ttl_s)))
            for d in batch.dims:
                self._add_dim(db, d, now)
            day_rows: dict[str, int] = {}   # rows per day, counted once per transaction
            for h in batch.days:
                self._add_day(db, h, now, day_rows)
        if now - self._pruned > _PRUNE_EVERY_S:
            self._pruned = now
            self._reclaim(db, "lease_until<=?", (now,))
            for table in ("budget_spend", "dim_spend", "day_usage", "claims", "settled"):
                db.execute(f"DELETE FROM {table} WHERE expires IS NOT NULL AND expires<?",
                           (now,))
        return self._totals(db, touched)

    @staticmethod
    def _release(db: sqlite3.Connection, releases: Sequence[tuple[str, str, str]]) -> None:
        """Delete these reservations (an id the store never recorded is skipped) and take
        their amounts off ``reserved``: a few statements for a bulk settlement's hundreds of
        releases, so it holds the write lock (which the loop's reservations then wait for)
        briefly."""
        released: dict[tuple[str, str], int] = {}
        for start in range(0, len(releases), _RELEASES_PER_STATEMENT):
            chunk = releases[start:start + _RELEASES_PER_STATEMENT]
            rids = list(dict.fromkeys(rid for rid, _, _ in chunk))
            # ``rid IN`` finds the rows by primary key; the row values keep it exact.
            rows = db.execute("DELETE FROM reservations WHERE rid IN ("
                              + ",".join("?" * len(rids)) + ") AND (rid, budget, win) IN "
                              "(VALUES " + ",".join(["(?, ?, ?)"] * len(chunk))
                              + ") RETURNING budget, win, amount",
                              [*rids, *(value for release in chunk for value in release)]
                              ).fetchall()
            for budget, window, amount in rows:
                released[(budget, window)] = released.get((budget, window), 0) + amount
        for (budget, window), amount in released.items():
            db.execute("UPDATE budget_spend SET reserved=reserved-? WHERE budget=? AND win=?",
                       (amount, budget, window))

    @staticmethod
    def _add_dim(db: sqlite3.Connection, d: DimCharge, now: float) -> None:
        dims = d.dims
        known = db.execute("UPDATE dim_spend SET spend=spend+?, expires=? WHERE win=? AND "
                           "upstream=? AND project=? AND model=? AND vkey=?",
                           (d.amount, _expires(now, d.ttl_s), d.window, *dims)).rowcount
        if known:  # the usual case: one statement
            return
        if db.execute("SELECT count(*) FROM dim_spend WHERE win=?",
                      (d.window,)).fetchone()[0] >= DIM_CAP:
            dims = (OTHER, OTHER, OTHER, OTHER)
        db.execute("INSERT INTO dim_spend VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT "
                   "(win, upstream, project, model, vkey) DO UPDATE SET "
                   "spend=spend+excluded.spend, expires=excluded.expires",
                   (d.window, *dims, d.amount, _expires(now, d.ttl_s)))

    @staticmethod
    def _add_day(db: sqlite3.Connection, h: DayCharge, now: float,
                 day_rows: dict[str, int]) -> None:
        upstream, model = h.upstream, h.model
        if db.execute("UPDATE day_usage SET amount=amount+?, expires=? WHERE day=? AND "
                      "upstream=? AND model=? AND kind=?", (h.amount, _expires(now, h.ttl_s),
                                                            h.day, upstream, model, h.kind)
                      ).rowcount:
            return  # the usual case: one statement
        # A new row: within the day's cap, else summed under OTHER.
        if h.day not in day_rows:
            day_rows[h.day] = db.execute("SELECT count(*) FROM day_usage WHERE day=?",
                                         (h.day,)).fetchone()[0]
        known = None
        if day_rows[h.day] >= HISTORY_CAP:
            upstream, model = OTHER, OTHER
            known = db.execute("SELECT 1 FROM day_usage WHERE day=? AND upstream=? AND "
                               "model=? AND kind=?", (h.day, upstream, model, h.kind)
                               ).fetchone()
        if not known:
            day_rows[h.day] += 1
        db.execute("INSERT INTO day_usage VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT "
                   "(day, upstream, model, kind) DO UPDATE SET "
                   "amount=amount+excluded.amount, expires=excluded.expires",
                   (h.day, upstream, model, h.kind, h.amount, _expires(now, h.ttl_s)))

    def history(self, days: Sequence[str]) -> dict[HistoryKey, int]:
        def read() -> dict[HistoryKey, int]:
            assert self._db is not None
            out: dict[HistoryKey, int] = {}
            for day in days:
                for u, m, k, a in self._db.execute("SELECT upstream, model, kind, amount FROM "
                                                   "day_usage WHERE day=?", (day,)):
                    out[(day, u, m, k)] = a
            return out
        return self._run(read)

    def totals(self, keys: Sequence[tuple[str, str]], now: float) -> Totals:
        def read() -> Totals:
            assert self._db is not None
            return self._totals(self._db, keys)
        return self._run(read)

    @staticmethod
    def _totals(db: sqlite3.Connection, keys: Sequence[tuple[str, str]]) -> Totals:
        out: Totals = {}
        for budget, window in keys:
            row = db.execute("SELECT spend, reserved FROM budget_spend WHERE budget=? AND win=?",
                             (budget, window)).fetchone()
            out[(budget, window)] = (row[0], row[1]) if row else (0, 0)
        return out

    def dims(self, window: str) -> dict[Dims, int]:
        def read() -> dict[Dims, int]:
            assert self._db is not None
            rows = self._db.execute("SELECT upstream, project, model, vkey, spend FROM dim_spend "
                                    "WHERE win=?", (window,)).fetchall()
            return {(u, p, m, k): s for u, p, m, k, s in rows}
        return self._run(read)

    def claim(self, name: str, ttl_s: int, now: float) -> bool:
        def write(db: sqlite3.Connection) -> bool:
            db.execute("DELETE FROM claims WHERE name=? AND expires<?", (name, now))
            return db.execute("INSERT OR IGNORE INTO claims VALUES (?, ?)",
                              (name, _expires(now, ttl_s))).rowcount == 1
        return self._transaction(write)

    def close(self) -> None:
        if self._loop_db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._loop_db.close()
            self._loop_db = None
        with self._settle_lock:
            if self._settle_db is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._settle_db.close()
                self._settle_db = None
        with self._checkpoint_lock:
            self._closing = True
            checkpointer = self._checkpointer
        self._checkpoint_due.set()
        if checkpointer is not None:
            checkpointer.join(10)

        def shut() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None
        with contextlib.suppress(Exception):  # best effort: the file is consistent anyway
            self._executor.submit(shut).result(10)
        self._executor.shutdown(wait=False)

    def remember(self, name: str, value: str, ttl_s: int, now: float) -> None:
        def write(db: sqlite3.Connection) -> None:
            # Memos are written rarely (once per batch): pruning here keeps the table bounded.
            db.execute("DELETE FROM memos WHERE expires IS NOT NULL AND expires<?", (now,))
            db.execute("INSERT OR REPLACE INTO memos VALUES (?, ?, ?)",
                       (name, value, _expires(now, ttl_s)))
        self._transaction(write)

    def recall(self, name: str, now: float) -> str | None:
        def read() -> str | None:
            assert self._db is not None
            row = self._db.execute("SELECT value FROM memos WHERE name=? AND "
                                   "(expires IS NULL OR expires>=?)", (name, now)).fetchone()
            return str(row[0]) if row else None
        return self._run(read)

    # -- rate limits (sqlite_limits.py): per call, on the loop as reservations are ---------

    def limit_admit(self, rid: str, holds: Sequence[LimitHold], now: float
                    ) -> LimitState | None:
        return self._transaction(lambda db: sqlite_limits.admit(db, rid, holds, now,
                                                                self.lease_s))

    async def limit_admit_async(self, rid: str, holds: Sequence[LimitHold], now: float
                                ) -> LimitState | None:
        return await self._write_async(lambda db: sqlite_limits.admit(db, rid, holds, now,
                                                                      self.lease_s))

    async def limit_release_async(self, rid: str, limits: Sequence[str]) -> None:
        await self._write_async(lambda db: sqlite_limits.release(db, rid, limits))

    def limit_end(self, ends: Sequence[LimitEnd]) -> None:
        self._transaction(lambda db: sqlite_limits.end(db, ends))
