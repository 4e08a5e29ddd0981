"""Checks of grafana/: dashboards, Prometheus rules, Alertmanager and provisioning.

promtool (Debian package `prometheus`) parses every PromQL query and runs the
alert unit tests; amtool (package `prometheus-alertmanager`) is optional.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

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
from tests.conftest import need  # noqa: E402

GRAFANA = ROOT / "grafana"
PROM_DIR = GRAFANA / "prometheus"
ALERTS = PROM_DIR / "alerts.yml"

# ------------------------------------------------------------------ metric contract
# What the proxy exports: metric -> labels (histograms without their suffixes).
_OPS = {"upstream", "model", "project"}
_GEN_AI = {"gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model",
           "gen_ai_response_model", "server_address"}
COUNTERS_AND_GAUGES: dict[str, set[str]] = {
    "spendgate_requests_total": _OPS | {"provider", "status"},
    "spendgate_tokens_total": _OPS | {"provider", "type", "source"},
    "spendgate_cost_usd_total": _OPS | {"provider"},
    "spendgate_in_flight_requests": {"upstream"},
    "spendgate_unpriced_requests_total": {"model"},
    "spendgate_usage_missing_total": set(_OPS),
    "spendgate_sink_errors_total": {"sink"},
    "spendgate_budget_limit_usd": {"budget"},
    "spendgate_budget_spend_usd": {"budget"},
    "spendgate_budget_blocked_total": {"budget"},
    "spendgate_budget_window_reset_timestamp_seconds": {"budget"},
    "spendgate_budget_info": {"budget", "window", "action"},
    "spendgate_store_errors_total": set(),
}
COUNTERS_AND_GAUGES |= {name: set() for name in (  # prometheus_client defaults
    "process_cpu_seconds_total", "process_open_fds", "process_max_fds",
    "process_virtual_memory_bytes", "process_resident_memory_bytes",
    "process_start_time_seconds", "python_gc_objects_collected_total",
    "python_gc_objects_uncollectable_total", "python_gc_collections_total", "python_info")}
HISTOGRAMS: dict[str, set[str]] = {
    "spendgate_request_duration_seconds": set(_OPS),
    "spendgate_time_to_first_token_seconds": set(_OPS),
    "spendgate_time_per_output_token_seconds": set(_OPS),
    "spendgate_proxy_overhead_seconds": set(_OPS),
    "gen_ai_client_token_usage": _GEN_AI | {"gen_ai_token_type"},
    "gen_ai_client_operation_duration_seconds": set(_GEN_AI),
    "gen_ai_client_operation_time_to_first_chunk_seconds": set(_GEN_AI),
    "gen_ai_client_operation_time_per_output_chunk_seconds": set(_GEN_AI),
}
METRIC_LABELS = COUNTERS_AND_GAUGES | {
    f"{name}{suffix}": labels | ({"le"} if suffix == "_bucket" else set())
    for name, labels in HISTOGRAMS.items() for suffix in ("_bucket", "_sum", "_count")}
METRIC_CONTRACT: set[str] = set(METRIC_LABELS)
PROMETHEUS_BUILTINS = {"ALERTS"}
FILTER_VARIABLES = ("upstream", "project", "model", "budget")

ALERT_NAMES = {
    "SpendgateBudgetWarning", "SpendgateBudgetExhausted", "SpendgateBudgetForecastExhaustion",
    "SpendgateUpstreamErrorRateHigh", "SpendgateUpstreamLatencyHigh",
    "SpendgateTimeToFirstTokenHigh", "SpendgateUnpricedModel", "SpendgateStoreErrors"}

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


def selectors(expr: str) -> list[tuple[str, str]]:
    """(metric, matchers inside {}) for every contract metric the expression selects."""
    return [(m[1], m[2] or "") for m in re.finditer(_NAME + r"\s*(?:\{([^}]*)\})?", expr)
            if m[1] in METRIC_LABELS]


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


def test_promql_helpers() -> None:
    expr = ('sum by (le) (rate(a_bucket{x=~"$x"}[$__rate_interval])) / '
            "on (b) group_left (c) max(deriv(b_total[1h])) * 2 > scalar(s:t:r) or vector(0)")
    assert metric_names(expr) == {"a_bucket", "b_total", "s:t:r"}
    assert range_windows(expr) == [("rate", "$__rate_interval"), ("deriv", "1h")]
    assert selectors('x + spendgate_cost_usd_total{model="a"}') == [
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


def test_rule_metrics_in_contract() -> None:
    rules = load_rules()
    records = {r["record"] for r in rules if "record" in r}
    for rule in rules:
        unknown = metric_names(rule["expr"]) - METRIC_CONTRACT - records
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
        pytest.skip("amtool not found: apt-get install prometheus-alertmanager")
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


def test_panel_metrics_in_contract() -> None:
    for q in QUERIES:
        unknown = metric_names(q.expr) - METRIC_CONTRACT - PROMETHEUS_BUILTINS
        assert not unknown, f"{q}: unknown metrics {unknown}"
    for uid, _, query in iter_variable_queries():
        assert metric_names(label_values_to_promql(query)) <= METRIC_CONTRACT, (uid, query)


def test_queries_filter_by_variables() -> None:
    """Each metric is filtered by every dashboard variable that is one of its labels."""
    for q in QUERIES:
        defined = set(variables(dashboard_by_uid(q.dashboard_uid))) & set(FILTER_VARIABLES)
        for metric, matchers in selectors(q.expr):
            for label in defined & METRIC_LABELS[metric]:
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
