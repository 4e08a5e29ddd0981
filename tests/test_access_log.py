"""The access log (one line per call on stderr, off the hot path) and the error causes the
caller and the log both get, against a real proxy in front of real local servers."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import ProxyProcess, basic_config, free_port
from tests.fake_upstream import FakeUpstream, Reply, fixture
from tests.test_proxy import CHAT, sse_reply

STREAM = b'{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"Hi"}]}'
# What uvicorn logs for an app that returns (or is cancelled) with its response unfinished:
# not for a cut the proxy made and recorded on purpose.
INCOMPLETE = ("ASGI callable returned without completing response",
              "Exception in ASGI application")


def _config(fake: FakeUpstream, tmp: Path, **server: Any) -> dict[str, Any]:
    config = basic_config(
        fake, server=server,
        budgets=[{"name": "cap", "project": "capped", "limit_usd": "0.000001",
                  "window": "day", "action": "block"}],
        store={"url": f"sqlite:///{tmp}/ledger.sqlite3"})
    config["upstreams"]["refused"] = {"url": f"http://127.0.0.1:{free_port()}"}
    config["upstreams"]["nxdomain"] = {"url": "http://no-such-host.invalid:8080"}
    return config


@pytest.fixture(scope="module")
def logged(fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[ProxyProcess]:
    tmp = tmp_path_factory.mktemp("access")
    proxy = ProxyProcess(_config(fake, tmp), tmp, log_level="info").start()
    yield proxy
    proxy.stop()




def test_a_200_is_one_line_with_every_field(logged: ProxyProcess,
                                            upstream: FakeUpstream) -> None:
    upstream.queue(Reply(body=fixture("openai_chat_response.json")))
    r = httpx.post(logged.url + "/openai/v1/chat/completions?api-version=x", content=CHAT,
                   headers={"x-spendgate-project": "search", "x-spendgate-user": "alice smith",
                            "authorization": "Bearer sk-secret-caller-key"})
    assert r.status_code == 200
    line = logged.log_line(r.headers["x-spendgate-request-id"])
    usage = json.loads(fixture("openai_chat_response.json"))["usage"]
    assert " POST /openai/v1/chat/completions 200 upstream=openai model=gpt-4o-mini " in line
    assert "api-version" not in line  # no query string
    assert f"served={json.loads(fixture('openai_chat_response.json'))['model']}" in line
    assert ' project=search user="alice smith" ' in line
    assert f" tokens={usage['prompt_tokens']}/{usage['completion_tokens']} " in line
    cost = line.split(" cost=$", 1)[1].split()[0]
    assert float(cost) == pytest.approx(logged.sample("spendgate_cost_usd_total",
                                                      project="search"))
    assert float(cost) > 0 and " duration=" in line and "error=" not in line
    assert "sk-secret" not in logged.log()
    assert line[:4].isdigit() and line[23] == "Z"  # an ISO time first, in UTC


def test_a_budget_block_is_a_429_line_with_the_decision(logged: ProxyProcess,
                                                        upstream: FakeUpstream) -> None:
    r = httpx.post(logged.url + "/openai/v1/chat/completions", content=CHAT,
                   headers={"x-spendgate-project": "capped"})
    assert r.status_code == 429
    line = logged.log_line(r.headers["x-spendgate-request-id"])
    assert " 429 upstream=openai " in line and " project=capped " in line
    assert " budget=blocked error=budget_exceeded cause=" in line
    assert r.json()["error"]["message"] in json.loads(line.split(" cause=", 1)[1])
    assert upstream.requests == []
    assert logged.eventually("spendgate_call_errors_total", project="capped",
                             error_type="budget_exceeded") == 1


@pytest.mark.parametrize(("name", "cause"), [
    ("refused", "connection refused"),
    ("nxdomain", "DNS lookup of no-such-host.invalid failed"),
])
def test_a_502_names_the_host_and_the_cause_for_caller_and_log(
        logged: ProxyProcess, name: str, cause: str) -> None:
    gpt = openai.OpenAI(base_url=f"{logged.url}/{name}/v1", api_key="sk-secret-x",
                        max_retries=0)
    with pytest.raises(openai.APIStatusError) as caught:
        gpt.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}])
    assert caught.value.status_code == 502
    message = caught.value.body["message"]  # type: ignore[index]
    host = "no-such-host.invalid:8080" if name == "nxdomain" else "127.0.0.1:"
    assert message.startswith(f"upstream {name!r} ({host}") and message.endswith(cause), message
    line = logged.log_line(caught.value.response.headers["x-spendgate-request-id"])
    assert " 502 upstream=" + name in line and " error=upstream_unreachable " in line
    assert json.loads(line.split(" cause=", 1)[1]) == message
    assert "sk-secret" not in logged.log()


def test_a_504_says_how_long_it_waited(logged: ProxyProcess, upstream: FakeUpstream) -> None:
    upstream.queue(Reply(delay_s=2.0))  # "local" has timeout_s: 1
    r = httpx.post(logged.url + "/local/v1/chat/completions", content=CHAT, timeout=10)
    assert r.status_code == 504
    assert r.json()["error"]["message"].endswith("did not answer: no response headers "
                                                 "within 1 s (timeout_s)")
    line = logged.log_line(r.headers["x-spendgate-request-id"])
    assert " 504 upstream=local " in line and " error=upstream_timeout " in line


def test_a_hang_up_is_a_499_line_with_estimated_tokens(logged: ProxyProcess,
                                                       upstream: FakeUpstream) -> None:
    upstream.queue(sse_reply("openai_chat_stream.sse", chunk_delay_s=0.3))
    with httpx.stream("POST", logged.url + "/openai/v1/chat/completions", content=STREAM,
                      headers={"x-spendgate-project": "hangup"}) as r:
        rid = r.headers["x-spendgate-request-id"]
        for _ in r.iter_raw():
            break  # hang up after the first event
    line = logged.log_line(rid)
    assert " 499 upstream=openai " in line and " error=client_closed" in line
    assert " tokens=~" in line  # the prompt, estimated
    assert " ttft=" in line
    assert logged.eventually("spendgate_call_errors_total", project="hangup",
                             error_type="client_closed") == 1


def test_a_stream_the_upstream_cut_is_a_200_counted_as_upstream_cut(
        logged: ProxyProcess, upstream: FakeUpstream) -> None:
    upstream.queue(sse_reply("openai_chat_stream.sse", break_after=2))
    with httpx.stream("POST", logged.url + "/openai/v1/chat/completions", content=STREAM,
                      headers={"x-spendgate-project": "cut"}) as r:
        rid = r.headers["x-spendgate-request-id"]
        # Truncated: the connection closed with no terminating chunk.
        with pytest.raises(httpx.RemoteProtocolError, match="incomplete chunked read"):
            for _ in r.iter_raw():
                pass
    line = logged.log_line(rid)
    # uvicorn logs (before it closes the connection the caller saw close) only for an app's
    # own failure to finish a response, not for this cut, recorded as upstream_cut.
    assert not [text for text in INCOMPLETE if text in logged.log()], logged.log()[-3000:]
    assert " 200 upstream=openai " in line and " error=upstream_cut " in line
    assert "broke off the response: connection closed before the end of the response" in line
    assert logged.eventually("spendgate_call_errors_total", project="cut",
                             error_type="upstream_cut") == 1
    assert logged.sample("spendgate_requests_total", project="cut", status="200") == 1


def test_json_format_and_off(fake: FakeUpstream, upstream: FakeUpstream,
                             tmp_path: Path) -> None:
    as_json = ProxyProcess(_config(fake, tmp_path, access_log="json"), tmp_path,
                           log_level="info").start()
    try:
        upstream.queue(Reply(body=fixture("openai_chat_response.json")))
        r = httpx.post(as_json.url + "/openai/v1/chat/completions", content=CHAT,
                       headers={"x-spendgate-project": "j"})
        rid = r.headers["x-spendgate-request-id"]
        fields = json.loads(as_json.log_line(rid))
        assert fields["request_id"] == rid and fields["status"] == 200
        assert fields["project"] == "j" and fields["method"] == "POST"
        assert fields["path"] == "/openai/v1/chat/completions"
        assert fields["tokens_in"] > 0 and fields["tokens_in_estimated"] is False
        assert float(fields["cost_usd"]) > 0 and fields["error"] is None
    finally:
        as_json.stop()
    off = ProxyProcess(_config(fake, tmp_path / "off", access_log="off"), tmp_path,
                       log_level="info").start()
    try:
        r = httpx.post(off.url + "/openai/v1/chat/completions", content=CHAT)
        assert r.status_code == 200
        assert off.eventually("spendgate_requests_total", status="200") == 1
        assert r.headers["x-spendgate-request-id"] not in off.log()
    finally:
        off.stop()


def test_a_stream_cut_by_the_shutdown_timeout_is_logged_as_cancelled(
        fake: FakeUpstream, upstream: FakeUpstream, tmp_path: Path) -> None:
    """uvicorn cancels calls still running 30 s into a graceful shutdown: the call is
    recorded (and logged) as cut, not as the 200 its caller got the head of."""
    config = _config(fake, tmp_path)
    config["upstreams"]["openai"]["timeout_s"] = 60
    proxy = ProxyProcess(config, tmp_path, log_level="info").start()
    upstream.queue(sse_reply("openai_chat_stream.sse", chunk_delay_s=10.0))  # 70 s in all
    try:
        with httpx.stream("POST", proxy.url + "/openai/v1/chat/completions", content=STREAM,
                          headers={"x-spendgate-project": "shutdown"}, timeout=60) as r:
            rid = r.headers["x-spendgate-request-id"]
            assert proxy.proc is not None
            proxy.proc.send_signal(signal.SIGTERM)
            with pytest.raises(httpx.RemoteProtocolError, match="incomplete chunked read"):
                for _ in r.iter_raw():
                    pass
        proxy.proc.wait(60)  # uvicorn re-raises the SIGTERM it handled: -15
    finally:
        proxy.stop()
    line = proxy.log_line(rid)
    assert " 200 upstream=openai " in line and " error=cancelled " in line
    assert 'cause="cut by the proxy\'s shutdown"' in line
    assert not [text for text in INCOMPLETE if text in proxy.log()], proxy.log()[-3000:]
