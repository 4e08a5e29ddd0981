"""The OTLP metric provider's lifetime as a sink: flushed and shut down with the pipeline.

It exports nothing itself: ``GenAIMetricsSink`` records into the provider's meter, and the
SDK's ``PeriodicExportingMetricReader`` sends the points. Both calls are bounded
(``otel.run_bounded``), so a collector that is down never holds a shutdown.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from spendgate.exporters.base import RecordSink
from spendgate.exporters.otel import FLUSH_BUDGET_S, SHUTDOWN_BUDGET_S, run_bounded
from spendgate.records import UsageRecord


class MeterProviderSink(RecordSink):
    name = "otel_metrics"

    def __init__(self, provider: Any) -> None:
        self._provider = provider   # opentelemetry.sdk.metrics.MeterProvider

    def export(self, records: Sequence[UsageRecord]) -> None:
        return None

    def force_flush(self, timeout_s: float = 30.0) -> bool:
        budget = min(timeout_s, FLUSH_BUDGET_S)
        return run_bounded(lambda: self._provider.force_flush(int(budget * 1000)), budget,
                           "metric export")

    def shutdown(self) -> None:
        run_bounded(lambda: self._provider.shutdown(int(SHUTDOWN_BUDGET_S * 1000)),
                    SHUTDOWN_BUDGET_S, "metric exporter shutdown")
