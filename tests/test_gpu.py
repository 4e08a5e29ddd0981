"""Self-hosted GPU cost per token (``upstreams.X.gpu``, ``accounting/gpu.py``).

The allocator with a fake clock (exact splits, idle intervals, the hourly bill over a
window), then real proxies in front of a fake OpenAI-compatible server: the allocated cost
in ``/metrics``, the usage log and the budgets; a fake vLLM ``/metrics`` for traffic that
bypasses the proxy.
"""

from __future__ import annotations

import random
import subprocess
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from spendgate.accounting.gpu import BYPASS, IDLE, SOURCE, GpuCosts, apportion
from spendgate.accounting.gpu_server import read_tokens
from spendgate.app import build_catalog
from spendgate.config import parse_config
from spendgate.money import NANO
from spendgate.records import UsageRecord
from spendgate.usage import Usage
from tests.conftest import ProxyProcess, spendgate_command
from tests.fake_upstream import FakeUpstream, Reply, fixture
from tests.otlp_receiver import OTLPReceiver
from tests.threaded_app import ThreadedApp

ADMIN = "gpu-admin-key"


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def costs(gpu: dict[str, Any], clock: FakeClock,
          registry: CollectorRegistry | None = None) -> GpuCosts:
    config = parse_config({"upstreams": {"local": {"url": "http://vllm:8000", "gpu": gpu}}})
    built = GpuCosts.build(config, build_catalog(config), registry or CollectorRegistry(), clock)
    assert built is not None
    return built


def call(project: str, prompt: int, generated: int, upstream: str = "local") -> UsageRecord:
    return UsageRecord(
        start_unix=0.0, upstream=upstream, provider="vllm", protocol="openai", operation="chat",
        model="llama3.1:8b", response_model=None, project=project, user=None,
        virtual_key=None, status=200, stream=False, metered=True,
        usage=Usage(input=prompt, output=generated), cost_usd=Decimal(0), priced=False,
        price_source=None, duration_s=0.1, ttft_s=None, tpot_s=None, overhead_s=0.0,
        error_type=None, client_closed=False, response_id=None, finish_reasons=(),
        service_tier=None, request_id=None, max_tokens=None)


def nano(records: list[UsageRecord]) -> int:
    return sum(int(r.cost_usd * NANO) for r in records)


# 2.49 USD/h x 8 GPUs = 19.92 USD/h; an interval of 60 s costs 19.92 / 60 = 0.332 USD.
GPU = {"hourly_usd": 2.49, "count": 8, "interval_s": 60}
INTERVAL_NANO = 332_000_000


def test_two_projects_split_an_interval_by_weighted_tokens_exactly() -> None:
    clock = FakeClock()
    gpu = costs(GPU, clock)
    # Default weights input 1, output 4: a = 600 + 4 x 100 = 1000, b = 1000 + 4 x 500 = 3000.
    assert gpu.take([call("a", 600, 100), call("b", 1000, 500)]) == []
    clock.now += 59.999
    assert gpu.due() == []                      # the interval has not closed: still held
    clock.now += 0.001
    out = gpu.due()
    by_project = {r.project: r for r in out}
    assert set(by_project) == {"a", "b"}        # no idle, no bypass
    assert by_project["a"].cost_usd == Decimal("0.083")   # 0.332 x 1000 / 4000
    assert by_project["b"].cost_usd == Decimal("0.249")   # 0.332 x 3000 / 4000
    assert all(r.price_source == SOURCE and r.priced for r in out)


def test_intervals_without_calls_are_charged_to_idle() -> None:
    clock = FakeClock()
    registry = CollectorRegistry()
    gpu = costs(GPU, clock, registry)
    clock.now += 180                            # three empty intervals
    out = gpu.due()
    assert [(r.project, r.model, r.charge_only, int(r.cost_usd * NANO)) for r in out] == [
        (IDLE, IDLE, True, INTERVAL_NANO)] * 3
    assert registry.get_sample_value("spendgate_gpu_cost_usd_total",
                                     {"upstream": "local", "kind": "idle"}) == 3 * 0.332
    assert registry.get_sample_value("spendgate_gpu_cost_usd_total",
                                     {"upstream": "local", "kind": "allocated"}) == 0


def test_spend_over_an_hour_is_the_hourly_bill_exactly() -> None:
    clock = FakeClock()
    gpu = costs(GPU, clock)
    rng = random.Random(7)
    out: list[UsageRecord] = []
    for _ in range(60):                         # one hour of 60-second intervals
        if rng.random() < 0.7:                  # some intervals idle, others uneven splits
            out += gpu.take([call(rng.choice("abc"), rng.randint(1, 5000),
                                  rng.randint(0, 900)) for _ in range(rng.randint(1, 9))])
        clock.now += 60
        out += gpu.due()
    assert any(r.project == IDLE for r in out) and any(r.project != IDLE for r in out)
    assert nano(out) == 19_920_000_000           # 2.49 x 8 x 1 h = 19.92 USD, to the nano


def test_a_rate_that_is_not_whole_nano_dollars_per_interval_carries_the_remainder() -> None:
    clock = FakeClock()
    # 1 USD/h over 7 s intervals = 1e9 x 7 / 3600 = 1,944,444.44... nano-dollars each.
    gpu = costs({"hourly_usd": 1, "count": 1, "interval_s": 7}, clock)
    out = []
    for _ in range(36):
        out += gpu.take([call("a", 10, 1), call("b", 20, 3)])
        clock.now += 7
        out += gpu.due()
    assert nano(out) == 70_000_000              # 36 x 7 = 252 s = 0.07 h x 1 USD


def test_effective_price_is_realised_over_the_last_hour() -> None:
    clock = FakeClock()
    registry = CollectorRegistry()
    gpu = costs(GPU, clock, registry)
    # One call alone in its interval: 1000 input, 250 output, weights 1 and 4: its $0.332
    # splits 1000 / 2000 to input and 1000 / 2000 to output: $0.166 per 1000 input tokens
    # = $166 per Mtok, $0.166 per 250 output tokens = $664 per Mtok.
    gpu.take([call("a", 1000, 250)])
    clock.now += 60
    gpu.due()
    labels = {"upstream": "local", "model": "llama3.1:8b"}
    price = "spendgate_effective_price_usd_per_mtok"
    assert registry.get_sample_value(price, {**labels, "type": "input"}) == pytest.approx(166)
    assert registry.get_sample_value(price, {**labels, "type": "output"}) == pytest.approx(664)
    clock.now += 3601                           # over an hour later, with no call since
    gpu.due()
    assert registry.get_sample_value(price, {**labels, "type": "input"}) is None


def test_apportion_sums_to_the_total_by_largest_remainder() -> None:
    from fractions import Fraction
    total = 100
    parts = [Fraction(100, 3)] * 3             # 33.33 each
    assert apportion(total, parts) == [34, 33, 33]
    assert sum(apportion(7, [Fraction(7 * w, 6) for w in (1, 2, 3)])) == 7


def test_shutdown_closes_the_partial_interval_prorated() -> None:
    clock = FakeClock()
    gpu = costs(GPU, clock)
    gpu.take([call("a", 100, 10)])
    clock.now += 15                             # a quarter of an interval
    out = gpu.drain()
    assert [(r.project, int(r.cost_usd * NANO)) for r in out] == [("a", INTERVAL_NANO // 4)]


# ---- real proxies ---------------------------------------------------------------------

def chat(proxy: ProxyProcess, project: str) -> None:
    client = openai.OpenAI(base_url=proxy.url + "/local/v1", api_key="none", max_retries=0,
                           default_headers={"x-spendgate-project": project})
    client.chat.completions.create(model="llama3.1:8b",
                                   messages=[{"role": "user", "content": "Hi"}])


def gpu_config(fake: FakeUpstream, workdir: Path, **gpu: Any) -> dict[str, Any]:
    # 36 USD/h: one second costs exactly $0.01.
    return {
        "upstreams": {"local": {"url": fake.url, "provider": "openai",
                                "gpu": {"hourly_usd": 36, "count": 1, "interval_s": 1,
                                        "compare_to": "gpt-4o-mini", **gpu}}},
        "admin_key": ADMIN,
        "store": {"url": f"sqlite:///{workdir}/ledger.sqlite3"},
        "budgets": [{"name": "gpu", "upstream": "local", "limit_usd": 1000, "window": "day"}],
        "telemetry": {"usage_log": {"path": str(workdir / "usage.jsonl")}},
    }


def test_allocated_cost_is_the_calls_cost_everywhere(upstream: FakeUpstream,
                                                      tmp_path: Path) -> None:
    cfg = gpu_config(upstream, tmp_path)
    cfg["budgets"] = [{"name": "search", "project": "search", "limit_usd": 1000,
                       "window": "day"}]
    proxy = ProxyProcess(cfg, tmp_path).start()
    try:
        for project in ("search", "support", "search"):
            upstream.queue(Reply(body=fixture("openai_chat_response.json")))
            chat(proxy, project)
        time.sleep(2.5)                          # the calls' intervals have closed
        search = proxy.eventually("spendgate_cost_usd_total", upstream="local",
                                  project="search")
        deadline = time.monotonic() + 5
        while True:
            view = httpx.get(proxy.url + "/admin/budgets",
                             headers={"authorization": f"Bearer {ADMIN}"}).json()
            if view["budgets"][0]["spend_usd"] or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    finally:
        proxy.stop()
    log = [orjson.loads(line) for line in (tmp_path / "usage.jsonl").read_bytes().splitlines()]
    assert [line["project"] for line in log] == ["search", "support", "search"]  # no (idle)
    assert {line["price_source"] for line in log} == {SOURCE}
    logged = sum(Decimal(line["cost_usd"]) for line in log if line["project"] == "search")
    # Each call weighs 1236 + 4 x 201 = 2040: a share of an interval's $0.01 (all of it when
    # alone in its interval, a half or a third when it shared it).
    assert Decimal("0.0033") < logged <= Decimal("0.02")
    assert search == pytest.approx(float(logged))               # /metrics
    assert view["budgets"][0]["spend_usd"] == pytest.approx(float(logged))   # the ledger


def test_allocated_cost_metrics_add_up_to_the_bill(upstream: FakeUpstream, spawn: Any,
                                                    tmp_path: Path) -> None:
    proxy = spawn(gpu_config(upstream, tmp_path))
    for project in ("search", "support"):
        upstream.queue(Reply(body=fixture("openai_chat_response.json")))
        chat(proxy, project)
    time.sleep(2.5)
    text = proxy.metrics_text()
    samples = {}
    from prometheus_client.parser import text_string_to_metric_families
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    gpu_total = sum(v for labels, v in samples["spendgate_gpu_cost_usd_total"])
    cost_total = sum(v for labels, v in samples["spendgate_cost_usd_total"]
                     if labels["upstream"] == "local")
    # Every closed interval costs $0.01, all of it allocated or idle, and all of it in
    # spendgate_cost_usd_total (calls, and (idle)).
    assert gpu_total == pytest.approx(cost_total)
    assert gpu_total / 0.01 == pytest.approx(round(gpu_total / 0.01))
    projects = {labels["project"] for labels, _ in samples["spendgate_cost_usd_total"]}
    assert {"search", "support", IDLE} <= projects
    equivalent = {labels["project"]: v for labels, v in
                  samples["spendgate_api_equivalent_cost_usd_total"]}
    assert equivalent == {"search": pytest.approx(0.0002196),   # see the test above
                          "support": pytest.approx(0.0002196)}
    prices = {labels["type"]: v for labels, v in
              samples["spendgate_effective_price_usd_per_mtok"]}
    assert set(prices) == {"input", "output"}
    # An output token weighs 4 input tokens, so it is charged 4 times the price.
    assert prices["output"] == pytest.approx(4 * prices["input"])


class FakeVLLM(ThreadedApp):
    """vLLM's /metrics: counters that the test moves (tokens served to anyone); or, given
    ``text``, that page as it is (TGI's, llama.cpp's)."""

    def __init__(self, text: str | None = None) -> None:
        super().__init__()
        self.prompt = 0
        self.generated = 0
        self.text = text

    def make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        return app

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.text is not None:
            return web.Response(text=self.text, content_type="text/plain")
        text = (
            "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.\n"
            "# TYPE vllm:prompt_tokens_total counter\n"
            f'vllm:prompt_tokens_total{{model_name="llama3.1:8b"}} {self.prompt}.0\n'
            "# HELP vllm:generation_tokens_total Number of generation tokens processed.\n"
            "# TYPE vllm:generation_tokens_total counter\n"
            f'vllm:generation_tokens_total{{model_name="llama3.1:8b"}} {self.generated}.0\n')
        return web.Response(text=text, content_type="text/plain")


def test_traffic_bypassing_the_proxy_takes_its_share(upstream: FakeUpstream,
                                                      tmp_path: Path) -> None:
    vllm = FakeVLLM().start()
    cfg = gpu_config(upstream, tmp_path, interval_s=2, metrics_url=vllm.url + "/metrics")
    proxy = ProxyProcess(cfg, tmp_path).start()
    try:
        time.sleep(2.5)                          # the first reading: a baseline
        upstream.queue(Reply(body=fixture("openai_chat_response.json")))
        chat(proxy, "search")
        # The server served the proxy's call (1236 + 201) and three times as much weighted
        # work to clients that bypass the proxy: 3 x 1236 prompt, 3 x 201 generated.
        vllm.prompt += 4 * 1236
        vllm.generated += 4 * 201
        search = proxy.eventually("spendgate_cost_usd_total", timeout_s=8, upstream="local",
                                  project="search")
        bypass = proxy.eventually("spendgate_cost_usd_total", timeout_s=8, upstream="local",
                                  project=BYPASS)
    finally:
        proxy.stop()
        vllm.stop()
    # One interval of 2 s costs $0.02: the proxy's call weighs 2040 of 4 x 2040, so it
    # carries $0.005 and the bypassing traffic $0.015.
    assert search == pytest.approx(0.005)
    assert bypass == pytest.approx(0.015)


def test_the_span_carries_the_allocated_cost_and_its_source(upstream: FakeUpstream,
                                                           tmp_path: Path) -> None:
    receiver = OTLPReceiver().start()
    proxy = ProxyProcess(gpu_config(upstream, tmp_path), tmp_path,
                         env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
                              "OTEL_BSP_SCHEDULE_DELAY": "50"}).start()
    try:
        upstream.queue(Reply(body=fixture("openai_chat_response.json")))
        client = openai.OpenAI(base_url=proxy.url + "/local/v1", api_key="none",
                               max_retries=0)
        client.chat.completions.create(model="llama3.1:8b", extra_headers={
            "x-request-id": "gpu-span"}, messages=[{"role": "user", "content": "Hi"}])
        span = receiver.span("gpu-span")
    finally:
        proxy.stop()
        receiver.stop()
    log = [orjson.loads(line) for line in (tmp_path / "usage.jsonl").read_bytes().splitlines()]
    assert span.attributes["spendgate.price.source"] == SOURCE
    # Alone in its interval, the call carries the whole $0.01 (36 USD/h x 1 s).
    assert span.attributes["spendgate.cost_usd"] == float(Decimal(log[0]["cost_usd"])) == 0.01


def test_gpu_config_defaults_and_an_unknown_compare_to(tmp_path: Path) -> None:
    config = parse_config({"upstreams": {"local": {"url": "http://vllm:8000",
                                                   "gpu": {"hourly_usd": "2.49"}}}})
    gpu = config.upstreams["local"].gpu
    assert gpu is not None
    assert (gpu.hourly_usd, gpu.count, gpu.interval_s) == (Decimal("2.49"), 1, 60)
    assert (gpu.weights.input, gpu.weights.output) == (1, 4)
    assert gpu.metrics_url is None and gpu.compare_to is None
    path = tmp_path / "c.yaml"
    path.write_text("upstreams:\n  local: {url: 'http://vllm:8000', gpu: {hourly_usd: 2, "
                    "compare_to: no-such-model}}\n")
    result = subprocess.run(spendgate_command("check-config", str(path)), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1
    assert result.stdout.strip() == ("upstreams.local.gpu.compare_to: 'no-such-model' is not "
                                     "in the price catalog")


TGI_METRICS = """# HELP tgi_request_input_length Input token count per request
# TYPE tgi_request_input_length histogram
tgi_request_input_length_bucket{le="1000"} 2
tgi_request_input_length_bucket{le="+Inf"} 3
tgi_request_input_length_sum 4321
tgi_request_input_length_count 3
# HELP tgi_request_generated_tokens Generated tokens per request
# TYPE tgi_request_generated_tokens histogram
tgi_request_generated_tokens_bucket{le="1000"} 3
tgi_request_generated_tokens_bucket{le="+Inf"} 3
tgi_request_generated_tokens_sum 765
tgi_request_generated_tokens_count 3
"""
LLAMA_CPP_METRICS = """# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 4321
# HELP llamacpp:tokens_predicted_total Number of generation tokens processed.
# TYPE llamacpp:tokens_predicted_total counter
llamacpp:tokens_predicted_total 765
# HELP llamacpp:requests_processing Number of requests processing.
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 0
"""


@pytest.mark.parametrize("text", [TGI_METRICS, LLAMA_CPP_METRICS], ids=["tgi", "llama.cpp"])
def test_tgi_and_llama_cpp_counters_are_read(text: str) -> None:
    server = FakeVLLM(text).start()
    try:
        assert read_tokens(server.url + "/metrics", 2.0) == (4321, 765)
        server.text = "# TYPE other_total counter\nother_total 1\n"
        with pytest.raises(ValueError, match=r"no vLLM, TGI or llama\.cpp token counters"):
            read_tokens(server.url + "/metrics", 2.0)
    finally:
        server.stop()
