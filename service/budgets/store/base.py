"""The budget store's contract: spend and reservations per budget and window, in exact
nano-dollars, shared by every backend (``sqlite.py``, the default local file; ``redis.py``,
shared by every replica).

Units: integers of nano-dollars (``money.NANO`` per USD). A call's exact ``Decimal`` cost is
rarely a whole number of them; the ledger sink (``budgets.settlement``) carries the fraction
to the next call, so totals are exact to below one nano-dollar per process and never rounded
per call.

Operations, each atomic in the store:

* ``reserve(rid, holds, now)``: for every hold, refuse when ``spend + reserved + amount >
  limit`` (or the budget is already used up); otherwise add every amount to ``reserved``
  under reservation id ``rid``, with a lease that ends ``lease_s`` after ``now``. Expired
  leases (a replica died with calls in flight) are reclaimed before a call could be
  refused (SQLite: only then, and by its periodic prune; Redis: first), so an expired lease
  never refuses a call. All holds or none.
* ``settle(batch, now)``: release reservations, add charges to ``spend`` and to the per
  dimension totals (``upstream, project, model, key`` per UTC window, at most ``DIM_CAP``
  distinct tuples per window, the rest summed under ``labels.OTHER``). Each writer
  (``source``, one per process) numbers its batches 1, 2, 3... and sends one only once the
  previous one is known to be applied; the store applies a batch only if its ``seq`` is above
  the last it applied from that source, so a batch retried after an ambiguous timeout is
  never counted twice, at the cost of one small record per process.
* Tag dimensions (``attribution.tag_keys``) are a family of their own beside those, so
  tags never multiply the other dimensions nor each other: per tag key and UTC window, one
  row per (upstream, tag value, model), stored as ordinary ``Dims`` (the tag value in the
  project's place, key ``""``) under the window ``tag_window(tag_key, window)``, with its
  own ``DIM_CAP``: the overflow still sums under that tag key, so each key's rows add up to
  its exact total.
* ``history(days)``: per UTC day (``YYYY-MM-DD``), upstream and model, the spend
  (``kind`` ``cost``, nano-dollars) and tokens of each ``usage.TOKEN_TYPES`` type, written by
  ``settle`` from ``SettleBatch.days`` under the same once-only rule and kept
  ``store.history_days`` (at most ``HISTORY_CAP`` distinct rows a day, the rest summed
  under ``labels.OTHER`` upstream and model). What ``spendgate reconcile`` compares with the
  provider's bill.
* ``totals``, ``dims``: reads. ``claim(name, ttl_s)``: true for the first caller only (alert
  dedupe across replicas).
* ``remember(name, value, ttl_s)`` / ``recall(name)``: a small string every replica can read
  back until ``ttl_s`` ends (who created a batch; ``accounting.batches``).

Rate limits (``spendgate.limits``), per limit name, in their own keys or tables:

* ``limit_admit(rid, holds, now)``: per limit, a sliding-window log of the calls admitted in
  the last ``window_s`` seconds (each with its token count) and the calls in flight (each
  with a lease that ends ``lease_s`` after ``now``). Entries that left the window and
  expired leases are dropped first; then a call is refused (``limit_exhausted``) when one
  more request, its ``cost`` tokens or one more call in flight would go over a limit. All
  holds or none: admitted, ``rid`` is logged with ``cost`` tokens in each (``LimitState``
  says why not, and when to retry).
* ``limit_release(rid, limits)``: the call ended, its in-flight slots are free.
* ``limit_end(ends)``: calls that finished, as the record pipeline saw them: each one's real
  tokens replace its estimate in each log that still holds it (a call older than the window
  is gone already) and its slots are freed (again: idempotent).

Every operation is bounded by ``timeout_s`` and raises ``StoreError`` on any failure (each
backend translates its library's errors in one place); values live until their window ends
plus a margin (``ttl_s``; 0 = forever). Thread-safety: every method may be called from any
thread; ``reserve_async`` from the event loop only.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

DIM_CAP = 1000                   # distinct (upstream, project, model, key) per window
HISTORY_CAP = 6 * DIM_CAP        # distinct (upstream, model, kind) per day
HistoryKey = tuple[str, str, str, str]  # day, upstream, model, kind (cost or a token type)
Dims = tuple[str, str, str, str]  # upstream, project, model, key ("" when no virtual key)
Totals = dict[tuple[str, str], tuple[int, int]]  # (budget, window) -> (spend, reserved)


def tag_window(tag_key: str, window: str) -> str:
    """The window id of ``tag_key``'s dimension family in ``window`` (tag keys have no ``@``)."""
    return f"tag:{tag_key}@{window}"


class StoreError(Exception):
    """The store failed or did not answer within ``timeout_s``; the message has no secrets."""


@dataclass(frozen=True, slots=True)
class Hold:
    """One block budget's part of a call's reservation."""

    budget: str
    window: str
    limit: int
    amount: int
    ttl_s: int


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why ``reserve`` said no: the first hold that did not fit, and that budget's state."""

    budget: str
    window: str
    spend: int
    reserved: int
    amount: int


# A settlement's parts are created per call on the record thread: plain slotted classes
# (a frozen dataclass's __init__ costs ~4x as much). Never changed once built.
@dataclass(slots=True)
class Charge:
    budget: str
    window: str
    amount: int
    ttl_s: int


@dataclass(slots=True)
class DimCharge:
    window: str
    dims: Dims
    amount: int
    ttl_s: int


@dataclass(slots=True)
class DayCharge:
    """Spend (``kind="cost"``, nano-dollars) or tokens of one type, for the daily history."""

    day: str
    upstream: str
    model: str
    kind: str
    amount: int
    ttl_s: int


@dataclass(slots=True)
class SettleBatch:
    """What the pipeline learned from a batch of finished calls, to apply once.
    ``source`` and ``seq`` are stamped by the ``Ledger`` when it first sends the batch."""

    source: str = ""
    seq: int = 0
    releases: list[tuple[str, str, str]] = field(default_factory=list)  # (rid, budget, window)
    charges: list[Charge] = field(default_factory=list)
    dims: list[DimCharge] = field(default_factory=list)
    days: list[DayCharge] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.releases or self.charges or self.dims or self.days)


@dataclass(frozen=True, slots=True)
class LimitHold:
    """One rate limit's part of a call's admission; 0: that limit is not set."""

    limit: str
    requests: int       # requests_per_minute
    tokens: int         # tokens_per_minute
    concurrent: int     # max_concurrent
    cost: int           # this call's token estimate
    window_s: float


@dataclass(frozen=True, slots=True)
class LimitState:
    """Why ``limit_admit`` said no: the first limit that had no room and its state then.

    ``exhausted``: ``requests``, ``tokens`` or ``concurrent``. ``retry_after_s``: when the
    call would fit, as far as the window can tell (None: never, the call alone is over the
    tokens limit; 1 s for ``concurrent``: nobody knows when a call ends). ``reset_s``: when
    the window is empty again (its newest entry leaves)."""

    limit: str
    exhausted: str
    requests: int
    tokens: int
    in_flight: int
    retry_after_s: float | None
    reset_s: float


@dataclass(frozen=True, slots=True)
class LimitEnd:
    """A finished call in one limit: its real ``tokens`` replace its estimate in the log
    (None: leave it), and its in-flight slot is freed when ``slot``."""

    limit: str
    rid: str
    tokens: int | None
    slot: bool


CONCURRENT_RETRY_S = 1.0


def limit_exhausted(hold: LimitHold, requests: int, tokens: int, in_flight: int) -> str | None:
    """The admission rule of a rate limit: what would go over, if anything."""
    if hold.requests and requests + 1 > hold.requests:
        return "requests"
    if hold.tokens and tokens + hold.cost > hold.tokens:
        return "tokens"
    if hold.concurrent and in_flight + 1 > hold.concurrent:
        return "concurrent"
    return None


def fits(spend: int, reserved: int, amount: int, limit: int) -> bool:
    """The admission rule of a block budget."""
    used = spend + reserved
    return used < limit and used + amount <= limit


class Store(ABC):
    backend: str
    description: str          # where the store is, safe to log (no password)

    def __init__(self, timeout_s: float, lease_s: float) -> None:
        self.timeout_s = timeout_s
        self.lease_s = lease_s

    @abstractmethod
    def reserve(self, rid: str, holds: Sequence[Hold], now: float) -> Refusal | None: ...

    @abstractmethod
    async def reserve_async(self, rid: str, holds: Sequence[Hold],
                            now: float) -> Refusal | None: ...

    @abstractmethod
    def settle(self, batch: SettleBatch, now: float) -> Totals:
        """Apply ``batch``; returns the totals of every budget window it touched."""

    @abstractmethod
    def totals(self, keys: Sequence[tuple[str, str]], now: float) -> Totals: ...

    @abstractmethod
    def dims(self, window: str) -> dict[Dims, int]: ...

    @abstractmethod
    def claim(self, name: str, ttl_s: int, now: float) -> bool: ...

    @abstractmethod
    def history(self, days: Sequence[str]) -> dict[HistoryKey, int]:
        """The daily history rows of ``days`` (``YYYY-MM-DD``, UTC)."""

    def ping(self, now: float) -> None:
        """Raise ``StoreError`` unless the store answers (one small read)."""
        self.totals([("", "")], now)

    def close(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    @abstractmethod
    def limit_admit(self, rid: str, holds: Sequence[LimitHold], now: float
                    ) -> LimitState | None: ...

    @abstractmethod
    async def limit_admit_async(self, rid: str, holds: Sequence[LimitHold], now: float
                                ) -> LimitState | None: ...

    @abstractmethod
    async def limit_release_async(self, rid: str, limits: Sequence[str]) -> None: ...

    @abstractmethod
    def limit_end(self, ends: Sequence[LimitEnd]) -> None: ...

    @abstractmethod
    def remember(self, name: str, value: str, ttl_s: int, now: float) -> None:
        """Keep ``value`` under ``name`` (replacing any) until ``ttl_s`` after ``now``."""

    @abstractmethod
    def recall(self, name: str, now: float) -> str | None:
        """What ``remember`` kept under ``name``; None when nothing, or it expired."""
