"""Checks of grafana/: dashboards, Prometheus rules, Alertmanager and provisioning.

promtool (Debian package `prometheus`) parses every PromQL query and runs the
alert unit tests; amtool (package `prometheus-alertmanager`) checks the Alertmanager config.
Both are installed by .ci/run; missing, their tests skip locally and fail under CI=true
(``need``), like every other tool.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from grafana import build_dashboards  # noqa: E402
from grafana.panel_queries import (  # noqa: E402
    DASHBOARD_DIR,
    iter_panel_queries,
    iter_panels,
    iter_variable_queries,
    label_values_to_promql,
    load_dashboards,
    substitute_variables,
)
from tests.conftest import ProxyProcess, basic_config, free_port, need  # noqa: E402
from tests.fake_admin import FakeAdminAPI  # noqa: E402
from tests.fake_upstream import FakeUpstream, Reply, fixture  # noqa: E402
from tests.test_proxy import sse_reply  # noqa: E402
from tests.test_reconcile import admin_pages  # noqa: E402

GRAFANA = ROOT / "grafana"
PROM_DIR = GRAFANA / "prometheus"
ALERTS = PROM_DIR / "alerts.yml"

# ------------------------------------------------------------------ metric contract
# What the proxy exports, read from the registries of real ``spendgate serve`` processes:
# traffic that gives every family they declare at least one sample (so its labels are known),
# then ``/metrics`` of each, parsed. Nothing here is hand-copied from the code.
MODEL_MYSTERY = "mystery-1"  # not in the catalog: spendgate_unpriced_requests_total
TRAFFIC_TIMEOUT_S = 10.0


def _drive_main_proxy(proxy: ProxyProcess, fake: FakeUpstream) -> None:
    """Priced calls streamed and not (OpenAI and Anthropic), a web search priced with a
    fallback, an unpriced model, a self-hosted stream without usage, and calls refused by a
    block budget and by a rate limit."""
    project = {"x-spendgate-project": "contract"}
    gpt = openai.OpenAI(base_url=proxy.url + "/openai/v1", api_key="sk-caller", max_retries=0,
                        default_headers=project)
    claude = anthropic.Anthropic(base_url=proxy.url + "/anthropic", api_key="sk-ant-caller",
                                 max_retries=0, default_headers=project)
    local = openai.OpenAI(base_url=proxy.url + "/local/v1", api_key="none", max_retries=0)
    blocked = openai.OpenAI(base_url=proxy.url + "/openai/v1", api_key="sk-caller",
                            max_retries=0, default_headers={"x-spendgate-project": "blocked"})
    claude_model = "claude-sonnet-4-5-20250929"

    fake.queue(Reply(body=fixture("openai_chat_response.json")))
    gpt.chat.completions.create(model="o4-mini", messages=[{"role": "user", "content": "Hi"}])
    fake.queue(sse_reply("openai_chat_stream.sse"))
    for _ in gpt.chat.completions.create(
            model="o4-mini", messages=[{"role": "user", "content": "Hi"}], stream=True):
        pass
    fake.queue(Reply(body=fixture("anthropic_messages_response_cached.json")))
    claude.messages.create(model=claude_model, max_tokens=1024,
                           messages=[{"role": "user", "content": "Hi"}])
    fake.queue(sse_reply("anthropic_messages_stream_cached.sse"))
    with claude.messages.stream(model=claude_model, max_tokens=1024,
                                messages=[{"role": "user", "content": "Hi"}]) as stream:
        stream.until_done()
    fake.queue(Reply(body=b'{"id":"x","model":"%s","choices":[],'
                          b'"usage":{"prompt_tokens":10,"completion_tokens":5}}'
                          % MODEL_MYSTERY.encode()))
    gpt.chat.completions.create(model=MODEL_MYSTERY,
                                messages=[{"role": "user", "content": "Hi"}])
    # A web search on a model without a search price: a tool call and a fee fallback.
    fake.queue(sse_reply("openai_responses_stream_long_context.sse"))
    with gpt.responses.stream(model="gpt-5.4", input="Hi") as responses:
        responses.until_done()
    fake.queue(sse_reply("openai_chat_stream_ollama_no_usage.sse"))  # no usage: estimated
    for _ in local.chat.completions.create(
            model="llama3.1:8b", messages=[{"role": "user", "content": "Hi"}], stream=True):
        pass
    with pytest.raises(openai.RateLimitError):  # worst case over contract-cap's limit
        blocked.chat.completions.create(model="gpt-4o-mini", max_tokens=100,
                                        messages=[{"role": "user", "content": "Hi"}])
    limited = openai.OpenAI(base_url=proxy.url + "/openai/v1", api_key="sk-caller",
                            max_retries=0, default_headers={"x-spendgate-project": "limited"})
    with pytest.raises(openai.RateLimitError):  # its estimate over contract-limit's tokens
        limited.chat.completions.create(model="gpt-4o-mini", max_tokens=100,
                                        messages=[{"role": "user", "content": "Hi"}])


def _drive_store_down_proxy(proxy: ProxyProcess, fake: FakeUpstream) -> None:
    """A call under a block budget whose Redis store is a closed port (``on_error: open``:
    served). Its reservation fails, and so do the budget gauges' reads at each scrape."""
    fake.queue(Reply(body=fixture("openai_chat_response.json")))
    r = httpx.post(proxy.url + "/openai/v1/chat/completions", timeout=10,
                   json={"model": "o4-mini", "max_tokens": 10, "messages": [
                       {"role": "user", "content": "Hi"}]})
    assert r.status_code == 200, r.text


def _reconciling_proxy(spawn: Any, admin: FakeAdminAPI, workdir: Path) -> ProxyProcess:
    """A proxy whose upstreams have admin keys: the reconcile job's metrics, read from the
    literal-shape admin API (``tests/fake_admin.py``) at start; and a self-hosted GPU
    upstream (its server's /metrics unreachable: spendgate_gpu_metrics_errors_total)."""
    proxy: ProxyProcess = spawn({
        "upstreams": {"openai": {"url": admin.url, "provider": "openai",
                                 "admin_key": "sk-admin-contract"},
                      "anthropic": {"url": admin.url, "provider": "anthropic",
                                    "admin_key": "sk-ant-admin-contract"},
                      "gpu": {"url": admin.url, "provider": "openai",
                              "gpu": {"hourly_usd": 2.49, "count": 8, "interval_s": 1,
                                      "compare_to": "gpt-4o-mini",
                                      "metrics_url": f"http://127.0.0.1:{free_port()}/"}}},
        "store": {"url": f"sqlite:///{workdir}/ledger.sqlite3"}})
    local = openai.OpenAI(base_url=proxy.url + "/gpu/v1", api_key="none", max_retries=0)
    local.chat.completions.create(model="llama3.1:8b",
                                  messages=[{"role": "user", "content": "Hi"}])
    return proxy


def _families(proxies: list[ProxyProcess]) -> tuple[dict[str, str], dict[str, set[str]],
                                                    dict[str, set[str]]]:
    """Scrape every proxy: family -> type (every ``# TYPE``), family -> names of the samples
    it had, sample name -> label names (union over samples and proxies)."""
    types: dict[str, str] = {}
    sampled: dict[str, set[str]] = {}
    labels: dict[str, set[str]] = {}
    for proxy in proxies:
        for family in text_string_to_metric_families(proxy.metrics_text()):
            assert types.setdefault(family.name, family.type) == family.type, family.name
            sampled.setdefault(family.name, set())
            for s in family.samples:
                sampled[family.name].add(s.name)
                labels.setdefault(s.name, set()).update(s.labels)
    return types, sampled, labels


@pytest.fixture(scope="module")
def metric_labels(spawn: Any, fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
                  ) -> dict[str, frozenset[str]]:
    """Sample name -> label names, from the ``/metrics`` of real proxies (histograms as
    ``_bucket`` (with ``le``), ``_sum`` and ``_count``). Fails when the registry declares a
    family that got no sample: new metrics need traffic here before they join the contract."""
    fake.replies.clear()
    main = spawn(basic_config(
        fake,
        budgets=[{"name": "contract-cap", "project": "blocked", "limit_usd": "0.000001",
                  "window": "day", "action": "block"}],
        limits=[{"name": "contract-limit", "project": "limited", "tokens_per_minute": 1}],
        telemetry={"usage_log": {"path": "/dev/full"}},  # ENOSPC: spendgate_sink_errors_total
        attribution={"tag_keys": ["feature"]},           # spendgate_tag_*: value "" untagged
    ))
    store_down = spawn(basic_config(
        fake,
        budgets=[{"name": "contract-store", "limit_usd": 100, "action": "block"}],
        store={"url": f"redis://127.0.0.1:{free_port()}/0", "on_error": "open",
               "timeout_s": 0.2},
    ))
    admin = FakeAdminAPI(admin_pages()).start()
    reconciling = _reconciling_proxy(spawn, admin, tmp_path_factory.mktemp("reconcile"))
    proxies = [main, store_down, reconciling]
    try:
        _drive_main_proxy(main, fake)
        _drive_store_down_proxy(store_down, fake)
        # Records are exported off the hot path: scrape until every family has a sample.
        deadline = time.monotonic() + TRAFFIC_TIMEOUT_S
        while True:
            types, sampled, labels = _families(proxies)
            empty = sorted(name for name, names in sampled.items() if not names)
            if not empty or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    finally:
        fake.replies.clear()
        for proxy in proxies:
            proxy.stop()
        admin.stop()
    assert not empty, (
        f"the registry declares families that got no sample: {empty}; add traffic for them "
        "to the metric_labels fixture so their labels are part of the contract")
    for name, kind in types.items():
        if kind == "histogram":
            assert {f"{name}_bucket", f"{name}_sum", f"{name}_count"} <= sampled[name], name
            assert "le" in labels[f"{name}_bucket"], name
    return {name: frozenset(names) for name, names in labels.items()}


@pytest.fixture(scope="module")
def metric_contract(metric_labels: dict[str, frozenset[str]]) -> set[str]:
    return set(metric_labels)


PROMETHEUS_BUILTINS = {"ALERTS"}
FILTER_VARIABLES = ("upstream", "project", "model", "budget")

ALERT_NAMES = {
    "SpendgateBudgetWarning", "SpendgateBudgetExhausted", "SpendgateBudgetForecastExhaustion",
    "SpendgateUpstreamErrorRateHigh", "SpendgateUpstreamLatencyHigh",
    "SpendgateTimeToFirstTokenHigh", "SpendgateUnpricedModel", "SpendgateStoreErrors",
    "SpendgateProviderCostDrift", "SpendgateRateLimited"}

# ------------------------------------------------------------------ PromQL helpers
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool",
             "and", "or", "unless", "offset", "inf", "nan"}
_NAME = r"(?<![\w.$:])([a-zA-Z_:][\w:]*)(?![\w:])"


def metric_names(expr: str) -> set[str]:
    """Names of the series a PromQL expression selects (functions and labels removed)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    return {n for n in re.findall(_NAME + r"(?!\s*\()", e) if n not in _KEYWORDS}


def selectors(expr: str, contract: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(metric, matchers inside {}) for every contract metric the expression selects."""
    return [(m[1], m[2] or "") for m in re.finditer(_NAME + r"\s*(?:\{([^}]*)\})?", expr)
            if m[1] in contract]


def range_windows(expr: str) -> list[tuple[str, str]]:
    """(enclosing function, window) for every `[window]` range selector."""
    found = []
    for m in re.finditer(r"\[([^\]]+)\]", expr):
        depth, i = 0, m.start()
        while i > 0:
            i -= 1
            if expr[i] == ")":
                depth += 1
            elif expr[i] == "(":
                if depth == 0:
                    break
                depth -= 1
        func = re.search(r"(\w+)\s*$", expr[:i])
        found.append((func[1] if func else "", m[1]))
    return found


def test_promql_helpers(metric_labels: dict[str, frozenset[str]]) -> None:
    expr = ('sum by (le) (rate(a_bucket{x=~"$x"}[$__rate_interval])) / '
            "on (b) group_left (c) max(deriv(b_total[1h])) * 2 > scalar(s:t:r) or vector(0)")
    assert metric_names(expr) == {"a_bucket", "b_total", "s:t:r"}
    assert range_windows(expr) == [("rate", "$__rate_interval"), ("deriv", "1h")]
    assert selectors('x + spendgate_cost_usd_total{model="a"}', metric_labels) == [
        ("spendgate_cost_usd_total", 'model="a"')]
    assert substitute_variables('rate(m{u=~"$upstream"}[$__rate_interval]) + ${datasource}'
                                "[$__range]") == 'rate(m{u=~".*"}[1m]) + [1h]'
    assert substitute_variables('m{u=~"${upstream:regex}"}', values={"upstream": "a|b"}) == \
        'm{u=~"a|b"}'
    with pytest.raises(ValueError):
        substitute_variables("rate(m[$__range_ms])")
    assert label_values_to_promql('label_values(m{a=~"$a", b="c"}, d)') == \
        'group by (d) (m{a=~"$a", b="c"})'


# ------------------------------------------------------------------ tools
@pytest.fixture(scope="session")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None and Path("/usr/bin/promtool").exists():
        path = "/usr/bin/promtool"
    if path is None:
        need("promtool not found: apt-get install prometheus")
    return path


def run(*cmd: str | Path, cwd: Path = ROOT) -> str:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{out}"
    return out


# ------------------------------------------------------------------ Prometheus rules
def load_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    assert [g["name"] for g in groups] == ["spendgate"]
    return groups[0]["rules"]


def alert_rules() -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for r in load_rules() if "alert" in r}


def test_promtool_check_rules(promtool: str) -> None:
    run(promtool, "check", "rules", ALERTS)


def test_promtool_unit_tests(promtool: str) -> None:
    out = run(promtool, "test", "rules", "alerts_test.yml", cwd=PROM_DIR)
    assert "SUCCESS" in out


def test_promtool_check_prometheus_config(promtool: str) -> None:
    run(promtool, "check", "config", PROM_DIR / "prometheus.yml")


def test_prometheus_config() -> None:
    cfg = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    assert cfg["rule_files"] == ["alerts.yml"]
    [job] = [j for j in cfg["scrape_configs"] if j["job_name"] == "spendgate"]
    [sd] = job["dns_sd_configs"]  # every compose replica, and the demo proxy
    assert (sd["names"], sd["port"]) == (["spendgate", "spendgate-demo"], 4000)
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert job.get("scrape_interval", cfg["global"]["scrape_interval"]) == "15s"
    targets = cfg["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert targets == ["alertmanager:9093"]


def test_alert_rules_complete() -> None:
    alerts = alert_rules()
    assert set(alerts) == ALERT_NAMES
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}, name
        text = rule["annotations"]["summary"] + rule["annotations"]["description"]
        assert "{{ $value" in text, name
        if name.startswith("SpendgateBudget"):
            assert "{{ $labels.budget }}" in rule["annotations"]["summary"], name
    assert alerts["SpendgateBudgetForecastExhaustion"]["for"] == "15m"
    assert "spendgate_budget_window_reset_timestamp_seconds" in \
        alerts["SpendgateBudgetForecastExhaustion"]["expr"]


def test_thresholds_live_in_recording_rules() -> None:
    """Tunables are the spendgate:alert_threshold:* rules; alerts compare against them."""
    records = {r["record"] for r in load_rules() if "record" in r}
    assert records and all(r.startswith("spendgate:alert_threshold:") for r in records)
    used = set().union(*(metric_names(r["expr"]) for r in alert_rules().values()))
    assert records <= used, f"unused thresholds: {records - used}"


def test_every_alert_has_firing_and_silent_unit_test() -> None:
    cases = [c for t in yaml.safe_load((PROM_DIR / "alerts_test.yml").read_text())["tests"]
             for c in t.get("alert_rule_test", [])]
    for name in ALERT_NAMES:
        mine = [c for c in cases if c["alertname"] == name]
        assert any(c.get("exp_alerts") for c in mine), f"{name}: no case where it fires"
        assert any(not c.get("exp_alerts") for c in mine), f"{name}: no case where it is silent"
        for c in mine:
            for exp in c.get("exp_alerts") or []:
                assert exp["exp_labels"].get("severity"), name
                assert set(exp["exp_annotations"]) == {"summary", "description"}, name


def test_rule_metrics_in_contract(metric_contract: set[str]) -> None:
    rules = load_rules()
    records = {r["record"] for r in rules if "record" in r}
    for rule in rules:
        unknown = metric_names(rule["expr"]) - metric_contract - records
        assert not unknown, f"{rule.get('alert') or rule['record']}: unknown metrics {unknown}"


# ------------------------------------------------------------------ Alertmanager
AM_CONFIG = GRAFANA / "alertmanager" / "alertmanager.yml"


def test_alertmanager_routes() -> None:
    cfg = yaml.safe_load(AM_CONFIG.read_text())
    receivers = {r["name"]: r for r in cfg["receivers"]}
    assert cfg["route"]["receiver"] in receivers
    [budget_route] = [r for r in cfg["route"]["routes"]
                      if 'alertname=~"SpendgateBudget.*"' in r.get("matchers", [])]
    hook = receivers[budget_route["receiver"]]["webhook_configs"][0]
    assert hook["url"] == "http://spendgate-webhook-sink:8080/alerts"


def test_amtool_check_config() -> None:
    amtool = shutil.which("amtool")
    if amtool is None:
        need("amtool not found: apt-get install prometheus-alertmanager")
    run(amtool, "check-config", AM_CONFIG)
    route = [amtool, "config", "routes", "test", f"--config.file={AM_CONFIG}"]
    assert run(*route, "alertname=SpendgateBudgetWarning", "budget=a").split()[0] == \
        "spendgate-budgets"
    assert run(*route, "alertname=SpendgateStoreErrors").split()[0] == "spendgate-default"


# ------------------------------------------------------------------ provisioning
def test_datasource_provisioning() -> None:
    cfg = yaml.safe_load((GRAFANA / "provisioning/datasources/datasources.yaml").read_text())
    ds = {d["uid"]: d for d in cfg["datasources"]}
    prom, tempo = ds["prometheus"], ds["tempo"]
    assert (prom["type"], prom["url"]) == ("prometheus", "http://prometheus:9090")
    assert (tempo["type"], tempo["url"]) == ("tempo", "http://tempo:3200")
    assert {"name": "trace_id", "datasourceUid": "tempo"} in \
        prom["jsonData"]["exemplarTraceIdDestinations"]


def test_dashboard_provisioning() -> None:
    cfg = yaml.safe_load((GRAFANA / "provisioning/dashboards/dashboards.yaml").read_text())
    [provider] = cfg["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


# ------------------------------------------------------------------ dashboards
DASHBOARDS = load_dashboards()
QUERIES = list(iter_panel_queries())


def dashboard_by_uid(uid: str) -> dict[str, Any]:
    return next(d for d in DASHBOARDS.values() if d["uid"] == uid)


def variables(dash: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dash["templating"]["list"]}


def test_dashboards_match_generator() -> None:
    built = build_dashboards.build()
    assert set(built) == set(DASHBOARDS) == {
        "spendgate-overview.json", "spendgate-budgets.json", "spendgate-upstreams.json"}
    for name, dash in built.items():
        assert (DASHBOARD_DIR / name).read_text() == build_dashboards.render(dash), (
            f"{name} is stale: run python -m grafana.build_dashboards")


def test_dashboard_ids_unique() -> None:
    uids = [d["uid"] for d in DASHBOARDS.values()]
    assert len(uids) == len(set(uids))
    for dash in DASHBOARDS.values():
        assert dash["schemaVersion"] >= 39
        ids = [p["id"] for p in iter_panels(dash)]
        assert len(ids) == len(set(ids)), dash["uid"]
        refs = [(p["id"], t["refId"]) for p in iter_panels(dash) for t in p.get("targets", [])]
        assert len(refs) == len(set(refs)), dash["uid"]


def _datasource_refs(node: Any) -> list[Any]:
    if isinstance(node, list):
        return [r for item in node for r in _datasource_refs(item)]
    if isinstance(node, dict):
        here = [node["datasource"]] if "datasource" in node else []
        return here + [r for k, v in node.items() for r in _datasource_refs(v)]
    return []


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_datasource_is_the_variable(name: str) -> None:
    dash = DASHBOARDS[name]
    for panel in iter_panels(dash):
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            for t in [panel, *panel["targets"]]:
                assert t["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    # No hard-coded uid anywhere (the built-in annotation query excepted).
    for ref in _datasource_refs(dash):
        assert ref["uid"] in {"${datasource}", "-- Grafana --"}, ref


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_template_variables(name: str) -> None:
    vs = variables(DASHBOARDS[name])
    assert (vs["datasource"]["type"], vs["datasource"]["query"]) == ("datasource", "prometheus")
    for var in ("upstream", "project", "model"):
        assert var in vs
    for v in vs.values():
        if v["type"] == "query":
            assert v["multi"] and v["includeAll"] and v["allValue"] == ".*", v["name"]
            assert v["datasource"]["uid"] == "${datasource}"
            assert v["query"]["query"].startswith("label_values(")


def test_no_hardcoded_targets() -> None:
    text = "".join(p.read_text() for p in DASHBOARD_DIR.glob("*.json"))
    assert not re.search(r"localhost|:9090|:4000", text)
    for q in QUERIES:
        assert not re.search(r"\b(instance|job|host|hostname|pod|namespace)\s*[=!]", q.expr), q


def test_fixed_windows_only_where_deliberate() -> None:
    """rate()/increase() use $__rate_interval (or $__range for "in range" stats);
    only the budget forecast's deriv() looks back a fixed hour."""
    for q in QUERIES:
        windows = range_windows(q.expr)
        for func, window in windows:
            if func in {"deriv", "predict_linear"}:
                assert q.dashboard_uid == "spendgate-budgets", q
            else:
                assert window in {"$__rate_interval", "$__range"}, q
            if window == "$__range":
                assert q.instant, f"$__range only makes sense in instant queries: {q}"
    assert any(w == "$__rate_interval" for q in QUERIES for _, w in range_windows(q.expr))


def test_panel_metrics_in_contract(metric_contract: set[str]) -> None:
    for q in QUERIES:
        unknown = metric_names(q.expr) - metric_contract - PROMETHEUS_BUILTINS
        assert not unknown, f"{q}: unknown metrics {unknown}"
    for uid, _, query in iter_variable_queries():
        assert metric_names(label_values_to_promql(query)) <= metric_contract, (uid, query)


def test_queries_filter_by_variables(metric_labels: dict[str, frozenset[str]]) -> None:
    """Each metric is filtered by every dashboard variable that is one of its labels."""
    for q in QUERIES:
        defined = set(variables(dashboard_by_uid(q.dashboard_uid))) & set(FILTER_VARIABLES)
        for metric, matchers in selectors(q.expr, metric_labels):
            for label in defined & metric_labels[metric]:
                assert f'{label}=~"${label}"' in matchers, f"{q}: {metric} not filtered by {label}"


def test_panel_units() -> None:
    allowed = {"currencyUSD", "short", "s", "reqps", "percentunit"}
    for dash in DASHBOARDS.values():
        for panel in iter_panels(dash):
            if panel["type"] != "row":
                assert panel["fieldConfig"]["defaults"].get("unit") in allowed, panel["title"]


def test_latency_queries_have_exemplars() -> None:
    latency = [q for q in QUERIES if q.expr.startswith("histogram_quantile(")
               and re.search(r"_seconds_bucket\{", q.expr) and not q.instant]
    assert len(latency) >= 6
    assert all(q.exemplar for q in latency), [q for q in latency if not q.exemplar]


def test_panel_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    """promtool parses each query (variables substituted) as a recording rule."""
    rules = [{"record": q.name, "expr": substitute_variables(q.expr)} for q in QUERIES]
    rules += [{"record": f"{uid}_var_{name}".replace("-", "_"),
               "expr": substitute_variables(label_values_to_promql(query))}
              for uid, name, query in iter_variable_queries()]
    path = tmp_path / "panel_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    out = run(promtool, "check", "rules", path)
    assert f"SUCCESS: {len(rules)} rules found" in out
