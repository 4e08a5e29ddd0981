"""The CLI's side of the admin API: read a running proxy, print what it says.

``spendgate budgets`` fetches ``GET /admin/budgets`` and prints it as a table. Standard
library only (``urllib``): the CLI must not need the server's dependencies to talk to it.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


def fetch_budgets(url: str, admin_key: str | None, timeout_s: float = 10.0) -> dict[str, Any]:
    """``GET {url}/admin/budgets``; raises ``RuntimeError`` with a message for people."""
    headers = {"authorization": f"Bearer {admin_key}"} if admin_key else {}
    request = urllib.request.Request(url.rstrip("/") + "/admin/budgets", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            data: dict[str, Any] = json.loads(response.read())
            return data
    except urllib.error.HTTPError as error:
        if error.code == 404:
            raise RuntimeError(f"{url}: the admin API is off (set admin_key in the config)"
                               ) from None
        if error.code == 401:
            raise RuntimeError(f"{url}: admin key refused (--admin-key or "
                               "$SPENDGATE_ADMIN_KEY)") from None
        raise RuntimeError(f"{url}: HTTP {error.code}") from None
    except (OSError, ValueError) as error:
        raise RuntimeError(f"{url}: {error}") from None


def budgets_table(data: dict[str, Any]) -> str:
    """The ``/admin/budgets`` answer as an aligned text table."""
    rows = [("BUDGET", "ACTION", "WINDOW", "SPEND", "RESERVED", "LIMIT", "USED", "RESETS")]
    for b in data.get("budgets", []):
        ratio = b.get("ratio")
        rows.append((b["name"], b["action"], b["window"], f"${b['spend_usd']:,.2f}",
                     f"${b['reserved_usd']:,.2f}", f"${b['limit_usd']:,.2f}",
                     "-" if ratio is None else f"{ratio:.1%}", b.get("resets_at") or "never"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if 3 <= i <= 6 else c.ljust(w)
                       for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()
             for row in rows]
    store = data.get("store") or {}
    if store and not store.get("ok", True):
        lines.append(f"store unavailable, last known values shown: {store.get('error')}")
    if len(rows) == 1:
        lines.append("(no budgets configured)")
    return "\n".join(lines) + "\n"
