"""Rate limits end to end: requests and tokens per sliding window, calls in flight.

Real ``spendgate serve`` processes in front of the fake provider, the official SDKs as
callers, the shared Redis (a key prefix per test) or a SQLite file as the store. Windows
are shortened with ``SPENDGATE_LIMIT_WINDOW_S`` (test-only) where a test waits for one to
pass. A call's token estimate is its body's bytes plus ``max_tokens`` (``limits.gate``), so
the fake provider is told to report exactly that much where a test needs no correction.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest
import redis
import yaml

from spendgate.budgets.store.base import LimitHold, LimitState
from spendgate.config import parse_config
from spendgate.errors import ConfigError
from spendgate.limits.book import Limit
from spendgate.limits.gate import go_duration, refusal_headers
from tests.budget_helpers import (  # noqa: F401  (fixtures)
    MODEL,
    SHARED_REDIS,
    RedisServer,
    budget_config,
    chat_body,
    private_redis,
    redis_prefix,
    wait_for,
)
from tests.conftest import ProxyProcess, spendgate_command
from tests.fake_upstream import FakeUpstream, Reply

JSON = {"content-type": "application/json"}
WINDOW_ENV = "SPENDGATE_LIMIT_WINDOW_S"


def limits_config(fake: FakeUpstream, limits: list[dict[str, Any]], store: dict[str, Any],
                  **extra: Any) -> dict[str, Any]:
    return budget_config(fake, [], limits=limits, store=store, **extra)


def exact_reply(body: bytes, max_tokens: int, delay_s: float = 0.0) -> Reply:
    """A chat reply whose usage is exactly the call's estimate (no correction to make)."""
    usage = {"prompt_tokens": len(body), "completion_tokens": max_tokens,
             "total_tokens": len(body) + max_tokens}
    return Reply(body=orjson.dumps({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                     "finish_reason": "length"}], "usage": usage}), delay_s=delay_s)


def small_reply(input_tokens: int, output_tokens: int, delay_s: float = 0.0) -> Reply:
    usage = {"prompt_tokens": input_tokens, "completion_tokens": output_tokens,
             "total_tokens": input_tokens + output_tokens}
    return Reply(body=orjson.dumps({
        "id": "chatcmpl-2", "object": "chat.completion", "created": 1, "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                     "finish_reason": "stop"}], "usage": usage}), delay_s=delay_s)


def anthropic_reply(delay_s: float = 0.0) -> Reply:
    return Reply(body=orjson.dumps({
        "id": "msg_1", "type": "message", "role": "assistant", "model": MODEL,
        "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn",
        "usage": {"input_tokens": 5, "output_tokens": 3}}), delay_s=delay_s)


def oai(proxy: ProxyProcess, retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/openai/v1", api_key="sk-caller",
                         max_retries=retries, timeout=30)


def claude(proxy: ProxyProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=proxy.url + "/anthropic", api_key="sk-ant-caller",
                               max_retries=0, timeout=30)


def chat(client: openai.OpenAI, max_tokens: int = 100) -> Any:
    return client.chat.completions.create(model=MODEL, max_tokens=max_tokens,
                                          messages=[{"role": "user", "content": "hi"}])


def message(client: anthropic.Anthropic) -> Any:
    return client.messages.create(model=MODEL, max_tokens=50,
                                  messages=[{"role": "user", "content": "hi"}])


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """Each backend: a SQLite file of the test's own, or a fresh prefix on the shared Redis."""
    if request.param == "sqlite":
        return {"url": f"sqlite:///{tmp_path / 'limits.sqlite3'}"}
    prefix = request.getfixturevalue("redis_prefix")
    return {"url": SHARED_REDIS, "key_prefix": prefix}


def window_tokens(store: dict[str, Any], limit: str) -> int:
    """The tokens a limit's window holds now, read from the store itself."""
    if store["url"].startswith("sqlite"):
        with sqlite3.connect(store["url"].removeprefix("sqlite:///")) as db:
            row = db.execute("SELECT count(*), coalesce(sum(tokens), 0) FROM limit_calls "
                             "WHERE name=?", (limit,)).fetchone()
            kept = db.execute("SELECT calls, tokens FROM limit_totals WHERE name=?",
                              (limit,)).fetchone()
        assert tuple(kept or (0, 0)) == tuple(row)   # the running totals match the log
        return int(row[1])
    raw = redis.Redis.from_url(SHARED_REDIS).hget(f"{store['key_prefix']}limit:{limit}",
                                                  "tokens")
    return int(raw or 0)


# ---- configuration --------------------------------------------------------------------------

def test_config_validates_limits(tmp_path: Path) -> None:
    good = parse_config({"limits": [
        {"name": "team", "project": "growth", "tags": {"feature": "search"},
         "requests_per_minute": 60, "tokens_per_minute": 10000, "max_concurrent": 4},
        {"name": "gpt", "model": "gpt-4o*", "tokens_per_minute": 5}]})
    assert [limit.name for limit in good.limits] == ["team", "gpt"]
    with pytest.raises(ConfigError) as caught:
        parse_config({"limits": [{"name": "none", "project": "x"},
                                 {"name": "twice", "requests_per_minute": 1},
                                 {"name": "twice", "max_concurrent": 1},
                                 {"name": "neg", "tokens_per_minute": 0},
                                 {"name": "typo", "request_per_minute": 5}]})
    problems = "\n".join(caught.value.problems)
    assert "limits.0: Value error" not in problems
    assert "limit 'none' limits nothing: set requests_per_minute, tokens_per_minute or " \
           "max_concurrent" in problems
    assert "limits: limit names must be unique: ['twice'] repeated" in problems
    assert "limits.3.tokens_per_minute: Input should be greater than 0" in problems
    assert "limits.4.request_per_minute" in problems and "requests_per_minute" in problems
    path = tmp_path / "spendgate.yaml"
    path.write_text(yaml.safe_dump({"limits": [
        {"name": "team", "project": "growth", "requests_per_minute": 60}]}))
    checked = subprocess.run(spendgate_command("check-config", str(path)),
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_refusal_headers_read_like_openais() -> None:
    assert [go_duration(s) for s in (0.02, 0.0001, 1, 1.5, 59.25, 360, 61.5, 0)] == [
        "20ms", "1ms", "1s", "1.5s", "59.25s", "6m0s", "1m1.5s", "0s"]
    limit = Limit(parse_config({"limits": [{"name": "l", "requests_per_minute": 10,
                                            "tokens_per_minute": 1000}]}).limits[0])
    state = LimitState("l", "tokens", 4, 900, 0, 2.2, 30.0)
    headers = {k.decode(): v.decode() for k, v in refusal_headers(limit, state)}
    assert headers == {"retry-after": "3", "retry-after-ms": "2200",
                       "x-ratelimit-limit-requests": "10",
                       "x-ratelimit-remaining-requests": "6",
                       "x-ratelimit-reset-requests": "30s",
                       "x-ratelimit-limit-tokens": "1000",
                       "x-ratelimit-remaining-tokens": "100",
                       "x-ratelimit-reset-tokens": "30s"}
    never = refusal_headers(limit, LimitState("l", "tokens", 0, 0, 0, None, 0.0))
    assert (b"x-should-retry", b"false") in never and not any(
        k == b"retry-after" for k, _ in never)
    assert LimitHold("l", 0, 0, 1, 0, 60.0).concurrent == 1


# ---- tokens per minute across replicas -------------------------------------------------------

def test_tokens_per_minute_hold_across_two_replicas(spawn: Any, upstream: FakeUpstream,
                                                    redis_prefix: str) -> None:  # noqa: F811
    """Eight callers over two replicas for a few windows: no window ever admits more
    estimated tokens than the limit, both replicas admit, the refused see the headers."""
    window = 2.0
    body = chat_body(100)
    estimate = len(body) + 100
    per_window = 5
    limit = estimate * per_window + estimate // 2   # room for 5 calls, not 6
    config = limits_config(upstream, [{"name": "tpm", "tokens_per_minute": limit}],
                           {"url": SHARED_REDIS, "key_prefix": redis_prefix})
    env = {WINDOW_ENV: str(window)}
    replicas = [spawn(config, env), spawn(config, env)]
    upstream.queue(*[exact_reply(body, 100, delay_s=0.02) for _ in range(400)])
    answers: list[tuple[int, int, httpx.Headers]] = []
    start = threading.Barrier(8)
    run_s = 3 * window + 0.5

    def caller(i: int) -> None:
        with httpx.Client(timeout=30) as http:
            start.wait()
            end = time.monotonic() + run_s
            while time.monotonic() < end:
                r = http.post(replicas[i % 2].url + "/openai/v1/chat/completions",
                              content=body, headers=JSON)
                answers.append((i % 2, r.status_code, r.headers))
                if r.status_code == 429:
                    time.sleep(0.05)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    arrivals = sorted(r.at for r in upstream.requests)
    admitted = [a for a in answers if a[1] == 200]
    assert len(arrivals) == len(admitted)
    assert {replica for replica, status, _ in admitted} == {0, 1}
    assert {status for _, status, _ in answers} == {200, 429}
    # Any interval shorter than the window by more than the arrival jitter holds calls that
    # were all admitted within one window: at most `per_window` of them.
    span = window - 0.3
    most = max(sum(1 for b in arrivals if a <= b < a + span) for a in arrivals)
    assert most <= per_window
    # And the limit is used, not merely enforced: each window admits its share.
    assert len(arrivals) >= per_window * int(run_s / window)
    refused = next(h for _, status, h in answers if status == 429)
    assert refused["x-ratelimit-limit-tokens"] == str(limit)
    assert int(refused["x-ratelimit-remaining-tokens"]) < estimate
    assert 0 < int(refused["retry-after"]) <= window
    assert 0 < int(refused["retry-after-ms"]) <= window * 1000
    assert refused["x-ratelimit-reset-tokens"].endswith("s")
    assert "x-ratelimit-limit-requests" not in refused
    limited = sum(replica.sample("spendgate_rate_limited_total", limit="tpm") or 0
                  for replica in replicas)
    assert limited == sum(1 for a in answers if a[1] == 429)

    # The SDK: without retries it sees the 429 and its headers; with them it backs off
    # for as long as retry-after says, then gets through.
    time.sleep(window)
    for _ in range(per_window):
        chat(oai(replicas[0]))
    with pytest.raises(openai.RateLimitError) as caught:
        chat(oai(replicas[1]))
    error = caught.value
    assert error.status_code == 429
    assert error.body["type"] == "rate_limit_exceeded"  # type: ignore[index]
    assert error.body["code"] == "spendgate_rate_limit_exceeded"  # type: ignore[index]
    assert "'tpm'" in error.message
    assert error.response.headers["x-ratelimit-limit-tokens"] == str(limit)
    started = time.monotonic()
    reply = oai(replicas[1], retries=3).chat.completions.with_raw_response.create(
        model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "hi"}])
    assert reply.http_response.status_code == 200
    assert reply.retries_taken >= 1
    assert time.monotonic() - started >= 0.1


# ---- requests per minute and calls in flight, both protocols, both stores ---------------------

def test_requests_per_minute_in_both_protocols(upstream: FakeUpstream, store: dict[str, Any],
                                               tmp_path: Path) -> None:
    config = limits_config(upstream, [
        {"name": "oai-rpm", "upstream": "openai", "requests_per_minute": 3},
        {"name": "claude-rpm", "upstream": "anthropic", "requests_per_minute": 2}], store)
    proxy = ProxyProcess(config, tmp_path, log_level="info").start()   # with the access log
    try:
        _requests_per_minute(proxy, upstream)
    finally:
        proxy.stop()


def _requests_per_minute(proxy: ProxyProcess, upstream: FakeUpstream) -> None:
    upstream.queue(*[small_reply(5, 3) for _ in range(3)])
    for _ in range(3):
        chat(oai(proxy))
    with pytest.raises(openai.RateLimitError) as caught:
        chat(oai(proxy))
    headers = caught.value.response.headers
    assert headers["x-ratelimit-limit-requests"] == "3"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert 55 <= int(headers["retry-after"]) <= 60
    assert headers["x-ratelimit-reset-requests"].endswith("s")
    assert "'oai-rpm': 3 requests per minute reached" in caught.value.message
    request_id = headers["x-spendgate-request-id"]
    line = wait_for(lambda: next((ln for ln in proxy.log().splitlines() if request_id in ln),
                                 None), 5)
    assert line and " 429 " in line and "error=rate_limit_exceeded" in line, proxy.log()[-2000:]
    assert len(upstream.requests) == 3
    upstream.reset()
    upstream.queue(anthropic_reply(), anthropic_reply())
    message(claude(proxy))
    message(claude(proxy))
    with pytest.raises(anthropic.RateLimitError) as refused:
        message(claude(proxy))
    body = refused.value.body
    assert body["type"] == "error"  # type: ignore[index]
    assert body["error"]["type"] == "rate_limit_exceeded"  # type: ignore[index]
    assert "'claude-rpm'" in body["error"]["message"]  # type: ignore[index]
    assert refused.value.response.headers["x-ratelimit-limit-requests"] == "2"
    assert len(upstream.requests) == 2
    assert proxy.eventually("spendgate_rate_limited_total", limit="oai-rpm") == 1
    assert proxy.sample("spendgate_rate_limited_total", limit="claude-rpm") == 1
    # Counted as calls, with their error type.
    assert wait_for(lambda: proxy.sample("spendgate_requests_total", status="429") == 2)
    assert proxy.sample("spendgate_call_errors_total", error_type="rate_limit_exceeded") == 2


def test_max_concurrent_in_both_protocols(spawn: Any, upstream: FakeUpstream,
                                          store: dict[str, Any]) -> None:
    """One call in flight at most: a second is refused while the first runs, and the slot
    is free as soon as a call ends, whether it succeeded, failed upstream or was cut."""
    config = limits_config(upstream, [{"name": "one-at-a-time", "max_concurrent": 1}], store)
    proxy = spawn(config)

    def while_one_runs(call: Any, slow: Reply) -> Exception:
        upstream.queue(slow)
        first = threading.Thread(target=call)
        first.start()
        assert wait_for(lambda: len(upstream.requests) == 1, 5)
        try:
            call()
        except Exception as error:  # the refusal, as the SDK raises it
            first.join(10)
            return error
        raise AssertionError("a second call was admitted while the first ran")

    refusal = while_one_runs(lambda: chat(oai(proxy)), small_reply(5, 3, delay_s=1.0))
    assert isinstance(refusal, openai.RateLimitError)
    assert refusal.response.headers["retry-after"] == "1"
    assert "'one-at-a-time': 1 calls in flight at most" in refusal.message
    upstream.reset()
    refused = while_one_runs(lambda: message(claude(proxy)), anthropic_reply(delay_s=1.0))
    assert isinstance(refused, anthropic.RateLimitError)
    assert refused.body["error"]["type"] == "rate_limit_exceeded"  # type: ignore[index]
    # Sequential callers always find the slot free: after a success, after an upstream
    # failure, after a stream the caller hung up on.
    upstream.reset()
    # Back to back on one connection: the slot is free before the next call is read.
    upstream.queue(*[small_reply(5, 3) for _ in range(30)])
    with httpx.Client(timeout=10) as http:
        statuses = [http.post(proxy.url + "/openai/v1/chat/completions", headers=JSON,
                              content=chat_body(10)).status_code for _ in range(30)]
    assert statuses == [200] * 30
    upstream.queue(small_reply(5, 3), Reply(status=500, body=b'{"error":{"message":"x"}}'),
                   small_reply(5, 3))
    chat(oai(proxy))
    with pytest.raises(openai.InternalServerError):
        chat(oai(proxy))
    chat(oai(proxy))
    upstream.queue(Reply(content_type="text/event-stream", chunk_delay_s=0.2,
                         chunks=[b'data: {"id":"c","object":"chat.completion.chunk",'
                                 b'"choices":[{"index":0,"delta":{"content":"x"}}]}\n\n'] * 20))
    with httpx.stream("POST", proxy.url + "/openai/v1/chat/completions", headers=JSON,
                      content=orjson.dumps({"model": MODEL, "stream": True, "max_tokens": 5,
                                            "messages": []}), timeout=10) as r:
        assert r.status_code == 200
        next(r.iter_bytes())
    assert wait_for(lambda: upstream.disconnects == 1, 5)
    upstream.queue(small_reply(5, 3))
    assert wait_for(lambda: _admitted(proxy), 3)


def _admitted(proxy: ProxyProcess) -> bool:
    try:
        chat(oai(proxy))
        return True
    except openai.RateLimitError:
        return False


# ---- the correction: real usage replaces the estimate ------------------------------------------

def test_tokens_are_given_back_when_the_call_used_less(spawn: Any, upstream: FakeUpstream,
                                                       store: dict[str, Any]) -> None:
    body = chat_body(100)
    estimate = len(body) + 100
    # Room for one estimate and a bit: a second call fits only once the first's estimate
    # has been corrected down to its real 15 tokens.
    config = limits_config(upstream, [{"name": "tpm", "tokens_per_minute": estimate + 50}],
                           store)
    proxy = spawn(config)
    upstream.queue(small_reply(10, 5, delay_s=0.5), small_reply(10, 5))
    first = threading.Thread(target=lambda: chat(oai(proxy)))
    first.start()
    assert wait_for(lambda: len(upstream.requests) == 1, 5)
    assert window_tokens(store, "tpm") == estimate    # held at the estimate while it runs
    with pytest.raises(openai.RateLimitError) as caught:
        chat(oai(proxy))
    assert caught.value.response.headers["x-ratelimit-remaining-tokens"] == "50"
    first.join(10)
    assert wait_for(lambda: window_tokens(store, "tpm") == 15, 5), window_tokens(store, "tpm")
    chat(oai(proxy))                                  # 15 + estimate fits
    assert wait_for(lambda: window_tokens(store, "tpm") == 30, 5)
    # A call that can never fit is refused for good: the SDK is told not to retry.
    with pytest.raises(openai.RateLimitError) as never:
        chat(oai(proxy, retries=2), max_tokens=estimate + 100)
    assert never.value.response.headers["x-should-retry"] == "false"
    assert "retry-after" not in never.value.response.headers
    assert "lower max_tokens" in never.value.message
    assert len(upstream.requests) == 2


# ---- the store failing ------------------------------------------------------------------------

def test_store_down_follows_on_error(spawn: Any, upstream: FakeUpstream,
                                     private_redis: RedisServer) -> None:  # noqa: F811
    limits = [{"name": "rpm", "requests_per_minute": 100}]
    store = {"url": private_redis.url, "timeout_s": 0.2}
    open_proxy = spawn(limits_config(upstream, limits, store))
    closed_proxy = spawn(limits_config(upstream, limits, {**store, "on_error": "closed"}))
    private_redis.kill()
    upstream.queue(small_reply(5, 3))
    chat(oai(open_proxy))                     # admitted: limits wait for the store
    with pytest.raises(openai.APIStatusError) as caught:
        chat(oai(closed_proxy))
    assert caught.value.status_code == 503
    assert "under a rate limit" in caught.value.message
    assert len(upstream.requests) == 1


# ---- reload ------------------------------------------------------------------------------------

def test_sighup_adds_and_changes_limits(spawn: Any, upstream: FakeUpstream,
                                        tmp_path: Path) -> None:
    """A proxy started without any store gets one, and its limits, on reload; a changed
    limit keeps the counts of its name."""
    proxy = spawn(budget_config(upstream, []))
    store = {"url": f"sqlite:///{tmp_path / 'reloaded.sqlite3'}"}

    def reload(rpm: int) -> None:
        config = limits_config(upstream, [{"name": "rpm", "requests_per_minute": rpm}], store)
        proxy.config_path.write_text(yaml.safe_dump(config))
        assert proxy.proc is not None
        before = proxy.log().count("config reloaded")
        proxy.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: proxy.log().count("config reloaded") > before, 10), proxy.log()

    upstream.queue(*[small_reply(5, 3) for _ in range(5)])
    chat(oai(proxy))                       # no limit yet, and no store
    reload(2)
    chat(oai(proxy))
    chat(oai(proxy))
    with pytest.raises(openai.RateLimitError):
        chat(oai(proxy))
    reload(3)                              # the window's two calls still count
    chat(oai(proxy))
    with pytest.raises(openai.RateLimitError) as caught:
        chat(oai(proxy))
    assert caught.value.response.headers["x-ratelimit-limit-requests"] == "3"
    assert len(upstream.requests) == 4


def test_gemini_and_bedrock_get_their_own_429_shapes(spawn: Any, upstream: FakeUpstream,
                                                     tmp_path: Path) -> None:
    config = limits_config(upstream, [{"name": "tiny", "tokens_per_minute": 1}],
                           {"url": f"sqlite:///{tmp_path / 'shapes.sqlite3'}"})
    config["upstreams"]["gemini"] = {"url": upstream.url, "provider": "gemini", "timeout_s": 5}
    config["upstreams"]["bedrock"] = {"url": upstream.url, "provider": "bedrock",
                                      "timeout_s": 5}
    proxy = spawn(config)
    gemini = httpx.post(proxy.url + "/gemini/v1beta/models/gemini-2.5-pro:generateContent",
                        headers={"x-goog-api-key": "g-key"},
                        json={"contents": [{"role": "user", "parts": [{"text": "Hi"}]}],
                              "generationConfig": {"maxOutputTokens": 10}})
    assert gemini.status_code == 429
    assert gemini.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert "'tiny'" in gemini.json()["error"]["message"]
    assert gemini.headers["x-ratelimit-limit-tokens"] == "1"
    bedrock = httpx.post(
        proxy.url + "/bedrock/model/anthropic.claude-3-5-sonnet-20240620-v1:0/converse",
        headers={"authorization": "Bearer b-key"},
        json={"messages": [{"role": "user", "content": [{"text": "Hi"}]}],
              "inferenceConfig": {"maxTokens": 10}})
    assert bedrock.status_code == 429
    assert bedrock.headers["x-amzn-errortype"] == "ThrottlingException"
    assert "'tiny'" in bedrock.json()["message"]
    assert upstream.requests == []


def test_the_window_slides_and_the_sdk_waits_for_it(spawn: Any, upstream: FakeUpstream,
                                                    store: dict[str, Any]) -> None:
    """Calls leave the window as it slides (their tokens with them); an SDK allowed to retry
    waits as long as retry-after-ms says, and gets through."""
    window = 1.5
    config = limits_config(upstream, [{"name": "rpm", "requests_per_minute": 2,
                                       "tokens_per_minute": 10_000}], store)
    proxy = spawn(config, {WINDOW_ENV: str(window)})
    upstream.queue(*[small_reply(10, 5) for _ in range(4)])
    chat(oai(proxy))
    time.sleep(0.5)
    chat(oai(proxy))
    with pytest.raises(openai.RateLimitError) as caught:
        chat(oai(proxy))
    wait_ms = int(caught.value.response.headers["retry-after-ms"])
    assert 0 < wait_ms <= 1000          # when the first call leaves, not the second
    started = time.monotonic()
    reply = oai(proxy, retries=2).chat.completions.with_raw_response.create(
        model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "hi"}])
    assert reply.retries_taken == 1
    assert time.monotonic() - started >= wait_ms / 1000 - 0.25
    assert len(upstream.requests) == 3
    time.sleep(window + 0.1)            # every call has left the window
    chat(oai(proxy))
    assert wait_for(lambda: window_tokens(store, "rpm") == 15, 5)


# ---- selectors at the seams: tags (the header's and a key's), and a budget's refusal ------

def test_limits_select_by_tags_and_a_budget_refusal_frees_the_slot(
        spawn: Any, upstream: FakeUpstream, tmp_path: Path) -> None:
    """A limit with ``tags`` covers the calls carrying them: from ``x-spendgate-tags``, or a
    virtual key's fixed tags, which the header cannot override. A call a block budget then
    refuses gives its ``max_concurrent`` slot back at once."""
    upstream.reset()
    config = budget_config(
        upstream, [{"name": "cap", "project": "growth", "limit_usd": 1, "action": "block"}],
        keys=[{"key": "vk-growth", "project": "growth", "tags": {"team": "growth"}},
              {"key": "vk-other", "project": "other"}],
        limits=[{"name": "search-rpm", "tags": {"feature": "search"}, "requests_per_minute": 2},
                {"name": "growth-slot", "tags": {"team": "growth"}, "max_concurrent": 1},
                {"name": "growth-rpm", "tags": {"team": "growth"}, "requests_per_minute": 3}],
        store={"url": f"sqlite:///{tmp_path / 'limits.sqlite3'}"})
    proxy = spawn(config)

    def call(key: str, tags: str | None = None, max_tokens: int = 10) -> httpx.Response:
        headers = {**JSON, "authorization": f"Bearer {key}"}
        if tags is not None:
            headers["x-spendgate-tags"] = tags
        return httpx.post(proxy.url + "/openai/v1/chat/completions", headers=headers,
                          content=chat_body(max_tokens), timeout=10)

    upstream.queue(*[small_reply(5, 3) for _ in range(10)])
    # The header's tags: two feature=search calls a minute; other features are not covered.
    assert [call("vk-other", "feature=search").status_code for _ in range(3)] == [200, 200, 429]
    assert "'search-rpm'" in call("vk-other", "feature=search").json()["error"]["message"]
    assert call("vk-other", "feature=chat").status_code == 200
    # The key's fixed tags: team=growth whatever the header says. A call whose worst case
    # is over the budget (1 USD; 1000 USD per million output tokens) is refused by the
    # budget after the limits admitted it: its slot is free for the next call at once.
    refused = call("vk-growth", "team=other", max_tokens=100_000)
    assert refused.status_code == 429 and refused.json()["error"]["type"] == "budget_exceeded"
    assert call("vk-growth", "team=other").status_code == 200      # the slot was given back
    assert call("vk-growth").status_code == 200
    limited = call("vk-growth", "team=other")   # growth-rpm: 3 requests, the refused one too
    assert limited.status_code == 429, limited.text
    assert "'growth-rpm'" in limited.json()["error"]["message"]
    assert call("vk-other", "team=other").status_code == 200      # not covered
    assert call("vk-other", "team=growth").status_code == 429     # the header's tag: covered
    assert proxy.eventually("spendgate_rate_limited_total", limit="growth-rpm") == 2
    assert proxy.sample("spendgate_rate_limited_total", limit="search-rpm") == 2


def test_a_body_no_parser_reads_is_held_to_model_limits(spawn: Any, upstream: FakeUpstream,
                                                        tmp_path: Path) -> None:
    """A metered body that names no model anyone can read cannot slip past a limit that
    selects a model: it is held to every limit covering it whatever its model."""
    upstream.reset()
    config = limits_config(upstream, [{"name": "model-rpm", "model": MODEL,
                                       "requests_per_minute": 1}],
                           {"url": f"sqlite:///{tmp_path / 'limits.sqlite3'}"})
    proxy = spawn(config)
    upstream.queue(Reply(status=400, body=b'{"error":{"message":"bad json"}}'))
    broken = b'{"model": "' + MODEL.encode() + b'", "max_tokens": 5, "messages": [}'
    statuses = [httpx.post(proxy.url + "/openai/v1/chat/completions", headers=JSON,
                           content=broken, timeout=10).status_code for _ in range(2)]
    assert statuses == [400, 429]   # the upstream judged the first; the limit held the second
    assert proxy.eventually("spendgate_rate_limited_total", limit="model-rpm") == 1
