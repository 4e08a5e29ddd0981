"""OpenAI's organization usage and costs APIs (an organization admin key, ``sk-admin-...``).

* ``GET /v1/organization/usage/completions``: daily buckets (``start_time``, Unix seconds)
  of ``organization.usage.completions.result`` grouped by ``model`` (and ``api_key_id``,
  filtered with ``api_key_ids``, when ``provider_key_id`` is set): ``input_tokens``
  (cached included), ``input_cached_tokens``, ``output_tokens``.
* ``GET /v1/organization/costs``: daily buckets of ``organization.costs.result`` grouped by
  ``line_item`` (and ``api_key_id``): ``amount.value`` USD (a number or a decimal string).
  A line item reads ``MODEL, input`` / ``MODEL, output``: the model is what precedes the
  last comma; a line item without one (fine-tuning, storage) is kept under its own name.

Both page with ``has_more`` / ``next_page`` (sent back as ``page``). Arrays are sent as
repeated parameters (``group_by=model&group_by=api_key_id``).
"""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal, InvalidOperation

from spendgate.errors import ReconcileError
from spendgate.reconcile.base import (
    ModelDay,
    ProviderReport,
    UsageSource,
    count,
    day_of,
    midnight,
    results,
)

USAGE_PATH = "/v1/organization/usage/completions"
COSTS_PATH = "/v1/organization/costs"


class OpenAIUsage(UsageSource):
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self._key}", "accept": "application/json"}

    def _params(self, first: date, last: date, group: str) -> list[tuple[str, str]]:
        params = [("start_time", str(int(midnight(first).timestamp()))),
                  ("end_time", str(int(midnight(last + timedelta(days=1)).timestamp()))),
                  ("bucket_width", "1d"), ("limit", "31"), ("group_by", group)]
        if self.key_id:
            params += [("group_by", "api_key_id"), ("api_key_ids", self.key_id)]
        return params

    def _ours(self, item: dict[str, object]) -> bool:
        return not self.key_id or item.get("api_key_id") in (None, self.key_id)

    def fetch(self, first: date, last: date) -> ProviderReport:
        report: ProviderReport = {}
        for bucket in self.pages(USAGE_PATH, self._params(first, last, "model")):
            day = day_of(bucket.get("start_time", 0))
            for item in results(bucket):
                if not self._ours(item):
                    continue
                row = report.setdefault((day, str(item.get("model") or "unknown")), ModelDay())
                row.add_tokens("input", count(item, "input_tokens"))
                row.add_tokens("cached_input", count(item, "input_cached_tokens"))
                row.add_tokens("output", count(item, "output_tokens"))
        for bucket in self.pages(COSTS_PATH, self._params(first, last, "line_item")):
            day = day_of(bucket.get("start_time", 0))
            for item in results(bucket):
                if not self._ours(item):
                    continue
                line = str(item.get("line_item") or "unknown")
                model = line.rpartition(",")[0].strip() or line
                report.setdefault((day, model), ModelDay()).cost += _usd(item.get("amount"))
        return report


def _usd(amount: object) -> Decimal:
    value = amount.get("value") if isinstance(amount, dict) else None
    if value is None:
        return Decimal(0)
    try:  # a float through its repr: 0.13 -> Decimal("0.13")
        result = Decimal(repr(value) if isinstance(value, float) else str(value))
    except InvalidOperation:
        raise ReconcileError(f"GET {COSTS_PATH}: amount {str(value)[:40]!r} is not a number"
                             ) from None
    if isinstance(amount, dict) and str(amount.get("currency", "usd")).lower() != "usd":
        raise ReconcileError(f"GET {COSTS_PATH}: currency {amount.get('currency')!r}, not usd")
    return result
