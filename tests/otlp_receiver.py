"""A real OTLP/HTTP receiver for tests: ``POST /v1/traces`` and ``/v1/metrics``, protobuf.

``OTLPReceiver`` runs an aiohttp server on 127.0.0.1 in its own thread, as a collector would
listen, keeps every request's raw body (to grep for secrets) and decodes it with
``opentelemetry-proto`` into ``ExportTraceServiceRequest`` / ``ExportMetricsServiceRequest``.
Helpers flatten spans (``Span`` with attributes as a dict) and metric points for assertions.
"""

from __future__ import annotations

import gzip
import threading
import time
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanProto

from tests.threaded_app import ThreadedApp


def value_of(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return tuple(value_of(v) for v in value.array_value.values)
    if kind == "kvlist_value":
        return {kv.key: value_of(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind) if kind else None


def attributes_of(items: Any) -> dict[str, Any]:
    return {kv.key: value_of(kv.value) for kv in items}


@dataclass
class Span:
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str
    trace_state: str
    start_ns: int
    end_ns: int
    status_code: int
    attributes: dict[str, Any]
    resource: dict[str, Any]
    scope: str

    @property
    def is_client(self) -> bool:
        return self.kind == SpanProto.SPAN_KIND_CLIENT


@dataclass
class Point:
    """One histogram data point of an exported metric."""

    metric: str
    unit: str
    attributes: dict[str, Any]
    count: int
    sum: float
    bounds: tuple[float, ...]


class SpanReader(ABC):
    """Span queries over the trace export requests a receiver recorded, whatever the
    transport (``OTLPReceiver`` here, ``OTLPGrpcReceiver`` in ``tests/otlp_grpc_receiver.py``).
    ``trace_requests`` must be safe to call from the test's thread while exports arrive."""

    @abstractmethod
    def trace_requests(self) -> list[ExportTraceServiceRequest]:
        """Every trace export received so far, in order."""

    def spans(self) -> list[Span]:
        out = []
        for request in self.trace_requests():
            for resource_spans in request.resource_spans:
                resource = attributes_of(resource_spans.resource.attributes)
                for scope_spans in resource_spans.scope_spans:
                    for s in scope_spans.spans:
                        out.append(Span(
                            s.name, s.kind, s.trace_id.hex(), s.span_id.hex(),
                            s.parent_span_id.hex(), s.trace_state, s.start_time_unix_nano,
                            s.end_time_unix_nano, s.status.code, attributes_of(s.attributes),
                            resource, scope_spans.scope.name))
        return out

    def wait_for(self, find: Callable[[], Any], timeout_s: float = 10.0) -> Any:
        """Poll ``find`` until it returns something truthy (the export is asynchronous)."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = find()
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def span(self, request_id: str, timeout_s: float = 10.0) -> Span:
        """The span of the call with ``x-request-id: request_id``."""
        def find() -> list[Span]:
            return [s for s in self.spans()
                    if s.attributes.get("spendgate.request_id") == request_id]
        found = self.wait_for(find, timeout_s)
        assert found, f"no span for request {request_id}; spans: {[s.name for s in self.spans()]}"
        assert len(found) == 1, found
        return found[0]  # type: ignore[no-any-return]


class OTLPReceiver(ThreadedApp, SpanReader):
    def __init__(self) -> None:
        super().__init__()
        self.raw: list[tuple[str, bytes]] = []     # (path, decompressed body)
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self.raw.clear()
            self.headers.clear()

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 ** 2)
        app.router.add_post("/v1/traces", self._traces)
        app.router.add_post("/v1/metrics", self._metrics)
        return app

    async def _body(self, request: web.Request) -> bytes:
        body = await request.read()
        encoding = request.headers.get("content-encoding", "")
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        with self._lock:
            self.raw.append((request.path, body))
            self.headers.append(dict(request.headers))
        return body

    async def _traces(self, request: web.Request) -> web.Response:
        ExportTraceServiceRequest.FromString(await self._body(request))  # must decode
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    async def _metrics(self, request: web.Request) -> web.Response:
        ExportMetricsServiceRequest.FromString(await self._body(request))
        return web.Response(body=ExportMetricsServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    # ---- reading what arrived --------------------------------------------------------------

    def _bodies(self, path: str) -> list[bytes]:
        with self._lock:
            return [body for p, body in self.raw if p == path]

    def all_bytes(self) -> bytes:
        with self._lock:
            return b"".join(body for _, body in self.raw)

    def trace_requests(self) -> list[ExportTraceServiceRequest]:
        return [ExportTraceServiceRequest.FromString(b) for b in self._bodies("/v1/traces")]

    def points(self, metric: str) -> list[Point]:
        """Histogram points of ``metric`` from the latest export that has it (cumulative)."""
        for body in reversed(self._bodies("/v1/metrics")):
            request = ExportMetricsServiceRequest.FromString(body)
            found = [
                Point(m.name, m.unit, attributes_of(p.attributes), p.count, p.sum,
                      tuple(p.explicit_bounds))
                for rm in request.resource_metrics for sm in rm.scope_metrics
                for m in sm.metrics if m.name == metric for p in m.histogram.data_points]
            if found:
                return found
        return []
