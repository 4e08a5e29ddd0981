"""Budgets as configured, and which calls each one covers.

A budget (``BudgetConfig``) covers a call when every selector it sets matches
(``spendgate.selectors``: ``project``, ``upstream``, ``model``, ``key``, ``tags``).

A ``BudgetBook`` never changes; reload builds a new one. Thread-safe.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import ROUND_FLOOR
from typing import Any

from spendgate.budgets.windows import Window, iso, window_at, zone
from spendgate.config import BudgetConfig
from spendgate.money import nano_to_float, to_nano
from spendgate.selectors import Selector, SelectorIndex, Tags
from spendgate.tags import NO_TAGS


class Budget:
    """One configured budget. Immutable except for its cached current window."""

    __slots__ = ("_window", "block", "config", "limit", "max_reserve", "name", "selector",
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
        self.selector = Selector(config)
        self._window: Window | None = None

    def matches(self, upstream: str, project: str, model: str | None, key: str,
                tags: Tags = NO_TAGS) -> bool:
        return self.selector.matches(upstream, project, model, key, tags)

    def window(self, now: float) -> Window:
        """The window containing ``now``; cached until it ends."""
        current = self._window
        if current is None or not current.contains(now):
            current = self._window = window_at(self.config.window, self.tz, now)
        return current

    def selectors(self) -> dict[str, str]:
        return Selector.describe(self.config)


class BudgetBook:
    """The configured budgets and a memo of which cover which call. Thread-safe."""

    def __init__(self, configs: Sequence[BudgetConfig]) -> None:
        self.budgets = tuple(Budget(c) for c in configs)
        self.by_name = {b.name: b for b in self.budgets}
        self.any_block = any(b.block for b in self.budgets)
        self._index = SelectorIndex(self.budgets)

    def match(self, upstream: str, project: str, model: str, key: str,
              tags: Tags = NO_TAGS) -> tuple[Budget, ...]:
        return self._index.match(upstream, project, model, key, tags)

    def block_any_model(self, upstream: str, project: str, key: str,
                        tags: Tags = NO_TAGS) -> Budget | None:
        """A block budget that would cover this call whatever its model, if there is one
        (asked only for calls whose body nobody could read)."""
        return next((b for b in self._index.any_model(upstream, project, key, tags)
                     if b.block), None)


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
