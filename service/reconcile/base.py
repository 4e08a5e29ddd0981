"""The extension point of reconciliation: a provider's admin API as daily usage and cost.

``UsageSource.fetch(first, last)`` returns a ``ProviderReport``: per (UTC day, model), the
tokens by spendgate's types (``usage.TOKEN_TYPES``: ``input`` counts cached and
cache-written tokens too) and the exact cost in USD, for the days ``first``..``last``
inclusive. Sources page through their API (``has_more`` / ``next_page``) and raise
``ReconcileError`` on any failure. Thread-safety: a source keeps no state between calls.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import orjson

from spendgate.errors import ReconcileError

MAX_PAGES = 200                     # a provider that pages forever does not hang the job
HistoryKey = tuple[str, str, str, str]   # day, upstream, model, kind (cost or a token type)
HistoryReader = Callable[[Sequence[str]], dict[HistoryKey, int]]


@dataclass(slots=True)
class ModelDay:
    """One model's day, as the provider reports it."""

    tokens: dict[str, int] = field(default_factory=dict)
    cost: Decimal = Decimal(0)

    def add_tokens(self, kind: str, count: int) -> None:
        if count:
            self.tokens[kind] = self.tokens.get(kind, 0) + count


ProviderReport = dict[tuple[str, str], ModelDay]   # (day, model) -> ModelDay


def day_of(timestamp: float | str) -> str:
    """A bucket start (Unix seconds, or RFC 3339) as its UTC day, ``YYYY-MM-DD``."""
    if isinstance(timestamp, str):
        moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    else:
        moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.astimezone(UTC).date().isoformat()


def midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


class UsageSource(ABC):
    """A provider's usage and cost API, read with its admin key."""

    def __init__(self, base_url: str, admin_key: str, key_id: str | None = None,
                 timeout_s: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._key = admin_key
        self.key_id = key_id
        self.timeout_s = timeout_s

    @abstractmethod
    def fetch(self, first: date, last: date) -> ProviderReport:
        """Usage and cost of the UTC days ``first``..``last``; raises ``ReconcileError``."""

    @abstractmethod
    def headers(self) -> dict[str, str]:
        """The request headers, the admin key among them."""

    def get(self, path: str, params: Sequence[tuple[str, str]]) -> dict[str, Any]:
        """One GET of ``path`` with ``params``, as parsed JSON; raises ``ReconcileError``."""
        url = f"{self.base_url}{path}?{urlencode(params)}"
        request = urllib.request.Request(url, headers=self.headers(), method="GET")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                body = response.read()
        except urllib.error.HTTPError as error:
            raise ReconcileError(f"GET {path}: HTTP {error.code}") from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise ReconcileError(f"GET {path}: {type(error).__name__}: "
                                 f"{self._scrub(str(reason))}") from None
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ReconcileError(f"GET {path}: the answer is not JSON") from None
        if not isinstance(data, dict):
            raise ReconcileError(f"GET {path}: the answer is not a JSON object")
        return data

    def pages(self, path: str, params: Sequence[tuple[str, str]]) -> Iterator[dict[str, Any]]:
        """Every bucket of a paginated answer (``data``, ``has_more``, ``next_page``)."""
        page: str | None = None
        for _ in range(MAX_PAGES):
            data = self.get(path, [*params, *([("page", page)] if page else [])])
            buckets = data.get("data")
            if not isinstance(buckets, list):
                raise ReconcileError(f"GET {path}: no data list in the answer")
            for bucket in buckets:
                if isinstance(bucket, dict):
                    yield bucket
            page = data.get("next_page")
            if not data.get("has_more") or not page:
                return
        raise ReconcileError(f"GET {path}: more than {MAX_PAGES} pages")

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "[admin key]") if self._key else text


def results(bucket: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for item in bucket.get("results") or ():
        if isinstance(item, dict):
            yield item


def count(item: dict[str, Any], *path: str) -> int:
    """An integer field (nested along ``path``), 0 when absent or not a count."""
    value: Any = item
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
