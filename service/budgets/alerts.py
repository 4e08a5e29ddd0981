"""Budget alerts from the proxy: one webhook POST per budget, threshold and window.

``observe`` is told a budget's spend after each ledger write (pipeline thread) and when a
block budget refuses a call (event loop); it only compares and enqueues, never waits. The
notifier's own thread does the rest:

1. Claims the alert in the store (``claim``: SET NX, one winner across all replicas; the
   claim lives as long as the window). A replica that loses the claim drops the alert; a
   store error retries the claim later, so an outage delays alerts rather than doubling them.
2. POSTs to ``alerts.webhook_url`` a JSON body that is both a Slack incoming-webhook message
   (``text``) and a structured event for any other receiver::

       {"text": "...", "event": "budget_threshold", "budget": "search-monthly",
        "threshold": 0.8, "ratio": 0.8013, "spend_usd": 400.65, "limit_usd": 500.0,
        "action": "block", "blocked": false, "window": "month",
        "window_id": "month:2026-03-01", "window_start": "2026-03-01T00:00:00Z",
        "resets_at": "2026-04-01T00:00:00Z", "source": "spendgate"}

   ``blocked`` is true when the alert was raised by a refused call: a block budget stops
   calls before its spend reaches the limit, so a refusal raises the thresholds (up to 1.0)
   that spend, reservations in flight and the refused call would have reached together. A
   call whose worst case alone is over the limit raises nothing: it could never fit, and
   its 429 says so.
3. Retries failures (connection errors, 408, 429, 5xx) with exponential backoff (1 s,
   2 s, 4 s... at most 60 s) up to ``alerts.max_attempts``; other 4xx answers are final.

Without ``webhook_url`` the alert is logged (WARNING) by the replica that claimed it.
Nothing secret is sent or logged: not the webhook URL (Slack URLs are credentials), keys or
headers. An alert still waiting when the process stops is lost (its claim is already held).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson

from spendgate import __version__
from spendgate.budgets.book import Budget
from spendgate.budgets.store.base import StoreError
from spendgate.budgets.windows import TTL_MARGIN_S, Clock, Window, iso
from spendgate.config import AlertsConfig
from spendgate.money import nano_to_float, usd

log = logging.getLogger("spendgate.alerts")
_MAX_BACKOFF_S = 60.0
_CLAIM_ATTEMPTS = 100


@dataclass(frozen=True, slots=True)
class BudgetAlert:
    budget: str
    action: str
    threshold: float
    spend: int
    reserved: int
    limit: int
    window_kind: str
    window: Window
    blocked: bool

    @property
    def claim_name(self) -> str:
        return f"alert:{self.budget}:{self.window.id}:{self.threshold:g}"

    def text(self) -> str:
        resets = (f"resets {iso(self.window.end)}" if self.window.end is not None
                  else "never resets")
        tail = f" in the {self.window_kind} window (action: {self.action}; {resets})."
        if self.blocked:
            return (f"spendgate: budget *{self.budget}* reached {self.threshold:.0%} of its "
                    f"limit and refused a call: {usd(self.spend)} spent and "
                    f"{usd(self.reserved)} reserved by calls in flight, of {usd(self.limit)}"
                    + tail)
        return (f"spendgate: budget *{self.budget}* crossed {self.threshold:.0%} of its limit: "
                f"{usd(self.spend)} spent of {usd(self.limit)}" + tail)

    def payload(self) -> dict[str, Any]:
        return {
            "text": self.text(), "event": "budget_threshold", "budget": self.budget,
            "threshold": self.threshold,
            "ratio": round(self.spend / self.limit, 6) if self.limit else None,
            "spend_usd": nano_to_float(self.spend),
            "reserved_usd": nano_to_float(self.reserved),
            "limit_usd": nano_to_float(self.limit),
            "action": self.action, "blocked": self.blocked, "window": self.window_kind,
            "window_id": self.window.id,
            "window_start": iso(self.window.start) if self.window.end is not None else None,
            "resets_at": iso(self.window.end), "source": "spendgate",
        }


class AlertNotifier:
    """Threshold detection (any thread) and delivery (its own thread). ``start``, ``close``."""

    def __init__(self, config: AlertsConfig, claim: Callable[[str, int], bool],
                 clock: Clock) -> None:
        self.config = config                 # replaced whole on reload (``reconfigure``)
        self._claim = claim
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[str, set[float]]] = {}   # budget -> (window id, thresholds)
        self._queue: queue.SimpleQueue[BudgetAlert | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="spendgate-alerts", daemon=True)
        self.delivered = 0

    def observe(self, budget: Budget, window: Window, spend: int, reserved: int = 0,
                refused: int | None = None) -> None:
        """Enqueue the thresholds newly crossed by ``spend``, or (``refused``: the worst case
        of a call the budget refused) by a refusal. Cheap; never blocks."""
        if not budget.thresholds or budget.limit <= 0:
            return
        committed = -1 if refused is None or refused > budget.limit else (
            spend + reserved + refused)
        due = [t for t in budget.thresholds
               if spend >= t * budget.limit or (t <= 1.0 and committed >= t * budget.limit)]
        if not due:
            return
        with self._lock:
            seen = self._seen.get(budget.name)
            if seen is None or seen[0] != window.id:
                seen = self._seen[budget.name] = (window.id, set())
            new = [t for t in due if t not in seen[1]]
            seen[1].update(new)
        for threshold in new:
            self._queue.put(BudgetAlert(
                budget.name, budget.config.action, threshold, spend, reserved, budget.limit,
                budget.config.window, window,
                blocked=refused is not None and spend < threshold * budget.limit))

    def reconfigure(self, config: AlertsConfig) -> None:
        """Reload: where and how later alerts are delivered."""
        self.config = config

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout_s: float = 5.0) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout_s)

    # -- the notifier thread ------------------------------------------------------------------

    def _run(self) -> None:
        order = itertools.count()
        # (due on the monotonic clock, tie-breaker, alert, attempts so far, claimed)
        waiting: list[tuple[float, int, BudgetAlert, int, bool]] = []
        while True:
            timeout = max(waiting[0][0] - time.monotonic(), 0) if waiting else None
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = None
            else:
                if item is None:
                    if waiting:
                        log.warning("%d budget alert(s) not delivered at shutdown", len(waiting))
                    return
                heapq.heappush(waiting, (time.monotonic(), next(order), item, 0, False))
            while waiting and waiting[0][0] <= time.monotonic():
                _, _, alert, attempts, claimed = heapq.heappop(waiting)
                retry = self._handle(alert, attempts, claimed)
                if retry is not None:
                    delay, claimed = retry
                    heapq.heappush(waiting, (time.monotonic() + delay, next(order), alert,
                                             attempts + 1, claimed))

    def _handle(self, alert: BudgetAlert, attempts: int,
                claimed: bool) -> tuple[float, bool] | None:
        """Claim then deliver; ``(delay, claimed)`` to try again later, None when done."""
        backoff = min(2.0 ** attempts, _MAX_BACKOFF_S)
        if not claimed:
            ttl = alert.window.ttl_s(self._clock(), TTL_MARGIN_S)
            try:
                if not self._claim(alert.claim_name, ttl):
                    return None          # another replica has it
            except StoreError:
                return (backoff, False) if attempts < _CLAIM_ATTEMPTS else None
            attempts = 0
        url = self.config.webhook_url
        if not url:
            log.warning("%s", alert.text())
            return None
        error = self._post(url, alert)
        if error is None:
            self.delivered += 1
            return None
        if error.startswith("final") or attempts + 1 >= self.config.max_attempts:
            log.error("budget alert for %r (threshold %g) not delivered to %s: %s",
                      alert.budget, alert.threshold, urlsplit(url).hostname, error)
            return None
        return min(2.0 ** attempts, _MAX_BACKOFF_S), True

    def _post(self, url: str, alert: BudgetAlert) -> str | None:
        """POST once; None on success, else why (prefixed ``final`` when not worth a retry)."""
        request = urllib.request.Request(
            url, data=orjson.dumps(alert.payload()), method="POST",
            headers={"content-type": "application/json",
                     "user-agent": f"spendgate/{__version__}"})
        try:
            with urllib.request.urlopen(request, timeout=self.config.timeout_s) as response:
                response.read()
            return None
        except urllib.error.HTTPError as error:
            code = error.code
            return f"HTTP {code}" if code in (408, 429) or code >= 500 else f"final: HTTP {code}"
        except (OSError, ValueError) as error:
            return type(error).__name__
