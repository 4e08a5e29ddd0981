"""``/metrics`` for a whole host when ``spendgate serve --workers N`` runs N processes.

Each worker serves a snapshot of its own registry on a private Unix socket (``serve``:
one thread, one connection at a time; the snapshot is taken after the worker's record
pipeline caught up, so it counts every call that ended before it was asked). The worker
Prometheus scrapes (any of them: they share one port) answers with ``HostRegistry``: its
own families merged with every peer's snapshot:

* counters, histograms and summaries are **summed** per label set (histograms share their
  buckets: same code, same buckets), so ``spendgate_requests_total`` and
  ``spendgate_cost_usd_total`` are the host's totals;
* gauges read from the shared budget store (``spendgate_budget_*``) are the same in every
  worker: the scraped worker's values are served once;
* every other gauge (``spendgate_in_flight_requests``) is **per worker**, with a ``worker``
  label (sum them for the host).

No files per metric (no ``PROMETHEUS_MULTIPROC_DIR``): snapshots travel as JSON over the
sockets, in about a millisecond per worker. A peer that does not answer within
``PEER_TIMEOUT_S`` (restarting) is left out of that scrape and logged.

Thread-safety: ``collect`` may run in any thread (``/metrics`` encodes off the event loop);
the snapshot server runs in its own daemon thread. Lifetime: ``start`` once, ``close`` once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import socketserver
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Metric

log = logging.getLogger("spendgate.workers")
PEER_TIMEOUT_S = 2.0
SUMMED = frozenset({"counter", "histogram", "summary", "gaugehistogram"})
SHARED_GAUGE_PREFIX = "spendgate_budget_"

Family = tuple[str, str, str, list[tuple[str, dict[str, str], float]]]  # name, type, doc, samples


def snapshot(registry: CollectorRegistry) -> list[Family]:
    return [(m.name, m.type, m.documentation,
             [(s.name, dict(s.labels), float(s.value)) for s in m.samples])
            for m in registry.collect()]


def merge(own: list[Family], own_worker: int, peers: Sequence[tuple[int, list[Family]]]
          ) -> list[Metric]:
    """The host's families (module docstring), in the order the scraped worker has them."""
    order: list[str] = []
    kinds: dict[str, tuple[str, str]] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for worker, families in [(own_worker, own), *peers]:
        for name, kind, doc, samples in families:
            if name not in kinds:
                kinds[name] = (kind, doc)
                order.append(name)
                values[name] = {}
            shared = kind == "gauge" and name.startswith(SHARED_GAUGE_PREFIX)
            if shared and worker != own_worker:
                continue
            merged = values[name]
            for sample, labels, value in samples:
                if kind not in SUMMED and not shared:
                    labels = {**labels, "worker": str(worker)}
                key = (sample, tuple(sorted(labels.items())))
                merged[key] = merged.get(key, 0.0) + value if kind in SUMMED else value
    out = []
    for name in order:
        kind, doc = kinds[name]
        metric = Metric(name, doc, kind)
        for (sample, pairs), value in values[name].items():
            metric.add_sample(sample, dict(pairs), value)
        out.append(metric)
    return out


class HostRegistry(CollectorRegistry):
    """What ``/metrics`` encodes in worker ``index`` of a host: every worker's metrics."""

    def __init__(self, registry: CollectorRegistry, index: int, paths: Sequence[str],
                 flush: Callable[[float], bool]) -> None:
        super().__init__(auto_describe=False)
        self._registry = registry
        self._index = index
        self._paths = list(paths)
        self._flush = flush
        self._server: socketserver.UnixStreamServer | None = None
        self._thread: threading.Thread | None = None

    def collect(self) -> Iterable[Metric]:
        peers = []
        for worker, path in enumerate(self._paths):
            if worker != self._index:
                families = _fetch(path)
                if families is not None:
                    peers.append((worker, families))
        return merge(snapshot(self._registry), self._index, peers)

    def start(self) -> None:
        registry, flush = self._registry, self._flush

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                flush(PEER_TIMEOUT_S / 2)
                self.request.sendall(orjson.dumps(snapshot(registry)))

        path = self._paths[self._index]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # left by this worker's previous life
        self._server = socketserver.UnixStreamServer(path, Handler)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="spendgate-worker-metrics", daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            with contextlib.suppress(OSError):
                os.unlink(self._paths[self._index])


def _fetch(path: str) -> list[Family] | None:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(PEER_TIMEOUT_S)
            sock.connect(path)
            chunks = []
            while chunk := sock.recv(1 << 16):
                chunks.append(chunk)
        data: Any = orjson.loads(b"".join(chunks))
    except (OSError, orjson.JSONDecodeError) as error:
        log.warning("metrics of the worker at %s left out of this scrape: %s", path, error)
        return None
    return [(name, kind, doc, [(s, dict(labels), float(v)) for s, labels, v in samples])
            for name, kind, doc, samples in data]
