"""Budgets end to end: admission, 429s, hard caps across replicas, restarts, rollover, outages.

In-process tests drive the real gate, ledger and SQLite store with an injected clock; the
rest run real ``spendgate serve`` processes in front of the fake provider, with SDK clients.
Prices: ``budget-model`` costs $0.001 per output token and nothing per input token, so a
call with ``max_tokens: 100`` that the upstream reports as 100 output tokens costs exactly
its reservation, $0.10.
"""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest
import redis
from prometheus_client import CollectorRegistry

from spendgate.accounting.pricing import PriceCatalog
from spendgate.accounting.tokens import TokenEstimator
from spendgate.budgets.book import BudgetBook
from spendgate.budgets.gate import (
    DEFAULT_OUTPUT_TOKENS,
    IMAGE_TOKENS_WORST,
    prompt_tokens_bound,
    worst_case_nano,
)
from spendgate.budgets.manager import BudgetManager
from spendgate.config import BudgetConfig, parse_config
from spendgate.errors import BudgetExceeded, ConfigError
from spendgate.providers import PROVIDERS
from spendgate.records import CallOutcome
from tests.budget_helpers import (  # noqa: F401  (fixtures)
    MODEL,
    PRICE,
    SHARED_REDIS,
    RedisServer,
    budget_config,
    chat_body,
    chat_reply,
    messages_reply,
    private_redis,
    redis_prefix,
    usage_record,
    wait_for,
)
from tests.conftest import ProxyProcess
from tests.fake_upstream import FakeUpstream

NANO_PER_CALL = 100_000_000  # $0.10
JSON = {"content-type": "application/json"}


def outcome_for(body: bytes, project: str = "default", protocol: str = "openai",
                key: str | None = None) -> CallOutcome:
    outcome = CallOutcome(protocol, protocol, protocol, time.time(), time.perf_counter())
    path = "/v1/messages" if protocol == "anthropic" else "/v1/chat/completions"
    outcome.request = PROVIDERS[protocol].parse_request("POST", path, body)
    outcome.project, outcome.virtual_key = project, key
    return outcome


def catalog() -> PriceCatalog:
    from spendgate.accounting.pricing import Price
    return PriceCatalog.load(overrides={MODEL: Price(input=Decimal(0), output=Decimal(1000))})


def openai_client(proxy: ProxyProcess, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/openai/v1", api_key="sk-caller", max_retries=0,
                         default_headers=headers)


def admin_view(proxy: ProxyProcess, key: str = "adm") -> dict[str, Any]:
    r = httpx.get(proxy.url + "/admin/budgets", headers={"authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    return {b["name"]: b for b in r.json()["budgets"]}


def next_utc_midnight(now: float) -> float:
    today = datetime.fromtimestamp(now, UTC).date()
    return datetime(today.year, today.month, today.day, tzinfo=UTC).timestamp() + 86400


# ---- the reservation: worst case of a call ------------------------------------------------

def test_worst_case_is_max_tokens_times_n_at_output_price() -> None:
    prices = catalog()
    outcome = outcome_for(chat_body(100))
    assert worst_case_nano(outcome, prices) == 100 * 1000 * 1000  # 100 tokens at $1000/M
    body = orjson.dumps({"model": MODEL, "max_tokens": 100, "n": 3, "messages": []})
    assert worst_case_nano(outcome_for(body), prices) == 3 * NANO_PER_CALL


def test_worst_case_without_max_tokens_uses_the_catalog_maximum() -> None:
    prices = PriceCatalog.load()
    body = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    outcome = outcome_for(body)
    entry = prices.entries["gpt-4o-mini"]
    assert entry.max_output_tokens and entry.price.output and entry.price.input
    # The catalog's gpt-4o-mini: $0.15/M input, $0.60/M output, 16,384 output tokens at
    # most. The prompt is bounded by the body's 67 bytes (it counts 8 tokens).
    assert (entry.price.input, entry.price.output, entry.max_output_tokens) == (
        Decimal("0.15"), Decimal("0.6"), 16384)
    assert len(body) == 67
    assert prompt_tokens_bound(outcome.request) == 67  # type: ignore[arg-type]
    # (67 x 0.15 + 16,384 x 0.6) / 1e6 USD = $0.00984045 = 9,840,450 nano-dollars
    assert worst_case_nano(outcome, prices) == 9_840_450
    unknown = orjson.dumps({"model": "my-own-llm", "messages": []})
    assert worst_case_nano(outcome_for(unknown), prices) == 0  # unpriced: costs 0
    assert DEFAULT_OUTPUT_TOKENS > 0


def test_worst_case_uses_the_requested_tier_and_the_prompts_context_tier() -> None:
    prices = PriceCatalog.load()
    msgs = [{"role": "user", "content": "hi"}]
    priority = outcome_for(orjson.dumps({"model": "gpt-5", "service_tier": "priority",
                                         "max_tokens": 1000, "messages": msgs}))
    assert prompt_tokens_bound(priority.request) == 105  # type: ignore[arg-type]  # bytes
    # gpt-5 priority: input 2.5, output 20 per Mtok: 105 x 2.5 + 1000 x 20 = 20262.5 micro-USD
    assert worst_case_nano(priority, prices) == 20_262_500
    # through an upstream with price_multiplier 0.8: 20262.5 x 0.8 = 16210 micro-USD
    discounted = PriceCatalog.load(multipliers={"openai": Decimal("0.8")})
    assert priority.upstream == "openai"
    assert worst_case_nano(priority, discounted) == 16_210_000
    standard = outcome_for(orjson.dumps({"model": "gpt-5", "max_tokens": 1000, "messages": msgs}))
    # base: 79 bytes x 1.25 + 1000 x 10 = 10098.75 micro-USD
    assert worst_case_nano(standard, prices) == 10_098_750
    long = orjson.dumps({"model": "gpt-5.4", "max_tokens": 1000,
                         "messages": [{"role": "user", "content": "x" * 300_000}]})
    assert len(long) == 300_079  # bounded by its bytes: over 272k, so the above_272k rates
    # 300079 x 5 + 1000 x 22.5 = 1,500,395 + 22,500 = 1,522,895 micro-USD
    assert worst_case_nano(outcome_for(long), prices) == 1_522_895_000


def test_prompt_bound_covers_the_tokenizer_count_and_images() -> None:
    """A true upper bound without a tokenizer: every encoding's count is at most the bound,
    for English, code-like text, CJK and emoji, in small and large bodies."""
    est = TokenEstimator()
    texts = ["The quick brown fox jumps over the lazy dog. " * 20, "x=1;\n\t{}[]" * 50,
             "日本語のテキスト、絵文字🙂も。" * 30, "\u0000\"" * 40]
    for text in texts:
        for size in (1, 20):
            info = outcome_for(orjson.dumps({"model": "gpt-4o", "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": text * size}]})).request
            assert info is not None
            bound = prompt_tokens_bound(info)
            assert bound == len(info.upstream_body)
            for model in ("gpt-4o", "gpt-4"):  # o200k_base and cl100k_base
                counted = est.estimate_prompt("chat", info.json, model)
                assert counted is not None and counted <= bound
    image = outcome_for(orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}]}]})).request
    assert image is not None
    assert prompt_tokens_bound(image) >= IMAGE_TOKENS_WORST


# ---- which budgets cover a call ----------------------------------------------------------

def test_selectors_all_must_match_and_globs_work() -> None:
    book = BudgetBook([
        BudgetConfig(name="search", project="search", limit_usd=Decimal(1)),
        BudgetConfig(name="gpt5-openai", model="gpt-5*", upstream="openai", limit_usd=Decimal(1)),
        BudgetConfig(name="alice", key="alice", limit_usd=Decimal(1)),
        BudgetConfig(name="everything", limit_usd=Decimal(1)),
    ])
    names = lambda *a: [b.name for b in book.match(*a)]  # noqa: E731
    assert names("openai", "search", "GPT-5-mini", "") == ["search", "gpt5-openai", "everything"]
    assert names("azure", "search", "gpt-5", "alice") == ["search", "alice", "everything"]
    assert names("openai", "other", "gpt-4o", "search#1") == ["everything"]


def test_a_call_of_unreadable_model_is_under_every_block_budget_its_other_selectors_match(
        ) -> None:
    book = BudgetBook([
        BudgetConfig(name="alerting", project="search", limit_usd=Decimal(1)),
        BudgetConfig(name="search-gpt5", project="search", model="gpt-5*", action="block",
                     limit_usd=Decimal(1)),
    ])
    found = book.block_any_model("openai", "search", "")
    assert found is not None and found.name == "search-gpt5"
    assert book.block_any_model("openai", "support", "") is None
    assert [b.name for b in book.match("openai", "search", "unknown", "")] == ["alerting"]


def test_config_rejects_unknown_key_names_and_duplicate_budgets() -> None:
    keys = [{"key": "sk-1", "project": "a", "name": "alice"}, {"key": "sk-2", "project": "b"}]
    ok = parse_config({"keys": keys, "budgets": [
        {"name": "x", "key": "alice", "limit_usd": 1}, {"name": "y", "key": "b#1", "limit_usd": 1}]})
    assert [b.key for b in ok.budgets] == ["alice", "b#1"]
    with pytest.raises(ConfigError) as caught:
        parse_config({"keys": keys, "budgets": [{"name": "x", "key": "bob", "limit_usd": 1}]})
    assert "names no virtual key" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        parse_config({"budgets": [{"name": "x", "limit_usd": 1}, {"name": "x", "limit_usd": 2}]})
    assert "unique" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        parse_config({"budgets": [{"name": "x", "limit_usd": 1, "timezone": "Mars/Olympus",
                                   "alert_at": [0]}]})
    assert {p.split(":")[0] for p in caught.value.problems} == {
        "budgets.0.timezone", "budgets.0.alert_at"}


# ---- the gate with an injected clock --------------------------------------------------------

def test_window_rollover_with_an_injected_clock(tmp_path: Path) -> None:
    clock = [datetime(2026, 3, 4, 23, 59, 58, tzinfo=UTC).timestamp()]
    config = parse_config({"store": {"url": f"sqlite:///{tmp_path}/ledger.sqlite3"}, "budgets": [
        {"name": "daily", "limit_usd": "0.2", "window": "day", "action": "block"}]})
    budgeting = BudgetManager(config, catalog(), CollectorRegistry(),
                          clock=lambda: clock[0])
    gate = budgeting.gate

    def call() -> CallOutcome:
        outcome = outcome_for(chat_body(100))
        asyncio.run(gate.reserve(outcome))
        budgeting.export([usage_record(reservation=outcome.reservation)])
        budgeting.settle_now()  # as the ledger's thread would within SETTLE_EVERY_S
        return outcome

    assert call().budget_decision == "allowed"
    assert call().budget_decision == "allowed"
    with pytest.raises(BudgetExceeded) as caught:
        call()
    assert dict(caught.value.headers)[b"retry-after"] == b"2"
    assert "'daily'" in caught.value.message and "$0.20 of $0.20" in caught.value.message
    assert "2026-03-05T00:00:00Z" in caught.value.message
    clock[0] += 2.5  # past midnight: a new window with nothing spent
    assert call().budget_decision == "allowed"
    [view] = budgeting.budgets_view()["budgets"]
    assert (view["window_id"], view["spend_usd"], view["reserved_usd"]) == (
        "day:2026-03-05", 0.1, 0.0)
    asyncio.run(budgeting.close())


def test_reservation_is_capped_by_max_reserve(tmp_path: Path) -> None:
    config = parse_config({"store": {"url": f"sqlite:///{tmp_path}/l.sqlite3"}, "budgets": [
        {"name": "capped", "limit_usd": 1, "action": "block", "max_reserve_usd": "0.05"}]})
    budgeting = BudgetManager(config, catalog(), CollectorRegistry())
    outcome = outcome_for(chat_body(100_000))  # worst case $100: far over the limit
    asyncio.run(budgeting.gate.reserve(outcome))
    assert [h.amount for h in outcome.reservation.holds] == [50_000_000]
    assert outcome.reservation.worst_case_nano == 100 * 10**9
    asyncio.run(budgeting.close())


# ---- 429 in both protocols -----------------------------------------------------------------

@pytest.fixture(scope="module")
def capped(fake: FakeUpstream, spawn: Any) -> ProxyProcess:
    """Block budget of $0.25 a day over everything; two $0.10 calls fit, the third does not."""
    return spawn(budget_config(fake, [
        {"name": "daily-cap", "limit_usd": "0.25", "window": "day", "action": "block"},
        {"name": "watch", "limit_usd": 100, "window": "month", "action": "alert"}],
        admin_key="adm"))  # type: ignore[no-any-return]


def test_block_budget_answers_429_in_each_protocol(capped: ProxyProcess,
                                                   upstream: FakeUpstream) -> None:
    upstream.queue(chat_reply(100), messages_reply(100))
    client = openai_client(capped)
    client.chat.completions.create(model=MODEL, max_tokens=100,
                                   messages=[{"role": "user", "content": "one"}])
    claude = anthropic.Anthropic(base_url=capped.url + "/anthropic", api_key="sk-ant",
                                 max_retries=0)
    claude.messages.create(model=MODEL, max_tokens=100,
                           messages=[{"role": "user", "content": "two"}])
    capped.metrics_text()  # a scrape: both calls' spend is in the store, not only reserved
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model=MODEL, max_tokens=100,
                                       messages=[{"role": "user", "content": "three"}])
    error = refused.value.response.json()["error"]
    assert error["type"] == "budget_exceeded" and error["code"] == "spendgate_budget_exceeded"
    for part in ("'daily-cap'", "spent $0.20 of $0.25", "up to $0.10", "resets at"):
        assert part in error["message"]
    headers = refused.value.response.headers
    seconds_left = next_utc_midnight(time.time()) - time.time()
    assert abs(int(headers["retry-after"]) - seconds_left) <= 5
    assert headers["x-should-retry"] == "false"
    with pytest.raises(anthropic.RateLimitError) as refused_claude:
        claude.messages.create(model=MODEL, max_tokens=100,
                               messages=[{"role": "user", "content": "four"}])
    body = refused_claude.value.response.json()
    assert body["type"] == "error" and body["error"]["type"] == "budget_exceeded"
    assert "'daily-cap'" in body["error"]["message"]
    assert len(upstream.requests) == 2  # refused calls never reach the upstream
    # A call that costs nothing (a model without a price) still fits under the limit.
    upstream.queue(chat_reply(5, model="unpriced-model"))
    openai_client(capped).chat.completions.create(
        model="unpriced-model", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert capped.sample("spendgate_budget_blocked_total", budget="daily-cap") == 2
    # x-should-retry: false keeps an SDK with its default retries from asking again.
    retrying = openai.OpenAI(base_url=capped.url + "/openai/v1", api_key="sk-caller")
    with pytest.raises(openai.RateLimitError):
        retrying.chat.completions.create(model=MODEL, max_tokens=100,
                                         messages=[{"role": "user", "content": "five"}])
    assert capped.sample("spendgate_budget_blocked_total", budget="daily-cap") == 3
    assert capped.sample("spendgate_requests_total", status="429") == 3
    assert capped.sample("spendgate_budget_spend_usd", budget="daily-cap") == pytest.approx(0.2)
    assert capped.sample("spendgate_budget_spend_usd", budget="watch") == pytest.approx(0.2)
    assert capped.sample("spendgate_budget_limit_usd", budget="daily-cap") == 0.25
    assert capped.sample("spendgate_budget_info", budget="daily-cap", window="day",
                         action="block") == 1
    assert capped.sample("spendgate_budget_window_reset_timestamp_seconds",
                         budget="daily-cap") == next_utc_midnight(time.time())
    view = admin_view(capped)
    assert view["daily-cap"]["reserved_usd"] == 0 and view["daily-cap"]["ratio"] == 0.8


def test_budgets_follow_named_keys(spawn: Any, upstream: FakeUpstream) -> None:
    proxy = spawn(budget_config(upstream, [
        {"name": "alice-cap", "key": "alice", "limit_usd": "0.1", "action": "block"}],
        keys=[{"key": "sk-alice", "project": "search", "name": "alice"},
              {"key": "sk-bob", "project": "search"}]))
    upstream.queue(*[chat_reply(100) for _ in range(3)])
    alice = openai.OpenAI(base_url=proxy.url + "/openai/v1", api_key="sk-alice", max_retries=0)
    bob = openai.OpenAI(base_url=proxy.url + "/openai/v1", api_key="sk-bob", max_retries=0)
    ask = {"model": MODEL, "max_tokens": 100, "messages": [{"role": "user", "content": "x"}]}
    alice.chat.completions.create(**ask)  # type: ignore[call-overload]
    with pytest.raises(openai.RateLimitError):
        alice.chat.completions.create(**ask)  # type: ignore[call-overload]
    bob.chat.completions.create(**ask)  # type: ignore[call-overload]  # search#1: not covered
    bob.chat.completions.create(**ask)  # type: ignore[call-overload]
    assert "sk-alice" not in proxy.log() and "sk-bob" not in proxy.log()


# ---- state that outlives a process -------------------------------------------------------

def test_sqlite_spend_survives_a_restart(spawn: Any, upstream: FakeUpstream) -> None:
    proxy = spawn(budget_config(upstream, [
        {"name": "forever", "limit_usd": 1, "window": "total", "action": "block"}]))
    upstream.queue(*[chat_reply(100) for _ in range(3)])
    for _ in range(3):
        assert httpx.post(proxy.url + "/openai/v1/chat/completions", content=chat_body(100),
                          headers=JSON).status_code == 200
    assert proxy.sample("spendgate_budget_spend_usd", budget="forever") == pytest.approx(0.3)
    proxy.stop()
    proxy.start()  # same working directory, so the same spendgate-data/ledger.sqlite3
    assert proxy.sample("spendgate_budget_spend_usd", budget="forever") == pytest.approx(0.3)
    assert (proxy.config_path.parent / "spendgate-data" / "ledger.sqlite3").exists()
    upstream.queue(*[chat_reply(100) for _ in range(8)])
    statuses = [httpx.post(proxy.url + "/openai/v1/chat/completions", content=chat_body(100),
                           headers=JSON).status_code for _ in range(8)]
    assert statuses == [200] * 7 + [429]  # $0.30 before the restart + 7 x $0.10 = $1.00
    r = httpx.post(proxy.url + "/openai/v1/chat/completions", content=chat_body(100),
                   headers=JSON)
    assert "never resets" in r.json()["error"]["message"] and "retry-after" not in r.headers


def test_window_rolls_over_in_a_running_proxy(spawn: Any, upstream: FakeUpstream) -> None:
    """SPENDGATE_CLOCK_OFFSET_S (test-only) puts the proxy 10 s before a UTC midnight."""
    real_now = time.time()
    midnight = next_utc_midnight(real_now + 86400)
    offset = midnight - 10 - real_now
    proxy = spawn(budget_config(upstream, [
        {"name": "daily", "limit_usd": "0.2", "window": "day", "action": "block"}],
        admin_key="adm"), env={"SPENDGATE_CLOCK_OFFSET_S": repr(offset)})
    rollover_real = midnight - offset
    upstream.queue(*[chat_reply(100) for _ in range(3)])
    post = lambda: httpx.post(proxy.url + "/openai/v1/chat/completions",  # noqa: E731
                              content=chat_body(100), headers=JSON)
    assert [post().status_code, post().status_code] == [200, 200]
    refused = post()
    assert time.time() < rollover_real, "the machine was too slow for this test's margin"
    assert refused.status_code == 429
    assert 0 < int(refused.headers["retry-after"]) <= 10
    before = admin_view(proxy)["daily"]
    time.sleep(max(rollover_real - time.time(), 0) + 0.3)
    assert post().status_code == 200
    after = admin_view(proxy)["daily"]
    assert (before["window_id"], after["window_id"]) == (
        f"day:{(datetime.fromtimestamp(midnight, UTC) - timedelta(days=1)).date()}",
        f"day:{datetime.fromtimestamp(midnight, UTC).date()}")
    assert (before["spend_usd"], after["spend_usd"]) == (0.2, 0.1)


# ---- replicas sharing Redis ----------------------------------------------------------------

@pytest.mark.parametrize("backend", ["redis", "sqlite"])
def test_two_replicas_sharing_a_store_hold_a_hard_cap(
        spawn: Any, upstream: FakeUpstream, redis_prefix: str,  # noqa: F811
        tmp_path: Path, backend: str) -> None:
    """16 concurrent callers over two replicas sharing Redis, or one SQLite file: the
    upstream is never billed past the limit, though each replica writes its spend in bulk
    (every ``SETTLE_EVERY_S``: reservations hold the room meanwhile), and calls are not
    refused while more than two calls' worth of the budget remains."""
    limit_calls = 20
    store = ({"url": SHARED_REDIS, "key_prefix": redis_prefix} if backend == "redis"
             else {"url": f"sqlite:///{tmp_path}/shared/ledger.sqlite3"})
    config = budget_config(upstream, [
        {"name": "shared-cap", "limit_usd": limit_calls * 0.1, "window": "day",
         "action": "block"}], store=store, admin_key="adm")
    replicas = [spawn(config), spawn(config)]
    upstream.queue(*[chat_reply(100, delay_s=0.03) for _ in range(200)])
    outcomes: list[tuple[int, int]] = []
    start = threading.Barrier(16)

    def caller(i: int) -> None:
        proxy = replicas[i % 2]
        with httpx.Client(timeout=30) as http:
            start.wait()
            while True:
                r = http.post(proxy.url + "/openai/v1/chat/completions",
                              content=chat_body(100), headers=JSON)
                outcomes.append((i % 2, r.status_code))
                if r.status_code != 200:
                    return

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert {status for _, status in outcomes} == {200, 429}
    billed = sum(orjson.loads(chat_reply(100).body)["usage"]["completion_tokens"]
                 for _ in upstream.requests) * Decimal("0.001")
    assert billed <= limit_calls * Decimal("0.1")
    assert billed > (limit_calls - 2) * Decimal("0.1")  # < two calls' worth left unspent
    assert len(upstream.requests) == sum(1 for _, s in outcomes if s == 200)
    assert {replica for replica, s in outcomes if s == 200} == {0, 1}
    # Both replicas report the same, shared spend; no reservation is left behind, once each
    # has written what it recorded (within SETTLE_EVERY_S; a scrape writes it at once).
    for proxy in replicas:
        proxy.metrics_text()
    for proxy in replicas:
        view = admin_view(proxy)["shared-cap"]
        assert view["spend_usd"] == pytest.approx(float(billed))
        assert view["reserved_usd"] == 0
        # The gauge is read from the ledger at most once a second: this replica's first
        # scrape may have read it before the other replica's scrape wrote its last calls.
        assert wait_for(lambda proxy=proxy: proxy.sample(
            "spendgate_budget_spend_usd", budget="shared-cap") == pytest.approx(float(billed)),
            3)


# ---- the store failing ---------------------------------------------------------------------

class Load:
    """One caller in a loop, pausable; counts answers by status."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.statuses: list[int] = []
        self._running = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        with httpx.Client(timeout=10) as http:
            while not self._stop:
                if not self._running.wait(0.05):
                    continue
                self._idle.clear()
                if self._running.is_set():
                    r = http.post(self.url + "/openai/v1/chat/completions",
                                  content=chat_body(100), headers=JSON)
                    self.statuses.append(r.status_code)
                self._idle.set()
                time.sleep(0.01)

    def run(self, seconds: float) -> None:
        self._running.set()
        time.sleep(seconds)
        self._running.clear()
        self._idle.wait(10)

    def stop(self) -> None:
        self._stop = True
        self._running.clear()
        self._thread.join(10)

    @property
    def served(self) -> int:
        return self.statuses.count(200)


def store_totals(server: RedisServer, prefix: str, budget: str) -> tuple[int, int]:
    values = server.client().hmget(f"{prefix}budget:{budget}:total", "spend", "reserved")
    return int(values[0] or 0), int(values[1] or 0)


def test_redis_paused_and_killed_mid_load_loses_nothing(
        spawn: Any, upstream: FakeUpstream, private_redis: RedisServer) -> None:  # noqa: F811
    prefix = "outage:"
    proxy = spawn(budget_config(upstream, [
        {"name": "load", "limit_usd": 1_000_000, "window": "total", "action": "block"}],
        store={"url": private_redis.url, "key_prefix": prefix, "timeout_s": 0.2,
               "reservation_lease_s": 1}))
    upstream.queue(*[chat_reply(100) for _ in range(5000)])
    load = Load(proxy.url)
    try:
        load.run(1.0)
        assert wait_for(lambda: store_totals(private_redis, prefix, "load")
                        == (load.served * NANO_PER_CALL, 0))
        assert load.served > 0 and proxy.sample("spendgate_store_errors_total") is None

        # Unresponsive Redis (a stopped process: connections hang) while calls keep coming.
        private_redis.pause()
        load.run(1.5)
        problems = httpx.get(proxy.url + "/readyz").json()
        assert problems["status"] == "ready" and "budget store" in problems["degraded"][0]
        private_redis.resume()
        load.run(0.5)
        assert wait_for(lambda: store_totals(private_redis, prefix, "load")[0]
                        == load.served * NANO_PER_CALL)
        assert proxy.sample("spendgate_store_errors_total") > 0

        # Killed and restarted from its snapshot, with calls running while it is away.
        private_redis.client().save()
        private_redis.kill()
        load.run(1.0)
        private_redis.start()  # same port and directory: loads the snapshot
        load.run(1.0)
        assert wait_for(lambda: store_totals(private_redis, prefix, "load")[0]
                        == load.served * NANO_PER_CALL)
        assert set(load.statuses) == {200}  # on_error: open, nothing refused
        time.sleep(1.1)  # reservations lost in a timed-out call expire with their lease
        load.run(0.2)
        assert wait_for(lambda: store_totals(private_redis, prefix, "load")
                        == (load.served * NANO_PER_CALL, 0))
        assert wait_for(lambda: httpx.get(proxy.url + "/readyz").json()["degraded"] == [])
    finally:
        load.stop()


def test_store_down_with_on_error_closed_refuses_block_calls(
        spawn: Any, upstream: FakeUpstream, private_redis: RedisServer) -> None:  # noqa: F811
    proxy = spawn(budget_config(upstream, [
        {"name": "strict", "limit_usd": 100, "action": "block"}],
        store={"url": private_redis.url, "on_error": "closed", "timeout_s": 0.2}))
    upstream.queue(*[chat_reply(100) for _ in range(3)])
    post = lambda: httpx.post(proxy.url + "/openai/v1/chat/completions",  # noqa: E731
                              content=chat_body(100), headers=JSON)
    assert post().status_code == 200
    # The first call settled before the store goes: the refusal below comes from a reserve
    # that meets the dead store, not from a settle error seen earlier.
    month_key = f"spendgate:budget:strict:month:{datetime.now(UTC).date().replace(day=1)}"
    assert wait_for(lambda: redis.Redis.from_url(private_redis.url).hget(month_key, "spend")
                    is not None)
    private_redis.kill()
    refused = post()
    assert refused.status_code == 503
    assert refused.json()["error"]["type"] == "budget_store_unavailable"
    ready = httpx.get(proxy.url + "/readyz")
    assert ready.status_code == 503 and "budget store" in ready.json()["problems"][0]
    assert "127.0.0.1" in ready.json()["problems"][0]
    private_redis.start()
    assert wait_for(lambda: post().status_code == 200, 15, 0.3)
    assert proxy.sample("spendgate_store_errors_total") >= 1  # reserve, settle or probe
    assert redis.Redis.from_url(private_redis.url).hget(month_key, "spend") is not None



def test_store_down_with_on_error_open_still_refuses_a_used_up_budget(
        spawn: Any, upstream: FakeUpstream, private_redis: RedisServer) -> None:  # noqa: F811
    proxy = spawn(budget_config(upstream, [
        {"name": "small", "project": "mine", "limit_usd": "0.2", "action": "block"},
        {"name": "roomy", "project": "other", "limit_usd": 100, "action": "block"}],
        store={"url": private_redis.url, "timeout_s": 0.2}))
    upstream.queue(*[chat_reply(100) for _ in range(4)])
    post = lambda project: httpx.post(  # noqa: E731
        proxy.url + "/openai/v1/chat/completions", content=chat_body(100),
        headers={**JSON, "x-spendgate-project": project}).status_code
    assert [post("mine"), post("mine")] == [200, 200]
    private_redis.kill()
    assert post("mine") == 429   # known to be used up: refused without the store
    assert post("other") == 200  # "roomy" has room as far as this replica knows: open
    assert proxy.sample("spendgate_store_errors_total") >= 1
