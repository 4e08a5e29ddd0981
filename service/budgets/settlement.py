"""The ledger sink: every finished call's exact cost into the budgets that cover it.

A ``RecordSink`` on the record pipeline's thread. Per batch of records it builds one
``SettleBatch``: the reservation of each call is released, its exact ``cost_usd`` is
charged to every budget covering it (in the window the reservation was made in, else the
current one) and to the per-dimension spend (``upstream, project, model, key`` per UTC day,
week, month and total, for ``GET /admin/spend``; and, per ``tag_keys``, per tag key, value,
upstream and model: ``store.base.tag_window``; a call without the tag counts under value
``""``, so a key's rows sum to the whole spend), and to the console's time buckets of
spend and calls (``history``: every call counts there, free or not). A call that failed
before generating costs 0: its reservation is simply released.

Costs are exact ``Decimal`` USD and the ledger counts whole nano-dollars: the fraction left
over is carried to the next charge of the same budget window, or of the same dimensions
(per process), so a total is never off by more than one nano-dollar per process, however
many calls it sums. The dimensions carry one fraction for all their windows (each window
gets the same whole nano-dollars of a batch: one carry per batch, not one per window); a
window then starts with at most the fraction its predecessor left, still under one.

It also writes the daily history (``store.history_days``): per UTC day of the call's start,
upstream and model (the one the upstream reported, else the one asked for: what provider
bills name), the spend and the tokens of each type, for ``spendgate reconcile``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from datetime import UTC, datetime
from decimal import Context, Decimal, localcontext

from spendgate.budgets.book import BudgetBook
from spendgate.budgets.gate import Reservation
from spendgate.budgets.history import current_buckets
from spendgate.budgets.ledger import Ledger
from spendgate.budgets.store.base import (
    Charge,
    DayCharge,
    DimCharge,
    Dims,
    SettleBatch,
    tag_window,
)
from spendgate.budgets.windows import TTL_MARGIN_S, WINDOW_KINDS, Clock, window_at
from spendgate.exporters.base import RecordSink
from spendgate.money import NANO
from spendgate.records import UsageRecord

_CARRY_MAX = 50_000
_PRECISE = Context(prec=80)
_ZERO = Decimal(0)


class LedgerSink(RecordSink):
    name = "ledger"

    def __init__(self, ledger: Ledger, book: Callable[[], BudgetBook], clock: Clock,
                 history_days: int = 35, tag_keys: Sequence[str] = ()) -> None:
        self.ledger = ledger
        self.tag_keys = tuple(tag_keys)
        self.history_days = history_days
        self._book = book
        self._clock = clock
        self._carry: dict[Hashable, Decimal] = {}
        self._frame: _Frame | None = None

    def export(self, records: Sequence[UsageRecord]) -> None:
        with localcontext(_PRECISE):  # sums of exact costs stay exact
            batch = self.batch(records)
        self.ledger.record(batch)

    def batch(self, records: Sequence[UsageRecord]) -> SettleBatch:
        now = self._clock()
        book = self._book()
        batch = SettleBatch()
        frame = self._frame
        if frame is None or not frame.minute <= now < frame.minute + 60:
            frame = self._frame = _Frame(now, self.tag_keys)
        charges: dict[tuple[str, str], _Sum] = {}
        spent: dict[Dims, Decimal] = {}             # per dimensions, in every window
        tagged: dict[tuple[str, Dims], Decimal] = {}  # per tag key and its dimensions
        counted: dict[Dims, int] = {}                # calls per dimensions
        history: dict[tuple[str, str, str], Decimal] = {}
        tokens: dict[tuple[str, str, str, str], int] = {}
        for record in records:
            held: dict[str, tuple[str, int]] = {}
            reservation = record.reservation
            if isinstance(reservation, Reservation):
                for hold in reservation.holds:
                    batch.releases.append((reservation.id, hold.budget, hold.window))
                    held[hold.budget] = (hold.window, hold.ttl_s)
            cost = record.cost_usd
            amount = cost * NANO if cost else _ZERO
            if record.metered:
                day, upstream = frame.day(record.start_unix), record.upstream
                model = record.response_model or record.model
                for token_type, count in record.usage.items():
                    if count:
                        typed = (day, upstream, model, token_type)
                        tokens[typed] = tokens.get(typed, 0) + count
                if cost:
                    where = (day, upstream, model)
                    history[where] = history.get(where, _ZERO) + amount
            key: Dims = (record.upstream, record.project, record.model, record.virtual_key or "")
            if not record.charge_only:  # no call behind it
                counted[key] = counted.get(key, 0) + 1
            if not cost:
                continue
            spent[key] = spent.get(key, _ZERO) + amount
            for tag_key in self.tag_keys:
                tag = (tag_key, (record.upstream, record.tags.get(tag_key, ""), record.model, ""))
                tagged[tag] = tagged.get(tag, _ZERO) + amount
            for budget in book.match(record.upstream, record.project, record.model,
                                     record.virtual_key or "", record.tags):
                if budget.name in held:
                    window_id, ttl = held[budget.name]
                else:
                    window = budget.window(now)
                    window_id, ttl = window.id, window.ttl_s(now, TTL_MARGIN_S)
                if (total := charges.get((budget.name, window_id))) is None:
                    total = charges[(budget.name, window_id)] = _Sum(ttl)
                total.add(amount)
        for (budget_name, window_id), total in charges.items():
            if whole := self._whole(("budget", budget_name, window_id), total.amount):
                batch.charges.append(Charge(budget_name, window_id, whole, total.ttl))
        dims = batch.dims
        for key, amount in spent.items():
            if whole := self._whole(("dims", key), amount):
                dims += [DimCharge(w, key, whole, ttl) for w, ttl in frame.spend]
        for (tag_key, key), amount in tagged.items():
            if whole := self._whole(("tag", tag_key, key), amount):
                dims += [DimCharge(w, key, whole, ttl) for w, ttl in frame.tags[tag_key]]
        keep = self.history_days * 86400
        for (day, upstream, model), nano in history.items():
            if whole := self._whole(("day", day, upstream, model), nano):
                batch.days.append(DayCharge(day, upstream, model, "cost", whole,
                                            frame.history_ttl(day, keep, now)))
        for (day, upstream, model, kind), count in tokens.items():
            batch.days.append(DayCharge(day, upstream, model, kind, count,
                                        frame.history_ttl(day, keep, now)))
        for key, count in counted.items():
            dims += [DimCharge(w, key, count, ttl) for w, ttl in frame.calls]
        return batch

    def _whole(self, key: Hashable, amount: Decimal) -> int:
        """Whole nano-dollars of ``amount`` plus the fraction carried for ``key``."""
        total = self._carry.pop(key, _ZERO) + amount
        whole = int(total)            # toward zero; costs are never negative
        if total != whole:
            if len(self._carry) >= _CARRY_MAX:
                self._carry.clear()   # old windows' fractions: under a nano-dollar each
            self._carry[key] = total - whole
        return whole


class _Frame:
    """What every call ending in one UTC minute counts in: the UTC windows and the console's
    buckets (each starts on a minute, so they hold for the whole minute), with their ttls,
    computed once for the minute: a ttl from earlier in the minute only keeps a value up
    to a minute longer. Used by the pipeline's thread only."""

    __slots__ = ("_day_ends", "_days", "calls", "minute", "spend", "tags")

    def __init__(self, now: float, tag_keys: Sequence[str]) -> None:
        self.minute = now - now % 60
        windows = [(w.id, w.ttl_s(now, TTL_MARGIN_S))
                   for w in (window_at(kind, UTC, now) for kind in WINDOW_KINDS)]
        buckets = current_buckets(now)
        # A call's spend goes to every UTC window and spend bucket, its count to every calls
        # bucket, its spend per tag key to that key's family of the UTC windows.
        self.spend = windows + [(b.spend_id, b.ttl_s(now)) for b in buckets]
        self.calls = [(b.calls_id, b.ttl_s(now)) for b in buckets]
        self.tags = {k: [(tag_window(k, w), ttl) for w, ttl in windows] for k in tag_keys}
        self._day_ends: dict[str, float] = {}
        self._days: dict[int, str] = {}

    def day(self, unix: float) -> str:
        """The UTC day (``YYYY-MM-DD``) of ``unix``."""
        number = int(unix // 86400)
        day = self._days.get(number)
        if day is None:
            day = self._days[number] = datetime.fromtimestamp(number * 86400, UTC
                                                              ).date().isoformat()
        return day

    def history_ttl(self, day: str, keep_s: int, now: float) -> int:
        """Seconds from ``now`` until ``keep_s`` after the end of UTC ``day`` (at least 1)."""
        end = self._day_ends.get(day)
        if end is None:
            end = self._day_ends[day] = (
                datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp() + 86400)
        return max(int(end + keep_s - now), 1)


class _Sum:
    __slots__ = ("amount", "ttl")

    def __init__(self, ttl: int) -> None:
        self.amount = _ZERO
        self.ttl = ttl

    def add(self, amount: Decimal) -> None:
        self.amount += amount
