"""The proxy end to end: a real spendgate process, a real fake provider, real SDK clients."""

from __future__ import annotations

import socket
import time
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.conftest import ProxyProcess, basic_config, free_port
from tests.fake_upstream import FakeUpstream, Reply, fixture

CHAT = b'{"model": "gpt-4o-mini",\n "messages": [{"role": "user", "content": "Hi"}],  "temperature": 0.5}'


def sse_reply(name: str, **kw: Any) -> Reply:
    """A canned SSE transcript, sent one event per chunk as a provider does."""
    events = [e + b"\n\n" for e in fixture(name).split(b"\n\n") if e.strip()]
    return Reply(content_type="text/event-stream", chunks=events, **kw)


def client(proxy: ProxyProcess, project: str, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/openai/v1", api_key="sk-caller", max_retries=0,
                         default_headers={"x-spendgate-project": project, **headers})


# ---- byte transparency -------------------------------------------------------------------

def test_non_streamed_body_and_response_are_byte_for_byte(proxy: ProxyProcess,
                                                          upstream: FakeUpstream) -> None:
    canned = fixture("openai_chat_response.json")
    upstream.queue(Reply(body=canned, headers={"x-request-id": "req_123", "openai-model": "x"}))
    r = httpx.post(proxy.url + "/openai/v1/chat/completions?api-version=1&x=%20y", content=CHAT,
                   headers={"content-type": "application/json", "authorization": "Bearer sk-c",
                            "x-spendgate-project": "bytes", "connection": "keep-alive"})
    assert r.status_code == 200
    assert r.content == canned
    assert r.headers["x-request-id"] == "req_123"  # the provider's, untouched
    assert r.headers["x-spendgate-request-id"] != "req_123"
    seen = upstream.requests[-1]
    assert seen.body == CHAT
    assert seen.raw_path == "/v1/chat/completions"
    assert seen.query == "api-version=1&x=%20y"
    assert seen.header("authorization") == "Bearer sk-c"
    assert seen.header("x-spendgate-project") is None
    assert seen.header("user-agent") == r.request.headers["user-agent"]


def test_usage_counted_with_normalised_types_and_exact_cost(proxy: ProxyProcess,
                                                            upstream: FakeUpstream) -> None:
    upstream.queue(Reply(body=fixture("openai_chat_response.json")))
    result = client(proxy, "norm").chat.completions.create(
        model="o4-mini", messages=[{"role": "user", "content": "capital of France?"}])
    assert result.model == "o4-mini-2025-04-16"  # the snapshot the upstream reported
    labels = {"project": "norm", "model": "o4-mini", "upstream": "openai"}
    usage = orjson.loads(fixture("openai_chat_response.json"))["usage"]
    expect = {"input": usage["prompt_tokens"], "output": usage["completion_tokens"],
              "cached_input": usage["prompt_tokens_details"]["cached_tokens"],
              "reasoning": usage["completion_tokens_details"]["reasoning_tokens"]}
    for token_type, count in expect.items():
        assert proxy.sample("spendgate_tokens_total", type=token_type, source="reported",
                            **labels) == count
    assert proxy.sample("spendgate_tokens_total", type="cache_write", **labels) is None
    assert proxy.sample("spendgate_requests_total", status="200", **labels) == 1
    cost = proxy.sample("spendgate_cost_usd_total", **labels)
    from spendgate.accounting.pricing import PriceCatalog
    from spendgate.usage import Usage
    price = PriceCatalog.load().resolve("o4-mini-2025-04-16")
    assert price is not None
    exact = price.price.cost(Usage(input=expect["input"], output=expect["output"],
                                   cached_input=expect["cached_input"]))
    assert cost == pytest.approx(float(exact), rel=1e-12)
    assert proxy.sample("spendgate_usage_missing_total", project="norm") is None


# ---- streams -----------------------------------------------------------------------------

def test_stream_gets_usage_injected_and_usage_chunk_hidden(proxy: ProxyProcess,
                                                          upstream: FakeUpstream) -> None:
    upstream.queue(sse_reply("openai_chat_stream.sse"))
    body = b'{"model":"o4-mini","stream":true,"messages":[{"role":"user","content":"Hi"}]}'
    with httpx.stream("POST", proxy.url + "/openai/v1/chat/completions", content=body,
                      headers={"x-spendgate-project": "inject"}) as r:
        received = r.read()
    sent = orjson.loads(upstream.requests[-1].body)
    assert sent["stream_options"] == {"include_usage": True}
    assert upstream.requests[-1].body.endswith(body[1:])  # the rest is byte for byte
    events = [e for e in fixture("openai_chat_stream.sse").split(b"\n\n") if e.strip()]
    usage_chunk = next(e for e in events if b'"choices":[]' in e)
    # What the provider sends when not asked for usage: no usage chunk, no "usage" member.
    expected = b"".join(e.replace(b'"usage":null,', b"") + b"\n\n"
                        for e in events if e is not usage_chunk)
    assert received == expected
    assert len(fixture("openai_chat_stream.sse")) - len(received) == (
        len(usage_chunk) + 2 + 5 * len(b'"usage":null,'))  # 5 content chunks in the transcript
    assert b'"usage"' not in received
    assert proxy.sample("spendgate_tokens_total", project="inject", type="output",
                        source="reported") == 201
    assert proxy.sample("spendgate_time_to_first_token_seconds_count", project="inject") == 1


@pytest.mark.parametrize("name", ["openai_completions_stream.sse",
                                  "azure_openai_chat_stream.sse"])
def test_usage_null_as_last_member_is_cut_with_its_comma(proxy: ProxyProcess,
                                                         upstream: FakeUpstream,
                                                         name: str) -> None:
    upstream.queue(sse_reply(name))
    path = "completions" if "completions_stream" in name else "chat/completions"
    with httpx.stream("POST", f"{proxy.url}/openai/v1/{path}",
                      content=b'{"model":"gpt-4o-mini","stream":true,"prompt":"Hi"}',
                      headers={"x-spendgate-project": "cut-last"}) as r:
        received = r.read()
    events = [e for e in fixture(name).split(b"\n\n") if e.strip()]
    expected = b"".join(e.replace(b',"usage":null}', b"}") + b"\n\n" for e in events
                        if not (b'"usage":{' in e and b'"choices":[]' in e))
    assert received == expected and b'"usage"' not in received


def test_stream_caller_asked_for_usage_gets_usage_null_as_sent(proxy: ProxyProcess,
                                                               upstream: FakeUpstream) -> None:
    upstream.queue(sse_reply("openai_chat_stream.sse"))
    body = (b'{"model":"o4-mini","stream":true,"stream_options":{"include_usage":true},'
            b'"messages":[]}')
    with httpx.stream("POST", proxy.url + "/openai/v1/chat/completions", content=body,
                      headers={"x-spendgate-project": "asked-bytes"}) as r:
        assert r.read() == fixture("openai_chat_stream.sse")
        assert "x-request-id" not in r.headers and r.headers["x-spendgate-request-id"]


def test_stream_caller_asked_for_usage_sees_it(proxy: ProxyProcess,
                                               upstream: FakeUpstream) -> None:
    upstream.queue(sse_reply("openai_chat_stream.sse"))
    stream = client(proxy, "asked").chat.completions.create(
        model="o4-mini", messages=[{"role": "user", "content": "Hi"}], stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 201
    assert orjson.loads(upstream.requests[-1].body)["stream_options"] == {"include_usage": True}
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "The capital of France is Paris."


def test_stream_without_usage_is_estimated_and_marked(proxy: ProxyProcess,
                                                      upstream: FakeUpstream) -> None:
    upstream.queue(sse_reply("openai_chat_stream_ollama_no_usage.sse"))
    stream = client(proxy, "est").chat.completions.create(
        model="llama3.1:8b", messages=[{"role": "user", "content": "Why is the sky blue?"}],
        stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    from spendgate.accounting.tokens import TokenEstimator
    est = TokenEstimator()
    assert proxy.sample("spendgate_tokens_total", project="est", type="output",
                        source="estimated") == est.count_text(text, "llama3.1:8b")
    prompt = est.estimate_prompt("chat", {"messages": [{"role": "user",
                                                        "content": "Why is the sky blue?"}]},
                                 "llama3.1:8b")
    assert proxy.sample("spendgate_tokens_total", project="est", type="input",
                        source="estimated") == prompt
    assert proxy.sample("spendgate_tokens_total", project="est", source="reported") is None
    assert proxy.sample("spendgate_usage_missing_total", project="est") == 1
    assert proxy.sample("spendgate_unpriced_requests_total", model="llama3.1:8b") == 1


def test_caller_hangup_mid_stream_is_counted_and_charged(proxy: ProxyProcess,
                                                         upstream: FakeUpstream) -> None:
    upstream.queue(sse_reply("openai_chat_stream.sse", chunk_delay_s=0.3))
    body = b'{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"Hi"}]}'
    with httpx.stream("POST", proxy.url + "/openai/v1/chat/completions", content=body,
                      headers={"x-spendgate-project": "hangup"}) as r:
        for _ in r.iter_raw():
            break  # hang up after the first event
    # The proxy notices at the upstream's next event, then stops it.
    assert proxy.eventually("spendgate_requests_total", project="hangup", status="499") == 1
    deadline = time.monotonic() + 5
    while not upstream.disconnects and time.monotonic() < deadline:
        time.sleep(0.05)
    assert upstream.disconnects == 1 and upstream.completed_streams == 0
    assert proxy.sample("spendgate_tokens_total", project="hangup", type="input",
                        source="estimated") > 0
    assert proxy.sample("spendgate_cost_usd_total", project="hangup") > 0


# ---- errors ------------------------------------------------------------------------------

def test_unknown_upstream_is_404_in_callers_protocol(proxy: ProxyProcess) -> None:
    r = httpx.post(proxy.url + "/nope/v1/chat/completions", content=CHAT)
    assert r.status_code == 404
    assert r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(proxy.url + "/nope/v1/messages", content=b"{}",
                   headers={"anthropic-version": "2023-06-01"})
    assert r.status_code == 404 and r.json()["type"] == "error"


@pytest.mark.parametrize("path", ["/openai/../metrics", "/openai/v1/%2e%2e/x",
                                  "/openai/v1/%252e%252e/x", "/openai/v1/..%5cx"])
def test_crafted_paths_are_refused(proxy: ProxyProcess, upstream: FakeUpstream,
                                   path: str) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        head = sock.recv(65536)
    assert head.startswith(b"HTTP/1.1 400"), head
    assert upstream.requests == []


def test_double_slash_and_absolute_paths_stay_on_the_configured_host(
        proxy: ProxyProcess, upstream: FakeUpstream) -> None:
    for path in ("/openai//evil.example/v1/models", "/openai/http://evil.example/v1"):
        with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    assert [r.raw_path for r in upstream.requests] == ["//evil.example/v1/models",
                                                       "/http://evil.example/v1"]


def test_upstream_unreachable_is_502(spawn: Any, fake: FakeUpstream) -> None:
    config = basic_config(fake)
    config["upstreams"]["openai"]["url"] = f"http://127.0.0.1:{free_port()}"
    dead = spawn(config)
    r = httpx.post(dead.url + "/openai/v1/chat/completions", content=CHAT)
    assert r.status_code == 502 and r.json()["error"]["type"] == "upstream_unreachable"
    r = httpx.post(dead.url + "/openai/v1/chat/completions", content=CHAT,
                   headers={"anthropic-version": "x"})
    assert dead.sample("spendgate_requests_total", status="502", model="gpt-4o-mini") == 2


def test_upstream_timeout_is_504(proxy: ProxyProcess, upstream: FakeUpstream) -> None:
    upstream.queue(Reply(delay_s=2.0))  # "local" has timeout_s: 1
    r = httpx.post(proxy.url + "/local/v1/chat/completions", content=CHAT, timeout=10)
    assert r.status_code == 504 and r.json()["error"]["type"] == "upstream_timeout"
    assert proxy.sample("spendgate_requests_total", upstream="local", status="504") == 1


def test_body_too_large_is_413(spawn: Any, fake: FakeUpstream) -> None:
    small = spawn(basic_config(fake, server={"max_body_mb": 0.001}))
    big = b'{"model":"gpt-4o","input":"' + b"x" * 4096 + b'"}'
    r = httpx.post(small.url + "/openai/v1/embeddings", content=big)
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]
    assert small.sample("spendgate_requests_total", status="413") == 1


def test_upstream_errors_pass_through_unchanged_and_are_counted(
        proxy: ProxyProcess, upstream: FakeUpstream) -> None:
    err = b'{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit"}}'
    upstream.queue(Reply(status=429, body=err, headers={"retry-after": "7"}))
    with pytest.raises(openai.RateLimitError) as caught:
        client(proxy, "ratelimited").chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert caught.value.response.content == err
    assert caught.value.response.headers["retry-after"] == "7"
    assert proxy.sample("spendgate_requests_total", project="ratelimited", status="429") == 1
    assert proxy.sample("spendgate_tokens_total", project="ratelimited") is None


def test_malformed_body_is_forwarded_and_counted_as_unknown(
        proxy: ProxyProcess, upstream: FakeUpstream) -> None:
    upstream.queue(Reply(status=400, body=b'{"error":{"message":"bad json"}}'))
    r = httpx.post(proxy.url + "/openai/v1/chat/completions", content=b'{"model": gpt',
                   headers={"x-spendgate-project": "malformed"})
    assert r.status_code == 400 and upstream.requests[-1].body == b'{"model": gpt'
    assert proxy.sample("spendgate_requests_total", project="malformed", model="unknown",
                        status="400") == 1


# ---- everything else passes through -----------------------------------------------------

def test_unmetered_paths_pass_through_every_method(proxy: ProxyProcess,
                                                   upstream: FakeUpstream) -> None:
    upstream.queue(Reply(body=b'{"data":[{"id":"gpt-4o"}]}'),
                   Reply(status=204, body=b""), Reply(body=b"\x00\x01audio", content_type="audio/mpeg"))
    assert client(proxy, "misc").models.list().data[0].id == "gpt-4o"
    assert httpx.delete(proxy.url + "/openai/v1/files/file-1").status_code == 204
    audio = httpx.get(proxy.url + "/openai/v1/audio/x")
    assert audio.content == b"\x00\x01audio"
    assert [(r.method, r.raw_path) for r in upstream.requests] == [
        ("GET", "/v1/models"), ("DELETE", "/v1/files/file-1"), ("GET", "/v1/audio/x")]


def test_health_and_metrics_formats(proxy: ProxyProcess) -> None:
    assert httpx.get(proxy.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(proxy.url + "/readyz").status_code == 200
    om = httpx.get(proxy.url + "/metrics",
                   headers={"accept": "application/openmetrics-text; version=1.0.0"})
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    assert om.text.rstrip().endswith("# EOF")


def test_headers_named_by_connection_are_hop_by_hop(proxy: ProxyProcess,
                                                    upstream: FakeUpstream) -> None:
    upstream.queue(Reply())
    with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        sock.sendall(b"GET /openai/v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Connection: close, X-Hop\r\nX-Hop: secret-hop\r\nX-Kept: 1\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    seen = upstream.requests[-1]
    assert seen.header("x-hop") is None and seen.header("x-kept") == "1"


def test_truncated_request_body_never_reaches_the_upstream(proxy: ProxyProcess,
                                                           upstream: FakeUpstream) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        sock.sendall(b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"x-spendgate-project: truncated\r\nContent-Length: 1000\r\n\r\n"
                     b'{"model": "gpt-4o", "mess')
        time.sleep(0.2)
    # Counted (499, before its body, so its model is unknown) and never forwarded.
    assert proxy.eventually("spendgate_requests_total", upstream="openai", model="unknown",
                            status="499") == 1
    assert upstream.requests == []


def test_unpriced_model_logging_is_bounded_in_length_and_count(
        spawn: Any, fake: FakeUpstream, upstream: FakeUpstream) -> None:
    proxy = spawn(basic_config(fake))
    names = ["m" * (2 * 1024 * 1024)] + [f"unpriced-{i}" for i in range(300)]
    with httpx.Client(base_url=proxy.url) as http:
        for name in names:
            body = orjson.dumps({"model": name, "messages": [{"role": "user", "content": "x"}]})
            assert http.post("/openai/v1/chat/completions", content=body).status_code == 200
    httpx.get(proxy.url + "/metrics", timeout=30)  # waits for the records before it
    lines = proxy.log().splitlines()
    unpriced = [line for line in lines if "no price for model" in line]
    assert len(unpriced) == 256 and max(map(len, unpriced)) < 400
    assert "(2097152 chars)" in unpriced[0]
    assert sum("more than 256 unpriced models" in line for line in lines) == 1
    assert proxy.log_path.stat().st_size < 100_000
