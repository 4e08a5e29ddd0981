"""The upstream HTTP/1.1 client (``service/http1.py``, the pool in ``service/upstream.py``)
against real servers on loopback.

Most edge cases use ``RawServer``: an asyncio server in the test's own loop that reads each
request and writes canned bytes, so framing, connection reuse and closes are exactly what a
test says. Provider-like behaviour (SSE chunks with delays, broken streams) uses the
aiohttp-based ``FakeUpstream``. Every test runs on both the stdlib loop and uvloop (the
proxy's loop in production).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop

from spendgate.config import UpstreamConfig
from spendgate.errors import UpstreamTimeout, UpstreamUnreachable
from spendgate.upstream.client import Pool, UpstreamClient, UpstreamTarget, iter_body, read_body
from spendgate.upstream.http1 import Endpoint, ResponseError, ServerDisconnected
from tests.conftest import free_port, need
from tests.fake_upstream import FakeUpstream, Reply

Run = Callable[[Coroutine[Any, Any, Any]], Any]
Handler = Callable[["RawServer", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
CLOSE = b""  # as a canned reply: close the connection without answering


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Run:
    factory = uvloop.new_event_loop if request.param == "uvloop" else None

    def runner(coro: Coroutine[Any, Any, Any]) -> Any:
        with asyncio.Runner(loop_factory=factory) as r:
            return r.run(coro)
    return runner


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    """One request's head and body (Content-Length framed), or None at EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await reader.readexactly(length)


class RawServer:
    """A loopback HTTP server whose every connection runs ``handler``; counts connections
    and records requests."""

    def __init__(self, handler: Handler, tls: ssl.SSLContext | None = None) -> None:
        self.handler, self.tls = handler, tls
        self.connections = 0
        self.requests: list[tuple[bytes, bytes]] = []
        self.peer_closed = asyncio.Event()  # a client hung up while we were still sending
        self.release = asyncio.Event()      # for handlers that wait on the test
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> RawServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        for writer in self._writers:
            writer.close()

    def endpoint(self, read_timeout: float = 5.0, host: str = "127.0.0.1") -> Endpoint:
        return Endpoint("https" if self.tls else "http", host, self.port, 5.0, read_timeout)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        try:
            await self.handler(self, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            self.peer_closed.set()
        finally:
            writer.close()


def answers(*replies: bytes) -> Handler:
    """Answer requests, on whatever connection they come, with the next canned reply;
    ``CLOSE`` closes the connection instead, and so does a reply that says
    ``connection: close``."""
    queue = list(replies)

    async def handler(server: RawServer, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        while (request := await read_request(reader)) is not None:
            server.requests.append(request)
            reply = queue.pop(0)
            if reply == CLOSE:
                return
            writer.write(reply)
            await writer.drain()
            if b"connection: close" in reply.lower():
                return
    return handler


async def fetch(client: Pool, endpoint: Endpoint, method: str = "GET",
                body: bytes | None = None, headers: list[tuple[str, str]] | None = None,
                ) -> tuple[int, bytes]:
    response = await client.request(endpoint, method, "/x", headers or [], body)
    try:
        return response.status, await response.read()
    finally:
        response.close()


# ---- the request on the wire ----------------------------------------------------------

def test_request_head_is_exactly_the_callers_plus_host_and_length(run: Run) -> None:
    async def scenario() -> None:
        async with RawServer(answers(OK, OK)) as server:
            client = Pool()
            headers = [("content-type", "application/json"), ("X-Mixed-Case", "a"),
                       ("x-dup", "1"), ("x-dup", "2")]
            response = await client.request(server.endpoint(), "POST", "/v1/chat?a=%20b",
                                            headers, b'{"x":1}')
            response.close()
            await fetch(client, server.endpoint())
            await client.close()
        (post_head, post_body), (get_head, _) = server.requests
        assert post_head == (f"POST /v1/chat?a=%20b HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                             "content-type: application/json\r\nX-Mixed-Case: a\r\nx-dup: 1\r\n"
                             "x-dup: 2\r\nContent-Length: 7\r\n\r\n").encode()
        assert post_body == b'{"x":1}'
        assert get_head == f"GET /x HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode()
    run(scenario())


def test_header_injection_is_refused_before_anything_is_sent(run: Run) -> None:
    async def scenario() -> None:
        async with RawServer(answers(OK)) as server:
            client = Pool()
            for headers in ([("x-a", "1\r\nx-evil: 1")], [("x-a\n", "1")]):
                with pytest.raises(ValueError):
                    await client.request(server.endpoint(), "GET", "/", headers, None)
            with pytest.raises(ValueError):
                await client.request(server.endpoint(), "GET", "/ HTTP/1.1\r\nx: y", [], None)
            await client.close()
        assert server.connections == 0
    run(scenario())


def test_large_request_body_arrives_intact(run: Run) -> None:
    body = os.urandom(3 * 1024 * 1024)

    async def scenario() -> None:
        async with RawServer(answers(OK)) as server:
            client = Pool()
            assert await fetch(client, server.endpoint(), "PUT", body) == (200, b"ok")
            await client.close()
        assert server.requests[0][1] == body
    run(scenario())


# ---- framing ------------------------------------------------------------------------------

def test_chunked_with_extensions_and_trailers_then_reuse(run: Run) -> None:
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5;name=value\r\nhello\r\n6;x\r\n world\r\n0\r\nx-trailer: t\r\n\r\n")

    async def scenario() -> None:
        async with RawServer(answers(chunked, OK)) as server:
            client = Pool()
            assert await fetch(client, server.endpoint()) == (200, b"hello world")
            assert await fetch(client, server.endpoint()) == (200, b"ok")
            await client.close()
        assert server.connections == 1
    run(scenario())


def test_body_read_until_close(run: Run) -> None:
    async def scenario() -> None:
        async def handler(server: RawServer, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\npart one, ")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b"part two")
            await writer.drain()  # then the handler returns: the server closes

        async with RawServer(handler) as server:
            client = Pool()
            assert await fetch(client, server.endpoint()) == (200, b"part one, part two")
            assert client.idle_count(server.endpoint().key) == 0
            await client.close()
    run(scenario())


def test_truncated_bodies_are_errors(run: Run) -> None:
    short = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"
    chunk_cut = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"
    for reply in (short, chunk_cut):
        async def scenario(reply: bytes = reply) -> None:
            async def handler(server: RawServer, reader: asyncio.StreamReader,
                              writer: asyncio.StreamWriter) -> None:
                await read_request(reader)
                writer.write(reply)
                await writer.drain()

            async with RawServer(handler) as server:
                client = Pool()
                with pytest.raises(ResponseError):
                    await fetch(client, server.endpoint())
                await client.close()
        run(scenario())


def test_no_body_for_204_304_and_head_and_the_connection_is_reused_but_after_head(
        run: Run) -> None:
    replies = (b"HTTP/1.1 204 No Content\r\n\r\n",
               b"HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n",
               b"HTTP/1.1 200 OK\r\nContent-Length: 12345\r\n\r\n", OK)

    async def scenario() -> None:
        async with RawServer(answers(*replies)) as server:
            client = Pool()
            endpoint = server.endpoint()
            assert await fetch(client, endpoint) == (204, b"")
            assert await fetch(client, endpoint) == (304, b"")
            response = await client.request(endpoint, "HEAD", "/", [], None)
            assert response.headers.get("content-length") == "12345"
            assert await response.read() == b""
            response.close()
            assert await fetch(client, endpoint) == (200, b"ok")
            await client.close()
        assert server.connections == 2  # a HEAD's connection is not reused
    run(scenario())


def test_informational_responses_are_skipped(run: Run) -> None:
    reply = (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
             b"HTTP/1.1 201 Created\r\nX-Final: yes\r\nContent-Length: 4\r\n\r\ndone")

    async def scenario() -> None:
        async with RawServer(answers(reply)) as server:
            client = Pool()
            response = await client.request(server.endpoint(), "POST", "/", [], b"{}")
            assert response.status == 201
            assert response.raw_headers == [(b"X-Final", b"yes"), (b"Content-Length", b"4")]
            assert "x-final" in response.headers and "link" not in response.headers
            assert await response.read() == b"done"
            response.close()
            await client.close()
    run(scenario())


def test_compressed_bodies_are_not_decoded(run: Run) -> None:
    gzipped = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\xcbH\xcd\xc9\xc9\x07\x00\x86\xa6\x106\x05\x00\x00\x00"
    reply = (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n"
             % len(gzipped)) + gzipped

    async def scenario() -> None:
        async with RawServer(answers(reply)) as server:
            client = Pool()
            assert await fetch(client, server.endpoint()) == (200, gzipped)
            await client.close()
    run(scenario())


# ---- connection reuse ----------------------------------------------------------------------

def test_connection_close_on_either_side_is_not_reused(run: Run) -> None:
    closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"

    async def scenario() -> None:
        async with RawServer(answers(closing, OK, OK, OK)) as server:
            client = Pool()
            endpoint = server.endpoint()
            assert await fetch(client, endpoint) == (200, b"ok")       # server said close
            assert await fetch(client, endpoint, headers=[("Connection", "close")]) == (
                200, b"ok")                                               # we said close
            assert await fetch(client, endpoint) == (200, b"ok")
            assert await fetch(client, endpoint) == (200, b"ok")
            await client.close()
        assert server.connections == 3
    run(scenario())


def test_idle_connection_closed_by_the_server_is_not_used(run: Run) -> None:
    async def scenario() -> None:
        async def handler(server: RawServer, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
            server.requests.append(await read_request(reader) or (b"", b""))
            writer.write(OK)  # keep-alive as far as the client knows, then closed while idle
            await writer.drain()

        async with RawServer(handler) as server:
            client = Pool()
            endpoint = server.endpoint()
            assert await fetch(client, endpoint) == (200, b"ok")
            deadline = time.monotonic() + 5
            while client.idle_count(endpoint.key) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert client.idle_count(endpoint.key) == 0
            assert await fetch(client, endpoint, "POST", b"{}") == (200, b"ok")
            await client.close()
        assert server.connections == 2
    run(scenario())


@pytest.mark.parametrize(("method", "headers", "replayed"), [
    ("GET", [], True), ("POST", [("Idempotency-Key", "k1")], True), ("POST", [], False)])
def test_stale_pooled_connection_is_replaced_once_when_replayable(
        run: Run, method: str, headers: list[tuple[str, str]], replayed: bool) -> None:
    async def scenario() -> None:
        # The second request meets a connection the server closes without answering: what a
        # client sees when the server's idle timeout races its request.
        async with RawServer(answers(OK, CLOSE, OK)) as server:
            client = Pool()
            endpoint = server.endpoint()
            assert await fetch(client, endpoint) == (200, b"ok")
            if replayed:
                assert await fetch(client, endpoint, method, b"{}", headers) == (200, b"ok")
                assert (server.connections, len(server.requests)) == (2, 3)
            else:
                with pytest.raises(ServerDisconnected):
                    await fetch(client, endpoint, method, b"{}", headers)
                assert (server.connections, len(server.requests)) == (1, 2)
            await client.close()
    run(scenario())


def test_fresh_connection_closed_without_answer_is_not_retried(run: Run) -> None:
    async def scenario() -> None:
        async with RawServer(answers(CLOSE, OK)) as server:
            client = Pool()
            with pytest.raises(ServerDisconnected):
                await fetch(client, server.endpoint())
            await client.close()
        assert (server.connections, len(server.requests)) == (1, 1)
    run(scenario())


def test_connections_idle_too_long_are_not_reused(run: Run) -> None:
    async def scenario() -> None:
        async with RawServer(answers(OK, OK, OK)) as server:
            client = Pool(idle_s=1.0)
            endpoint = server.endpoint()
            await fetch(client, endpoint)
            await fetch(client, endpoint)
            await asyncio.sleep(1.2)
            await fetch(client, endpoint)
            await client.close()
        assert server.connections == 2
    run(scenario())


def test_idle_connections_are_closed_after_idle_s_without_further_traffic(run: Run) -> None:
    """A burst leaves many pooled connections; with no call after it, each is still closed
    once idle for ``idle_s`` (the upstream sees them close), not kept for good."""
    async def scenario() -> None:
        upstream = FakeUpstream().start()
        try:
            client = Pool(idle_s=0.5)
            endpoint = Endpoint("http", "127.0.0.1", upstream.port, 5.0, 5.0)
            upstream.queue(*[Reply(delay_s=0.1) for _ in range(20)])
            await asyncio.gather(*(fetch(client, endpoint) for _ in range(20)))
            assert client.idle_count(endpoint.key) == 20
            await asyncio.sleep(0.3)
            assert client.idle_count(endpoint.key) == 20
            await asyncio.sleep(0.5)
            assert client.idle_count(endpoint.key) == 0
            await client.close()
        finally:
            upstream.stop()
    run(scenario())


def test_concurrent_requests_each_get_a_connection_and_the_pool_keeps_them(run: Run) -> None:
    async def scenario() -> None:
        upstream = FakeUpstream().start()
        try:
            client = Pool()
            endpoint = Endpoint("http", "127.0.0.1", upstream.port, 5.0, 5.0)
            upstream.queue(*[Reply(delay_s=0.1) for _ in range(8)])
            results = await asyncio.gather(*(fetch(client, endpoint) for _ in range(8)))
            assert results == [(200, b'{"ok":true}')] * 8
            assert client.idle_count(endpoint.key) == 8
            await asyncio.gather(*(fetch(client, endpoint) for _ in range(8)))
            assert client.idle_count(endpoint.key) == 8
            await client.close()
        finally:
            upstream.stop()
    run(scenario())


# ---- streaming, flow control, hang-ups ------------------------------------------------

def test_sse_chunks_arrive_as_sent_and_a_broken_stream_is_an_error(run: Run) -> None:
    events = [b"data: %d\n\n" % i for i in range(4)]

    async def scenario() -> None:
        upstream = FakeUpstream().start()
        try:
            client = UpstreamClient()
            target = UpstreamTarget("fake", UpstreamConfig(url=upstream.url, timeout_s=5))
            upstream.queue(Reply(chunks=events, content_type="text/event-stream",
                                 chunk_delay_s=0.1),
                           Reply(chunks=events, content_type="text/event-stream",
                                 chunk_delay_s=0.1, break_after=2))
            url = target.url("/v1/chat/completions", "")
            async with client.open(target, "POST", url, [], b"{}") as response:
                assert response.headers.get("Content-Type") == "text/event-stream"
                got = [c async for c in iter_body(response, target)]
            # Handed over as they came (what arrived together may come as one chunk).
            assert b"".join(got) == b"".join(events) and len(got) > 1
            async with client.open(target, "POST", url, [], b"{}") as response:
                got = []
                with pytest.raises(UpstreamUnreachable):
                    async for chunk in iter_body(response, target):
                        got.append(chunk)
                assert b"".join(got) == b"".join(events[:2])
            await client.close()
        finally:
            upstream.stop()
    run(scenario())


def test_large_body_is_streamed_with_backpressure(run: Run) -> None:
    size = 24 * 1024 * 1024
    # One read returns what arrived since the last: without backpressure, after the slow
    # start below, that is the whole body; with it, the pause threshold plus a socket read.
    bound = 4 * 1024 * 1024

    async def scenario() -> None:
        async def handler(server: RawServer, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
            block = b"x" * (1024 * 1024)
            for _ in range(size // len(block)):
                writer.write(block)
                await writer.drain()
            await reader.read()  # until the client is done with the connection

        async with RawServer(handler) as server:
            client = Pool()
            response = await client.request(server.endpoint(), "GET", "/big", [], None)
            await asyncio.sleep(0.3)  # a slow consumer: the client must stop reading
            total, largest = 0, 0
            while chunk := await response.read_chunk():
                total += len(chunk)
                largest = max(largest, len(chunk))
            response.close()
            await client.close()
        assert total == size
        assert largest <= bound
    run(scenario())


def test_closing_an_unfinished_response_hangs_up_on_the_server(run: Run) -> None:
    async def scenario() -> None:
        async def handler(server: RawServer, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for _ in range(200):
                writer.write(b"6\r\nevent\n\r\n")
                await writer.drain()
                await asyncio.sleep(0.02)
            writer.write(b"0\r\n\r\n")

        async with RawServer(handler) as server:
            client = Pool()
            endpoint = server.endpoint()
            response = await client.request(endpoint, "GET", "/stream", [], None)
            assert await response.read_chunk()
            response.close()
            await asyncio.wait_for(server.peer_closed.wait(), 5)
            assert client.idle_count(endpoint.key) == 0
            await client.close()
    run(scenario())


# ---- timeouts and errors at the boundary (service/upstream.py) ------------------------

def test_read_timeouts_for_headers_and_between_chunks(run: Run) -> None:
    async def scenario() -> None:
        async def handler(server: RawServer, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
            while (request := await read_request(reader)) is not None:
                if request[0].startswith(b"GET /slow-body"):
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab")
                    await writer.drain()
                await asyncio.sleep(30)

        async with RawServer(handler) as server:
            client = UpstreamClient()
            target = UpstreamTarget("slow", UpstreamConfig(
                url=f"http://127.0.0.1:{server.port}", timeout_s=0.2))
            started = time.monotonic()
            with pytest.raises(UpstreamTimeout):
                async with client.open(target, "GET", target.url("/slow-head", ""), [], None):
                    pass
            async with client.open(target, "GET", target.url("/slow-body", ""), [],
                                   None) as response:
                with pytest.raises(UpstreamTimeout):
                    await read_body(response, target)
            assert time.monotonic() - started < 10  # the timeouts fired, not the server
            await client.close()
        assert server.connections == 2  # a timed-out connection is never reused
    run(scenario())


def test_connect_timeout_and_unreachable_upstreams(run: Run) -> None:
    async def scenario() -> None:
        async def silent(server: RawServer, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
            await asyncio.sleep(30)  # accepts TCP, never answers the TLS handshake

        async with RawServer(silent) as server:
            client = UpstreamClient()
            hung = UpstreamTarget("hung", UpstreamConfig(
                url=f"https://127.0.0.1:{server.port}", connect_timeout_s=0.2))
            with pytest.raises(UpstreamTimeout) as timed_out:
                async with client.open(hung, "GET", hung.url("/", ""), [], None):
                    pass
            assert timed_out.value.message == (
                f"upstream 'hung' (127.0.0.1:{server.port}) did not answer: no connection "
                "within 0.2 s (connect_timeout_s)")
            port = free_port()
            dead = UpstreamTarget("dead", UpstreamConfig(url=f"http://127.0.0.1:{port}"))
            with pytest.raises(UpstreamUnreachable) as refused:
                async with client.open(dead, "GET", dead.url("/", ""), [], None):
                    pass
            assert refused.value.message == (
                f"upstream 'dead' (127.0.0.1:{port}) is unreachable: connection refused")
            await client.close()
    run(scenario())


# ---- TLS ----------------------------------------------------------------------------------

def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1, and its key: with the
    ``cryptography`` package if installed, else the ``openssl`` command."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    try:
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        if shutil.which("openssl") is None:
            need("the TLS test needs the cryptography package or the openssl command")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
                        "-subj", "/CN=localhost", "-addext",
                        "subjectAltName=DNS:localhost,IP:127.0.0.1",
                        "-keyout", str(key), "-out", str(cert)], check=True,
                       capture_output=True)
        return cert, key
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(private.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(private.public_key()),
                       critical=False)
        .sign(private, hashes.SHA256()))
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(private.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return cert, key


def test_https_verifies_the_certificate_and_sends_sni(run: Run, tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    names: list[str | None] = []
    server_tls.sni_callback = lambda sock, name, ctx: names.append(name)

    async def scenario() -> None:
        async with RawServer(answers(OK, OK, OK), tls=server_tls) as server:
            trusting = Pool(ca_file=str(cert))
            endpoint = server.endpoint(host="localhost")
            assert await fetch(trusting, endpoint) == (200, b"ok")
            assert await fetch(trusting, endpoint) == (200, b"ok")
            await trusting.close()
            assert server.connections == 1 and names == ["localhost"]
            default = Pool()  # the system's CAs: this certificate is not trusted
            with pytest.raises(ssl.SSLCertVerificationError):
                await fetch(default, endpoint)
            await default.close()
    run(scenario())


# ---- what a pooled connection may hold before it is reused --------------------------------

STRAY = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL"


def pending_before_reuse(first: bytes, late: bytes | None) -> Handler:
    """Answer the first request with ``first``; then, once the test sets ``server.release``,
    send ``late`` on that connection (None: its FIN, at once). Later requests get ``OK``."""
    async def handler(server: RawServer, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        while (request := await read_request(reader)) is not None:
            server.requests.append(request)
            writer.write(first if len(server.requests) == 1 else OK)
            await writer.drain()
            if len(server.requests) == 1:
                await server.release.wait()
                if late is None:
                    # Not transport.close(): that closes the socket one loop turn later.
                    fd = os.dup(writer.get_extra_info("socket").fileno())
                    with socket.socket(fileno=fd) as sock:
                        sock.shutdown(socket.SHUT_WR)
                    return
                writer.write(late)
                await writer.drain()
    return handler


async def reuse_with_bytes_pending(server: RawServer, client: Pool, method: str = "GET",
                                   ) -> tuple[int, bytes]:
    """Let the server send its late bytes, then, before the loop has read them (they are in
    the socket, not yet seen by the connection), ask again: the pool's race, made certain."""
    server.release.set()
    await asyncio.sleep(0)       # the server writes (its wake-up runs before ours)
    time.sleep(0.05)             # not yielding: the bytes arrive, the loop does not read them
    return await fetch(client, server.endpoint(), method, b"{}" if method == "POST" else None)


@pytest.mark.parametrize("attempt", range(20))
def test_stray_bytes_after_a_response_are_never_read_as_the_next_one(run: Run,
                                                                     attempt: int) -> None:
    async def scenario() -> None:
        async with RawServer(pending_before_reuse(OK, STRAY)) as server:
            client = Pool()
            assert await fetch(client, server.endpoint()) == (200, b"ok")
            assert await reuse_with_bytes_pending(server, client, "POST") == (200, b"ok")
            await client.close()
        assert server.connections == 2  # the first one was ruled out
    run(scenario())


@pytest.mark.parametrize("attempt", range(20))
def test_a_head_body_sent_late_is_never_read_as_the_next_response(run: Run,
                                                                  attempt: int) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(STRAY)

    async def scenario() -> None:
        async with RawServer(pending_before_reuse(head, STRAY)) as server:
            client = Pool()
            response = await client.request(server.endpoint(), "HEAD", "/", [], None)
            assert await response.read() == b""
            response.close()
            assert await reuse_with_bytes_pending(server, client, "POST") == (200, b"ok")
            await client.close()
        assert server.connections == 2
    run(scenario())


def test_a_pooled_connection_the_server_closed_is_not_used(run: Run) -> None:
    async def scenario() -> None:
        async with RawServer(pending_before_reuse(OK, None)) as server:
            client = Pool()
            assert await fetch(client, server.endpoint()) == (200, b"ok")
            # Its FIN is pending: a POST (never replayed) still gets a fresh connection.
            assert await reuse_with_bytes_pending(server, client, "POST") == (200, b"ok")
            await client.close()
        assert server.connections == 2
    run(scenario())


def test_a_101_answer_is_a_clean_error(run: Run) -> None:
    upgrade = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
               b"Connection: Upgrade\r\n\r\n\x81\x05hello")

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        uncaught: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _, context: uncaught.append(context))
        async with RawServer(answers(upgrade)) as server:
            client = UpstreamClient()
            target = UpstreamTarget("ws", UpstreamConfig(url=f"http://127.0.0.1:{server.port}",
                                                         timeout_s=5))
            started = time.monotonic()
            with pytest.raises(UpstreamUnreachable, match="101"):
                async with client.open(target, "GET", target.url("/", ""), [], None):
                    pass
            assert time.monotonic() - started < 2  # at once, not at the read timeout
            await client.close()
        assert uncaught == []
    run(scenario())
