"""The composition root: every object of one proxy process, built with what it needs.

``Spendgate`` is the ASGI application. ``/{upstream}/...`` goes straight to the hot path's
``ProxyApp`` (no FastAPI routing, middleware or ``StreamingResponse`` on the hot path); the
reserved first segments (``metrics``, ``healthz``, ``readyz``, ``admin``, ``docs``,
``openapi.json``) go to the FastAPI app of ``admin.api``. Both answer only the ``Host``
names of ``server.allowed_hosts`` (421 otherwise: the proxy checks its own calls, this
module the admin and docs paths), except ``/healthz``, ``/readyz`` and ``/metrics``, which
probes and Prometheus reach by pod IP. Construction wires, in order:
prices, telemetry (which decides exemplars and trace propagation), the Prometheus sink,
budgets, rate limits (in the budgets' store), the record pipeline with its sinks in a fixed
order (metrics, ledger, limits, telemetry, extras), the upstream client and the proxy. The
lifespan starts the pipeline's thread and the budget threads, and closes them (queue
drained, last records settled) at shutdown.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import threading
from collections.abc import Sequence
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter

from spendgate.accounting.batches import BatchBook
from spendgate.accounting.builder import RecordBuilder
from spendgate.accounting.describe import describe_price
from spendgate.accounting.gpu import GpuCosts
from spendgate.accounting.pipeline import RecordPipeline
from spendgate.accounting.pricing import Price, PriceCatalog
from spendgate.accounting.tokens import TokenEstimator
from spendgate.admin.api import build_api
from spendgate.admin.console import ConsoleSources
from spendgate.asgi import Receive, Scope, Send
from spendgate.budgets.manager import BudgetManager
from spendgate.config import RESERVED_NAMES, Config, load_config
from spendgate.config import allowed_hosts as resolve_allowed_hosts
from spendgate.errors import ConfigError
from spendgate.exporters.access_log import AccessLogSink
from spendgate.exporters.base import RecordSink
from spendgate.exporters.host_metrics import HostRegistry
from spendgate.exporters.prometheus import PrometheusSink
from spendgate.exporters.recent import RecentCalls
from spendgate.hotpath.attribution import KeyRing
from spendgate.hotpath.exposure import HostAllowList, OriginAllowList
from spendgate.hotpath.proxy import ProxyApp
from spendgate.limits.book import LimitBook, window_seconds
from spendgate.limits.gate import RateLimiter
from spendgate.limits.sink import LimitSink
from spendgate.providers import PROVIDERS
from spendgate.reconcile.job import ReconcileJob, build_sources
from spendgate.telemetry import build_telemetry
from spendgate.upstream.client import UpstreamClient

log = logging.getLogger("spendgate")

# Served whatever the Host: kubelet probes and Prometheus scrapes address pods by IP.
HOST_EXEMPT = frozenset({"healthz", "readyz", "metrics"})
_MISDIRECTED = orjson.dumps({"detail": "this proxy does not serve that Host name: list it "
                                       "in server.allowed_hosts"})


def build_catalog(config: Config) -> PriceCatalog:
    def price(spec: Any, what: str) -> Price:
        return Price.from_row(spec.model_dump(exclude_none=True), what)

    return PriceCatalog.load(
        config.pricing.catalog,
        overrides={model: price(spec, model) for model, spec in config.pricing.overrides.items()},
        upstream_defaults={name: price(up.pricing, name) for name, up in config.upstreams.items()
                           if up.pricing is not None},
        multipliers={name: up.price_multiplier for name, up in config.upstreams.items()
                     if up.price_multiplier is not None})


class Spendgate:
    """The whole service for one process. Build, then serve with any ASGI server.

    ``allowed_hosts``: the ``Host`` names served, as ``config.allowed_hosts`` resolved them
    for the address the server binds (default: resolved for ``server.host``; raises
    ``ConfigError`` when that is not loopback and the config names none).
    """

    def __init__(self, config: Config, registry: CollectorRegistry | None = None,
                 extra_sinks: list[RecordSink] | None = None,
                 config_path: str | None = None,
                 allowed_hosts: list[str] | None = None,
                 worker: tuple[int, Sequence[str]] | None = None) -> None:
        self.config = config
        self.config_path = config_path      # what SIGHUP re-reads (``reload``)
        self.hosts = HostAllowList(allowed_hosts if allowed_hosts is not None
                                   else resolve_allowed_hosts(config.server))
        self.registry = registry if registry is not None else CollectorRegistry()
        self.catalog = build_catalog(config)
        # Spans, GenAI convention metrics, usage log; raises ConfigError.
        self.telemetry = build_telemetry(config, self.registry)
        self.metrics = PrometheusSink(self.registry, config.metrics.label_limit,
                                      config.metrics.pair_limit,
                                      exemplars=self.telemetry.tracing,
                                      tag_keys=config.attribution.tag_keys)
        estimator = TokenEstimator()
        self.budgets = BudgetManager(config, self.catalog, self.registry)
        # Rate limits count in the budget store (the ledger's), so replicas share them.
        self.limiter = RateLimiter(LimitBook(config.limits), self.catalog,
                                   lambda: self.budgets.ledger, self.budgets.clock,
                                   config.store.on_error, self.registry, window_seconds())
        self.builder = RecordBuilder(PROVIDERS, self.catalog, estimator,
                                     keep_request=self.telemetry.tracing,
                                     keep_output=self.telemetry.capture_content,
                                     # shared by replicas through the ledger's store, if any
                                     batches=BatchBook(shared=lambda: self.budgets.ledger),
                                     max_decoded=int(config.server.max_decoded_mb * 1024 * 1024))
        self.recent = RecentCalls()     # the console's last calls
        access = ([AccessLogSink(config.server.access_log)]
                  if config.server.access_log != "off" else [])
        sinks: list[RecordSink] = [self.metrics, self.budgets,
                                   LimitSink(lambda: self.budgets.ledger), *self.telemetry.sinks,
                                   self.recent, *access, *(extra_sinks or [])]
        # Self-hosted GPU upstreams: their calls are priced by allocation (accounting/gpu.py).
        self.gpu = GpuCosts.build(config, self.catalog, self.registry)
        self.pipeline = RecordPipeline(self.builder, sinks,
                                       on_sink_error=self.metrics.count_sink_error,
                                       repricer=self.gpu)
        self.client = UpstreamClient()
        self.proxy = ProxyApp(config, self.client, self.pipeline, self.metrics.in_flight.labels,
                              hosts=self.hosts,
                              origins=OriginAllowList(config.server.allowed_origins),
                              gate=self.budgets.proxy_gate(),
                              limiter=self.limiter,
                              propagate=self.telemetry.tracing,
                              sample_new_traces=self.telemetry.sample_new_traces)
        # One of ``serve --workers N``: (this worker's index, every worker's metrics socket).
        self.host_metrics = (HostRegistry(self.registry, worker[0], worker[1],
                                          self.flush) if worker is not None else None)
        self.api = build_api(self.host_metrics or self.registry, self.flush,
                             self.readiness_problems,
                             self.degraded, lambda: self.config.admin_key, lambda: self.budgets,
                             lambda: self.config.metrics_key,
                             ConsoleSources(self.recent.snapshot, self.metrics.errors_by_kind,
                                            self._price, self._models))
        sources = build_sources(config)
        # Admin-API reconciliation (reconcile/): a thread of its own, never on a call's path.
        self.reconcile = (ReconcileJob(sources, self.budgets.history, config.reconcile,
                                       self.registry) if sources else None)
        # SIGHUP reloads by result: a rejected one (a bad config or keys_file) keeps the
        # running config, so it is counted where an alert can see it, not only logged.
        self.reloads = Counter("spendgate_config_reloads", "Config reloads (SIGHUP) by result: "
                               "applied, or rejected (the running config stays).",
                               ("result",), registry=self.registry)
        for result in ("applied", "rejected"):  # both series from the start, at 0
            self.reloads.labels(result)
        self._reload_lock = threading.Lock()
        self._reloads: set[asyncio.Task[bool]] = set()
        self.draining = False     # SIGTERM received: /readyz fails while calls finish

    def flush(self, timeout_s: float) -> bool:
        """Wait until every call that ended before has reached every sink, and its spend
        the budget store (a scrape's barrier). Blocking: call off the event loop."""
        done = self.pipeline.flush(timeout_s)
        self.budgets.settle_now()
        return done

    def start_draining(self) -> None:
        """The server is shutting down (``hotpath.server.DrainingServer``): not ready."""
        self.draining = True

    def _price(self, model: str, upstream: str | None) -> tuple[bool, str]:
        """The console's price lookup: (known, ``spendgate prices MODEL`` text)."""
        catalog = self.catalog
        return (catalog.resolve(model, upstream=upstream) is not None,
                describe_price(catalog, model, upstream=upstream))

    def _models(self) -> list[str]:
        return sorted(self.catalog.entries)

    def readiness_problems(self) -> list[str]:
        problems = []
        if self.draining:
            problems.append("draining: shutting down, calls in flight are finishing")
        if self.client.closed:
            problems.append("upstream client closed")
        if not self.pipeline.running:
            problems.append("record pipeline not running")
        store = self.budgets.problem()
        if store is not None and self.config.store.on_error == "closed":
            problems.append(store)  # calls under block budgets are being refused
        return problems

    def degraded(self) -> list[str]:
        """Problems that leave the proxy serving (a failing store with ``on_error: open``)."""
        store = self.budgets.problem()
        return [store] if store is not None and self.config.store.on_error == "open" else []

    async def startup(self) -> None:
        self.pipeline.start()
        if self.host_metrics is not None:
            self.host_metrics.start()
        await self.budgets.start()
        if self.reconcile is not None:
            self.reconcile.start()
        self._handle_sighup(True)
        log.info("%s", self.telemetry.summary)
        for problem in self.config.key_warnings():
            log.warning("%s", problem)
        # Everything loaded so far (tokenizer tables, pydantic, FastAPI) lives as long as the
        # process: keep it out of the cyclic GC, whose full passes would otherwise add
        # milliseconds to whichever call they interrupt.
        gc.collect()
        gc.freeze()

    async def shutdown(self) -> None:
        await self.client.close()
        self._handle_sighup(False)
        self.pipeline.close()
        if self.reconcile is not None:
            await asyncio.to_thread(self.reconcile.close)
        await self.budgets.close()  # after the pipeline: its last records are settled
        if self.host_metrics is not None:
            self.host_metrics.close()

    def reload(self, config: Config | None = None) -> bool:
        """Apply a new config's budgets, rate limits, keys, prices, alerts, admin and metrics
        keys; True if applied.

        ``config`` defaults to re-reading ``config_path``. A config that does not load (or
        whose catalog or store cannot be opened) is rejected with its problems logged, and the
        running one stays. Each part is swapped as a whole object, so a call in flight sees
        the old or the new, never a mix, and keeps the reservation it made. Other sections
        (upstreams, server, store, telemetry, metrics) need a restart; changes to them are
        logged and ignored. Blocking (file and catalog loads): call off the event loop.
        """
        with self._reload_lock:
            if config is None and self.config_path is None:
                log.warning("reload: no config file to re-read (started without --config)")
                return False
            try:
                new = config if config is not None else load_config(self.config_path)
                catalog = build_catalog(new)
                applied = ("keys", "keys_file", "pricing", "budgets", "limits", "alerts",
                           "admin_key", "metrics_key")
                merged = self.config.model_copy(update={f: getattr(new, f) for f in applied})
                self.budgets.update(merged, catalog)
            except ConfigError as error:
                log.error("reload rejected, the running config stays:\n%s",
                          "\n".join(error.problems))
                self.reloads.labels("rejected").inc()
                return False
            except (OSError, ValueError) as error:
                log.error("reload rejected, the running config stays: pricing.catalog: %s",
                          error)
                self.reloads.labels("rejected").inc()
                return False
            self.catalog = catalog
            self.builder.use_catalog(catalog)
            self.limiter.update(LimitBook(merged.limits), catalog)
            self.proxy.reconfigure(KeyRing(merged.keys), self.budgets.proxy_gate())
            ignored = [f for f in type(new).model_fields
                       if f not in applied and getattr(new, f) != getattr(self.config, f)]
            self.config = merged
            log.warning("config reloaded: %d budgets, %d limits, %d keys%s",
                        len(merged.budgets), len(merged.limits), len(merged.keys or ()),
                        f"; changes to {', '.join(ignored)} need a restart" if ignored else "")
            for problem in merged.key_warnings():
                log.warning("%s", problem)
            self.reloads.labels("applied").inc()
            return True

    def _handle_sighup(self, install: bool) -> None:
        """SIGHUP reloads (uvicorn handles only SIGINT/SIGTERM in a single process)."""
        try:
            loop = asyncio.get_running_loop()
            if install:
                loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
            else:
                loop.remove_signal_handler(signal.SIGHUP)
        except (NotImplementedError, RuntimeError, ValueError, AttributeError):
            pass  # not the main thread (embedded, tests) or no SIGHUP (Windows)

    def _on_sighup(self) -> None:
        task = asyncio.get_running_loop().create_task(asyncio.to_thread(self.reload))
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path: str = scope["path"]
            end = path.find("/", 1)
            first = path[1:end] if end > 0 else path[1:]
            if first in RESERVED_NAMES or not first:
                if first in HOST_EXEMPT or self.hosts.allows(_host(scope)):
                    await self.api(scope, receive, send)
                else:
                    await _misdirected(send)
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


def _host(scope: Scope) -> bytes | None:
    for name, value in scope["headers"]:
        if name == b"host":
            return value  # type: ignore[no-any-return]
    return None


async def _misdirected(send: Send) -> None:
    await send({"type": "http.response.start", "status": 421,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(_MISDIRECTED)).encode())]})
    await send({"type": "http.response.body", "body": _MISDIRECTED})
