"""Request heads are bounded (service/hotpath/server.py): in bytes and header lines (431), and
in time (408, or a plain close when nothing was sent), on a real ``spendgate serve``.

Callers are raw sockets, so a test says exactly what goes on the wire and when; memory is the
proxy process's own peak RSS (``VmHWM``).
"""

from __future__ import annotations

import selectors
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import ROOT, ProxyProcess, basic_config, free_port
from tests.fake_upstream import FakeUpstream
from tests.otlp_receiver import OTLPReceiver

HEAD = b"GET /openai/v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n"


@pytest.fixture(scope="module")
def bounded(fake: FakeUpstream, spawn: Any) -> ProxyProcess:
    """A proxy of this module's own (its memory is measured), with a short head timeout."""
    return spawn(basic_config(fake, server={"header_timeout_s": 1.5}))  # type: ignore[no-any-return]


def exchange(port: int, head: bytes, filler: Iterator[bytes] | None = None,
             timeout_s: float = 30.0) -> bytes:
    """Send ``head`` then ``filler``'s pieces, reading all along; stop sending once an answer
    starts (as a client would). Returns what the proxy sent before closing (or until
    ``timeout_s``)."""
    filler = filler if filler is not None else iter(())
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setblocking(False)
    pending = memoryview(head)
    received = bytearray()
    deadline = time.monotonic() + timeout_s
    with sock, selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        while time.monotonic() < deadline:
            for _, mask in sel.select(0.5):
                if mask & selectors.EVENT_READ:
                    try:
                        data = sock.recv(65536)
                    except ConnectionResetError:
                        data = b""
                    if not data:
                        return bytes(received)
                    received += data
                if mask & selectors.EVENT_WRITE and not received:
                    if not pending:
                        piece = next(filler, None)
                        if piece is None:
                            sel.modify(sock, selectors.EVENT_READ)
                            continue
                        pending = memoryview(piece)
                    try:
                        pending = pending[sock.send(pending):]
                    except (BrokenPipeError, ConnectionResetError):
                        sel.modify(sock, selectors.EVENT_READ)
            if received and sel.get_key(sock).events & selectors.EVENT_WRITE:
                sel.modify(sock, selectors.EVENT_READ)
    return bytes(received)


def endless(total: int, piece: int = 1024 * 1024) -> Iterator[bytes]:
    block = b"a" * piece
    for _ in range(total // piece):
        yield block


def test_never_ending_headers_are_431_and_memory_stays_bounded(
        bounded: ProxyProcess, upstream: FakeUpstream) -> None:
    before = bounded.peak_rss_mb()
    answers: list[bytes] = []

    def caller() -> None:
        answers.append(exchange(bounded.port, HEAD + b"x-endless: ", endless(100 * 1024 * 1024)))

    threads = [threading.Thread(target=caller) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(answers) == 4
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
        assert b"connection: close" in answer.lower()
        assert len(answer) < 1024  # a short body
    assert upstream.requests == []
    grown = bounded.peak_rss_mb() - before
    assert grown < 40, f"peak RSS grew by {grown:.0f} MiB"
    assert httpx.get(bounded.url + "/healthz").status_code == 200


@pytest.mark.parametrize("count", [101, 1000])
def test_too_many_headers_are_431(bounded: ProxyProcess, upstream: FakeUpstream,
                                  count: int) -> None:
    lines = b"".join(b"x-h-%d: v\r\n" % i for i in range(count))
    answer = exchange(bounded.port, HEAD + lines + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert upstream.requests == []


def test_heads_within_the_limits_pass_and_keep_alive_works(
        bounded: ProxyProcess, upstream: FakeUpstream) -> None:
    lines = b"".join(b"x-h-%d: v\r\n" % i for i in range(98))  # + Host: 99 lines of 100
    # 56 KiB of head in lines the upstream (aiohttp: 8 KiB a line) accepts too.
    big = b"".join(b"x-big-%d: " % i + b"b" * 8000 + b"\r\n" for i in range(7))
    with socket.create_connection(("127.0.0.1", bounded.port), timeout=30) as sock:
        responses = Responses(sock)
        for extra in (lines, big):
            sock.sendall(HEAD + extra + b"\r\n")
            assert responses.next().startswith(b"HTTP/1.1 200 ")
        # Two requests in one write (pipelined): both answered, in order.
        sock.sendall(HEAD + b"\r\n" + HEAD + b"\r\n")
        assert responses.next().startswith(b"HTTP/1.1 200 ")
        assert responses.next().startswith(b"HTTP/1.1 200 ")
    assert len(upstream.requests) == 4


class Responses:
    """Responses with content-length bodies, read one by one from a kept-alive socket: bytes
    of the next one that arrive with the current one are kept for it (pipelining)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock, self._data = sock, b""

    def _more(self) -> None:
        chunk = self._sock.recv(65536)
        assert chunk, "the proxy closed the connection"
        self._data += chunk

    def next(self) -> bytes:
        while b"\r\n\r\n" not in self._data:
            self._more()
        head, _, rest = self._data.partition(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        while len(rest) < length:
            self._more()
            head, _, rest = self._data.partition(b"\r\n\r\n")
        self._data = rest[length:]
        return head + b"\r\n\r\n" + rest[:length]


def test_an_8_mb_user_header_is_431_and_never_logged_or_traced(
        fake: FakeUpstream, upstream: FakeUpstream, spawn: Any, tmp_path: Path) -> None:
    receiver = OTLPReceiver().start()
    usage_log = tmp_path / "usage.jsonl"
    try:
        proxy: ProxyProcess = spawn(
            basic_config(fake, telemetry={"usage_log": {"path": str(usage_log)}}),
            env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "50",
                 "OTEL_METRICS_EXPORTER": "none"})
        huge = "u" * (8 * 1024 * 1024)
        body = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}'
        r = httpx.post(proxy.url + "/openai/v1/chat/completions", content=body,
                       headers={"x-spendgate-user": huge}, timeout=30)
        assert r.status_code == 431 and len(r.content) < 200
        # A call that is recorded, so the log and the traces are known to be written.
        r = httpx.post(proxy.url + "/openai/v1/chat/completions", content=body,
                       headers={"x-spendgate-user": "alice", "x-request-id": "after"})
        assert r.status_code == 200
        assert receiver.span("after").attributes["spendgate.user"] == "alice"
        httpx.get(proxy.url + "/metrics")  # waits for the records before it
        lines = [orjson.loads(line) for line in usage_log.read_bytes().splitlines()]
        assert [line["user"] for line in lines] == ["alice"]
        assert len(upstream.requests) == 1
        proxy.stop()
        assert b"uuuuuuuu" not in receiver.all_bytes()
        assert "uuuuuuuu" not in proxy.log()
    finally:
        receiver.stop()


def test_a_head_sent_one_byte_a_second_is_408_after_the_header_timeout(
        bounded: ProxyProcess, upstream: FakeUpstream) -> None:
    def one_byte_a_second() -> Iterator[bytes]:
        for byte in HEAD[1:]:
            time.sleep(1.0)
            yield bytes([byte])

    started = time.monotonic()
    answer = exchange(bounded.port, HEAD[:1], one_byte_a_second(), timeout_s=10)
    took = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert 1.4 < took < 4.0, took
    assert upstream.requests == []


def test_the_header_timeout_also_bounds_the_next_head_on_a_kept_alive_connection(
        bounded: ProxyProcess, upstream: FakeUpstream) -> None:
    with socket.create_connection(("127.0.0.1", bounded.port), timeout=30) as sock:
        sock.sendall(HEAD + b"\r\n")
        assert Responses(sock).next().startswith(b"HTTP/1.1 200 ")
        sock.sendall(b"GET /openai/v1/mo")  # and never the rest
        started = time.monotonic()
        sock.settimeout(10)
        answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert time.monotonic() - started < 4.0


def test_idle_connections_that_never_send_a_request_are_closed(
        bounded: ProxyProcess) -> None:
    count = 2000
    socks = []
    try:
        for _ in range(count):
            socks.append(socket.create_connection(("127.0.0.1", bounded.port)))
        opened = time.monotonic()
        closed = 0
        with selectors.DefaultSelector() as sel:
            for sock in socks:
                sel.register(sock, selectors.EVENT_READ)
            while closed < count and time.monotonic() - opened < 10:
                for key, _ in sel.select(0.5):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    assert sock.recv(1024) == b""  # closed, no answer: nothing was asked
                    sel.unregister(sock)
                    closed += 1
        took = time.monotonic() - opened
        assert closed == count
        assert took > 1.0  # not before the timeout (1.5 s after each connected)
    finally:
        for sock in socks:
            sock.close()
    assert httpx.get(bounded.url + "/healthz").status_code == 200


# An ASGI app under the protocol alone, each path ending its response the way it names:
# cut on purpose (``asgi.CUT_SHORT`` set, returning or cancelled) or unfinished by mistake.
_CUTTING_APP = '''
import asyncio, importlib.util, sys
spec = importlib.util.spec_from_file_location("sourcetree", sys.argv[1])
tree = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tree)
tree.install(tree.Path(sys.argv[2]))
import uvicorn
from spendgate.asgi import CUT_SHORT
from spendgate.hotpath.server import HeadLimits, protocol_class

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"half", "more_body": True})
    if scope["path"] != "/bug":
        scope[CUT_SHORT] = True
    if scope["path"] == "/cancelled":
        raise asyncio.CancelledError

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[3]), lifespan="off",
            http=protocol_class(HeadLimits()), log_level="info")
'''
_UNFINISHED = "ASGI callable returned without completing response"


def test_a_cut_on_purpose_is_truncated_and_not_logged_an_unfinished_response_is(
        tmp_path: Path) -> None:
    script, log_path, port = tmp_path / "app.py", tmp_path / "app.log", free_port()
    script.write_text(_CUTTING_APP)
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, str(script), str(ROOT / "scripts/sourcetree.py"),
                                 str(ROOT), str(port)], stdout=log, stderr=log)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while "Uvicorn running on" not in log_path.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)

        def truncated(path: str) -> bytes:
            got = b""
            with httpx.stream("GET", url + path) as r, \
                    pytest.raises(httpx.RemoteProtocolError, match="incomplete chunked"):
                for chunk in r.iter_raw():
                    got += chunk
            return got

        assert truncated("/cut") == truncated("/cancelled") == b"half"
        assert _UNFINISHED not in log_path.read_text()
        assert "Exception in ASGI application" not in log_path.read_text()
        assert truncated("/bug") == b"half"
        deadline = time.monotonic() + 5
        while _UNFINISHED not in log_path.read_text():  # an app's mistake is still an error
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(10)
