"""The budget store and ledger against real SQLite files and real Redis servers."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from spendgate.budgets.ledger import Ledger
from spendgate.budgets.store import open_store
from spendgate.budgets.store.base import (
    DIM_CAP,
    Charge,
    DimCharge,
    Hold,
    Refusal,
    SettleBatch,
    Store,
    StoreError,
    Totals,
)
from spendgate.budgets.store.sqlite import SQLiteStore
from spendgate.budgets.windows import window_at
from spendgate.labels import OTHER
from tests.budget_helpers import (  # noqa: F401  (fixtures)
    SHARED_REDIS,
    RedisServer,
    private_redis,
    redis_prefix,
    wait_for,
)

W = "day:2026-03-01"


def hold(budget: str, amount: int, limit: int = 100, window: str = W) -> Hold:
    return Hold(budget, window, limit, amount, 3600)


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        opened = open_store(f"sqlite:///{tmp_path}/data/ledger.sqlite3", 2.0, 60)
    else:
        prefix = request.getfixturevalue("redis_prefix")
        opened = open_store(SHARED_REDIS, 2.0, 60, prefix)
    yield opened
    opened.close()


def totals(store: Store, *budgets: str) -> list[tuple[int, int]]:
    found = store.totals([(b, W) for b in budgets], 0)
    return [found[(b, W)] for b in budgets]


# ---- windows ------------------------------------------------------------------------------

def ts(text: str, tz: str = "UTC") -> float:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).timestamp()


def test_calendar_windows_in_utc() -> None:
    now = ts("2026-03-04T15:30:00")  # a Wednesday
    day, week, month = (window_at(k, UTC, now) for k in ("day", "week", "month"))  # type: ignore[arg-type]
    assert (day.id, day.start, day.end) == ("day:2026-03-04", ts("2026-03-04T00:00:00"),
                                            ts("2026-03-05T00:00:00"))
    assert (week.id, week.end) == ("week:2026-03-02", ts("2026-03-09T00:00:00"))
    assert (month.id, month.end) == ("month:2026-03-01", ts("2026-04-01T00:00:00"))
    december = window_at("month", UTC, ts("2026-12-31T23:59:59"))
    assert december.end == ts("2027-01-01T00:00:00")
    total = window_at("total", UTC, now)
    assert (total.id, total.end) == ("total", None)


def test_windows_follow_the_budget_time_zone_across_dst() -> None:
    paris = ZoneInfo("Europe/Paris")
    # 2026-03-29: clocks go from 02:00 to 03:00 in Paris; that local day has 23 hours.
    day = window_at("day", paris, ts("2026-03-29T12:00:00", "Europe/Paris"))
    assert day.id == "day:2026-03-29"
    assert day.end is not None and day.end - day.start == 23 * 3600
    # 23:30 UTC on the 28th is already the 29th in Paris.
    assert window_at("day", paris, ts("2026-03-28T23:30:00")).id == "day:2026-03-29"


# ---- the store contract, on both backends -------------------------------------------------

def test_reserve_is_all_or_nothing_across_budgets(store: Store) -> None:
    holds = (hold("a", 60), hold("b", 60, limit=1000))

    async def twice() -> tuple[Refusal | None, Refusal | None]:
        try:  # the hot path's asyncio client
            return (await store.reserve_async("r1", holds, 1000.0),
                    await store.reserve_async("r2", holds, 1000.0))
        finally:
            await store.aclose()

    first, refusal = asyncio.run(twice())
    assert first is None and refusal is not None and refusal.budget == "a"
    assert (refusal.spend, refusal.reserved, refusal.amount) == (0, 60, 60)
    assert totals(store, "a", "b") == [(0, 60), (0, 60)]  # b untouched by the refused call


def test_reservation_may_fill_the_limit_exactly_then_nothing_fits(store: Store) -> None:
    assert store.reserve("r1", [hold("a", 100)], 1000.0) is None
    store.settle(SettleBatch("t", 1, [("r1", "a", W)], [Charge("a", W, 100, 3600)]), 1000.0)
    assert totals(store, "a") == [(100, 0)]
    assert store.reserve("r2", [hold("a", 0)], 1000.0) is not None  # used up: even a free call


def test_settle_releases_charges_and_applies_a_batch_once(store: Store) -> None:
    store.reserve("r1", [hold("a", 50)], 1000.0)
    batch = SettleBatch("proc-1", 1, [("r1", "a", W)], [Charge("a", W, 7, 3600)],
                        [DimCharge(W, ("openai", "p", "m", ""), 7, 3600)])
    assert store.settle(batch, 1001.0) == {("a", W): (7, 0)}
    assert store.settle(batch, 1002.0) == {("a", W): (7, 0)}  # a retry counts nothing twice
    assert store.dims(W) == {("openai", "p", "m", ""): 7}
    again = SettleBatch("proc-2", 1, charges=[Charge("a", W, 1, 3600)])  # another process
    assert store.settle(again, 1003.0) == {("a", W): (8, 0)}
    next_one = SettleBatch("proc-1", 2, charges=[Charge("a", W, 2, 3600)])
    assert store.settle(next_one, 1004.0) == {("a", W): (10, 0)}
    assert store.settle(batch, 1005.0) == {("a", W): (10, 0)}  # an older batch: applied


def test_expired_leases_are_reclaimed(store: Store) -> None:
    store.reserve("dead", [hold("a", 90)], 1000.0)  # a replica that died mid-call
    assert store.reserve("r2", [hold("a", 90)], 1030.0) is not None
    assert store.reserve("r3", [hold("a", 90)], 1061.0) is None  # lease_s is 60
    assert totals(store, "a") == [(0, 90)]
    # The dead call's late settlement must not release the new call's reservation.
    store.settle(SettleBatch("t", 1, [("dead", "a", W)], [Charge("a", W, 5, 3600)]), 1062.0)
    assert totals(store, "a") == [(5, 90)]


def test_sqlite_expired_leases_are_reclaimed_without_a_refusal(tmp_path: Path) -> None:
    """A reservation that fits is one conditional update (no lease lookup); an expired lease
    still leaves ``reserved`` by the store's periodic prune, not only when it would refuse."""
    store = SQLiteStore(tmp_path / "ledger.sqlite3", 2.0, 60)
    assert store.reserve("dead", [hold("a", 30)], 1000.0) is None
    assert store.reserve("live", [hold("a", 30)], 1050.0) is None
    assert store.reserve("also", [hold("a", 30)], 1065.0) is None   # fits: nothing reclaimed
    assert totals(store, "a") == [(0, 90)]
    store.settle(SettleBatch("t", 1, charges=[Charge("a", W, 1, 3600)]), 1070.0)  # prunes
    assert totals(store, "a") == [(1, 60)]   # the dead call's lease (to 1060) is gone
    store.close()


def test_dimensions_are_capped_per_window(store: Store) -> None:
    dims = [DimCharge(W, ("u", f"p{i}", "m", ""), 1, 3600) for i in range(DIM_CAP + 5)]
    store.settle(SettleBatch("t", 1, dims=dims), 1000.0)
    found = store.dims(W)
    assert len(found) == DIM_CAP + 1
    assert found[(OTHER, OTHER, OTHER, OTHER)] == 5
    assert sum(found.values()) == DIM_CAP + 5


def test_claim_has_one_winner(store: Store) -> None:
    assert store.claim("alert:a:day:x:0.8", 60, 1000.0) is True
    assert store.claim("alert:a:day:x:0.8", 60, 1001.0) is False
    assert store.claim("alert:a:day:x:1", 60, 1001.0) is True


def test_concurrent_reservations_never_pass_the_limit(store: Store) -> None:
    """32 threads race for a budget with room for exactly 10 reservations."""
    granted: list[str] = []
    start = threading.Barrier(32)

    def race(i: int) -> None:
        start.wait()
        try:
            if store.reserve(f"r{i}", [hold("a", 10)], 1000.0) is None:
                granted.append(f"r{i}")
        except StoreError:  # SQLite may be busy beyond the timeout: a refusal, not a breach
            pass

    threads = [threading.Thread(target=race, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(granted) == 10
    assert totals(store, "a") == [(0, 100)]


def test_two_sqlite_stores_share_one_file(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite3"
    first, second = SQLiteStore(path, 2.0, 60), SQLiteStore(path, 2.0, 60)
    try:
        assert first.reserve("r1", [hold("a", 60)], 1000.0) is None
        assert second.reserve("r2", [hold("a", 60)], 1000.0) is not None
        second.settle(SettleBatch("t", 1, charges=[Charge("a", W, 3, 3600)]), 1000.0)
        assert first.totals([("a", W)], 0)[("a", W)] == (3, 60)
    finally:
        first.close()
        second.close()


def test_sqlite_per_call_paths_wait_for_another_writer_only_off_the_loop(
        tmp_path: Path) -> None:
    """Reserve on the loop and record never wait for a lock another process holds: the
    reservation goes to the store's thread (bounded by ``timeout_s``), ``record`` only
    journals the batch, and the ledger's write waits for the store (and fails) off both."""
    import sqlite3

    from spendgate.budgets.journal import Journal

    path = tmp_path / "ledger.sqlite3"
    store = SQLiteStore(path, 0.3, 60)
    journal = Journal(tmp_path / "journal.log")
    errors: list[str] = []
    ledger = Ledger(store, lambda: 1000.0, errors.append, journal)
    assert asyncio.run(store.reserve_async("r1", [hold("a", 10)], 1000.0)) is None
    holder = sqlite3.connect(path, isolation_level=None, timeout=5)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreError, match=r"did not answer|locked"):
            asyncio.run(store.reserve_async("r2", [hold("a", 10)], 1000.0))
        ledger.record(SettleBatch("", 0, [("r1", "a", W)], [Charge("a", W, 7, 3600)]))
        assert errors == [] and ledger.pending() == 7
        assert len(journal.leftover().unstamped) == 1   # on disk as record returned
        assert ledger.flush() is None
        assert errors == ["settle"] and ledger.pending() == 7
        assert len(journal.leftover().stamped) == 1   # on disk before the store answered
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    ledger.start()
    assert wait_for(lambda: ledger.pending() == 0, 5)
    assert store.totals([("a", W)], 0)[("a", W)] == (7, 0)
    assert asyncio.run(store.reserve_async("r3", [hold("a", 10)], 1000.0)) is None
    assert store.totals([("a", W)], 0)[("a", W)] == (7, 10)
    ledger.close()
    again = Journal(tmp_path / "journal.log")  # acknowledged rows deleted at close
    assert again.leftover().stamped == [] and again.leftover().unstamped == []
    again.close()


@pytest.mark.parametrize("fsync", ["normal", "full"])
def test_recorded_spend_is_journaled_then_written_in_one_transaction(
        tmp_path: Path, fsync: str) -> None:
    """``record`` journals each batch and writes nothing to the store; the ledger's thread
    writes their sum as one stamped batch within ``SETTLE_EVERY_S`` (its totals go to
    ``on_totals``), releasing each reservation as its spend is charged; the journal then
    holds nothing."""
    from spendgate.budgets.journal import Journal
    from spendgate.budgets.ledger import SETTLE_EVERY_S

    store = SQLiteStore(tmp_path / "ledger.sqlite3", 2.0, 60)
    journal = Journal(tmp_path / "journal.log", fsync)
    told: list[Totals] = []
    ledger = Ledger(store, lambda: 1000.0, lambda _: None, journal, told.append)
    for n in range(3):
        assert store.reserve(f"r{n}", [hold("a", 100, 1000)], 1000.0) is None
    for n, cost in enumerate((5, 7, 11)):
        ledger.record(SettleBatch("", 0, [(f"r{n}", "a", W)], [Charge("a", W, cost, 3600)]))
    assert store.totals([("a", W)], 0)[("a", W)] == (0, 300)   # reserved, not yet charged
    assert len(journal.leftover().unstamped) == 3
    assert ledger.known("a", W) == (23, 0) and ledger.pending() == 23
    started = time.monotonic()
    ledger.start()
    assert wait_for(lambda: ledger.pending() == 0, 5)
    assert time.monotonic() - started < SETTLE_EVERY_S + 1
    assert store.totals([("a", W)], 0)[("a", W)] == (23, 0)
    assert told == [{("a", W): (23, 0)}]
    ledger.close()
    again = Journal(tmp_path / "journal.log")
    assert again.leftover().stamped == [] and again.leftover().unstamped == []
    again.close()


def test_sqlite_spend_survives_reopening(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/nested/dir/ledger.sqlite3"
    store = open_store(url, 2.0, 60)
    store.settle(SettleBatch("t", 1, charges=[Charge("a", W, 123_456_789, 3600)]), 1000.0)
    store.close()
    reopened = open_store(url, 2.0, 60)
    assert reopened.totals([("a", W)], 0)[("a", W)] == (123_456_789, 0)
    reopened.close()


def test_unwritable_sqlite_path_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="cannot create"):
        open_store(f"sqlite:///{blocker}/ledger.sqlite3", 1.0, 60)


# ---- the ledger: a store that goes away ---------------------------------------------------

def test_ledger_keeps_spend_while_redis_is_down_and_writes_it_back(
        private_redis: RedisServer) -> None:  # noqa: F811
    errors: list[str] = []
    store = open_store(private_redis.url, 0.25, 60, f"t{uuid.uuid4().hex[:6]}:")
    ledger = Ledger(store, lambda: 1000.0, errors.append)
    try:
        ledger.record(SettleBatch(charges=[Charge("a", W, 10, 3600)]))
        assert ledger.flush() == {("a", W): (10, 0)}
        private_redis.pause()       # unresponsive: every call times out
        ledger.record(SettleBatch(charges=[Charge("a", W, 20, 3600)]))
        ledger.record(SettleBatch(charges=[Charge("a", W, 30, 3600)]))
        assert ledger.flush() is None
        assert errors and set(errors) == {"settle"}
        assert ledger.known("a", W) == (60, 0)
        assert ledger.pending() == 50
        assert ledger.health.problem() is not None
        private_redis.resume()
        ledger.start()
        assert wait_for(lambda: ledger.pending() == 0, 10)
        assert store.totals([("a", W)], 0)[("a", W)] == (60, 0)  # exactly once each
        assert ledger.health.problem() is None
    finally:
        private_redis.resume()
        ledger.close()


def test_ledger_reserve_fails_fast_while_the_breaker_is_open(
        private_redis: RedisServer) -> None:  # noqa: F811
    errors: list[str] = []
    store = open_store(private_redis.url, 0.25, 60, "t:")
    ledger = Ledger(store, lambda: 1000.0, errors.append)

    async def scenario() -> list[str]:
        outcomes = []
        for _ in range(3):
            try:
                await ledger.reserve("r", [hold("a", 1)], 1000.0)
                outcomes.append("ok")
            except StoreError as error:
                outcomes.append(type(error).__name__)
        await store.aclose()
        return outcomes

    private_redis.kill()
    assert asyncio.run(scenario()) == ["StoreError", "StoreDown", "StoreDown"]
    assert errors == ["reserve"]
    ledger.close()


def test_fractions_of_a_nano_dollar_are_carried_not_rounded(tmp_path: Path) -> None:
    """1000 calls of 0.15 nano-dollars each add up to exactly 150 in the ledger."""
    from spendgate.budgets.book import BudgetBook
    from spendgate.budgets.settlement import LedgerSink
    from spendgate.config import BudgetConfig
    from tests.budget_helpers import usage_record

    store = open_store(f"sqlite:///{tmp_path}/l.sqlite3", 2.0, 60)
    ledger = Ledger(store, lambda: 1000.0, lambda op: None)
    book = BudgetBook([BudgetConfig(name="all", limit_usd=Decimal(1), window="total")])
    sink = LedgerSink(ledger, lambda: book, lambda: 1000.0)
    for _ in range(1000):
        sink.export([usage_record(cost_usd=Decimal("0.00000000015"))])
    ledger.flush()
    assert store.totals([("all", "total")], 0)[("all", "total")] == (150, 0)
    assert sum(store.dims("total").values()) == 150
    ledger.close()
