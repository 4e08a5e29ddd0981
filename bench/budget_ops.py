"""A block budget's per-call work alone, in process: CPU per call of one reservation
(``Ledger.reserve`` on an event loop), of settling one finished call through the ledger
sink (``LedgerSink.export`` of a one-record batch, as the record pipeline hands it at low
traffic: its settlement built, written to the spend journal and added to the pending
spend), of recording a one-call batch alone (``Ledger.record``: a release, a charge and
ten dimension rows, into the journal) and of writing all of them to the store
(``Ledger.flush``, as the ledger's thread does every 50 ms; the figure is per call), with
the default SQLite store and its spend journal in a temporary folder.

    python bench/budget_ops.py                 # this tree
    python bench/budget_ops.py --src DIR       # another checkout (e.g. a clone at REV)

What ``bench/run.py --budget`` measures through the proxy, minus everything else; figures
are per call, process CPU (the store's threads included) and wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import random
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=Path, default=ROOT, help="checkout to measure")
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args()
    spec = importlib.util.spec_from_file_location("sourcetree",
                                                  args.src / "scripts" / "sourcetree.py")
    assert spec is not None and spec.loader is not None
    sourcetree = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sourcetree)
    sourcetree.install(args.src.resolve())
    from spendgate.budgets.book import BudgetBook
    from spendgate.budgets.gate import Reservation
    from spendgate.budgets.journal import Journal
    from spendgate.budgets.ledger import Ledger
    from spendgate.budgets.settlement import LedgerSink
    from spendgate.budgets.store.base import Charge, DimCharge, Hold, SettleBatch
    from spendgate.budgets.store.sqlite import SQLiteStore
    from spendgate.config import BudgetConfig
    from spendgate.records import UsageRecord

    folder = Path(tempfile.mkdtemp(prefix="spendgate-budget-ops-"))
    ledger = Ledger(SQLiteStore(folder / "ledger.sqlite3", 5.0, 3600), time.time,
                    lambda _: None, Journal(folder / "journal.log"))
    n = args.calls

    book = BudgetBook([BudgetConfig(name="bench", limit_usd=10**9, window="total",
                                    action="block")])
    sink = LedgerSink(ledger, lambda: book, time.time)
    hold = (Hold("bench", "total", 10**18, 1000, 0),)
    dims = ("day", "week", "month", "total", "s-min", "s-hour", "s-day", "c-min", "c-hour",
            "c-day")

    def record(rid: str) -> Any:
        return UsageRecord(
            start_unix=time.time(), upstream="bench", provider="openai", protocol="openai",
            operation="chat", model="gpt-4o-mini", response_model="gpt-4o-mini-2024-07-18",
            project="default", user=None, virtual_key=None, status=200, stream=False,
            metered=True, usage={"input": 12, "output": 9}, cost_usd=Decimal("0.0000072"),
            priced=True, price_source="builtin", duration_s=0.001, ttft_s=None, tpot_s=None,
            overhead_s=0.0001, error_type=None, client_closed=False, response_id="c-1",
            finish_reasons=("stop",), service_tier=None, request_id="r", max_tokens=None,
            reservation=Reservation(rid, hold, 1000))

    def one_call_batch(rid: str) -> Any:
        return SettleBatch(
            releases=[(rid, "bench", "total")], charges=[Charge("bench", "total", 500, 0)],
            dims=[DimCharge(w, ("up", "proj", "model", ""), 500, 100) for w in dims])

    spent = dict.fromkeys(("reserve", "sink", "record", "flush"), 0.0)

    def timed(label: str, run: Any) -> Any:
        cpu = time.process_time()
        result = run()
        spent[label] += time.process_time() - cpu
        return result

    async def reserve(count: int) -> list[str]:
        rids = []
        for _ in range(count):
            rid = f"{random.getrandbits(96):024x}"
            await ledger.reserve(rid, hold, time.time())
            rids.append(rid)
        return rids

    # Rounds of 50 calls, each written to the store in one flush, as the ledger's thread
    # does every 50 ms: the reservations table holds what is in flight, as in the proxy.
    rounds = max(n // 50, 1)
    for _ in range(rounds):
        rids = timed("reserve", lambda: asyncio.run(reserve(50)))
        records = [record(rid) for rid in rids]
        timed("sink", lambda records=records: [sink.export([r]) for r in records])
        timed("flush", ledger.flush)
        rids = asyncio.run(reserve(50))
        batches = [one_call_batch(rid) for rid in rids]
        timed("record", lambda batches=batches: [ledger.record(b) for b in batches])
        ledger.flush()
    calls = rounds * 50
    for label, text in (("reserve", "reserve"),
                        ("sink", "settle one call through the ledger sink"),
                        ("record", "record a one-call batch (journal and pending spend)"),
                        ("flush", "write them to the store (in bulk)")):
        print(f"{text}: {spent[label] / calls * 1e6:.0f} µs CPU per call")
    ledger.close()


if __name__ == "__main__":
    sys.exit(main())
