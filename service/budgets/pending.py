"""Settlements not yet in the store, summed: the one way unsent ``SettleBatch``es add up.

Charges, dimension rows and daily history are summed per key (so memory stays bounded
however many calls or how long an outage), releases are kept one per reservation, at most
``MAX_RELEASES`` (beyond, the store's lease reclaims the rest). Used by the ``Ledger`` (spend
recorded and not yet sent) and the ``Journal`` (the unsent rows of a slot it adopts).

Not thread-safe: its owner locks.
"""

from __future__ import annotations

from spendgate.budgets.store.base import Charge, DayCharge, DimCharge, Dims, SettleBatch

MAX_RELEASES = 100_000


class PendingSpend:
    __slots__ = ("_charges", "_days", "_dims", "_releases")

    def __init__(self) -> None:
        self._charges: dict[tuple[str, str], list[int]] = {}   # -> [amount, ttl]
        self._dims: dict[tuple[str, Dims], list[int]] = {}
        self._days: dict[tuple[str, str, str, str], list[int]] = {}
        self._releases: list[tuple[str, str, str]] = []

    def __bool__(self) -> bool:
        return bool(self._charges or self._dims or self._days or self._releases)

    def add(self, batch: SettleBatch) -> None:
        charges, dims, days = self._charges, self._dims, self._days
        for c in batch.charges:
            if (entry := charges.get(key := (c.budget, c.window))) is None:
                charges[key] = [c.amount, c.ttl_s]
            else:
                entry[0] += c.amount
        for d in batch.dims:
            if (entry := dims.get(dim := (d.window, d.dims))) is None:
                dims[dim] = [d.amount, d.ttl_s]
            else:
                entry[0] += d.amount
        for h in batch.days:
            if (entry := days.get(day := (h.day, h.upstream, h.model, h.kind))) is None:
                days[day] = [h.amount, h.ttl_s]
            else:
                entry[0] += h.amount
        room = MAX_RELEASES - len(self._releases)
        self._releases.extend(batch.releases[:max(room, 0)])

    def batch(self) -> SettleBatch:
        """Everything added, as one unstamped batch."""
        return SettleBatch(
            "", 0, list(self._releases),
            [Charge(b, w, a, t) for (b, w), (a, t) in self._charges.items()],
            [DimCharge(w, d, a, t) for (w, d), (a, t) in self._dims.items()],
            [DayCharge(*k, a, t) for k, (a, t) in self._days.items()])

    def charged(self, budget: str, window: str) -> int:
        return self._charges.get((budget, window), [0])[0]

    def spend(self) -> int:
        """All charges, in nano-dollars."""
        return sum(a for a, _ in self._charges.values())


def summed(batches: list[SettleBatch]) -> SettleBatch:
    """``batches`` (unstamped) as one."""
    pending = PendingSpend()
    for batch in batches:
        pending.add(batch)
    return pending.batch()
