"""Every metered protocol through a real proxy: Anthropic, Responses, embeddings, completions."""

from __future__ import annotations

import gzip
from decimal import Decimal
from typing import Any

import anthropic
import httpx
import orjson
import pytest

from spendgate.accounting.pricing import PriceCatalog
from spendgate.usage import Usage
from tests.conftest import ProxyProcess
from tests.fake_upstream import FakeUpstream, Reply, fixture
from tests.test_proxy import client, sse_reply

CATALOG = PriceCatalog.load()


def expected_cost(model: str, usage: Usage) -> float:
    resolved = CATALOG.resolve(model)
    assert resolved is not None, model
    return float(resolved.price.cost(usage))


def anthropic_client(proxy: ProxyProcess, project: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=proxy.url + "/anthropic", api_key="sk-ant-caller",
                               max_retries=0, default_headers={"x-spendgate-project": project})


def tokens(proxy: ProxyProcess, project: str, source: str = "reported") -> dict[str, Any]:
    return {t: proxy.sample("spendgate_tokens_total", project=project, type=t, source=source)
            for t in ("input", "output", "cached_input", "cache_write", "reasoning")}


def test_anthropic_messages_with_prompt_caching(proxy: ProxyProcess,
                                                upstream: FakeUpstream) -> None:
    body = fixture("anthropic_messages_response_cached.json")
    upstream.queue(Reply(body=body))
    message = anthropic_client(proxy, "claude").messages.create(
        model="claude-sonnet-4-5-20250929", max_tokens=1024,
        messages=[{"role": "user", "content": "capital of France?"}])
    assert message.model == "claude-sonnet-4-5-20250929"
    seen = upstream.requests[-1]  # the caller's credential, as its SDK sent it
    assert "sk-ant-caller" in (seen.header("x-api-key") or seen.header("authorization") or "")
    u = orjson.loads(body)["usage"]
    total_input = u["input_tokens"] + u["cache_creation_input_tokens"] + u["cache_read_input_tokens"]
    got = tokens(proxy, "claude")
    assert got["input"] == total_input
    assert got["cached_input"] == u["cache_read_input_tokens"]
    assert got["cache_write"] == u["cache_creation_input_tokens"]
    assert got["output"] == u["output_tokens"]
    usage = Usage(input=total_input, output=u["output_tokens"],
                  cached_input=u["cache_read_input_tokens"],
                  cache_write=u["cache_creation_input_tokens"])
    assert proxy.sample("spendgate_cost_usd_total", project="claude") == pytest.approx(
        expected_cost("claude-sonnet-4-5-20250929", usage), rel=1e-12)


def test_anthropic_stream_through_the_sdk(proxy: ProxyProcess, upstream: FakeUpstream) -> None:
    upstream.queue(sse_reply("anthropic_messages_stream_cached.sse"))
    with anthropic_client(proxy, "claude-stream").messages.stream(
            model="claude-sonnet-4-5-20250929", max_tokens=1024,
            messages=[{"role": "user", "content": "capital of France?"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert "Paris" in text
    got = tokens(proxy, "claude-stream")
    assert got["input"] == (final.usage.input_tokens + (final.usage.cache_read_input_tokens or 0)
                            + (final.usage.cache_creation_input_tokens or 0))
    assert got["output"] == final.usage.output_tokens
    assert got["cached_input"] == final.usage.cache_read_input_tokens
    assert b"stream_options" not in upstream.requests[-1].body  # Anthropic: never rewritten


def test_openai_responses_api_streamed_and_not(proxy: ProxyProcess,
                                               upstream: FakeUpstream) -> None:
    upstream.queue(Reply(body=fixture("openai_responses_response.json")),
                   sse_reply("openai_responses_stream.sse"))
    api = client(proxy, "responses")
    result = api.responses.create(model="gpt-4.1", input="Tell me a joke")
    with api.responses.stream(model="gpt-4.1", input="Tell me a joke") as stream:
        for _ in stream:
            pass
        streamed = stream.get_final_response()
    assert result.usage is not None and streamed.usage is not None
    got = tokens(proxy, "responses")
    assert got["input"] == result.usage.input_tokens + streamed.usage.input_tokens
    assert got["output"] == result.usage.output_tokens + streamed.usage.output_tokens
    assert b"stream_options" not in upstream.requests[-1].body


def test_embeddings_and_completions(proxy: ProxyProcess, upstream: FakeUpstream) -> None:
    upstream.queue(Reply(body=fixture("openai_embeddings_response.json")),
                   Reply(body=fixture("openai_completions_response.json")))
    api = client(proxy, "embed")
    emb = api.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    comp = api.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say this is a test")
    got = tokens(proxy, "embed")
    assert got["input"] == emb.usage.prompt_tokens + comp.usage.prompt_tokens  # type: ignore[union-attr]
    assert got["output"] == comp.usage.completion_tokens  # type: ignore[union-attr]
    assert proxy.sample("spendgate_requests_total", project="embed", status="200") == 2


def test_gzip_response_is_forwarded_compressed_and_still_counted(
        proxy: ProxyProcess, upstream: FakeUpstream) -> None:
    packed = gzip.compress(fixture("openai_chat_response.json"))
    upstream.queue(Reply(body=packed, headers={"Content-Encoding": "gzip"}))
    r = httpx.post(proxy.url + "/openai/v1/chat/completions",
                   content=b'{"model":"o4-mini","messages":[]}',
                   headers={"accept-encoding": "gzip, br, zstd", "x-spendgate-project": "gz"})
    assert r.headers["content-encoding"] == "gzip"
    assert r.content == fixture("openai_chat_response.json")  # httpx decoded what we passed
    assert upstream.requests[-1].header("accept-encoding") == "gzip"  # only what we can read
    assert tokens(proxy, "gz")["output"] == 201


def test_local_upstream_default_price_and_base_path(proxy: ProxyProcess,
                                                    upstream: FakeUpstream) -> None:
    upstream.queue(Reply(body=b'{"id":"x","model":"llama-3.1-8b","choices":[],'
                              b'"usage":{"prompt_tokens":1000000,"completion_tokens":500000}}'))
    httpx.post(proxy.url + "/local/v1/chat/completions",
               content=b'{"model":"llama-3.1-8b","messages":[]}',
               headers={"x-spendgate-project": "selfhosted"})
    assert upstream.requests[-1].raw_path == "/base/v1/chat/completions"
    # local's pricing: input 1.0, output 2.0 per Mtok
    assert proxy.sample("spendgate_cost_usd_total", project="selfhosted") == 2.0


def test_override_price_wins(proxy: ProxyProcess, upstream: FakeUpstream) -> None:
    upstream.queue(Reply(body=b'{"id":"x","model":"my-finetune","choices":[],'
                              b'"usage":{"prompt_tokens":2000000,"completion_tokens":1000000,'
                              b'"prompt_tokens_details":{"cached_tokens":1000000}}}'))
    client(proxy, "ft").chat.completions.create(model="my-finetune", messages=[])
    cost = Decimal("1.0") * 1 + Decimal("0.5") * 1 + Decimal("2.0") * 1
    assert proxy.sample("spendgate_cost_usd_total", project="ft") == float(cost)


def test_unpriced_model_costs_zero_and_is_counted(proxy: ProxyProcess,
                                                  upstream: FakeUpstream) -> None:
    upstream.queue(Reply(body=b'{"id":"x","model":"mystery-1","choices":[],'
                              b'"usage":{"prompt_tokens":10,"completion_tokens":5}}'))
    client(proxy, "mystery").chat.completions.create(model="mystery-1", messages=[])
    assert proxy.sample("spendgate_unpriced_requests_total", model="mystery-1") == 1
    assert proxy.sample("spendgate_cost_usd_total", project="mystery") is None
    assert proxy.sample("spendgate_tokens_total", project="mystery", type="input") == 10
    assert "no price for model 'mystery-1'" in proxy.log()
