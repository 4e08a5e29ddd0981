"""Budgets as configured, and which calls each one covers.

A budget (``BudgetConfig``) covers a call when every selector it sets matches: ``project``,
``upstream``, ``model`` (the model the caller asked for, case-insensitive) and ``key`` (the
virtual key's name: its ``name`` in ``keys``, else ``project#index``, its position in the
list). A selector with ``*``, ``?`` or ``[`` is a glob (``model: "gpt-5*"``).

A ``BudgetBook`` never changes; reload builds a new one. Thread-safe.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import ROUND_FLOOR
from fnmatch import fnmatchcase
from typing import Any

from spendgate.budgets.windows import Window, iso, window_at, zone
from spendgate.config import BudgetConfig
from spendgate.money import nano_to_float, to_nano

_MEMO_MAX = 4096
_GLOB = frozenset("*?[")


class Budget:
    """One configured budget. Immutable except for its cached current window."""

    __slots__ = ("_selectors", "_window", "block", "config", "limit", "max_reserve", "name",
                 "thresholds", "tz")

    def __init__(self, config: BudgetConfig) -> None:
        self.config = config
        self.name = config.name
        self.block = config.action == "block"
        self.limit = to_nano(config.limit_usd, ROUND_FLOOR)
        self.max_reserve = (None if config.max_reserve_usd is None
                            else to_nano(config.max_reserve_usd))
        self.thresholds = tuple(sorted(set(config.alert_at)))
        self.tz = zone(config.timezone)
        self._selectors = [(field, value.lower() if field == "model" else value,
                            bool(_GLOB & set(value)))
                           for field in ("upstream", "project", "model", "key")
                           if (value := getattr(config, field)) is not None]
        self._window: Window | None = None

    def matches(self, upstream: str, project: str, model: str | None, key: str) -> bool:
        """Every selector set matches; ``model`` None: whatever the model (its selector is
        not consulted), for a call whose model could not be read."""
        values = {"upstream": upstream, "project": project, "model": (model or "").lower(),
                  "key": key}
        return all((f == "model" and model is None)
                   or (fnmatchcase(values[f], v) if glob else values[f] == v)
                   for f, v, glob in self._selectors)

    def window(self, now: float) -> Window:
        """The window containing ``now``; cached until it ends."""
        current = self._window
        if current is None or not current.contains(now):
            current = self._window = window_at(self.config.window, self.tz, now)
        return current

    def selectors(self) -> dict[str, str]:
        return {f: str(getattr(self.config, f)) for f in ("upstream", "project", "model", "key")
                if getattr(self.config, f) is not None}


class BudgetBook:
    """The configured budgets and a memo of which cover which call. Thread-safe."""

    def __init__(self, configs: Sequence[BudgetConfig]) -> None:
        self.budgets = tuple(Budget(c) for c in configs)
        self.by_name = {b.name: b for b in self.budgets}
        self.any_block = any(b.block for b in self.budgets)
        self._memo: dict[tuple[str, str, str, str], tuple[Budget, ...]] = {}

    def match(self, upstream: str, project: str, model: str, key: str) -> tuple[Budget, ...]:
        memo_key = (upstream, project, model, key)
        found = self._memo.get(memo_key)
        if found is None:
            found = tuple(b for b in self.budgets if b.matches(upstream, project, model, key))
            if len(self._memo) >= _MEMO_MAX:
                self._memo.clear()   # bounded against floods of made-up project names
            self._memo[memo_key] = found
        return found

    def block_any_model(self, upstream: str, project: str, key: str) -> Budget | None:
        """A block budget that would cover this call whatever its model, if there is one.
        Not memoised: asked only for calls whose body nobody could read."""
        return next((b for b in self.budgets
                     if b.block and b.matches(upstream, project, None, key)), None)


def describe(budget: Budget, spend: int, reserved: int, now: float) -> dict[str, Any]:
    """One budget as the admin API shows it."""
    window = budget.window(now)
    return {
        "name": budget.name, "action": budget.config.action, "window": budget.config.window,
        "timezone": budget.config.timezone, "window_id": window.id,
        "window_start": iso(window.start) if window.end is not None else None,
        "resets_at": iso(window.end), "limit_usd": nano_to_float(budget.limit),
        "spend_usd": nano_to_float(spend), "reserved_usd": nano_to_float(reserved),
        "ratio": spend / budget.limit if budget.limit else None,
        "alert_at": list(budget.thresholds), "selectors": budget.selectors(),
    }
