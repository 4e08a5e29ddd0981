"""A real HTTP server playing OpenAI's and Anthropic's admin usage and cost APIs, for tests.

It serves literal pages, shaped as the official SDKs type them (openai-python's
``CostsResult`` / ``organization.usage.completions.result`` buckets: Unix ``start_time``,
``amount.value`` a number; anthropic-sdk-python's usage and cost reports: RFC 3339
``starting_at``, ``amount`` a decimal string in cents), page by page: a page's body says
``has_more`` and ``next_page``, and the next request sends that cursor as ``page``. A path
can be told to fail (``fail``), with a body that echoes the key it was sent, as some APIs
do, so tests can check that spendgate never repeats it. It also answers calls
(``POST /v1/chat/completions``, ``POST /v1/messages``) with literal transcripts, so one
server can be both an upstream and its admin API.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from tests.fake_upstream import fixture
from tests.threaded_app import ThreadedApp


@dataclass
class AdminRequest:
    method: str
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]


class FakeAdminAPI(ThreadedApp):
    def __init__(self, pages: dict[str, list[str]]) -> None:
        """``pages``: path -> the JSON text of each page, in order (the cursor of page i+1
        is ``page_{i+1}``)."""
        super().__init__()
        self.pages = pages
        self.fail: dict[str, int] = {}
        self.requests: list[AdminRequest] = []

    def make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._call)
        app.router.add_post("/v1/messages", self._call)
        app.router.add_get("/{tail:.*}", self._report)
        return app

    async def _call(self, request: web.Request) -> web.Response:
        await request.read()
        name = ("openai_chat_response.json" if request.path.endswith("completions")
                else "anthropic_messages_response_cached.json")
        return web.Response(body=fixture(name), content_type="application/json")

    async def _report(self, request: web.Request) -> web.Response:
        key = request.headers.get("x-api-key") or request.headers.get("authorization", "")
        self.requests.append(AdminRequest(request.method, request.path,
                                          list(request.query.items()), dict(request.headers)))
        if request.path in self.fail:
            return web.json_response(
                {"error": {"message": f"Incorrect API key provided: {key}",
                           "type": "invalid_request_error"}}, status=self.fail[request.path])
        pages = self.pages.get(request.path)
        if pages is None:
            return web.json_response({"error": {"message": "not found"}}, status=404)
        cursor = request.query.get("page")
        index = int(cursor.removeprefix("page_")) if cursor else 0
        return web.Response(text=pages[index], content_type="application/json")
