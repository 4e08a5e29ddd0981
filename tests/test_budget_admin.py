"""Seeing and changing budgets: the admin API, ``spendgate budgets``, and SIGHUP reloads."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from typing import Any

import httpx
import pytest
import yaml

from tests.budget_helpers import MODEL, budget_config, chat_body, chat_reply, wait_for
from tests.conftest import ROOT, ProxyProcess, spendgate_command
from tests.fake_upstream import FakeUpstream

ADMIN = "adm-8c1f-secret"
JSON = {"content-type": "application/json"}


def call(proxy: ProxyProcess, project: str = "default", model: str = MODEL,
         key: str | None = None) -> int:
    headers = {**JSON, "x-spendgate-project": project}
    if key:
        headers["x-spendgate-key"] = key
    body = chat_body(100, model)
    return httpx.post(proxy.url + "/openai/v1/chat/completions", content=body,
                      headers=headers, timeout=20).status_code


@pytest.fixture(scope="module")
def admin_proxy(fake: FakeUpstream, spawn: Any) -> ProxyProcess:
    return spawn(budget_config(fake, [  # type: ignore[no-any-return]
        {"name": "search-monthly", "project": "search", "limit_usd": 500, "window": "month",
         "action": "block", "alert_at": [0.5, 0.8, 1.0]},
        {"name": "all-daily", "limit_usd": "2.5", "window": "day", "action": "alert"}],
        admin_key=ADMIN))


def test_admin_api_is_off_without_an_admin_key(proxy: ProxyProcess) -> None:
    for path in ("/admin/budgets", "/admin/spend"):
        assert httpx.get(proxy.url + path,
                         headers={"authorization": "Bearer anything"}).status_code == 404


def test_admin_api_needs_the_key(admin_proxy: ProxyProcess) -> None:
    url = admin_proxy.url + "/admin/budgets"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(url, headers={"authorization": f"Basic {ADMIN}"}).status_code == 401
    assert httpx.get(url, headers={"x-spendgate-admin-key": ADMIN[:-1]}).status_code == 401
    assert httpx.get(url, headers={"authorization": f"Bearer {ADMIN}"}).status_code == 200
    assert httpx.get(url, headers={"x-spendgate-admin-key": ADMIN}).status_code == 200
    assert ADMIN not in admin_proxy.log()


def test_admin_views_show_budgets_and_spend(admin_proxy: ProxyProcess,
                                            upstream: FakeUpstream) -> None:
    upstream.queue(*[chat_reply(100) for _ in range(3)])
    assert [call(admin_proxy, "search"), call(admin_proxy, "search"),
            call(admin_proxy, "ads")] == [200, 200, 200]
    auth = {"authorization": f"Bearer {ADMIN}"}
    view = httpx.get(admin_proxy.url + "/admin/budgets", headers=auth).json()
    assert view["store"] == {"backend": "sqlite", "ok": True, "error": None}
    budgets = {b["name"]: b for b in view["budgets"]}
    search = budgets["search-monthly"]
    assert (search["spend_usd"], search["reserved_usd"], search["limit_usd"]) == (0.2, 0, 500)
    assert search["ratio"] == pytest.approx(0.2 / 500)
    assert (search["action"], search["window"], search["selectors"]) == (
        "block", "month", {"project": "search"})
    assert search["window_id"].startswith("month:") and search["resets_at"].endswith("Z")
    assert budgets["all-daily"]["spend_usd"] == pytest.approx(0.3)
    spend = httpx.get(admin_proxy.url + "/admin/spend?group_by=project,model&window=day",
                      headers=auth).json()
    assert spend["group_by"] == ["project", "model"] and spend["window"] == "day"
    rows = {(r["project"], r["model"]): r["spend_usd"] for r in spend["rows"]}
    assert rows == {("search", MODEL): pytest.approx(0.2), ("ads", MODEL): pytest.approx(0.1)}
    assert spend["total_usd"] == pytest.approx(0.3)
    by_upstream = httpx.get(admin_proxy.url + "/admin/spend?group_by=upstream&window=total",
                            headers=auth).json()
    assert by_upstream["rows"] == [{"upstream": "openai", "spend_usd": pytest.approx(0.3)}]
    bad = httpx.get(admin_proxy.url + "/admin/spend?group_by=colour", headers=auth)
    assert bad.status_code == 400 and "colour" in bad.json()["detail"]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(spendgate_command(*args), capture_output=True, text=True, timeout=30,
                          cwd=ROOT, env={**os.environ, **(env or {})})


def test_budgets_command_prints_a_table(admin_proxy: ProxyProcess) -> None:
    done = run_cli("budgets", "--url", admin_proxy.url, env={"SPENDGATE_ADMIN_KEY": ADMIN})
    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.splitlines()
    assert header.split() == ["BUDGET", "ACTION", "WINDOW", "SPEND", "RESERVED", "LIMIT",
                              "USED", "RESETS"]
    cells = {row.split()[0]: row.split() for row in rows}
    assert cells["search-monthly"][1:3] == ["block", "month"]
    assert cells["search-monthly"][5] == "$500.00"
    assert cells["all-daily"][5] == "$2.50" and cells["all-daily"][7].endswith("Z")
    refused = run_cli("budgets", "--url", admin_proxy.url, "--admin-key", "nope")
    assert refused.returncode == 1 and "admin key refused" in refused.stderr
    unreachable = run_cli("budgets", "--url", "http://127.0.0.1:9")
    assert unreachable.returncode == 1 and "127.0.0.1:9" in unreachable.stderr


# ---- SIGHUP ----------------------------------------------------------------------------------

def rewrite(proxy: ProxyProcess, config: dict[str, Any]) -> None:
    proxy.config_path.write_text(yaml.safe_dump(config))
    assert proxy.proc is not None
    proxy.proc.send_signal(signal.SIGHUP)


def budget_names(proxy: ProxyProcess) -> list[str]:
    r = httpx.get(proxy.url + "/admin/budgets", headers={"x-spendgate-admin-key": ADMIN})
    return [b["name"] for b in r.json()["budgets"]] if r.status_code == 200 else []


def test_sighup_reloads_budgets_keys_and_prices_without_dropping_calls(
        spawn: Any, upstream: FakeUpstream) -> None:
    before = budget_config(upstream, [
        {"name": "cap", "limit_usd": "0.25", "window": "day", "action": "block"}],
        admin_key=ADMIN)
    proxy = spawn(before)
    upstream.queue(chat_reply(100), chat_reply(100, delay_s=1.5))
    assert call(proxy) == 200
    in_flight: list[int] = []
    slow = threading.Thread(target=lambda: in_flight.append(call(proxy)))
    slow.start()
    time.sleep(0.3)  # the slow call has its reservation and waits on the upstream
    after = budget_config(upstream, [
        {"name": "cap", "limit_usd": "1", "window": "day", "action": "block"},
        {"name": "new-one", "project": "late", "limit_usd": 5}],
        admin_key=ADMIN, keys=[{"key": "sk-new-key", "project": "late", "name": "late-key"}])
    after["pricing"]["overrides"]["cheap-model"] = {"input_per_mtok": 0, "output_per_mtok": 1}
    rewrite(proxy, after)
    slow.join(10)
    assert in_flight == [200]
    assert wait_for(lambda: "new-one" in budget_names(proxy))
    upstream.queue(*[chat_reply(100) for _ in range(2)])
    assert call(proxy) == 401  # keys are now required
    assert [call(proxy, key="sk-new-key") for _ in range(2)] == [200, 200]  # past $0.25
    view = httpx.get(proxy.url + "/admin/budgets", headers={"x-spendgate-admin-key": ADMIN})
    budgets = {b["name"]: b for b in view.json()["budgets"]}
    assert budgets["cap"]["spend_usd"] == pytest.approx(0.4)
    assert budgets["new-one"]["spend_usd"] == pytest.approx(0.2)  # project "late", the key's
    assert budgets["cap"]["reserved_usd"] == 0
    # New prices apply: 100 output tokens of cheap-model cost $0.0001.
    upstream.queue(chat_reply(100, model="cheap-model"))
    assert call(proxy, key="sk-new-key", model="cheap-model") == 200
    assert proxy.sample("spendgate_cost_usd_total", model="cheap-model") == pytest.approx(1e-4)
    assert "sk-new-key" not in proxy.log()


def test_sighup_with_a_bad_config_keeps_the_running_one(spawn: Any,
                                                        upstream: FakeUpstream) -> None:
    good = budget_config(upstream, [
        {"name": "cap", "limit_usd": "0.15", "window": "day", "action": "block"}],
        admin_key=ADMIN)
    proxy = spawn(good)
    bad = budget_config(upstream, [
        {"name": "cap", "limit_usd": -1, "window": "fortnight", "action": "block"}],
        admin_key=ADMIN)
    rewrite(proxy, bad)
    assert wait_for(lambda: "reload rejected" in proxy.log())
    log = proxy.log()
    assert "budgets.0.limit_usd" in log and "budgets.0.window" in log
    assert budget_names(proxy) == ["cap"]
    upstream.queue(chat_reply(100), chat_reply(100))
    assert [call(proxy), call(proxy)] == [200, 429]  # the old $0.15 limit still holds
    proxy.config_path.write_text("budgets: [unclosed")
    assert proxy.proc is not None
    proxy.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: "not valid YAML" in proxy.log())
    assert proxy.proc.poll() is None and budget_names(proxy) == ["cap"]
