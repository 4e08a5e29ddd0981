"""Shared pieces of the budget, ledger and alert tests: Redis, canned replies, configs.

``redis_url`` is the shared Redis on 127.0.0.1:6379 (each test takes its own key prefix and
deletes only that prefix). ``RedisServer`` is a private ``redis-server`` on a free port, for
tests that stop, pause or kill it; never the shared one. Without Redis the tests skip, unless
``CI`` is set: then they fail.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from spendgate.records import UsageRecord
from spendgate.usage import Usage
from tests.conftest import basic_config, free_port, need
from tests.fake_upstream import FakeUpstream, Reply

SHARED_REDIS = "redis://127.0.0.1:6379/0"
MODEL = "budget-model"
# Input is free and output costs $1000 per Mtok: a call's cost is exactly its output tokens
# times $0.001, so a reservation from max_tokens equals what the upstream then reports.
PRICE = {"input_per_mtok": 0, "output_per_mtok": 1000}
CENT = 0.001  # USD per output token at PRICE


def shared_redis_available() -> bool:
    try:
        return bool(redis.Redis.from_url(SHARED_REDIS, socket_timeout=1).ping())
    except redis.RedisError:
        return False


@pytest.fixture()
def redis_prefix() -> Iterator[str]:
    """A fresh key prefix on the shared Redis; its keys are deleted afterwards."""
    if not shared_redis_available():
        need("Redis is not running on 127.0.0.1:6379")
    prefix = f"sgtest:{uuid.uuid4().hex[:10]}:"
    yield prefix
    client = redis.Redis.from_url(SHARED_REDIS)
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.delete(*keys)


class RedisServer:
    """A private redis-server (no persistence unless asked with SAVE) in ``workdir``."""

    def __init__(self, workdir: Path) -> None:
        if shutil.which("redis-server") is None:
            need("redis-server is not installed")
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=2)

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.client().ping():
                    return self
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture()
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    yield server
    server.kill()


def usage_record(**overrides: Any) -> UsageRecord:
    fields: dict[str, Any] = dict(
        start_unix=0.0, upstream="openai", provider="openai", protocol="openai",
        operation="chat", model=MODEL, response_model=None, project="default", user=None,
        virtual_key=None, status=200, stream=False, metered=True, usage=Usage(output=100),
        cost_usd=Decimal("0.1"), priced=True, price_source="override", duration_s=0.1,
        ttft_s=None, tpot_s=None, overhead_s=0.001, error_type=None, client_closed=False,
        response_id=None, finish_reasons=(), service_tier=None, request_id=None,
        max_tokens=100)
    fields.update(overrides)
    return UsageRecord(**fields)


def chat_reply(output_tokens: int, input_tokens: int = 10, delay_s: float = 0.0,
               model: str = MODEL) -> Reply:
    body = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                         "finish_reason": "length"}],
            "usage": {"prompt_tokens": input_tokens, "completion_tokens": output_tokens,
                      "total_tokens": input_tokens + output_tokens}}
    return Reply(body=orjson.dumps(body), delay_s=delay_s)


def messages_reply(output_tokens: int, input_tokens: int = 10) -> Reply:
    body = {"id": "msg_1", "type": "message", "role": "assistant", "model": MODEL,
            "content": [{"type": "text", "text": "ok"}], "stop_reason": "max_tokens",
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens}}
    return Reply(body=orjson.dumps(body))


def chat_body(max_tokens: int, model: str = MODEL) -> bytes:
    return orjson.dumps({"model": model, "max_tokens": max_tokens,
                         "messages": [{"role": "user", "content": "hi"}]})


def budget_config(fake: FakeUpstream, budgets: list[dict[str, Any]], **extra: Any,
                  ) -> dict[str, Any]:
    config = basic_config(fake, budgets=budgets, **extra)
    config["pricing"]["overrides"][MODEL] = PRICE
    return config


def wait_for(predicate: Any, timeout_s: float = 10.0, interval_s: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; that value, else the last one."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval_s)
