"""Every dashboard query against a real Prometheus scraping a real proxy under demo traffic.

``spendgate demo`` runs the simulated providers, the proxy and a traffic generator; a real
Prometheus (Debian's ``prometheus``) scrapes it every second and loads the alert rules. Each
panel query, with Grafana's variables substituted as Grafana would, must be valid PromQL
(the query API accepts it) and at least 80% of them must return data.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest
import yaml

from grafana.panel_queries import (
    iter_panel_queries,
    iter_variable_queries,
    label_values_to_promql,
    substitute_variables,
)
from tests.conftest import ROOT, free_port, need, spendgate_command

PROMETHEUS = shutil.which("prometheus")
WARMUP_S = 30


def _require_prometheus() -> str:
    if PROMETHEUS is None:
        need("needs Prometheus: apt-get install prometheus")
    return PROMETHEUS


def _wait(url: str, proc: subprocess.Popen[bytes], what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited early")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not come up at {url}")


@pytest.fixture(scope="module")
def prometheus_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = _require_prometheus()
    work = tmp_path_factory.mktemp("live")
    proxy_port, prom_port = free_port(), free_port()
    demo = subprocess.Popen(
        spendgate_command("demo", "--port", str(proxy_port), "--duration",
                          str(WARMUP_S + 90), "--rate", "20", "--seed", "7", "--error-rate", "0.1"),
        cwd=work,
        stdout=(work / "demo.log").open("wb"), stderr=subprocess.STDOUT)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ROOT / "grafana/prometheus/alerts.yml")],
        "scrape_configs": [{"job_name": "spendgate",
                            "static_configs": [{"targets": [f"127.0.0.1:{proxy_port}"]}]}],
    }
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    prom = subprocess.Popen(
        [binary, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prom_port}", "--enable-feature=exemplar-storage"],
        stdout=(work / "prometheus.log").open("wb"), stderr=subprocess.STDOUT)
    try:
        _wait(f"http://127.0.0.1:{proxy_port}/healthz", demo, "spendgate demo")
        url = f"http://127.0.0.1:{prom_port}"
        _wait(url + "/-/ready", prom, "prometheus")
        time.sleep(WARMUP_S)  # traffic for rates, quantiles and the rules to see
        yield url
    finally:
        for proc in (prom, demo):
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


def _query(url: str, expr: str) -> list[object]:
    r = httpx.get(url + "/api/v1/query", params={"query": expr}, timeout=10)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", f"{expr}: {body.get('error')}"
    result = body["data"]["result"]
    return result if isinstance(result, list) else [result]


def test_every_panel_query_is_valid_and_most_return_data(prometheus_url: str) -> None:
    assert _query(prometheus_url, 'up{job="spendgate"} == 1'), "Prometheus never scraped spendgate"
    queries = list(iter_panel_queries())
    assert queries
    empty = []
    for q in queries:
        expr = substitute_variables(q.expr, rate_interval="15s", range_="1m")
        if not _query(prometheus_url, expr):
            empty.append(f"{q.dashboard_uid} / {q.panel_title} ({q.ref_id})")
    share = 1 - len(empty) / len(queries)
    print(f"{len(queries) - len(empty)} of {len(queries)} panel queries returned data; "
          f"empty: {empty}")
    assert share >= 0.8, f"only {share:.0%} of panel queries returned data; empty: {empty}"


def test_template_variables_list_values(prometheus_url: str) -> None:
    for uid, name, query in iter_variable_queries():
        if query.startswith("label_values("):
            expr = substitute_variables(label_values_to_promql(query))  # chained variables: All
            assert _query(prometheus_url, expr), (uid, name)


def test_alert_rules_load_and_evaluate(prometheus_url: str) -> None:
    groups = httpx.get(prometheus_url + "/api/v1/rules", timeout=10).json()["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert rules and all(r["health"] == "ok" for r in rules), [
        (r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
