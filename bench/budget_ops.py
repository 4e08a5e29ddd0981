"""A block budget's two store operations alone, in process: CPU per call of one reservation
(``Ledger.reserve`` on an event loop), of recording a one-call batch (``Ledger.record``: a
release, a charge and ten dimension rows, as the ledger sink writes for one call, into the
spend journal) and of writing all of them to the store (``Ledger.flush``, as the ledger's
thread does every few ms; the figure is per call), with the default SQLite store and its
spend journal in a temporary folder.

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
    from spendgate.budgets.journal import Journal
    from spendgate.budgets.ledger import Ledger
    from spendgate.budgets.store.base import Charge, DimCharge, Hold, SettleBatch
    from spendgate.budgets.store.sqlite import SQLiteStore

    folder = Path(tempfile.mkdtemp(prefix="spendgate-budget-ops-"))
    ledger = Ledger(SQLiteStore(folder / "ledger.sqlite3", 5.0, 3600), time.time,
                    lambda _: None, Journal(folder / "journal.log"))
    n = args.calls

    async def reserve_all() -> list[str]:
        rids = []
        for _ in range(n):
            rid = f"{random.getrandbits(96):024x}"
            await ledger.reserve(rid, (Hold("bench", "total", 10**18, 1000, 0),), time.time())
            rids.append(rid)
        return rids

    def timed(label: str, run: Any) -> Any:
        wall, cpu = time.perf_counter(), time.process_time()
        result = run()
        print(f"{label}: {(time.process_time() - cpu) / n * 1e6:.0f} µs CPU, "
              f"{(time.perf_counter() - wall) / n * 1e6:.0f} µs wall per call")
        return result

    rids = timed("reserve", lambda: asyncio.run(reserve_all()))
    dims = ("day", "week", "month", "total", "s-min", "s-hour", "s-day", "c-min", "c-hour",
            "c-day")

    def settle_all() -> None:
        for rid in rids:
            ledger.record(SettleBatch(
                releases=[(rid, "bench", "total")], charges=[Charge("bench", "total", 500, 0)],
                dims=[DimCharge(w, ("up", "proj", "model", ""), 500, 100) for w in dims]))

    timed("record a one-call batch", settle_all)
    timed("write them to the store (one flush)", ledger.flush)
    ledger.close()


if __name__ == "__main__":
    sys.exit(main())
