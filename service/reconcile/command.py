"""``spendgate reconcile``: the comparison of the last ``--days`` complete UTC days, printed.

Reads the ledger's history from the store the config names (``store.url``: the SQLite file
or Redis a running proxy writes; SQLite's WAL lets both use it at once) and each admin API.
Exit codes: 0, or 3 when any upstream's day drifts past ``reconcile.drift_warn_ratio``; 1
when the store or an admin API fails, or no upstream has an ``admin_key``.
"""

from __future__ import annotations

import sys
import time

import orjson

from spendgate.budgets.store import StoreError, open_store
from spendgate.config import Config
from spendgate.reconcile.compare import as_json, merge, table
from spendgate.reconcile.job import build_sources, complete_days, run

EXIT_DRIFT = 3


def main(config: Config, days: int | None, fmt: str) -> int:
    sources = build_sources(config)
    if not sources:
        print("no upstream has an admin_key: nothing to reconcile "
              "(upstreams.NAME.admin_key)", file=sys.stderr)
        return 1
    try:
        store = open_store(config.store.url, max(config.store.timeout_s, 5.0),
                           config.store.reservation_lease_s, config.store.key_prefix)
    except StoreError as error:
        print(f"store.url: {error}", file=sys.stderr)
        return 1
    try:
        wanted = complete_days(time.time(), days or config.reconcile.lookback_days)
        done, errors = run(sources, store.history, wanted, config.reconcile.drift_warn_ratio)
    finally:
        store.close()
    comparison = merge([done[name] for name in sorted(done)])
    if fmt == "json":
        print(orjson.dumps({**as_json(comparison), "errors": errors},
                           option=orjson.OPT_INDENT_2).decode())
    else:
        print(table(comparison), end="")
    for name, message in sorted(errors.items()):
        print(f"{name}: {message}", file=sys.stderr)
    if errors:
        return 1
    return EXIT_DRIFT if comparison.drifted else 0
