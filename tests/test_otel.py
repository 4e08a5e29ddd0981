"""OpenTelemetry end to end: a real spendgate exporting OTLP/HTTP to a real receiver.

Spans are read back decoded from the protobuf the proxy sent (``tests/otlp_receiver.py``);
the fake provider shows what ``traceparent`` the upstream received.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from spendgate.exporters import semconv as sc
from tests.conftest import (
    ROOT,
    ProxyProcess,
    basic_config,
    free_port,
    proxies_exporting_to,
    spendgate_command,
)
from tests.fake_upstream import FakeUpstream, Reply, fixture
from tests.otlp_receiver import OTLPReceiver
from tests.test_proxy import sse_reply

CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
STATUS_ERROR = 2  # opentelemetry.proto.trace.v1.Status.STATUS_CODE_ERROR


@pytest.fixture(scope="module")
def receiver() -> Iterator[OTLPReceiver]:
    rx = OTLPReceiver().start()
    yield rx
    rx.stop()


def otel_env(receiver: OTLPReceiver, **extra: str) -> dict[str, str]:
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "50",
            "OTEL_METRIC_EXPORT_INTERVAL": "200", **extra}


def traced_config(fake: FakeUpstream, **extra: Any) -> dict[str, Any]:
    config = basic_config(fake, **extra)
    config["upstreams"]["dead"] = {"url": f"http://127.0.0.1:{free_port()}", "timeout_s": 2}
    return config


@pytest.fixture(scope="module")
def traced(fake: FakeUpstream, spawn: Any, receiver: OTLPReceiver) -> Iterator[ProxyProcess]:
    """spendgate exporting traces and metrics to ``receiver`` by the standard env vars;
    stopped before the receiver, so its last flush has somewhere to go."""
    proxy: ProxyProcess = spawn(traced_config(fake), env=otel_env(receiver))
    yield proxy
    proxy.stop()


Own = tuple[OTLPReceiver, Callable[..., ProxyProcess]]


@pytest.fixture()
def own(spawn: Any) -> Iterator[Own]:
    """A receiver of this test's own, and a way to start proxies exporting to it. The
    proxies stop before the receiver does, so their last flush has somewhere to go."""
    rx = OTLPReceiver().start()
    with proxies_exporting_to(rx, spawn) as start:
        yield rx, start


def openmetrics(proxy: ProxyProcess) -> str:
    """``/metrics`` in the OpenMetrics format, the one that carries exemplars."""
    return httpx.get(proxy.url + "/metrics", timeout=10,
                     headers={"accept": "application/openmetrics-text"}).text


def upstream_traceparent(upstream: FakeUpstream) -> tuple[str, str, str]:
    value = upstream.requests[-1].header("traceparent")
    assert value is not None
    version, trace_id, parent, flags = value.split("-")
    assert version == "00"
    return trace_id, parent, flags


CHAT = {"model": "o4-mini", "messages": [{"role": "user", "content": "capital of France?"}],
        "temperature": 0.5, "top_p": 0.9, "seed": 7, "max_completion_tokens": 300,
        "stop": ["\n\n"]}


# ---- spans: ids, names, attributes --------------------------------------------------------

def test_chat_span_continues_the_callers_trace_and_the_upstream_joins_it(
        traced: ProxyProcess, upstream: FakeUpstream, receiver: OTLPReceiver) -> None:
    upstream.queue(Reply(body=fixture("openai_chat_response.json")))
    started = time.time_ns()
    r = httpx.post(traced.url + "/openai/v1/chat/completions", content=orjson.dumps(CHAT),
                   headers={"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01",
                            "tracestate": "vendor=abc,other=1", "baggage": "tenant=acme",
                            "x-request-id": "otel-chat-1", "x-spendgate-project": "tracing",
                            "x-spendgate-user": "alice"})
    assert r.status_code == 200 and r.headers["x-spendgate-request-id"] == "otel-chat-1"
    assert "x-request-id" not in r.headers  # ours would pass for the provider's id
    span = receiver.span("otel-chat-1")
    assert (span.name, span.is_client, span.scope) == ("chat o4-mini", True, "spendgate")
    assert (span.trace_id, span.parent_span_id) == (CALLER_TRACE, CALLER_SPAN)
    assert span.trace_state == "vendor=abc,other=1"
    # The upstream was told this very span is its parent; state and baggage went unchanged.
    assert upstream_traceparent(upstream) == (CALLER_TRACE, span.span_id, "01")
    assert upstream.requests[-1].header("tracestate") == "vendor=abc,other=1"
    assert upstream.requests[-1].header("baggage") == "tenant=acme"
    assert started <= span.start_ns < span.end_ns <= time.time_ns()
    a = span.attributes
    assert a[sc.OPERATION_NAME] == "chat" and a[sc.PROVIDER_NAME] == "openai"
    assert a[sc.REQUEST_MODEL] == "o4-mini"
    assert a[sc.SERVER_ADDRESS] == "127.0.0.1" and a[sc.SERVER_PORT] == upstream.port
    assert a[sc.REQUEST_TEMPERATURE] == 0.5 and a[sc.REQUEST_TOP_P] == 0.9
    assert a[sc.REQUEST_SEED] == 7 and a[sc.REQUEST_MAX_TOKENS] == 300
    assert a[sc.REQUEST_STOP_SEQUENCES] == ("\n\n",)
    assert sc.REQUEST_STREAM not in a  # not given by the caller
    assert a[sc.RESPONSE_ID] == "chatcmpl-BxT3a8Lm2Qp9Rs4Tu5Vw6Xy7Za1Bc"
    assert a[sc.RESPONSE_MODEL] == "o4-mini-2025-04-16"
    assert a[sc.RESPONSE_FINISH_REASONS] == ("stop",)
    assert (a[sc.USAGE_INPUT_TOKENS], a[sc.USAGE_OUTPUT_TOKENS]) == (1236, 201)
    assert a[sc.USAGE_CACHE_READ_INPUT_TOKENS] == 1152
    assert a[sc.USAGE_REASONING_OUTPUT_TOKENS] == 192
    assert sc.USAGE_CACHE_CREATION_INPUT_TOKENS not in a  # not reported
    assert a[sc.OPENAI_RESPONSE_SERVICE_TIER] == "default"
    assert a[sc.HTTP_RESPONSE_STATUS_CODE] == 200
    assert sc.ERROR_TYPE not in a and span.status_code != STATUS_ERROR
    assert a[sc.SPENDGATE_PROJECT] == "tracing" and a[sc.SPENDGATE_USER] == "alice"
    assert a[sc.SPENDGATE_UPSTREAM] == "openai" and a[sc.SPENDGATE_USAGE_SOURCE] == "reported"
    assert sc.SPENDGATE_CLIENT_CLOSED not in a and sc.SPENDGATE_PRICED not in a
    assert a[sc.SPENDGATE_COST_USD] == pytest.approx(
        traced.sample("spendgate_cost_usd_total", project="tracing"), rel=1e-9)
    assert sc.SPENDGATE_BUDGET_DECISION not in a
    assert span.resource[sc.SERVICE_NAME] == "spendgate"


def test_spans_carry_the_price_tier_context_tier_and_fees(
        traced: ProxyProcess, upstream: FakeUpstream, receiver: OTLPReceiver) -> None:
    upstream.queue(Reply(body=fixture("openai_chat_response_flex.json")),
                   Reply(body=fixture("openai_chat_response_long_context.json")),
                   Reply(body=fixture("anthropic_messages_response_cache_ttl_web_search.json")))
    for request_id, path, model in (("otel-flex", "/openai/v1/chat/completions", "gpt-5"),
                                    ("otel-long", "/openai/v1/chat/completions", "gpt-5.4"),
                                    ("otel-fees", "/anthropic/v1/messages", "claude-sonnet-4-6")):
        httpx.post(traced.url + path, headers={"x-request-id": request_id},
                   content=orjson.dumps({"model": model, "max_tokens": 100, "messages": []}))
    flex = receiver.span("otel-flex").attributes
    assert (flex[sc.SPENDGATE_PRICE_TIER], flex[sc.OPENAI_RESPONSE_SERVICE_TIER]) == ("flex",
                                                                                      "flex")
    assert sc.SPENDGATE_PRICE_CONTEXT_TIER not in flex and sc.SPENDGATE_COST_FEES_USD not in flex
    assert flex[sc.SPENDGATE_COST_USD] == 0.0030125  # 800 x 0.625 + 200 x 0.0625 + 500 x 5
    long = receiver.span("otel-long").attributes
    assert (long[sc.SPENDGATE_PRICE_TIER], long[sc.SPENDGATE_PRICE_CONTEXT_TIER]) == (
        "standard", "above_272k")
    fees = receiver.span("otel-fees").attributes
    assert fees[sc.SPENDGATE_COST_FEES_USD] == 0.04  # 4 web searches x $0.01
    assert fees[sc.SPENDGATE_COST_USD] == 0.05728
    assert sc.OPENAI_RESPONSE_SERVICE_TIER not in fees  # the convention's key is OpenAI's


def test_a_call_without_traceparent_starts_a_sampled_trace(
        traced: ProxyProcess, upstream: FakeUpstream, receiver: OTLPReceiver) -> None:
    upstream.queue(Reply(body=fixture("openai_embeddings_response.json")))
    httpx.post(traced.url + "/openai/v1/embeddings", headers={"x-request-id": "otel-root"},
               content=b'{"model":"text-embedding-3-small","input":"hello"}')
    span = receiver.span("otel-root")
    assert span.parent_span_id == "" and re.fullmatch("[0-9a-f]{32}", span.trace_id)
    assert span.name == "embeddings text-embedding-3-small"
    assert upstream_traceparent(upstream) == (span.trace_id, span.span_id, "01")


def test_stream_span_has_time_to_first_chunk_and_ends_with_the_stream(
        traced: ProxyProcess, upstream: FakeUpstream, receiver: OTLPReceiver) -> None:
    upstream.queue(sse_reply("openai_chat_stream.sse", chunk_delay_s=0.05))
    api = openai.OpenAI(base_url=traced.url + "/openai/v1", api_key="sk-test", max_retries=0)
    stream = api.chat.completions.create(
        model="o4-mini-stream", messages=[{"role": "user", "content": "Hi"}], stream=True,
        extra_headers={"x-request-id": "otel-stream", "x-spendgate-project": "otel-stream"})
    chunks = list(stream)
    assert chunks
    span = receiver.span("otel-stream")
    a = span.attributes
    assert a[sc.REQUEST_STREAM] is True
    ttfc = a[sc.RESPONSE_TIME_TO_FIRST_CHUNK]
    duration_s = (span.end_ns - span.start_ns) / 1e9
    # Six events, 50 ms apart: the span lasts until the last one, well after the first.
    assert 0 < ttfc < duration_s and duration_s - ttfc >= 0.2
    assert a[sc.USAGE_OUTPUT_TOKENS] == 201 and a[sc.SPENDGATE_USAGE_SOURCE] == "reported"
    assert a[sc.RESPONSE_FINISH_REASONS] == ("stop",)
    labels = {"gen_ai_request_model": "o4-mini-stream", "gen_ai_operation_name": "chat"}
    assert traced.sample("gen_ai_client_operation_time_to_first_chunk_seconds_sum",
                         **labels) == pytest.approx(ttfc)
    # One observation per call: the mean of its six intervals (seven SSE events, [DONE] last).
    assert traced.sample("gen_ai_client_operation_time_per_output_chunk_seconds_count",
                         **labels) == 1
    assert traced.sample("gen_ai_client_operation_time_per_output_chunk_seconds_sum",
                         **labels) == pytest.approx((duration_s - ttfc) / 6, abs=1e-6)


def test_anthropic_span(traced: ProxyProcess, upstream: FakeUpstream,
                        receiver: OTLPReceiver) -> None:
    upstream.queue(Reply(body=fixture("anthropic_messages_response_cached.json")))
    anthropic.Anthropic(base_url=traced.url + "/anthropic", api_key="sk-ant-test",
                        max_retries=0).messages.create(
        model="claude-sonnet-4-5", max_tokens=64,
        messages=[{"role": "user", "content": "capital of France?"}],
        extra_body={"top_k": 40}, extra_headers={"x-request-id": "otel-anthropic"})
    span = receiver.span("otel-anthropic")
    a = span.attributes
    assert span.name == "chat claude-sonnet-4-5"
    assert a[sc.PROVIDER_NAME] == "anthropic" and a[sc.REQUEST_TOP_K] == 40
    assert a[sc.REQUEST_MAX_TOKENS] == 64
    assert a[sc.RESPONSE_MODEL] == "claude-sonnet-4-5-20250929"
    assert a[sc.RESPONSE_FINISH_REASONS] == ("end_turn",)
    # Normalised: input counts every prompt token, cached and cache-written included.
    assert a[sc.USAGE_INPUT_TOKENS] == 21 + 188 + 3072
    assert a[sc.USAGE_CACHE_READ_INPUT_TOKENS] == 3072
    assert a[sc.USAGE_CACHE_CREATION_INPUT_TOKENS] == 188
    assert a[sc.USAGE_OUTPUT_TOKENS] == 57
    assert not [key for key in a if key.startswith("openai.")]


def test_hang_up_is_marked_and_the_span_ends_there(
        traced: ProxyProcess, upstream: FakeUpstream, receiver: OTLPReceiver) -> None:
    upstream.queue(sse_reply("openai_chat_stream.sse", chunk_delay_s=0.3))
    body = b'{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"Hi"}]}'
    with httpx.stream("POST", traced.url + "/openai/v1/chat/completions", content=body,
                      headers={"x-request-id": "otel-hangup"}) as r:
        for _ in r.iter_raw():
            break
    span = receiver.span("otel-hangup")
    a = span.attributes
    assert a[sc.SPENDGATE_CLIENT_CLOSED] is True and a[sc.ERROR_TYPE] == "client_closed"
    assert span.status_code == STATUS_ERROR
    assert sc.HTTP_RESPONSE_STATUS_CODE not in a
    # Usage as counted: the prompt is estimated (the usage chunk never came).
    assert a[sc.USAGE_INPUT_TOKENS] > 0 and a[sc.SPENDGATE_USAGE_SOURCE] == "estimated"
    assert (span.end_ns - span.start_ns) / 1e9 < 6 * 0.3  # not the whole stream


def test_errors_set_error_type(traced: ProxyProcess, upstream: FakeUpstream,
                               receiver: OTLPReceiver) -> None:
    upstream.queue(Reply(status=500, body=b'{"error":{"message":"boom","type":"server_error"}}'))
    r = httpx.post(traced.url + "/openai/v1/chat/completions", content=orjson.dumps(CHAT),
                   headers={"x-request-id": "otel-500"})
    assert r.status_code == 500
    span = receiver.span("otel-500")
    assert span.attributes[sc.ERROR_TYPE] == "500" and span.status_code == STATUS_ERROR
    assert span.attributes[sc.HTTP_RESPONSE_STATUS_CODE] == 500
    r = httpx.post(traced.url + "/dead/v1/chat/completions", content=orjson.dumps(CHAT),
                   headers={"x-request-id": "otel-502"})
    assert r.status_code == 502
    span = receiver.span("otel-502")
    assert span.attributes[sc.ERROR_TYPE] == "upstream_unreachable"
    assert span.status_code == STATUS_ERROR
    assert traced.sample("gen_ai_client_operation_duration_seconds_count",
                         error_type="upstream_unreachable") == 1
    assert traced.sample("gen_ai_client_operation_duration_seconds_count", error_type="500",
                         gen_ai_request_model="o4-mini") == 1


def test_unsampled_caller_is_followed_and_exports_nothing(
        traced: ProxyProcess, upstream: FakeUpstream, receiver: OTLPReceiver) -> None:
    unsampled = "1" * 32
    upstream.queue(Reply(body=fixture("openai_chat_response.json")))
    httpx.post(traced.url + "/openai/v1/chat/completions", content=orjson.dumps(CHAT),
               headers={"traceparent": f"00-{unsampled}-{CALLER_SPAN}-00",
                        "x-request-id": "otel-unsampled"})
    trace_id, parent, flags = upstream_traceparent(upstream)
    assert (trace_id, flags) == (unsampled, "00") and parent != CALLER_SPAN
    # A sampled call after it is exported; the unsampled one never is.
    upstream.queue(Reply(body=fixture("openai_chat_response.json")))
    httpx.post(traced.url + "/openai/v1/chat/completions", content=orjson.dumps(CHAT),
               headers={"x-request-id": "otel-after-unsampled"})
    receiver.span("otel-after-unsampled")
    assert not [s for s in receiver.spans() if s.trace_id == unsampled]
    assert unsampled not in openmetrics(traced)


# ---- metrics and exemplars ----------------------------------------------------------------

def test_gen_ai_metrics_on_metrics_and_over_otlp(traced: ProxyProcess, upstream: FakeUpstream,
                                                 receiver: OTLPReceiver) -> None:
    upstream.queue(Reply(body=fixture("openai_chat_response.json")))
    body = {**CHAT, "model": "gpt-metrics-test"}
    httpx.post(traced.url + "/openai/v1/chat/completions", content=orjson.dumps(body))
    labels = {"gen_ai_operation_name": "chat", "gen_ai_provider_name": "openai",
              "gen_ai_request_model": "gpt-metrics-test",
              "gen_ai_response_model": "o4-mini-2025-04-16", "server_address": "127.0.0.1",
              "server_port": str(upstream.port)}
    assert traced.sample("gen_ai_client_token_usage_sum", gen_ai_token_type="input",
                         **labels) == 1236
    assert traced.sample("gen_ai_client_token_usage_sum", gen_ai_token_type="output",
                         **labels) == 201
    assert traced.sample("gen_ai_client_operation_duration_seconds_count", error_type="",
                         **labels) == 1
    families = {f.name: f for f in text_string_to_metric_families(traced.metrics_text())}
    for family, buckets in (("gen_ai_client_token_usage", sc.TOKEN_BUCKETS),
                            ("gen_ai_client_operation_duration_seconds", sc.DURATION_BUCKETS),
                            ("gen_ai_client_operation_time_to_first_chunk_seconds",
                             sc.DURATION_BUCKETS)):
        bounds = sorted({float(s.labels["le"]) for s in families[family].samples
                         if s.name.endswith("_bucket")})
        assert bounds == [*buckets, float("inf")], family
    # The same instruments over OTLP, with the advised boundaries and the same attributes.
    def duration_points() -> list[Any]:
        return [p for p in receiver.points(sc.METRIC_OPERATION_DURATION)
                if p.attributes.get(sc.REQUEST_MODEL) == "gpt-metrics-test"]
    points = receiver.wait_for(duration_points)
    assert points and points[0].unit == "s" and points[0].count == 1
    assert points[0].bounds == sc.DURATION_BUCKETS
    assert points[0].attributes == {sc.OPERATION_NAME: "chat", sc.PROVIDER_NAME: "openai",
                                    sc.REQUEST_MODEL: "gpt-metrics-test",
                                    sc.RESPONSE_MODEL: "o4-mini-2025-04-16",
                                    sc.SERVER_ADDRESS: "127.0.0.1",
                                    sc.SERVER_PORT: upstream.port}
    tokens = receiver.wait_for(lambda: [
        p for p in receiver.points(sc.METRIC_TOKEN_USAGE)
        if p.attributes.get(sc.REQUEST_MODEL) == "gpt-metrics-test"])
    assert {p.attributes[sc.TOKEN_TYPE]: p.sum for p in tokens} == {"input": 1236,
                                                                   "output": 201}
    assert tokens[0].unit == "{token}" and tokens[0].bounds == sc.TOKEN_BUCKETS


def test_latency_histograms_carry_the_trace_id_as_exemplar(
        traced: ProxyProcess, upstream: FakeUpstream, receiver: OTLPReceiver) -> None:
    upstream.queue(Reply(body=fixture("openai_chat_response.json")))
    httpx.post(traced.url + "/openai/v1/chat/completions", content=orjson.dumps(CHAT),
               headers={"x-request-id": "otel-exemplar", "x-spendgate-project": "exemplar"})
    span = receiver.span("otel-exemplar")
    text = openmetrics(traced)
    for family in ("spendgate_request_duration_seconds_bucket",
                   "gen_ai_client_operation_duration_seconds_bucket"):
        assert re.search(rf'^{family}{{[^}}]*}} \S+ # {{trace_id="{span.trace_id}"}}', text,
                         re.MULTILINE), family




# ---- secrets and content ------------------------------------------------------------------

VIRTUAL_KEY = "sg-vk-SECRETVIRTUALKEY-7f3a9c"
UPSTREAM_KEY = "sk-upstream-SECRETUPSTREAMKEY-41d2"
ANTHROPIC_KEY = "sk-ant-SECRETANTHROPICKEY-93bb"
ADMIN_KEY = "admin-SECRETADMINKEY-55e1"
CALLER_KEY = "sk-caller-SECRETCALLERKEY-0c8d"


def test_no_secret_bytes_anywhere_in_the_export(fake: FakeUpstream, own: Own,
                                                upstream: FakeUpstream) -> None:
    rx, start = own
    config = traced_config(fake, keys=[{"key": VIRTUAL_KEY, "project": "secret"}],
                           admin_key=ADMIN_KEY)
    config["upstreams"]["openai"]["api_key"] = UPSTREAM_KEY
    config["upstreams"]["anthropic"]["api_key"] = ANTHROPIC_KEY
    # Content capture on: even message content carries no credential.
    proxy = start(config, env=otel_env(rx, OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT="true"))
    upstream.queue(Reply(body=fixture("openai_chat_response.json")),
                   Reply(body=fixture("anthropic_messages_response_cached.json")),
                   sse_reply("openai_chat_stream.sse"), Reply(status=401, body=b"{}"))
    openai.OpenAI(base_url=proxy.url + "/openai/v1", api_key=VIRTUAL_KEY,
                  max_retries=0).chat.completions.create(
        model="o4-mini", messages=[{"role": "user", "content": "x"}],
        extra_headers={"x-request-id": "secret-1"})
    anthropic.Anthropic(base_url=proxy.url + "/anthropic", api_key=VIRTUAL_KEY,
                        max_retries=0).messages.create(
        model="claude-sonnet-4-5", max_tokens=8, messages=[{"role": "user", "content": "x"}],
        extra_headers={"x-request-id": "secret-2"})
    list(openai.OpenAI(base_url=proxy.url + "/openai/v1", api_key=VIRTUAL_KEY,
                       max_retries=0).chat.completions.create(
        model="o4-mini", messages=[{"role": "user", "content": "x"}], stream=True,
        extra_headers={"x-request-id": "secret-3"}))
    # "local" has no api_key: the caller's own credential is forwarded, key aside.
    httpx.post(proxy.url + "/local/v1/chat/completions", content=orjson.dumps(CHAT),
               headers={"authorization": f"Bearer {CALLER_KEY}", "x-request-id": "secret-4",
                        "x-spendgate-key": VIRTUAL_KEY, "x-admin-key": ADMIN_KEY})
    assert upstream.requests[-1].header("authorization") == f"Bearer {CALLER_KEY}"
    httpx.post(proxy.url + "/openai/v1/chat/completions", content=orjson.dumps(CHAT),
               headers={"authorization": "Bearer sg-vk-SECRETWRONGKEY"})  # a 401
    for rid in ("secret-1", "secret-2", "secret-3", "secret-4"):
        rx.span(rid)
    assert rx.wait_for(lambda: rx.points(sc.METRIC_OPERATION_DURATION))
    payload = rx.all_bytes()
    assert b"gen_ai.input.messages" in payload  # the capture really ran
    for secret in (VIRTUAL_KEY, UPSTREAM_KEY, ANTHROPIC_KEY, ADMIN_KEY, CALLER_KEY,
                   "SECRETWRONGKEY"):
        assert secret.encode() not in payload, secret
        assert secret not in proxy.log()


def test_content_is_not_captured_by_default(traced: ProxyProcess, upstream: FakeUpstream,
                                            receiver: OTLPReceiver) -> None:
    upstream.queue(Reply(body=fixture("openai_chat_response.json")))
    prompt = "a very distinctive prompt 8c1e5a"
    httpx.post(traced.url + "/openai/v1/chat/completions", headers={"x-request-id": "no-content"},
               content=orjson.dumps({"model": "o4-mini",
                                     "messages": [{"role": "user", "content": prompt}]}))
    span = receiver.span("no-content")
    assert not {sc.INPUT_MESSAGES, sc.OUTPUT_MESSAGES} & span.attributes.keys()
    assert prompt.encode() not in receiver.all_bytes()
    assert b"The capital of France is Paris." not in receiver.all_bytes()


def test_content_capture_by_env_in_the_conventions_shape_and_file_settings_win(
        fake: FakeUpstream, own: Own, upstream: FakeUpstream) -> None:
    rx, start = own
    config = traced_config(fake, telemetry={
        "endpoint": rx.url, "service_name": "gateway-under-test",
        "resource_attributes": {"team": "platform"}, "headers": {"x-tenant": "t-42"},
        "content_max_chars": 40})
    dead = f"http://127.0.0.1:{free_port()}"
    proxy = start(config, env={
        "OTEL_EXPORTER_OTLP_ENDPOINT": dead,  # the file's endpoint wins
        "OTEL_SERVICE_NAME": "not-this-one",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=ci,team=not-this-one",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "true"})
    upstream.queue(Reply(body=fixture("openai_chat_response.json")),
                   Reply(body=fixture("anthropic_messages_response_cached.json")))
    long_text = "x" * 100
    httpx.post(proxy.url + "/openai/v1/chat/completions", headers={"x-request-id": "c-1"},
               content=orjson.dumps({"model": "o4-mini", "messages": [
                   {"role": "system", "content": "Be brief."},
                   {"role": "user", "content": [{"type": "text", "text": "Capital?"},
                                                {"type": "image_url", "image_url": {
                                                    "url": "https://img.example/a.png"}}]},
                   {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function",
                    "function": {"name": "lookup", "arguments": '{"q":"fr"}'}}]},
                   {"role": "tool", "tool_call_id": "call_1", "content": long_text}]}))
    anthropic.Anthropic(base_url=proxy.url + "/anthropic", api_key="sk-ant-x",
                        max_retries=0).messages.create(
        model="claude-sonnet-4-5", max_tokens=8, system="You are terse.",
        messages=[{"role": "user", "content": "Capital of France?"}],
        extra_headers={"x-request-id": "c-2"})
    span = rx.span("c-1")
    assert orjson.loads(span.attributes[sc.INPUT_MESSAGES]) == [
        {"role": "system", "parts": [{"type": "text", "content": "Be brief."}]},
        {"role": "user", "parts": [{"type": "text", "content": "Capital?"},
                                   {"type": "image_url"}]},
        {"role": "assistant", "parts": [{"type": "tool_call", "id": "call_1",
                                         "name": "lookup", "arguments": '{"q":"fr"}'}]},
        # 40 characters in all: 9 + 8 + 10 used before, the rest of this one is cut.
        {"role": "tool", "parts": [{"type": "tool_call_response", "id": "call_1",
                                    "response": "x" * 13 + "…"}]}]
    assert orjson.loads(span.attributes[sc.OUTPUT_MESSAGES]) == [
        {"role": "assistant", "parts": [{"type": "text", "content":
                                         "The capital of France is Paris."}],
         "finish_reason": "stop"}]
    assert b"https://img.example" not in rx.all_bytes()
    span = rx.span("c-2")
    assert orjson.loads(span.attributes[sc.SYSTEM_INSTRUCTIONS]) == [
        {"type": "text", "content": "You are terse."}]
    assert orjson.loads(span.attributes[sc.INPUT_MESSAGES]) == [
        {"role": "user", "parts": [{"type": "text", "content": "Capital of France?"}]}]
    assert orjson.loads(span.attributes[sc.OUTPUT_MESSAGES])[0]["finish_reason"] == "end_turn"
    assert span.resource[sc.SERVICE_NAME] == "gateway-under-test"
    assert span.resource["team"] == "platform"
    assert span.resource["deployment.environment"] == "ci"
    assert rx.headers[-1].get("x-tenant") == "t-42"


# ---- switches -----------------------------------------------------------------------------

def test_sdk_disabled_exports_nothing_and_forwards_the_callers_context(
        fake: FakeUpstream, own: Own, upstream: FakeUpstream) -> None:
    rx, start = own
    proxy = start(traced_config(fake), env=otel_env(rx, OTEL_SDK_DISABLED="true"))
    caller = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
    upstream.queue(Reply(body=fixture("openai_chat_response.json")))
    httpx.post(proxy.url + "/openai/v1/chat/completions", content=orjson.dumps(CHAT),
               headers={"traceparent": caller})
    # No span of spendgate exists, so the caller's own context goes upstream unchanged.
    assert upstream.requests[-1].header("traceparent") == caller
    upstream.queue(Reply(body=fixture("openai_chat_response.json")))
    httpx.post(proxy.url + "/openai/v1/chat/completions", content=orjson.dumps(CHAT))
    assert upstream.requests[-1].header("traceparent") is None
    assert proxy.sample("spendgate_requests_total", status="200") == 2
    time.sleep(0.5)  # ten span-export periods
    assert rx.raw == []
    assert "trace_id" not in openmetrics(proxy)


def test_ratio_sampler_zero_samples_no_new_trace_but_follows_sampled_callers(
        fake: FakeUpstream, own: Own, upstream: FakeUpstream) -> None:
    rx, start = own
    proxy = start(traced_config(fake), env=otel_env(
        rx, OTEL_TRACES_SAMPLER="parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG="0"))
    upstream.queue(Reply(body=fixture("openai_chat_response.json")))
    httpx.post(proxy.url + "/openai/v1/chat/completions", content=orjson.dumps(CHAT),
               headers={"x-request-id": "ratio-new"})
    assert upstream_traceparent(upstream)[2] == "00"
    upstream.queue(Reply(body=fixture("openai_chat_response.json")))
    httpx.post(proxy.url + "/openai/v1/chat/completions", content=orjson.dumps(CHAT),
               headers={"x-request-id": "ratio-parent",
                        "traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"})
    assert rx.span("ratio-parent").trace_id == CALLER_TRACE
    assert not [s for s in rx.spans() if s.attributes.get("spendgate.request_id")
                == "ratio-new"]


def test_unsupported_settings_fail_at_startup_with_a_clear_message(
        fake: FakeUpstream, spawn: Any, tmp_path: Any) -> None:
    with pytest.raises(RuntimeError, match="OTEL_TRACES_SAMPLER: 'jaeger_remote' is not "):
        spawn(traced_config(fake), env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
                                        "OTEL_TRACES_SAMPLER": "jaeger_remote"})
    with pytest.raises(RuntimeError, match=r"telemetry.sampler_arg: '2' is not a ratio"):
        spawn(traced_config(fake, telemetry={"endpoint": "http://127.0.0.1:9",
                                             "sampler": "traceidratio", "sampler_arg": "2"}))


def test_grpc_needs_its_optional_package(fake: FakeUpstream, tmp_path: Any) -> None:
    path = tmp_path / "grpc.yaml"
    path.write_text(orjson.dumps(traced_config(fake, telemetry={
        "endpoint": "http://127.0.0.1:4317", "protocol": "grpc"})).decode())
    done = subprocess.run(spendgate_command("check-config", str(path)),
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    try:
        import opentelemetry.exporter.otlp.proto.grpc  # noqa: F401
    except ImportError:
        assert done.returncode == 1
        assert "opentelemetry-exporter-otlp-proto-grpc" in done.stdout
    else:
        assert done.returncode == 0, done.stdout
