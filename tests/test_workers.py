"""``spendgate serve --workers N``: several processes on one port, metrics exact for the host.

A real supervisor with two workers in front of the fake provider: 1,000 calls, each on its
own connection (so the kernel spreads them over both workers), then ``/metrics``, scraped
from whichever worker accepts the scrape, shows exactly 1,000 calls and their exact cost;
SIGHUP reloads every worker and SIGTERM stops them all.
"""

from __future__ import annotations

import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.budget_helpers import budget_config, chat_body, chat_reply, wait_for
from tests.conftest import ProxyProcess
from tests.fake_upstream import FakeUpstream

CALLS = 1000
JSON = {"content-type": "application/json", "connection": "close"}


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def scrape(proxy: ProxyProcess) -> dict[str, Any]:
    text = httpx.get(proxy.url + "/metrics", headers={"connection": "close"}, timeout=10).text
    out: dict[str, Any] = {"requests": 0.0, "cost": 0.0, "workers": set()}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "spendgate_requests_total":
                out["requests"] += s.value
            elif s.name == "spendgate_cost_usd_total":
                out["cost"] += s.value
            elif s.name == "spendgate_in_flight_requests":
                out["workers"].add(s.labels["worker"])
    return out


def test_two_workers_share_the_port_and_metrics_add_up_exactly(
        spawn: Any, upstream: FakeUpstream) -> None:
    proxy: ProxyProcess = spawn(budget_config(upstream, [], server={"workers": 2}))
    assert proxy.proc is not None
    workers = wait_for(lambda: len(children(proxy.proc.pid)) == 2 and children(proxy.proc.pid))
    assert len(workers) == 2
    upstream.queue(*[chat_reply(100) for _ in range(CALLS)])  # $0.10 each
    lock = threading.Lock()
    statuses: list[int] = []

    def call(_: int) -> None:
        r = httpx.post(proxy.url + "/openai/v1/chat/completions", content=chat_body(100),
                       headers=JSON, timeout=30)
        with lock:
            statuses.append(r.status_code)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(call, range(CALLS)))
    assert statuses == [200] * CALLS
    for _ in range(6):  # any worker may take the scrape: each answers for the host
        seen = scrape(proxy)
        assert seen["requests"] == CALLS
        assert seen["cost"] == pytest.approx(CALLS * 0.1, abs=1e-9)
        assert seen["workers"] == {"0", "1"}  # both served calls

    # SIGHUP: every worker reloads (a new override price shows in each one's answers).
    config = yaml.safe_load(proxy.config_path.read_text())
    config["pricing"]["overrides"]["budget-model"]["output_per_mtok"] = 2000
    proxy.config_path.write_text(yaml.safe_dump(config))
    proxy.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: proxy.log().count("config reloaded") == 2)
    upstream.queue(*[chat_reply(100) for _ in range(40)])
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(call, range(40)))
    assert scrape(proxy)["cost"] == pytest.approx(CALLS * 0.1 + 40 * 0.2, abs=1e-9)

    # SIGTERM: all workers drain and exit, then the supervisor.
    proxy.proc.send_signal(signal.SIGTERM)
    proxy.proc.wait(30)
    assert all(not Path(f"/proc/{pid}").exists() for pid in workers)
