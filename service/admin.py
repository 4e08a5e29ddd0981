"""The admin API (``/admin/...``) and the ``spendgate budgets`` table.

Off unless ``admin_key`` is configured: then every ``/admin`` path answers 404, as if it did
not exist. With it, a request must bring the key in ``authorization: Bearer <key>`` or
``x-spendgate-admin-key``, compared in constant time; otherwise 401. Routes:

* ``GET /admin/budgets``: every budget with its current window's spend, reserved amount
  (calls in flight), limit, ratio, window, reset time and action (``Budgeting.budgets_view``).
* ``GET /admin/spend?group_by=project,model&window=day``: spend from the ledger in the
  current UTC ``window`` (day, week, month, total), grouped by any of upstream, project,
  model, key (``Budgeting.spend_view``).

Store reads run in a worker thread; a failing store gives 503 for ``/admin/spend`` and the
last known values (``store.ok: false``) for ``/admin/budgets``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import orjson
from fastapi import FastAPI, HTTPException, Request, Response

from service.budgeting import Budgeting
from service.store import StoreError


def _presented_key(request: Request) -> str | None:
    explicit = request.headers.get("x-spendgate-admin-key")
    if explicit:
        return explicit
    auth = request.headers.get("authorization", "")
    return auth[7:].strip() if auth[:7].lower() == "bearer " else None


def install_admin(api: FastAPI, admin_key: Callable[[], str | None],
                  budgeting: Callable[[], Budgeting]) -> None:
    """Add the ``/admin`` routes; ``admin_key`` is read per request (it may be reloaded)."""

    def authorize(request: Request) -> None:
        key = admin_key()
        if key is None:
            raise HTTPException(404, "Not Found")
        presented = _presented_key(request) or ""
        if not hmac.compare_digest(presented.encode(), key.encode()):
            raise HTTPException(401, "a valid admin key is required (authorization: Bearer "
                                "<admin_key>, or x-spendgate-admin-key)",
                                headers={"www-authenticate": "Bearer"})

    def json_response(body: dict[str, Any]) -> Response:
        return Response(orjson.dumps(body), media_type="application/json")

    @api.get("/admin/budgets")
    async def admin_budgets(request: Request) -> Response:
        authorize(request)
        return json_response(await asyncio.to_thread(budgeting().budgets_view))

    @api.get("/admin/spend")
    async def admin_spend(request: Request, group_by: str = "project",
                          window: str = "day") -> Response:
        authorize(request)
        groups = [g.strip() for g in group_by.split(",") if g.strip()]
        try:
            view = await asyncio.to_thread(budgeting().spend_view, groups, window)
        except ValueError as error:
            raise HTTPException(400, str(error)) from None
        except StoreError as error:
            raise HTTPException(503, f"budget store unavailable: {error}") from None
        return json_response(view)


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
