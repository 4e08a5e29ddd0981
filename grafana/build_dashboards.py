"""Generate the spendgate Grafana dashboards (grafana/dashboards/*.json).

    python -m grafana.build_dashboards          # rewrite the JSON files
    python -m grafana.build_dashboards --check  # exit 1 if they are out of date

The JSON in the repository must be exactly what this script writes
(tests/test_grafana.py checks it), so edit the panels here, not in Grafana.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

DASHBOARD_DIR = Path(__file__).resolve().parent / "dashboards"
DS = {"type": "prometheus", "uid": "${datasource}"}

# Label filters for the template variables. Multi-value variables with
# "include All" render as a regex (`a|b`, or `.*` for All), hence `=~`.
SEL = 'upstream=~"$upstream", project=~"$project", model=~"$model"'
UP = 'upstream=~"$upstream"'
MODEL = 'model=~"$model"'
BUDGET = 'budget=~"$budget"'

WARN_RATIO = 0.8  # keep in line with spendgate:alert_threshold:budget_warning_ratio
ERROR_RATIO = 0.05  # keep in line with spendgate:alert_threshold:upstream_error_ratio

Panel = dict[str, Any]


# --------------------------------------------------------------------------- PromQL


def rate(metric: str, sel: str = SEL, window: str = "$__rate_interval") -> str:
    return f"rate({metric}{{{sel}}}[{window}])"


def increase(metric: str, sel: str = SEL, window: str = "$__range") -> str:
    return f"increase({metric}{{{sel}}}[{window}])"


def quantile(q: float, metric: str, by: str = "") -> str:
    labels = f"{by}, le" if by else "le"
    return f"histogram_quantile({q}, sum by ({labels}) ({rate(metric + '_bucket')}))"


REQUESTS = "spendgate_requests_total"
TOKENS = "spendgate_tokens_total"
COST = "spendgate_cost_usd_total"
TAG_COST = "spendgate_tag_cost_usd_total"     # no project label: tags are accounted apart
TAG_SEL = f"{UP}, {MODEL}"
DURATION = "spendgate_request_duration_seconds"
TTFT = "spendgate_time_to_first_token_seconds"
TPOT = "spendgate_time_per_output_token_seconds"
OVERHEAD = "spendgate_proxy_overhead_seconds"
UNPRICED = "spendgate_unpriced_requests_total"
CALL_ERRORS = "spendgate_call_errors_total"
CALL_ERRORS_HELP = ("What went wrong, whatever status the caller got: upstream_cut (a stream "
                    "the upstream broke off after its 200), client_closed (499), "
                    "upstream_timeout, upstream_unreachable, budget_exceeded, "
                    "upstream_status_4xx/5xx, and the proxy's refusals.")

# Errors as a caller sees them: any non-2xx answer except 499 (the caller hung up).
ERRORS_SEL = SEL + ', status!~"2..|499"'
S5XX = ', status=~"5.."'
OUTPUT = ', type="output"'
INPUT = ', type="input"'
CACHED = ', type="cached_input"'
ESTIMATED = ', source="estimated"'
SPEND = f"max by (budget) (spendgate_budget_spend_usd{{{BUDGET}}})"
LIMIT = f"max by (budget) (spendgate_budget_limit_usd{{{BUDGET}}} > 0)"
# USD per second over the last hour; clamped so a window reset does not read as negative.
BURN = f"clamp_min(max by (budget) (deriv(spendgate_budget_spend_usd{{{BUDGET}}}[1h])), 0)"
# Spend expected at the end of the window (budgets with a reset timestamp only).
FORECAST = (
    f"{SPEND} + {BURN} * max by (budget) "
    f"(spendgate_budget_window_reset_timestamp_seconds{{{BUDGET}}} - time())"
)
# A model's counter is born at 1 on its first unpriced call, which increase() misses:
# a series that is new within the range counts whole (same as SpendgateUnpricedModel).
_UNPRICED = f"{UNPRICED}{{{MODEL}}}"
UNPRICED_IN_RANGE = (f"sort_desc(sum by (model) (({_UNPRICED} unless {_UNPRICED} offset $__range)"
                     f" or {increase(UNPRICED, MODEL)}))")
FIRING = 'ALERTS{alertname=~"Spendgate.*", alertstate="firing"}'
DRIFT = f"max by (upstream) (spendgate_reconciliation_drift_ratio{{{UP}}})"
# Spend of self-hosted GPU upstreams only (those that export spendgate_gpu_cost_usd_total).
GPU_UPSTREAMS = f"sum by (upstream) (spendgate_gpu_cost_usd_total{{{UP}}})"
DRIFT_RATIO = 0.02  # keep in line with spendgate:alert_threshold:provider_cost_drift_ratio


# --------------------------------------------------------------------------- panels


def target(expr: str, legend: str = "__auto", *, instant: bool = False,
           exemplar: bool = False, fmt: str = "") -> dict[str, Any]:
    t: dict[str, Any] = {"datasource": DS, "editorMode": "code", "expr": expr,
                         "legendFormat": legend, "range": not instant, "instant": instant}
    if exemplar:
        t["exemplar"] = True
    if fmt:
        t["format"] = fmt
    return t


def panel(kind: str, title: str, unit: str, targets: list[dict[str, Any]], *,
          description: str = "", w: int = 12, h: int = 8, **extra: Any) -> Panel:
    for ref, t in zip("ABCDEFGHIJ", targets, strict=False):
        t["refId"] = ref
    p: Panel = {"type": kind, "title": title, "description": description,
                "datasource": DS, "gridPos": {"h": h, "w": w},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "options": {}, "targets": targets}
    p.update(extra)
    return p


def timeseries(title: str, unit: str, *targets: dict[str, Any], stack: bool = False,
               min0: bool = True, **kw: Any) -> Panel:
    p = panel("timeseries", title, unit, list(targets), **kw)
    custom: dict[str, Any] = {"fillOpacity": 10, "showPoints": "never"}
    if stack:
        custom.update(fillOpacity=60, stacking={"mode": "normal", "group": "A"})
    p["fieldConfig"]["defaults"]["custom"] = custom
    if min0:
        p["fieldConfig"]["defaults"]["min"] = 0
    p["options"] = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "desc"}}
    return p


REDUCE = {"calcs": ["lastNotNull"], "fields": "", "values": False}


def stat(title: str, unit: str, expr: str, *, w: int = 4, decimals: int | None = None,
         **kw: Any) -> Panel:
    p = panel("stat", title, unit, [target(expr, "", instant=True)], w=w, h=4, **kw)
    p["options"] = {"reduceOptions": REDUCE, "colorMode": "value", "graphMode": "none",
                    "textMode": "value", "justifyMode": "auto"}
    if decimals is not None:
        p["fieldConfig"]["defaults"]["decimals"] = decimals
    return p


def bargauge(title: str, unit: str, expr: str, legend: str, **kw: Any) -> Panel:
    p = panel("bargauge", title, unit, [target(expr, legend, instant=True)], **kw)
    p["options"] = {"displayMode": "gradient", "orientation": "horizontal",
                    "reduceOptions": REDUCE, "showUnfilled": True, "valueMode": "color"}
    return p


def table(title: str, columns: dict[str, tuple[str, str]], *, hide: tuple[str, ...] = (),
          **kw: Any) -> Panel:
    """Instant queries merged into one row per label set; columns: name -> (unit, expr)."""
    targets = [target(expr, "", instant=True, fmt="table") for _, expr in columns.values()]
    p = panel("table", title, "short", targets, **kw)
    names = {f"Value #{t['refId']}": name for t, name in zip(targets, columns, strict=True)}
    p["fieldConfig"]["overrides"] = [
        {"matcher": {"id": "byName", "options": name},
         "properties": [{"id": "unit", "value": unit}]}
        for name, (unit, _) in columns.items()
    ]
    p["transformations"] = [
        {"id": "merge", "options": {}},
        {"id": "organize", "options": {
            "excludeByName": {"Time": True, **{v: True for v, n in names.items() if n in hide}},
            "renameByName": names}},
    ]
    p["options"] = {"showHeader": True, "cellHeight": "sm"}
    return p


def thresholds(*steps: tuple[float | None, str]) -> dict[str, Any]:
    return {"mode": "absolute",
            "steps": [{"color": color, "value": value} for value, color in steps]}


def with_thresholds(p: Panel, *steps: tuple[float | None, str], line: bool = False) -> Panel:
    defaults = p["fieldConfig"]["defaults"]
    defaults["thresholds"] = thresholds(*steps)
    if line:
        defaults["custom"]["thresholdsStyle"] = {"mode": "dashed"}
    else:
        defaults["color"] = {"mode": "thresholds"}
    return p


def row(title: str) -> Panel:
    return {"type": "row", "title": title, "collapsed": False, "panels": [],
            "gridPos": {"h": 1, "w": 24}}


def latency(title: str, metric: str, quantiles: tuple[float, ...] = (0.5, 0.95, 0.99),
            by: str = "", **kw: Any) -> Panel:
    """histogram_quantile panel; exemplars on so points link to the trace in Tempo."""
    legend = f"{{{{{by}}}}}" if by else ""
    targets = [target(quantile(q, metric, by), f"p{round(q * 100)} {legend}".strip(),
                      exemplar=True) for q in quantiles]
    return timeseries(title, "s", *targets, **kw)


# --------------------------------------------------------------------------- variables


def query_var(name: str, label: str, metric: str, matchers: str = "") -> dict[str, Any]:
    q = f"label_values({metric}{{{matchers}}}, {name})" if matchers else \
        f"label_values({metric}, {name})"
    return {"name": name, "label": label, "type": "query", "datasource": DS,
            "definition": q,
            "query": {"query": q, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
            "refresh": 2, "sort": 1, "multi": True, "includeAll": True, "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "options": [], "regex": "", "hide": 0}


DATASOURCE_VAR = {"name": "datasource", "label": "Data source", "type": "datasource",
                  "query": "prometheus", "current": {}, "options": [], "regex": "",
                  "refresh": 1, "hide": 0, "multi": False, "includeAll": False}
COMMON_VARS = [
    DATASOURCE_VAR,
    query_var("upstream", "Upstream", REQUESTS),
    query_var("project", "Project", REQUESTS, UP),
    query_var("model", "Model", REQUESTS, f"{UP}, project=~\"$project\""),
]


# --------------------------------------------------------------------------- dashboards


def dashboard(uid: str, title: str, description: str, panels: list[Panel],
              extra_vars: tuple[dict[str, Any], ...] = (), time_from: str = "now-6h") -> dict:
    x = y = row_h = 0
    for pid, p in enumerate(panels, start=1):
        w, h = p["gridPos"]["w"], p["gridPos"]["h"]
        if p["type"] == "row" or x + w > 24:
            x, y, row_h = 0, y + row_h, 0
        p["id"] = pid
        p["gridPos"] = {"h": h, "w": w, "x": x, "y": y}
        x, row_h = x + w, max(row_h, h)
        if p["type"] == "row":
            x, y, row_h = 0, y + h, 0
    return {
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts", "type": "dashboard"}]},
        "description": description,
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [{"type": "dashboards", "tags": ["spendgate"], "asDropdown": False,
                   "includeVars": True, "keepTime": True, "title": "spendgate"}],
        "panels": panels,
        "refresh": "1m",
        "schemaVersion": 39,
        "tags": ["spendgate", "llm"],
        "templating": {"list": [*COMMON_VARS, *extra_vars]},
        "time": {"from": time_from, "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "title": title,
        "uid": uid,
        "version": 1,
    }


def overview() -> dict:
    spend_range = f"sum({increase(COST)})"
    usd_h = "currencyUSD"
    panels = [
        row("Spend"),
        stat("Spend today", "currencyUSD", spend_range, timeFrom="now/d",
             description="Cost of calls since midnight (dashboard time zone)."),
        stat("Spend this month", "currencyUSD", spend_range, timeFrom="now/M",
             description="Cost of calls since the first of the month."),
        stat("Spend in range", "currencyUSD", spend_range,
             description="Cost of calls in the dashboard's time range."),
        stat("Requests in range", "short", f"sum({increase(REQUESTS)})", decimals=0),
        with_thresholds(stat(
            "Error ratio in range", "percentunit",
            f"sum({increase(REQUESTS, ERRORS_SEL)}) / sum({increase(REQUESTS)})",
            description="Share of calls answered with a non-2xx status (499 = caller hung up "
                        "is not counted)."),
            (None, "green"), (0.01, "yellow"), (ERROR_RATIO, "red")),
        stat("Estimated token share", "percentunit",
             f"sum({increase(TOKENS, SEL + ESTIMATED)})"
             f" / sum({increase(TOKENS)})",
             description="Tokens counted by spendgate's tokenizer because the upstream "
                         "reported no usage. Costs of these tokens are estimates."),
        timeseries("Spend rate by project (USD/h)", usd_h,
                   target(f"sum by (project) ({rate(COST)}) * 3600", "{{project}}"),
                   stack=True),
        timeseries("Spend rate by model (USD/h)", usd_h,
                   target(f"sum by (model) ({rate(COST)}) * 3600", "{{model}}"), stack=True),
        bargauge("Spend by project in range", "currencyUSD",
                 f"sort_desc(sum by (project) ({increase(COST)}))", "{{project}}"),
        bargauge("Spend by model in range", "currencyUSD",
                 f"sort_desc(sum by (model) ({increase(COST)}))", "{{model}}"),
        bargauge("Spend by tag in range", "currencyUSD",
                 f"sort_desc(sum by (tag_key, tag_value) ({increase(TAG_COST, TAG_SEL)}))",
                 "{{tag_key}}={{tag_value}}", w=24,
                 description="The tag keys of attribution.tag_keys (x-spendgate-tags, a "
                             "virtual key's tags); an empty value: calls without that tag. "
                             "Each key's values sum to the whole spend."),
        row("Provider bill"),
        with_thresholds(timeseries(
            "Drift from the provider's bill", "percentunit", target(DRIFT, "{{upstream}}"),
            min0=False,
            description="(provider - spendgate) / provider cost for the last complete UTC "
                        "day, from the providers' own usage and cost APIs (spendgate "
                        "reconcile). Above 0: the provider bills more than spendgate saw."),
            (None, "green"), (DRIFT_RATIO, "red"), line=True),
        table("Provider bill, last complete UTC day", {
            "Provider cost": ("currencyUSD",
                              f"sum by (upstream, model) (spendgate_provider_cost_usd{{{UP}, "
                              f"{MODEL}}})"),
            "Read ago": ("s", "time() - max by (upstream) (spendgate_reconciliation_last_"
                              f"success_timestamp_seconds{{{UP}}})"),
        }, description="What each provider reports for yesterday, and how long ago it was "
                       "read (reconcile.interval_s)."),
        row("Self-hosted GPUs"),
        timeseries(
            "Self-hosted vs API (USD/h)", usd_h,
            target(f"sum by (upstream) ({rate(COST)}) * 3600 and on (upstream) "
                   f"{GPU_UPSTREAMS}", "{{upstream}} self-hosted"),
            target(f"sum by (upstream) ({rate('spendgate_api_equivalent_cost_usd_total')})"
                   " * 3600", "{{upstream}} at API prices"),
            target("sum by (upstream) (rate(spendgate_gpu_cost_usd_total"
                   f'{{{UP}, kind="idle"}}[$__rate_interval])) * 3600', "{{upstream}} idle"),
            description="What self-hosted upstreams cost (their GPUs' hourly bill, allocated "
                        "to calls by weighted tokens; idle intervals included) against what "
                        "the same calls would have cost at the API price of gpu.compare_to. "
                        "Below the API line, self-hosting is cheaper at this traffic; the idle "
                        "line is what more traffic would absorb."),
        timeseries("Effective price per million tokens (last hour)", "currencyUSD",
                   target("max by (upstream, model, type) (spendgate_effective_price_usd_"
                          f"per_mtok{{{UP}, {MODEL}}})", "{{upstream}} {{model}} {{type}}"),
                   description="Allocated GPU cost per million tokens of each type, realised "
                               "over the last hour: compare with an API's list price."),
        row("Tokens"),
        timeseries("Tokens per second by type", "short",
                   target(f"sum by (type) ({rate(TOKENS)})", "{{type}}"),
                   description="input includes cached_input and cache_write tokens; "
                               "reasoning tokens are part of output."),
        timeseries("Output tokens per second by model", "short",
                   target(f"sum by (model) ({rate(TOKENS, SEL + OUTPUT)})",
                          "{{model}}")),
        timeseries("Estimated vs reported tokens", "percentunit",
                   target(f"sum by (source) ({rate(TOKENS)}) / scalar(sum({rate(TOKENS)}))",
                          "{{source}}"), stack=True),
        timeseries("Cached share of input tokens", "percentunit",
                   target(f"sum({rate(TOKENS, SEL + CACHED)})"
                          f" / sum({rate(TOKENS, SEL + INPUT)})", "cached")),
        row("Requests and errors"),
        timeseries("Requests per second by upstream", "reqps",
                   target(f"sum by (upstream) ({rate(REQUESTS)})", "{{upstream}}")),
        timeseries("Requests per second by status", "reqps",
                   target(f"sum by (status) ({rate(REQUESTS)})", "{{status}}"), stack=True,
                   description="502 = upstream unreachable, 504 = upstream timeout, "
                               "499 = the caller hung up."),
        with_thresholds(timeseries(
            "Error ratio by upstream", "percentunit",
            target(f"sum by (upstream) ({rate(REQUESTS, ERRORS_SEL)})"
                   f" / sum by (upstream) ({rate(REQUESTS)})", "{{upstream}}"),
            description="Non-2xx share of calls per upstream (499 not counted)."),
            (None, "green"), (ERROR_RATIO, "red"), line=True),
        timeseries("Errors by status", "reqps",
                   target(f"sum by (status) ({rate(REQUESTS, ERRORS_SEL)})", "{{status}}"),
                   stack=True),
        timeseries("Call errors by kind", "reqps",
                   target(f"sum by (error_type) ({rate(CALL_ERRORS)})", "{{error_type}}"),
                   stack=True, description=CALL_ERRORS_HELP),
        row("Latency"),
        latency("Request duration", DURATION),
        latency("Time to first token (streams)", TTFT),
        timeseries("Output speed per request (tokens/s)", "short",
                   target(f"1 / {quantile(0.5, TPOT)}", "median"),
                   target(f"1 / {quantile(0.95, TPOT)}", "slowest 5%"),
                   description="Inverse of the time per output token."),
        latency("Proxy overhead", OVERHEAD, (0.5, 0.99),
                description="Time spendgate itself adds to a call (parsing, pricing, "
                            "budget checks), excluding the upstream."),
        row("Data quality and proxy health"),
        bargauge("Unpriced requests by model in range", "short", UNPRICED_IN_RANGE, "{{model}}",
                 description="Models missing from the price table: their calls cost 0 in "
                             "every panel. Add them to the prices."),
        timeseries("Responses without usage", "reqps",
                   target(f"sum by (upstream, model) "
                          f"({rate('spendgate_usage_missing_total')})", "{{upstream}} {{model}}"),
                   description="Responses whose upstream reported no token usage; "
                               "their tokens are estimated."),
        timeseries("Sink errors per second", "short",
                   target("sum by (sink) (rate(spendgate_sink_errors_total[$__rate_interval]))",
                          "{{sink}}")),
    ]
    return dashboard("spendgate-overview", "spendgate / Overview",
                     "LLM spend, tokens, traffic and latency through spendgate.", panels,
                     time_from="now-24h")


def budgets() -> dict:
    ratio = f"{SPEND} / {LIMIT}"
    budget_var = query_var("budget", "Budget", "spendgate_budget_limit_usd")
    usage = with_thresholds(
        bargauge("Spend against limit", "percentunit", ratio, "{{budget}}",
                 description="Spend in the current window divided by the budget's limit."),
        (None, "green"), (WARN_RATIO, "yellow"), (1, "red"))
    usage["fieldConfig"]["defaults"].update(min=0, max=1)
    status = table("Budget status", {
        "Spend": ("currencyUSD", SPEND),
        "Limit": ("currencyUSD", LIMIT),
        "Used": ("percentunit", ratio),
        "Forecast at window end": ("currencyUSD", FORECAST),
        "Window resets in": ("s", f"max by (budget) (spendgate_budget_window_reset_timestamp"
                                  f"_seconds{{{BUDGET}}} - time())"),
        "info": ("short", f"max by (budget, window, action) (spendgate_budget_info{{{BUDGET}}})"),
    }, hide=("info",), description="Forecast = spend + 1 h burn rate until the window resets "
                                   "(not shown for window=total).")
    limit_style = {"matcher": {"id": "byRegexp", "options": "limit .*"}, "properties": [
        {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
        {"id": "custom.fillOpacity", "value": 0}]}
    spend_vs_limit = timeseries("Spend and limit", "currencyUSD",
                                target(SPEND, "{{budget}}"), target(LIMIT, "limit {{budget}}"))
    spend_vs_limit["fieldConfig"]["overrides"].append(limit_style)
    panels = [
        row("Budgets"),
        stat("Budgets over warning", "short",
             f"count({ratio} >= {WARN_RATIO}) or vector(0)", w=6, decimals=0),
        stat("Calls blocked in range", "short",
             f"sum({increase('spendgate_budget_blocked_total', BUDGET)}) or vector(0)",
             w=6, decimals=0),
        stat("spendgate alerts firing", "short", f"count({FIRING}) or vector(0)", w=6,
             decimals=0),
        stat("Store errors in range", "short",
             "sum(increase(spendgate_store_errors_total[$__range])) or vector(0)", w=6,
             decimals=0),
        usage,
        status,
        row("Spend and forecast"),
        spend_vs_limit,
        timeseries("Burn rate (USD/h)", "currencyUSD", target(f"{BURN} * 3600", "{{budget}}"),
                   description="Slope of the window's spend over the last hour."),
        with_thresholds(timeseries(
            "Forecast at window end / limit", "percentunit",
            target(f"({FORECAST}) / {LIMIT}", "{{budget}}"),
            description="Above 100% the budget will run out before its window resets."),
            (None, "green"), (WARN_RATIO, "yellow"), (1, "red"), line=True),
        timeseries("Spend rate by project (USD/h)", "currencyUSD",
                   target(f"sum by (project) ({rate(COST)}) * 3600", "{{project}}"),
                   stack=True),
        row("Enforcement"),
        timeseries("Blocked calls per second", "reqps",
                   target(f"sum by (budget) ({rate('spendgate_budget_blocked_total', BUDGET)})",
                          "{{budget}}")),
        timeseries("Rate-limited calls per second", "reqps",
                   target("sum by (limit) (rate(spendgate_rate_limited_total"
                          "[$__rate_interval]))", "{{limit}}"),
                   description="Calls refused with 429 rate_limit_exceeded, by rate limit "
                               "(limits: requests or tokens per minute, calls in flight)."),
        table("spendgate alerts now", {
            "Active": ("short", 'sum by (alertname, alertstate, severity, budget, upstream, '
                                'model) (ALERTS{alertname=~"Spendgate.*"})')}),
        timeseries("Budget store errors per second", "short",
                   target("sum(rate(spendgate_store_errors_total[$__rate_interval]))",
                          "errors"), w=24,
                   description="Failed reads/writes of budget state: spend may be "
                               "undercounted and limits not enforced."),
    ]
    return dashboard("spendgate-budgets", "spendgate / Budgets",
                     "Budget spend against limits, burn rate, forecast and enforcement.",
                     panels, extra_vars=(budget_var,), time_from="now-7d")


def upstreams() -> dict:
    out_tokens = rate(TOKENS, SEL + OUTPUT)
    summary = table("Upstreams now", {
        "Requests/s": ("reqps", f"sum by (upstream) ({rate(REQUESTS)})"),
        "5xx ratio": ("percentunit", f"sum by (upstream) ({rate(REQUESTS, SEL + S5XX)})"
                                     f" / sum by (upstream) ({rate(REQUESTS)})"),
        "p95 duration": ("s", quantile(0.95, DURATION, "upstream")),
        "p95 TTFT": ("s", quantile(0.95, TTFT, "upstream")),
        "Output tokens/s": ("short", f"sum by (upstream) ({out_tokens})"),
        "In flight": ("short", f"sum by (upstream) (spendgate_in_flight_requests{{{UP}}})"),
    }, w=24, h=7)
    heatmap = panel("heatmap", "Request duration distribution", "short",
                    [target(f"sum by (le) (increase({DURATION}_bucket{{{SEL}}}"
                            "[$__rate_interval]))", "{{le}}", fmt="heatmap")], w=24)
    heatmap["options"] = {"calculate": False, "yAxis": {"unit": "s"}, "cellGap": 1,
                          "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64},
                          "tooltip": {"mode": "single", "yHistogram": True}}
    panels = [
        row("Per upstream"),
        summary,
        row("Throughput"),
        timeseries("Requests per second", "reqps",
                   target(f"sum by (upstream) ({rate(REQUESTS)})", "{{upstream}}"), w=8),
        timeseries("Output tokens per second", "short",
                   target(f"sum by (upstream) ({out_tokens})", "{{upstream}}"), w=8),
        timeseries("In-flight calls", "short",
                   target(f"sum by (upstream) (spendgate_in_flight_requests{{{UP}}})",
                          "{{upstream}}"), w=8),
        row("Errors"),
        timeseries("Non-2xx responses by upstream and status", "reqps",
                   target(f"sum by (upstream, status) ({rate(REQUESTS, ERRORS_SEL)})",
                          "{{upstream}} {{status}}"),
                   description="429 = rate limited, 502 = unreachable, 504 = timeout."),
        with_thresholds(timeseries(
            "5xx ratio", "percentunit",
            target(f"sum by (upstream) ({rate(REQUESTS, SEL + S5XX)})"
                   f" / sum by (upstream) ({rate(REQUESTS)})", "{{upstream}}"),
            description="What SpendgateUpstreamErrorRateHigh alerts on."),
            (None, "green"), (ERROR_RATIO, "red"), line=True),
        timeseries("Call errors by upstream and kind", "reqps",
                   target(f"sum by (upstream, error_type) ({rate(CALL_ERRORS)})",
                          "{{upstream}} {{error_type}}"),
                   stack=True, description=CALL_ERRORS_HELP),
        row("Latency"),
        latency("Request duration p95", DURATION, (0.95,), "upstream"),
        latency("Request duration p50", DURATION, (0.5,), "upstream"),
        latency("Time to first token p95 (streams)", TTFT, (0.95,), "upstream"),
        timeseries("Median output speed per request (tokens/s)", "short",
                   target(f"1 / {quantile(0.5, TPOT, 'upstream')}", "{{upstream}}")),
        latency("Proxy overhead p99", OVERHEAD, (0.99,), "upstream"),
        timeseries("Responses without usage", "reqps",
                   target(f"sum by (upstream) ({rate('spendgate_usage_missing_total')})",
                          "{{upstream}}")),
        heatmap,
    ]
    return dashboard("spendgate-upstreams", "spendgate / Upstreams",
                     "Latency, throughput and errors per upstream, self-hosted ones included.",
                     panels, time_from="now-3h")


# --------------------------------------------------------------------------- output


def build() -> dict[str, dict]:
    """File name -> dashboard model."""
    return {"spendgate-overview.json": overview(), "spendgate-budgets.json": budgets(),
            "spendgate-upstreams.json": upstreams()}


def render(dash: dict) -> str:
    return json.dumps(dash, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare, write nothing")
    args = parser.parse_args(argv)
    stale = []
    for name, dash in build().items():
        path = DASHBOARD_DIR / name
        text = render(dash)
        if path.exists() and path.read_text() == text:
            continue
        stale.append(name)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    verb = "out of date" if args.check else "written"
    for name in stale:
        print(f"{name}: {verb}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
