"""The ASGI application: the raw proxy in front, FastAPI behind it for everything else.

``/{upstream}/...`` goes straight to ``ProxyApp`` (no FastAPI routing, middleware or
``StreamingResponse`` on the hot path); the reserved first segments (``metrics``,
``healthz``, ``readyz``, ``admin``, ``docs``, ``openapi.json``) go to a FastAPI app. The
lifespan is handled here: the upstream client is created inside the running loop, the
record pipeline's thread is started, and both are closed (queue drained) at shutdown.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from exporters.base import RecordSink
from exporters.prometheus import PrometheusSink
from service import __version__
from service.config import RESERVED_NAMES, Config
from service.pipeline import RecordBuilder, RecordPipeline
from service.pricing import Price, PriceCatalog
from service.providers import PROVIDERS
from service.proxy import ProxyApp, Receive, Scope, Send
from service.tokens import TokenEstimator
from service.upstream import UpstreamClient

log = logging.getLogger("spendgate")


def build_catalog(config: Config) -> PriceCatalog:
    def price(spec: Any) -> Price:
        return Price(input=spec.input_per_mtok, output=spec.output_per_mtok,
                     cached_input=spec.cached_input_per_mtok,
                     cache_write=spec.cache_write_per_mtok)

    return PriceCatalog.load(
        config.pricing.catalog,
        overrides={model: price(spec) for model, spec in config.pricing.overrides.items()},
        upstream_defaults={name: price(up.pricing) for name, up in config.upstreams.items()
                           if up.pricing is not None})


class Spendgate:
    """The whole service for one process. Build, then serve with any ASGI server."""

    def __init__(self, config: Config, registry: CollectorRegistry | None = None,
                 extra_sinks: list[RecordSink] | None = None) -> None:
        self.config = config
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = PrometheusSink(self.registry, config.metrics.label_limit)
        self.catalog = build_catalog(config)
        builder = RecordBuilder(PROVIDERS, self.catalog, TokenEstimator())
        sinks: list[RecordSink] = [self.metrics, *(extra_sinks or [])]
        self.pipeline = RecordPipeline(builder, sinks, on_sink_error=self._count_sink_error)
        self.proxy = ProxyApp(config, self.pipeline, self.metrics.in_flight.labels)
        self.api = self._build_api()

    def _count_sink_error(self, sink: str) -> None:
        self.metrics.sink_errors.labels(sink).inc()

    def _build_api(self) -> FastAPI:
        api = FastAPI(title="spendgate", version=__version__,
                      description="Health, metrics and admin API of the spendgate proxy. "
                      "LLM calls go to /{upstream}/{path}, outside this API.")

        @api.get("/healthz")
        async def healthz() -> dict[str, str]:
            return {"status": "ok"}

        @api.get("/readyz")
        async def readyz() -> Response:
            problems = self.readiness_problems()
            body = {"status": "ready" if not problems else "not ready", "problems": problems}
            return Response(orjson.dumps(body), status_code=503 if problems else 200,
                            media_type="application/json")

        @api.get("/metrics")
        async def metrics(request: Request) -> Response:
            # A scrape shows every call that ended before it: wait for the pipeline briefly.
            await asyncio.to_thread(self.pipeline.flush, 2.0)
            encoder, content_type = choose_encoder(request.headers.get("accept", ""))
            return Response(encoder(self.registry), media_type=content_type)

        return api

    def readiness_problems(self) -> list[str]:
        problems = []
        if self.proxy.client is None:
            problems.append("upstream client not started")
        if not self.pipeline.running:
            problems.append("record pipeline not running")
        return problems

    async def startup(self) -> None:
        self.proxy.client = UpstreamClient()
        self.pipeline.start()
        # Everything loaded so far (tokenizer tables, pydantic, FastAPI) lives as long as the
        # process: keep it out of the cyclic GC, whose full passes would otherwise add
        # milliseconds to whichever call they interrupt.
        gc.collect()
        gc.freeze()

    async def shutdown(self) -> None:
        if self.proxy.client is not None:
            await self.proxy.client.close()
            self.proxy.client = None
        self.pipeline.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path: str = scope["path"]
            end = path.find("/", 1)
            first = path[1:end] if end > 0 else path[1:]
            if first in RESERVED_NAMES or not first:
                await self.api(scope, receive, send)
            else:
                await self.proxy(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        else:  # websocket: no LLM API here uses it
            await self.api(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as error:
                    log.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(error)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return
