"""A simulated LLM upstream speaking the OpenAI and Anthropic protocols, for the demo and tests.

It answers like the real APIs, closely enough for their official SDKs, with no key and no
network: ``spendgate simulate`` runs it standalone (docker-compose's demo profile), and
``spendgate demo`` runs it in its own event loop. Endpoints, matched by path suffix so any
base path works (``/v1/...``, ``/openai/v1/...``)::

    POST .../chat/completions   OpenAI chat, streamed or not (stream_options.include_usage
                                honoured as OpenAI does: the usage chunk only when asked)
    POST .../embeddings         float or base64 vectors
    POST .../responses          OpenAI Responses API, streamed or not
    POST .../messages           Anthropic Messages, streamed (message_start, content_block_*,
                                message_delta, message_stop) or not
    POST .../messages/count_tokens
    GET  .../models             OpenAI list, or Anthropic's when anthropic-version is sent
    GET  /healthz

Behaviour per model (``demo.simulator.models``): reported snapshot names
(``gpt-4o-mini-2024-07-18``), time to first token and streaming pace drawn per call, answer
lengths from a log-normal capped by ``max_tokens``. Prompt tokens are counted with tiktoken
(``TokenEstimator``, in a thread for large bodies) and output tokens are exactly the streamed
text counted with tiktoken. Prompt caching is simulated: a repeated long prefix (OpenAI:
1024+ tokens, automatic; Anthropic: ``cache_control`` on ``system`` or ``tools``) is reported
as cached (cache creation the first time, for Anthropic). Self-hosted models (``llama*``,
``qwen*``...) never report usage, as older Ollama and llama.cpp servers do not.

Faults: with probability ``error_rate`` a call fails: half are rate limits (429 with the
provider's error JSON and retry headers), a quarter server errors (500; Anthropic also 529
overloaded), a quarter streams cut off mid-way (a server error when not streamed). A request
header ``x-simulator-fault: rate_limit | server_error | overloaded | cut | none`` forces one.

Determinism: with a ``seed``, call number N (in arrival order) draws from its own generator
seeded by (seed, N), so a given sequence of requests gets the same answers, ids, lengths and
faults whatever the interleaving of concurrent streams. ``speed`` divides every delay.

Resources are bounded: bodies up to 8 MiB, at most ``max_in_flight`` calls (more get 429),
answers up to ``MAX_OUTPUT_TOKENS``, the prompt-cache table up to 4096 entries. Not
thread-safe: one event loop owns a ``Simulator``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
import sys
import time
from array import array
from collections import Counter, OrderedDict
from typing import Any

import orjson
from aiohttp import web

from spendgate.accounting.tokens import TokenEstimator
from spendgate.demo.simulator.models import (
    DEFAULT_MAX_TOKENS,
    MAX_OUTPUT_TOKENS,
    PROFILES,
    Composer,
    answer_length,
    profile_for,
)
from spendgate.demo.simulator.protocols import Call, Prompt, json_response, respond
from spendgate.providers.jsonread import count, loads_object

FAULT_HEADER = "x-simulator-fault"
FAULTS = ("rate_limit", "server_error", "overloaded", "cut", "none")
MAX_BODY = 8 * 1024 * 1024
CACHE_ENTRIES = 4096
CACHE_TTL_S = 300.0
_THREAD_TOKENIZE_BYTES = 16 * 1024   # tokenise bigger bodies off the event loop
_OPENAI_CACHE_MIN, _OPENAI_CACHE_STEP = 1024, 128
_ROUTES = (("/messages/count_tokens", "count_tokens"), ("/chat/completions", "chat"),
           ("/embeddings", "embeddings"), ("/responses", "responses"), ("/messages", "messages"))


class BadRequest(Exception):
    """The request is invalid as the real API would say (400, provider-shaped)."""


class Simulator:
    """The simulated upstream. ``app()`` to mount it, or ``start``/``stop`` on loopback."""

    def __init__(self, *, seed: int | None = None, error_rate: float = 0.03,
                 speed: float = 1.0, max_in_flight: int = 256,
                 estimator: TokenEstimator | None = None) -> None:
        if not 0.0 <= error_rate <= 1.0:
            raise ValueError("error_rate must be between 0 and 1")
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.seed = seed
        self.error_rate = error_rate
        self.speed = speed
        self.max_in_flight = max_in_flight
        self.estimator = estimator or TokenEstimator()
        self.composer = Composer(self.estimator)
        self.stats: Counter[str] = Counter()   # "chat 200", "fault cut", ... for tests and logs
        self._calls = 0
        self._in_flight = 0
        self._cache: OrderedDict[bytes, float] = OrderedDict()
        self._runner: web.AppRunner | None = None
        self.url: str | None = None             # set by start()

    # ---- lifecycle -------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    async def warm_up(self) -> None:
        """Load both tokenizers (~0.4 s) in a thread so no call waits for them."""
        def load() -> None:
            for model in ("gpt-4o", "text-embedding-3-small"):
                self.composer.compose(random.Random(0), model, 1, 1)

        await asyncio.to_thread(load)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0: a free port) in the running loop; returns the base URL.
        Call ``warm_up`` too, before traffic arrives."""
        # stop() gives calls in flight a second, then hangs up on them.
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False,
                                     shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server: Any = site._server  # an asyncio.Server once started
        bound = server.sockets[0].getsockname()[1]
        self.url = f"http://{host}:{bound}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ---- dispatch --------------------------------------------------------------------

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/")
        anthropic = "anthropic-version" in request.headers
        if request.method == "GET" and path.endswith("/models"):
            return self._models(anthropic)
        kind = next((k for suffix, k in _ROUTES if path.endswith(suffix)), None)
        if kind is not None and kind in ("messages", "count_tokens"):
            anthropic = True
        protocol = "anthropic" if anthropic else "openai"
        if kind is None or request.method != "POST":
            kind_404 = "not_found_error" if anthropic else "invalid_request_error"
            return _error(protocol, 404, kind_404,
                          f"Unknown request URL: {request.method} {request.path}",
                          _request_id(random.Random()))
        if self._in_flight >= self.max_in_flight:
            return _rate_limited(protocol, "simulator", _request_id(random.Random()), 1000)
        self._in_flight += 1
        try:
            response = await self._answer(request, kind, protocol)
        finally:
            self._in_flight -= 1
        self.stats[f"{kind} {response.status}"] += 1
        return response

    def _new_call(self, request: web.Request, kind: str, protocol: str,
                  body: dict[str, Any]) -> Call:
        self._calls += 1
        rng = random.Random(f"{self.seed}/{self._calls}") if self.seed is not None \
            else random.Random()
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("you must provide a model parameter")
        if kind in ("chat", "messages") and not isinstance(body.get("messages"), list):
            raise BadRequest("messages: field required (a list of messages)")
        if kind == "messages" and count(body.get("max_tokens")) is None:
            raise BadRequest("max_tokens: Field required")
        stream = body.get("stream") is True and kind != "embeddings"
        if kind == "chat" and body.get("stream_options") is not None and not stream:
            raise BadRequest("The 'stream_options' parameter is only allowed when 'stream' "
                             "is enabled.")
        forced = request.headers.get(FAULT_HEADER, "").strip().lower()
        fault: str | None
        if forced in FAULTS:
            fault = None if forced == "none" else forced
        else:
            fault = self._draw_fault(rng, protocol)
        if fault == "cut" and not stream:
            fault = "server_error"
        return Call(kind, protocol, body, model, profile_for(model, protocol), stream, rng,
                    fault if kind != "count_tokens" else None, _request_id(rng), int(time.time()))

    def _draw_fault(self, rng: random.Random, protocol: str) -> str | None:
        if rng.random() >= self.error_rate:
            return None
        roll = rng.random()
        if roll < 0.5:
            return "rate_limit"
        if roll < 0.75:
            return "overloaded" if protocol == "anthropic" and roll < 0.625 else "server_error"
        return "cut"

    async def _answer(self, request: web.Request, kind: str,
                      protocol: str) -> web.StreamResponse:
        raw = await request.read()
        body = loads_object(raw)
        try:
            if body is None:
                raise BadRequest("We could not parse the JSON body of your request.")
            call = self._new_call(request, kind, protocol, body)
        except BadRequest as error:
            return _error(protocol, 400, "invalid_request_error", str(error),
                          _request_id(random.Random()))
        if call.fault is not None and call.fault != "cut":
            self.stats[f"fault {call.fault}"] += 1
            return await self._fail(call)
        prompt = await self._prompt(call, len(raw))
        if kind == "count_tokens":
            return web.json_response({"input_tokens": prompt.tokens})
        if kind == "embeddings":
            return await self._embeddings(call, prompt)
        if call.fault == "cut":
            self.stats["fault cut"] += 1
        return await respond(self, request, call, prompt)

    # ---- timing ----------------------------------------------------------------------

    def delay(self, seconds: float) -> float:
        return seconds / self.speed

    def first_token_delay(self, call: Call) -> float:
        """Time to first token: the profile's range, with an occasional slow tail."""
        ttft = call.rng.uniform(*call.profile.ttft_s)
        if call.rng.random() < 0.05:
            ttft *= call.rng.uniform(2.0, 4.0)  # a queueing hiccup upstream
        return self.delay(ttft)

    def token_delay(self, call: Call) -> float:
        low, high = call.profile.tokens_per_s
        return self.delay(1.0 / call.rng.uniform(max(low, 1.0), max(high, 1.0)))

    def answer(self, call: Call, limit: int | None) -> tuple[list[tuple[str, int]], bool]:
        """The answer's pieces and whether ``max_tokens`` cut it short."""
        cap = min(limit if limit is not None else DEFAULT_MAX_TOKENS, MAX_OUTPUT_TOKENS)
        wanted = answer_length(call.rng, call.profile)
        return self.composer.compose(call.rng, call.model, wanted, max(cap, 1))

    def output_tokens(self, call: Call, text: str) -> int:
        return self.estimator.count_text(text, call.model)

    # ---- prompt tokens and caching ---------------------------------------------------

    async def _prompt(self, call: Call, size: int) -> Prompt:
        if size > _THREAD_TOKENIZE_BYTES:
            total, prefix, key = await asyncio.to_thread(self._count_prompt, call)
        else:
            total, prefix, key = self._count_prompt(call)
        if key is None or not prefix:
            return Prompt(total)
        hit = self._cache_hit(key)
        if call.protocol == "anthropic":
            return Prompt(total, cached=prefix) if hit else Prompt(total, written=prefix)
        cached = _OPENAI_CACHE_MIN + (prefix - _OPENAI_CACHE_MIN) // _OPENAI_CACHE_STEP \
            * _OPENAI_CACHE_STEP
        return Prompt(total, cached=min(cached, total) if hit else 0)

    def _count_prompt(self, call: Call) -> tuple[int, int, bytes | None]:
        """(prompt tokens, cacheable prefix tokens, prefix key). Pure; any thread."""
        est, body, model = self.estimator, call.body, call.model
        if call.kind == "embeddings":
            return est.estimate_prompt("embeddings", body, model) or 0, 0, None
        if call.protocol == "anthropic":
            total = est.estimate_prompt("chat", body, model, protocol="anthropic") or 0
            tools, system = body.get("tools"), body.get("system")
            if not _has_cache_control(tools) and not _has_cache_control(system):
                return total, 0, None
            prefix_body: dict[str, Any] = {"tools": tools, "system": system}
            prefix = est.estimate_prompt("chat", {"messages": [], "system": system or "",
                                                  "tools": tools}, model,
                                         protocol="anthropic") or 0
            minimum = 2048 if "haiku" in model else 1024
            return total, prefix if prefix >= minimum else 0, _key(model, prefix_body)
        operation = "responses" if call.kind == "responses" else "chat"
        total = est.estimate_prompt(operation, body, model) or 0
        if total < _OPENAI_CACHE_MIN:
            return total, 0, None
        if operation == "chat":
            prefix_body = {"messages": body["messages"][:-1], "tools": body.get("tools")}
        else:
            items = body.get("input")
            prefix_body = {"instructions": body.get("instructions"),
                           "input": items[:-1] if isinstance(items, list) else []}
        prefix = est.estimate_prompt(operation, prefix_body, model) or 0
        return total, prefix if prefix >= _OPENAI_CACHE_MIN else 0, _key(model, prefix_body)

    def _cache_hit(self, key: bytes) -> bool:
        now = time.monotonic()
        expires = self._cache.pop(key, None)
        self._cache[key] = now + CACHE_TTL_S
        while len(self._cache) > CACHE_ENTRIES:
            self._cache.popitem(last=False)
        return expires is not None and expires > now

    # ---- simple answers --------------------------------------------------------------

    async def _fail(self, call: Call) -> web.Response:
        rng = call.rng
        if call.fault == "rate_limit":
            await asyncio.sleep(self.delay(rng.uniform(0.01, 0.05)))
            return _rate_limited(call.protocol, call.model, call.request_id,
                                 rng.randrange(200, 2000))
        await asyncio.sleep(self.first_token_delay(call) * rng.uniform(0.5, 2.0))
        if call.fault == "overloaded":
            status = 529 if call.protocol == "anthropic" else 503
            return _error(call.protocol, status, "overloaded_error" if status == 529
                          else "server_error", "Overloaded" if status == 529 else
                          "The server is overloaded or not ready yet.", call.request_id)
        return _error(call.protocol, 500, "api_error" if call.protocol == "anthropic"
                      else "server_error", "Internal server error" if call.protocol ==
                      "anthropic" else "The server had an error while processing your "
                      "request. Sorry about that!", call.request_id)

    async def _embeddings(self, call: Call, prompt: Prompt) -> web.Response:
        inputs = call.body.get("input")
        items = [inputs] if isinstance(inputs, str) else inputs
        if not isinstance(items, list) or not items:
            return _error("openai", 400, "invalid_request_error",
                          "'input' : input must be a string or an array", call.request_id)
        dims = count(call.body.get("dimensions")) or call.profile.embedding_dims or 1536
        base64_format = call.body.get("encoding_format") == "base64"
        await asyncio.sleep(self.delay(call.rng.uniform(*call.profile.ttft_s)
                                       + 0.002 * len(items)))
        data = []
        for index in range(min(len(items), 2048)):
            vector = array("f", [(b - 127.5) / 2550.0 for b in call.rng.randbytes(dims)])
            if sys.byteorder != "little":
                vector.byteswap()
            embedding: Any = (base64.b64encode(vector.tobytes()).decode() if base64_format
                              else vector.tolist())
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        body = {"object": "list", "data": data, "model": call.profile.reported,
                "usage": {"prompt_tokens": prompt.tokens, "total_tokens": prompt.tokens}}
        return json_response(body, call)

    def _models(self, anthropic: bool) -> web.Response:
        if anthropic:
            models = [p for p in PROFILES.values() if p.owner == "anthropic"]
            data: list[dict[str, Any]] = [
                {"type": "model", "id": p.reported, "display_name": p.display_name,
                 "created_at": "2025-09-29T00:00:00Z"} for p in models]
            return web.json_response({"data": data, "has_more": False,
                                      "first_id": data[0]["id"], "last_id": data[-1]["id"]})
        data = [{"id": p.name, "object": "model", "created": 1721172741,
                 "owned_by": "system" if p.owner == "openai" else p.owner}
                for p in PROFILES.values()]
        return web.json_response({"object": "list", "data": data})


def _error(protocol: str, status: int, kind: str, message: str, request_id: str,
           headers: dict[str, str] | None = None) -> web.Response:
    if protocol == "anthropic":
        body: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": message},
                                "request_id": request_id}
        id_header = "request-id"
    else:
        code = "rate_limit_exceeded" if status == 429 else None
        body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
        id_header = "x-request-id"
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json",
                        headers={id_header: request_id, **(headers or {})})


def _rate_limited(protocol: str, model: str, request_id: str, retry_ms: int) -> web.Response:
    if protocol == "anthropic":
        return _error(protocol, 429, "rate_limit_error",
                      "This request would exceed the rate limit for your organization of 50 "
                      "requests per minute. For details, refer to: "
                      "https://docs.claude.com/en/api/rate-limits.", request_id,
                      {"retry-after": str(max(1, retry_ms // 1000)),
                       "anthropic-ratelimit-requests-limit": "50",
                       "anthropic-ratelimit-requests-remaining": "0"})
    return _error(protocol, 429, "requests",
                  f"Rate limit reached for {model} in organization org-simulator on requests "
                  f"per min (RPM): Limit 500, Used 500, Requested 1. Please try again in "
                  f"{retry_ms}ms. Visit https://platform.openai.com/account/rate-limits to "
                  "learn more.", request_id,
                  {"retry-after-ms": str(retry_ms), "x-ratelimit-limit-requests": "500",
                   "x-ratelimit-remaining-requests": "0",
                   "x-ratelimit-reset-requests": f"{retry_ms}ms"})


def _has_cache_control(value: Any) -> bool:
    return isinstance(value, list) and any(isinstance(v, dict) and v.get("cache_control")
                                           for v in value)


def _key(model: str, prefix: dict[str, Any]) -> bytes:
    return hashlib.blake2b(orjson.dumps([model, prefix], option=orjson.OPT_SORT_KEYS),
                           digest_size=16).digest()


def _request_id(rng: random.Random) -> str:
    return f"req_{rng.getrandbits(128):032x}"


def run(host: str, port: int, *, seed: int | None, error_rate: float, speed: float) -> None:
    """``spendgate simulate``: serve until SIGINT/SIGTERM."""
    simulator = Simulator(seed=seed, error_rate=error_rate, speed=speed)
    print(f"spendgate simulator on http://{host}:{port}: OpenAI /v1/chat/completions, "
          f"/v1/embeddings, /v1/responses, /v1/models; Anthropic /v1/messages "
          f"(error rate {error_rate:.0%}, speed x{speed:g})", file=sys.stderr, flush=True)
    app = simulator.app()

    async def warm_up(_app: web.Application) -> None:
        await simulator.warm_up()

    app.on_startup.append(warm_up)
    web.run_app(app, host=host, port=port, access_log=None, print=None)
