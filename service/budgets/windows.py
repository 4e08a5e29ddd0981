"""Budget windows: calendar days, ISO weeks and months in a time zone, or the whole of time.

A window is identified by its kind and the local date it starts on (``day:2026-03-01``,
``week:2026-02-23`` (a Monday), ``month:2026-03-01``) or ``total``; that id names the
window's spend in the ledger, so every replica agrees on it without talking to the others.
Boundaries are local midnights, computed with ``zoneinfo`` (a DST day is 23 or 25 hours).

Time comes from a ``Clock`` (``() -> unix seconds``) handed to everything that needs "now",
so tests can move it. ``system_clock()`` is ``time.time`` plus ``SPENDGATE_CLOCK_OFFSET_S``
seconds: TEST-ONLY, it lets a test start a proxy process just before midnight to watch a
window roll over. Never set it in production.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Literal
from zoneinfo import ZoneInfo

Clock = Callable[[], float]
WindowKind = Literal["day", "week", "month", "total"]
WINDOW_KINDS: tuple[WindowKind, ...] = ("day", "week", "month", "total")
CLOCK_OFFSET_ENV = "SPENDGATE_CLOCK_OFFSET_S"
TTL_MARGIN_S = 86400   # a window's stored values outlive it by a day, for late settlements


def system_clock() -> Clock:
    """``time.time``, shifted by ``$SPENDGATE_CLOCK_OFFSET_S`` seconds (tests only)."""
    offset = float(os.environ.get(CLOCK_OFFSET_ENV) or 0)
    if not offset:
        return time.time
    return lambda: time.time() + offset


def zone(name: str) -> tzinfo:
    """A time zone by IANA name; ``UTC`` without a tz database lookup."""
    return UTC if name.upper() == "UTC" else ZoneInfo(name)


@dataclass(frozen=True, slots=True)
class Window:
    """One window: ``start`` and ``end`` in unix seconds (``end`` None: ``total``)."""

    kind: WindowKind
    id: str
    start: float
    end: float | None

    def contains(self, now: float) -> bool:
        return self.start <= now and (self.end is None or now < self.end)

    def seconds_left(self, now: float) -> float | None:
        return None if self.end is None else max(self.end - now, 0.0)

    def ttl_s(self, now: float, margin_s: int) -> int:
        """Seconds a stored value of this window must live: to its end plus ``margin_s``;
        0 means forever (``total``)."""
        return 0 if self.end is None else max(int(self.end - now) + margin_s, 1)


def _midnight(day: date, tz: tzinfo) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=tz).timestamp()


def window_at(kind: WindowKind, tz: tzinfo, now: float) -> Window:
    """The window of ``kind`` (in time zone ``tz``) that contains the instant ``now``."""
    if kind == "total":
        return Window("total", "total", 0.0, None)
    today = datetime.fromtimestamp(now, tz).date()
    if kind == "day":
        first, after = today, today + timedelta(days=1)
    elif kind == "week":
        first = today - timedelta(days=today.weekday())
        after = first + timedelta(days=7)
    elif kind == "month":
        first = today.replace(day=1)
        after = (first + timedelta(days=32)).replace(day=1)
    else:
        raise ValueError(f"unknown window {kind!r}")
    return Window(kind, f"{kind}:{first.isoformat()}", _midnight(first, tz), _midnight(after, tz))


def iso(ts: float | None) -> str | None:
    """``2026-03-01T00:00:00Z`` for a unix time (None stays None)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
