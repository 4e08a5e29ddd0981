"""Nothing lost across crashes and restarts: the spend journal, against real processes.

Each test runs ``spendgate serve`` in front of the fake provider, makes its budget store
unreachable (a private ``redis-server`` killed, or the default SQLite file held locked by
another connection), sends calls, then ends the proxy (SIGKILL or SIGTERM) before the store
is back, brings the store back, restarts the proxy in the same directory and finds every
cent in the store. A call is $0.10 (``budget_helpers.PRICE``). The proxy is ended only once
``/metrics`` answered: a scrape waits until every call that ended before it reached every
sink, the ledger (and so the journal) included.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx

from tests.budget_helpers import (  # noqa: F401  (fixtures)
    RedisServer,
    budget_config,
    chat_body,
    chat_reply,
    private_redis,
    wait_for,
)
from tests.conftest import ProxyProcess
from tests.fake_upstream import FakeUpstream

NANO_PER_CALL = 100_000_000  # $0.10
JSON = {"content-type": "application/json"}
BUDGET = [{"name": "load", "limit_usd": 1_000_000, "window": "total", "action": "block"}]


def call(proxy: ProxyProcess, n: int) -> None:
    with httpx.Client(timeout=10) as http:
        for _ in range(n):
            r = http.post(proxy.url + "/openai/v1/chat/completions", content=chat_body(100),
                          headers=JSON)
            assert r.status_code == 200, r.text


def end(proxy: ProxyProcess, how: signal.Signals) -> None:
    proxy.metrics_text()  # every call that ended is recorded, and journaled
    assert proxy.proc is not None
    proxy.proc.send_signal(how)
    proxy.proc.wait(20)


def redis_spend(server: RedisServer) -> int:
    return int(server.client().hget("journal:budget:load:total", "spend") or 0)


def redis_outage_then(how: signal.Signals, spawn: Any, upstream: FakeUpstream,
                      server: RedisServer) -> ProxyProcess:
    proxy: ProxyProcess = spawn(budget_config(
        upstream, BUDGET, store={"url": server.url, "key_prefix": "journal:", "timeout_s": 0.2}))
    upstream.queue(*[chat_reply(100) for _ in range(40)])
    call(proxy, 3)
    assert wait_for(lambda: redis_spend(server) == 3 * NANO_PER_CALL)
    server.client().save()
    server.kill()
    call(proxy, 12)  # store.on_error: open, so served while Redis is away
    end(proxy, how)
    assert "journal" in proxy.log() or how == signal.SIGKILL
    server.start()  # same port and directory: the snapshot taken before the outage
    assert redis_spend(server) == 3 * NANO_PER_CALL
    proxy.start()
    assert wait_for(lambda: redis_spend(server) == 15 * NANO_PER_CALL, 10)
    return proxy


def test_sigkill_during_a_redis_outage_loses_no_cent(
        spawn: Any, upstream: FakeUpstream, private_redis: RedisServer) -> None:  # noqa: F811
    proxy = redis_outage_then(signal.SIGKILL, spawn, upstream, private_redis)
    # Replayed exactly once: a second restart adds nothing, and new calls add theirs.
    end(proxy, signal.SIGKILL)
    proxy.start()
    call(proxy, 2)
    assert wait_for(lambda: redis_spend(private_redis) == 17 * NANO_PER_CALL, 10)
    proxy.metrics_text()
    assert redis_spend(private_redis) == 17 * NANO_PER_CALL


def test_sigterm_during_a_redis_outage_loses_no_cent(
        spawn: Any, upstream: FakeUpstream, private_redis: RedisServer) -> None:  # noqa: F811
    proxy = redis_outage_then(signal.SIGTERM, spawn, upstream, private_redis)
    assert "stays in the spend journal" in proxy.log()


def test_sigkill_with_the_default_sqlite_store_held_locked_loses_no_cent(
        spawn: Any, upstream: FakeUpstream) -> None:
    """The default store, a local SQLite file, made unavailable by a writer holding its lock
    (another process's long transaction), then the proxy killed."""
    proxy: ProxyProcess = spawn(budget_config(upstream, BUDGET, admin_key="adm"))
    ledger = proxy.config_path.parent / "spendgate-data" / "ledger.sqlite3"
    upstream.queue(*[chat_reply(100) for _ in range(40)])
    call(proxy, 2)
    assert wait_for(lambda: sqlite_spend(ledger) == 2 * NANO_PER_CALL)
    holder = sqlite3.connect(ledger, isolation_level=None, timeout=5)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        call(proxy, 9)
        end(proxy, signal.SIGKILL)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert sqlite_spend(ledger) == 2 * NANO_PER_CALL
    assert (ledger.parent / "journal.log").exists()
    proxy.start()
    assert wait_for(lambda: sqlite_spend(ledger) == 11 * NANO_PER_CALL, 10)
    view = httpx.get(proxy.url + "/admin/budgets",
                     headers={"authorization": "Bearer adm"}).json()["budgets"][0]
    assert view["spend_usd"] == 1.1 and view["reserved_usd"] == 0


def sqlite_spend(path: Path) -> int:
    with sqlite3.connect(path, timeout=5) as db:
        row = db.execute("SELECT spend FROM budget_spend WHERE budget='load' AND win='total'"
                         ).fetchone()
    return int(row[0]) if row else 0


def test_fail_closed_recovers_within_a_second_of_the_store_returning(
        spawn: Any, upstream: FakeUpstream, private_redis: RedisServer) -> None:  # noqa: F811
    """``store.on_error: closed``: refused (503) and not ready while Redis is away; back, with
    no call to probe it, ``/readyz`` passes and calls are served within about a second."""
    proxy: ProxyProcess = spawn(budget_config(upstream, BUDGET, store={
        "url": private_redis.url, "on_error": "closed", "timeout_s": 0.2}))
    upstream.queue(*[chat_reply(100) for _ in range(5)])
    call(proxy, 1)
    private_redis.kill()
    r = httpx.post(proxy.url + "/openai/v1/chat/completions", content=chat_body(100),
                   headers=JSON)
    assert r.status_code == 503
    time.sleep(3)  # the breaker's backoff is at its longest
    assert httpx.get(proxy.url + "/readyz").status_code == 503
    private_redis.start()
    back = time.monotonic()
    assert wait_for(lambda: httpx.get(proxy.url + "/readyz").status_code == 200, 5, 0.02)
    recovered_s = time.monotonic() - back
    assert recovered_s < 2.5, recovered_s  # <= 1 s by design; margin for a busy machine
    call(proxy, 1)


def test_journal_slots_adoption_and_replay_apply_each_batch_once(tmp_path: Path) -> None:
    """In one process, with the real journal and SQLite store: a second journal on the same
    path takes the next slot; a slot left by a dead process is adopted by the next one to
    start; replaying a batch the store already applied (a crash between the store's answer
    and the journal's delete) does not count it twice."""
    from spendgate.budgets.journal import Journal
    from spendgate.budgets.ledger import Ledger
    from spendgate.budgets.store.base import Charge, SettleBatch
    from spendgate.budgets.store.sqlite import SQLiteStore

    path = tmp_path / "journal.log"
    first, second = Journal(path), Journal(path)
    assert (first.path, second.path) == (path, tmp_path / "journal.log.1")
    store = SQLiteStore(tmp_path / "ledger.sqlite3", 1.0, 3600)
    applied = SettleBatch("dead-process", 7, [], [Charge("b", "total", 5, 0)])
    store.settle(applied, 0.0)  # reached the store, but the process died before done()
    second.stamp(applied)
    second.append(SettleBatch("", 0, [], [Charge("b", "total", 11, 0)]))  # never sent
    second.append(SettleBatch("", 0, [], [Charge("b", "total", 13, 0)]))
    second.close()  # the process is gone: its lock is free
    first.close()
    third = Journal(path)  # takes slot 0, adopts slot 1
    assert third.path == path
    errors: list[str] = []
    ledger = Ledger(store, time.time, errors.append, third)
    assert ledger.pending() == 5 + 11 + 13
    ledger.record(SettleBatch("", 0, [], [Charge("b", "total", 17, 0)]))
    ledger.flush()
    assert ledger.pending() == 0 and errors == []
    assert store.totals([("b", "total")], 0.0)[("b", "total")] == (5 + 11 + 13 + 17, 0)
    ledger.close()
    again = Journal(path)  # nothing left anywhere
    assert again.leftover().stamped == [] and again.leftover().unstamped == []
    again.close()


_RECORD_THEN_DIE = """
import os, signal, sys, time
sys.path.insert(0, {root!r})
from scripts import sourcetree
sourcetree.install(sourcetree.Path({root!r}))
from spendgate.budgets.journal import Journal
from spendgate.budgets.ledger import Ledger
from spendgate.budgets.store.base import Charge, DimCharge, Hold, SettleBatch
from spendgate.budgets.store.sqlite import SQLiteStore

folder = sourcetree.Path({folder!r})
store = SQLiteStore(folder / "ledger.sqlite3", 2.0, 3600)
for n in range(5):
    assert store.reserve(f"r{{n}}", [Hold("b", "total", 10**6, 100, 0)], time.time()) is None
ledger = Ledger(store, time.time, print, Journal(folder / "journal.log"))
ledger.start()
for n in range(5):
    ledger.record(SettleBatch("", 0, [(f"r{{n}}", "b", "total")], [Charge("b", "total", 7, 0)],
                              [DimCharge("total", ("up", "p", "m", ""), 7, 0)]))
os.kill(os.getpid(), signal.SIGKILL)   # before the ledger's next write (SETTLE_EVERY_S)
"""


def test_recorded_spend_survives_sigkill_before_the_ledger_writes_it(tmp_path: Path) -> None:
    """``Ledger.record`` returns once the batch is in the journal; the store is written in
    bulk later. A process killed (SIGKILL) right after recording loses nothing: the next one
    writes every batch exactly once and releases their reservations."""
    import subprocess
    import sys

    from spendgate.budgets.journal import Journal
    from spendgate.budgets.ledger import Ledger
    from spendgate.budgets.store.sqlite import SQLiteStore
    from tests.conftest import ROOT

    child = subprocess.run([sys.executable, "-c", _RECORD_THEN_DIE.format(
        root=str(ROOT), folder=str(tmp_path))], capture_output=True, text=True, timeout=60)
    assert child.returncode == -signal.SIGKILL, child.stderr
    store = SQLiteStore(tmp_path / "ledger.sqlite3", 2.0, 3600)
    spend, reserved = store.totals([("b", "total")], 0.0)[("b", "total")]
    assert spend + reserved == 500 and spend in (0, 35)  # reserved until written: the cap held
    errors: list[str] = []
    ledger = Ledger(store, time.time, errors.append, Journal(tmp_path / "journal.log"))
    ledger.start()
    assert wait_for(lambda: not ledger.waiting(), 5)
    assert store.totals([("b", "total")], 0.0)[("b", "total")] == (35, 0)
    assert store.dims("total") == {("up", "p", "m", ""): 35}
    ledger.close()
    assert errors == []
    again = Journal(tmp_path / "journal.log")
    assert again.leftover().stamped == [] and again.leftover().unstamped == []
    again.close()


def test_journal_torn_last_line_is_ignored_and_each_batch_replayed_once(
        tmp_path: Path) -> None:
    """A journal is whole lines, one ``write`` each: a last line cut short (a power cut, a
    full disk) is ignored with a warning and dropped by the rotation at open; every whole
    line is replayed, once: what a replay sent is not sent again by the next start."""
    from spendgate.budgets.journal import Journal
    from spendgate.budgets.ledger import Ledger
    from spendgate.budgets.store.base import Charge, SettleBatch
    from spendgate.budgets.store.sqlite import SQLiteStore

    path = tmp_path / "journal.log"
    journal = Journal(path)
    for cost in (3, 5, 7):
        journal.append(SettleBatch("", 0, [], [Charge("b", "total", cost, 0)]))
    journal.close()
    whole = path.read_bytes()
    assert whole.endswith(b"\n") and whole.count(b"\n") == 4   # identity + three batches
    with path.open("ab") as file:  # what a write cut short leaves: no newline at the end
        file.write(b'["u",{"r":[],"c":[["b","total",1000')
    for _ in range(2):  # the second start finds nothing left to send
        store = SQLiteStore(tmp_path / "ledger.sqlite3", 1.0, 3600)
        errors: list[str] = []
        ledger = Ledger(store, time.time, errors.append, Journal(path))
        ledger.flush()
        assert errors == [] and not ledger.waiting()
        assert store.totals([("b", "total")], 0.0)[("b", "total")] == (3 + 5 + 7, 0)
        ledger.close()   # closes the store too
        assert b"1000" not in path.read_bytes()


def test_journal_rotates_and_keeps_only_what_is_owed(tmp_path: Path) -> None:
    """Past ``ROTATE_BYTES`` the ledger's tick rewrites the journal with only what the store
    has not acknowledged: the file stays small, and a restart sends exactly what was owed."""
    from spendgate.budgets.journal import ROTATE_BYTES, Journal
    from spendgate.budgets.ledger import Ledger
    from spendgate.budgets.store.base import Charge, DimCharge, SettleBatch
    from spendgate.budgets.store.sqlite import SQLiteStore

    path = tmp_path / "journal.log"
    store = SQLiteStore(tmp_path / "ledger.sqlite3", 2.0, 3600)
    ledger = Ledger(store, time.time, lambda _: None, Journal(path))
    dims = [DimCharge(f"w{n}", ("up", "project", "model", "key"), 1, 0) for n in range(20)]
    n = 0
    while path.stat().st_size <= ROTATE_BYTES:
        n += 1
        ledger.record(SettleBatch("", 0, [], [Charge("b", "total", 1, 0)], dims))
        if n % 100 == 0:
            assert ledger.flush() is not None
    assert ledger.flush() is not None
    ledger.record(SettleBatch("", 0, [], [Charge("b", "total", 1000, 0)]))  # owed
    assert ledger.journal is not None
    ledger.journal.maintain()
    assert path.stat().st_size < 1000
    owed = ledger.journal.leftover()
    assert owed.stamped == [] and [b.charges for b in owed.unstamped] == [
        [Charge("b", "total", 1000, 0)]]
    assert store.totals([("b", "total")], 0.0)[("b", "total")] == (n, 0)
    ledger.close()
    assert store_totals(tmp_path)[("b", "total")] == (n + 1000, 0)
    again = Journal(path)
    assert again.leftover().stamped == [] and again.leftover().unstamped == []
    again.close()


def store_totals(folder: Path) -> dict[tuple[str, str], tuple[int, int]]:
    from spendgate.budgets.store.sqlite import SQLiteStore

    store = SQLiteStore(folder / "ledger.sqlite3", 2.0, 3600)
    try:
        return store.totals([("b", "total")], 0.0)
    finally:
        store.close()


def _old_sqlite_journal(path: Path) -> None:
    """A journal as spendgate wrote it before it was lines (``entries``, ``meta``): one
    batch never sent (5 nano-dollars) and one stamped batch in flight (7)."""
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE entries (id INTEGER PRIMARY KEY AUTOINCREMENT, source "
                     "TEXT NOT NULL, seq INTEGER NOT NULL, body BLOB NOT NULL); CREATE TABLE "
                     "meta (name TEXT PRIMARY KEY, value TEXT NOT NULL); PRAGMA "
                     "journal_mode=WAL;")
    db.execute("INSERT INTO meta VALUES ('id', 'old0')")
    for source, seq, amount in (("", 0, 5), ("replica-a", 3, 7)):
        body = {"r": [["rid1", "b", "total"]] if source else [],
                "c": [["b", "total", amount, 3600]],
                "d": [["day:2026-12-07", ["u", "p", "m", ""], amount, 3600]], "h": []}
        db.execute("INSERT INTO entries (source, seq, body) VALUES (?, ?, ?)",
                   (source, seq, json.dumps(body)))
    db.commit()
    db.close()


def test_an_sqlite_journal_of_an_earlier_version_is_carried_over(tmp_path: Path) -> None:
    """The journal was an SQLite file before it was lines. At ``store.journal`` itself, it
    is read and rewritten as lines, owing the same; as the old default ``journal.sqlite3``
    beside the new ``journal.log``, it is adopted (its unsent spend stamped once) and
    removed. Nothing it owed is lost or owed twice."""
    from spendgate.budgets.journal import Journal

    explicit = tmp_path / "explicit" / "journal.sqlite3"
    explicit.parent.mkdir()
    _old_sqlite_journal(explicit)
    for _ in range(2):   # read as lines the second time
        journal = Journal(explicit)
        left = journal.leftover()
        journal.close()
        assert [(b.source, b.seq, [c.amount for c in b.charges]) for b in left.stamped] == [
            ("replica-a", 3, [7])]
        assert [[c.amount for c in b.charges] for b in left.unstamped] == [[5]]
        assert left.stamped[0].releases == [("rid1", "b", "total")]
        assert not explicit.read_bytes().startswith(b"SQLite format 3")
    assert not explicit.with_name("journal.sqlite3-wal").exists()

    beside = tmp_path / "default"
    beside.mkdir()
    _old_sqlite_journal(beside / "journal.sqlite3")
    journal = Journal(beside / "journal.log")
    left = journal.leftover()
    journal.close()
    assert sorted((b.seq, sum(c.amount for c in b.charges)) for b in left.stamped) == [
        (1, 5), (3, 7)]   # the unsent batch, stamped from the old file's identity
    assert {b.source for b in left.stamped} >= {"replica-a"}
    assert left.unstamped == []
    assert sorted(p.name for p in beside.iterdir() if not p.name.endswith(".lock")) == [
        "journal.log"]   # the SQLite file and its -wal / -shm are gone
    again = Journal(beside / "journal.log")   # adopted once: the new file owes it now
    assert len(again.leftover().stamped) == 2
    again.close()
