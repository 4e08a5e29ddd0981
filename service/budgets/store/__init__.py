"""The budget store: one contract (``base.Store``), one backend per file.

``open_store`` picks the backend by URL; a backend's dependencies load only when chosen.

May import: the shared vocabulary only (``errors``, ``labels``, ``redact``); the rest of
``budgets`` imports the store, never the other way round.
"""

from __future__ import annotations

from spendgate.budgets.store.base import Store, StoreError


def open_store(url: str, timeout_s: float, lease_s: float, prefix: str = "spendgate:") -> Store:
    """``sqlite:///relative/path``, ``sqlite:////absolute/path`` or ``redis://host:port/db``
    (``rediss://`` for TLS). Raises ``StoreError`` when a SQLite file cannot be opened."""
    if url.startswith("sqlite:///"):
        from pathlib import Path

        from spendgate.budgets.store.sqlite import SQLiteStore

        return SQLiteStore(Path(url.removeprefix("sqlite:///")), timeout_s, lease_s)
    if url.startswith(("redis://", "rediss://", "unix://")):
        from spendgate.budgets.store.redis import RedisStore

        return RedisStore(url, timeout_s, lease_s, prefix)
    raise StoreError(f"store.url: unsupported scheme in {url.split(':', 1)[0]!r} "
                     "(sqlite:/// or redis://)")


__all__ = ["Store", "StoreError", "open_store"]
