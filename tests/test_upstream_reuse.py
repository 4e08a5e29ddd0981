"""The pool's reuse rules end to end, through a real ``spendgate serve``: bytes an upstream
sends after a complete response (stray bytes, a HEAD response's body in a later segment)
never become the next caller's response, and a ``101`` is a clean 502.

The upstream is a raw threaded server, so what it sends and when is exactly what a test
says. The race is made to happen every time: the late bytes are sent while the proxy is busy
parsing the next caller's body (a large one), i.e. after they could have been read by the
loop and before the pooled connection is taken for that caller.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import ProxyProcess

STRAY = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 4\r\n\r\nEVIL"
ANSWER = b'{"id":"c1","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}'
OK = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
      % len(ANSWER)) + ANSWER
UPGRADE = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"\r\n\x81\x05hello")
# Parsed on the event loop in tens of milliseconds: the window the late bytes land in.
SLOW_BODY = (b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hi"}],"metadata":['
             + b"[]," * 600_000 + b"[]]}")


class LateBytesUpstream:
    """Answers ``OK``; a request whose target has ``late`` in it (or a HEAD, whose headers
    then announce a body) gets its late bytes, ``STRAY``, once the test sets ``late``.
    ``upgrade`` in the target: a 101. Counts connections and requests."""

    def __init__(self) -> None:
        self.late = threading.Event()
        self.connections = 0
        self.targets: list[bytes] = []
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._server.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            self.connections += 1
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as reader:
            try:
                for head in _requests(reader):
                    target = head.split(b" ")[1]
                    self.targets.append(target)
                    if b"upgrade" in target:
                        conn.sendall(UPGRADE)
                        return
                    if head.startswith(b"HEAD "):
                        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n"
                                     % len(STRAY))
                    else:
                        conn.sendall(OK)
                    if head.startswith(b"HEAD ") or b"late" in target:
                        self.late.wait(10)
                        self.late.clear()
                        conn.sendall(STRAY)  # a segment of its own, after the response
            except OSError:
                pass  # the proxy closed the connection: what the fix does


def _requests(reader: Any) -> Iterator[bytes]:
    """Each request's head, its Content-Length body read and dropped, until EOF."""
    while True:
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            line = reader.readline()
            if not line:
                return
            head += line
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        reader.read(length)
        yield head


@pytest.fixture()
def late(spawn: Any) -> Iterator[tuple[LateBytesUpstream, ProxyProcess]]:
    upstream = LateBytesUpstream()
    proxy: ProxyProcess = spawn({"upstreams": {"openai": {
        "url": f"http://127.0.0.1:{upstream.port}", "provider": "openai", "timeout_s": 5}}})
    yield upstream, proxy
    upstream.close()


def next_call_while_late_bytes_arrive(upstream: LateBytesUpstream,
                                      http: httpx.Client) -> httpx.Response:
    """The next caller's call, its body still being parsed when the late bytes arrive."""
    timer = threading.Timer(0.03, upstream.late.set)
    timer.start()
    try:
        return http.post("/openai/v1/chat/completions", content=SLOW_BODY)
    finally:
        timer.cancel()


@pytest.mark.parametrize("first", ["stray bytes after a response", "a late HEAD body"])
def test_late_bytes_are_never_read_as_the_next_callers_response(
        late: tuple[LateBytesUpstream, ProxyProcess], first: str) -> None:
    upstream, proxy = late
    misread = 0
    with httpx.Client(base_url=proxy.url, timeout=10) as http:
        for _ in range(10):
            if first == "a late HEAD body":
                assert http.head("/openai/v1/models").status_code == 200
            else:
                r = http.post("/openai/v1/chat/completions?late=1", content=b'{"model":"m"}')
                assert r.content == ANSWER
            r = next_call_while_late_bytes_arrive(upstream, http)
            assert r.status_code == 200
            misread += r.content != ANSWER
            time.sleep(0.05)  # the late bytes are out before the next round
    assert misread == 0
    assert upstream.connections >= 10  # each connection with late bytes was dropped


def test_an_upstream_answering_101_is_a_clean_502(
        late: tuple[LateBytesUpstream, ProxyProcess]) -> None:
    upstream, proxy = late
    r = httpx.post(proxy.url + "/openai/v1/chat/completions?upgrade=1", content=b'{"model":"m"}',
                   headers={"x-spendgate-project": "upgraded"}, timeout=10)
    assert r.status_code == 502
    assert r.json()["error"]["type"] == "upstream_unreachable"
    assert "101" in r.json()["error"]["message"]
    assert proxy.eventually("spendgate_requests_total", project="upgraded", status="502") == 1
    log = proxy.log()
    assert sum("answered 101" in line for line in log.splitlines()) == 1
    assert "Traceback" not in log and "HttpParserUpgrade" not in log
    r = httpx.post(proxy.url + "/openai/v1/chat/completions", content=b'{"model":"m"}')
    assert r.content == ANSWER  # and the proxy goes on, on a new connection
    assert upstream.targets == [b"/v1/chat/completions?upgrade=1", b"/v1/chat/completions"]
    assert upstream.connections == 2
