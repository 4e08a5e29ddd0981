"""The spend journal: settled costs kept on local disk until the budget store has them.

The ``Ledger`` appends every ``SettleBatch`` here as it is recorded (one small commit to a
file only this process writes), sends the sum of what is unsent to the store every
``ledger.SETTLE_EVERY_S`` as one *stamped* batch that replaces those rows, and removes that
once the store acknowledged it (lazily: ``done``), so spend survives the process dying
(SIGKILL, OOM, SIGTERM) whether the store is up, down or slow. On
start, whatever a previous process left is loaded and sent again, exactly once:

* a batch already *stamped* (``source``, ``seq``: it may have reached the store before the
  process died) is sent again under the same stamp, which the store applies at most once
  (``store.base``);
* an *unstamped* batch was never sent: it joins the new process's pending spend.

Rows: ``entries(id, source, seq, body)``, ``source`` empty for unstamped rows; ``body`` is
JSON ``{"r": releases, "c": charges, "d": dims, "h": daily history}``. At most one stamped
row per source is in use at a time (the ledger sends one batch at a time), plus those
adopted at start.

**Files and processes.** One journal belongs to one process: it holds an exclusive
``flock`` on ``PATH.lock`` for as long as it is open. A second process (another worker, or
a replica sharing the data directory) takes the next free slot, ``PATH.1``, ``PATH.2``...
A slot whose lock is free when a process starts (its owner died or the host now runs fewer
workers) is *adopted*: its rows are moved into the process's own journal, unstamped ones
stamped deterministically from the slot's identity first, so an adoption interrupted by a
crash and done again is still applied once.

**Durability** (``store.journal_fsync``): ``normal`` (default; SQLite WAL
``synchronous=NORMAL``) survives the process dying in any way (SIGKILL, OOM, a crash) but
may lose the last commits if the machine loses power; ``full`` fsyncs every commit, so an
append also survives power loss, at the price of one fsync per recorded batch (with one
call per batch at low traffic, about as many as calls) and one per write to the store;
``off`` leaves flushing to the OS.

Thread-safety: one connection, used under an internal lock from any thread.
Lifetime: ``open`` (takes the lock, adopts free slots), then ``close`` once.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from spendgate.budgets.pending import summed
from spendgate.budgets.store.base import Charge, DayCharge, DimCharge, SettleBatch, StoreError

log = logging.getLogger("spendgate.journal")
MAX_SLOTS = 256
_SYNC = {"full": "FULL", "normal": "NORMAL", "off": "OFF"}
_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (id INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL, seq INTEGER NOT NULL, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def encode(batch: SettleBatch) -> bytes:
    return orjson.dumps({
        "r": [list(r) for r in batch.releases],
        "c": [[c.budget, c.window, c.amount, c.ttl_s] for c in batch.charges],
        "d": [[d.window, list(d.dims), d.amount, d.ttl_s] for d in batch.dims],
        "h": [[h.day, h.upstream, h.model, h.kind, h.amount, h.ttl_s] for h in batch.days]})


def decode(source: str, seq: int, body: bytes) -> SettleBatch:
    data: dict[str, Any] = orjson.loads(body)
    return SettleBatch(
        source, seq, [(r, b, w) for r, b, w in data["r"]],
        [Charge(b, w, a, t) for b, w, a, t in data["c"]],
        [DimCharge(w, (d[0], d[1], d[2], d[3]), a, t) for w, d, a, t in data["d"]],
        [DayCharge(*h) for h in data.get("h", ())])


@dataclass(slots=True)
class Leftover:
    """What an earlier process left: batches to resend as stamped, and unsent spend."""

    stamped: list[SettleBatch]
    unstamped: list[SettleBatch]


class _Slot:
    """One journal file with its lock held."""

    def __init__(self, path: Path, lock_fd: int, sync: str) -> None:
        self.path = path
        self.lock_fd = lock_fd
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={_SYNC[sync]}")
        self.db.execute("PRAGMA wal_autocheckpoint=4000")   # as the store's (store/sqlite.py)
        self.db.executescript(_SCHEMA)
        row = self.db.execute("SELECT value FROM meta WHERE name='id'").fetchone()
        if row is None:
            self.id = uuid.uuid4().hex[:16]
            self.db.execute("INSERT INTO meta VALUES ('id', ?)", (self.id,))
        else:
            self.id = str(row[0])

    def rows(self) -> list[tuple[int, str, int, bytes]]:
        return self.db.execute("SELECT id, source, seq, body FROM entries ORDER BY id"
                               ).fetchall()

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.db.close()
        with contextlib.suppress(OSError):
            os.close(self.lock_fd)


def _lock(path: Path) -> int | None:
    """An exclusive, non-blocking lock on ``path.lock``: its fd, or None if held elsewhere."""
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _slot_path(base: Path, index: int) -> Path:
    return base if index == 0 else base.with_name(f"{base.name}.{index}")


class Journal:
    """This process's journal (module docstring). Raises ``StoreError`` if it cannot open."""

    def __init__(self, path: Path, fsync: str = "normal") -> None:
        self.fsync = fsync
        self._lock = threading.Lock()
        self._done: list[tuple[str, int]] = []  # acknowledged, not yet deleted (``done``)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            own: _Slot | None = None
            others: list[_Slot] = []
            for index in range(MAX_SLOTS):
                slot_path = _slot_path(path, index)
                if own is not None and not slot_path.exists():
                    continue
                fd = _lock(slot_path)
                if fd is None:
                    continue
                slot = _Slot(slot_path, fd, fsync)
                if own is None:
                    own = slot
                else:
                    others.append(slot)
        except (OSError, sqlite3.Error) as error:
            raise StoreError(f"store.journal: cannot open {path}: {error}") from None
        if own is None:
            raise StoreError(f"store.journal: all {MAX_SLOTS} slots of {path} are in use")
        self._own = own
        self.path = own.path
        for other in others:
            self._adopt(other)

    def _adopt(self, other: _Slot) -> None:
        """Move ``other``'s rows here (module docstring: stamped first, so a crash between
        the two commits leaves duplicates that the store applies once)."""
        rows = other.rows()
        if rows:
            unstamped = [decode("", 0, body) for _, source, _, body in rows if not source]
            stamped = [(source, seq, body) for _, source, seq, body in rows if source]
            if unstamped:
                merged = summed(unstamped)
                stamped.append((f"journal-{other.id}-{rows[-1][0]}", 1, encode(merged)))
            db = self._own.db
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT INTO entries (source, seq, body) VALUES (?, ?, ?)", stamped)
            db.execute("COMMIT")
            other.db.execute("DELETE FROM entries")
            log.warning("spend journal %s: adopted %d entries left by an earlier process",
                        other.path, len(rows))
        other.close()

    def leftover(self) -> Leftover:
        """What this journal held at open, for the ledger to send again."""
        with self._lock:
            rows = self._own.rows()
        return Leftover([decode(s, q, b) for _, s, q, b in rows if s],
                        [decode("", 0, b) for _, s, _, b in rows if not s])

    def append(self, batch: SettleBatch) -> None:
        """Keep an unsent batch (unstamped)."""
        self._write([], [("", 0, encode(batch))])

    def stamp(self, batch: SettleBatch) -> None:
        """``batch`` (stamped) now stands for every unstamped row: replace them by it."""
        self._write(["DELETE FROM entries WHERE source=''"],
                    [(batch.source, batch.seq, encode(batch))])

    def compact(self, batch: SettleBatch) -> None:
        """Replace every unstamped row by ``batch`` (their sum), unstamped."""
        self._write(["DELETE FROM entries WHERE source=''"], [("", 0, encode(batch))])

    def done(self, batch: SettleBatch) -> None:
        """The store acknowledged ``batch``: forget it. Deleted with the next write (one
        commit per batch instead of two), or by ``forget_done`` (the ledger's next tick,
        ``ledger.SETTLE_EVERY_S``), or at ``close``; a process that dies before has it
        replayed on restart, which the store applies at most once."""
        with self._lock:
            self._done.append((batch.source, batch.seq))

    def forget_done(self) -> None:
        """Delete the rows of acknowledged batches now."""
        with self._lock:
            if self._done:
                try:
                    self._delete_done()  # autocommit
                except sqlite3.Error as error:  # replayed later, and applied once: harmless
                    log.warning("spend journal %s: %s", self.path, error)
                self._done.clear()

    def _delete_done(self) -> None:
        """Called with ``_lock`` held; forgets them only once the caller has committed."""
        self._own.db.executemany("DELETE FROM entries WHERE source=? AND seq=?", self._done)

    def unstamped_rows(self) -> int:
        with self._lock:
            return int(self._own.db.execute(
                "SELECT count(*) FROM entries WHERE source=''").fetchone()[0])

    def _write(self, statements: list[str], rows: list[tuple[str, int, bytes]]) -> None:
        with self._lock:
            db = self._own.db
            try:
                if not statements and not self._done and len(rows) == 1:
                    # An append (once per recorded batch): one statement, its own commit.
                    db.execute("INSERT INTO entries (source, seq, body) VALUES (?, ?, ?)",
                               rows[0])
                    return
                db.execute("BEGIN IMMEDIATE")
                try:
                    if self._done:
                        self._delete_done()
                    for statement in statements:
                        db.execute(statement)
                    db.executemany("INSERT INTO entries (source, seq, body) VALUES (?, ?, ?)",
                                   rows)
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
                self._done.clear()
            except sqlite3.Error as error:
                raise StoreError(f"spend journal {self.path}: {error}") from None

    def close(self) -> None:
        self.forget_done()
        with self._lock:
            self._own.close()

