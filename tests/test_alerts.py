"""Budget alerts: webhook POSTs to a real local HTTP receiver, deduplicated across replicas."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from spendgate.budgets.alerts import AlertNotifier
from spendgate.budgets.book import Budget
from spendgate.budgets.store import open_store
from spendgate.budgets.windows import window_at
from spendgate.config import AlertsConfig, BudgetConfig
from tests.budget_helpers import (  # noqa: F401  (fixtures)
    SHARED_REDIS,
    budget_config,
    chat_body,
    chat_reply,
    redis_prefix,
    wait_for,
)
from tests.fake_upstream import FakeUpstream

SECRET_PATH = "/services/T000/B000/hook-token-do-not-log"
JSON = {"content-type": "application/json"}


class Receiver:
    """A webhook receiver: records every POST; answers ``fail_with`` to the first ``failures``."""

    def __init__(self, failures: int = 0, fail_with: int = 503) -> None:
        self.posts: list[tuple[float, str, dict[str, Any]]] = []
        self.failures = failures
        self.fail_with = fail_with
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.posts.append((time.monotonic(), self.path, orjson.loads(body)))
                status = receiver.fail_with if len(receiver.posts) <= receiver.failures else 200
                self.send_response(status)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{SECRET_PATH}"

    def bodies(self) -> list[dict[str, Any]]:
        return [body for _, _, body in self.posts]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def post(url: str) -> int:
    return httpx.post(url + "/openai/v1/chat/completions", content=chat_body(100),
                      headers={**JSON, "authorization": "Bearer sk-caller-secret"}).status_code


def test_one_post_per_threshold_across_two_replicas(spawn: Any, upstream: FakeUpstream,
                                                     redis_prefix: str,  # noqa: F811
                                                     receiver: Receiver) -> None:
    config = budget_config(upstream, [
        {"name": "team-daily", "limit_usd": 1, "window": "day", "action": "alert",
         "alert_at": [0.5, 0.8, 1.0]}],
        store={"url": SHARED_REDIS, "key_prefix": redis_prefix},
        alerts={"webhook_url": receiver.url}, admin_key="admin-secret-key")
    replicas = [spawn(config), spawn(config)]
    upstream.queue(*[chat_reply(100) for _ in range(12)])
    for i in range(12):  # $0.10 each, alternating: both replicas see every crossing
        assert post(replicas[i % 2].url) == 200
        time.sleep(0.05)
    assert wait_for(lambda: len(receiver.posts) >= 3)
    time.sleep(1.0)  # a duplicate, if any, would arrive by now
    bodies = receiver.bodies()
    assert sorted(b["threshold"] for b in bodies) == [0.5, 0.8, 1.0]
    assert {path for _, path, _ in receiver.posts} == {SECRET_PATH}
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    for body in bodies:
        assert body["budget"] == "team-daily" and body["window"] == "day"
        assert body["event"] == "budget_threshold" and body["blocked"] is False
        assert body["limit_usd"] == 1.0
        assert body["threshold"] <= body["spend_usd"] <= body["threshold"] + 0.2
        assert body["window_start"] == midnight.strftime("%Y-%m-%dT%H:%M:%SZ")
        assert body["resets_at"] > body["window_start"]
        assert "*team-daily*" in body["text"] and f"{body['threshold']:.0%}" in body["text"]
        raw = orjson.dumps(body).decode()
        for secret in ("sk-caller-secret", "admin-secret-key", "hook-token"):
            assert secret not in raw
    for replica in replicas:
        assert "hook-token" not in replica.log() and "admin-secret-key" not in replica.log()


def test_a_refusing_block_budget_alerts_at_its_limit(spawn: Any, upstream: FakeUpstream,
                                                     receiver: Receiver) -> None:
    proxy = spawn(budget_config(upstream, [
        {"name": "hard", "limit_usd": "0.25", "window": "month", "action": "block",
         "alert_at": [0.5, 1.0]}], alerts={"webhook_url": receiver.url}))
    upstream.queue(*[chat_reply(100) for _ in range(3)])
    assert [post(proxy.url) for _ in range(3)] == [200, 200, 429]
    assert wait_for(lambda: len(receiver.posts) >= 2)
    time.sleep(0.3)
    by_threshold = {b["threshold"]: b for b in receiver.bodies()}
    assert sorted(by_threshold) == [0.5, 1.0]
    assert by_threshold[0.5]["blocked"] is False
    exhausted = by_threshold[1.0]
    assert exhausted["blocked"] is True and exhausted["spend_usd"] == pytest.approx(0.2)
    assert exhausted["action"] == "block" and "refused a call" in exhausted["text"]
    # A call too big to ever fit is refused without raising an alert.
    huge = httpx.post(proxy.url + "/openai/v1/chat/completions", content=chat_body(10_000),
                      headers=JSON)
    assert huge.status_code == 429
    time.sleep(0.3)
    assert len(receiver.posts) == 2


def test_webhook_failures_are_retried_with_backoff(spawn: Any, upstream: FakeUpstream) -> None:
    receiver = Receiver(failures=2, fail_with=503)
    try:
        proxy = spawn(budget_config(upstream, [
            {"name": "flaky", "limit_usd": "0.1", "window": "total", "alert_at": [1.0]}],
            alerts={"webhook_url": receiver.url}))
        upstream.queue(chat_reply(100))
        assert post(proxy.url) == 200
        assert wait_for(lambda: len(receiver.posts) >= 3, 15)
        times = [t for t, _, _ in receiver.posts]
        assert times[1] - times[0] >= 0.9 and times[2] - times[1] >= 1.9  # 1 s, then 2 s
        assert receiver.bodies()[0] == receiver.bodies()[2]
        assert receiver.bodies()[0]["resets_at"] is None  # a total window never resets
        time.sleep(1.0)
        assert len(receiver.posts) == 3
    finally:
        receiver.close()


def test_a_4xx_answer_is_final_and_logged_without_the_url(spawn: Any,
                                                          upstream: FakeUpstream) -> None:
    receiver = Receiver(failures=100, fail_with=404)
    try:
        proxy = spawn(budget_config(upstream, [
            {"name": "gone", "limit_usd": "0.1", "window": "total", "alert_at": [1.0]}],
            alerts={"webhook_url": receiver.url}))
        upstream.queue(chat_reply(100))
        assert post(proxy.url) == 200
        assert wait_for(lambda: "not delivered" in proxy.log())
        assert len(receiver.posts) == 1
        assert "HTTP 404" in proxy.log() and "hook-token" not in proxy.log()
    finally:
        receiver.close()


def test_thresholds_fire_again_in_each_new_window(tmp_path: Path, receiver: Receiver) -> None:
    store = open_store(f"sqlite:///{tmp_path}/l.sqlite3", 2.0, 60)
    notifier = AlertNotifier(AlertsConfig(webhook_url=receiver.url),
                             lambda name, ttl: store.claim(name, ttl, time.time()), time.time)
    notifier.start()
    budget = Budget(BudgetConfig(name="w", limit_usd=Decimal(1), window="day",
                                 alert_at=[0.5]))
    monday = window_at("day", UTC, datetime(2026, 3, 2, 12, tzinfo=UTC).timestamp())
    tuesday = window_at("day", UTC, datetime(2026, 3, 3, 12, tzinfo=UTC).timestamp())
    notifier.observe(budget, monday, 400_000_000)   # 40%: nothing yet
    notifier.observe(budget, monday, 600_000_000)   # 60%: crosses 50%
    notifier.observe(budget, monday, 700_000_000)   # already sent for this window
    notifier.observe(budget, tuesday, 550_000_000)  # a new window crosses it again
    assert wait_for(lambda: len(receiver.posts) >= 2)
    notifier.close()
    assert [b["window_id"] for b in receiver.bodies()] == ["day:2026-03-02", "day:2026-03-03"]
    # Another notifier (a restarted replica) finds both claims taken: nothing is re-sent.
    again = AlertNotifier(AlertsConfig(webhook_url=receiver.url),
                          lambda name, ttl: store.claim(name, ttl, time.time()), time.time)
    again.start()
    again.observe(budget, tuesday, 900_000_000)
    again.close()
    assert len(receiver.posts) == 2
    store.close()
