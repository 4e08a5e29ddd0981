"""The sink interface, shaped like OpenTelemetry's ``SpanExporter``.

A sink receives batches of immutable ``UsageRecord`` objects from the record pipeline's
single worker thread, so ``export`` is never called concurrently with itself. ``export`` may
raise: the pipeline logs the failure, counts it in ``spendgate_sink_errors_total{sink}`` and
carries on with the next sink; one failing sink never fails a call or another sink.
``shutdown`` is called once, after the last ``export``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from service.records import UsageRecord


class RecordSink(Protocol):
    name: str

    def export(self, records: Sequence[UsageRecord]) -> None: ...

    def force_flush(self, timeout_s: float = 30.0) -> bool: ...

    def shutdown(self) -> None: ...
