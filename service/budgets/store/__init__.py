"""The budget store: one contract (``base.Store``), one backend per file.

``open_store`` picks the backend by URL; a backend's dependencies load only when chosen.

May import: the shared vocabulary only (``errors``, ``labels``, ``redact``); the rest of
``budgets`` imports the store, never the other way round.
"""

from __future__ import annotations

from spendgate.budgets.store.base import Store, StoreError


def open_store(url: str, timeout_s: float, lease_s: float, prefix: str = "spendgate:") -> Store:
    """``sqlite:///relative/path``, ``sqlite:////absolute/path``, ``redis://host:port/db``
    (``rediss://`` for TLS), ``redis+sentinel://`` or ``redis+cluster://``
    (``store.redis_topology``). Raises ``StoreError`` when a SQLite file cannot be opened or
    a URL is malformed."""
    if url.startswith("sqlite:///"):
        from pathlib import Path

        from spendgate.budgets.store.sqlite import SQLiteStore

        return SQLiteStore(Path(url.removeprefix("sqlite:///")), timeout_s, lease_s)
    from spendgate.budgets.store.redis_topology import SCHEMES

    if url.startswith(SCHEMES):
        from spendgate.budgets.store.redis import RedisStore

        try:
            return RedisStore(url, timeout_s, lease_s, prefix)
        except ValueError as error:  # a malformed sentinel or cluster URL
            raise StoreError(str(error)) from None
    raise StoreError(f"store.url: unsupported scheme in {url.split(':', 1)[0]!r} "
                     "(sqlite:///, redis://, redis+sentinel:// or redis+cluster://)")


__all__ = ["Store", "StoreError", "open_store"]
