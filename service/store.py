"""The budget store: spend and reservations per budget and window, in exact nano-dollars.

Two backends with one contract (``Store``): ``SQLiteStore`` (the default, a local file: one
proxy, or several on one host, keep their spend across restarts) and ``RedisStore``
(``store_redis.py``: every replica shares one ledger). ``open_store`` picks by URL.

Units: integers of nano-dollars (1e-9 USD). A call's exact ``Decimal`` cost is rarely a whole
number of them; the caller (``service.ledger``) carries the fraction to the next call, so
totals are exact to below one nano-dollar per process and never rounded per call.

Operations, each atomic in the store:

* ``reserve(rid, holds, now)``: for every hold, refuse when ``spend + reserved + amount >
  limit`` (or the budget is already used up); otherwise add every amount to ``reserved``
  under reservation id ``rid``, with a lease that ends ``lease_s`` after ``now``. Expired
  leases (a replica died with calls in flight) are reclaimed first. All holds or none.
* ``settle(batch, now)``: release reservations, add charges to ``spend`` and to the per
  dimension totals (``upstream, project, model, key`` per UTC window, at most ``DIM_CAP``
  distinct tuples per window, the rest summed as ``(other)``). Each writer (``source``, one
  per process) numbers its batches 1, 2, 3... and sends one only once the previous one is
  known to be applied; the store applies a batch only if its ``seq`` is above the last it
  applied from that source, so a batch retried after an ambiguous timeout is never counted
  twice, at the cost of one small record per process.
* ``totals``, ``dims``: reads. ``claim(name, ttl_s)``: true for the first caller only (alert
  dedupe across replicas).

Every operation is bounded by ``timeout_s`` and raises ``StoreError`` on any failure;
values live until their window ends plus a margin (``ttl_s``; 0 = forever). Thread-safety:
every method may be called from any thread; ``reserve_async`` from the event loop only.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

NANO = 10**9                     # ledger unit per USD
DIM_CAP = 1000                   # distinct (upstream, project, model, key) per window
OTHER = "(other)"
Dims = tuple[str, str, str, str]  # upstream, project, model, key ("" when no virtual key)
Totals = dict[tuple[str, str], tuple[int, int]]  # (budget, window) -> (spend, reserved)
T = TypeVar("T")


class StoreError(Exception):
    """The store failed or did not answer within ``timeout_s``; the message has no secrets."""


@dataclass(frozen=True, slots=True)
class Hold:
    """One block budget's part of a call's reservation."""

    budget: str
    window: str
    limit: int
    amount: int
    ttl_s: int


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why ``reserve`` said no: the first hold that did not fit, and that budget's state."""

    budget: str
    window: str
    spend: int
    reserved: int
    amount: int


@dataclass(frozen=True, slots=True)
class Charge:
    budget: str
    window: str
    amount: int
    ttl_s: int


@dataclass(frozen=True, slots=True)
class DimCharge:
    window: str
    dims: Dims
    amount: int
    ttl_s: int


@dataclass(slots=True)
class SettleBatch:
    """What the pipeline learned from a batch of finished calls, to apply once.
    ``source`` and ``seq`` are stamped by the ``Ledger`` when it first sends the batch."""

    source: str = ""
    seq: int = 0
    releases: list[tuple[str, str, str]] = field(default_factory=list)  # (rid, budget, window)
    charges: list[Charge] = field(default_factory=list)
    dims: list[DimCharge] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.releases or self.charges or self.dims)


def fits(spend: int, reserved: int, amount: int, limit: int) -> bool:
    """The admission rule of a block budget."""
    used = spend + reserved
    return used < limit and used + amount <= limit


class Store(ABC):
    backend: str
    description: str          # where the store is, safe to log (no password)

    def __init__(self, timeout_s: float, lease_s: float) -> None:
        self.timeout_s = timeout_s
        self.lease_s = lease_s

    @abstractmethod
    def reserve(self, rid: str, holds: Sequence[Hold], now: float) -> Refusal | None: ...

    @abstractmethod
    async def reserve_async(self, rid: str, holds: Sequence[Hold],
                            now: float) -> Refusal | None: ...

    @abstractmethod
    def settle(self, batch: SettleBatch, now: float) -> Totals:
        """Apply ``batch``; returns the totals of every budget window it touched."""

    @abstractmethod
    def totals(self, keys: Sequence[tuple[str, str]], now: float) -> Totals: ...

    @abstractmethod
    def dims(self, window: str) -> dict[Dims, int]: ...

    @abstractmethod
    def claim(self, name: str, ttl_s: int, now: float) -> bool: ...

    def close(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


def open_store(url: str, timeout_s: float, lease_s: float, prefix: str = "spendgate:") -> Store:
    """``sqlite:///relative/path``, ``sqlite:////absolute/path`` or ``redis://host:port/db``
    (``rediss://`` for TLS). Raises ``StoreError`` when a SQLite file cannot be opened."""
    if url.startswith("sqlite:///"):
        return SQLiteStore(Path(url.removeprefix("sqlite:///")), timeout_s, lease_s)
    if url.startswith(("redis://", "rediss://", "unix://")):
        from service.store_redis import RedisStore

        return RedisStore(url, timeout_s, lease_s, prefix)
    raise StoreError(f"store.url: unsupported scheme in {url.split(':', 1)[0]!r} "
                     "(sqlite:/// or redis://)")


_SCHEMA = """
CREATE TABLE IF NOT EXISTS budget_spend (budget TEXT NOT NULL, win TEXT NOT NULL,
    spend INTEGER NOT NULL DEFAULT 0, reserved INTEGER NOT NULL DEFAULT 0, expires REAL,
    PRIMARY KEY (budget, win)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reservations (rid TEXT NOT NULL, budget TEXT NOT NULL,
    win TEXT NOT NULL, amount INTEGER NOT NULL, lease_until REAL NOT NULL,
    PRIMARY KEY (rid, budget, win)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS reservations_by_lease ON reservations (budget, win, lease_until);
CREATE TABLE IF NOT EXISTS dim_spend (win TEXT NOT NULL, upstream TEXT NOT NULL,
    project TEXT NOT NULL, model TEXT NOT NULL, vkey TEXT NOT NULL,
    spend INTEGER NOT NULL DEFAULT 0, expires REAL,
    PRIMARY KEY (win, upstream, project, model, vkey)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS claims (name TEXT PRIMARY KEY, expires REAL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS settled (source TEXT PRIMARY KEY, seq INTEGER NOT NULL,
    expires REAL) WITHOUT ROWID;
"""
_PRUNE_EVERY_S = 60.0
_SETTLED_TTL_S = 86400


def _expires(now: float, ttl_s: int) -> float | None:
    return None if ttl_s <= 0 else now + ttl_s


class SQLiteStore(Store):
    """A WAL-mode SQLite file, used from one dedicated thread that owns the connection.

    Write transactions are ``BEGIN IMMEDIATE``, so several processes may share the file.
    Commits are ``synchronous=NORMAL``: a crashed process loses nothing committed.
    """

    backend = "sqlite"

    def __init__(self, path: Path, timeout_s: float, lease_s: float) -> None:
        super().__init__(timeout_s, lease_s)
        self.description = f"sqlite file {path}"
        self._path = path
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="spendgate-sqlite")
        self._db: sqlite3.Connection | None = None
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
        db.executescript(_SCHEMA)
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
        db.execute("BEGIN IMMEDIATE")
        try:
            result = fn(db)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return result

    # -- operations -------------------------------------------------------------------------

    def reserve(self, rid: str, holds: Sequence[Hold], now: float) -> Refusal | None:
        return self._transaction(lambda db: self._reserve(db, rid, holds, now))

    async def reserve_async(self, rid: str, holds: Sequence[Hold],
                            now: float) -> Refusal | None:
        loop = asyncio.get_running_loop()
        job = loop.run_in_executor(self._executor, self._guarded, self._write,
                                   lambda db: self._reserve(db, rid, holds, now))
        try:
            return await asyncio.wait_for(job, self.timeout_s)
        except TimeoutError:
            raise StoreError(f"{self.description} did not answer in {self.timeout_s:g} s"
                             ) from None

    def _reserve(self, db: sqlite3.Connection, rid: str, holds: Sequence[Hold],
                 now: float) -> Refusal | None:
        for h in holds:  # reclaim leases of calls whose proxy never settled them
            expired = db.execute("SELECT rid, amount FROM reservations WHERE budget=? AND win=? "
                                 "AND lease_until<=? LIMIT 100", (h.budget, h.window, now))
            for old, amount in expired.fetchall():
                db.execute("DELETE FROM reservations WHERE rid=? AND budget=? AND win=?",
                           (old, h.budget, h.window))
                db.execute("UPDATE budget_spend SET reserved=reserved-? WHERE budget=? AND win=?",
                           (amount, h.budget, h.window))
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

    def settle(self, batch: SettleBatch, now: float) -> Totals:
        return self._transaction(lambda db: self._settle(db, batch, now))

    def _settle(self, db: sqlite3.Connection, batch: SettleBatch, now: float) -> Totals:
        touched = list(dict.fromkeys([(b, w) for _, b, w in batch.releases]
                                     + [(c.budget, c.window) for c in batch.charges]))
        last = db.execute("SELECT seq FROM settled WHERE source=?", (batch.source,)).fetchone()
        if last is None or batch.seq > last[0]:
            db.execute("INSERT INTO settled VALUES (?, ?, ?) ON CONFLICT (source) DO UPDATE "
                       "SET seq=excluded.seq, expires=excluded.expires",
                       (batch.source, batch.seq, now + _SETTLED_TTL_S))
            for rid, budget, window in batch.releases:
                row = db.execute("DELETE FROM reservations WHERE rid=? AND budget=? AND win=? "
                                 "RETURNING amount", (rid, budget, window)).fetchone()
                if row:
                    db.execute("UPDATE budget_spend SET reserved=reserved-? "
                               "WHERE budget=? AND win=?", (row[0], budget, window))
            for c in batch.charges:
                db.execute("INSERT INTO budget_spend (budget, win, spend, expires) "
                           "VALUES (?, ?, ?, ?) ON CONFLICT (budget, win) DO UPDATE SET "
                           "spend=spend+excluded.spend, expires=excluded.expires",
                           (c.budget, c.window, c.amount, _expires(now, c.ttl_s)))
            for d in batch.dims:
                self._add_dim(db, d, now)
        if now - self._pruned > _PRUNE_EVERY_S:
            self._pruned = now
            for table in ("budget_spend", "dim_spend", "claims", "settled"):
                db.execute(f"DELETE FROM {table} WHERE expires IS NOT NULL AND expires<?",
                           (now,))
        return self._totals(db, touched)

    @staticmethod
    def _add_dim(db: sqlite3.Connection, d: DimCharge, now: float) -> None:
        dims = d.dims
        known = db.execute("SELECT 1 FROM dim_spend WHERE win=? AND upstream=? AND project=? "
                           "AND model=? AND vkey=?", (d.window, *dims)).fetchone()
        if not known and db.execute("SELECT count(*) FROM dim_spend WHERE win=?",
                                    (d.window,)).fetchone()[0] >= DIM_CAP:
            dims = (OTHER, OTHER, OTHER, OTHER)
        db.execute("INSERT INTO dim_spend VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT "
                   "(win, upstream, project, model, vkey) DO UPDATE SET "
                   "spend=spend+excluded.spend, expires=excluded.expires",
                   (d.window, *dims, d.amount, _expires(now, d.ttl_s)))

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
        def shut() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None
        with contextlib.suppress(Exception):  # best effort: the file is consistent anyway
            self._executor.submit(shut).result(10)
        self._executor.shutdown(wait=False)

