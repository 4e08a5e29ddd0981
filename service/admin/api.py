"""The proxy's own HTTP API: health, readiness, ``/metrics`` and the admin API (``/admin``).

``GET /healthz`` is liveness; ``GET /readyz`` readiness (503 with the problems, and
``degraded`` for those that leave the proxy serving); ``GET /metrics`` the registry, in the
Prometheus text format or OpenMetrics when asked. With ``metrics_key`` configured,
``/metrics`` needs ``authorization: Bearer <metrics_key>`` (401 otherwise): it shows
projects, models, budgets and spend.

``/docs`` (Swagger UI, with the schema inside the page) and ``/openapi.json`` exist only
for a request that brings the admin key; otherwise, and always without ``admin_key``, they
are 404. No path redirects (``redirect_slashes`` off): a redirect would be built from the
caller's ``Host``.

The admin API is off unless ``admin_key`` is configured: then every ``/admin`` path answers
404, as if it did not exist. With it, a request must bring the key in ``authorization:
Bearer <key>`` or ``x-spendgate-admin-key``, compared in constant time; otherwise 401.
Routes:

* ``GET /admin/budgets``: every budget with its current window's spend, reserved amount
  (calls in flight), limit, ratio, window, reset time and action
  (``BudgetManager.budgets_view``).
* ``GET /admin/spend?group_by=project,model&window=day``: spend from the ledger in the
  current UTC ``window`` (day, week, month, total), grouped by any of upstream, project,
  model, key (``BudgetManager.spend_view``); ``&format=csv`` gives it as CSV.

``GET /`` says where the console is; the console (``/ui``) is ``console.py``.

Store reads run in a worker thread; a failing store gives 503 for ``/admin/spend`` and the
last known values (``store.ok: false``) for ``/admin/budgets``.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable
from typing import Any

import orjson
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from spendgate import __version__
from spendgate.admin.console import ConsoleSources, install_console, spend_response
from spendgate.budgets.manager import BudgetManager
from spendgate.budgets.store import StoreError


def _bearer(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    return auth[7:].strip() if auth[:7].lower() == "bearer " else None


def _presented_key(request: Request) -> str | None:
    return request.headers.get("x-spendgate-admin-key") or _bearer(request)


def _matches(presented: str | None, key: str) -> bool:
    """Constant time: how much of a key matched is not told by how long it took."""
    return hmac.compare_digest((presented or "").encode(), key.encode())


def install_admin(api: FastAPI, admin_key: Callable[[], str | None],
                  budgeting: Callable[[], BudgetManager]) -> None:
    """Add the ``/admin`` routes; ``admin_key`` is read per request (it may be reloaded)."""

    def authorize(request: Request) -> None:
        key = admin_key()
        if key is None:
            raise HTTPException(404, "Not Found")
        if not _matches(_presented_key(request), key):
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
                          window: str = "day", format: str = "json") -> Response:
        authorize(request)
        groups = [g.strip() for g in group_by.split(",") if g.strip()]
        try:
            view = await asyncio.to_thread(budgeting().spend_view, groups, window)
        except ValueError as error:
            raise HTTPException(400, str(error)) from None
        except StoreError as error:
            raise HTTPException(503, f"budget store unavailable: {error}") from None
        return spend_response(view, format)

    def documents(request: Request) -> None:
        """The API's own description is for operators only: 404 to anyone else."""
        key = admin_key()
        if key is None or not _matches(_presented_key(request), key):
            raise HTTPException(404, "Not Found")

    @api.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request) -> Response:
        documents(request)
        return json_response(api.openapi())

    @api.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> Response:
        documents(request)
        # The schema travels in the page: the browser's own fetch of /openapi.json would
        # not carry the key.
        return get_swagger_ui_html(openapi_url="/openapi.json", title="spendgate API",
                                   swagger_ui_parameters={"spec": api.openapi()})


def build_api(registry: CollectorRegistry, flush: Callable[[float], bool],
              problems: Callable[[], list[str]], degraded: Callable[[], list[str]],
              admin_key: Callable[[], str | None],
              budgeting: Callable[[], BudgetManager],
              metrics_key: Callable[[], str | None],
              console: ConsoleSources | None = None) -> FastAPI:
    """The FastAPI app behind the proxy. ``flush(timeout_s)`` waits for the record pipeline
    (a scrape shows every call that ended before it); ``problems`` fail readiness,
    ``degraded`` only report; ``admin_key``, ``budgeting`` and ``metrics_key`` are read per
    request (reload)."""
    api = FastAPI(title="spendgate", version=__version__,
                  description="Health, metrics and admin API of the spendgate proxy. "
                  "LLM calls go to /{upstream}/{path}, outside this API.",
                  docs_url=None, redoc_url=None, openapi_url=None, redirect_slashes=False)

    @api.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz() -> Response:
        failing = problems()
        body = {"status": "ready" if not failing else "not ready", "problems": failing,
                "degraded": degraded()}
        return Response(orjson.dumps(body), status_code=503 if failing else 200,
                        media_type="application/json")

    @api.get("/metrics")
    async def metrics(request: Request) -> Response:
        key = metrics_key()
        if key is not None and not _matches(_bearer(request), key):
            raise HTTPException(401, "a valid metrics key is required (authorization: "
                                "Bearer <metrics_key>)", headers={"www-authenticate": "Bearer"})
        await asyncio.to_thread(flush, 2.0)
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        # Off the loop: the budget collector reads the shared ledger (bounded, cached).
        output = await asyncio.to_thread(encoder, registry)
        return Response(output, media_type=content_type)

    @api.get("/", include_in_schema=False)
    async def root() -> Response:
        return Response(b"spendgate: the console is at /ui\n", media_type="text/plain")

    install_admin(api, admin_key, budgeting)
    if console is not None:
        install_console(api, admin_key,
                        lambda request, key: _matches(_presented_key(request), key),
                        budgeting, console)
    return api
