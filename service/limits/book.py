"""Rate limits as configured, and which calls each one covers.

A limit (``LimitConfig``) covers a call when every selector it sets matches
(``spendgate.selectors``). Its counts are kept per limit name, so two replicas with the same
config share them, and a reload that keeps a name keeps its counts.

The window is a sliding minute. ``window_seconds()`` is 60, or ``$SPENDGATE_LIMIT_WINDOW_S``:
TEST-ONLY (a test watching a window pass need not wait a minute). Never set it in production.

A ``LimitBook`` never changes; reload builds a new one. Thread-safe.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from spendgate.config import LimitConfig
from spendgate.selectors import Selector, SelectorIndex, Tags
from spendgate.tags import NO_TAGS

WINDOW_ENV = "SPENDGATE_LIMIT_WINDOW_S"


def window_seconds() -> float:
    """60, or ``$SPENDGATE_LIMIT_WINDOW_S`` (tests only)."""
    return float(os.environ.get(WINDOW_ENV) or 60)


class Limit:
    """One configured limit; 0 for a limit that is not set. Immutable."""

    __slots__ = ("concurrent", "config", "name", "requests", "selector", "tokens")

    def __init__(self, config: LimitConfig) -> None:
        self.config = config
        self.name = config.name
        self.requests = config.requests_per_minute or 0
        self.tokens = config.tokens_per_minute or 0
        self.concurrent = config.max_concurrent or 0
        self.selector = Selector(config)


class LimitBook:
    def __init__(self, configs: Sequence[LimitConfig]) -> None:
        self.limits = tuple(Limit(c) for c in configs)
        self.by_name = {limit.name: limit for limit in self.limits}
        self._index = SelectorIndex(self.limits)

    def match(self, upstream: str, project: str, model: str, key: str,
              tags: Tags = NO_TAGS) -> tuple[Limit, ...]:
        return self._index.match(upstream, project, model, key, tags)

    def match_any_model(self, upstream: str, project: str, key: str,
                        tags: Tags = NO_TAGS) -> tuple[Limit, ...]:
        """The limits covering a call whatever its model (one whose body names none that
        can be read)."""
        return self._index.any_model(upstream, project, key, tags)
