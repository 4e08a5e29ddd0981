"""The console at ``/ui``: who may read it, what its data says, and a real browser
(Playwright driving Debian's chromium, never a downloaded one) reading it against a proxy
that served known traffic."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.budget_helpers import SHARED_REDIS, redis_prefix  # noqa: F401  # a fixture
from tests.conftest import ProxyProcess, need
from tests.fake_upstream import FakeUpstream
from tests.test_spend_report import ADMIN, TRAFFIC, drive, reporting_config, start_reporting

CONSOLE_FILES = Path(__file__).resolve().parents[1] / "service" / "admin" / "console"
CHROMIUM = "/usr/bin/chromium"
AUTH = {"authorization": f"Bearer {ADMIN}"}


@pytest.fixture(scope="module")
def reporting(fake: FakeUpstream, spawn: Any, tmp_path_factory: pytest.TempPathFactory
              ) -> ProxyProcess:
    return start_reporting(fake, spawn, tmp_path_factory.mktemp("console"))


def test_with_an_admin_key_the_data_needs_it_and_the_page_does_not(reporting: ProxyProcess) -> None:
    page = httpx.get(reporting.url + "/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    for path in ("spend", "series", "budgets", "calls", "models", "price?model=gpt-4o"):
        assert httpx.get(f"{reporting.url}/ui/api/{path}").status_code == 401, path
        assert httpx.get(f"{reporting.url}/ui/api/{path}", headers=AUTH).status_code == 200, path
    assert httpx.get(reporting.url + "/ui/nope.js").status_code == 404
    assert httpx.get(reporting.url + "/ui", headers={"host": "evil.example"}).status_code == 421
    assert httpx.get(reporting.url + "/").text.startswith("spendgate: the console is at /ui")


def test_without_an_admin_key_only_loopback_callers_are_answered(
        fake: FakeUpstream, spawn: Any, tmp_path: Path) -> None:
    config = reporting_config(fake, tmp_path)
    config["server"] = {"host": "0.0.0.0", "allowed_hosts": ["*"]}
    proxy = spawn(config)
    assert httpx.get(proxy.url + "/ui/api/budgets").status_code == 200
    outside = _non_loopback_address()
    if outside is None:
        need("no non-loopback address on this machine to call the proxy from")
    for path in ("/ui", "/ui/api/budgets"):
        r = httpx.get(f"http://{outside}:{proxy.port}{path}")
        assert r.status_code == 403 and "loopback" in r.json()["detail"], path


def _non_loopback_address() -> str | None:
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this picks the route's address
            address: str = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_series_buckets_hold_the_calls_and_the_spend(reporting: ProxyProcess) -> None:
    spend = {r["project"]: r["spend_usd"] for r in httpx.get(
        reporting.url + "/admin/spend", headers=AUTH).json()["rows"]}
    for range_name, count in (("hour", 60), ("day", 24), ("month", 31)):
        view = httpx.get(reporting.url + "/ui/api/series", headers=AUTH,
                         params={"range": range_name, "by": "project"}).json()
        assert len(view["buckets"]) == count
        groups: dict[str, dict[str, float]] = {}
        for bucket in view["buckets"]:  # the calls may straddle a bucket boundary
            for name, values in bucket["groups"].items():
                entry = groups.setdefault(name, {"spend_usd": 0.0, "calls": 0})
                entry["spend_usd"] += values["spend_usd"]
                entry["calls"] += values["calls"]
        assert {p: g["calls"] for p, g in groups.items()} == {p: 1 for p in TRAFFIC}
        assert {p: g["spend_usd"] for p, g in groups.items()} == pytest.approx(spend)
    by_model = httpx.get(reporting.url + "/ui/api/series", headers=AUTH,
                         params={"range": "hour", "by": "model"}).json()
    assert {m for b in by_model["buckets"] for m in b["groups"]} == {m for m, _ in
                                                                    TRAFFIC.values()}
    assert httpx.get(reporting.url + "/ui/api/series", headers=AUTH,
                     params={"range": "year"}).status_code == 400


def test_series_from_a_shared_redis_store(fake: FakeUpstream, spawn: Any, tmp_path: Path,
                                          redis_prefix: str) -> None:  # noqa: F811
    config = reporting_config(fake, tmp_path, admin_key=ADMIN)
    config["store"] = {"url": SHARED_REDIS, "key_prefix": redis_prefix}
    proxy = spawn(config)
    drive(proxy, fake)
    buckets = httpx.get(proxy.url + "/ui/api/series", headers=AUTH,
                        params={"range": "day", "by": "project"}).json()["buckets"]
    calls = {p: sum(b["groups"].get(p, {}).get("calls", 0) for b in buckets) for p in TRAFFIC}
    assert calls == {p: 1 for p in TRAFFIC}
    assert sum(b["spend_usd"] for b in buckets) == pytest.approx(0.007002)


def test_budgets_carry_a_forecast_and_calls_the_access_log_fields(reporting: ProxyProcess) -> None:
    (budget,) = httpx.get(reporting.url + "/ui/api/budgets", headers=AUTH).json()["budgets"]
    assert budget["name"] == "tiny-cap" and budget["spend_usd"] == pytest.approx(0.0000015)
    assert budget["forecast_usd"] >= budget["spend_usd"]
    calls = httpx.get(reporting.url + "/ui/api/calls", headers=AUTH).json()
    assert calls["seen"] >= len(TRAFFIC)
    mine = [c for c in calls["calls"] if c["project"] in TRAFFIC]
    assert {c["project"] for c in mine} == set(TRAFFIC)
    assert all(c["path"] == "/openai/v1/chat/completions" and c["status"] == 200 for c in mine)
    price = httpx.get(reporting.url + "/ui/api/price", headers=AUTH,
                      params={"model": "gpt-4o-mini-2024-07-18"}).json()
    assert price["known"] and "matched: gpt-4o-mini" in price["text"]
    assert not httpx.get(reporting.url + "/ui/api/price", headers=AUTH,
                         params={"model": "nope-1"}).json()["known"]


def test_console_assets_load_nothing_from_elsewhere() -> None:
    names = sorted(p.name for p in CONSOLE_FILES.iterdir())
    assert names == ["console.css", "console.js", "index.html"]
    for path in CONSOLE_FILES.iterdir():
        text = path.read_text(encoding="utf-8")
        urls = set(re.findall(r"(?:https?:)?//[A-Za-z0-9.-]+\.[A-Za-z]{2,}[^\s\"')]*", text))
        assert urls <= {"http://www.w3.org/2000/svg"}, (path.name, urls)  # a namespace name


def test_the_console_in_a_browser_shows_what_the_admin_api_says(
        reporting: ProxyProcess, fake: FakeUpstream, tmp_path: Path) -> None:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        need("the playwright package is not installed: pip install '.[test]'")
    if not shutil.which(CHROMIUM):
        need(f"{CHROMIUM} not found: apt-get install chromium")
    admin = {r["project"]: r["spend_usd"] for r in httpx.get(
        reporting.url + "/admin/spend", headers=AUTH).json()["rows"]}
    budgets = httpx.get(reporting.url + "/admin/budgets", headers=AUTH).json()["budgets"]
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1600})
            page.on("request", lambda request: requests.append(request.url))
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(reporting.url + "/ui")
            page.wait_for_selector("#key-form:not([hidden])")
            assert page.is_hidden("#main")
            page.fill("#key-input", "wrong")
            page.click("#key-submit")
            # Locator waits only: the page's CSP forbids the eval behind wait_for_function.
            page.wait_for_selector("#key-error:has-text('refused')")
            page.fill("#key-input", ADMIN)
            page.click("#key-submit")
            page.wait_for_selector("#spend-table tbody tr[data-group]")
            page.wait_for_selector("#calls-table tbody tr")
            shown = {row.get_attribute("data-group"):
                     float(row.query_selector("td.num").get_attribute("data-usd") or "nan")
                     for row in page.query_selector_all("#spend-table tbody tr")}
            assert shown == admin
            texts = {row.get_attribute("data-group"): row.query_selector("td.num").inner_text()
                     for row in page.query_selector_all("#spend-table tbody tr")}
            assert texts == {"alpha": "$0.0000015", "beta": "$0.007", "gamma": "$0.0000005"}
            rows = page.query_selector_all("#budgets-table tbody tr")
            assert [r.get_attribute("data-budget") for r in rows] == [b["name"] for b in budgets]
            cells = [c.inner_text() for c in rows[0].query_selector_all("td")]
            assert cells[:3] == ["tiny-cap", "block", "day"]
            assert cells[3] == "$0.0000015" and cells[5] == "$0.001"
            projects = {r.query_selector_all("td")[5].inner_text()
                        for r in page.query_selector_all("#calls-table tbody tr")}
            assert set(TRAFFIC) <= projects
            assert page.query_selector_all("#chart svg rect"), "no bars in the chart"
            page.fill("#price-model", "gpt-4o")
            page.click("#price-form button")
            page.wait_for_selector("#price-out:has-text('USD per 1M')")
            # A call made now shows up without reloading (the recent calls refresh live).
            drive(reporting, fake)
            page.wait_for_selector(f"#calls-table tbody tr:nth-child({2 * len(TRAFFIC)})",
                                   timeout=10_000)
            page.screenshot(path=str(tmp_path / "console.png"), full_page=True)
            assert not errors, errors
        finally:
            browser.close()
    assert requests and all(url.startswith(reporting.url + "/") for url in requests), requests
