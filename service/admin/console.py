"""The built-in console at ``/ui``: spend, budgets, recent calls and prices, read-only.

Served by the proxy itself from files inside the package (``admin/console/``: one HTML
page, one script, one stylesheet; hand-written SVG charts, no library, no CDN, no build
step), so it works air-gapped. The page holds no data; it reads these, same-origin:

* ``GET /ui/api/spend?group_by=project&window=day[&format=csv]`` ``BudgetManager.spend_view``
* ``GET /ui/api/series?range=hour|day|month&by=project|model|upstream|key``: spend and calls
  per minute, hour or day (``budgets.history``)
* ``GET /ui/api/budgets``: ``budgets_view`` plus each budget's linear forecast at its reset
* ``GET /ui/api/calls``: the last calls of this process (``exporters.recent``: access-log
  fields, no content) and its call errors by kind
* ``GET /ui/api/price?model=M[&upstream=U]`` and ``GET /ui/api/models``: prices

Spend, charts and budgets come from the ledger, shared by every replica (so every replica's
console shows the same spend); recent calls and errors are this process's own.

Who may read: with ``admin_key`` configured, the data needs it (``authorization: Bearer`` or
``x-spendgate-admin-key``, as the admin API; the page asks for it and keeps it in the
tab's ``sessionStorage``); without one, the console (page and data) answers loopback
callers only (403 otherwise). Like every proxy-owned path, ``/ui`` answers only the ``Host``
names of ``server.allowed_hosts`` (``app.py``). The page's Content-Security-Policy allows
nothing but this origin.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
from fastapi import FastAPI, HTTPException, Request, Response

from spendgate.budgets.manager import BudgetManager
from spendgate.budgets.store import StoreError
from spendgate.config import is_loopback

ASSETS = Path(__file__).parent / "console"
_FILES = {"": ("index.html", "text/html; charset=utf-8"),
          "console.js": ("console.js", "text/javascript; charset=utf-8"),
          "console.css": ("console.css", "text/css; charset=utf-8")}
_HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "connect-src 'self'; img-src 'self' data:; base-uri 'none'; "
                               "form-action 'none'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff", "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


@dataclass(frozen=True, slots=True)
class ConsoleSources:
    """What the console reads besides the ledger, handed over by the composition root:
    ``recent()`` -> (calls seen, last calls newest first); ``errors()`` -> call errors by
    kind; ``price(model, upstream)`` -> (known, description); ``models()`` -> names."""

    recent: Callable[[], tuple[int, list[dict[str, Any]]]]
    errors: Callable[[], dict[str, float]]
    price: Callable[[str, str | None], tuple[bool, str]]
    models: Callable[[], list[str]]


def forecast(budget: dict[str, Any], now: float) -> float | None:
    """Spend at the window's reset if it goes on at its pace since the window began (None
    for a ``total`` budget, which never resets)."""
    start, end = budget.get("window_start"), budget.get("resets_at")
    if not start or not end:
        return None
    begun, ends = _unix(start), _unix(end)
    if now <= begun:
        return None
    return float(budget["spend_usd"]) * (ends - begun) / (now - begun)


def _unix(iso: str) -> float:
    return datetime.strptime(iso, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


def csv_text(view: dict[str, Any]) -> str:
    """A spend view as CSV: the group columns, then ``spend_usd`` (plain decimals)."""
    columns = [*view["group_by"], "spend_usd"]
    lines = [",".join(columns)]
    for row in view["rows"]:
        cells = [str(row[c]) if c != "spend_usd" else _plain(row[c]) for c in columns]
        lines.append(",".join(_csv_cell(c) for c in cells))
    return "\r\n".join(lines) + "\r\n"


def _plain(usd: float) -> str:
    """A float amount as a plain decimal (no exponent): ``1e-06`` -> ``0.000001``."""
    return format(Decimal(repr(usd)), "f")


def _csv_cell(text: str) -> str:
    # A cell a spreadsheet would run as a formula is prefixed with a quote (CSV injection).
    if text[:1] in ("=", "+", "-", "@", "\t", "\r"):
        text = "'" + text
    if any(c in text for c in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def spend_response(view: dict[str, Any], fmt: str) -> Response:
    """``format=json`` (default) or ``csv``; anything else is a 400."""
    if fmt == "csv":
        return Response(csv_text(view), media_type="text/csv; charset=utf-8",
                        headers={"content-disposition": 'inline; filename="spend.csv"'})
    if fmt != "json":
        raise HTTPException(400, "format: json or csv")
    return Response(orjson.dumps(view), media_type="application/json")


def install_console(api: FastAPI, admin_key: Callable[[], str | None],
                    key_matches: Callable[[Request, str], bool],
                    budgeting: Callable[[], BudgetManager], sources: ConsoleSources) -> None:
    """Add ``/ui`` and its data routes. ``admin_key`` is read per request (reload);
    ``key_matches(request, key)`` compares the presented key in constant time."""

    def allow(request: Request, data: bool) -> None:
        key = admin_key()
        if key is None:
            client = request.client.host if request.client is not None else ""
            if not is_loopback(client):
                raise HTTPException(403, "without admin_key the console answers loopback "
                                    "callers only")
        elif data and not key_matches(request, key):
            raise HTTPException(401, "the console needs the admin key (admin_key)",
                                headers={"www-authenticate": "Bearer"})

    def json_response(body: Any) -> Response:
        return Response(orjson.dumps(body), media_type="application/json",
                        headers={"cache-control": "no-store"})

    async def from_store(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
        try:
            return await asyncio.to_thread(fn, *args)
        except ValueError as error:
            raise HTTPException(400, str(error)) from None
        except StoreError as error:
            raise HTTPException(503, f"budget store unavailable: {error}") from None

    @api.get("/ui", include_in_schema=False)
    @api.get("/ui/{name}", include_in_schema=False)
    async def asset(request: Request, name: str = "") -> Response:
        allow(request, data=False)
        if name not in _FILES:
            raise HTTPException(404, "Not Found")
        filename, media_type = _FILES[name]
        body = await asyncio.to_thread((ASSETS / filename).read_bytes)
        return Response(body, media_type=media_type, headers=_HEADERS)

    @api.get("/ui/api/spend", include_in_schema=False)
    async def spend(request: Request, group_by: str = "project", window: str = "day",
                    format: str = "json") -> Response:  # the query's name
        allow(request, data=True)
        groups = [g.strip() for g in group_by.split(",") if g.strip()]
        return spend_response(await from_store(budgeting().spend_view, groups, window), format)

    @api.get("/ui/api/series", include_in_schema=False)
    async def series(request: Request, range: str = "hour",
                     by: str = "project") -> Response:
        allow(request, data=True)
        return json_response(await from_store(budgeting().series_view, range, by))

    @api.get("/ui/api/budgets", include_in_schema=False)
    async def budgets(request: Request) -> Response:
        allow(request, data=True)
        manager = budgeting()
        view = await asyncio.to_thread(manager.budgets_view)
        now = manager.clock()
        for budget in view["budgets"]:
            budget["forecast_usd"] = forecast(budget, now)
        return json_response(view)

    @api.get("/ui/api/calls", include_in_schema=False)
    async def calls(request: Request) -> Response:
        allow(request, data=True)
        seen, recent = sources.recent()
        return json_response({"seen": seen, "calls": recent, "errors": sources.errors()})

    @api.get("/ui/api/price", include_in_schema=False)
    async def price(request: Request, model: str, upstream: str | None = None) -> Response:
        allow(request, data=True)
        known, text = sources.price(model[:256], upstream or None)
        return json_response({"model": model[:256], "known": known, "text": text})

    @api.get("/ui/api/models", include_in_schema=False)
    async def models(request: Request) -> Response:
        allow(request, data=True)
        return json_response({"models": sources.models()})
