"""The least a Python proxy can do: the floor under spendgate's figures (``run.py --floor``).

A raw ASGI app on the same server stack as spendgate (uvicorn, uvloop, httptools, one
process) that reads the request body, POSTs it with a pooled aiohttp session to the upstream
path, and returns the upstream's status, content type and body (an SSE body chunk by chunk,
as it arrives). No routing, parsing,
metering or metrics. What spendgate adds on top of this is spendgate's own work; what this
adds over direct-to-nginx is the cost of any proxy written this way on this machine.

    python bench/floor_proxy.py --upstream http://127.0.0.1:NGINXPORT --port P
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import aiohttp
import uvicorn

Message = MutableMapping[str, Any]


class FloorProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: Message, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self.session = aiohttp.ClientSession(
                        connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
                        auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar())
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    if self.session is not None:
                        await self.session.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["path"] == "/healthz":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]
                   if k not in (b"host", b"content-length", b"connection")]
        assert self.session is not None
        async with self.session.post(self.upstream + scope["path"], data=body,
                                     headers=headers) as response:
            content_type = response.headers.get("content-type", "")
            if content_type.startswith("text/event-stream"):  # streamed: chunk by chunk
                await send({"type": "http.response.start", "status": response.status,
                            "headers": [(b"content-type", content_type.encode())]})
                async for chunk in response.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk,
                                "more_body": True})
                await send({"type": "http.response.body", "body": b""})
                return
            data = await response.read()
            await send({"type": "http.response.start", "status": response.status,
                        "headers": [(b"content-type",
                                     response.headers.get("content-type", "").encode()),
                                    (b"content-length", str(len(data)).encode())]})
            await send({"type": "http.response.body", "body": data})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(FloorProxy(args.upstream), host="127.0.0.1", port=args.port, loop="uvloop",
                http="httptools", lifespan="on", access_log=False, log_level="warning",
                server_header=False, date_header=False)


if __name__ == "__main__":
    main()
