"""The spend journal: settled costs kept on local disk until the budget store has them.

The ``Ledger`` appends every ``SettleBatch`` here as it is recorded (one ``write`` of one
line to a file only this process writes: no database, no commit), sends the sum of what is
unsent to the store every ``ledger.SETTLE_EVERY_S`` as one *stamped* batch that stands for
those lines, and marks that acknowledged once the store took it, so spend survives the
process dying (SIGKILL, OOM, SIGTERM) whether the store is up, down or slow. On start,
whatever a previous process left is loaded and sent again, exactly once:

* a batch already *stamped* (``source``, ``seq``: it may have reached the store before the
  process died) is sent again under the same stamp, which the store applies at most once
  (``store.base``);
* an *unstamped* batch was never sent: it joins the new process's pending spend.

**Format.** Append-only lines, each one JSON array; replaying them in order gives what is
still owed (``_Live``)::

    ["i", id]                   first line: the file's identity (adoption, below)
    ["u", body]                 an unsent batch
    ["s", source, seq, body]    a stamped batch; it replaces every earlier "u"
    ["c", body]                 every earlier "u" replaced by this one (their sum)
    ["d", source, seq]          the store acknowledged that stamped batch

``body`` is ``{"r": releases, "c": charges, "d": dims, "h": daily history}``. A line is
written by one ``write`` call, so a killed process leaves whole lines (the kernel has them);
a last line cut short (a power cut) or unreadable is ignored. The file is *rotated* (what
is still owed written to a new file, renamed over it) at open, at close and once it passes
``ROTATE_BYTES``: it never grows without bound, and a torn tail is dropped.

**Files and processes.** One journal belongs to one process: it holds an exclusive
``flock`` on ``PATH.lock`` for as long as it is open. A second process (another worker, or
a replica sharing the data directory) takes the next free slot, ``PATH.1``, ``PATH.2``...
A slot whose lock is free when a process starts (its owner died or the host now runs fewer
workers) is *adopted*: what it owes is appended to the process's own journal, its unsent
batches summed and stamped deterministically from the slot's identity and size first, then
the slot's file is removed, so an adoption interrupted by a crash and done again is still
applied once.

**Durability** (``store.journal_fsync``): ``normal`` (default) survives the process dying
in any way (SIGKILL, OOM, a crash: a line written is in the kernel's page cache) and is
fsynced at rotation and close, so a power cut may lose what was appended since; ``full``
fsyncs every line that adds spend (``u``, ``s``, ``c``), so an append also survives power
loss, at the price of one fsync per recorded batch (with one call per batch at low traffic,
about as many as calls) and one per write to the store; ``off`` never fsyncs.

**Earlier versions** kept the journal in SQLite (``entries``/``meta`` tables, by default
``journal.sqlite3``). Such a file at ``PATH`` is read and rewritten as lines at open (the
rename makes that atomic: a crash before it leaves the SQLite file to read again); beside
the default ``journal.log``, ``journal.sqlite3`` and its slots are adopted as above.

Thread-safety: every method may be called from any thread (one internal lock).
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
ROTATE_BYTES = 1 << 20
DEFAULT_NAME = "journal.log"
OLD_DEFAULT_NAME = "journal.sqlite3"     # the journal before it was lines (adopted at open)
SQLITE_MAGIC = b"SQLite format 3\x00"
FSYNC_POLICIES = ("full", "normal", "off")


def body(batch: SettleBatch) -> dict[str, Any]:
    return {
        "r": batch.releases,
        "c": [(c.budget, c.window, c.amount, c.ttl_s) for c in batch.charges],
        "d": [(d.window, d.dims, d.amount, d.ttl_s) for d in batch.dims],
        "h": [(h.day, h.upstream, h.model, h.kind, h.amount, h.ttl_s) for h in batch.days]}


def decode(source: str, seq: int, data: dict[str, Any]) -> SettleBatch:
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


class _Live:
    """What a journal file still owes, as its lines (replayed from the file, kept up to date
    by each write): the unsent ``u``/``c`` lines and the unacknowledged ``s`` lines."""

    __slots__ = ("id", "stamped", "unstamped")

    def __init__(self) -> None:
        self.id = ""
        self.unstamped: list[bytes] = []
        self.stamped: dict[tuple[str, int], bytes] = {}

    def apply(self, line: bytes, entry: list[Any]) -> None:
        kind = entry[0]
        if kind == "u":
            self.unstamped.append(line)
        elif kind == "s":
            self.unstamped.clear()
            self.stamped[(entry[1], entry[2])] = line
        elif kind == "c":
            self.unstamped[:] = [line]
        elif kind == "d":
            self.stamped.pop((entry[1], entry[2]), None)
        elif kind == "i":
            self.id = entry[1]

    def lines(self) -> list[bytes]:
        return [*self.stamped.values(), *self.unstamped]

    def leftover(self) -> Leftover:
        stamped = [orjson.loads(line) for line in self.stamped.values()]
        return Leftover([decode(s, q, b) for _, s, q, b in stamped],
                        [decode("", 0, orjson.loads(line)[1]) for line in self.unstamped])


def _read(path: Path) -> tuple[_Live, int]:
    """Replay ``path`` (missing: empty); with the number of lines skipped as unreadable."""
    live, skipped = _Live(), 0
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return live, 0
    if data.startswith(SQLITE_MAGIC):
        return _read_sqlite(path), 0
    lines = data.split(b"\n")
    if lines[-1]:          # no newline after it: cut short
        skipped += 1
    for line in lines[:-1]:
        try:
            entry = orjson.loads(line)
            live.apply(line, entry)
        except (orjson.JSONDecodeError, IndexError, TypeError, KeyError):
            skipped += 1
    return live, skipped


def _read_sqlite(path: Path) -> _Live:
    """What an SQLite journal of an earlier spendgate owes (``entries(id, source, seq,
    body)``, ``meta('id')``), as the lines this version writes; a table it lacks owes
    nothing. Raises ``OSError`` when SQLite cannot read it (the file is then left alone)."""
    live = _Live()
    try:
        db = sqlite3.connect(path)
        try:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
            if "meta" in tables:
                row = db.execute("SELECT value FROM meta WHERE name='id'").fetchone()
                live.id = str(row[0]) if row else ""
            rows = (db.execute("SELECT source, seq, body FROM entries ORDER BY id").fetchall()
                    if "entries" in tables else [])
        finally:
            db.close()
    except sqlite3.Error as error:
        raise OSError(f"{path}: an SQLite journal SQLite cannot read ({error})") from None
    # Stamped rows first: there, unlike in lines, a stamped batch never stood for the
    # unsent rows before it.
    for source, seq, data in sorted(rows, key=lambda row: not row[0]):
        entry = ["s", source, seq, orjson.loads(data)] if source else ["u", orjson.loads(data)]
        live.apply(orjson.dumps(entry), entry)
    return live


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
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"store.journal_fsync: {fsync!r}")
        self.fsync = fsync
        self._lock = threading.Lock()
        self._fd = -1
        self._size = 0
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            own: tuple[Path, int] | None = None
            others: list[tuple[Path, int]] = []
            for index in range(MAX_SLOTS):
                slot_path = _slot_path(path, index)
                if own is not None and not slot_path.exists():
                    continue
                fd = _lock(slot_path)
                if fd is None:
                    continue
                if own is None:
                    own = (slot_path, fd)
                else:
                    others.append((slot_path, fd))
            if own is None:
                raise StoreError(f"store.journal: all {MAX_SLOTS} slots of {path} are in use")
            self.path, self._lock_fd = own
            self._live, skipped = _read(self.path)
            if skipped:
                log.warning("spend journal %s: %d unreadable line(s) ignored (a write cut "
                            "short)", self.path, skipped)
            if not self._live.id:
                self._live.id = uuid.uuid4().hex[:16]
            self._rotate()   # an SQLite journal at PATH (an earlier version's) now lines
            for gone in ("-wal", "-shm"):   # that SQLite journal's companions, if it was one
                with contextlib.suppress(FileNotFoundError):
                    self.path.with_name(self.path.name + gone).unlink()
            for other_path, other_fd in others:
                self._adopt(other_path, other_fd)
            if path.name == DEFAULT_NAME:   # an earlier version's default journal beside it
                for index in range(MAX_SLOTS):
                    old = _slot_path(path.with_name(OLD_DEFAULT_NAME), index)
                    if old.exists() and (fd := _lock(old)) is not None:
                        try:
                            self._adopt(old, fd)
                        except OSError as error:  # left as it was, for a person to look at
                            log.error("spend journal %s: not adopted: %s", old, error)
        except OSError as error:
            raise StoreError(f"store.journal: cannot open {path}: {error}") from None

    def _adopt(self, path: Path, lock_fd: int) -> None:
        """Append what ``path`` owes here, then remove it (module docstring: a crash between
        the two leaves duplicates that the store applies once)."""
        try:
            other, _ = _read(path)
            size = path.stat().st_size if path.exists() else 0
            lines = list(other.stamped.values())
            if other.unstamped:
                merged = summed(other.leftover().unstamped)
                lines.append(orjson.dumps(["s", f"journal-{other.id}-{size}", 1, body(merged)]))
            if lines:
                with self._lock:
                    for line in lines:
                        self._append(line, orjson.loads(line))
                log.warning("spend journal %s: adopted %d entries left by an earlier process",
                            path, len(other.stamped) + len(other.unstamped))
            for gone in (path, path.with_name(f"{path.name}-wal"),
                         path.with_name(f"{path.name}-shm")):
                with contextlib.suppress(FileNotFoundError):
                    gone.unlink()
        finally:
            os.close(lock_fd)

    def leftover(self) -> Leftover:
        """What this journal owes now (at open: what earlier processes left)."""
        with self._lock:
            return self._live.leftover()

    def append(self, batch: SettleBatch) -> None:
        """Keep an unsent batch (unstamped)."""
        self._write(["u", body(batch)])

    def stamp(self, batch: SettleBatch) -> None:
        """``batch`` (stamped) now stands for every unstamped batch."""
        self._write(["s", batch.source, batch.seq, body(batch)])

    def compact(self, batch: SettleBatch) -> None:
        """Replace every unstamped batch by ``batch`` (their sum), unstamped."""
        self._write(["c", body(batch)])

    def done(self, batch: SettleBatch) -> None:
        """The store acknowledged ``batch``: forget it. Never fsynced: lost (a power cut),
        the batch is replayed on restart, which the store applies at most once."""
        self._write(["d", batch.source, batch.seq])

    def maintain(self) -> None:
        """Rotate the file once it passed ``ROTATE_BYTES`` (the ledger's thread, per tick)."""
        if self._size > ROTATE_BYTES:
            with self._lock:
                try:
                    self._rotate()
                except OSError as error:  # the old file still holds everything
                    log.warning("spend journal %s: %s", self.path, error)

    def unstamped_rows(self) -> int:
        with self._lock:
            return len(self._live.unstamped)

    def _write(self, entry: list[Any]) -> None:
        line = orjson.dumps(entry)
        with self._lock:
            try:
                self._append(line, entry)
            except OSError as error:
                raise StoreError(f"spend journal {self.path}: {error}") from None

    def _append(self, line: bytes, entry: list[Any]) -> None:
        """One ``write`` of ``line`` (called with ``_lock`` held)."""
        if self._fd < 0:
            raise OSError("closed")
        data = line + b"\n"
        written = os.write(self._fd, data)
        if written != len(data):  # a full disk: the line is cut short, and ignored on read
            raise OSError(f"short write ({written} of {len(data)} bytes)")
        self._size += written
        if self.fsync == "full" and entry[0] != "d":
            os.fdatasync(self._fd)
        self._live.apply(line, entry)

    def _rotate(self) -> None:
        """Write what is owed to ``PATH.tmp`` and rename it over ``PATH`` (``_lock`` held or
        not yet shared)."""
        data = b"".join(line + b"\n" for line in
                        [orjson.dumps(["i", self._live.id]), *self._live.lines()])
        tmp = f"{self.path}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            if self.fsync != "off":
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        if self.fsync != "off":
            directory = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self._size = len(data)

    def close(self) -> None:
        with self._lock:
            if self._fd < 0:
                return
            with contextlib.suppress(OSError):  # the file as it stands still holds it all
                self._rotate()
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
