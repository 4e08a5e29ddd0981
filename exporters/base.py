"""The sink interface, shaped like OpenTelemetry's ``SpanExporter``.

A sink receives batches of immutable ``UsageRecord`` objects from the record pipeline's
single worker thread, so ``export`` is never called concurrently with itself. ``export`` may
raise: the pipeline logs the failure, counts it in ``spendgate_sink_errors_total{sink}`` and
carries on with the next sink; one failing sink never fails a call or another sink.
``force_flush`` and then ``shutdown`` are called once, after the last ``export``; both do
nothing unless a sink buffers or holds something (a file, an SDK provider).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from spendgate.records import UsageRecord


class RecordSink(ABC):
    """Base of every sink. ``name`` labels its failures in ``spendgate_sink_errors_total``."""

    name: str
    # Whether the sink also gets ``charge_only`` records: costs with no call behind them (a
    # self-hosted GPU's idle intervals). Cost sinks take them; sinks that describe calls not.
    takes_charges: bool = False

    @abstractmethod
    def export(self, records: Sequence[UsageRecord]) -> None:
        """Take one batch, in the order the calls were handed over."""

    def force_flush(self, timeout_s: float = 30.0) -> bool:
        """Push out anything buffered; True when it all went (or there was nothing)."""
        return True

    def shutdown(self) -> None:
        """Release what the sink holds; no ``export`` follows."""
        return None
