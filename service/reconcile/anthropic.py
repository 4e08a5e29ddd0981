"""Anthropic's Admin API usage and cost reports (an admin key, ``sk-ant-admin...``).

* ``GET /v1/organizations/usage_report/messages``: daily buckets (``starting_at``, RFC 3339)
  grouped by ``model`` (and ``api_key_id``, filtered with ``api_key_ids[]``, when
  ``provider_key_id`` is set): ``uncached_input_tokens``, ``cache_read_input_tokens``,
  ``cache_creation.ephemeral_5m_input_tokens`` / ``ephemeral_1h_input_tokens``,
  ``output_tokens``. spendgate's ``input`` is their sum; ``cached_input`` the cache reads,
  ``cache_write`` the cache creations.
* ``GET /v1/organizations/cost_report``: daily buckets grouped by ``description``, each
  result an ``amount`` in the currency's lowest unit (cents) as a decimal string
  (``"123.45"`` is $1.2345) with its ``model`` (null for costs that are not tokens: kept
  under ``(non-token)``). The cost report cannot be grouped by API key: with
  ``provider_key_id`` the tokens are the key's, the cost is the organization's.

Both page with ``has_more`` / ``next_page`` (sent back as ``page``); arrays are sent as
``group_by[]=...``, as the API documents.
"""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal, InvalidOperation

from spendgate.errors import ReconcileError
from spendgate.reconcile import base
from spendgate.reconcile.base import ModelDay, ProviderReport, UsageSource

USAGE_PATH = "/v1/organizations/usage_report/messages"
COST_PATH = "/v1/organizations/cost_report"
NON_TOKEN = "(non-token)"
_CENTS = Decimal(100)


class AnthropicUsage(UsageSource):
    def headers(self) -> dict[str, str]:
        return {"x-api-key": self._key, "anthropic-version": "2023-06-01",
                "accept": "application/json"}

    def _range(self, first: date, last: date) -> list[tuple[str, str]]:
        end = base.midnight(last + timedelta(days=1))
        return [("starting_at", base.midnight(first).strftime("%Y-%m-%dT%H:%M:%SZ")),
                ("ending_at", end.strftime("%Y-%m-%dT%H:%M:%SZ")), ("bucket_width", "1d"),
                ("limit", "31")]

    def fetch(self, first: date, last: date) -> ProviderReport:
        report: ProviderReport = {}
        params = [*self._range(first, last), ("group_by[]", "model")]
        if self.key_id:
            params += [("group_by[]", "api_key_id"), ("api_key_ids[]", self.key_id)]
        for bucket in self.pages(USAGE_PATH, params):
            day = base.day_of(str(bucket.get("starting_at", "")))
            for item in base.results(bucket):
                if self.key_id and item.get("api_key_id") not in (None, self.key_id):
                    continue
                row = report.setdefault((day, str(item.get("model") or "unknown")), ModelDay())
                read = base.count(item, "cache_read_input_tokens")
                written = (base.count(item, "cache_creation", "ephemeral_5m_input_tokens")
                           + base.count(item, "cache_creation", "ephemeral_1h_input_tokens"))
                row.add_tokens("input", base.count(item, "uncached_input_tokens") + read + written)
                row.add_tokens("cached_input", read)
                row.add_tokens("cache_write", written)
                row.add_tokens("output", base.count(item, "output_tokens"))
        for bucket in self.pages(COST_PATH, [*self._range(first, last),
                                             ("group_by[]", "description")]):
            day = base.day_of(str(bucket.get("starting_at", "")))
            for item in base.results(bucket):
                model = str(item.get("model") or NON_TOKEN)
                report.setdefault((day, model), ModelDay()).cost += _usd(item)
        return report


def _usd(item: dict[str, object]) -> Decimal:
    if str(item.get("currency") or "USD").upper() != "USD":
        raise ReconcileError(f"GET {COST_PATH}: currency {item.get('currency')!r}, not USD")
    try:
        return Decimal(str(item.get("amount") or "0")) / _CENTS
    except InvalidOperation:
        raise ReconcileError(f"GET {COST_PATH}: amount {str(item.get('amount'))[:40]!r} is "
                             "not a decimal string") from None
