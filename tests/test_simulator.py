"""The simulated upstream against the official SDKs (and raw HTTP where bytes matter).

A real ``Simulator`` serves on loopback from its own thread and event loop; ``speed`` divides
its delays so the suite stays quick. Usage numbers are checked against tiktoken directly.
"""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest

from spendgate.accounting.tokens import TokenEstimator
from spendgate.demo.simulator.server import Simulator
from spendgate.demo.traffic import KNOWLEDGE_BASE, SCHEMA, Traffic

SPEED = 50.0
TOKENS = TokenEstimator()
HI: Any = [{"role": "user", "content": "Hello, how are you?"}]


class SimulatorThread:
    """A ``Simulator`` served from a thread of its own, for synchronous test code."""

    def __init__(self, **options: Any) -> None:
        self.simulator = Simulator(**{"speed": SPEED, "error_rate": 0.0, **options})
        self.loop = asyncio.new_event_loop()
        self.url = self.loop.run_until_complete(self.simulator.start())
        self.loop.run_until_complete(self.simulator.warm_up())
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.simulator.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorThread]:
    server = SimulatorThread(seed=11)
    yield server
    server.stop()


def oai(sim: SimulatorThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.url + "/v1", api_key="sk-test", max_retries=0)


def claude(sim: SimulatorThread) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=sim.url, api_key="sk-test", max_retries=0)


def sse_chunks(response: httpx.Response) -> list[bytes]:
    return [line[6:] for line in response.read().split(b"\n") if line.startswith(b"data: ")]


# ---- OpenAI chat -------------------------------------------------------------------------

def test_chat_reports_snapshot_and_tiktoken_usage(sim: SimulatorThread) -> None:
    result = oai(sim).chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=400)
    assert result.model == "gpt-4o-mini-2024-07-18"
    assert result.id.startswith("chatcmpl-")
    text = result.choices[0].message.content or ""
    usage = result.usage
    assert usage is not None and text
    assert usage.prompt_tokens == TOKENS.estimate_prompt("chat", {"messages": HI}, "gpt-4o-mini")
    assert usage.completion_tokens == TOKENS.count_text(text, "gpt-4o-mini")
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_chat_max_tokens_cuts_the_answer(sim: SimulatorThread) -> None:
    result = oai(sim).chat.completions.create(model="gpt-4o", messages=HI, max_tokens=7)
    assert result.choices[0].finish_reason == "length"
    assert result.usage is not None
    assert 0 < result.usage.completion_tokens <= 7
    assert result.usage.completion_tokens == TOKENS.count_text(
        result.choices[0].message.content or "", "gpt-4o")


def test_stream_has_no_usage_unless_asked(sim: SimulatorThread) -> None:
    body = {"model": "gpt-4o-mini", "messages": HI, "stream": True, "max_tokens": 50}
    with httpx.Client() as http:
        chunks = sse_chunks(http.post(sim.url + "/v1/chat/completions", json=body))
    assert chunks[-1] == b"[DONE]"
    events = [orjson.loads(c) for c in chunks[:-1]]
    assert all("usage" not in e and e["choices"] for e in events)
    assert events[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_stream_include_usage_adds_one_final_usage_chunk(sim: SimulatorThread) -> None:
    stream = oai(sim).chat.completions.create(
        model="gpt-4o-mini", messages=HI, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert all(c.usage is None for c in chunks[:-1])
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == TOKENS.count_text(text, "gpt-4o-mini")
    assert last.usage.prompt_tokens == TOKENS.estimate_prompt("chat", {"messages": HI},
                                                              "gpt-4o-mini")
    assert {c.model for c in chunks} == {"gpt-4o-mini-2024-07-18"}


def test_stream_options_without_stream_is_refused_like_openai(sim: SimulatorThread) -> None:
    with pytest.raises(openai.BadRequestError, match="stream_options"):
        oai(sim).chat.completions.create(model="gpt-4o-mini", messages=HI,
                                         stream_options={"include_usage": True})


def test_long_repeated_prefix_is_reported_cached(sim: SimulatorThread) -> None:
    messages: Any = [{"role": "system", "content": SCHEMA},
                {"role": "user", "content": "Revenue by region?"}]
    first = oai(sim).chat.completions.create(model="gpt-4o", messages=messages, max_tokens=5)
    messages[-1]["content"] = "Churn last quarter?"
    second = oai(sim).chat.completions.create(model="gpt-4o", messages=messages, max_tokens=5)
    assert first.usage is not None and second.usage is not None
    assert first.usage.prompt_tokens >= 1024
    details = first.usage.prompt_tokens_details
    assert details is not None and details.cached_tokens == 0
    details = second.usage.prompt_tokens_details
    assert details is not None and details.cached_tokens is not None
    assert details.cached_tokens >= 1024 and details.cached_tokens % 128 == 0
    assert details.cached_tokens <= second.usage.prompt_tokens


def test_self_hosted_model_never_reports_usage(sim: SimulatorThread) -> None:
    client = openai.OpenAI(base_url=sim.url + "/ollama/v1", api_key="x", max_retries=0)
    plain = client.chat.completions.create(model="llama3.1:8b", messages=HI, max_tokens=30)
    assert plain.usage is None and plain.model == "llama3.1:8b"
    chunks = list(client.chat.completions.create(
        model="llama3.1:8b", messages=HI, max_tokens=30, stream=True,
        stream_options={"include_usage": True}))
    assert all(c.usage is None and c.choices for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks)


# ---- embeddings and responses ------------------------------------------------------------

def test_embeddings_base64_and_float(sim: SimulatorThread) -> None:
    inputs = ["first document", "a second, longer document about prompt caching"]
    result = oai(sim).embeddings.create(model="text-embedding-3-small", input=inputs)
    assert [len(d.embedding) for d in result.data] == [1536, 1536]
    assert result.usage.prompt_tokens == TOKENS.estimate_prompt(
        "embeddings", {"input": inputs}, "text-embedding-3-small")
    raw = httpx.post(sim.url + "/v1/embeddings", json={
        "model": "text-embedding-3-small", "input": "x", "dimensions": 8,
        "encoding_format": "base64"}).json()
    assert len(base64.b64decode(raw["data"][0]["embedding"])) == 8 * 4
    floats = httpx.post(sim.url + "/v1/embeddings", json={
        "model": "text-embedding-3-small", "input": "x", "dimensions": 8}).json()
    assert len(floats["data"][0]["embedding"]) == 8


def test_responses_api_streamed_and_not(sim: SimulatorThread) -> None:
    client = oai(sim)
    done = client.responses.create(model="gpt-4o-mini", input="Hi", max_output_tokens=300)
    assert done.status in ("completed", "incomplete") and done.usage is not None
    assert done.usage.output_tokens == TOKENS.count_text(done.output_text, "gpt-4o-mini")
    cut = client.responses.create(model="gpt-4o-mini", input="Hi", max_output_tokens=4)
    assert cut.status == "incomplete" and cut.usage is not None
    assert cut.usage.output_tokens <= 4
    with client.responses.stream(model="gpt-4o-mini", input="Hi") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.usage is not None
    assert final.usage.output_tokens == TOKENS.count_text("".join(deltas), "gpt-4o-mini")


# ---- Anthropic ---------------------------------------------------------------------------

def test_messages_non_streamed(sim: SimulatorThread) -> None:
    message = claude(sim).messages.create(model="claude-haiku-4-5", max_tokens=200,
                                          messages=HI)
    assert message.model == "claude-haiku-4-5-20251001"
    assert message.id.startswith("msg_01") and message.stop_reason in ("end_turn", "max_tokens")
    text = "".join(b.text for b in message.content if b.type == "text")
    assert message.usage.output_tokens == TOKENS.count_text(text, "claude-haiku-4-5")
    assert message.usage.input_tokens == TOKENS.estimate_prompt(
        "chat", {"messages": HI}, "claude-haiku-4-5", protocol="anthropic")


def test_messages_stream_event_sequence_and_usage(sim: SimulatorThread) -> None:
    body = {"model": "claude-haiku-4-5", "max_tokens": 20, "messages": HI, "stream": True}
    raw = httpx.post(sim.url + "/v1/messages", json=body).read().split(b"\n")
    kinds = [line[7:].decode() for line in raw if line.startswith(b"event: ")]
    assert kinds[:3] == ["message_start", "content_block_start", "ping"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(kinds[3:-3]) == {"content_block_delta"}
    events = list(claude(sim).messages.create(**body))
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta"
                   and e.delta.type == "text_delta")
    delta = events[-2]
    assert delta.type == "message_delta" and delta.delta.stop_reason == "max_tokens"
    assert delta.usage.output_tokens == TOKENS.count_text(text, "claude-haiku-4-5") <= 20


def test_cache_control_writes_then_reads_the_prefix(sim: SimulatorThread) -> None:
    system: Any = [{"type": "text", "text": KNOWLEDGE_BASE,
                    "cache_control": {"type": "ephemeral"}}]
    usages = []
    for question in ("Where is my refund?", "How do I export invoices?"):
        with claude(sim).messages.stream(model="claude-sonnet-4-6", max_tokens=10,
                                         system=system, messages=[
                                             {"role": "user", "content": question}]) as stream:
            usages.append(stream.get_final_message().usage)
    first, second = usages
    assert first.cache_creation_input_tokens and first.cache_creation_input_tokens >= 1024
    assert first.cache_read_input_tokens == 0
    assert second.cache_read_input_tokens == first.cache_creation_input_tokens
    assert second.cache_creation_input_tokens == 0
    assert second.input_tokens > 0


def test_model_lists_in_each_protocol(sim: SimulatorThread) -> None:
    assert "gpt-4o-mini" in {m.id for m in oai(sim).models.list()}
    assert "claude-haiku-4-5-20251001" in {m.id for m in claude(sim).models.list()}


def test_messages_without_max_tokens_is_a_400(sim: SimulatorThread) -> None:
    r = httpx.post(sim.url + "/v1/messages", json={"model": "claude-haiku-4-5",
                                                   "messages": HI})
    assert r.status_code == 400
    assert r.json()["error"] == {"type": "invalid_request_error",
                                 "message": "max_tokens: Field required"}


# ---- faults ------------------------------------------------------------------------------

def test_forced_faults_use_each_providers_error_shape(sim: SimulatorThread) -> None:
    with pytest.raises(openai.RateLimitError) as limited:
        oai(sim).chat.completions.create(model="gpt-4o", messages=HI,
                                         extra_headers={"x-simulator-fault": "rate_limit"})
    assert limited.value.code == "rate_limit_exceeded"
    assert int(limited.value.response.headers["retry-after-ms"]) > 0
    with pytest.raises(openai.InternalServerError):
        oai(sim).chat.completions.create(model="gpt-4o", messages=HI,
                                         extra_headers={"x-simulator-fault": "server_error"})
    with pytest.raises(anthropic.RateLimitError) as anthropic_limited:
        claude(sim).messages.create(model="claude-haiku-4-5", max_tokens=10, messages=HI,
                                    extra_headers={"x-simulator-fault": "rate_limit"})
    assert anthropic_limited.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    with pytest.raises(anthropic.APIStatusError) as overloaded:
        claude(sim).messages.create(model="claude-haiku-4-5", max_tokens=10, messages=HI,
                                    extra_headers={"x-simulator-fault": "overloaded"})
    assert overloaded.value.status_code == 529


def test_cut_stream_ends_without_its_last_events(sim: SimulatorThread) -> None:
    body = {"model": "gpt-4o-mini", "messages": HI, "stream": True, "max_tokens": 200,
            "stream_options": {"include_usage": True}}
    with httpx.Client() as http, pytest.raises(httpx.RemoteProtocolError):  # noqa: SIM117
        with http.stream("POST", sim.url + "/v1/chat/completions", json=body,
                         headers={"x-simulator-fault": "cut"}) as response:
            assert response.status_code == 200
            for _ in response.iter_bytes():
                pass


def test_seeded_faults_and_answers_repeat() -> None:
    def run(seed: int) -> list[tuple[int, str]]:
        server = SimulatorThread(seed=seed, error_rate=0.4, speed=1000.0)
        try:
            out = []
            with httpx.Client() as http:
                for _ in range(25):
                    r = http.post(server.url + "/v1/chat/completions",
                                  json={"model": "gpt-4o-mini", "messages": HI})
                    content = r.json()["choices"][0]["message"]["content"] \
                        if r.status_code == 200 else ""
                    out.append((r.status_code, content))
            return out
        finally:
            server.stop()

    first, again, other = run(5), run(5), run(6)
    assert first == again
    assert first != other
    statuses = {status for status, _ in first}
    assert 200 in statuses and statuses & {429, 500}


# ---- the demo's traffic against the simulator ---------------------------------------------

@pytest.mark.parametrize("use_sdks", [True, False], ids=["sdks", "plain-http"])
def test_demo_traffic_mix_is_understood(use_sdks: bool) -> None:
    server = SimulatorThread(seed=3, speed=200.0)
    try:
        async def drive() -> Traffic:
            traffic = Traffic(server.url, rate=60.0, seed=4, use_sdks=use_sdks)
            stop = asyncio.Event()
            runner = asyncio.create_task(traffic.run(stop))
            await asyncio.sleep(1.0)
            stop.set()
            await runner
            await traffic.drain(5.0)
            await traffic.close()
            return traffic

        traffic = asyncio.run(drive())
    finally:
        server.stop()
    assert traffic.stats["sent"] >= 20
    assert traffic.stats["ok"] == traffic.stats["sent"], traffic.stats
    kinds = {key.split()[0] for key in server.simulator.stats}
    assert kinds >= {"chat", "messages", "embeddings"}
