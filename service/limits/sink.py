"""The limits' record sink: each finished call's real tokens replace its estimate.

A ``RecordSink`` on the record pipeline's thread, after the caller has its bytes. Per batch
of records it sends one ``Store.limit_end``: for every limit a call was admitted under, its
real tokens (input, cache reads and writes included, + output, reasoning included: what the
upstream reported, else spendgate's estimate of it; 0 for a call that generated nothing)
replace the admission estimate in the limit's log, and its in-flight slots are freed again
(the event loop freed them at the call's end; this catches a release the store missed).

A store failure loses the batch's corrections (the estimates stay until they leave the
window) and is counted (``spendgate_store_errors_total{operation=
"limit"}``); the slots are then reclaimed when their lease ends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from spendgate.budgets.ledger import Ledger
from spendgate.budgets.store.base import LimitEnd, StoreError
from spendgate.exporters.base import RecordSink
from spendgate.limits.gate import LimitTicket
from spendgate.records import UsageRecord

log = logging.getLogger("spendgate.limits")


def real_tokens(record: UsageRecord) -> int:
    return (record.usage.input or 0) + (record.usage.output or 0)


class LimitSink(RecordSink):
    name = "limits"

    def __init__(self, ledger: Callable[[], Ledger | None]) -> None:
        self._ledger = ledger

    def export(self, records: Sequence[UsageRecord]) -> None:
        ends: list[LimitEnd] = []
        for record in records:
            ticket = record.limit_ticket
            if not isinstance(ticket, LimitTicket):
                continue
            tokens = real_tokens(record)
            ends += [LimitEnd(h.limit, ticket.id, tokens if h.tokens else None,
                              bool(h.concurrent)) for h in ticket.holds
                     if h.tokens or h.concurrent]
        ledger = self._ledger()
        if not ends or ledger is None or not ledger.health.usable():
            return
        try:
            ledger.store.limit_end(ends)
        except StoreError as error:
            ledger.health.failed("limit", error)
            log.warning("rate limits: %d token corrections not written (%s); the estimates "
                        "stay until they leave the window", len(ends), error)
