"""Issue 15 item 3: labels only from admitted calls, bounded in every way.

Through real proxies: a refused call (401, 403, 413, 400) is counted with ``model="unknown"``
and its project from its key, else ``unknown``, never from what the caller wrote; the proxy
authenticates before it reads a body; label values over 128 characters, attribution headers
over 256 bytes and (project, model) pairs over ``metrics.pair_limit`` cannot grow ``/metrics``.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ProxyProcess, basic_config, free_port
from tests.fake_upstream import FakeUpstream, Reply, fixture

KEY = "sg-bounds-0123456789abcdef"
MB = 1024 * 1024
METRICS_BOUND = 256 * 1024          # bytes of /metrics the floods below must stay under
FLOOD = 10_000                      # refused calls with 1 MB model names


def in_threads(threads: int, work: Callable[[int], None]) -> None:
    """``work(n)`` for n in range(threads), each in its own thread; the first exception
    raised in any of them is raised here."""
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            work(n)
        except BaseException as error:  # re-raised in the test's thread
            errors.append(error)

    workers = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if errors:
        raise errors[0]


def run_concurrently(count: int, call: Callable[[httpx.Client, int], None],
                     threads: int = 8) -> None:
    """``call(client, i)`` for i in range(count), spread over threads with keep-alive
    clients."""
    def work(first: int) -> None:
        with httpx.Client(timeout=30) as client:
            for i in range(first, count, threads):
                call(client, i)

    in_threads(threads, work)


def pipelined(port: int, requests: list[bytes], status: bytes, connections: int = 4,
              batch: int = 64) -> None:
    """Send raw HTTP/1.1 requests over a few keep-alive connections, ``batch`` at a time
    pipelined (40,000 calls in seconds, where a Python client would take a minute), and
    check that each got a response with ``status``."""
    def work(first: int) -> None:
        mine = requests[first::connections]
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            for start in range(0, len(mine), batch):
                sent = mine[start:start + batch]
                sock.sendall(b"".join(sent))
                received = b""
                while received.count(b"HTTP/1.1 ") < len(sent):  # bodies here are JSON
                    chunk = sock.recv(1 << 20)
                    assert chunk, "the proxy closed the connection"
                    received += chunk
                assert received.count(b"HTTP/1.1 " + status) == len(sent), received[:500]

    in_threads(connections, work)


def metric_label_values(text: str, label: str) -> set[str]:
    return {s.labels[label] for family in text_string_to_metric_families(text)
            for s in family.samples if label in s.labels}


@pytest.fixture(scope="module")
def keyed(fake: FakeUpstream, spawn: Any) -> ProxyProcess:
    config = basic_config(fake, keys=[{"key": KEY, "project": "bounded"}],
                          server={"max_body_mb": 2})
    return spawn(config)  # type: ignore[no-any-return]


def test_unauthenticated_caller_gets_401_before_sending_its_body(keyed: ProxyProcess,
                                                                 upstream: FakeUpstream) -> None:
    # The head announces 1 MB; the 401 must come before one byte of it is sent, and the
    # connection must still serve the next request once the body has been sent.
    with socket.create_connection(("127.0.0.1", keyed.port), timeout=3) as sock:
        sock.sendall(b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"content-type: application/json\r\n"
                     b"content-length: %d\r\n\r\n" % MB)
        head = sock.recv(65536)
        assert head.startswith(b"HTTP/1.1 401"), head
        while not head.endswith(b"}}"):  # the JSON body may follow in its own segment
            head += sock.recv(65536)
        assert b'"invalid_request_error"' in head
        sock.sendall(b" " * MB)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        deadline = time.monotonic() + 3
        rest = b""
        while b'"status":"ok"' not in rest and time.monotonic() < deadline:
            rest += sock.recv(65536)
        assert rest.startswith(b"HTTP/1.1 200"), rest
    assert upstream.requests == []


def test_1mb_upload_with_a_wrong_key_gets_the_401_json_over_keep_alive(
        keyed: ProxyProcess, upstream: FakeUpstream) -> None:
    body = b'{"model":"gpt-4o-mini","messages":[],"pad":"' + b"x" * MB + b'"}'
    with httpx.Client(timeout=10) as client:
        for _ in range(3):  # the same connection, again and again: no reset, no desync
            r = client.post(keyed.url + "/openai/v1/chat/completions", content=body,
                            headers={"authorization": "Bearer sg-wrong"})
            assert r.status_code == 401
            assert r.json()["error"]["code"] == "spendgate_unauthorized"
        upstream.queue(Reply(body=fixture("openai_chat_response.json")))
        ok = client.post(keyed.url + "/openai/v1/chat/completions",
                         content=b'{"model":"gpt-4o-mini","messages":[]}',
                         headers={"authorization": f"Bearer {KEY}"})
        assert ok.status_code == 200
    assert len(upstream.requests) == 1


def test_refused_calls_are_counted_as_unknown_whatever_they_claim(keyed: ProxyProcess,
                                                                  upstream: FakeUpstream) -> None:
    def count(**labels: str) -> float:
        return keyed.sample("spendgate_requests_total", **labels) or 0

    before = {s: count(status=s) for s in ("401", "403", "413", "400")}
    claims = {"x-spendgate-project": "claimed"}
    lying = b'{"model":"claimed-model","messages":[]}'
    url = keyed.url + "/openai/v1/chat/completions"
    assert httpx.post(url, content=lying, headers=claims).status_code == 401
    keyed_claims = {**claims, "authorization": f"Bearer {KEY}"}
    assert httpx.post(url, content=lying, headers={**keyed_claims, "origin": "https://x.example"}
                      ).status_code == 403
    assert httpx.post(url, content=b'{"model":"claimed-model","p":"' + b"x" * 3 * MB + b'"}',
                      headers=keyed_claims).status_code == 413
    assert httpx.post(url, content=lying, headers={**keyed_claims,
                                                   "x-spendgate-user": "u" * 257}
                      ).status_code == 400
    assert count(status="401", model="unknown", project="unknown") == before["401"] + 1
    for status in ("403", "413", "400"):  # a valid key: its project, still no model
        assert count(status=status, model="unknown", project="bounded") == before[status] + 1
    text = keyed.metrics_text()
    assert "claimed" not in text
    assert upstream.requests == []


def test_metrics_stay_bounded_after_10000_refused_calls_with_1mb_model_names(
        keyed: ProxyProcess, upstream: FakeUpstream) -> None:
    filler = b"m" * MB
    url = keyed.url + "/openai/v1/chat/completions"
    before = keyed.sample("spendgate_requests_total", status="401") or 0
    served = keyed.sample("spendgate_requests_total", model="gpt-4o-mini", status="200") or 0

    def refused(client: httpx.Client, i: int) -> None:
        body = b'{"model":"%d' % i + filler + b'","messages":[]}'
        headers = [{}, {"authorization": "Bearer sg-wrong"}, {"x-api-key": f"k{i}"},
                   {"x-spendgate-key": f"nope{i}", "x-spendgate-project": f"p{i}"}][i % 4]
        r = client.post(url, content=body, headers=headers)
        assert r.status_code == 401, r.text

    started = time.monotonic()
    run_concurrently(FLOOD, refused)
    flood_s = time.monotonic() - started
    size = len(httpx.get(keyed.url + "/metrics").content)
    assert size < METRICS_BOUND, f"/metrics is {size} bytes after the flood"
    assert keyed.sample("spendgate_requests_total", status="401", model="unknown",
                        project="unknown") == before + FLOOD
    # The label caps were not spent on junk: a real call keeps its own model label.
    upstream.queue(Reply(body=fixture("openai_chat_response.json")))
    openai.OpenAI(base_url=keyed.url + "/openai/v1", api_key=KEY, max_retries=0
                  ).chat.completions.create(model="gpt-4o-mini",
                                            messages=[{"role": "user", "content": "Hi"}])
    assert keyed.sample("spendgate_requests_total", model="gpt-4o-mini", project="bounded",
                        status="200") == served + 1
    assert metric_label_values(keyed.metrics_text(), "model") <= {"unknown", "gpt-4o-mini"}
    print(f"{FLOOD} refused 1 MB calls in {flood_s:.1f} s; /metrics {size} bytes")


@pytest.mark.parametrize("header", ["x-spendgate-project", "x-spendgate-user"])
def test_attribution_headers_over_256_bytes_are_400(proxy: ProxyProcess, upstream: FakeUpstream,
                                                    header: str) -> None:
    url = proxy.url + "/openai/v1/chat/completions"
    chat = b'{"model":"gpt-4o-mini","messages":[]}'
    anthropic = proxy.url + "/anthropic/v1/messages"
    version = {"anthropic-version": "2023-06-01"}
    upstream.queue(Reply(body=fixture("openai_chat_response.json")))
    assert httpx.post(url, content=chat, headers={header: "b" * 256}).status_code == 200
    # One refusal in each protocol first: the series for status 400 then exist.
    warm = httpx.post(url, content=chat, headers={header: "w" * 257})
    assert warm.status_code == 400
    assert warm.json()["error"]["type"] == "invalid_request_error"
    assert header in warm.json()["error"]["message"]
    warm = httpx.post(anthropic, content=chat, headers={header: "w" * 300, **version})
    assert warm.status_code == 400 and warm.json()["type"] == "error"
    before = len(proxy.metrics_text())
    for target, extra in ((url, {}), (anthropic, version)):
        r = httpx.post(target, content=chat, headers={header: "h" * MB, **extra})
        # A head this large may meet the request-head cap first (server.max_header_kb: 431).
        assert r.status_code in (400, 431), r.status_code
    after = proxy.metrics_text()
    assert len(after) - before < 512, "a refused header grew /metrics"
    assert "hhhh" not in after and "wwww" not in after
    assert len(upstream.requests) == 1


PROJECTS = MODELS = 200
PAIR_LIMIT = 100


def test_pair_cap_holds_under_200x200_projects_and_models(spawn: Any, fake: FakeUpstream) -> None:
    # Admitted calls (no virtual keys) to an upstream that refuses connections: a fast 502
    # each, counted with the caller's project and model, as a 200 would be.
    config = basic_config(fake, metrics={"pair_limit": PAIR_LIMIT})
    config["upstreams"]["openai"]["url"] = f"http://127.0.0.1:{free_port()}"
    proxy = spawn(config)

    def call(project: int, model: int) -> bytes:
        body = b'{"model":"model-%d","messages":[]}' % model
        return (b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"x-spendgate-project: project-%d\r\ncontent-length: %d\r\n\r\n%s"
                % (project, len(body), body))

    pipelined(proxy.port, [call(p, m) for p in range(PROJECTS) for m in range(MODELS)],
              b"502")
    text = proxy.metrics_text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    projects = {s.labels["project"] for s in families["spendgate_requests"].samples}
    bound = PAIR_LIMIT + PROJECTS + 1  # admitted pairs, then one (project, other) each
    for name, family in families.items():
        seen = {(s.labels["project"], s.labels["model"]) for s in family.samples
                if "project" in s.labels and "model" in s.labels}
        assert len(seen) <= bound, f"{name}: {len(seen)} (project, model) pairs"
    requests = families["spendgate_requests"].samples
    assert sum(s.value for s in requests if s.name == "spendgate_requests_total") \
        == PROJECTS * MODELS  # every call counted
    # Past the cap a project keeps its spend and calls, under model "other".
    assert len(projects) == PROJECTS
    assert proxy.sample("spendgate_requests_total", project=f"project-{PROJECTS - 1}",
                        model="other") == MODELS
    # The GenAI convention metrics fold (request model, response model) pairs the same way.
    genai = {s.labels["gen_ai_request_model"] for s in
             families["gen_ai_client_operation_duration_seconds"].samples}
    assert len(genai) <= PAIR_LIMIT + 1
