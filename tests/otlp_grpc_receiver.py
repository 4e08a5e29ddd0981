"""A real OTLP/gRPC receiver for tests: the collector's ``TraceService`` and
``MetricsService`` on 127.0.0.1, served by ``grpc.server`` from a thread pool.

``OTLPGrpcReceiver`` records every ``ExportTraceServiceRequest`` and
``ExportMetricsServiceRequest`` as gRPC delivered it (already decoded; gRPC handles any
compression), with each call's metadata. Recording and reading take one lock: the server's
worker threads append while the test's thread reads. Span queries (``spans``, ``span``,
``wait_for``) are the HTTP receiver's, from ``tests.otlp_receiver.SpanReader``.

Importing this module needs ``grpcio`` (brought by ``opentelemetry-exporter-otlp-proto-grpc``);
tests import it behind ``need()``.
"""

from __future__ import annotations

import threading
from concurrent import futures
from typing import Any, Self

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.otlp_receiver import SpanReader


class _Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OTLPGrpcReceiver) -> None:
        self._receiver = receiver

    def Export(self, request: ExportTraceServiceRequest,
               context: grpc.ServicerContext) -> ExportTraceServiceResponse:
        self._receiver._record(self._receiver._traces, request, context)
        return ExportTraceServiceResponse()


class _Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, receiver: OTLPGrpcReceiver) -> None:
        self._receiver = receiver

    def Export(self, request: ExportMetricsServiceRequest,
               context: grpc.ServicerContext) -> ExportMetricsServiceResponse:
        self._receiver._record(self._receiver._metrics, request, context)
        return ExportMetricsServiceResponse()


class OTLPGrpcReceiver(SpanReader):
    """Start with ``start()`` (binds a free port), read ``endpoint``, ``stop()`` at the end."""

    def __init__(self) -> None:
        self.port = 0
        self._lock = threading.Lock()
        self._traces: list[ExportTraceServiceRequest] = []
        self._metrics: list[ExportMetricsServiceRequest] = []
        self._metadata: list[dict[str, str]] = []
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Traces(self), self._server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_Metrics(self),
                                                                      self._server)

    @property
    def endpoint(self) -> str:
        """The base URL an exporter is given (``http``: plaintext, as the server listens)."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        # Port 0: the kernel picks a free port, so there is no race with other tests.
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        if not self.port:
            raise RuntimeError("OTLPGrpcReceiver could not bind 127.0.0.1")
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=1).wait(5)

    def _record(self, into: list[Any], request: Any, context: grpc.ServicerContext) -> None:
        metadata = {str(k): str(v) for k, v in context.invocation_metadata()}
        with self._lock:
            into.append(request)
            self._metadata.append(metadata)

    # ---- reading what arrived --------------------------------------------------------------

    def trace_requests(self) -> list[ExportTraceServiceRequest]:
        with self._lock:
            return list(self._traces)

    def metrics_requests(self) -> list[ExportMetricsServiceRequest]:
        with self._lock:
            return list(self._metrics)

    def metadata(self) -> list[dict[str, str]]:
        """The gRPC metadata (headers) of every export call, in arrival order."""
        with self._lock:
            return list(self._metadata)
