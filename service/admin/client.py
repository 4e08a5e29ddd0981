"""The CLI's side of the admin API: read a running proxy, print what it says.

``spendgate budgets`` fetches ``GET /admin/budgets`` and ``spendgate spend`` ``GET
/admin/spend``, and print them as tables (or CSV, JSON). Amounts keep enough digits to be
right for small sums (``usd_text``). Standard library only (``urllib``): the CLI must not
need the server's dependencies to talk to it.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any


def fetch(url: str, path: str, admin_key: str | None, query: dict[str, str] | None = None,
          timeout_s: float = 10.0) -> bytes:
    """``GET {url}/admin/{path}?query``; raises ``RuntimeError`` with a message for people.

    Without a key, a proxy whose admin API is off (no ``admin_key``) is read through its
    console's API instead (``/ui/api/{path}``), which answers loopback callers: so the CLI
    works on the demo, and on any local proxy, with no key."""
    suffix = "?" + urllib.parse.urlencode(query) if query else ""
    try:
        return _get(f"{url.rstrip('/')}/admin/{path}{suffix}", admin_key, timeout_s)
    except _Status as status:
        if status.code == 404 and not admin_key:
            try:
                return _get(f"{url.rstrip('/')}/ui/api/{path}{suffix}", None, timeout_s)
            except _Status as console:
                if console.code == 403:
                    raise RuntimeError(f"{url}: the admin API is off (no admin_key) and its "
                                       "console answers loopback callers only") from None
                raise RuntimeError(f"{url}: {console}") from None
        if status.code == 404:
            raise RuntimeError(f"{url}: the admin API is off (set admin_key in the config)"
                               ) from None
        if status.code == 401:
            raise RuntimeError(f"{url}: admin key refused (--admin-key or "
                               "$SPENDGATE_ADMIN_KEY)") from None
        raise RuntimeError(f"{url}: {status}") from None


class _Status(Exception):
    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"HTTP {code}" + (f": {detail}" if detail else ""))
        self.code = code


def _get(url: str, admin_key: str | None, timeout_s: float) -> bytes:
    headers = {"authorization": f"Bearer {admin_key}"} if admin_key else {}
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            data: bytes = response.read()
            return data
    except urllib.error.HTTPError as error:
        try:
            detail = str(json.loads(error.read()).get("detail", ""))
        except (ValueError, AttributeError, OSError):
            detail = ""
        raise _Status(error.code, detail) from None
    except (OSError, ValueError) as error:
        raise RuntimeError(f"{url.split('/admin/')[0].split('/ui/api/')[0]}: {error}"
                           ) from None


def fetch_budgets(url: str, admin_key: str | None, timeout_s: float = 10.0) -> dict[str, Any]:
    """``GET {url}/admin/budgets``; raises ``RuntimeError`` with a message for people."""
    data: dict[str, Any] = json.loads(fetch(url, "budgets", admin_key, timeout_s=timeout_s))
    return data


def fetch_spend(url: str, admin_key: str | None, by: str, window: str,
                fmt: str = "json") -> bytes:
    """``GET {url}/admin/spend`` grouped ``by`` (comma-separated) in ``window``, as ``fmt``
    (``json`` or ``csv``: the proxy's own CSV)."""
    return fetch(url, "spend", admin_key, {"group_by": by, "window": window, "format": fmt})


def usd_text(value: float | None) -> str:
    """An amount for people, with enough digits to be right for small sums: cents from $1,
    else up to nano-dollars (``$0.001``, ``$0.00000123``); never ``$0.00`` unless zero."""
    if value is None:
        return "-"
    amount = Decimal(repr(value))
    if amount == 0:
        return "$0.00"
    if abs(amount) >= 1:
        return "$" + format(amount.quantize(Decimal("0.01"), ROUND_HALF_EVEN), ",f")
    digits = format(amount.quantize(Decimal("1e-9"), ROUND_HALF_EVEN), "f").rstrip("0")
    whole, _, fraction = digits.partition(".")
    if not fraction.strip("0"):
        return "<$0.000000001"
    return f"${whole}.{fraction.ljust(2, '0')}"


def ratio_text(ratio: float | None) -> str:
    if ratio is None:
        return "-"
    if 0 < ratio < 0.001:
        return "<0.1%"
    return f"{ratio:.1%}"


def _aligned(rows: Sequence[tuple[str, ...]], numeric: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.rjust(w) if i in numeric else c.ljust(w)
                      for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()
            for row in rows]


def spend_table(view: dict[str, Any]) -> str:
    """The ``/admin/spend`` answer as an aligned text table with a total line."""
    groups: list[str] = view.get("group_by", [])
    rows = [tuple(g.upper() for g in [*groups, "spend"])]
    rows += [tuple([*(str(r.get(g) or "-") for g in groups), usd_text(r["spend_usd"])])
             for r in view.get("rows", [])]
    rows.append(tuple(["TOTAL", *([""] * (len(groups) - 1)), usd_text(view.get("total_usd"))]))
    span = (f"{view.get('start')} to {view.get('end')}" if view.get("start")
            else "since the ledger began")
    head = f"spend, window {view.get('window')} ({span})"
    return "\n".join([head, *_aligned(rows, {len(groups)})]) + "\n"


def budgets_table(data: dict[str, Any]) -> str:
    """The ``/admin/budgets`` answer as an aligned text table."""
    rows = [("BUDGET", "ACTION", "WINDOW", "SPEND", "RESERVED", "LIMIT", "USED", "RESETS")]
    for b in data.get("budgets", []):
        rows.append((b["name"], b["action"], b["window"], usd_text(b["spend_usd"]),
                     usd_text(b["reserved_usd"]), usd_text(b["limit_usd"]),
                     ratio_text(b.get("ratio")), b.get("resets_at") or "never"))
    lines = _aligned(rows, {3, 4, 5, 6})
    store = data.get("store") or {}
    if store and not store.get("ok", True):
        lines.append(f"store unavailable, last known values shown: {store.get('error')}")
    if len(rows) == 1:
        lines.append("(no budgets configured)")
    return "\n".join(lines) + "\n"
