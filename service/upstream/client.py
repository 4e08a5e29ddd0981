"""The pooled keep-alive HTTP client that talks to upstreams, and its error boundary.

The client is spendgate's own: ``Pool`` here keeps the connections, ``service/http1.py``
speaks HTTP/1.1 on them (asyncio Protocols, httptools' parser). It was chosen over aiohttp
and httpx by measurement (``bench/client_choice.py``, and ``bench/run.py`` A/B; figures in
``bench/README.md``). One ``UpstreamClient`` per process, created inside the running event
loop at startup and closed at shutdown; not thread-safe (event-loop only).

The client is transparent: it adds no default headers of its own (no User-Agent, Accept,
Accept-Encoding or Content-Type the caller did not send) and never decompresses, so response
bytes reach the caller exactly as the upstream sent them. Client and OS errors are
translated here, once (``ErrorBoundary``), into ``UpstreamUnreachable`` / ``UpstreamTimeout``.

Pooling: idle connections are kept per ``(scheme, host, port)``, last in first out, and
reused only after a complete response that allowed it (``http1.Response``) and only if
nothing is waiting in the socket (``Connection.reusable``: a zero-timeout poll, about a
microsecond); one idle longer than ``idle_s`` is closed instead (servers and NATs drop idle
connections silently), and a timer closes those left idle that long when no call comes to
reuse them (a burst's connections do not stay open for good). A
pooled connection that turns out dead before any response byte arrives (the server closed
it as the request went out) is replaced once by a fresh connection when the request may be
replayed (RFC 9112 §9.3.1: an idempotent method, or an ``Idempotency-Key`` header), as
aiohttp does; otherwise the caller gets the error rather than a possibly doubled call.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Sequence
from types import TracebackType

from yarl import URL

from spendgate.config import UpstreamConfig
from spendgate.errors import UpstreamTimeout, UpstreamUnreachable
from spendgate.upstream.http1 import (
    Connection,
    ConnectTimeout,
    Endpoint,
    PoolKey,
    Response,
    ResponseError,
    ServerDisconnected,
    UpgradeRefused,
    encode_head,
    open_connection,
)

log = logging.getLogger("spendgate.upstream")

__all__ = ["ErrorBoundary", "Pool", "Response", "UpstreamClient", "UpstreamTarget", "iter_body",
           "read_body"]

IDLE_S = 60.0             # an idle pooled connection older than this is closed, not reused
_JOIN_LIMIT = 64 * 1024   # bodies up to this size are copied after the head: one write


class UpstreamTarget:
    """An upstream's fixed scheme, host, port and base path: nothing a request can change."""

    __slots__ = ("base_path", "endpoint", "host", "name", "port", "scheme")

    def __init__(self, name: str, config: UpstreamConfig) -> None:
        url = URL(config.url)
        self.name = name
        self.scheme = url.scheme
        self.host = url.raw_host or ""
        self.port = url.port
        self.base_path = url.raw_path.rstrip("/")
        self.endpoint = Endpoint(self.scheme, self.host, self.port or 0,
                                 config.connect_timeout_s, config.timeout_s)

    def url(self, raw_path: str, raw_query: str) -> URL:
        """Join the caller's path (canonical: ``hotpath/routing.py``) onto the base path.

        Built from parts, so no path or query can move the request to another host.
        """
        return URL.build(scheme=self.scheme, host=self.host, port=self.port,
                         path=self.base_path + raw_path, query_string=raw_query, encoded=True)


class Pool:
    """Keep-alive connections by ``(scheme, host, port)``, unbounded (as many as there are
    requests in flight). ``ssl_context`` defaults to ``ssl.create_default_context(cafile=
    ca_file)`` (certificates and host names verified; ``ca_file`` is for tests with their
    own CA), made at the first https connection. Raises ``http1``'s errors untranslated."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None, ca_file: str | None = None,
                 idle_s: float = IDLE_S) -> None:
        self._idle: dict[PoolKey, list[Connection]] = {}
        self._ssl_context, self._ca_file, self._idle_s = ssl_context, ca_file, idle_s
        self._closed = False
        self._sweep: asyncio.TimerHandle | None = None   # closes what idles past idle_s

    @property
    def closed(self) -> bool:
        return self._closed

    async def request(self, endpoint: Endpoint, method: str, target: str,
                      headers: Sequence[tuple[str, str]], body: bytes | None) -> Response:
        """Send one request (``target``: the already-encoded path and query) and return the
        response with its status and headers read. The caller must ``close()`` it."""
        head, keeps_alive, replayable = encode_head(method, target, endpoint.host_header,
                                                    headers, body)
        fresh_only = False
        while True:
            conn = None if fresh_only else self._take_idle(endpoint.key)
            reused = conn is not None
            if conn is None:
                conn = await self._connect(endpoint)
            response = Response(conn, method == "HEAD", endpoint.read_timeout, keeps_alive)
            conn.response = response
            if conn.lost or conn.transport is None:
                response.connection_lost(None)
            elif not body:
                conn.transport.write(head)
            elif len(body) <= _JOIN_LIMIT:
                conn.transport.write(head + body)
            else:
                conn.transport.writelines((head, body))
            try:
                await response.wait_headers()
                return response
            except ServerDisconnected:
                response.close()
                if not (reused and replayable) or fresh_only:
                    raise
                fresh_only = True  # the server closed it while idle: once more, anew
            except BaseException:
                response.close()
                raise

    def _take_idle(self, key: PoolKey) -> Connection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        now = asyncio.get_running_loop().time()
        while idle:
            conn = idle.pop()
            if now - conn.idle_since < self._idle_s and conn.reusable():
                return conn
            conn.close()
        return None

    async def _connect(self, endpoint: Endpoint) -> Connection:
        if self._closed:
            raise ResponseError("client closed")
        tls = None
        if endpoint.scheme == "https":
            if self._ssl_context is None:
                self._ssl_context = ssl.create_default_context(cafile=self._ca_file)
            tls = self._ssl_context
        return await open_connection(endpoint, tls, lambda: Connection(self, endpoint.key))

    def release(self, conn: Connection, reuse: bool) -> None:
        """Take back ``conn`` once its response is closed: pooled if ``reuse``, else closed."""
        conn.response = None
        if not reuse or self._closed or conn.lost:
            conn.close()
            return
        now = asyncio.get_running_loop().time()
        conn.idle_since = now
        idle = self._idle.setdefault(conn.key, [])
        # The oldest sit at the bottom of the stack: close those past idle_s as we go.
        while idle and now - idle[0].idle_since >= self._idle_s:
            idle.pop(0).close()
        idle.append(conn)
        if self._sweep is None:  # with no traffic after a burst, nothing else would close them
            self._sweep = asyncio.get_running_loop().call_later(self._idle_s, self._swept)

    def _swept(self) -> None:
        """Close every connection idle for ``idle_s``; come back while any is left."""
        self._sweep = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        oldest = now
        for key, idle in list(self._idle.items()):
            while idle and now - idle[0].idle_since >= self._idle_s:
                idle.pop(0).close()
            if idle:
                oldest = min(oldest, idle[0].idle_since)
            else:
                del self._idle[key]
        if self._idle and not self._closed:
            self._sweep = loop.call_later(max(oldest + self._idle_s - now, 0.01), self._swept)

    def forget(self, conn: Connection) -> None:
        """A pooled connection was closed by the server while idle."""
        idle = self._idle.get(conn.key)
        if idle is not None and conn in idle:
            idle.remove(conn)

    def idle_count(self, key: PoolKey) -> int:
        return len(self._idle.get(key, ()))

    async def close(self) -> None:
        """Close every idle connection; busy ones close when their response is closed."""
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports run their close callbacks


class UpstreamClient:
    """Owns the connection pool. ``open`` yields the response with its headers read.

    ``ca_file`` adds a CA to trust for https upstreams (tests with their own CA); by default
    the system's CAs are used and certificates and host names are verified. Construct it
    anywhere; connections are opened inside the running loop, on first use, and ``close``
    (in the same loop) ends its life.
    """

    def __init__(self, ca_file: str | None = None) -> None:
        self._pool = Pool(ca_file=ca_file)

    @property
    def closed(self) -> bool:
        return self._pool.closed

    def open(self, target: UpstreamTarget, method: str, url: URL,
             headers: list[tuple[str, str]], body: bytes | None) -> _Exchange:
        """``async with client.open(...) as response``: the request goes to ``target`` (whose
        ``url()`` made ``url``; only its path and query are sent). Leaving the block closes
        the response: the connection goes back to the pool if the response was complete,
        else it is dropped."""
        return _Exchange(self._pool, target, method, url.raw_path_qs, headers, body)

    async def close(self) -> None:
        await self._pool.close()


class _Exchange:
    """The async context manager behind ``UpstreamClient.open`` (a class: cheaper per call
    than a generator-based one)."""

    __slots__ = ("_args", "_pool", "_response", "_target")

    def __init__(self, pool: Pool, target: UpstreamTarget, method: str, path: str,
                 headers: list[tuple[str, str]], body: bytes | None) -> None:
        self._pool, self._target = pool, target
        self._args = (method, path, headers, body)
        self._response: Response | None = None

    async def __aenter__(self) -> Response:
        with ErrorBoundary(self._target, receiving=False):
            self._response = await self._pool.request(self._target.endpoint, *self._args)
        return self._response

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._response is not None:
            self._response.close()


class ErrorBoundary:
    """The one place client and OS errors become spendgate's: ``TimeoutError`` (connect or
    read) -> ``UpstreamTimeout`` (504), a broken connection or response ->
    ``UpstreamUnreachable`` (502), each message naming the upstream's host:port and the
    cause in words (``cause_in_words``: ``DNS lookup of api.openai.com failed``).
    ``receiving``: the response had begun (the upstream stopped or broke off), else
    it had not (no answer, unreachable). A class, not ``contextmanager``: it runs per call."""

    __slots__ = ("_receiving", "_target")

    def __init__(self, target: UpstreamTarget, receiving: bool) -> None:
        self._target, self._receiving = target, receiving

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is None:
            return
        target = self._target
        name = f"{target.name!r} ({target.host}:{target.port})"
        if isinstance(exc, UpgradeRefused):
            log.warning("upstream %s answered 101 Switching Protocols: upgrades are not "
                        "proxied; the caller gets 502", name)
            raise UpstreamUnreachable(f"upstream {name} answered 101 Switching Protocols, "
                                      "which spendgate does not proxy") from None
        if not isinstance(exc, TimeoutError | ResponseError | OSError):
            return
        cause = cause_in_words(exc, target, self._receiving)
        if isinstance(exc, TimeoutError):
            raise UpstreamTimeout(f"upstream {name} stopped sending: {cause}" if self._receiving
                                  else f"upstream {name} did not answer: {cause}") from None
        raise UpstreamUnreachable(f"upstream {name} broke off the response: {cause}"
                                  if self._receiving
                                  else f"upstream {name} is unreachable: {cause}") from None


def cause_in_words(exc: BaseException, target: UpstreamTarget, receiving: bool) -> str:
    """Why a call to ``target`` failed, for people: no secret, no traceback."""
    endpoint = target.endpoint
    if isinstance(exc, ConnectTimeout):
        return f"no connection within {endpoint.connect_timeout:g} s (connect_timeout_s)"
    if isinstance(exc, TimeoutError):
        return (f"no data for {endpoint.read_timeout:g} s (timeout_s)" if receiving
                else f"no response headers within {endpoint.read_timeout:g} s (timeout_s)")
    if isinstance(exc, socket.gaierror):
        return f"DNS lookup of {target.host} failed"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not accepted ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed ({exc.reason or type(exc).__name__})"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, ServerDisconnected):
        return "connection closed before any response"
    if isinstance(exc, ResponseError):
        return (str(exc) or "connection closed mid-response") if receiving \
            else f"bad response ({exc})"
    if isinstance(exc, OSError):
        return (exc.strerror or type(exc).__name__).lower()
    return type(exc).__name__


async def read_body(response: Response, target: UpstreamTarget) -> bytes:
    """The whole response body, with client errors translated."""
    with ErrorBoundary(target, receiving=True):
        return await response.read()


async def iter_body(response: Response, target: UpstreamTarget) -> AsyncIterator[bytes]:
    """Body chunks as they arrive (no re-chunking), with client errors translated."""
    with ErrorBoundary(target, receiving=True):
        while chunk := await response.read_chunk():
            yield chunk
