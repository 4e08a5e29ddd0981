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
over is carried to the next charge of the same budget window (per process), so a total is
never off by more than one nano-dollar per process, however many calls it sums.

It also writes the daily history (``store.history_days``): per UTC day of the call's start,
upstream and model (the one the upstream reported, else the one asked for: what provider
bills name), the spend and the tokens of each type, for ``spendgate reconcile``.

``on_totals`` receives the totals the store reported after each write (alert thresholds).
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
    Totals,
    tag_window,
)
from spendgate.budgets.windows import TTL_MARGIN_S, WINDOW_KINDS, Clock, window_at
from spendgate.exporters.base import RecordSink
from spendgate.money import NANO
from spendgate.records import UsageRecord

_CARRY_MAX = 50_000
_PRECISE = Context(prec=80)


class LedgerSink(RecordSink):
    name = "ledger"

    def __init__(self, ledger: Ledger, book: Callable[[], BudgetBook], clock: Clock,
                 on_totals: Callable[[Totals], None] | None = None,
                 history_days: int = 35, tag_keys: Sequence[str] = ()) -> None:
        self.ledger = ledger
        self.tag_keys = tuple(tag_keys)
        self.history_days = history_days
        self._book = book
        self._clock = clock
        self._on_totals = on_totals
        self._carry: dict[Hashable, Decimal] = {}

    def export(self, records: Sequence[UsageRecord]) -> None:
        with localcontext(_PRECISE):  # sums of exact costs stay exact
            batch = self.batch(records)
        totals = self.ledger.record(batch)
        if totals and self._on_totals is not None:
            self._on_totals(totals)

    def batch(self, records: Sequence[UsageRecord]) -> SettleBatch:
        now = self._clock()
        book = self._book()
        batch = SettleBatch()
        charges: dict[tuple[str, str], _Sum] = {}
        dims: dict[tuple[str, Dims], _Sum] = {}
        utc_windows = [window_at(kind, UTC, now) for kind in WINDOW_KINDS]
        history: dict[tuple[str, str, str], Decimal] = {}
        tokens: dict[tuple[str, str, str, str], int] = {}
        series = [(b.spend_id, b.calls_id, b.ttl_s(now)) for b in current_buckets(now)]
        calls: dict[tuple[str, Dims], list[int]] = {}
        for record in records:
            held: dict[str, tuple[str, int]] = {}
            reservation = record.reservation
            if isinstance(reservation, Reservation):
                for hold in reservation.holds:
                    batch.releases.append((reservation.id, hold.budget, hold.window))
                    held[hold.budget] = (hold.window, hold.ttl_s)
            if record.metered:
                day = datetime.fromtimestamp(record.start_unix, UTC).date().isoformat()
                where = (day, record.upstream, record.response_model or record.model)
                for token_type, count in record.usage.items():
                    if count:
                        tokens[(*where, token_type)] = tokens.get((*where, token_type), 0) + count
                if record.cost_usd:
                    history[where] = history.get(where, Decimal(0)) + record.cost_usd * NANO
            key: Dims = (record.upstream, record.project, record.model, record.virtual_key or "")
            for _, calls_id, ttl in series if not record.charge_only else ():  # no call
                calls.setdefault((calls_id, key), [0, ttl])[0] += 1
            cost = record.cost_usd
            if not cost:
                continue
            amount = cost * NANO
            for budget in book.match(record.upstream, record.project, record.model,
                                     record.virtual_key or "", record.tags):
                if budget.name in held:
                    window_id, ttl = held[budget.name]
                else:
                    window = budget.window(now)
                    window_id, ttl = window.id, window.ttl_s(now, TTL_MARGIN_S)
                charges.setdefault((budget.name, window_id), _Sum(ttl)).add(amount)
            for window in utc_windows:
                ttl = window.ttl_s(now, TTL_MARGIN_S)
                dims.setdefault((window.id, key), _Sum(ttl)).add(amount)
                for tag_key in self.tag_keys:
                    tagged: Dims = (record.upstream, record.tags.get(tag_key, ""),
                                    record.model, "")
                    dims.setdefault((tag_window(tag_key, window.id), tagged), _Sum(ttl)
                                    ).add(amount)
            for spend_id, _, ttl in series:
                dims.setdefault((spend_id, key), _Sum(ttl)).add(amount)
        for (budget_name, window_id), total in charges.items():
            if whole := self._whole(("budget", budget_name, window_id), total.amount):
                batch.charges.append(Charge(budget_name, window_id, whole, total.ttl))
        for (window_id, key), total in dims.items():
            if whole := self._whole(("dims", window_id, key), total.amount):
                batch.dims.append(DimCharge(window_id, key, whole, total.ttl))
        keep = self.history_days * 86400
        for (day, upstream, model), nano in history.items():
            if whole := self._whole(("day", day, upstream, model), nano):
                batch.days.append(DayCharge(day, upstream, model, "cost", whole,
                                            _history_ttl(day, keep, now)))
        for (day, upstream, model, kind), count in tokens.items():
            batch.days.append(DayCharge(day, upstream, model, kind, count,
                                        _history_ttl(day, keep, now)))
        batch.dims += [DimCharge(calls_id, key, count, ttl)
                       for (calls_id, key), (count, ttl) in calls.items()]
        return batch

    def _whole(self, key: Hashable, amount: Decimal) -> int:
        """Whole nano-dollars of ``amount`` plus the fraction carried for ``key``."""
        total = self._carry.pop(key, Decimal(0)) + amount
        whole = int(total)            # toward zero; costs are never negative
        if total != whole:
            if len(self._carry) >= _CARRY_MAX:
                self._carry.clear()   # old windows' fractions: under a nano-dollar each
            self._carry[key] = total - whole
        return whole


def _history_ttl(day: str, keep_s: int, now: float) -> int:
    """Seconds from ``now`` until ``keep_s`` after the end of UTC ``day`` (at least 1)."""
    end = datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp() + 86400
    return max(int(end + keep_s - now), 1)


class _Sum:
    __slots__ = ("amount", "ttl")

    def __init__(self, ttl: int) -> None:
        self.amount = Decimal(0)
        self.ttl = ttl

    def add(self, amount: Decimal) -> None:
        self.amount += amount
