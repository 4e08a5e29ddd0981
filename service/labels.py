"""Bounded label values: what metrics and the ledger's dimensions may carry.

Project and model names come from callers, so every place that turns them into a label or a
stored dimension caps how many distinct values it admits; the rest are counted under one
overflow value, ``OTHER``, spelled the same everywhere (Prometheus labels, GenAI metric
labels, the ledger's spend dimensions).
"""

from __future__ import annotations

import threading

OTHER = "other"


class LabelCap:
    """Admits the first ``limit`` distinct values; the rest read ``OTHER``. Thread-safe."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        with self._lock:
            if len(self._seen) < self._limit:
                self._seen.add(value)
                return value
        return OTHER
