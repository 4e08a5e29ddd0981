"""From ``CallOutcome`` to ``UsageRecord`` to every sink, off the event loop.

The proxy calls ``RecordPipeline.submit`` once per call, after the caller has its last byte:
a counter increment and one ``SimpleQueue.put``. A single daemon worker thread then has the
``RecordBuilder`` extract usage, estimate what the upstream did not report (tiktoken must not
run on the event loop) and price the call, and hands batches of immutable records to each
sink in turn, in the order given. A sink that raises is logged (once per sink and error
type) and counted; the others still get the batch.

``flush`` waits until everything submitted before it has reached every sink; ``close``
drains the queue, then flushes and shuts the sinks down.

With a ``repricer`` (``accounting.gpu.GpuCosts``: self-hosted GPU upstreams), records of its
upstreams are held until their allocation interval closes and reach the sinks then, with
their allocated cost (``flush`` does not wait for those); the worker wakes up for each
close, and ``close`` closes the current intervals early. ``charge_only`` records go only
to sinks that take them (``RecordSink.takes_charges``). Thread-safety: ``submit`` and
``flush`` from any thread or the loop (the counter is guarded by a lock).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence

from spendgate.accounting.builder import RecordBuilder
from spendgate.accounting.gpu import GpuCosts
from spendgate.exporters.base import RecordSink
from spendgate.records import CallOutcome, UsageRecord

log = logging.getLogger("spendgate.pipeline")
_BATCH = 512
_STOP = object()


class RecordPipeline:
    """Queue plus one worker thread feeding ``sinks``. Start with ``start``; end with ``close``."""

    def __init__(self, builder: RecordBuilder, sinks: Sequence[RecordSink],
                 on_sink_error: Callable[[str], None] | None = None,
                 repricer: GpuCosts | None = None) -> None:
        self.builder = builder
        self.repricer = repricer
        self.sinks = list(sinks)
        self._on_sink_error = on_sink_error
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._submitted = 0
        self._count_lock = threading.Lock()
        self._done = 0
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="spendgate-records", daemon=True)
        self._logged_failures: set[tuple[str, str]] = set()

    def start(self) -> None:
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def submit(self, outcome: CallOutcome) -> None:
        with self._count_lock:
            self._submitted += 1
        self._queue.put(outcome)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every call submitted before this one has reached every sink."""
        with self._count_lock:
            target = self._submitted
        with self._cond:
            return self._cond.wait_for(lambda: self._done >= target, timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout_s)
        for sink in self.sinks:
            try:
                sink.force_flush(timeout_s)
                sink.shutdown()
            except Exception:
                log.exception("sink %s failed to shut down", sink.name)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch: list[CallOutcome] = []
            try:
                item = self._queue.get(timeout=self._wait_s())
            except queue.Empty:  # an allocation interval closes: export what it repriced
                self._process([])
                continue
            while True:
                if item is _STOP:
                    stopping = True
                    break
                assert isinstance(item, CallOutcome)
                batch.append(item)
                if len(batch) >= _BATCH:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch or self.repricer is not None:
                self._process(batch, final=stopping)

    def _wait_s(self) -> float | None:
        if self.repricer is None:
            return None
        return min(max(self.repricer.wait_s(), 0.01), 1.0)

    def _process(self, batch: list[CallOutcome], final: bool = False) -> None:
        records: list[UsageRecord] = []
        for outcome in batch:
            try:
                built = self.builder.build_all(outcome)  # a batch's results: one per line
            except Exception:  # build() falls back on its own; this guards the thread itself
                log.exception("could not record a call to %s", outcome.upstream)
                self._sink_failed("pipeline", "build")
                continue
            for record in built:
                if record.error_type == "record_build_failed":
                    self._sink_failed("pipeline", "build")
                records.append(record)
        if self.repricer is not None:
            try:
                records = self.repricer.take(records)
                records += self.repricer.drain() if final else self.repricer.due()
            except Exception:  # a bug: the held records are lost to it, the thread lives on
                log.exception("gpu cost allocation failed")
                self._sink_failed("pipeline", "gpu")
        calls = [r for r in records if not r.charge_only]
        for sink in self.sinks if records else ():
            try:
                sink.export(records if sink.takes_charges else calls)
            except Exception as error:
                self._sink_failed(sink.name, type(error).__name__, error)
        with self._cond:
            self._done += len(batch)
            self._cond.notify_all()

    def _sink_failed(self, name: str, kind: str, error: BaseException | None = None) -> None:
        if self._on_sink_error is not None:
            self._on_sink_error(name)
        if (name, kind) not in self._logged_failures:
            self._logged_failures.add((name, kind))
            log.error("sink %s failed (%s: %s); counted in spendgate_sink_errors_total, "
                      "further failures of this kind are not logged", name, kind, error)
