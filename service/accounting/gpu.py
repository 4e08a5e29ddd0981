"""Self-hosted GPU cost, priced per token: a pricing source driven by the clock.

An upstream with ``gpu: {hourly_usd, count, interval_s, weights: {input, output}}`` costs
``hourly_usd x count`` an hour whether or not it serves anything. ``GpuAllocator`` cuts
that bill into intervals of ``interval_s`` from the moment the proxy starts, and when an
interval closes splits its cost among the calls recorded in it, in proportion to their
weighted tokens ``input x weights.input + output x weights.output``. Defaults 1 and 4:
prefill reads a whole prompt in one batched pass, while decode produces one token per
sequence per pass, bound by memory bandwidth; a generated token costs several prompt tokens
of GPU time, and the APIs price it alike (gpt-4o-mini, claude: output = 4-5 x input).

* An interval with no weighted tokens is charged to project ``(idle)`` (model ``(idle)``).
* With ``gpu.metrics_url`` the server's own counters (``gpu_server.py``) give the tokens it
  served in the interval, the proxy's and those of traffic that bypasses it: the proxy's
  calls carry only their share, the rest is charged to project ``(bypass)``.
* Money is integer nano-dollars: interval k ends with ``floor(rate x k x interval_s)``
  charged in all, rate = hourly_usd x count / 3600 in exact fractions, so the sum over any
  run of whole intervals is the bill, exact to below one nano-dollar (exactly the bill
  whenever that is a whole number of nano-dollars: $2.49 x 8 GPUs over 60 s is $0.332). An
  interval's nano-dollars are apportioned by largest remainder: the shares add up to it.

When the cost reaches a call: its record is held (``GpuCosts.take``) until its interval
closes, then goes to every sink with the allocated cost (``price_source`` ``gpu_allocation``):
``spendgate_cost_usd_total``, the ledger and budgets, the usage log, spans. So a
self-hosted call's record, span and spend appear up to ``interval_s`` (plus up to a second)
after the call ends. Budgets reserve on the catalog's or the upstream's ``pricing`` price
(an estimate: set one) and settle on the allocated cost. ``(idle)`` and ``(bypass)`` are
``charge_only`` records: cost sinks count them, call sinks (requests, latency, spans, usage
log) do not. Each proxy process allocates its GPUs' whole bill: run one replica per GPU
upstream, or give each its share in ``count``.

Thread-safety: used from the record pipeline's one thread (metrics are read by scrapes).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from decimal import Decimal
from fractions import Fraction

from prometheus_client import CollectorRegistry

from spendgate.accounting.gpu_metrics import GpuMetrics
from spendgate.accounting.gpu_server import ServerCounter
from spendgate.accounting.pricing import Price, PriceCatalog
from spendgate.config import Config, GpuConfig
from spendgate.errors import ConfigError
from spendgate.labels import LabelCap, PairCap
from spendgate.money import NANO, from_nano
from spendgate.records import UsageRecord
from spendgate.usage import Usage

log = logging.getLogger("spendgate.gpu")
SOURCE = "gpu_allocation"
IDLE = "(idle)"
BYPASS = "(bypass)"
Clock = Callable[[], float]


def apportion(total: int, parts: Sequence[Fraction]) -> list[int]:
    """Whole shares of ``total`` in proportion to ``parts`` (which add up to ``total``):
    floors, then one more to the largest remainders, first come first. Sums to ``total``."""
    shares = [math.floor(p) for p in parts]
    order = sorted(range(len(parts)), key=lambda i: -(parts[i] - shares[i]))
    for i in order[:total - sum(shares)]:
        shares[i] += 1
    return shares


class GpuAllocator:
    """One upstream's GPU bill, interval by interval, from ``start``."""

    def __init__(self, upstream: str, provider: str, gpu: GpuConfig, start: float,
                 server: ServerCounter | None = None,
                 compare_to: Price | None = None) -> None:
        self.upstream = upstream
        self.provider = provider
        self.interval_s = gpu.interval_s
        self.start = start
        self.rate = Fraction(gpu.hourly_usd) * gpu.count * NANO / 3600   # nano-dollars / s
        self.w_in, self.w_out = Fraction(gpu.weights.input), Fraction(gpu.weights.output)
        self.server = server
        self.compare_to = compare_to
        self.closed = 0           # whole intervals closed
        self.charged = 0          # nano-dollars charged so far
        self._held: list[UsageRecord] = []

    @property
    def next_end(self) -> float:
        return self.start + (self.closed + 1) * self.interval_s

    def hold(self, record: UsageRecord) -> None:
        self._held.append(record)

    def weight(self, record: UsageRecord) -> Fraction:
        if not record.metered:
            return Fraction(0)
        return self.w_in * (record.usage.input or 0) + self.w_out * (record.usage.output or 0)

    def close(self, elapsed: Fraction, served: tuple[int, int] | None,
              ) -> tuple[list[UsageRecord], int, int, int]:
        """Close the interval ending ``elapsed`` seconds after ``start``, with the tokens the
        server reported serving in it (``None``: unknown). Returns the held records
        repriced, and the nano-dollars (allocated, idle, bypass) of the interval."""
        total = math.floor(self.rate * elapsed)
        cost, self.charged = total - self.charged, total
        records, self._held = self._held, []
        weights = [self.weight(r) for r in records]
        ours = sum(weights, Fraction(0))
        denominator = ours
        if served is not None:
            denominator = max(ours, self.w_in * served[0] + self.w_out * served[1])
        if denominator == 0:
            return [self._priced(r, 0) for r in records], 0, cost, 0
        shares = apportion(cost, [cost * w / denominator for w in weights]
                           + [cost * (denominator - ours) / denominator])
        bypass = shares.pop()
        return ([self._priced(r, n) for r, n in zip(records, shares, strict=True)],
                cost, 0, bypass)

    def _priced(self, record: UsageRecord, nano: int) -> UsageRecord:
        return replace(record, cost_usd=from_nano(nano), priced=True,
                       price_source=SOURCE if record.metered else record.price_source)

    def charge(self, project: str, nano: int, when: float) -> UsageRecord:
        """A cost no call carries (an idle interval, bypassing traffic), as a record."""
        return UsageRecord(
            start_unix=when, upstream=self.upstream, provider=self.provider, protocol="openai",
            operation="gpu_interval", model=project, response_model=None, project=project,
            user=None, virtual_key=None, status=0, stream=False, metered=True, usage=Usage(),
            cost_usd=from_nano(nano), priced=True, price_source=SOURCE, duration_s=0.0,
            ttft_s=None, tpot_s=None, overhead_s=0.0, error_type=None, client_closed=False,
            response_id=None, finish_reasons=(), service_tier=None, request_id=None,
            max_tokens=None, charge_only=True)


class GpuCosts:
    """Every GPU upstream's allocator: the record pipeline's repricer.

    ``take(records)`` keeps the records of GPU upstreams and returns the others;
    ``due()`` closes the intervals the clock has passed and returns their records,
    repriced, plus the ``(idle)`` / ``(bypass)`` charges; ``wait_s()`` is how long the
    pipeline may sleep before the next interval closes; ``drain()`` (shutdown) closes the
    current, partial interval of each at the time it is called (to the millisecond).
    """

    def __init__(self, allocators: dict[str, GpuAllocator], metrics: GpuMetrics,
                 clock: Clock, label_limit: int = 200, pair_limit: int = 1000) -> None:
        self.allocators = allocators
        self.metrics = metrics
        self.clock = clock
        self._project = LabelCap(label_limit)
        self._model = LabelCap(label_limit)
        self._pairs = PairCap(pair_limit)

    @classmethod
    def build(cls, config: Config, catalog: PriceCatalog, registry: CollectorRegistry,
              clock: Clock = time.time) -> GpuCosts | None:
        """The GPU upstreams of ``config``, or None when there are none. Raises
        ``ConfigError`` for a ``compare_to`` model the catalog does not know."""
        gpus = {name: up for name, up in config.upstreams.items() if up.gpu is not None}
        if not gpus:
            return None
        now = clock()
        allocators: dict[str, GpuAllocator] = {}
        for name, up in gpus.items():
            gpu = up.gpu
            assert gpu is not None
            compare = None
            if gpu.compare_to is not None:
                resolved = catalog.resolve(gpu.compare_to)
                if resolved is None:
                    raise ConfigError([f"upstreams.{name}.gpu.compare_to: {gpu.compare_to!r} "
                                       "is not in the price catalog"])
                compare = resolved.price
            server = ServerCounter(gpu.metrics_url) if gpu.metrics_url else None
            allocators[name] = GpuAllocator(name, up.provider_name or up.provider, gpu, now,
                                            server, compare)
        metrics = GpuMetrics(registry, sorted(gpus),
                             sorted(n for n, up in gpus.items() if up.gpu and up.gpu.metrics_url),
                             any(a.compare_to is not None for a in allocators.values()), clock)
        return cls(allocators, metrics, clock, config.metrics.label_limit,
                   config.metrics.pair_limit)

    def take(self, records: Sequence[UsageRecord]) -> list[UsageRecord]:
        passed = []
        for record in records:
            allocator = self.allocators.get(record.upstream)
            if allocator is None:
                passed.append(record)
            else:
                allocator.hold(record)
        return passed

    def wait_s(self) -> float:
        return min(a.next_end for a in self.allocators.values()) - self.clock()

    def due(self) -> list[UsageRecord]:
        now = self.clock()
        out: list[UsageRecord] = []
        for allocator in self.allocators.values():
            while now >= allocator.next_end:
                end = allocator.next_end
                out += self._close(allocator, Fraction((allocator.closed + 1)
                                                       * allocator.interval_s), end)
                allocator.closed += 1
        return out

    def drain(self) -> list[UsageRecord]:
        now = self.clock()
        out = self.due()
        for allocator in self.allocators.values():
            ms = Fraction(round((now - allocator.start) * 1000), 1000)
            out += self._close(allocator, max(ms, Fraction(allocator.closed
                                                           * allocator.interval_s)), now)
        return out

    def _close(self, allocator: GpuAllocator, elapsed: Fraction, end: float
               ) -> list[UsageRecord]:
        served = None
        if allocator.server is not None:
            try:
                served = allocator.server.interval()
            except (OSError, ValueError) as error:
                self.metrics.scrape_errors.labels(allocator.upstream).inc()
                log.warning("gpu %s: cannot read %s (%s); this interval is shared among the "
                            "proxy's calls only", allocator.upstream, allocator.server.url,
                            error)
        records, allocated, idle, bypass = allocator.close(elapsed, served)
        cost = self.metrics.cost
        cost.add((allocator.upstream, "allocated"), from_nano(allocated))
        cost.add((allocator.upstream, "idle"), from_nano(idle))
        if idle:
            records.append(allocator.charge(IDLE, idle, end))
        if bypass:
            records.append(allocator.charge(BYPASS, bypass, end))
        for record in records:
            if not record.charge_only:
                self._observe(allocator, record, end)
        return records

    def _observe(self, allocator: GpuAllocator, record: UsageRecord, end: float) -> None:
        weight = allocator.weight(record)
        if not weight:
            return
        model = self._model(record.model)
        project, model = self._pairs(self._project(record.project), model)
        nano = Fraction(record.cost_usd * NANO)
        tokens_in, tokens_out = record.usage.input or 0, record.usage.output or 0
        part_in = nano * allocator.w_in * tokens_in / weight
        price = self.metrics.price
        if tokens_in:
            price.add(end, (allocator.upstream, model, "input"), part_in, tokens_in)
        if tokens_out:
            price.add(end, (allocator.upstream, model, "output"), nano - part_in, tokens_out)
        equivalent = self.metrics.api_equivalent
        if equivalent is not None and allocator.compare_to is not None:
            equivalent.add((allocator.upstream, model, project),
                           allocator.compare_to.cost(record.usage) or Decimal(0))
