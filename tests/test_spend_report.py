"""``spendgate spend`` and ``spendgate budgets`` against a real proxy that served known
traffic, ``GET /admin/spend?format=csv``, and amounts that keep their digits."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from spendgate.admin.client import ratio_text, usd_text
from tests.budget_helpers import MODEL, budget_config, chat_body, chat_reply
from tests.conftest import ProxyProcess, spendgate_command
from tests.fake_upstream import FakeUpstream

ADMIN = "adm-report-5e1"
TINY = "tiny-model"        # $0.5 per Mtok of output: a token costs $0.0000005
JSON = {"content-type": "application/json"}
# project -> (model, output tokens): alpha $0.0000015, beta $0.007, gamma $0.0000005
TRAFFIC = {"alpha": (TINY, 3), "beta": (MODEL, 7), "gamma": (TINY, 1)}
EXPECTED = {"alpha": "0.0000015", "beta": "0.007", "gamma": "0.0000005"}


def reporting_config(fake: FakeUpstream, tmp: Path, **extra: Any) -> dict[str, Any]:
    config = budget_config(fake, [{"name": "tiny-cap", "project": "alpha",
                                   "limit_usd": "0.001", "window": "day", "action": "block"}],
                           store={"url": f"sqlite:///{tmp}/ledger.sqlite3"}, **extra)
    config["pricing"]["overrides"][TINY] = {"input_per_mtok": 0, "output_per_mtok": 0.5}
    return config


def drive(proxy: ProxyProcess, fake: FakeUpstream) -> None:
    before = proxy.sample("spendgate_requests_total", status="200") or 0
    for project, (model, tokens) in TRAFFIC.items():
        fake.queue(chat_reply(tokens, model=model))
        r = httpx.post(proxy.url + "/openai/v1/chat/completions", content=chat_body(5, model),
                       headers={**JSON, "x-spendgate-project": project}, timeout=20)
        assert r.status_code == 200, r.text
    deadline = time.monotonic() + 5  # recorded after the caller has its bytes
    while (proxy.sample("spendgate_requests_total", status="200") or 0) < before + len(TRAFFIC):
        assert time.monotonic() < deadline, "calls not recorded"
        time.sleep(0.05)


def start_reporting(fake: FakeUpstream, spawn: Any, tmp: Path) -> ProxyProcess:
    """A proxy with ``ADMIN`` as its admin key that served ``TRAFFIC``."""
    fake.replies.clear()
    proxy: ProxyProcess = spawn(reporting_config(fake, tmp, admin_key=ADMIN))
    drive(proxy, fake)
    return proxy


@pytest.fixture(scope="module")
def reporting(fake: FakeUpstream, spawn: Any, tmp_path_factory: pytest.TempPathFactory
              ) -> ProxyProcess:
    return start_reporting(fake, spawn, tmp_path_factory.mktemp("report"))


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(spendgate_command(*args), capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin"})


def admin_spend(proxy: ProxyProcess, **query: str) -> httpx.Response:
    return httpx.get(proxy.url + "/admin/spend", params=query,
                     headers={"authorization": f"Bearer {ADMIN}"})


def test_spend_table_keeps_the_digits_of_small_sums(reporting: ProxyProcess) -> None:
    run = cli("spend", "--url", reporting.url, "--admin-key", ADMIN)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("spend, window day (") and lines[1].split() == ["PROJECT", "SPEND"]
    rows = {line.split()[0]: line.split()[1] for line in lines[2:]}
    assert rows == {"beta": "$0.007", "alpha": "$0.0000015", "gamma": "$0.0000005",
                    "TOTAL": "$0.007002"}
    assert "$0.00 " not in run.stdout + " "


def test_spend_csv_is_the_proxys_csv(reporting: ProxyProcess) -> None:
    run = cli("spend", "--url", reporting.url, "--admin-key", ADMIN, "--by", "project,model",
              "--window", "month", "--format", "csv")
    assert run.returncode == 0, run.stderr
    served = admin_spend(reporting, group_by="project,model", window="month", format="csv")
    assert served.headers["content-type"].startswith("text/csv")
    assert run.stdout == served.text.replace("\r\n", "\n")  # text mode reads CRLF as LF
    rows = list(csv.DictReader(io.StringIO(served.text)))
    assert {r["project"]: (r["model"], r["spend_usd"]) for r in rows} == {
        p: (TRAFFIC[p][0], EXPECTED[p]) for p in TRAFFIC}


def test_spend_json_is_the_admin_view(reporting: ProxyProcess) -> None:
    run = cli("spend", "--url", reporting.url, "--admin-key", ADMIN, "--by", "upstream",
              "--window", "total", "--format", "json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == admin_spend(reporting, group_by="upstream",
                                                 window="total").json()
    assert json.loads(run.stdout)["rows"] == [{"upstream": "openai", "spend_usd": 0.007002}]


def test_spend_refuses_bad_arguments(reporting: ProxyProcess) -> None:
    assert cli("spend", "--url", reporting.url, "--by", "colour").returncode == 2
    assert admin_spend(reporting, format="xml").status_code == 400
    refused = cli("spend", "--url", reporting.url, "--admin-key", "wrong")
    assert refused.returncode == 1 and "admin key refused" in refused.stderr


def test_budgets_show_a_tiny_limit_as_it_is(reporting: ProxyProcess) -> None:
    run = cli("budgets", "--url", reporting.url, "--admin-key", ADMIN)
    assert run.returncode == 0, run.stderr
    name, action, window, spend, reserved, limit, used, _ = run.stdout.splitlines()[1].split()
    assert (name, action, window) == ("tiny-cap", "block", "day")
    assert (spend, reserved, limit, used) == ("$0.0000015", "$0.00", "$0.001", "0.1%")


def test_without_an_admin_key_a_local_proxy_is_read_through_its_console(
        fake: FakeUpstream, spawn: Any, tmp_path: Path) -> None:
    fake.replies.clear()
    proxy = spawn(reporting_config(fake, tmp_path))
    drive(proxy, fake)
    assert httpx.get(proxy.url + "/admin/spend").status_code == 404  # the admin API stays off
    run = cli("spend", "--url", proxy.url, "--format", "csv")
    assert run.returncode == 0, run.stderr
    assert sorted(run.stdout.splitlines()) == sorted(
        ["project,spend_usd", *(f"{p},{v}" for p, v in EXPECTED.items())])
    budgets = cli("budgets", "--url", proxy.url)
    assert budgets.returncode == 0 and "$0.001" in budgets.stdout, budgets.stderr


@pytest.mark.parametrize(("value", "text"), [
    (0.0, "$0.00"), (0.001, "$0.001"), (0.0000015, "$0.0000015"), (1e-9, "$0.000000001"),
    (0.5, "$0.50"), (1234.5678, "$1,234.57"), (None, "-"), (4e-10, "<$0.000000001"),
])
def test_usd_text(value: float | None, text: str) -> None:
    assert usd_text(value) == text


def test_ratio_text() -> None:
    assert [ratio_text(r) for r in (None, 0.0, 0.0005, 0.5, 1.25)] == [
        "-", "0.0%", "<0.1%", "50.0%", "125.0%"]


def test_error_and_alert_amounts_keep_their_digits_too() -> None:
    from spendgate.money import usd
    assert [usd(n) for n in (0, 1, 500, 1_500, 1_000_000, 1_234_500_000_000)] == [
        "$0.00", "$0.000000001", "$0.0000005", "$0.0000015", "$0.001", "$1,234.50"]
