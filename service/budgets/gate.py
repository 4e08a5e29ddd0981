"""The admission gate: reserve a call's worst case in the block budgets that cover it.

``BudgetGate.reserve`` runs on the event loop for every call (the hot path's ``BudgetGate``
Protocol). When a ``block`` budget covers the call, it reserves the call's worst-case cost in
every such budget at once, atomically in the store, and refuses the call with
``BudgetExceeded`` (429) when one has no room. Worst case, in nano-dollars rounded up::

    prompt  = body bytes (a token is at least one byte of text), + 1600 per image part
    output  = max_tokens (x n), else the catalog's max_output_tokens, else 32768;
              0 for embeddings
    cost    = prompt x the highest input-side rate + output x the highest output-side rate,
              at the service tier the request asks for (``service_tier``) and the context
              tier ``prompt`` falls in (``Price.worst_rates``), x the upstream's multiplier

capped per budget by ``max_reserve_usd``; a model without a price reserves 0 (it is counted at
0). The reservation is settled to the exact cost by ``budgets.settlement`` once the call ends.

A virtual key's ``max_reserve_usd`` (``CallOutcome.key_max_reserve``) is a ceiling on that
worst case, whether or not a budget covers the call: a call of the key whose worst case is
over it is refused (403 ``MaxReserveExceeded``) before anything is reserved, so the key's
reservations never exceed it and no block budget is held to less than a call's worst case
(a budget's own ``max_reserve_usd`` caps what one call holds; the key's refuses the call).

A metered call whose body neither orjson nor Python's json can read (``RequestInfo.json``
None: no model, no ``max_tokens``) is refused with ``BadRequest`` (400) when a block budget
would cover it whatever its model (every selector but ``model`` matches): the upstream
cannot serve it as it stands, and one that reads more leniently still must not get a call
past a cap. Under no such budget it is forwarded, for the upstream to judge.

With the store unreachable, ``store.on_error: open`` lets calls through unless the spend
this replica knows of (last store totals plus spend not yet written) already fills a block
budget; ``closed`` refuses them (503). A gate never changes: reload builds a new one (new
book, catalog) and the proxy swaps it whole.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NoReturn

from spendgate.accounting.pricing import PriceCatalog
from spendgate.budgets.book import Budget, BudgetBook
from spendgate.budgets.ledger import Ledger
from spendgate.budgets.store.base import Hold, StoreError
from spendgate.budgets.windows import TTL_MARGIN_S, Clock, Window, iso
from spendgate.errors import (
    BadRequest,
    BudgetExceeded,
    BudgetStoreUnavailable,
    MaxReserveExceeded,
)
from spendgate.money import to_nano, usd
from spendgate.providers.base import RequestInfo
from spendgate.records import CallOutcome

IMAGE_TOKENS_WORST = 1600
DEFAULT_OUTPUT_TOKENS = 32768


@dataclass(frozen=True, slots=True)
class Reservation:
    """What a call holds in the block budgets that cover it (``CallOutcome.reservation``)."""

    id: str
    holds: tuple[Hold, ...]
    worst_case_nano: int


def prompt_tokens_bound(info: RequestInfo) -> int:
    """The body's size in bytes (a byte-level BPE token is at least one byte of text, and
    JSON never encodes text in fewer bytes than UTF-8), plus the worst case of each image
    part. No tokenizer runs on the hot path: this costs a few microseconds per call."""
    body = info.upstream_body
    images = body.count(b'"image_url"') + body.count(b'"input_image"') + body.count(b'"image"')
    return len(body) + images * IMAGE_TOKENS_WORST


def output_tokens_bound(info: RequestInfo, catalog: PriceCatalog, matched: str | None) -> int:
    """The most a call can generate: ``max_tokens`` (x n), else the catalog's
    ``max_output_tokens`` of the entry ``matched`` (the model as the catalog resolved it),
    else ``DEFAULT_OUTPUT_TOKENS``; 0 for embeddings."""
    if info.operation == "embeddings":
        return 0
    output = info.max_tokens or 0
    if not output:
        entry = catalog.entries.get(matched) if matched is not None else None
        output = (entry.max_output_tokens if entry else None) or DEFAULT_OUTPUT_TOKENS
    return output * info.choices


def worst_case_nano(outcome: CallOutcome, catalog: PriceCatalog) -> int:
    """The most this call can cost, rounded up to a nano-dollar (see the module docstring)."""
    info = outcome.request
    if info is None or not info.metered:
        return 0
    resolved = catalog.resolve(info.model, upstream=outcome.upstream, provider=outcome.provider)
    if resolved is None:
        return 0
    output = output_tokens_bound(info, catalog, resolved.matched)
    # The byte bound can only overstate the prompt, so the context tier it falls in is never
    # cheaper than the one the call will be priced at: the reservation stays an upper bound.
    prompt = prompt_tokens_bound(info)
    tier = (info.json or {}).get("service_tier")
    p_in, p_out = resolved.price.worst_rates(tier if isinstance(tier, str) else None, prompt)
    per_mtok = (prompt * p_in + output * p_out) * catalog.multiplier(outcome.upstream)
    return to_nano(per_mtok.scaleb(-6))


def refusal_message(budget: Budget, window: Window, spend: int, reserved: int, amount: int,
                    now: float) -> str:
    text = (f"budget {budget.name!r} has no room for this call: spent {usd(spend)} of "
            f"{usd(budget.limit)} in its {budget.config.window} window")
    if reserved:
        text += f", {usd(reserved)} more reserved by calls in flight"
    if amount:
        text += f"; this call may cost up to {usd(amount)}"
    if window.end is None:
        return text + "; the window never resets (window: total): raise the limit to continue"
    return text + f"; the window resets at {iso(window.end)} (in {_duration(window.end - now)})"


def _duration(seconds: float) -> str:
    s = math.ceil(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    parts = [f"{v}{u}" for v, u in ((days, "d"), (hours, "h"), (minutes, "m")) if v]
    return " ".join(parts[:2]) if parts else f"{s}s"


class BudgetGate:
    """The proxy's admission hook. ``reserve`` runs on the event loop. Immutable.

    ``ledger`` None (no store configured) admits everything; ``count_blocked(budget)`` and
    ``on_blocked(budget, window, spend, reserved, amount)`` are told of each refusal.
    """

    def __init__(self, book: BudgetBook, catalog: PriceCatalog, ledger: Ledger | None,
                 clock: Clock,
                 on_error: Literal["open", "closed"], count_blocked: Callable[[str], None],
                 on_blocked: Callable[[Budget, Window, int, int, int], None] | None = None,
                 ) -> None:
        self.book = book
        self.catalog = catalog
        self.ledger = ledger
        self.clock = clock
        self.on_error = on_error
        self._count_blocked = count_blocked
        self._on_blocked = on_blocked

    async def reserve(self, outcome: CallOutcome) -> None:
        worst = (None if outcome.key_max_reserve is None
                 else self._within_key_ceiling(outcome, outcome.key_max_reserve))
        book = self.book
        if not book.any_block or self.ledger is None:
            return
        info = outcome.request
        if info is not None and info.metered and info.json is None:
            self._refuse_unreadable(outcome)
        model = (info.model if info else None) or "unknown"
        covering = [b for b in book.match(outcome.upstream, outcome.project, model,
                                          outcome.virtual_key or "", outcome.tags)
                    if b.block]
        if not covering:
            return
        now = self.clock()
        if worst is None:
            worst = worst_case_nano(outcome, self.catalog)
        windows = {b.name: b.window(now) for b in covering}
        holds = tuple(Hold(b.name, windows[b.name].id, b.limit,
                           worst if b.max_reserve is None else min(worst, b.max_reserve),
                           windows[b.name].ttl_s(now, TTL_MARGIN_S)) for b in covering)
        rid = f"{random.getrandbits(96):024x}"  # unique, not secret (as trace ids)
        # Recorded before the store is asked: a timeout or cancellation may come after the
        # store wrote the hold, and the ledger sink must then release it (releasing an id
        # the store never recorded is a no-op), not leave it for the lease to reclaim.
        outcome.reservation = Reservation(rid, holds, worst)
        try:
            refusal = await self.ledger.reserve(rid, holds, now)
        except StoreError:
            self._degraded(outcome, covering, windows, holds, now)
            return
        if refusal is not None:
            outcome.reservation = None  # a refusal holds nothing
            budget = book.by_name[refusal.budget]
            self._refuse(outcome, budget, windows[budget.name], refusal.spend, refusal.reserved,
                         refusal.amount, now)
        outcome.budget_decision = "allowed"

    def _within_key_ceiling(self, outcome: CallOutcome, ceiling: int) -> int:
        """The call's worst case, when it is within its virtual key's ``max_reserve_usd``;
        else ``MaxReserveExceeded`` (403). A metered body no parser reads cannot be bounded:
        400, as under a block budget."""
        info = outcome.request
        key = outcome.virtual_key
        if info is not None and info.metered and info.json is None:
            raise _unreadable(f"virtual key {key!r}'s max_reserve_usd")
        worst = worst_case_nano(outcome, self.catalog)
        if worst > ceiling:
            raise MaxReserveExceeded(
                f"this call may cost up to {usd(worst)}, over the {usd(ceiling)} one call of "
                f"virtual key {key!r} may cost (its max_reserve_usd): ask for fewer output "
                "tokens (max_tokens) or send a shorter prompt")
        return worst

    def _refuse_unreadable(self, outcome: CallOutcome) -> None:
        budget = self.book.block_any_model(outcome.upstream, outcome.project,
                                           outcome.virtual_key or "", outcome.tags)
        if budget is not None:
            raise _unreadable(f"budget {budget.name!r}")

    def _degraded(self, outcome: CallOutcome, covering: list[Budget], windows: dict[str, Window],
                  holds: tuple[Hold, ...], now: float) -> None:
        if self.on_error == "closed":
            outcome.budget_decision = "blocked"
            raise BudgetStoreUnavailable(
                "the budget store is unavailable and store.on_error is 'closed': calls "
                "covered by a block budget are refused until it is back",
                headers=[(b"retry-after", b"5")])
        assert self.ledger is not None
        for budget, hold in zip(covering, holds, strict=True):
            spend, _ = self.ledger.known(budget.name, hold.window)
            if spend >= budget.limit:
                self._refuse(outcome, budget, windows[budget.name], spend, 0, hold.amount, now)
        outcome.budget_decision = "allowed"

    def _refuse(self, outcome: CallOutcome, budget: Budget, window: Window, spend: int,
                reserved: int, amount: int, now: float) -> NoReturn:
        outcome.budget_decision = "blocked"
        self._count_blocked(budget.name)
        if self._on_blocked is not None:
            self._on_blocked(budget, window, spend, reserved, amount)
        headers = [(b"x-should-retry", b"false")]
        left = window.seconds_left(now)
        if left is not None:
            headers.insert(0, (b"retry-after", str(max(math.ceil(left), 1)).encode()))
        raise BudgetExceeded(refusal_message(budget, window, spend, reserved, amount, now),
                             headers=headers)


def _unreadable(limit: str) -> BadRequest:
    """The refusal of a metered body no parser reads, under ``limit`` (a budget, a key's
    ceiling), which cannot be held to it."""
    return BadRequest("the request body is not JSON spendgate can read (as orjson or "
                      f"Python's json read it), so {limit} cannot be held to it: send valid JSON")
