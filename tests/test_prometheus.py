"""The Prometheus sink on a fresh registry: exact cost sums, label caps, sources."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

from prometheus_client import CollectorRegistry

from spendgate.exporters.prometheus import PrometheusSink
from spendgate.records import UsageRecord
from spendgate.usage import Usage

BASE = UsageRecord(
    start_unix=0.0, upstream="openai", provider="openai", protocol="openai", operation="chat",
    model="gpt-4o-mini", response_model="gpt-4o-mini-2024-07-18", project="p", user=None,
    virtual_key=None, status=200, stream=False, metered=True,
    usage=Usage(input=10, output=3).with_estimates(reasoning=None), cost_usd=Decimal("0.0000033"),
    priced=True, price_source="exact", duration_s=0.5, ttft_s=None, tpot_s=0.1, overhead_s=0.0002,
    error_type=None, client_closed=False, response_id="x", finish_reasons=("stop",),
    service_tier=None, request_id="r", max_tokens=None)


def test_micro_dollar_calls_sum_exactly() -> None:
    registry = CollectorRegistry()
    sink = PrometheusSink(registry)
    sink.export([BASE] * 100_000)
    labels = ("openai", "openai", "gpt-4o-mini", "p")
    assert sink.cost.total(labels) == Decimal("0.33")  # float summing would drift
    assert registry.get_sample_value("spendgate_cost_usd_total", dict(
        upstream="openai", provider="openai", model="gpt-4o-mini", project="p")) == 0.33


def test_sources_and_missing_usage() -> None:
    registry = CollectorRegistry()
    record = replace(BASE, usage=Usage(input=10).with_estimates(output=4))
    PrometheusSink(registry).export([record])
    get = registry.get_sample_value
    common = dict(upstream="openai", provider="openai", model="gpt-4o-mini", project="p")
    assert get("spendgate_tokens_total", {**common, "type": "input", "source": "reported"}) == 10
    assert get("spendgate_tokens_total", {**common, "type": "output", "source": "estimated"}) == 4
    assert get("spendgate_usage_missing_total", dict(upstream="openai", model="gpt-4o-mini",
                                                     project="p")) == 1


def test_label_values_are_capped_into_other() -> None:
    registry = CollectorRegistry()
    sink = PrometheusSink(registry, label_limit=3)
    sink.export([replace(BASE, project=f"p{i}") for i in range(10)])
    values = {s.labels["project"] for m in registry.collect() if m.name == "spendgate_requests"
              for s in m.samples}
    assert values == {"p0", "p1", "p2", "other"}
    assert registry.get_sample_value("spendgate_requests_total", dict(
        upstream="openai", provider="openai", model="gpt-4o-mini", project="other",
        status="200")) == 7


def test_unpriced_and_unmetered() -> None:
    registry = CollectorRegistry()
    sink = PrometheusSink(registry)
    sink.export([replace(BASE, priced=False, cost_usd=Decimal(0), model="mystery"),
                 replace(BASE, metered=False, usage=Usage(), operation="other")])
    assert registry.get_sample_value("spendgate_unpriced_requests_total",
                                     {"model": "mystery"}) == 1
    assert registry.get_sample_value("spendgate_requests_total", dict(
        upstream="openai", provider="openai", model="gpt-4o-mini", project="p",
        status="200")) == 1


def test_long_values_and_pairs_past_the_cap_become_other() -> None:
    registry = CollectorRegistry()
    sink = PrometheusSink(registry, label_limit=10, pair_limit=3)
    sink.export([replace(BASE, project=p, model=m) for p in ("a", "b") for m in ("m1", "m2")])
    sink.export([replace(BASE, project="a", model="x" * 129),
                 replace(BASE, project="y" * 129, model="m1")])
    pairs = {(s.labels["project"], s.labels["model"]): s.value for m in registry.collect()
             if m.name == "spendgate_requests" for s in m.samples
             if s.name == "spendgate_requests_total"}
    # Three pairs admitted; later ones keep their project, their model folds.
    assert pairs == {("a", "m1"): 1, ("a", "m2"): 1, ("b", "m1"): 1, ("b", "other"): 1,
                     ("a", "other"): 1, ("other", "other"): 1}
