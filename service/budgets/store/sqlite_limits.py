"""Rate limits in SQLite (``base.Store.limit_*``): the same semantics as ``redis_limits``.

Tables::

    limit_calls   (name, rid) -> at (admission time), tokens: the sliding window's log
    limit_totals  name -> calls, tokens: the log's count and sum, kept with it (an admission
                  reads two rows, whatever the window holds)
    limit_slots   (name, rid) -> lease_until: the calls in flight

Each function runs inside the caller's write transaction (``BEGIN IMMEDIATE``), so
admission is atomic for every process sharing the file. Rows leave as admissions sweep the
window (a log holds only the last window's calls).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from spendgate.budgets.store.base import (
    CONCURRENT_RETRY_S,
    LimitEnd,
    LimitHold,
    LimitState,
    limit_exhausted,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS limit_calls (name TEXT NOT NULL, rid TEXT NOT NULL,
    at REAL NOT NULL, tokens INTEGER NOT NULL, PRIMARY KEY (name, rid)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS limit_calls_by_time ON limit_calls (name, at);
CREATE TABLE IF NOT EXISTS limit_totals (name TEXT PRIMARY KEY, calls INTEGER NOT NULL,
    tokens INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS limit_slots (name TEXT NOT NULL, rid TEXT NOT NULL,
    lease_until REAL NOT NULL, PRIMARY KEY (name, rid)) WITHOUT ROWID;
"""


def admit(db: sqlite3.Connection, rid: str, holds: Sequence[LimitHold], now: float,
          lease_s: float) -> LimitState | None:
    for h in holds:
        gone = db.execute("DELETE FROM limit_calls WHERE name=? AND at<=? RETURNING tokens",
                          (h.limit, now - h.window_s)).fetchall()
        if gone:
            _add(db, h.limit, -len(gone), -sum(t for (t,) in gone))
        db.execute("DELETE FROM limit_slots WHERE name=? AND lease_until<=?", (h.limit, now))
        row = db.execute("SELECT calls, tokens FROM limit_totals WHERE name=?",
                         (h.limit,)).fetchone()
        count, used = row if row else (0, 0)
        flying = db.execute("SELECT count(*) FROM limit_slots WHERE name=?",
                            (h.limit,)).fetchone()[0]
        what = limit_exhausted(h, count, used, flying)
        if what is not None:
            return _refusal(db, h, what, count, used, flying, now)
    for h in holds:
        if h.requests or h.tokens:
            db.execute("INSERT INTO limit_calls VALUES (?, ?, ?, ?)", (h.limit, rid, now, h.cost))
            _add(db, h.limit, 1, h.cost)
        if h.concurrent:
            db.execute("INSERT OR REPLACE INTO limit_slots VALUES (?, ?, ?)",
                       (h.limit, rid, now + lease_s))
    return None


def _refusal(db: sqlite3.Connection, h: LimitHold, what: str, count: int, used: int,
             flying: int, now: float) -> LimitState:
    retry: float | None = CONCURRENT_RETRY_S
    if what == "requests":
        at = db.execute("SELECT at FROM limit_calls WHERE name=? ORDER BY at LIMIT 1 OFFSET ?",
                        (h.limit, count - h.requests)).fetchone()[0]
        retry = at + h.window_s - now
    elif what == "tokens":
        retry = None
        if h.cost <= h.tokens:
            need, freed, retry = used + h.cost - h.tokens, 0, h.window_s
            for at, tokens in db.execute("SELECT at, tokens FROM limit_calls WHERE name=? "
                                         "ORDER BY at LIMIT 10000", (h.limit,)):
                freed += tokens
                if freed >= need:
                    retry = at + h.window_s - now
                    break
    last = db.execute("SELECT max(at) FROM limit_calls WHERE name=?", (h.limit,)).fetchone()[0]
    reset = 0.0 if last is None else max(last + h.window_s - now, 0.0)
    return LimitState(h.limit, what, count, used, flying,
                      None if retry is None else max(retry, 0.0), reset)


def release(db: sqlite3.Connection, rid: str, limits: Sequence[str]) -> None:
    db.executemany("DELETE FROM limit_slots WHERE name=? AND rid=?",
                   [(name, rid) for name in limits])


def _add(db: sqlite3.Connection, name: str, calls: int, tokens: int) -> None:
    db.execute("INSERT INTO limit_totals VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
               "calls=calls+excluded.calls, tokens=tokens+excluded.tokens",
               (name, calls, tokens))


def end(db: sqlite3.Connection, ends: Sequence[LimitEnd]) -> None:
    for e in ends:
        if e.tokens is None:
            continue
        row = db.execute("SELECT tokens FROM limit_calls WHERE name=? AND rid=?",
                         (e.limit, e.rid)).fetchone()
        if row is not None and row[0] != e.tokens:
            db.execute("UPDATE limit_calls SET tokens=? WHERE name=? AND rid=?",
                       (e.tokens, e.limit, e.rid))
            _add(db, e.limit, 0, e.tokens - row[0])
    db.executemany("DELETE FROM limit_slots WHERE name=? AND rid=?",
                   [(e.limit, e.rid) for e in ends if e.slot])
