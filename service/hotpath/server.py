"""The HTTP/1.1 server protocol: uvicorn's httptools protocol, with bounded request heads.

uvicorn's ``HttpToolsProtocol`` holds a request head for as long and as large as a caller
makes it: a never-ending header line is concatenated in the parser until memory runs out,
any number of headers is accepted, and a connection that sends nothing, or one byte a
second, stays open for good. ``BoundedHttpToolsProtocol`` adds, per connection:

* **Size**: a head over ``max_bytes`` (request target, header names and values, counted as
  they arrive) or with more than ``max_headers`` header lines is answered
  ``431 Request Header Fields Too Large`` and the connection closed. What the parser holds
  is bounded by ``max_bytes`` plus one socket read.
* **Time**: a head that is not complete ``timeout_s`` after the connection opened (or after
  the previous response ended, on a kept-alive connection) ends the connection:
  ``408 Request Timeout`` if some of the head had arrived, a plain close if nothing had.

* **Unread answers**: a caller that reads nothing (the transport's buffer stays full) for
  ``write_timeout_s`` is hung up on (the connection aborted): a stream then ends as any
  hang-up (499, upstream closed); a non-streamed answer was already whole and keeps its
  status.
* **Unread bodies**: a response that closes the connection before its request's body
  arrived (a 413 decided from ``content-length``, ``Connection: close``) does not close at
  once, which would reset the connection under the answer while the caller still sends
  (it sees ECONNRESET and its SDK retries the upload): the sending side is shut and the
  rest of the body read and dropped until it ends, for at most ``DRAIN_S`` seconds and
  ``DRAIN_BYTES`` bytes, as nginx's lingering close. On a kept-alive connection the rest
  of such a body is dropped too, up to ``DRAIN_BYTES``.

* **Cuts on purpose**: a response the app cut short deliberately (it set ``asgi.CUT_SHORT`` in
  the scope: a stream the upstream broke off, one cut by the shutdown timeout) ends with the
  connection closed, the caller's answer truncated (no terminating chunk), and no
  ``ASGI callable returned without completing response`` error: the app recorded the call
  and its cause. Any other incomplete response is still logged by uvicorn as an app failure.

A refusal never reaches the ASGI app: no route, no record, nothing logged from its headers
(an 8 MB header never becomes a log line or a span attribute). The answer is written, the
sending side shut (FIN), and what the caller goes on sending is read and dropped for at most
``LINGER_S`` before the close, so a caller still sending its head reads the status rather
than a reset. A head refused while an earlier response on the connection is still in flight
(pipelining) closes the connection without an answer: nothing may be written into that
response.

Built for ``uvicorn.run(app, http=protocol_class(limits))``: a subclass per ``HeadLimits``,
made at start-up by ``protocol_class``. One protocol object per connection, on the event
loop; nothing here is thread-safe.

**Relies on uvicorn internals** (``uvicorn.protocols.http.httptools_impl``, tested with the
range pinned in pyproject.toml): the parser callbacks ``on_message_begin``, ``on_url``,
``on_header``, ``on_headers_complete``, ``on_message_complete``; ``on_response_complete``
(the end of each response); ``_start_asgi_task`` (each cycle's app is started there); the
attributes ``parser``, ``transport``, ``cycle`` (and its ``transport``, ``response_started``,
``response_complete``, ``disconnected``, which ``run_asgi`` reads before logging), ``flow``,
``server_state.default_headers``, ``logger``; and ``_unset_keepalive_if_required``,
``_should_upgrade``, ``handle_websocket_upgrade``, ``_unsupported_upgrade_warning`` and
``send_400_response``, which ``data_received`` calls as uvicorn's own does.
``tests/test_server.py`` exercises every one of these paths against a real server process:
run it before widening the pin.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any, ClassVar, cast

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from spendgate.asgi import CUT_SHORT, ASGIApp, Receive, Scope, Send
from spendgate.config import ServerConfig

LINGER_S = 2.0   # after a refusal, how long what the caller still sends is read and dropped
# A response that ends the connection before its request's body was read (a 413, a 401 on
# headers alone, Connection: close): the rest of the body is read and dropped, as nginx's
# lingering close does, for at most this long and this many bytes.
DRAIN_S = 5.0
DRAIN_BYTES = 64 * 1024 * 1024
_LINE_OVERHEAD = 4  # ": " and CRLF around each header line the parser hands over
_REFUSALS = {431: b"request head too large: see server.max_header_kb and server.max_headers\n",
             408: b"request head not received within server.header_timeout_s\n"}


@dataclass(frozen=True, slots=True)
class HeadLimits:
    """Bounds on one request head (bytes, header lines, seconds to receive it), and on how
    long a caller may leave the proxy unable to write to it (``write_timeout_s``)."""

    max_bytes: int = 64 * 1024
    max_headers: int = 100
    timeout_s: float = 10.0
    write_timeout_s: float = 120.0

    @classmethod
    def from_config(cls, server: ServerConfig) -> HeadLimits:
        return cls(max_bytes=int(server.max_header_kb * 1024), max_headers=server.max_headers,
                   timeout_s=server.header_timeout_s, write_timeout_s=server.write_timeout_s)


def protocol_class(limits: HeadLimits) -> type[BoundedHttpToolsProtocol]:
    """The protocol class to give uvicorn (``http=``), bound to ``limits``."""
    return type("BoundedHttpToolsProtocol", (BoundedHttpToolsProtocol,), {"limits": limits})


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a head being refused."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the head bounds of ``limits`` (module docstring)."""

    limits: ClassVar[HeadLimits] = HeadLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_open = True        # what arrives next belongs to a request head
        self._head_started = False    # some of that head has arrived
        self._head_received = 0       # bytes fed to the parser while the head is open
        self._head_size = 0           # target + header lines the parser handed over
        self._head_lines = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._refusal = 0             # the status a head is being refused with, else 0
        self._linger: asyncio.TimerHandle | None = None
        self._body_done = True        # the current request's body has been received whole
        self._draining = False        # answered and closing: the rest of the body is dropped
        self._drained = 0             # bytes that arrived after the response was complete
        self._write_timer: asyncio.TimerHandle | None = None

    # -- connection ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refusal:
            return  # lingering after a refusal: read and dropped
        if not self._body_done and self.cycle is not None and self.cycle.response_complete:
            self._drained += len(data)   # a body nobody reads any more: bounded
            if self._drained > DRAIN_BYTES:
                self.transport.close()
                return
        self._unset_keepalive_if_required()
        if self._head_open:
            self._head_received += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self._refusal:
                self._refuse(self._refusal)
            else:
                self.logger.warning("Invalid HTTP request received.")
                self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._head_open and self._head_received > self.limits.max_bytes:
            self._refuse(431)  # a head still incomplete, already too long

    # -- parser callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._head_open = self._head_started = True
        self._body_done = False
        self._drained = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._grow(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_lines += 1
        if self._head_lines > self.limits.max_headers:
            self._stop(431)
        self._grow(len(name) + len(value) + _LINE_OVERHEAD)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._head_open = self._head_started = False
        self._head_received = self._head_size = self._head_lines = 0
        self._cancel_head_timer()
        super().on_headers_complete()
        if self.cycle is not None:  # its close waits for the body (``_close_after_body``)
            self.cycle.transport = cast(asyncio.Transport,
                                        _DrainingClose(self.transport, self._close_after_body))

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._body_done = True
        if self._draining:
            self.transport.close()  # the caller sent it all: it reads the answer, no reset
            return
        self._head_open = True  # what follows is the next request's head
        if self.cycle is None or self.cycle.response_complete:
            self._arm_head_timer()  # answered already: its time starts now

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._head_open and not self.transport.is_closing():
            self._arm_head_timer()  # the next head's time starts with the response's end

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        # Typed with spendgate.asgi's looser shapes, not uvicorn's TypedDicts.
        super()._start_asgi_task(cycle, cast(Any, _CutsOnPurpose(app, cycle)))

    def pause_writing(self) -> None:
        """The caller stopped reading (the transport's buffer is full): if it stays so for
        ``write_timeout_s``, the connection is aborted. The call then ends as a hang-up
        (499, upstream closed, what was generated charged); nothing is buffered meanwhile."""
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(self.limits.write_timeout_s,
                                                     self._write_timed_out)

    def resume_writing(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        if self.flow is not None:
            super().resume_writing()

    def _write_timed_out(self) -> None:
        self._write_timer = None
        self.logger.info("a caller read nothing for server.write_timeout_s (%g s): hung up on",
                         self.limits.write_timeout_s)
        self.transport.abort()

    def _close_after_body(self) -> None:
        """Close after a response, once the caller has sent the rest of its request body
        (dropped), for at most ``DRAIN_S`` and ``DRAIN_BYTES``: closing with unread bytes
        would reset the connection under the answer (the caller sees ECONNRESET, not it)."""
        transport = self.transport
        if transport.is_closing():
            return
        if self._body_done or not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self._draining = True
        self.flow.resume_reading()
        self._linger = self.loop.call_later(DRAIN_S, transport.close)

    # -- bounds ----------------------------------------------------------------------------

    def _grow(self, size: int) -> None:
        self._head_size += size
        if self._head_size > self.limits.max_bytes:
            self._stop(431)

    def _stop(self, status: int) -> None:
        self._refusal = status
        raise _Refused

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.limits.timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._head_open:
            return
        if self._head_started:
            self._refuse(408)
        else:
            self.transport.close()  # nothing was sent: nobody to answer

    def _refuse(self, status: int) -> None:
        """Answer ``status`` and close, lingering (module docstring); nothing more is parsed."""
        self._refusal = status
        self._cancel_head_timer()
        self._unset_keepalive_if_required()
        transport = self.transport
        if transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            transport.close()  # a response is in flight on this connection: no room to answer
            return
        body = _REFUSALS[status]
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [b"content-type: text/plain; charset=utf-8\r\ncontent-length: ",
                 str(len(body)).encode(), b"\r\nconnection: close\r\n\r\n", body]
        transport.write(b"".join(head))
        if transport.can_write_eof():
            transport.write_eof()
            self._linger = self.loop.call_later(LINGER_S, transport.close)
        else:
            transport.close()


class _CutsOnPurpose:
    """The app as one request cycle runs it: a response the app cut short on purpose
    (``CUT_SHORT`` in its scope, set before it returned or let a cancellation go on) closes
    the connection here, so the cycle does not log it as an incomplete response (module
    docstring). A cancellation is then not raised on: ``run_asgi`` would only log and
    swallow it. One per request; lives as long as its cycle's task."""

    __slots__ = ("app", "cycle")

    def __init__(self, app: ASGIApp, cycle: RequestResponseCycle) -> None:
        self.app = app
        self.cycle = cycle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        except asyncio.CancelledError:
            if not self._cut(scope):
                raise
        else:
            self._cut(scope)

    def _cut(self, scope: Scope) -> bool:
        cycle = self.cycle
        if not scope.get(CUT_SHORT) or not cycle.response_started or cycle.response_complete:
            return False  # not a cut: uvicorn answers or logs it as ever
        cycle.disconnected = True  # ours to close: what run_asgi reads before logging
        cycle.transport.close()   # what was written is flushed first: a truncated answer
        return True


class _DrainingClose:
    """The transport as a request cycle sees it: ``close`` drains the body first."""

    def __init__(self, transport: asyncio.Transport, close: Any) -> None:
        self._transport = transport
        self.close = close

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class DrainingServer(uvicorn.Server):
    """uvicorn's server, told of a shutdown before it begins.

    On the first SIGTERM or SIGINT, ``on_drain`` is called at once (the app then answers
    ``/readyz`` with 503), the server keeps serving for ``delay_s`` (``server.
    shutdown_delay_s``: time for a load balancer to see that and stop sending), then stops
    accepting and lets calls in flight finish for up to ``config.timeout_graceful_shutdown``
    (``server.drain_s``) before cancelling them; the app's lifespan shutdown then flushes
    the record pipeline and settles every reservation. A second SIGINT exits at once.
    Relies on uvicorn's ``handle_exit`` and ``on_tick``.
    """

    def __init__(self, config: uvicorn.Config, on_drain: Callable[[], None],
                 delay_s: float = 0.0) -> None:
        super().__init__(config)
        self._on_drain = on_drain
        self._delay_s = delay_s
        self._exit_at: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._exit_at is None:
            self._on_drain()
            self._exit_at = time.monotonic() + self._delay_s
            if self._delay_s > 0:
                self._captured_signals.append(sig)
                return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self._exit_at is not None and time.monotonic() >= self._exit_at:
            self.should_exit = True
        return await super().on_tick(counter)
