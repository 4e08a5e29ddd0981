"""Bounded label values: what metrics and the ledger's dimensions may carry.

Project and model names come from callers, so every place that turns them into a label or a
stored dimension bounds them three ways: a value longer than ``MAX_VALUE_CHARS`` is never
kept (``LabelCap``), a label admits at most ``limit`` distinct values (``LabelCap``), and a
metric admits at most ``limit`` distinct (project, model) pairs (``PairCap``), since two
capped labels still multiply. Whatever is not admitted is counted under one overflow value,
``OTHER``, spelled the same everywhere (Prometheus labels, GenAI metric labels, the ledger's
spend dimensions).
"""

from __future__ import annotations

import threading

OTHER = "other"
MAX_VALUE_CHARS = 128   # longer label values read OTHER (a 1 MB model name is not a name)


class LabelCap:
    """Admits the first ``limit`` distinct values of at most ``MAX_VALUE_CHARS`` characters;
    the rest read ``OTHER``. Thread-safe; its memory is bounded by ``limit`` values."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(value) > MAX_VALUE_CHARS:
            return OTHER
        with self._lock:
            if len(self._seen) < self._limit:
                self._seen.add(value)
                return value
        return OTHER


class PairCap:
    """Admits the first ``limit`` distinct ``(kept, folded)`` pairs; a later pair keeps its
    first value and its second reads ``OTHER``.

    The first value is the one the caller cannot choose freely (a project fixed by a virtual
    key, bounded by its own ``LabelCap``; the model an upstream reported), the second the one
    it can (the model it asked for), so past the cap spend still adds up per project. A
    metric thus carries at most ``limit`` pairs plus one ``(kept, OTHER)`` per kept value.
    Give it values already through their ``LabelCap``. Thread-safe; memory bounded by
    ``limit`` pairs.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def __call__(self, kept: str, folded: str) -> tuple[str, str]:
        pair = (kept, folded)
        if pair in self._seen:
            return pair
        with self._lock:
            if len(self._seen) < self._limit:
                self._seen.add(pair)
                return pair
        return kept, OTHER
