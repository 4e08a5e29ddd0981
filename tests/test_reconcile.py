"""Reconciliation: the ledger's daily history (SQLite and Redis), the providers' admin APIs
(literal-shape servers with pagination), ``spendgate reconcile`` and the job in ``serve``.

Prices (built-in catalog, USD per Mtok): o4-mini input 1.1, cached 0.275, output 4.4;
claude-sonnet-4-5 input 3, cache read 0.3, cache write 3.75, output 15. One call of each
fixture therefore costs:

* ``openai_chat_response.json`` (o4-mini-2025-04-16, 1236 input of which 1152 cached, 201
  output): 84 x 1.1 + 1152 x 0.275 + 201 x 4.4 = 92.4 + 316.8 + 884.4 = 1293.6 per M
  = $0.0012936 (input part 409.2 per M, output part 884.4 per M);
* ``anthropic_messages_response_cached.json`` (claude-sonnet-4-5-20250929, 21 uncached +
  3072 read + 188 written, 57 output): 63 + 921.6 + 705 + 855 = 2544.6 per M = $0.0025446.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anthropic
import openai
import orjson
import pytest
import yaml

from spendgate.budgets.store import open_store
from spendgate.budgets.store.base import HISTORY_CAP, DayCharge, SettleBatch, Store
from spendgate.labels import OTHER
from tests.budget_helpers import SHARED_REDIS, redis_prefix  # noqa: F401  (fixture)
from tests.conftest import ProxyProcess, spendgate_command
from tests.fake_admin import FakeAdminAPI

OPENAI_MODEL = "o4-mini-2025-04-16"
CLAUDE_MODEL = "claude-sonnet-4-5-20250929"
OPENAI_KEY = "sk-admin-test-0123456789abcdef"
ANTHROPIC_KEY = "sk-ant-admin01-test-fedcba9876543210"
KEY_ID = "key_proxy"


def day(offset: int) -> tuple[str, int]:
    """UTC day ``offset`` days before today: (YYYY-MM-DD, its midnight in Unix seconds)."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start = today - timedelta(days=offset)
    return start.date().isoformat(), int(start.timestamp())


def admin_pages() -> dict[str, list[str]]:
    """Two days: D2 (two days ago) and D1 (yesterday), each on a page of its own.

    OpenAI, key key_proxy: D2 10 calls of the o4-mini fixture, D1 12 (two more than the
    ledger saw: they bypassed the proxy). key_other's rows must be left out.
    D2: input 12360 (11520 cached), output 2010; costs input 10 x 409.2 / 1e6 = 0.004092,
    output 10 x 884.4 / 1e6 = 0.008844 -> $0.012936.
    D1: input 14832 (13824 cached), output 2412; input 0.0049104 + output 0.0106128
    = $0.0155232.
    Anthropic: D1 only, 4 calls of the claude fixture: uncached 84, cache read 12288,
    written 752, output 228; cents: 4 x 63 / 1e4 = 0.0252, 4 x 921.6 / 1e4 = 0.36864,
    4 x 705 / 1e4 = 0.282, 4 x 855 / 1e4 = 0.342 -> 1.01784 cents = $0.0101784.
    """
    d2, t2 = day(2)
    d1, t1 = day(1)
    e2, e1 = t2 + 86400, t1 + 86400
    usage = [f"""{{"object": "page", "data": [{{"object": "bucket", "start_time": {t2}, "end_time": {e2}, "results": [
  {{"object": "organization.usage.completions.result", "input_tokens": 12360, "output_tokens": 2010, "num_model_requests": 10, "project_id": null, "user_id": null, "api_key_id": "key_proxy", "model": "{OPENAI_MODEL}", "batch": null, "input_cached_tokens": 11520, "input_audio_tokens": 0, "output_audio_tokens": 0}},
  {{"object": "organization.usage.completions.result", "input_tokens": 999, "output_tokens": 999, "num_model_requests": 3, "project_id": null, "user_id": null, "api_key_id": "key_other", "model": "{OPENAI_MODEL}", "batch": null, "input_cached_tokens": 0, "input_audio_tokens": 0, "output_audio_tokens": 0}}]}}],
 "has_more": true, "next_page": "page_1"}}""",
             f"""{{"object": "page", "data": [{{"object": "bucket", "start_time": {t1}, "end_time": {e1}, "results": [
  {{"object": "organization.usage.completions.result", "input_tokens": 14832, "output_tokens": 2412, "num_model_requests": 12, "project_id": null, "user_id": null, "api_key_id": "key_proxy", "model": "{OPENAI_MODEL}", "batch": null, "input_cached_tokens": 13824, "input_audio_tokens": 0, "output_audio_tokens": 0}}]}}],
 "has_more": false, "next_page": null}}"""]
    costs = [f"""{{"object": "page", "data": [{{"object": "bucket", "start_time": {t2}, "end_time": {e2}, "results": [
  {{"object": "organization.costs.result", "amount": {{"value": 0.004092, "currency": "usd"}}, "line_item": "{OPENAI_MODEL}, input", "project_id": null, "api_key_id": "key_proxy"}},
  {{"object": "organization.costs.result", "amount": {{"value": "0.008844", "currency": "usd"}}, "line_item": "{OPENAI_MODEL}, output", "project_id": null, "api_key_id": "key_proxy"}},
  {{"object": "organization.costs.result", "amount": {{"value": 5.0, "currency": "usd"}}, "line_item": "{OPENAI_MODEL}, output", "project_id": null, "api_key_id": "key_other"}}]}}],
 "has_more": true, "next_page": "page_1"}}""",
             f"""{{"object": "page", "data": [{{"object": "bucket", "start_time": {t1}, "end_time": {e1}, "results": [
  {{"object": "organization.costs.result", "amount": {{"value": 0.0049104, "currency": "usd"}}, "line_item": "{OPENAI_MODEL}, input", "project_id": null, "api_key_id": "key_proxy"}},
  {{"object": "organization.costs.result", "amount": {{"value": 0.0106128, "currency": "usd"}}, "line_item": "{OPENAI_MODEL}, output", "project_id": null, "api_key_id": "key_proxy"}}]}}],
 "has_more": false, "next_page": null}}"""]
    messages = [f"""{{"data": [{{"starting_at": "{d2}T00:00:00Z", "ending_at": "{d1}T00:00:00Z", "results": []}}],
 "has_more": true, "next_page": "page_1"}}""",
                f"""{{"data": [{{"starting_at": "{d1}T00:00:00Z", "ending_at": "{day(0)[0]}T00:00:00Z", "results": [
  {{"uncached_input_tokens": 84, "cache_creation": {{"ephemeral_1h_input_tokens": 0, "ephemeral_5m_input_tokens": 752}}, "cache_read_input_tokens": 12288, "output_tokens": 228, "server_tool_use": {{"web_search_requests": 0}}, "api_key_id": null, "workspace_id": null, "model": "{CLAUDE_MODEL}", "service_tier": "standard", "context_window": "0-200k"}}]}}],
 "has_more": false, "next_page": null}}"""]
    cost_report = [f"""{{"data": [{{"starting_at": "{d2}T00:00:00Z", "ending_at": "{d1}T00:00:00Z", "results": []}}],
 "has_more": true, "next_page": "page_1"}}""",
                   f"""{{"data": [{{"starting_at": "{d1}T00:00:00Z", "ending_at": "{day(0)[0]}T00:00:00Z", "results": [
  {{"currency": "USD", "amount": "0.0252", "workspace_id": null, "description": "Claude Sonnet 4.5 Usage - Input Tokens", "cost_type": "tokens", "context_window": "0-200k", "model": "{CLAUDE_MODEL}", "service_tier": "standard", "token_type": "uncached_input_tokens"}},
  {{"currency": "USD", "amount": "0.36864", "workspace_id": null, "description": "Claude Sonnet 4.5 Usage - Cache Read", "cost_type": "tokens", "context_window": "0-200k", "model": "{CLAUDE_MODEL}", "service_tier": "standard", "token_type": "cache_read_input_tokens"}},
  {{"currency": "USD", "amount": "0.282", "workspace_id": null, "description": "Claude Sonnet 4.5 Usage - Cache Write 5m", "cost_type": "tokens", "context_window": "0-200k", "model": "{CLAUDE_MODEL}", "service_tier": "standard", "token_type": "cache_creation.ephemeral_5m_input_tokens"}},
  {{"currency": "USD", "amount": "0.342", "workspace_id": null, "description": "Claude Sonnet 4.5 Usage - Output Tokens", "cost_type": "tokens", "context_window": "0-200k", "model": "{CLAUDE_MODEL}", "service_tier": "standard", "token_type": "output_tokens"}}]}}],
 "has_more": false, "next_page": null}}"""]
    return {"/v1/organization/usage/completions": usage, "/v1/organization/costs": costs,
            "/v1/organizations/usage_report/messages": messages,
            "/v1/organizations/cost_report": cost_report}


def seed_history(store: Store) -> None:
    """What the ledger holds after 10 o4-mini calls on D2 and on D1 and 4 claude calls on
    D1 (written as ``LedgerSink`` writes them: nano-dollars and token counts)."""
    d2, d1 = day(2)[0], day(1)[0]
    rows = []
    for d, calls in ((d2, 10), (d1, 10)):
        rows += [DayCharge(d, "openai", OPENAI_MODEL, "cost", calls * 1_293_600, 86400 * 40),
                 DayCharge(d, "openai", OPENAI_MODEL, "input", calls * 1236, 86400 * 40),
                 DayCharge(d, "openai", OPENAI_MODEL, "cached_input", calls * 1152, 86400 * 40),
                 DayCharge(d, "openai", OPENAI_MODEL, "output", calls * 201, 86400 * 40)]
    rows += [DayCharge(d1, "anthropic", CLAUDE_MODEL, "cost", 4 * 2_544_600, 86400 * 40),
             DayCharge(d1, "anthropic", CLAUDE_MODEL, "input", 4 * 3281, 86400 * 40),
             DayCharge(d1, "anthropic", CLAUDE_MODEL, "output", 4 * 57, 86400 * 40)]
    store.settle(SettleBatch("seed", 1, days=rows), time.time())


@pytest.fixture()
def admin() -> Iterator[FakeAdminAPI]:
    server = FakeAdminAPI(admin_pages()).start()
    yield server
    server.stop()


def config(admin: FakeAdminAPI, workdir: Path, **extra: Any) -> dict[str, Any]:
    return {
        "upstreams": {
            "openai": {"url": admin.url, "provider": "openai", "admin_key": OPENAI_KEY,
                       "provider_key_id": KEY_ID},
            "anthropic": {"url": admin.url, "provider": "anthropic",
                          "admin_key": ANTHROPIC_KEY},
        },
        "store": {"url": f"sqlite:///{workdir}/ledger.sqlite3"},
        **extra,
    }


def seeded_config(admin: FakeAdminAPI, workdir: Path) -> dict[str, Any]:
    """``config``, its SQLite ledger holding ``seed_history``."""
    cfg = config(admin, workdir)
    store = open_store(cfg["store"]["url"], 2.0, 60)
    seed_history(store)
    store.close()
    return cfg


def reconcile(workdir: Path, cfg: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    path = workdir / "reconcile.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.run(spendgate_command("reconcile", "--config", str(path), *args),
                          capture_output=True, text=True, timeout=60, cwd=workdir)


def test_reconcile_config_keys_and_defaults() -> None:
    from spendgate.config import parse_config
    from spendgate.errors import ConfigError

    config = parse_config({"upstreams": {"openai": {
        "url": "https://api.openai.com", "admin_key": "${ADMIN}", "provider_key_id": "key_1"}}},
        {"ADMIN": OPENAI_KEY})
    up = config.upstreams["openai"]
    assert (up.admin_key, up.provider_key_id) == (OPENAI_KEY, "key_1")
    assert (config.reconcile.interval_s, config.reconcile.lookback_days,
            config.reconcile.drift_warn_ratio) == (21600, 7, 0.02)
    assert config.store.history_days == 35
    unset = parse_config({"upstreams": {"openai": {"url": "https://api.openai.com",
                                                   "admin_key": "${ADMIN:-}"}}}, {})
    assert unset.upstreams["openai"].admin_key is None   # allowed empty: no reconciliation
    with pytest.raises(ConfigError) as error:  # unset without a default: loud
        parse_config({"upstreams": {"openai": {"url": "https://api.openai.com",
                                               "admin_key": "${ADMIN}"}}}, {})
    assert error.value.problems[0].startswith("upstreams.openai.admin_key: ${ADMIN} is not set")
    with pytest.raises(ConfigError) as error:
        parse_config({"reconcile": {"interval": 60}})
    assert error.value.problems == [
        "reconcile.interval: unknown key (did you mean interval_s?)"]


# ---- the ledger's daily history, on both backends -----------------------------------------

@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        opened = open_store(f"sqlite:///{tmp_path}/ledger.sqlite3", 10.0, 60)
    else:
        opened = open_store(SHARED_REDIS, 10.0, 60, request.getfixturevalue("redis_prefix"))
    yield opened
    opened.close()


def test_history_is_summed_per_day_upstream_model_and_kind_once(store: Store) -> None:
    rows = [DayCharge("2026-03-01", "openai", "m", "cost", 7, 3600),
            DayCharge("2026-03-01", "openai", "m", "input", 100, 3600),
            DayCharge("2026-03-02", "openai", "m", "cost", 5, 3600)]
    store.settle(SettleBatch("p", 1, days=rows), 1000.0)
    store.settle(SettleBatch("p", 1, days=rows), 1000.0)     # a retry: applied once
    store.settle(SettleBatch("p", 2, days=rows[:1]), 1000.0)
    assert store.history(["2026-03-01", "2026-03-02", "2026-03-03"]) == {
        ("2026-03-01", "openai", "m", "cost"): 14, ("2026-03-01", "openai", "m", "input"): 100,
        ("2026-03-02", "openai", "m", "cost"): 5}


def test_history_rows_past_the_cap_fold_into_other(store: Store) -> None:
    rows = [DayCharge("2026-03-01", "u", f"m{i}", "cost", 1, 3600) for i in range(HISTORY_CAP)]
    store.settle(SettleBatch("p", 1, days=rows), 1000.0)
    store.settle(SettleBatch("p", 2, days=[DayCharge("2026-03-01", "u", "new", "cost", 9, 3600),
                                           DayCharge("2026-03-01", "u", "m0", "cost", 2, 3600)]),
                 1000.0)
    found = store.history(["2026-03-01"])
    assert len(found) == HISTORY_CAP + 1
    assert found[("2026-03-01", OTHER, OTHER, "cost")] == 9
    assert found[("2026-03-01", "u", "m0", "cost")] == 3


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_proxy_calls_write_the_daily_history(backend: str, admin: FakeAdminAPI, spawn: Any,
                                             tmp_path: Path, request: pytest.FixtureRequest
                                             ) -> None:
    cfg = config(admin, tmp_path)
    del cfg["upstreams"]["openai"]["admin_key"], cfg["upstreams"]["anthropic"]["admin_key"]
    if backend == "redis":
        prefix = request.getfixturevalue("redis_prefix")
        cfg["store"] = {"url": SHARED_REDIS, "key_prefix": prefix}
    proxy = spawn(cfg)
    gpt = openai.OpenAI(base_url=proxy.url + "/openai/v1", api_key="sk-x", max_retries=0)
    claude = anthropic.Anthropic(base_url=proxy.url + "/anthropic", api_key="sk-ant-x",
                                 max_retries=0)
    for _ in range(2):
        gpt.chat.completions.create(model="o4-mini", messages=[{"role": "user", "content": "Hi"}])
    claude.messages.create(model="claude-sonnet-4-5", max_tokens=64,
                           messages=[{"role": "user", "content": "Hi"}])
    today = day(0)[0]
    store = open_store(cfg["store"]["url"], 2.0, 60,
                       cfg["store"].get("key_prefix", "spendgate:"))
    try:
        deadline = time.monotonic() + 10
        while len(found := store.history([today])) < 10 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        store.close()
    # Keyed by the model the upstream reported (what provider reports name).
    assert found == {
        (today, "openai", OPENAI_MODEL, "cost"): 2 * 1_293_600,       # 2 x $0.0012936
        (today, "openai", OPENAI_MODEL, "input"): 2 * 1236,
        (today, "openai", OPENAI_MODEL, "cached_input"): 2 * 1152,
        (today, "openai", OPENAI_MODEL, "output"): 2 * 201,
        (today, "openai", OPENAI_MODEL, "reasoning"): 2 * 192,
        (today, "anthropic", CLAUDE_MODEL, "cost"): 2_544_600,         # $0.0025446
        (today, "anthropic", CLAUDE_MODEL, "input"): 3281,             # 21 + 3072 + 188
        (today, "anthropic", CLAUDE_MODEL, "cached_input"): 3072,
        (today, "anthropic", CLAUDE_MODEL, "cache_write"): 188,
        (today, "anthropic", CLAUDE_MODEL, "output"): 57,
    }


# ---- spendgate reconcile ------------------------------------------------------------------

def test_reconcile_compares_both_providers_pages_and_flags_the_drifting_day(
        admin: FakeAdminAPI, tmp_path: Path) -> None:
    cfg = seeded_config(admin, tmp_path)
    result = reconcile(tmp_path, cfg, "--days", "2", "--format", "json")
    assert result.returncode == 3, result.stderr
    out = orjson.loads(result.stdout)
    d2, d1 = day(2)[0], day(1)[0]
    days = {(d["upstream"], d["day"]): d for d in out["days"]}
    assert days[("openai", d2)]["provider_cost_usd"] == "0.012936"
    assert days[("openai", d2)]["our_cost_usd"] == "0.012936000"
    assert days[("openai", d2)]["ratio"] == 0 and not days[("openai", d2)]["drift"]
    # D1: the provider billed 12 calls, the ledger saw 10: (0.0155232 - 0.012936) / 0.0155232
    # = 0.0025872 / 0.0155232 = 1/6.
    assert days[("openai", d1)]["provider_cost_usd"] == "0.0155232"
    assert days[("openai", d1)]["ratio"] == pytest.approx(1 / 6)
    assert days[("openai", d1)]["drift"] is True
    # Anthropic D1: 1.01784 cents = $0.0101784 = 4 x $0.0025446: no drift; D2: nothing.
    assert days[("anthropic", d1)]["provider_cost_usd"] == "0.0101784"
    assert days[("anthropic", d1)]["ratio"] == 0
    assert days[("anthropic", d2)]["provider_cost_usd"] == "0"
    rows = {(r["upstream"], r["day"], r["model"]): r for r in out["rows"]}
    assert rows[("openai", d2, OPENAI_MODEL)]["provider_tokens"] == {
        "input": 12360, "cached_input": 11520, "output": 2010}   # key_other's rows left out
    assert rows[("openai", d1, OPENAI_MODEL)]["our_tokens"] == {
        "input": 12360, "cached_input": 11520, "output": 2010}
    assert rows[("anthropic", d1, CLAUDE_MODEL)]["provider_tokens"] == {
        "input": 13124, "cached_input": 12288, "cache_write": 752, "output": 228}  # 84+12288+752
    # Every page was fetched, with the cursor each page gave, and the right credentials.
    seen = [(r.path, dict(r.query).get("page")) for r in admin.requests]
    for path in admin.pages:
        assert (path, None) in seen and (path, "page_1") in seen
    openai_asks = [r for r in admin.requests if r.path.startswith("/v1/organization/")]
    assert all(r.headers["Authorization"] == f"Bearer {OPENAI_KEY}" for r in openai_asks)
    assert all(("api_key_ids", KEY_ID) in r.query for r in openai_asks)
    claude_asks = [r for r in admin.requests if r.path.startswith("/v1/organizations/")]
    assert all(r.headers["X-Api-Key"] == ANTHROPIC_KEY for r in claude_asks)
    assert all(r.headers["Anthropic-Version"] == "2023-06-01" for r in claude_asks)
    assert ("group_by[]", "model") in claude_asks[0].query

    table = reconcile(tmp_path, cfg, "--days", "2")
    assert table.returncode == 3
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["UPSTREAM", "DAY", "MODEL"]
    assert any(line.startswith("openai") and d1 in line and "+16.67% DRIFT" in line
               for line in lines), table.stdout
    relaxed = reconcile(tmp_path, {**cfg, "reconcile": {"drift_warn_ratio": 0.5}}, "--days", "2")
    assert relaxed.returncode == 0, relaxed.stdout + relaxed.stderr


def test_reconcile_reads_the_history_from_redis_too(admin: FakeAdminAPI, tmp_path: Path,
                                                    redis_prefix: str) -> None:  # noqa: F811
    cfg = config(admin, tmp_path)
    cfg["store"] = {"url": SHARED_REDIS, "key_prefix": redis_prefix}
    store = open_store(SHARED_REDIS, 2.0, 60, redis_prefix)
    seed_history(store)
    store.close()
    result = reconcile(tmp_path, cfg, "--days", "1", "--format", "json")
    assert result.returncode == 3, result.stderr
    days = {d["upstream"]: d for d in orjson.loads(result.stdout)["days"]}
    assert days["openai"]["our_cost_usd"] == "0.012936000"     # 10 x $0.0012936
    assert days["openai"]["ratio"] == pytest.approx(1 / 6)
    assert days["anthropic"]["ratio"] == 0


def test_reconcile_admin_api_failure_exits_1_without_the_key(admin: FakeAdminAPI,
                                                              tmp_path: Path) -> None:
    admin.fail["/v1/organizations/cost_report"] = 401
    result = reconcile(tmp_path, config(admin, tmp_path), "--days", "2")
    assert result.returncode == 1
    assert "anthropic: ReconcileError: GET /v1/organizations/cost_report: HTTP 401" in \
        result.stderr
    assert ANTHROPIC_KEY not in result.stderr + result.stdout
    assert OPENAI_KEY not in result.stderr + result.stdout


# ---- the job in serve ---------------------------------------------------------------------

def test_serve_exports_the_last_day_and_counts_admin_api_failures(
        admin: FakeAdminAPI, tmp_path: Path) -> None:
    cfg = seeded_config(admin, tmp_path)
    admin.fail["/v1/organizations/usage_report/messages"] = 500
    proxy = ProxyProcess(cfg, tmp_path).start()
    try:
        drift = proxy.eventually("spendgate_reconciliation_drift_ratio", upstream="openai")
        assert drift == pytest.approx(1 / 6)     # yesterday: (0.0155232 - 0.012936) / 0.0155232
        assert proxy.sample("spendgate_provider_cost_usd", upstream="openai",
                            model=OPENAI_MODEL) == pytest.approx(0.0155232)
        assert proxy.sample("spendgate_provider_tokens", upstream="openai", model=OPENAI_MODEL,
                            type="cached_input") == 13824
        stamp = proxy.sample("spendgate_reconciliation_last_success_timestamp_seconds",
                             upstream="openai")
        assert stamp is not None and abs(stamp - time.time()) < 60
        assert proxy.eventually("spendgate_reconciliation_errors_total",
                                upstream="anthropic") == 1
        assert proxy.sample("spendgate_reconciliation_drift_ratio", upstream="anthropic") is None
        # The failing admin API never touches calls.
        claude = anthropic.Anthropic(base_url=proxy.url + "/anthropic", api_key="sk-ant-x",
                                     max_retries=0)
        reply = claude.messages.create(model="claude-sonnet-4-5", max_tokens=64,
                                       messages=[{"role": "user", "content": "Hi"}])
        assert reply.usage.output_tokens == 57
        scrape = proxy.metrics_text()
        assert ANTHROPIC_KEY not in scrape and OPENAI_KEY not in scrape
    finally:
        proxy.stop()
    log = proxy.log()
    assert "reconcile anthropic: ReconcileError: GET /v1/organizations/usage_report/messages: " \
           "HTTP 500" in log
    assert ANTHROPIC_KEY not in log and OPENAI_KEY not in log


def test_a_ledger_that_cannot_be_read_is_an_error_of_every_upstream(admin: FakeAdminAPI) -> None:
    from prometheus_client import CollectorRegistry

    from spendgate.config import ReconcileConfig, parse_config
    from spendgate.reconcile.job import ReconcileJob, build_sources
    from tests.conftest import free_port

    dead = open_store(f"redis://127.0.0.1:{free_port()}/0", 0.2, 60)
    registry = CollectorRegistry()
    sources = build_sources(parse_config(config(admin, Path("/nonexistent"))))
    job = ReconcileJob(sources, dead.history, ReconcileConfig(), registry)
    try:
        assert job.run_once() == {}
    finally:
        dead.close()
    for upstream in ("openai", "anthropic"):
        assert registry.get_sample_value("spendgate_reconciliation_errors_total",
                                         {"upstream": upstream}) == 1
        assert registry.get_sample_value("spendgate_reconciliation_drift_ratio",
                                         {"upstream": upstream}) is None
    assert admin.requests == []          # the admin APIs are not asked for nothing to compare
