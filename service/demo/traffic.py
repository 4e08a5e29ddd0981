"""The demo's traffic generator: realistic calls from several projects, through the proxy.

``Traffic.run`` sends calls at ``rate`` per second with Poisson arrivals (exponential gaps,
as independent users make) until told to stop. Each call is drawn from a mix of projects:

* ``search``: embeddings (text-embedding-3-small) and short streamed gpt-4o-mini rewrites
* ``support``: streamed claude-sonnet-4-6 answers over a long, cached knowledge-base system
  prompt; non-streamed claude-haiku-4-5 triage
* ``analytics``: gpt-4o reports over a long (automatically cached) schema prompt; Responses
  API calls to gpt-4o-mini, streamed and not
* ``internal-tools``: a self-hosted llama3.1:8b on upstream ``local`` (reports no usage, so
  spendgate estimates it)
* ``experiments``: gpt-4o and claude-sonnet-4-6, under a small blocking budget

Calls go out with the official ``openai`` and ``anthropic`` async SDKs when they are
installed (attribution in ``x-spendgate-project``, ``x-spendgate-user`` and
``x-spendgate-tags``, as an app would send them), else as the same JSON over plain HTTP. An
upstream the proxy turns out not to have (its own 404, ``spendgate_not_found``) gets no more
calls. At most ``max_in_flight`` calls run at once; arrivals beyond that are dropped and
counted. ``stats`` counts outcomes as the client saw them: ``ok``, ``rate_limited``,
``budget_blocked``, ``server_error``, ``connection`` (cut off), ``no_upstream``, ``other``.
One event loop owns a ``Traffic``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar

import aiohttp

from spendgate.demo.simulator.server import Simulator

ANTHROPIC_VERSION = "2023-06-01"
DEMO_KEY = "sk-demo-not-a-real-key"   # the simulator accepts anything; never a real key
UPSTREAMS = ("openai", "anthropic", "local")
LOCAL_MODEL = "llama3.1:8b"


@dataclass(frozen=True, slots=True)
class DemoCall:
    """One call: who makes it, where it goes, and its JSON body (= the SDK's arguments)."""

    project: str
    user: str
    upstream: str            # openai | anthropic | local
    api: str                 # chat | embeddings | responses | messages
    params: dict[str, Any] = field(hash=False)

    @property
    def stream(self) -> bool:
        return self.params.get("stream") is True


_QUESTIONS = (
    "How do I reset my password?", "Why was I charged twice this month?",
    "Can I change the delivery address after the order shipped?",
    "What is the difference between the team plan and the business plan?",
    "The export to CSV fails with a timeout, what should I do?",
    "How many seats are included in my subscription?",
    "Summarise the weekly revenue by region.", "Which customers churned last quarter?",
    "Write a SQL query for the top ten products by margin.",
    "Explain the spike in support tickets on Tuesday.",
)
_QUERIES = ("cheap flights to lisbon in may", "python asyncio timeout example",
            "best noise cancelling headphones", "how to cache llm prompts",
            "quarterly report template", "refund policy for damaged items",
            "kubernetes sidecar pattern", "vegetarian recipes high protein")


def _knowledge_base() -> str:
    """A ~2.8k-token support system prompt (deterministic: it must repeat to be cached)."""
    topics = ("billing", "invoices", "refunds", "shipping", "returns", "passwords", "accounts",
              "teams", "exports", "integrations", "security", "plans")
    lines = ["You are the support assistant of Acme Cloud. Answer politely and briefly, cite "
             "the relevant policy, and never promise refunds above the policy limits."]
    for i, topic in enumerate(topics):
        for j in range(4):
            lines.append(f"Policy {i + 1}.{j + 1} ({topic}): customers asking about {topic} "
                         f"in case {j + 1} should first check the {topic} page in settings, "
                         f"then contact the {topic} team if the issue remains after "
                         f"{(j + 1) * 24} hours; escalate to a human agent when the "
                         f"customer mentions legal action or a charge above {100 * (j + 1)} "
                         "dollars.")
    return "\n".join(lines)


def _schema() -> str:
    """A ~1.3k-token analytics system prompt: table definitions the model reports from."""
    tables = ("orders", "customers", "products", "regions", "tickets", "subscriptions",
              "invoices", "payments", "sessions", "events", "refunds", "shipments", "coupons",
              "campaigns", "experiments", "agents")
    lines = ["You are a data analyst. Answer with a short report and the SQL you used. "
             "The warehouse has these tables:"]
    for table in tables:
        columns = ", ".join(f"{table[:-1]}_{name} {kind}" for name, kind in (
            ("id", "bigint primary key"), ("created_at", "timestamp"), ("updated_at", "timestamp"),
            ("status", "text"), ("amount_usd", "numeric(12,2)"), ("region_id", "bigint"),
            ("owner_id", "bigint"), ("channel", "text"), ("currency", "char(3)"),
            ("notes", "text")))
        lines.append(f"Table {table}: {columns}. Rows are never deleted; use status to "
                     f"filter out cancelled {table}.")
    return "\n".join(lines)


KNOWLEDGE_BASE = _knowledge_base()
SCHEMA = _schema()


def draw_call(rng: random.Random, upstreams: frozenset[str] = frozenset(UPSTREAMS)) -> DemoCall:
    """One call of the demo mix; only to ``upstreams`` the proxy has (openai is required)."""
    while True:
        call = _draw(rng)
        if call.upstream in upstreams:
            return call


def _draw(rng: random.Random) -> DemoCall:
    project = rng.choices(("search", "support", "analytics", "internal-tools", "experiments"),
                          weights=(35, 25, 15, 15, 10))[0]
    user = f"user-{rng.randint(1, 12)}"
    roll = rng.random()
    question = rng.choice(_QUESTIONS)
    if project == "search":
        if roll < 0.55:
            docs = [f"{rng.choice(_QUERIES)} {rng.choice(_QUESTIONS)}"
                    for _ in range(rng.randint(1, 6))]
            return DemoCall(project, user, "openai", "embeddings",
                            {"model": "text-embedding-3-small", "input": docs})
        params: dict[str, Any] = {
            "model": "gpt-4o-mini", "max_tokens": rng.choice((64, 96, 128)), "stream": True,
            "messages": [{"role": "system", "content": "Rewrite the search query to be more "
                          "specific. Answer with the query only."},
                         {"role": "user", "content": rng.choice(_QUERIES)}]}
        if roll < 0.8:  # some apps ask for usage themselves; the proxy asks for the rest
            params["stream_options"] = {"include_usage": True}
        return DemoCall(project, user, "openai", "chat", params)
    if project == "support":
        if roll < 0.65:
            return DemoCall(project, user, "anthropic", "messages", {
                "model": "claude-sonnet-4-6", "max_tokens": rng.choice((200, 300, 400)),
                "stream": True,
                "system": [{"type": "text", "text": KNOWLEDGE_BASE,
                            "cache_control": {"type": "ephemeral"}}],
                "messages": [{"role": "user", "content": question}]})
        return DemoCall(project, user, "anthropic", "messages", {
            "model": "claude-haiku-4-5", "max_tokens": 60,
            "system": "Classify the ticket: billing, technical, account or other.",
            "messages": [{"role": "user", "content": question}]})
    if project == "analytics":
        if roll < 0.7:
            return DemoCall(project, user, "openai", "chat", {
                "model": "gpt-4o", "max_tokens": rng.choice((400, 600)),
                "messages": [{"role": "system", "content": SCHEMA},
                             {"role": "user", "content": question}]})
        return DemoCall(project, user, "openai", "responses", {
            "model": "gpt-4o-mini", "input": question, "max_output_tokens": 300,
            "instructions": "Answer in three bullet points.", "stream": roll < 0.85})
    if project == "internal-tools":
        return DemoCall(project, user, "local", "chat", {
            "model": LOCAL_MODEL, "max_tokens": rng.choice((120, 200, 300)), "stream": roll < 0.6,
            "messages": [{"role": "user", "content": f"Draft a changelog entry: {question}"}]})
    if roll < 0.6:
        return DemoCall(project, user, "openai", "chat", {
            "model": "gpt-4o", "max_tokens": 400, "stream": True,
            "messages": [{"role": "user", "content": f"Brainstorm ideas: {question}"}]})
    return DemoCall(project, user, "anthropic", "messages", {
        "model": "claude-sonnet-4-6", "max_tokens": 400,
        "messages": [{"role": "user", "content": f"Critique this plan: {question}"}]})


def sdks_available() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("openai", "anthropic"))


def classify(status: int | None, message: str) -> str:
    """An outcome name from an error's HTTP status (None: no response) and text."""
    if status is None:
        return "connection"
    if status == 404 and "spendgate_not_found" in message:
        return "no_upstream"   # the proxy's own 404: it has no upstream of that name
    if status == 429:
        return "budget_blocked" if "budget" in message.lower() else "rate_limited"
    if status >= 500:
        return "server_error"
    return "other"


def attribution_headers(call: DemoCall) -> dict[str, str]:
    """What an app would send: project, user, and tags (the demo accounts ``feature``)."""
    return {"x-spendgate-project": call.project, "x-spendgate-user": call.user,
            "x-spendgate-tags": f"feature={call.api},env=demo"}


class SDKSender:
    """Sends with the official async SDKs, as an application would."""

    kind = "openai and anthropic SDKs"

    def __init__(self, proxy_url: str) -> None:
        import anthropic
        import openai

        # Typed as Any: the SDKs' overloads cannot be picked from a dict of arguments.
        self._openai: dict[str, Any] = {
            name: openai.AsyncOpenAI(base_url=f"{proxy_url}/{name}/v1", api_key=DEMO_KEY,
                                     max_retries=0, timeout=60)
            for name in ("openai", "local")}
        self._anthropic: Any = anthropic.AsyncAnthropic(
            base_url=f"{proxy_url}/anthropic", api_key=DEMO_KEY, max_retries=0, timeout=60)
        self._errors = (openai.APIError, anthropic.APIError)

    async def send(self, call: DemoCall) -> str:
        headers = attribution_headers(call)
        try:
            if call.api == "messages":
                result = await self._anthropic.messages.create(**call.params,
                                                               extra_headers=headers)
            else:
                client = self._openai[call.upstream]
                endpoint = {"chat": client.chat.completions, "embeddings": client.embeddings,
                            "responses": client.responses}[call.api]
                result = await endpoint.create(**call.params, extra_headers=headers)
            if call.stream:
                async with result:  # closes the connection if this task is cancelled
                    async for _event in result:
                        pass
        except self._errors as error:
            body = getattr(error, "body", None)  # the parsed error JSON; str() has only its message
            return classify(getattr(error, "status_code", None), f"{error} {body}")
        return "ok"

    async def close(self) -> None:
        for client in (*self._openai.values(), self._anthropic):
            await client.close()


class HTTPSender:
    """The same calls as plain JSON over HTTP, for when the SDKs are not installed."""

    kind = "plain HTTP (pip install openai anthropic to use the official SDKs)"
    _PATHS: ClassVar[dict[str, str]] = {
        "chat": "v1/chat/completions", "embeddings": "v1/embeddings",
        "responses": "v1/responses", "messages": "v1/messages"}

    def __init__(self, proxy_url: str) -> None:
        self._proxy_url = proxy_url
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))

    async def send(self, call: DemoCall) -> str:
        headers = attribution_headers(call)
        if call.api == "messages":
            headers |= {"x-api-key": DEMO_KEY, "anthropic-version": ANTHROPIC_VERSION}
        else:
            headers["authorization"] = f"Bearer {DEMO_KEY}"
        url = f"{self._proxy_url}/{call.upstream}/{self._PATHS[call.api]}"
        try:
            async with self._session.post(url, json=call.params, headers=headers) as response:
                body = await response.read()
                if response.status >= 400:
                    return classify(response.status, body.decode("utf-8", "replace"))
        except (aiohttp.ClientError, TimeoutError):
            return "connection"
        return "ok"

    async def close(self) -> None:
        await self._session.close()


class Traffic:
    """Poisson traffic through the proxy at ``proxy_url``. See the module docstring."""

    def __init__(self, proxy_url: str, rate: float, seed: int | None = None,
                 use_sdks: bool | None = None, max_in_flight: int = 200) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.proxy_url = proxy_url.rstrip("/")
        self.rate = rate
        self.rng = random.Random(seed)
        self.max_in_flight = max_in_flight
        use_sdks = sdks_available() if use_sdks is None else use_sdks
        self.sender: SDKSender | HTTPSender = (SDKSender(self.proxy_url) if use_sdks
                                               else HTTPSender(self.proxy_url))
        self.upstreams: frozenset[str] = frozenset(UPSTREAMS)
        self.stats: Counter[str] = Counter()
        self._tasks: set[asyncio.Task[None]] = set()

    async def warm_up(self) -> None:
        """One call of every kind to a private, instant simulator, before real traffic.

        The SDKs build their response models on first use (seconds of CPU); done during a
        live run, that would stall this event loop and show up as latency in the demo.
        """
        rng = random.Random(0)
        kinds: dict[tuple[str, str, bool], DemoCall] = {}
        for _ in range(1000):
            call = draw_call(rng)
            kinds.setdefault((call.upstream, call.api, call.stream), call)
        simulator = Simulator(seed=0, error_rate=0.0, speed=1000.0)
        url = await simulator.start()
        sender = type(self.sender)(url)
        try:
            await asyncio.gather(*(sender.send(call) for call in kinds.values()))
        finally:
            await sender.close()
            await simulator.stop()

    async def run(self, stop: asyncio.Event) -> None:
        """Send calls until ``stop`` is set; calls in flight then keep running (``drain``)."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.rng.expovariate(self.rate))
                return
            if len(self._tasks) >= self.max_in_flight:
                self.stats["dropped"] += 1
                continue
            task = asyncio.create_task(self._one(draw_call(self.rng, self.upstreams)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _one(self, call: DemoCall) -> None:
        self.stats["sent"] += 1
        try:
            outcome = await self.sender.send(call)
        except asyncio.CancelledError:
            self.stats["abandoned"] += 1
            raise
        except Exception:  # anything else the client library raises: count it, keep going
            outcome = "other"
        self.stats[outcome] += 1
        if outcome == "no_upstream" and call.upstream != "openai":
            self.upstreams -= {call.upstream}  # e.g. a proxy without "local": skip it from now

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def drain(self, grace_s: float) -> None:
        """Wait up to ``grace_s`` for calls in flight, then hang up on the rest."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace_s)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)

    async def close(self) -> None:
        await self.drain(0)
        await self.sender.close()
