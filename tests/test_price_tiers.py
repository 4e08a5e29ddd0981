"""Every price tier, end to end: provider transcripts through the real proxy and official SDKs.

Each call's cost must equal the provider's price exactly on ``/metrics``, in the usage log and
in the ledger (the SQLite store's per-dimension spend, in whole nano-dollars). Expected costs
are literal numbers worked out by hand from the LiteLLM map's rates (USD per Mtok, written in
each comment), never recomputed with spendgate's own formula.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import orjson
import pytest

from spendgate.accounting.batches import BatchBook, Owner
from tests.budget_helpers import wait_for
from tests.conftest import ProxyProcess, basic_config
from tests.fake_upstream import FakeUpstream, Reply, fixture
from tests.test_proxy import client, sse_reply

USER = [{"role": "user", "content": "hello"}]


@dataclass
class Tiered:
    proxy: ProxyProcess
    usage_log: Path
    ledger: Path


@pytest.fixture(scope="module")
def tiered(fake: FakeUpstream, spawn: Any, tmp_path_factory: pytest.TempPathFactory) -> Tiered:
    work = tmp_path_factory.mktemp("tiers")
    config = basic_config(fake, telemetry={"usage_log": {"path": str(work / "usage.jsonl")}},
                          store={"url": f"sqlite:///{work}/ledger.sqlite3"})
    config["upstreams"]["discounted"] = {"url": fake.url, "provider": "openai", "timeout_s": 5,
                                         "price_multiplier": "0.8"}
    return Tiered(spawn(config), work / "usage.jsonl", work / "ledger.sqlite3")


def log_line(t: Tiered, project: str) -> dict[str, Any] | None:
    if not t.usage_log.exists():
        return None
    lines = [orjson.loads(line) for line in t.usage_log.read_bytes().splitlines()]
    return next((line for line in lines if line["project"] == project), None)


def ledger_nano(t: Tiered, project: str) -> int | None:
    if not t.ledger.exists():
        return None
    with sqlite3.connect(f"file:{t.ledger}?mode=ro", uri=True) as db:
        row = db.execute("SELECT SUM(spend) FROM dim_spend WHERE win = 'total' AND project = ?",
                         (project,)).fetchone()
    return int(row[0]) if row and row[0] is not None else None


def assert_cost(t: Tiered, project: str, usd: str, *, tier: str = "standard",
                context_tier: str | None = None, fees: str = "0",
                fallbacks: tuple[str, ...] = ()) -> dict[str, Any]:
    """The cost ``usd`` exactly on /metrics, in the usage log and in the ledger."""
    expected = Decimal(usd)
    metric = wait_for(lambda: t.proxy.sample("spendgate_cost_usd_total", project=project))
    assert metric == float(expected)
    line = wait_for(lambda: log_line(t, project))
    assert line is not None, project
    assert Decimal(line["cost_usd"]) == expected
    assert (line["price_tier"], line["context_tier"]) == (tier, context_tier)
    assert Decimal(line["fees_usd"]) == Decimal(fees)
    assert tuple(line["price_fallbacks"]) == fallbacks
    assert wait_for(lambda: ledger_nano(t, project)) == int(expected * 10**9)
    return line


def anthropic_client(t: Tiered, project: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=t.proxy.url + "/anthropic", api_key="sk-ant-caller",
                               max_retries=0, default_headers={"x-spendgate-project": project})


# ---- service tiers -------------------------------------------------------------------------

def test_flex_is_half_price(tiered: Tiered, upstream: FakeUpstream) -> None:
    upstream.queue(Reply(body=fixture("openai_chat_response_flex.json")))
    reply = client(tiered.proxy, "tier-flex").chat.completions.create(
        model="gpt-5", messages=USER, service_tier="flex")  # type: ignore[arg-type]
    assert reply.service_tier == "flex"
    # gpt-5 flex: input 0.625, cached 0.0625, output 5 per Mtok
    # 800 x 0.625 + 200 x 0.0625 + 500 x 5 = 500 + 12.5 + 2500 = 3012.5 micro-USD
    line = assert_cost(tiered, "tier-flex", "0.0030125", tier="flex")
    assert line["service_tier"] == "flex"


def test_priority_streamed(tiered: Tiered, upstream: FakeUpstream) -> None:
    upstream.queue(sse_reply("openai_chat_stream_priority.sse"))
    stream = client(tiered.proxy, "tier-priority").chat.completions.create(
        model="gpt-5", messages=USER, stream=True, service_tier="priority")  # type: ignore[arg-type]
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == (
        "Priority processing costs more.")
    # gpt-5 priority: input 2.5, cached 0.25, output 20 per Mtok
    # 800 x 2.5 + 200 x 0.25 + 500 x 20 = 2000 + 50 + 10000 = 12050 micro-USD
    assert_cost(tiered, "tier-priority", "0.01205", tier="priority")


def test_price_multiplier(tiered: Tiered, upstream: FakeUpstream) -> None:
    upstream.queue(Reply(body=fixture("openai_chat_response_flex.json")))
    api = client(tiered.proxy, "tier-discount")
    api.base_url = tiered.proxy.url + "/discounted/v1"  # type: ignore[assignment]
    api.chat.completions.create(model="gpt-5", messages=USER)
    # the flex call above (3012.5 micro-USD) x 0.8 = 2410 micro-USD
    assert_cost(tiered, "tier-discount", "0.00241", tier="flex")


# ---- context tiers -------------------------------------------------------------------------

def test_long_context_gpt_5_4(tiered: Tiered, upstream: FakeUpstream) -> None:
    upstream.queue(Reply(body=fixture("openai_chat_response_long_context.json")))
    client(tiered.proxy, "ctx-gpt54").chat.completions.create(model="gpt-5.4", messages=USER)
    # 300,000 prompt tokens > 272k: input 5, output 22.5 per Mtok (not 2.5 and 15)
    # 300000 x 5 + 1000 x 22.5 = 1,500,000 + 22,500 = 1,522,500 micro-USD
    assert_cost(tiered, "ctx-gpt54", "1.5225", context_tier="above_272k")


def test_long_context_gemini_through_its_openai_api(tiered: Tiered,
                                                    upstream: FakeUpstream) -> None:
    upstream.queue(Reply(body=fixture("openai_compat_gemini_chat_response_long_context.json")))
    client(tiered.proxy, "ctx-gemini").chat.completions.create(model="gemini-2.5-pro",
                                                               messages=USER)
    # 250,000 prompt tokens > 200k: input 2.5, output 15 per Mtok (not 1.25 and 10)
    # 250000 x 2.5 + 1000 x 15 = 625,000 + 15,000 = 640,000 micro-USD
    assert_cost(tiered, "ctx-gemini", "0.64", context_tier="above_200k")


def test_long_context_streamed_reprices_cached_tokens_too(tiered: Tiered,
                                                          upstream: FakeUpstream) -> None:
    upstream.queue(sse_reply("openai_responses_stream_long_context.sse"))
    with client(tiered.proxy, "ctx-stream").responses.stream(
            model="gpt-5.4", input="When is the filing deadline?",
            tools=[{"type": "web_search"}]) as stream:
        for _ in stream:
            pass
        final = stream.get_final_response()
    assert final.usage is not None and final.usage.input_tokens == 300_000
    # 300,000 prompt tokens (100,000 cached) > 272k: input 5, cached 0.5, output 22.5
    # 200000 x 5 + 100000 x 0.5 + 2000 x 22.5 = 1,000,000 + 50,000 + 45,000 micro-USD.
    # gpt-5.4 has no web search price in the map: its one search adds nothing, counted.
    assert_cost(tiered, "ctx-stream", "1.095", context_tier="above_272k", fallbacks=("fee",))
    assert tiered.proxy.sample("spendgate_price_fallbacks_total", model="gpt-5.4",
                               reason="fee") == 1
    assert tiered.proxy.sample("spendgate_tool_calls_total", project="ctx-stream",
                               tool="web_search") == 1


# ---- cache TTLs and per-request fees -------------------------------------------------------

@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_one_hour_cache_writes_and_web_searches(tiered: Tiered, upstream: FakeUpstream,
                                                stream: bool) -> None:
    project = f"ttl-{'stream' if stream else 'whole'}"
    api = anthropic_client(tiered, project)
    tools: Any = [{"type": "web_search_20250305", "name": "web_search", "max_uses": 5}]
    if stream:
        upstream.queue(sse_reply("anthropic_messages_stream_cache_ttl_web_search.sse"))
        with api.messages.stream(model="claude-sonnet-4-6", max_tokens=1024, messages=USER,
                                 tools=tools) as events:
            message = events.get_final_message()
    else:
        upstream.queue(Reply(body=fixture("anthropic_messages_response_cache_ttl_web_search.json")))
        message = api.messages.create(model="claude-sonnet-4-6", max_tokens=1024,
                                      messages=USER, tools=tools)
    assert message.usage.server_tool_use is not None
    assert message.usage.server_tool_use.web_search_requests == 4
    # claude-sonnet-4-6: input 3, cache write (5m) 3.75, cache write 1h 6, output 15 per Mtok
    # 10 x 3 + 1000 x 3.75 + 2000 x 6 + 100 x 15 = 30 + 3750 + 12000 + 1500 = 17280 micro-USD
    # + 4 web searches x $0.01 = $0.04 (web fetch: no fee) -> $0.05728
    line = assert_cost(tiered, project, "0.05728", fees="0.04")
    assert (line["tool_calls"], line["service_tier"]) == ({"web_search": 4, "web_fetch": 1},
                                                          "standard")
    for tool, calls in (("web_search", 4), ("web_fetch", 1)):
        assert tiered.proxy.sample("spendgate_tool_calls_total", project=project,
                                   tool=tool) == calls
    assert tiered.proxy.sample("spendgate_tokens_total", project=project,
                               type="cache_write") == 3000


def test_responses_web_search_calls_are_charged(tiered: Tiered, upstream: FakeUpstream) -> None:
    upstream.queue(Reply(body=fixture("openai_responses_response_web_search.json")))
    result = client(tiered.proxy, "fee-search").responses.create(
        model="gpt-5", input="good news today?",
        tools=[{"type": "web_search", "search_context_size": "medium"}])
    assert sum(item.type == "web_search_call" for item in result.output) == 2
    # gpt-5: input 1.25, output 10 per Mtok; web search $0.01 per query (every size)
    # 2000 x 1.25 + 300 x 10 = 2500 + 3000 = 5500 micro-USD + 2 x $0.01 = $0.0255
    assert_cost(tiered, "fee-search", "0.0255", fees="0.02")


# ---- modalities ----------------------------------------------------------------------------

@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_audio_tokens_in_and_out(tiered: Tiered, upstream: FakeUpstream, stream: bool) -> None:
    project = f"audio-{'stream' if stream else 'whole'}"
    api = client(tiered.proxy, project)
    call: Callable[..., Any] = api.chat.completions.create
    kwargs: dict[str, Any] = {"model": "gpt-4o-audio-preview", "messages": USER,
                              "modalities": ["text", "audio"],
                              "audio": {"voice": "alloy", "format": "pcm16" if stream else "wav"}}
    if stream:
        upstream.queue(sse_reply("openai_chat_stream_audio.sse"))
        for _ in call(**kwargs, stream=True):
            pass
    else:
        upstream.queue(Reply(body=fixture("openai_chat_response_audio.json")))
        call(**kwargs)
    # gpt-4o-audio-preview-2025-06-03: input 2.5, audio input 40, output 10, audio output 80
    # 200 x 2.5 + 100 x 40 + 600 x 10 + 400 x 80 = 500 + 4000 + 6000 + 32000 = 42500 micro-USD
    assert_cost(tiered, project, "0.0425")


def test_audio_on_a_model_without_audio_rates_falls_back(tiered: Tiered,
                                                         upstream: FakeUpstream) -> None:
    body = fixture("openai_chat_response_audio.json").replace(
        b'"gpt-4o-audio-preview-2025-06-03"', b'"gpt-4o-2024-08-06"')
    upstream.queue(Reply(body=body))
    client(tiered.proxy, "audio-fallback").chat.completions.create(model="gpt-4o",
                                                                   messages=USER)
    # gpt-4o-2024-08-06 has no audio rates: everything at text rates 2.5 in, 10 out, counted
    # 300 x 2.5 + 1000 x 10 = 750 + 10000 = 10750 micro-USD
    assert_cost(tiered, "audio-fallback", "0.01075", fallbacks=("modality",))
    assert tiered.proxy.sample("spendgate_price_fallbacks_total", model="gpt-4o",
                               reason="modality") == 1




# ---- batches -------------------------------------------------------------------------------

def log_lines(t: Tiered, project: str) -> list[dict[str, Any]]:
    lines = [orjson.loads(line) for line in t.usage_log.read_bytes().splitlines()]
    return [line for line in lines if line["project"] == project]


def t_sample(t: Tiered, name: str, project: str) -> float | None:
    return t.proxy.sample(name, project=project)


def test_openai_batch_results_at_batch_prices_for_the_creator_once(
        tiered: Tiered, upstream: FakeUpstream) -> None:
    output = fixture("openai_batch_output.jsonl")
    upstream.queue(Reply(body=fixture("openai_batch_created.json")),
                   Reply(body=fixture("openai_batch_completed.json")),
                   Reply(body=output, content_type="application/octet-stream"),
                   Reply(body=output, content_type="application/octet-stream"))
    owner = client(tiered.proxy, "batch-owner")
    batch = owner.batches.create(input_file_id="file-3Qk8Lm2Np9Rs4Tu7Vw1Xy5",
                                 endpoint="/v1/chat/completions", completion_window="24h")
    reader = client(tiered.proxy, "batch-reader")  # someone else polls and downloads
    done = reader.batches.retrieve(batch.id)
    assert done.output_file_id == "file-7Bn4Cx9Dz2Fv6Gh1Jk3Lm8"
    for _ in range(2):  # downloaded twice: counted once
        assert reader.files.content(done.output_file_id).content == output
    assert upstream.requests[-1].raw_path == "/v1/files/file-7Bn4Cx9Dz2Fv6Gh1Jk3Lm8/content"
    # gpt-5 batch: input 0.625, cached 0.0625, output 5 per Mtok
    # line 1: 800 x 0.625 + 200 x 0.0625 + 500 x 5 = 500 + 12.5 + 2500 = 3012.5 micro-USD
    # line 2: 2000 x 0.625 + 100 x 5 = 1250 + 500 = 1750 micro-USD; total 4762.5
    expected = Decimal("0.0047625")
    assert wait_for(lambda: t_sample(tiered, "spendgate_cost_usd_total", "batch-owner")) == float(
        expected)
    lines = wait_for(lambda: len(log_lines(tiered, "batch-owner")) >= 3 and log_lines(
        tiered, "batch-owner"))
    batch_lines = [line for line in lines if line["operation"] == "batch"]
    assert len(batch_lines) == 2
    assert sum(Decimal(line["cost_usd"]) for line in batch_lines) == expected
    assert {(line["price_tier"], line["model"], line["status"]) for line in batch_lines} == {
        ("batch", "gpt-5-2025-08-07", 200)}
    assert wait_for(lambda: ledger_nano(tiered, "batch-owner")) == 4_762_500
    assert tiered.proxy.sample("spendgate_cost_usd_total", project="batch-reader") is None
    assert tiered.proxy.sample("spendgate_requests_total", project="batch-owner",
                               model="gpt-5-2025-08-07") == 2


def test_anthropic_batch_results_at_batch_prices_for_the_creator_once(
        tiered: Tiered, upstream: FakeUpstream) -> None:
    ended = fixture("anthropic_batch_ended.json").replace(
        b"https://api.anthropic.com", tiered.proxy.url.encode() + b"/anthropic")
    results = fixture("anthropic_batch_results.jsonl")
    upstream.queue(Reply(body=fixture("anthropic_batch_created.json")),
                   Reply(body=ended), Reply(body=results, content_type="application/binary"),
                   Reply(body=ended), Reply(body=results, content_type="application/binary"))
    owner = anthropic_client(tiered, "mbatch-owner")
    batch = owner.messages.batches.create(requests=[
        {"custom_id": f"ticket-{i}", "params": {"model": "claude-sonnet-4-6",
                                                 "max_tokens": 256, "messages": USER}}
        for i in (1, 2, 3)])
    reader = anthropic_client(tiered, "mbatch-reader")
    for _ in range(2):  # downloaded twice: counted once
        got = list(reader.messages.batches.results(batch.id))
        assert [r.result.type for r in got] == ["succeeded", "succeeded", "errored"]
    # claude-sonnet-4-6 batch: input 1.5, cached 0.15, output 7.5 per Mtok
    # ticket-1: 1000 x 1.5 + 200 x 7.5 = 1500 + 1500 = 3000 micro-USD
    # ticket-2: 100 x 1.5 + 500 x 0.15 + 50 x 7.5 = 150 + 75 + 375 = 600 micro-USD
    # ticket-3 errored: nothing. Total 3600 micro-USD
    assert wait_for(lambda: t_sample(tiered, "spendgate_cost_usd_total", "mbatch-owner")) == (
        0.0036)
    assert wait_for(lambda: ledger_nano(tiered, "mbatch-owner")) == 3_600_000
    lines = [line for line in log_lines(tiered, "mbatch-owner") if line["operation"] == "batch"]
    assert sorted((line["status"], line["cost_usd"] != "0") for line in lines) == [
        (200, True), (200, True), (500, False)]
    assert tiered.proxy.sample("spendgate_cost_usd_total", project="mbatch-reader") is None


def test_batch_book_is_bounded_and_remembers_each_download_once() -> None:
    book = BatchBook(limit=2)
    alice = Owner("alice", None, None)
    book.created("openai", "batch_1", alice)
    book.output_file("openai", "file-out-1", "batch_1")
    assert book.owner("openai", "file-out-1") == book.owner("openai", "batch_1") == alice
    assert book.owner("other-upstream", "batch_1") is None  # ids are per upstream
    assert book.first_download("openai", "file-out-1") is True
    assert book.first_download("openai", "batch_1") is False  # the same results
    book.created("openai", "batch_2", alice)
    book.created("openai", "batch_3", alice)  # past the limit: the oldest is forgotten
    assert book.owner("openai", "batch_1") is None and book.owner("openai", "batch_3") == alice
