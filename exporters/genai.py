"""A ``UsageRecord`` read through the GenAI semantic conventions: names, values, attributes.

Pure functions, no OpenTelemetry SDK: the span sink (``exporters.otel``) and the convention
metrics (``exporters.genai_metrics``) both build on them, so a span and a metric point of the
same call always agree. Attribute names come from ``exporters.semconv`` only.

``error.type`` values spendgate reports (low cardinality, documented as the convention asks):
the upstream's HTTP status as a string (``"429"``, ``"500"``) when it answered with an error,
else spendgate's own error type (``upstream_unreachable``, ``upstream_timeout``,
``budget_exceeded``, ``unauthorized``, ``client_closed`` when the caller hung up mid-call,
``proxy_error``, ...).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from spendgate.exporters import semconv as sc
from spendgate.records import UsageRecord

AttributeValue = str | bool | int | float | tuple[str, ...]
Server = tuple[str, int | None]  # (server.address, server.port) of an upstream


def operation_name(record: UsageRecord) -> str | None:
    """``gen_ai.operation.name``, or None for calls that are not GenAI inference."""
    return sc.OPERATIONS.get(record.operation)


def request_model(record: UsageRecord) -> str | None:
    return record.model if record.model != "unknown" else None


def error_type(record: UsageRecord) -> str | None:
    """``error.type`` of a failed call, None for a successful one (see the module doc)."""
    if record.error_type:
        return record.error_type
    if record.status >= 400:
        return str(record.status)
    return None


def span_name(record: UsageRecord) -> str:
    """``{gen_ai.operation.name} {gen_ai.request.model}``, as the convention names spans."""
    operation = operation_name(record) or sc.OTHER_OPERATION
    model = request_model(record)
    return f"{operation} {model}" if model else operation


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def _integer(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _strings(value: Any) -> tuple[str, ...] | None:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    return None


def request_attributes(record: UsageRecord) -> dict[str, AttributeValue]:
    """``gen_ai.request.*`` (and ``openai.request.service_tier``) the caller gave."""
    out: dict[str, AttributeValue] = {}
    body = record.request_json
    if record.max_tokens is not None:
        out[sc.REQUEST_MAX_TOKENS] = record.max_tokens
    if not isinstance(body, dict):
        return out
    if isinstance(body.get("stream"), bool):
        out[sc.REQUEST_STREAM] = body["stream"]
    for key, name in (("temperature", sc.REQUEST_TEMPERATURE), ("top_p", sc.REQUEST_TOP_P),
                      ("frequency_penalty", sc.REQUEST_FREQUENCY_PENALTY),
                      ("presence_penalty", sc.REQUEST_PRESENCE_PENALTY)):
        number = _number(body.get(key))
        if number is not None:
            out[name] = number
    for key, name in (("seed", sc.REQUEST_SEED), ("top_k", sc.REQUEST_TOP_K)):
        integer = _integer(body.get(key))
        if integer is not None:
            out[name] = integer
    stops = _strings(body.get("stop_sequences" if record.protocol == "anthropic" else "stop"))
    if stops:
        out[sc.REQUEST_STOP_SEQUENCES] = stops
    choices = _integer(body.get("n"))
    if choices is not None and choices != 1:
        out[sc.REQUEST_CHOICE_COUNT] = choices
    tier = body.get("service_tier")
    if record.protocol == "openai" and isinstance(tier, str) and tier != "auto":
        out[sc.OPENAI_REQUEST_SERVICE_TIER] = tier
    return out


_USAGE_ATTRIBUTES = (("input", sc.USAGE_INPUT_TOKENS), ("output", sc.USAGE_OUTPUT_TOKENS),
                     ("cached_input", sc.USAGE_CACHE_READ_INPUT_TOKENS),
                     ("cache_write", sc.USAGE_CACHE_CREATION_INPUT_TOKENS),
                     ("reasoning", sc.USAGE_REASONING_OUTPUT_TOKENS))


def span_attributes(record: UsageRecord, server: Server | None) -> dict[str, AttributeValue]:
    """Every attribute of the call's span except message content. No secrets: the record
    carries none (virtual keys are named, never included; headers are not in it)."""
    a: dict[str, AttributeValue] = {}
    operation = operation_name(record)
    if operation is not None:
        a[sc.OPERATION_NAME] = operation
    a[sc.PROVIDER_NAME] = record.provider
    model = request_model(record)
    if model is not None:
        a[sc.REQUEST_MODEL] = model
    if server is not None:
        a[sc.SERVER_ADDRESS] = server[0]
        if server[1] is not None:
            a[sc.SERVER_PORT] = server[1]
    a.update(request_attributes(record))
    if record.response_id:
        a[sc.RESPONSE_ID] = record.response_id
    if record.response_model:
        a[sc.RESPONSE_MODEL] = record.response_model
    if record.finish_reasons:
        a[sc.RESPONSE_FINISH_REASONS] = record.finish_reasons
    if record.stream and record.ttft_s is not None:
        a[sc.RESPONSE_TIME_TO_FIRST_CHUNK] = record.ttft_s
    for token_type, name in _USAGE_ATTRIBUTES:
        count = record.usage.get(token_type)
        if count is not None:
            a[name] = count
    if record.service_tier and record.protocol == "openai":
        a[sc.OPENAI_RESPONSE_SERVICE_TIER] = record.service_tier
    if record.status and not record.client_closed:
        a[sc.HTTP_RESPONSE_STATUS_CODE] = record.status
    error = error_type(record)
    if error is not None:
        a[sc.ERROR_TYPE] = error
    # ours
    a[sc.SPENDGATE_UPSTREAM] = record.upstream
    a[sc.SPENDGATE_PROJECT] = record.project
    if record.user:
        a[sc.SPENDGATE_USER] = record.user
    for key, value in record.tags.items():
        a[sc.SPENDGATE_TAG_PREFIX + key] = value
    if record.request_id:
        a[sc.SPENDGATE_REQUEST_ID] = record.request_id
    if record.client_closed:  # absent means false: every attribute costs export time
        a[sc.SPENDGATE_CLIENT_CLOSED] = True
    if record.metered and not record.usage.is_empty:
        a[sc.SPENDGATE_USAGE_SOURCE] = "estimated" if record.usage.estimated else "reported"
        if record.priced:
            # A double for the backends to sum; the exact Decimal lives in /metrics.
            a[sc.SPENDGATE_COST_USD] = float(record.cost_usd)
            if record.price_tier:
                a[sc.SPENDGATE_PRICE_TIER] = record.price_tier
            if record.context_tier:
                a[sc.SPENDGATE_PRICE_CONTEXT_TIER] = record.context_tier
            if record.fees_usd:
                a[sc.SPENDGATE_COST_FEES_USD] = float(record.fees_usd)
            if record.price_source == "gpu_allocation":  # a share of a GPU bill
                a[sc.SPENDGATE_PRICE_SOURCE] = record.price_source
        else:
            a[sc.SPENDGATE_PRICED] = False
    if record.budget_decision is not None:  # "allowed" | "blocked" by a block budget
        a[sc.SPENDGATE_BUDGET_DECISION] = record.budget_decision
    return a


def metric_attributes(record: UsageRecord, server: Server | None, request_model_label: str,
                      response_model_label: str) -> dict[str, str | int]:
    """Attributes common to the convention's client metrics (model values already capped)."""
    a: dict[str, str | int] = {sc.OPERATION_NAME: operation_name(record) or sc.OTHER_OPERATION,
                               sc.PROVIDER_NAME: record.provider}
    if request_model_label:
        a[sc.REQUEST_MODEL] = request_model_label
    if response_model_label:
        a[sc.RESPONSE_MODEL] = response_model_label
    if server is not None:
        a[sc.SERVER_ADDRESS] = server[0]
        if server[1] is not None:
            a[sc.SERVER_PORT] = server[1]
    return a


def servers(upstreams: Mapping[str, Any]) -> dict[str, Server]:
    """``server.address``/``server.port`` of each upstream (objects with ``host``, ``port``)."""
    return {name: (target.host, target.port) for name, target in upstreams.items()}
