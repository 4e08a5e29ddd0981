"""A provider that reads requests the way Python web servers do, for the metering tests.

``LenientUpstream`` is an aiohttp server (``ThreadedApp``: its own thread and loop) whose
router matches the *decoded* path, as aiohttp, Starlette (vLLM, LiteLLM) and Go's net/http
do (``/v1/chat/%63ompletions`` is ``/v1/chat/completions`` to them), and whose handlers parse
bodies with Python's ``json`` from the raw bytes, as FastAPI's ``await request.json()`` does
(NaN, Infinity, lone surrogates, a UTF-8 BOM, 1e400, integers beyond 64 bits: all read).

``POST /v1/chat/completions`` answers an OpenAI chat completion and ``POST /v1/messages`` an
Anthropic Message, each with the model the body asked for and the usage in ``usage``
(``input``/``output`` tokens); a body Python's json cannot read is a 400, any other path a
404. Every request is recorded as it arrived (``SeenRequest``: raw path, headers, bytes).
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from tests.fake_upstream import SeenRequest
from tests.threaded_app import ThreadedApp


class LenientUpstream(ThreadedApp):
    def __init__(self, input_tokens: int = 1000, output_tokens: int = 500) -> None:
        super().__init__()
        self.requests: list[SeenRequest] = []
        self.usage = {"input": input_tokens, "output": output_tokens}

    def make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        return app

    async def _read(self, request: web.Request) -> dict[str, Any] | None:
        body = await request.read()
        path, _, query = request.raw_path.partition("?")
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers]
        self.requests.append(SeenRequest(request.method, path, query, headers, body))
        try:
            parsed = json.loads(body)
        except ValueError:
            return None
        return parsed if isinstance(parsed, dict) else None

    async def _chat(self, request: web.Request) -> web.Response:
        parsed = await self._read(request)
        if parsed is None:
            return web.json_response({"error": {"message": "invalid JSON"}}, status=400)
        return web.json_response({
            "id": "chatcmpl-lenient", "object": "chat.completion", "created": 1,
            "model": parsed.get("model"),
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "ok"}}],
            "usage": {"prompt_tokens": self.usage["input"],
                      "completion_tokens": self.usage["output"],
                      "total_tokens": self.usage["input"] + self.usage["output"]}})

    async def _messages(self, request: web.Request) -> web.Response:
        parsed = await self._read(request)
        if parsed is None:
            return web.json_response({"type": "error", "error": {
                "type": "invalid_request_error", "message": "invalid JSON"}}, status=400)
        return web.json_response({
            "id": "msg_lenient", "type": "message", "role": "assistant",
            "model": parsed.get("model"), "content": [{"type": "text", "text": "ok"}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": self.usage["input"],
                      "output_tokens": self.usage["output"]}})

    async def _not_found(self, request: web.Request) -> web.Response:
        await self._read(request)
        return web.json_response({"error": {"message": "not found"}}, status=404)
