"""The last calls of this process, for the console: a bounded ring of access-log fields.

``RecentCalls`` keeps the ``access_log.access_fields`` of the last ``size`` calls (200 by
default): no request or response content, no secret. Each replica keeps its own (the
console's spend comes from the shared ledger; its recent calls are this process's).
Thread-safety: ``export`` runs on the pipeline thread, ``snapshot`` on any; a lock guards
the ring.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from typing import Any

from spendgate.exporters.access_log import access_fields
from spendgate.exporters.base import RecordSink
from spendgate.records import UsageRecord

RECENT_CALLS = 200


class RecentCalls(RecordSink):
    name = "recent_calls"

    def __init__(self, size: int = RECENT_CALLS) -> None:
        self._ring: deque[dict[str, Any]] = deque(maxlen=size)
        self._lock = threading.Lock()
        self._count = 0

    def export(self, records: Sequence[UsageRecord]) -> None:
        fields = [access_fields(r) for r in records]
        with self._lock:
            self._ring.extend(fields)
            self._count += len(fields)

    def snapshot(self) -> tuple[int, list[dict[str, Any]]]:
        """(calls seen since start, the last ones, newest first)."""
        with self._lock:
            return self._count, list(reversed(self._ring))
