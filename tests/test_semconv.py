"""The names spendgate emits are the GenAI conventions' (v1.41), spelled out here by hand."""

from __future__ import annotations

import orjson

from spendgate.exporters import semconv as sc
from spendgate.exporters.genai_content import input_messages, output_messages
from spendgate.exporters.genai_metrics import INSTRUMENTS, OPERATION_DURATION, TOKEN_USAGE


def test_attribute_names() -> None:
    assert [sc.OPERATION_NAME, sc.PROVIDER_NAME, sc.REQUEST_MODEL, sc.RESPONSE_MODEL,
            sc.RESPONSE_ID, sc.RESPONSE_FINISH_REASONS, sc.RESPONSE_TIME_TO_FIRST_CHUNK,
            sc.REQUEST_STREAM, sc.REQUEST_MAX_TOKENS, sc.REQUEST_TEMPERATURE, sc.REQUEST_TOP_P,
            sc.REQUEST_SEED] == [
        "gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.request.model",
        "gen_ai.response.model", "gen_ai.response.id", "gen_ai.response.finish_reasons",
        "gen_ai.response.time_to_first_chunk", "gen_ai.request.stream",
        "gen_ai.request.max_tokens", "gen_ai.request.temperature", "gen_ai.request.top_p",
        "gen_ai.request.seed"]
    assert [sc.USAGE_INPUT_TOKENS, sc.USAGE_OUTPUT_TOKENS, sc.USAGE_CACHE_READ_INPUT_TOKENS,
            sc.USAGE_CACHE_CREATION_INPUT_TOKENS, sc.USAGE_REASONING_OUTPUT_TOKENS] == [
        "gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens",
        "gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.cache_creation.input_tokens",
        "gen_ai.usage.reasoning.output_tokens"]
    assert [sc.INPUT_MESSAGES, sc.OUTPUT_MESSAGES, sc.SYSTEM_INSTRUCTIONS, sc.TOKEN_TYPE] == [
        "gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.system_instructions",
        "gen_ai.token.type"]
    assert [sc.OPENAI_RESPONSE_SERVICE_TIER, sc.SERVER_ADDRESS, sc.SERVER_PORT, sc.ERROR_TYPE,
            sc.HTTP_RESPONSE_STATUS_CODE] == [
        "openai.response.service_tier", "server.address", "server.port", "error.type",
        "http.response.status_code"]
    assert sc.OPERATIONS == {"chat": "chat", "responses": "chat",
                             "text_completion": "text_completion", "embeddings": "embeddings"}


def test_metric_names_units_buckets_and_prometheus_translation() -> None:
    assert [(i.name, i.unit, i.prometheus_name) for i in INSTRUMENTS] == [
        ("gen_ai.client.token.usage", "{token}", "gen_ai_client_token_usage"),
        ("gen_ai.client.operation.duration", "s", "gen_ai_client_operation_duration_seconds"),
        ("gen_ai.client.operation.time_to_first_chunk", "s",
         "gen_ai_client_operation_time_to_first_chunk_seconds"),
        ("gen_ai.client.operation.time_per_output_chunk", "s",
         "gen_ai_client_operation_time_per_output_chunk_seconds")]
    assert TOKEN_USAGE.buckets == (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144,
                                   1048576, 4194304, 16777216, 67108864)
    for instrument in INSTRUMENTS[1:]:
        assert instrument.buckets == (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56,
                                      5.12, 10.24, 20.48, 40.96, 81.92)
        assert {"gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.request.model",
                "server.address", "server.port"} <= set(instrument.attributes)
    assert "gen_ai_token_type" in TOKEN_USAGE.prometheus_labels
    # The sink builds label values in this order: operation, provider, models, server.
    for instrument in INSTRUMENTS:
        assert instrument.prometheus_labels[:6] == (
            "gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model",
            "gen_ai_response_model", "server_address", "server_port")
    assert "error_type" in OPERATION_DURATION.prometheus_labels


def test_responses_and_completion_inputs_in_the_role_parts_shape() -> None:
    messages, system = input_messages("openai", "responses", {
        "instructions": "Answer in French.",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
                  {"type": "function_call", "call_id": "c1", "name": "weather",
                   "arguments": '{"city":"Paris"}'},
                  {"type": "function_call_output", "call_id": "c1", "output": "rainy"}]}, 1000)
    assert system == [{"type": "text", "content": "Answer in French."}]
    assert messages == [
        {"role": "user", "parts": [{"type": "text", "content": "Weather?"}]},
        {"role": "assistant", "parts": [{"type": "tool_call", "id": "c1", "name": "weather",
                                         "arguments": '{"city":"Paris"}'}]},
        {"role": "tool", "parts": [{"type": "tool_call_response", "id": "c1",
                                    "response": "rainy"}]}]
    messages, _ = input_messages("openai", "text_completion", {"prompt": ["a", "b"]}, 1000)
    assert [m["parts"][0]["content"] for m in messages] == ["a", "b"]
    assert input_messages("openai", "embeddings", {"input": "secret-ish text"}, 1000) == ([], [])


def test_anthropic_tool_round_trip() -> None:
    messages, system = input_messages("anthropic", "chat", {
        "system": [{"type": "text", "text": "Be terse."}],
        "messages": [
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "need weather"},
                {"type": "tool_use", "id": "tu1", "name": "weather", "input": {"city": "Oslo"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "tu1",
                 "content": [{"type": "text", "text": "snow"}]},
                {"type": "image", "source": {"type": "base64", "data": "AAAA"}}]}]}, 1000)
    assert system == [{"type": "text", "content": "Be terse."}]
    assert messages == [
        {"role": "assistant", "parts": [
            {"type": "reasoning", "content": "need weather"},
            {"type": "tool_call", "id": "tu1", "name": "weather", "arguments": '{"city":"Oslo"}'}]},
        {"role": "user", "parts": [
            {"type": "tool_call_response", "id": "tu1", "response": "snow"},
            {"type": "image"}]}]


def test_truncation_keeps_valid_json_within_the_budget() -> None:
    body = {"messages": [{"role": "user", "content": "é" * 50} for _ in range(5)]}
    messages, _ = input_messages("openai", "chat", body, 120)
    text = "".join(p["content"] for m in messages for p in m["parts"])
    assert text.count("é") == 120 and text.count("…") == 1 and len(messages) == 5
    orjson.loads(orjson.dumps(messages))
    out = output_messages("z" * 10, (), client_closed=True, max_chars=4)
    assert out == [{"role": "assistant", "parts": [{"type": "text", "content": "zzzz…"}],
                    "finish_reason": "cancelled"}]
