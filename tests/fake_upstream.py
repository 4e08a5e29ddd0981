"""A real HTTP server that plays an LLM provider, for tests.

``FakeUpstream`` runs an aiohttp server on 127.0.0.1 in its own thread and event loop. Tests
queue canned replies (``Reply``: status, headers, a body or a list of chunks with delays,
optionally breaking the connection) and read back every request exactly as it arrived
(method, raw path, query, headers, body bytes). With nothing queued it answers 200 with a
small JSON body. Canned bodies come from ``tests/fixtures``: literal provider transcripts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from tests.threaded_app import ThreadedApp

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


@dataclass
class Reply:
    status: int = 200
    body: bytes = b'{"ok":true}'
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    chunks: list[bytes] | None = None      # stream these instead of body
    chunk_delay_s: float = 0.0
    delay_s: float = 0.0                    # before the status line
    break_after: int | None = None          # drop the connection after this many chunks


@dataclass
class SeenRequest:
    method: str
    raw_path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes
    at: float = field(default_factory=time.monotonic)   # when it arrived

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


class FakeUpstream(ThreadedApp):
    def __init__(self) -> None:
        super().__init__()
        self.requests: list[SeenRequest] = []
        self.replies: list[Reply] = []
        self.disconnects = 0          # streams the proxy hung up on before their end
        self.completed_streams = 0
        # Run on each request before its reply: a Reply to answer instead (a refusal, as a
        # provider checking credentials would), or None to go on.
        self.check: Callable[[SeenRequest], Reply | None] | None = None

    def reset(self) -> FakeUpstream:
        """Forget every request, reply and count: a fresh server for the next test."""
        self.requests.clear()
        self.replies.clear()
        self.disconnects = self.completed_streams = 0
        return self

    def queue(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=1024 ** 3)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        path, _, query = request.raw_path.partition("?")
        seen = SeenRequest(request.method, path, query, _headers(request), body)
        self.requests.append(seen)
        refusal = self.check(seen) if self.check is not None else None
        reply = refusal or (self.replies.pop(0) if self.replies else Reply())
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        if reply.chunks is None:
            return web.Response(status=reply.status, body=reply.body,
                                headers={"Content-Type": reply.content_type, **reply.headers})
        response = web.StreamResponse(status=reply.status,
                                      headers={"Content-Type": reply.content_type,
                                               **reply.headers})
        await response.prepare(request)
        try:
            for i, chunk in enumerate(reply.chunks):
                if reply.break_after is not None and i >= reply.break_after:
                    request.transport.close()  # type: ignore[union-attr]
                    return response
                await response.write(chunk)
                if reply.chunk_delay_s:
                    await asyncio.sleep(reply.chunk_delay_s)
            await response.write_eof()
            self.completed_streams += 1
        except (ConnectionResetError, ConnectionError, asyncio.CancelledError):
            self.disconnects += 1
        return response


def _headers(request: web.Request) -> list[tuple[str, str]]:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers]
