"""Answers that arrive whole and shutdowns that finish what they started, on real processes.

* A body over ``server.max_body_mb`` is answered 413 while the caller is still sending it:
  the proxy reads and drops the rest (lingering close) instead of resetting the connection
  under the answer, whether the connection is kept alive or closed after the answer.
* SIGTERM with streams in flight: ``/readyz`` turns 503 at once (served for
  ``server.shutdown_delay_s``), the streams finish, every call is in the usage log and the
  ledger, and the process exits.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import requests

from tests.budget_helpers import budget_config
from tests.conftest import ProxyProcess, basic_config
from tests.fake_upstream import FakeUpstream, Reply

TWO_MB = b'{"model": "gpt-4o-mini", "pad": "' + b"a" * (2 * 1024 * 1024) + b'"}'


def test_413_arrives_whole_fifty_times_never_a_reset(spawn: Any, fake: FakeUpstream) -> None:
    proxy: ProxyProcess = spawn(basic_config(fake, server={"max_body_mb": 1}))
    url = proxy.url + "/openai/v1/chat/completions"
    statuses = []
    with requests.Session() as kept_alive:
        for i in range(50):
            # Half on one kept-alive connection, half each on its own closed after the answer.
            if i % 2:
                r = kept_alive.post(url, data=TWO_MB, headers={"content-type": "application/json"})
            else:
                r = requests.post(url, data=TWO_MB, headers={"content-type": "application/json",
                                                             "connection": "close"})
            statuses.append(r.status_code)
            assert "limit" in r.json()["error"]["message"]
    assert statuses == [413] * 50
    # A sender slower than the answer: the 413 comes while most of the body is unsent.
    with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        sock.sendall(b"POST /openai/v1/chat/completions HTTP/1.1\r\nhost: localhost\r\n"
                     b"connection: close\r\ncontent-length: %d\r\n\r\n" % len(TWO_MB))
        time.sleep(0.2)
        for start in range(0, len(TWO_MB), 65536):
            sock.sendall(TWO_MB[start:start + 65536])
            time.sleep(0.001)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert proxy.sample("spendgate_requests_total", status="413") == 51


def stream_reply(chunks: int, pause_s: float) -> Reply:
    events = [orjson.dumps({"id": "c1", "object": "chat.completion.chunk", "model": "m",
                            "choices": [{"index": 0, "delta": {"content": "tok "}}]})
              for _ in range(chunks)]
    events.append(orjson.dumps({"id": "c1", "object": "chat.completion.chunk", "model": "m",
                                "choices": [], "usage": {"prompt_tokens": 5,
                                                         "completion_tokens": chunks,
                                                         "total_tokens": 5 + chunks}}))
    body = [b"data: " + e + b"\n\n" for e in events] + [b"data: [DONE]\n\n"]
    return Reply(status=200, content_type="text/event-stream", chunks=body,
                 chunk_delay_s=pause_s)


def test_sigterm_finishes_streams_in_flight_and_readyz_turns_503_at_once(
        spawn: Any, upstream: FakeUpstream, tmp_path: Path) -> None:
    log = tmp_path / "usage.jsonl"
    config = budget_config(upstream, [
        {"name": "all", "limit_usd": 1000, "window": "total", "action": "block"}],
        telemetry={"usage_log": {"path": str(log)}}, admin_key="adm",
        server={"shutdown_delay_s": 1, "drain_s": 20})
    config["pricing"]["overrides"]["m"] = {"input_per_mtok": 0, "output_per_mtok": 1000}
    proxy: ProxyProcess = spawn(config)
    upstream.queue(*[stream_reply(20, 0.1) for _ in range(4)])  # each stream: about 2 s
    bodies: list[bytes] = []

    def stream() -> None:
        with httpx.Client(timeout=30) as http, http.stream(
                "POST", proxy.url + "/openai/v1/chat/completions",
                content=orjson.dumps({"model": "m", "stream": True, "max_tokens": 50,
                                      "messages": [{"role": "user", "content": "hi"}]}),
                headers={"content-type": "application/json"}) as r:
            bodies.append(b"".join(r.iter_bytes()))

    callers = [threading.Thread(target=stream) for _ in range(4)]
    for caller in callers:
        caller.start()
    time.sleep(0.5)
    assert httpx.get(proxy.url + "/readyz").status_code == 200
    assert proxy.proc is not None
    proxy.proc.send_signal(signal.SIGTERM)
    ready = httpx.get(proxy.url + "/readyz")
    assert ready.status_code == 503 and "draining" in ready.json()["problems"][0]
    for caller in callers:
        caller.join(30)
    assert len(bodies) == 4 and all(b.endswith(b"data: [DONE]\n\n") for b in bodies)
    assert all(b.count(b"tok ") == 20 for b in bodies)
    proxy.proc.wait(30)  # exits (by re-raising SIGTERM, as uvicorn does, once drained)
    assert "Traceback" not in proxy.log()
    lines = [orjson.loads(line) for line in log.read_text().splitlines()]
    assert len(lines) == 4 and {line["status"] for line in lines} == {200}
    proxy.start()  # the ledger has all four calls: 20 tokens at $0.001 each
    view = httpx.get(proxy.url + "/admin/budgets",
                     headers={"authorization": "Bearer adm"}).json()["budgets"][0]
    assert view["spend_usd"] == 0.08 and view["reserved_usd"] == 0


def test_a_caller_that_reads_nothing_is_hung_up_on_after_write_timeout_s(
        spawn: Any, upstream: FakeUpstream) -> None:
    """A stream far larger than the socket buffers, to a caller that never reads: after
    ``server.write_timeout_s`` the proxy hangs up (499), stops the upstream, and counts the
    call as any hang-up; without the bound it would hold both connections for good."""
    proxy: ProxyProcess = spawn(basic_config(upstream, server={"write_timeout_s": 1}))
    event = orjson.dumps({"id": "c1", "object": "chat.completion.chunk", "model": "m",
                          "choices": [{"index": 0, "delta": {"content": "x" * 4000}}]})
    chunks = [b"data: " + event + b"\n\n"] * 4000 + [b"data: [DONE]\n\n"]  # 16 MB
    upstream.queue(Reply(content_type="text/event-stream", chunks=chunks, chunk_delay_s=0.0005))
    body = orjson.dumps({"model": "m", "stream": True,
                         "messages": [{"role": "user", "content": "hi"}]})
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", proxy.port))
    try:
        sock.sendall(b"POST /openai/v1/chat/completions HTTP/1.1\r\nhost: localhost\r\n"
                     b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                     % (len(body), body))
        assert proxy.eventually("spendgate_requests_total", 20, status="499") == 1
        assert upstream.disconnects == 1 and upstream.completed_streams == 0
    finally:
        sock.close()
