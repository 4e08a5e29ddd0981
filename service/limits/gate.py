"""Admission under rate limits: the hot path's ``RateLimiter``.

``admit`` runs on the event loop for every call once it is authenticated and attributed
and its body parsed, before the budget reservation. When limits cover the call, it asks the
store once, atomically for all of them (``Store.limit_admit``: a sliding-window log per
limit), and refuses the call with ``RateLimitExceeded`` (429) when one has no room:

* ``requests_per_minute``: one more request in the last window would go over;
* ``tokens_per_minute``: the tokens of the window plus this call's estimate would go over.
  The estimate is the bound the budget reservation uses (``budgets.gate``): the prompt as
  its body's bytes (+ 1600 per image part), plus ``max_tokens`` (x n), else the catalog's
  ``max_output_tokens``, else 32768; 0 for embeddings' output. It overstates what the
  request shows, so the correction when the call ends (``sink.py``: real input + output
  tokens) gives tokens back; input the provider adds itself (server-side search results)
  or an image billed above its bound can make the real count larger, and then the window
  holds more than the limit until that call leaves it. A call whose estimate alone
  is over the limit is refused for good (``x-should-retry: false``): lower ``max_tokens``.
* ``max_concurrent``: the limit's calls in flight, each holding a slot from admission until
  ``release`` (the call's end, after its last byte, whatever the outcome) and again in the
  record pipeline (idempotent: a release the store missed); a replica that dies leaves
  slots that the store reclaims when their lease (``store.reservation_lease_s``) ends.

The 429 says which limit and when to retry, in the headers the providers use:
``retry-after`` (seconds) and ``retry-after-ms`` (both SDKs read them), and
``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` for the limit's requests and
tokens parts (resets as OpenAI writes them: ``1s``, ``6m0s``, ``20ms``).

With the store unreachable, ``store.on_error: open`` admits (limits are not enforced until
it is back); ``closed`` refuses covered calls (503). A limiter's book is swapped whole on
reload (``update``); its counts live in the store under each limit's name.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from prometheus_client import CollectorRegistry, Counter

from spendgate.accounting.pricing import PriceCatalog
from spendgate.budgets.gate import output_tokens_bound, prompt_tokens_bound
from spendgate.budgets.ledger import Ledger, StoreDown
from spendgate.budgets.store.base import LimitHold, LimitState
from spendgate.budgets.windows import Clock
from spendgate.errors import BudgetStoreUnavailable, RateLimitExceeded
from spendgate.limits.book import Limit, LimitBook
from spendgate.records import CallOutcome


@dataclass(frozen=True, slots=True)
class LimitTicket:
    """What a call holds under rate limits (``CallOutcome.limit_ticket``): its id in each
    limit's log, and the limits whose in-flight slot it holds."""

    id: str
    holds: tuple[LimitHold, ...]
    slots: tuple[str, ...]


def tokens_estimate(outcome: CallOutcome, catalog: PriceCatalog) -> int:
    """The most tokens this call can use (the module docstring); 0 for unmetered calls."""
    info = outcome.request
    if info is None or not info.metered:
        return 0
    resolved = catalog.resolve(info.model, upstream=outcome.upstream, provider=outcome.provider)
    return prompt_tokens_bound(info) + output_tokens_bound(
        info, catalog, resolved.matched if resolved is not None else None)


def go_duration(seconds: float) -> str:
    """A duration as OpenAI's rate-limit headers write it: ``20ms``, ``1.5s``, ``6m0s``."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    minutes, rest = divmod(seconds, 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{text}" if minutes else text


def refusal_headers(limit: Limit, state: LimitState) -> list[tuple[bytes, bytes]]:
    headers: list[tuple[bytes, bytes]] = []
    if state.retry_after_s is None:
        headers.append((b"x-should-retry", b"false"))
    else:
        headers += [(b"retry-after", str(max(math.ceil(state.retry_after_s), 1)).encode()),
                    (b"retry-after-ms", str(max(math.ceil(state.retry_after_s * 1000), 1)
                                            ).encode())]
    reset = go_duration(state.reset_s).encode()
    for part, cap, used in (("requests", limit.requests, state.requests),
                            ("tokens", limit.tokens, state.tokens)):
        if cap:
            headers += [(f"x-ratelimit-limit-{part}".encode(), str(cap).encode()),
                        (f"x-ratelimit-remaining-{part}".encode(),
                         str(max(cap - used, 0)).encode()),
                        (f"x-ratelimit-reset-{part}".encode(), reset)]
    return headers


def refusal_message(limit: Limit, state: LimitState, cost: int, window_s: float) -> str:
    window = "minute" if window_s == 60 else f"{window_s:g} s"
    if state.exhausted == "requests":
        text = (f"rate limit {limit.name!r}: {limit.requests} requests per {window} reached "
                f"({state.requests} in the last {window})")
    elif state.exhausted == "concurrent":
        text = (f"rate limit {limit.name!r}: {limit.concurrent} calls in flight at most, "
                f"{state.in_flight} are")
    elif state.retry_after_s is None:
        return (f"rate limit {limit.name!r}: this call may use up to {cost} tokens (its prompt "
                f"bound plus max_tokens), more than the limit's {limit.tokens} tokens per "
                f"{window} allow at all: lower max_tokens or shorten the prompt")
    else:
        text = (f"rate limit {limit.name!r}: {limit.tokens} tokens per {window}, "
                f"{state.tokens} used in the last {window}, and this call may use up to {cost}")
    if state.retry_after_s is not None:
        text += f"; retry in {go_duration(state.retry_after_s)}"
    return text


class RateLimiter:
    """The proxy's rate-limit hook (hotpath's ``RateLimiter`` Protocol). ``admit`` and
    ``release`` run on the event loop; ``update`` swaps the book (reload) from any thread.

    ``ledger`` gives the ledger when there is one (its store, and its breaker: a failing
    store is not asked again for a moment, and failures are counted with the budget
    store's, ``spendgate_store_errors_total{operation="limit"}``).
    """

    def __init__(self, book: LimitBook, catalog: PriceCatalog,
                 ledger: Callable[[], Ledger | None], clock: Clock,
                 on_error: Literal["open", "closed"], registry: CollectorRegistry,
                 window_s: float = 60.0) -> None:
        self._state = (book, catalog)
        self._ledger = ledger
        self.clock = clock
        self.on_error = on_error
        self.window_s = window_s
        self.limited = Counter("spendgate_rate_limited", "Calls refused by a rate limit.",
                               ("limit",), registry=registry)
        self.update(book, catalog)

    @property
    def book(self) -> LimitBook:
        return self._state[0]

    @property
    def active(self) -> bool:
        """Whether any limit is configured: the hot path skips ``admit`` when not."""
        return bool(self._state[0].limits)

    def update(self, book: LimitBook, catalog: PriceCatalog) -> None:
        """Reload: new limits and prices. Each limit's series starts at 0, so the first
        refusal is a rise ``rate()`` sees."""
        for limit in book.limits:
            self.limited.labels(limit.name)
        self._state = (book, catalog)

    async def admit(self, outcome: CallOutcome) -> None:
        book, catalog = self._state
        info = outcome.request
        key = outcome.virtual_key or ""
        if info is not None and info.metered and info.json is None:
            # A body no parser reads names no model: held to every limit that covers it
            # whatever its model, as a block budget would (it cannot slip past model: ones).
            covering = book.match_any_model(outcome.upstream, outcome.project, key,
                                            outcome.tags)
        else:
            covering = book.match(outcome.upstream, outcome.project,
                                  (info.model if info else None) or "unknown", key,
                                  outcome.tags)
        ledger = self._ledger()
        if not covering or ledger is None:
            return
        cost = tokens_estimate(outcome, catalog) if any(c.tokens for c in covering) else 0
        holds = tuple(LimitHold(c.name, c.requests, c.tokens, c.concurrent, cost,
                                self.window_s) for c in covering)
        ticket = LimitTicket(f"{random.getrandbits(96):024x}", holds,
                             tuple(c.name for c in covering if c.concurrent))
        # Recorded before the store is asked: a timeout may come after the store wrote the
        # call, whose slots and estimate must then be released and corrected all the same.
        outcome.limit_ticket = ticket
        try:
            if not ledger.health.usable():
                raise StoreDown(ledger.health.last_error or "store down")
            state = await ledger.store.limit_admit_async(ticket.id, holds, self.clock())
        except Exception as error:  # a store error, or an unexpected reply: the same
            if not isinstance(error, StoreDown):
                ledger.health.failed("limit", error)
            if self.on_error == "closed":
                raise BudgetStoreUnavailable(
                    "the budget store is unavailable and store.on_error is 'closed': calls "
                    "under a rate limit are refused until it is back",
                    headers=[(b"retry-after", b"5")]) from None
            return
        ledger.health.ok()
        if state is not None:
            outcome.limit_ticket = None  # a refusal holds nothing
            limit = next(c for c in covering if c.name == state.limit)
            self.limited.labels(limit.name).inc()
            raise RateLimitExceeded(refusal_message(limit, state, cost, self.window_s),
                                    headers=refusal_headers(limit, state))

    async def release(self, ticket: object) -> None:
        """Free the in-flight slots of a call's ``LimitTicket``; never raises (a slot the
        store missed is freed again by the record pipeline, else when its lease ends).
        Asked even while the store's breaker is open: a slot kept after a blip would hold
        ``max_concurrent`` room until its lease ends, and a release is safe to repeat."""
        ledger = self._ledger()
        if not isinstance(ticket, LimitTicket) or not ticket.slots or ledger is None:
            return
        try:
            await ledger.store.limit_release_async(ticket.id, ticket.slots)
        except Exception as error:  # a store error, or an unexpected reply: the same
            ledger.health.failed("limit", error)
