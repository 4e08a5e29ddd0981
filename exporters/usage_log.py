"""The structured usage log: one JSON line per call, for chargeback and offline analysis.

Each line (UTF-8, ``\\n``-terminated, keys stable)::

    {"time": "2026-01-02T03:04:05.678Z", "trace_id": "4bf9…", "span_id": "00f0…",
     "request_id": "…", "upstream": "openai", "provider": "openai", "operation": "chat",
     "model": "gpt-4o", "response_model": "gpt-4o-2024-08-06", "project": "search",
     "user": "alice", "virtual_key": "search#0", "tags": {"feature": "search"},
     "status": 200, "error_type": null,
     "client_closed": false, "budget_decision": null, "stream": true,
     "tokens": {"input": {"count": 12, "source": "reported"}, "output": {...}, ...},
     "cost_usd": "0.000123", "priced": true, "price_source": "builtin",
     "price_tier": "flex", "context_tier": null, "fees_usd": "0", "price_fallbacks": [],
     "service_tier": "flex", "tool_calls": {"web_search": 2},
     "duration_s": 1.234, "ttft_s": 0.2, "tpot_s": 0.01, "overhead_s": 0.0002}

``tags`` holds every tag of the call (``x-spendgate-tags`` under its key's fixed tags), the
keys ``attribution.tag_keys`` does not account included; ``{}`` when none.
``cost_usd`` is the exact Decimal as a plain decimal string (never a float, never
exponent notation), so sums over the log are exact; ``fees_usd`` (per-request fees such as web
searches) is the part of it that is not tokens. ``price_tier`` (``standard``, ``flex``,
``priority``, ``batch``; null when unpriced) and ``context_tier`` (``above_272k``; null: none)
say which rates priced the call, ``price_fallbacks`` the base rates it fell back to (the span
attributes ``spendgate.price.tier``, ``spendgate.price.context_tier``,
``spendgate.cost.fees_usd``); ``service_tier`` is the tier the upstream says it served.
Token types are those of ``usage``; a type absent from ``tokens`` was neither reported nor
estimated.

Written by the record pipeline's thread (never the hot path), one write and flush per batch.
``path: "-"`` is standard output; a file is appended to and rotated by size: past ``max_mb``
it becomes ``PATH.1`` (older ones shift up to ``PATH.<backups>``, the oldest dropped); with
``backups: 0`` it is truncated instead. Secrets never appear: the record carries none.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson

from spendgate.exporters.base import RecordSink
from spendgate.records import UsageRecord


def usage_line(record: UsageRecord) -> dict[str, Any]:
    """The JSON object of one call (see the module docstring)."""
    trace = record.trace
    tokens = {token_type: {"count": count, "source": record.usage.source(token_type)}
              for token_type, count in record.usage.items()}
    return {
        "time": datetime.fromtimestamp(record.start_unix, UTC)
        .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "trace_id": trace.trace_id if trace is not None else None,
        "span_id": trace.span_id if trace is not None else None,
        "request_id": record.request_id,
        "upstream": record.upstream,
        "provider": record.provider,
        "operation": record.operation,
        "model": record.model,
        "response_model": record.response_model,
        "project": record.project,
        "user": record.user,
        "virtual_key": record.virtual_key,
        "tags": dict(record.tags),
        "status": record.status,
        "error_type": record.error_type,
        "client_closed": record.client_closed,
        "budget_decision": record.budget_decision,
        "stream": record.stream,
        "tokens": tokens,
        "cost_usd": format(record.cost_usd, "f"),
        "priced": record.priced,
        "price_source": record.price_source,
        "price_tier": record.price_tier,
        "context_tier": record.context_tier,
        "fees_usd": format(record.fees_usd, "f"),
        "price_fallbacks": list(record.price_fallbacks),
        "service_tier": record.service_tier,
        "tool_calls": {t: n for t in ("web_search", "web_fetch") if (n := record.usage.get(t))},
        "duration_s": record.duration_s,
        "ttft_s": record.ttft_s,
        "tpot_s": record.tpot_s,
        "overhead_s": record.overhead_s,
    }


class UsageLogSink(RecordSink):
    """Appends one line per record to ``path`` (``"-"``: stdout). Opens the file at once, so
    an unwritable path fails at startup (``OSError``). Pipeline thread only."""

    name = "usage_log"

    def __init__(self, path: str, max_mb: float = 100, backups: int = 5) -> None:
        self._stdout = path == "-"
        self._path = Path(path)
        self._max_bytes = int(max_mb * 1024 * 1024)
        self._backups = backups
        self._file: IO[bytes] | None = None
        self._size = 0
        if not self._stdout:
            self._open()

    def _open(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self._path.open("ab")
        self._size = self._file.tell()

    def export(self, records: Sequence[UsageRecord]) -> None:
        if not records:
            return
        data = b"".join([orjson.dumps(usage_line(r)) + b"\n" for r in records])
        if self._stdout:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
            return
        if self._size and self._size + len(data) > self._max_bytes:
            self._rotate()
        assert self._file is not None
        self._file.write(data)
        self._file.flush()
        self._size += len(data)

    def _rotate(self) -> None:
        assert self._file is not None
        self._file.close()
        if self._backups > 0:
            for index in range(self._backups - 1, 0, -1):
                older = self._path.with_name(f"{self._path.name}.{index}")
                if older.exists():
                    os.replace(older, self._path.with_name(f"{self._path.name}.{index + 1}"))
            os.replace(self._path, self._path.with_name(f"{self._path.name}.1"))
            self._file = self._path.open("ab")
        else:
            self._file = self._path.open("wb")
        self._size = 0

    def force_flush(self, timeout_s: float = 30.0) -> bool:
        if self._file is not None:
            self._file.flush()
        return True

    def shutdown(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
