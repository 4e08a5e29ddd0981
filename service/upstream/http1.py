"""One HTTP/1.1 exchange at a time on one connection: asyncio Protocols plus httptools.

The wire half of spendgate's upstream client; the pool, retries and error translation are in
``service/upstream.py``. Written for the proxy's one upstream call per request, where a
general-purpose client's per-call machinery (middlewares, cookie jars, header multidicts,
tracing hooks) is paid on every call for nothing (``bench/client_choice.py`` measures it).

Contracts:

* **Transparent.** ``encode_head`` writes the request line, ``Host``, the caller's headers
  exactly as given (names, order, duplicates), and ``Content-Length`` when there is a body;
  nothing else (no User-Agent, Accept or Accept-Encoding of its own). Responses are never
  decompressed; status, raw headers and body bytes are the upstream's own.
* **Bodies.** Content-length, chunked and read-until-close framing (httptools); 1xx
  responses skipped; HEAD, 204 and 304 have no body. Chunks are handed over as they arrive,
  never the whole body buffered here: past ``HIGH_WATER`` unread bytes the socket stops being
  read until the consumer catches up.
* **Reuse.** A ``Response`` says its connection may carry another request only when it
  is complete and neither side said ``connection: close`` (httptools' ``should_keep_alive``);
  bytes past its end, or while the connection is idle, rule the connection out, and so does
  ``Connection.reusable`` just before reuse: bytes or an end of stream already in the socket
  but not yet read by the loop (a late HEAD body, a server's stray bytes or its FIN) would
  otherwise be taken for the next request's response. Bytes that arrive only after the next
  request went out cannot be told from its response (HTTP/1.1 has no way to), so a
  connection that answered a HEAD, where a wrong server's body comes at any time, is never
  reused (HEAD is rare on LLM APIs: the cost is nil).
* **Timeouts.** ``open_connection`` bounds DNS, TCP and TLS by the endpoint's
  ``connect_timeout`` (``ConnectTimeout``, a ``TimeoutError``); ``read_timeout`` bounds every
  wait for the next bytes (headers or body): ``TimeoutError``.
* **Errors.** ``OSError`` (refused, reset, TLS verification ...), ``TimeoutError`` and
  ``ResponseError`` (malformed or cut-off response; ``UpgradeRefused`` for a ``101``: an
  upgraded connection is not HTTP any more and is never proxied) are all a caller needs to
  catch.
* **Threads.** Event-loop only: connections and responses belong to the loop that opened
  them; nothing here is thread-safe.
"""

from __future__ import annotations

import asyncio
import select
import socket
import ssl
from collections.abc import Callable, Sequence
from typing import Protocol, cast, overload

import httptools

HIGH_WATER = 256 * 1024   # unread body bytes before the socket is paused
REPLAYABLE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})

PoolKey = tuple[str, str, int]


class Owner(Protocol):
    """Whoever keeps connections (the pool): told when one is free again or died idle."""

    def release(self, conn: Connection, reuse: bool) -> None: ...

    def forget(self, conn: Connection) -> None: ...


class ResponseError(Exception):
    """The upstream broke HTTP: a malformed response, or one cut off before its end."""


class ServerDisconnected(ResponseError):
    """The connection ended before any byte of the response arrived."""


class UpgradeRefused(ResponseError):
    """The upstream answered ``101 Switching Protocols``."""


class ConnectTimeout(TimeoutError):
    """DNS, TCP and TLS did not complete within the endpoint's ``connect_timeout``."""


class Endpoint:
    """Where requests go: scheme (``http``/``https``), host, port, and the timeouts."""

    __slots__ = ("connect_timeout", "host", "host_header", "key", "port", "read_timeout",
                 "scheme")

    def __init__(self, scheme: str, host: str, port: int, connect_timeout: float,
                 read_timeout: float) -> None:
        self.scheme, self.host, self.port = scheme, host, port
        self.key: PoolKey = (scheme, host, port)
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        name = f"[{host}]" if ":" in host else host
        default = 443 if scheme == "https" else 80
        self.host_header = name if port == default else f"{name}:{port}"


class Connection(asyncio.Protocol):
    """One TCP (or TLS) connection; carries one exchange at a time, ``response``."""

    __slots__ = ("fd", "idle_since", "key", "lost", "owner", "response", "transport")

    def __init__(self, owner: Owner, key: PoolKey) -> None:
        self.owner, self.key = owner, key
        self.transport: asyncio.Transport | None = None
        self.response: Response | None = None
        self.lost = False
        self.idle_since = 0.0
        self.fd = -1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self.fd = sock.fileno()
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def reusable(self) -> bool:
        """Whether this idle connection may carry the next request: open, and nothing
        waiting in its socket. The socket is polled with a zero timeout (a readable idle
        socket holds stray bytes or the server's FIN: either way it is done); the loop's
        own readers are untouched, so this works with uvloop's transports too."""
        transport = self.transport
        if self.lost or transport is None or transport.is_closing():
            return False
        if self.fd < 0:
            return True
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        return not poller.poll(0)

    def data_received(self, data: bytes) -> None:
        if self.response is not None:
            self.response.feed(data)
        elif self.transport is not None:
            self.transport.close()  # bytes while idle: the server broke protocol

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.response is not None:
            self.response.connection_lost(exc)
        else:
            self.owner.forget(self)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Headers:
    """Case-insensitive read-only lookup over raw response headers; first value wins."""

    __slots__ = ("_raw",)

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self._raw = raw

    @overload
    def get(self, name: str) -> str | None: ...
    @overload
    def get(self, name: str, default: str) -> str: ...

    def get(self, name: str, default: str | None = None) -> str | None:
        key = name.lower().encode("latin-1")
        for raw_name, value in self._raw:
            if len(raw_name) == len(key) and raw_name.lower() == key:
                return value.decode("latin-1")
        return default

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None


class Response:
    """One response: ``status``, ``raw_headers`` and ``headers`` once ``wait_headers``
    returned; the body through ``read_chunk``/``read``. ``close()`` (idempotent) hands the
    connection back to its owner, reusable only when the response is complete and allows
    it; otherwise the connection is dropped, so the upstream sees an unfinished response's
    caller hang up.
    """

    __slots__ = ("_buffered", "_chunks", "_conn", "_done", "_error", "_head", "_headers_done",
                 "_keep_alive", "_parser", "_paused", "_received", "_request_keeps_alive",
                 "_timeout", "_transport", "_waiter", "headers", "raw_headers", "status")

    def __init__(self, conn: Connection, head: bool, timeout: float, keeps_alive: bool) -> None:
        self._conn: Connection | None = conn
        self._transport = conn.transport
        self._parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self._head, self._timeout, self._request_keeps_alive = head, timeout, keeps_alive
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.headers = Headers(self.raw_headers)
        self._headers_done = self._done = self._keep_alive = self._received = False
        self._paused = False
        self._error: BaseException | None = None
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None

    # -- parser side (called from Connection, in data_received / connection_lost) --------

    def feed(self, data: bytes) -> None:
        self._received = True
        if self._parser is None:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as error:
            if self._done:
                self._keep_alive = False  # bytes past the end of the response: never reuse
            else:
                self._fail(ResponseError(f"malformed response ({type(error).__name__})"))
            if self._transport is not None:
                self._transport.close()
        except httptools.HttpParserUpgrade:  # a 101 with Upgrade: the connection is not ours
            self._fail(UpgradeRefused("101 Switching Protocols"))
            if self._transport is not None:
                self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._done:
            return
        if self._headers_done and self._until_close():
            self._finish()
        elif not self._received:
            self._fail(ServerDisconnected("connection closed before any response byte"))
        else:
            self._fail(ResponseError("connection closed before the end of the response"))

    def on_message_begin(self) -> None:
        if self._done:  # a second response to one request
            raise ResponseError("unexpected bytes after the response")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        status = self._parser.get_status_code()
        if status < 200:
            self.raw_headers.clear()  # informational (100, 103): the real response follows
            return
        self.status = status
        self._headers_done = True
        if self._head:
            self._finish()  # whatever its headers say, a HEAD response has no body
            # ... but a server that wrongly sends one may do so at any later time, also
            # after the next request went out, where no check can tell it from the answer.
            self._keep_alive = False
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._done:  # body bytes on a HEAD response
            self._keep_alive = False
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if not self._paused and self._buffered > HIGH_WATER:
            self._paused = True
            if self._transport is not None:
                self._transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._headers_done and not self._done:
            self._finish()

    def _finish(self) -> None:
        assert self._parser is not None
        self._done = True
        self._keep_alive = self._request_keeps_alive and self._parser.should_keep_alive()
        self._wake()

    def _until_close(self) -> bool:
        """Whether the body ends at connection close (no length, not chunked)."""
        if self.status in (204, 304):
            return False
        for name, value in self.raw_headers:
            lower = name.lower()
            if lower == b"content-length" or (lower == b"transfer-encoding"
                                              and b"chunked" in value.lower()):
                return False
        return True

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- consumer side ---------------------------------------------------------------------

    async def _wait(self) -> None:
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(self._timeout, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    async def wait_headers(self) -> None:
        while not self._headers_done:
            if self._error is not None:
                raise self._error
            await self._wait()

    async def read_chunk(self) -> bytes:
        """The body bytes that have arrived since the last call (waiting for some);
        ``b""`` at the end of the body."""
        chunks = self._chunks
        while not chunks:
            if self._error is not None:
                raise self._error
            if self._done:
                return b""
            await self._wait()
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        if self._paused and self._conn is not None and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        return data

    async def read(self) -> bytes:
        """The whole (rest of the) body."""
        parts = []
        while chunk := await self.read_chunk():
            parts.append(chunk)
        return b"".join(parts)

    def close(self) -> None:
        conn = self._conn
        if conn is None:
            return
        self._conn = None
        self._parser = None  # the parser holds our bound methods: no reference cycle left
        reuse = self._done and self._keep_alive and self._error is None and not conn.lost
        if not self._done:
            self._fail(ResponseError("response closed before its end"))
        if reuse and self._paused and self._transport is not None:
            self._transport.resume_reading()
        conn.owner.release(conn, reuse)


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


def encode_head(method: str, target: str, host: str, headers: Sequence[tuple[str, str]],
                body: bytes | None) -> tuple[bytes, bool, bool]:
    """The request head, and whether the request lets the connection be kept alive and may
    be replayed. Raises ``ValueError`` for a CR or LF inside the target, a name or a value
    (it would split the head: header injection)."""
    lines = [f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n"]
    lines += [f"{name}: {value}\r\n" for name, value in headers]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}\r\n")
    lines.append("\r\n")
    text = "".join(lines)
    breaks = len(lines) + 1
    if text.count("\n") != breaks or text.count("\r") != breaks:
        raise ValueError("CR or LF inside the request target or a header")
    keeps_alive = replayable = True
    lower = text.lower()
    if "\nconnection:" in lower:
        keeps_alive = not any(name.lower() == "connection" and "close" in value.lower()
                              for name, value in headers)
    if method not in REPLAYABLE_METHODS:
        replayable = "\nidempotency-key:" in lower
    return text.encode("latin-1"), keeps_alive, replayable


async def open_connection(endpoint: Endpoint, tls: ssl.SSLContext | None,
                          factory: Callable[[], Connection]) -> Connection:
    """A new connection to ``endpoint`` (TLS with SNI and verification when ``tls``)."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(endpoint.connect_timeout):
            _, conn = await loop.create_connection(
                factory, endpoint.host, endpoint.port, ssl=tls,
                server_hostname=endpoint.host if tls is not None else None)
    except TimeoutError:
        raise ConnectTimeout() from None
    return conn
