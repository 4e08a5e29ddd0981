"""Virtual keys limited to what they may use (issue 14, section 3), through a real proxy:
``models``, ``upstreams``, ``expires``, ``max_reserve_usd``, and keys from ``keys_file``
reloaded on SIGHUP. Clients are the official SDKs; the provider is a local fake server."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
import yaml

from spendgate.config import VirtualKey, load_config
from spendgate.errors import ConfigError
from spendgate.hotpath.attribution import KeyEntry, KeyRing
from tests.conftest import ProxyProcess, basic_config, spendgate_command
from tests.fake_upstream import FakeUpstream, Reply, fixture
from tests.test_proxy import sse_reply

TEAM = "sg-team-7c1d0e5a9b3f4a21"            # models: gpt-4o*, Claude-Haiku-*
OPENAI_ONLY = "sg-openai-only-5e8f2b71c0d4"   # upstreams: [openai]
EXPIRED = "sg-expired-0a9b8c7d6e5f4321"
CEILING = "sg-ceiling-1f2e3d4c5b6a7980"       # max_reserve_usd: 0.001
SECRETS = (TEAM, OPENAI_ONLY, EXPIRED, CEILING)
MESSAGES = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def limited(fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[ProxyProcess]:
    tmp = tmp_path_factory.mktemp("keylimits")
    config = basic_config(fake, keys=[
        {"key": TEAM, "project": "team", "name": "team",
         "models": ["gpt-4o*", "Claude-Haiku-*"]},
        {"key": OPENAI_ONLY, "project": "ops", "name": "ops", "upstreams": ["openai"]},
        {"key": EXPIRED, "project": "old", "name": "old", "expires": "2020-01-01T00:00:00Z"},
        {"key": CEILING, "project": "capped", "name": "capped", "max_reserve_usd": "0.001"},
    ])
    config["upstreams"]["gemini"] = {"url": fake.url, "provider": "gemini", "timeout_s": 5}
    config["upstreams"]["bedrock"] = {"url": fake.url, "provider": "bedrock", "timeout_s": 5}
    # The access log is written at info.
    proxy = ProxyProcess(config, tmp, log_level="info").start()
    yield proxy
    proxy.stop()


def _openai(proxy: ProxyProcess, key: str, upstream: str = "openai") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proxy.url}/{upstream}/v1", api_key=key, max_retries=0)


def _anthropic(proxy: ProxyProcess, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=proxy.url + "/anthropic", api_key=key, max_retries=0)




# ---- models --------------------------------------------------------------------------------

@pytest.mark.parametrize("stream", [False, True])
def test_openai_model_outside_the_keys_models_is_403(limited: ProxyProcess,
                                                     upstream: FakeUpstream,
                                                     stream: bool) -> None:
    upstream.queue(sse_reply("openai_chat_stream.sse") if stream
                   else Reply(body=fixture("openai_chat_response.json")))
    api = _openai(limited, TEAM)
    # Allowed: the glob matches whatever the case the caller writes the model in.
    answer = api.chat.completions.create(model="GPT-4o-mini", messages=MESSAGES,  # type: ignore[call-overload]
                                         stream=stream)
    if stream:
        assert list(answer)
    assert len(upstream.requests) == 1
    with pytest.raises(openai.PermissionDeniedError) as caught:
        api.chat.completions.create(model="gpt-5", messages=MESSAGES,  # type: ignore[call-overload]
                                    stream=stream)
    assert caught.value.status_code == 403
    assert caught.value.type == "model_not_allowed"
    assert "'gpt-5'" in caught.value.message and "gpt-4o*" in caught.value.message
    assert len(upstream.requests) == 1  # the refused call never went upstream


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_model_outside_the_keys_models_is_403(limited: ProxyProcess,
                                                        upstream: FakeUpstream,
                                                        stream: bool) -> None:
    upstream.queue(sse_reply("anthropic_messages_stream_cached.sse") if stream
                   else Reply(body=fixture("anthropic_messages_response_cached.json")))
    api = _anthropic(limited, TEAM)
    answer = api.messages.create(model="claude-haiku-4-5", max_tokens=10, messages=MESSAGES,  # type: ignore[call-overload]
                                 stream=stream)
    if stream:
        assert list(answer)
    assert len(upstream.requests) == 1
    with pytest.raises(anthropic.PermissionDeniedError) as caught:
        api.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=MESSAGES,  # type: ignore[call-overload]
                            stream=stream)
    assert caught.value.status_code == 403
    assert caught.value.body["error"]["type"] == "model_not_allowed"  # type: ignore[index]
    assert len(upstream.requests) == 1


def test_a_request_without_a_readable_model_under_a_key_with_models(
        limited: ProxyProcess, upstream: FakeUpstream) -> None:
    auth = {"authorization": f"Bearer {TEAM}"}
    # Metered, but no model to check: refused.
    r = httpx.post(limited.url + "/openai/v1/chat/completions", headers=auth,
                   content=b'{"messages":[]}')
    assert r.status_code == 403 and r.json()["error"]["type"] == "model_not_allowed"
    # A batch names its models in a file spendgate does not read: refused.
    r = httpx.post(limited.url + "/openai/v1/batches", headers=auth,
                   json={"input_file_id": "file-1", "endpoint": "/v1/chat/completions",
                         "completion_window": "24h"})
    assert r.status_code == 403 and r.json()["error"]["type"] == "model_not_allowed"
    # An unmetered POST that names its model is judged by it.
    r = httpx.post(limited.url + "/openai/v1/images/generations", headers=auth,
                   json={"model": "dall-e-3", "prompt": "x"})
    assert r.status_code == 403
    assert upstream.requests == []
    # A read generates nothing: it passes.
    upstream.queue(Reply(body=b'{"object":"list","data":[]}'))
    assert httpx.get(limited.url + "/openai/v1/models", headers=auth).status_code == 200
    assert len(upstream.requests) == 1


@pytest.mark.parametrize(("key", "status", "kind"), [
    (TEAM, 403, ("PERMISSION_DENIED", "AccessDeniedException")),
    (EXPIRED, 401, ("UNAUTHENTICATED", "UnrecognizedClientException")),
])
def test_gemini_and_bedrock_get_their_own_error_shapes(limited: ProxyProcess,
                                                       upstream: FakeUpstream, key: str,
                                                       status: int, kind: tuple[str, str]
                                                       ) -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}
    gemini = httpx.post(limited.url + "/gemini/v1beta/models/gemini-2.5-pro:generateContent",
                        headers={"x-goog-api-key": key}, json=body)
    assert gemini.status_code == status
    assert gemini.json()["error"]["status"] == kind[0]
    assert gemini.json()["error"]["code"] == status
    bedrock = httpx.post(
        limited.url + "/bedrock/model/anthropic.claude-3-5-sonnet-20240620-v1:0/converse",
        headers={"authorization": f"Bearer {key}"},
        json={"messages": [{"role": "user", "content": [{"text": "Hi"}]}]})
    assert bedrock.status_code == status
    assert bedrock.headers["x-amzn-errortype"] == kind[1]
    assert "message" in bedrock.json()
    assert upstream.requests == []


# ---- upstreams -----------------------------------------------------------------------------

def test_upstream_outside_the_keys_upstreams_is_403(limited: ProxyProcess,
                                                    upstream: FakeUpstream) -> None:
    upstream.queue(Reply(body=fixture("openai_chat_response.json")))
    _openai(limited, OPENAI_ONLY).chat.completions.create(model="o4-mini", messages=MESSAGES)
    # "local" is another OpenAI-protocol upstream of the same config: not this key's.
    with pytest.raises(openai.PermissionDeniedError) as caught:
        _openai(limited, OPENAI_ONLY, "local").chat.completions.create(model="o4-mini",
                                                                       messages=MESSAGES)
    assert caught.value.type == "model_not_allowed"
    assert "upstream 'local'" in caught.value.message
    with pytest.raises(anthropic.PermissionDeniedError) as refused:
        _anthropic(limited, OPENAI_ONLY).messages.create(
            model="claude-haiku-4-5", max_tokens=10, messages=MESSAGES)
    assert refused.value.body["error"]["type"] == "model_not_allowed"  # type: ignore[index]
    assert len(upstream.requests) == 1


# ---- expiry --------------------------------------------------------------------------------

def test_an_expired_key_is_401_key_expired_in_both_protocols(limited: ProxyProcess,
                                                            upstream: FakeUpstream) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        _openai(limited, EXPIRED).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert caught.value.status_code == 401 and caught.value.type == "key_expired"
    assert "2020-01-01T00:00:00+00:00" in caught.value.message
    with pytest.raises(anthropic.AuthenticationError) as refused:
        _anthropic(limited, EXPIRED).messages.create(
            model="claude-haiku-4-5", max_tokens=10, messages=MESSAGES)
    assert refused.value.body["error"]["type"] == "key_expired"  # type: ignore[index]
    assert upstream.requests == []
    # Already past at start: serve warned.
    assert "keys: key 'old' expired at 2020-01-01T00:00:00+00:00: its calls are refused" \
        in limited.log()


def test_a_key_expiring_while_the_proxy_runs_stops_working_then(
        fake: FakeUpstream, upstream: FakeUpstream, spawn: Any) -> None:
    expires = datetime.now(UTC) + timedelta(seconds=8)  # room for a slow start
    proxy = spawn(basic_config(fake, keys=[
        {"key": TEAM, "project": "team", "expires": expires.isoformat()}]))
    upstream.queue(Reply(body=fixture("openai_chat_response.json")))
    assert datetime.now(UTC) < expires - timedelta(seconds=1), "the proxy took too long to start"
    _openai(proxy, TEAM).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    time.sleep(max((expires - datetime.now(UTC)).total_seconds(), 0) + 0.2)
    with pytest.raises(openai.AuthenticationError) as caught:
        _openai(proxy, TEAM).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert caught.value.type == "key_expired"
    assert len(upstream.requests) == 1


# ---- counted, logged, no secret ------------------------------------------------------------

def test_refusals_are_counted_and_logged_without_the_secret(limited: ProxyProcess,
                                                           upstream: FakeUpstream) -> None:
    before = {kind: limited.sample("spendgate_call_errors_total", error_type=kind) or 0
              for kind in ("model_not_allowed", "key_expired")}
    forbidden = limited.sample("spendgate_requests_total", status="403", project="team",
                               model="unknown") or 0
    refused = httpx.post(limited.url + "/openai/v1/chat/completions",
                         headers={"authorization": f"Bearer {TEAM}"},
                         json={"model": "gpt-5", "messages": MESSAGES})
    expired = httpx.post(limited.url + "/anthropic/v1/messages",
                         headers={"x-api-key": EXPIRED, "anthropic-version": "2023-06-01"},
                         json={"model": "claude-haiku-4-5", "max_tokens": 5,
                               "messages": MESSAGES})
    assert (refused.status_code, expired.status_code) == (403, 401)
    line = limited.log_line(refused.headers["x-spendgate-request-id"])
    assert " 403 upstream=openai model=unknown " in line and " project=team " in line
    assert " error=model_not_allowed cause=" in line
    assert "virtual key 'team' may not use model 'gpt-5'" in line
    line = limited.log_line(expired.headers["x-spendgate-request-id"])
    assert " 401 upstream=anthropic " in line and " project=old " in line
    assert " error=key_expired " in line
    for kind in before:
        assert limited.eventually("spendgate_call_errors_total", error_type=kind) \
            == before[kind] + 1
    assert limited.sample("spendgate_requests_total", status="403", project="team",
                          model="unknown") == forbidden + 1
    assert limited.sample("spendgate_requests_total", status="401", project="old") >= 1
    text, log = limited.metrics_text(), limited.log()
    for secret in SECRETS:
        assert secret not in text and secret not in log
        assert secret not in refused.text and secret not in expired.text


# ---- max_reserve_usd -----------------------------------------------------------------------

def test_max_reserve_usd_refuses_a_call_whose_worst_case_is_over_it(
        limited: ProxyProcess, upstream: FakeUpstream) -> None:
    api = _openai(limited, CEILING)
    upstream.queue(Reply(body=fixture("openai_chat_response.json")))
    # gpt-4o-mini: $0.15 in, $0.60 out per million tokens. 100 output tokens: far below $0.001.
    api.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=100)
    # 10,000 output tokens may cost $0.006; no max_tokens, the model's 16,384: both over it.
    for limit in (10_000, None):
        with pytest.raises(openai.PermissionDeniedError) as caught:
            api.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES,
                                        **({"max_tokens": limit} if limit else {}))
        assert caught.value.type == "max_reserve_exceeded"
        assert "$0.001" in caught.value.message
    assert len(upstream.requests) == 1
    # Judged on an allowed call: counted with its model.
    assert limited.eventually("spendgate_call_errors_total", error_type="max_reserve_exceeded",
                              model="gpt-4o-mini") == 2
    with pytest.raises(anthropic.PermissionDeniedError) as refused:
        _anthropic(limited, CEILING).messages.create(
            model="claude-sonnet-4-5", max_tokens=1000, messages=MESSAGES)  # $15/M out: $0.015
    assert refused.value.body["error"]["type"] == "max_reserve_exceeded"  # type: ignore[index]
    # A body no parser reads cannot be bounded: 400.
    r = httpx.post(limited.url + "/openai/v1/chat/completions",
                   headers={"authorization": f"Bearer {CEILING}"}, content=b'{"model":')
    assert r.status_code == 400 and "max_reserve_usd" in r.json()["error"]["message"]
    assert len(upstream.requests) == 1


def test_max_reserve_usd_under_a_block_budget_refuses_before_reserving(
        fake: FakeUpstream, upstream: FakeUpstream, spawn: Any, tmp_path: Path) -> None:
    proxy = spawn(basic_config(
        fake, keys=[{"key": CEILING, "project": "capped", "max_reserve_usd": "0.001"}],
        budgets=[{"name": "capped-day", "project": "capped", "limit_usd": 1, "window": "day",
                  "action": "block"}],
        store={"url": f"sqlite:///{tmp_path}/ledger.sqlite3"}))
    upstream.queue(Reply(body=fixture("openai_chat_response.json")))
    api = _openai(proxy, CEILING)
    api.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=100)
    with pytest.raises(openai.PermissionDeniedError) as caught:
        api.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=10_000)
    assert caught.value.type == "max_reserve_exceeded"
    # Not a budget's refusal: no budget blocked it.
    assert proxy.sample("spendgate_budget_blocked_total") in (None, 0)


def test_key_entry_carries_the_limits() -> None:
    ring = KeyRing([VirtualKey(key="k" * 20, project="p", models=["GPT-4o*"],
                               upstreams=["openai"], expires="2027-01-01T00:00:00Z",
                               max_reserve_usd="0.5")])
    assert ring.match(b"k" * 20) == KeyEntry(
        "p", "p#0", ("gpt-4o*",), frozenset({"openai"}),
        datetime(2027, 1, 1, tzinfo=UTC).timestamp(), 500_000_000)


# ---- keys_file -----------------------------------------------------------------------------

def _works(proxy: ProxyProcess, key: str) -> int:
    return httpx.get(proxy.url + "/openai/v1/models",
                     headers={"authorization": f"Bearer {key}"}).status_code


def _until(check: Any, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_keys_file_is_reloaded_on_sighup_and_a_bad_one_keeps_the_old_keys(
        fake: FakeUpstream, upstream: FakeUpstream, spawn: Any, tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text(yaml.safe_dump([{"key": TEAM, "project": "team", "name": "team"}]))
    proxy = spawn(basic_config(fake, keys=[{"key": OPENAI_ONLY, "project": "ops"}],
                               keys_file=str(keys_file)))
    assert _works(proxy, TEAM) == 200 and _works(proxy, OPENAI_ONLY) == 200  # the union
    assert _works(proxy, CEILING) == 401
    # The secret store rotates the file: TEAM out, CEILING in.
    keys_file.write_text(json.dumps([{"key": CEILING, "project": "capped"}]))
    assert proxy.proc is not None
    proxy.proc.send_signal(signal.SIGHUP)
    _until(lambda: _works(proxy, CEILING) == 200)
    assert _works(proxy, TEAM) == 401 and _works(proxy, OPENAI_ONLY) == 200
    assert proxy.sample("spendgate_config_reloads_total", result="applied") == 1
    # A bad file (here, broken YAML) on reload: the running keys stay, the error is logged
    # and counted.
    keys_file.write_text(f"- {{key: {TEAM}, project: [\n")
    proxy.proc.send_signal(signal.SIGHUP)
    _until(lambda: proxy.sample("spendgate_config_reloads_total", result="rejected") == 1)
    assert "reload rejected" in proxy.log() and "keys_file" in proxy.log()
    assert _works(proxy, CEILING) == 200 and _works(proxy, TEAM) == 401
    # A missing one too.
    keys_file.unlink()
    proxy.proc.send_signal(signal.SIGHUP)
    _until(lambda: proxy.sample("spendgate_config_reloads_total", result="rejected") == 2)
    assert _works(proxy, CEILING) == 200
    assert TEAM not in proxy.log() and CEILING not in proxy.log()


def test_a_missing_or_bad_keys_file_stops_serve_and_check_config(tmp_path: Path) -> None:
    config = tmp_path / "spendgate.yaml"
    keys_file = tmp_path / "keys.json"
    config.write_text(yaml.safe_dump({"keys": [{"key": TEAM, "project": "team"}],
                                      "keys_file": str(keys_file)}))
    serve = subprocess.run(spendgate_command("serve", "--config", str(config), "--port", "0"),
                           capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert serve.returncode == 1
    assert f"keys_file: {keys_file}: cannot read (No such file or directory)" in serve.stderr
    keys_file.write_text(json.dumps([{"key": CEILING, "project": "p", "expires": "2027-01-01"},
                                     {"key": TEAM, "project": "again"}]))
    check = subprocess.run(spendgate_command("check-config", str(config)),
                           capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert check.returncode == 1
    assert "keys_file.0.expires: 2027-01-01T00:00:00 has no time zone" in check.stdout
    assert "keys: the same key is listed twice" in check.stdout
    assert CEILING not in check.stdout + check.stderr and TEAM not in check.stdout


def test_key_fields_are_validated(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"keys": [
        {"key": TEAM, "project": "p", "upstreams": ["opneai"], "models": [],
         "max_reserve_usd": 0, "expires": "2027-01-01 00:00:00"}]}))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    problems = "\n".join(caught.value.problems)
    assert "keys.0.upstreams: 'opneai' is not an upstream of this config" in problems
    assert "keys.0.models: List should have at least 1 item" in problems
    assert "keys.0.max_reserve_usd: Input should be greater than 0" in problems
    assert "keys.0.expires: 2027-01-01T00:00:00 has no time zone" in problems
    # A time with its zone, as YAML writes it unquoted, is read as that instant.
    path.write_text("keys: [{key: k, project: p, expires: 2027-01-01T00:00:00+02:00}]\n")
    expires = (load_config(path).keys or [])[0].expires
    assert expires == datetime(2026, 12, 31, 22, tzinfo=UTC)


def test_keys_file_reload_reaches_every_worker(fake: FakeUpstream, upstream: FakeUpstream,
                                               spawn: Any, tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps([{"key": TEAM, "project": "team"}]))
    proxy = spawn(basic_config(fake, keys_file=str(keys_file), server={"workers": 2}))
    assert proxy.proc is not None
    _until(lambda: len(Path(f"/proc/{proxy.proc.pid}/task/{proxy.proc.pid}/children")
                       .read_text().split()) == 2)

    def statuses(key: str) -> set[int]:
        # Each call on its own connection: the kernel spreads them over both workers.
        return {httpx.get(proxy.url + "/openai/v1/models",
                          headers={"authorization": f"Bearer {key}",
                                   "connection": "close"}).status_code for _ in range(30)}

    assert statuses(TEAM) == {200} and statuses(CEILING) == {401}
    keys_file.write_text(json.dumps([{"key": CEILING, "project": "capped"}]))
    proxy.proc.send_signal(signal.SIGHUP)  # the supervisor passes it to every worker
    # Both workers count their reload (the host's /metrics sums them).
    _until(lambda: proxy.sample("spendgate_config_reloads_total", result="applied") == 2)
    assert statuses(CEILING) == {200} and statuses(TEAM) == {401}
