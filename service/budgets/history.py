"""Spend and calls over time, in the ledger's per-dimension totals: the console's charts.

The store keeps spend per ``(upstream, project, model, key)`` under any window id
(``store.base``); the budget windows use ``day:2026-03-01`` and the like. History adds
time buckets under ids of their own, so every replica writes to and reads the same
buckets and nothing about the store changes:

* ``series:spend:{minute|hour|day}:{start}`` nano-dollars spent in the bucket;
* ``series:calls:{minute|hour|day}:{start}`` calls ended in the bucket (the amount is a
  count);

with ``start`` in UTC (``2026-03-01T14:05``, ``2026-03-01T14``, ``2026-03-01``). Buckets
live as long as the console shows them (``RANGES``), plus a margin: minutes an hour, hours
a day, days 32 days.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

Resolution = Literal["minute", "hour", "day"]
# A console range: its bucket size, how many buckets, and how long a bucket is kept.
RANGES: dict[str, tuple[Resolution, int]] = {"hour": ("minute", 60), "day": ("hour", 24),
                                             "month": ("day", 31)}
_SECONDS: dict[Resolution, int] = {"minute": 60, "hour": 3600, "day": 86400}
_FORMAT: dict[Resolution, str] = {"minute": "%Y-%m-%dT%H:%M", "hour": "%Y-%m-%dT%H",
                                  "day": "%Y-%m-%d"}
_MARGIN_S = 600


@dataclass(frozen=True, slots=True)
class Bucket:
    resolution: Resolution
    start: float           # unix seconds, UTC-aligned

    @property
    def label(self) -> str:
        return time.strftime(_FORMAT[self.resolution], time.gmtime(self.start))

    @property
    def spend_id(self) -> str:
        return f"series:spend:{self.resolution}:{self.label}"

    @property
    def calls_id(self) -> str:
        return f"series:calls:{self.resolution}:{self.label}"

    def ttl_s(self, now: float) -> int:
        """Seconds to keep it: until the console's range no longer shows it, plus a margin."""
        span = _SECONDS[self.resolution]
        count = next(n for r, n in RANGES.values() if r == self.resolution)
        return max(int(self.start + span * (count + 1) - now) + _MARGIN_S, 1)


def bucket_at(resolution: Resolution, now: float) -> Bucket:
    span = _SECONDS[resolution]
    return Bucket(resolution, now - now % span)


def current_buckets(now: float) -> list[Bucket]:
    """The minute, hour and day a call ending at ``now`` counts in."""
    return [bucket_at(resolution, now) for resolution in _SECONDS]


def buckets(range_name: str, now: float) -> list[Bucket]:
    """The buckets of a console range, oldest first, the current one last."""
    if range_name not in RANGES:
        raise ValueError(f"range: choose from {list(RANGES)}")
    resolution, count = RANGES[range_name]
    last = bucket_at(resolution, now).start
    span = _SECONDS[resolution]
    return [Bucket(resolution, last - span * i) for i in range(count - 1, -1, -1)]
