"""Every OpenTelemetry name spendgate emits, in one module: a rename is one edit here.

The GenAI names follow the semantic conventions v1.41 as released in
``opentelemetry-semantic-conventions`` 0.66b2 (imported from it, so they cannot drift from
that release). The GenAI conventions have since moved to the ``semantic-conventions-genai``
repository; its renames are not released yet. When they are, change the right-hand sides
below and nothing else. Our own attributes live under ``*``.

Prometheus sees the metrics under their OpenTelemetry-to-Prometheus translated names
(``prometheus_name``): dots become underscores and a unit of seconds becomes a
``_seconds`` suffix, while an annotation unit such as ``{token}`` adds nothing. Label names
are the attribute keys with dots as underscores (``prometheus_label``).
"""

from __future__ import annotations

from typing import Final

from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as _gen_ai
from opentelemetry.semconv._incubating.attributes import openai_attributes as _openai
from opentelemetry.semconv._incubating.metrics import gen_ai_metrics as _metrics
from opentelemetry.semconv.attributes import error_attributes as _error
from opentelemetry.semconv.attributes import http_attributes as _http
from opentelemetry.semconv.attributes import server_attributes as _server
from opentelemetry.semconv.attributes import service_attributes as _service

SEMCONV_VERSION: Final = "1.41.0"
SCOPE_NAME: Final = "spendgate"

# ---- resource ------------------------------------------------------------------------------
SERVICE_NAME: Final[str] = _service.SERVICE_NAME
SERVICE_VERSION: Final[str] = _service.SERVICE_VERSION

# ---- GenAI span and metric attributes -------------------------------------------------------
OPERATION_NAME: Final[str] = _gen_ai.GEN_AI_OPERATION_NAME
PROVIDER_NAME: Final[str] = _gen_ai.GEN_AI_PROVIDER_NAME
REQUEST_MODEL: Final[str] = _gen_ai.GEN_AI_REQUEST_MODEL
REQUEST_STREAM: Final[str] = _gen_ai.GEN_AI_REQUEST_STREAM
REQUEST_MAX_TOKENS: Final[str] = _gen_ai.GEN_AI_REQUEST_MAX_TOKENS
REQUEST_TEMPERATURE: Final[str] = _gen_ai.GEN_AI_REQUEST_TEMPERATURE
REQUEST_TOP_P: Final[str] = _gen_ai.GEN_AI_REQUEST_TOP_P
REQUEST_TOP_K: Final[str] = _gen_ai.GEN_AI_REQUEST_TOP_K
REQUEST_SEED: Final[str] = _gen_ai.GEN_AI_REQUEST_SEED
REQUEST_FREQUENCY_PENALTY: Final[str] = _gen_ai.GEN_AI_REQUEST_FREQUENCY_PENALTY
REQUEST_PRESENCE_PENALTY: Final[str] = _gen_ai.GEN_AI_REQUEST_PRESENCE_PENALTY
REQUEST_STOP_SEQUENCES: Final[str] = _gen_ai.GEN_AI_REQUEST_STOP_SEQUENCES
REQUEST_CHOICE_COUNT: Final[str] = _gen_ai.GEN_AI_REQUEST_CHOICE_COUNT
RESPONSE_ID: Final[str] = _gen_ai.GEN_AI_RESPONSE_ID
RESPONSE_MODEL: Final[str] = _gen_ai.GEN_AI_RESPONSE_MODEL
RESPONSE_FINISH_REASONS: Final[str] = _gen_ai.GEN_AI_RESPONSE_FINISH_REASONS
RESPONSE_TIME_TO_FIRST_CHUNK: Final[str] = _gen_ai.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK
USAGE_INPUT_TOKENS: Final[str] = _gen_ai.GEN_AI_USAGE_INPUT_TOKENS
USAGE_OUTPUT_TOKENS: Final[str] = _gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS
USAGE_CACHE_READ_INPUT_TOKENS: Final[str] = _gen_ai.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS
USAGE_CACHE_CREATION_INPUT_TOKENS: Final[str] = _gen_ai.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS
USAGE_REASONING_OUTPUT_TOKENS: Final[str] = _gen_ai.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS
TOKEN_TYPE: Final[str] = _gen_ai.GEN_AI_TOKEN_TYPE
INPUT_MESSAGES: Final[str] = _gen_ai.GEN_AI_INPUT_MESSAGES
OUTPUT_MESSAGES: Final[str] = _gen_ai.GEN_AI_OUTPUT_MESSAGES
SYSTEM_INSTRUCTIONS: Final[str] = _gen_ai.GEN_AI_SYSTEM_INSTRUCTIONS
OPENAI_REQUEST_SERVICE_TIER: Final[str] = _openai.OPENAI_REQUEST_SERVICE_TIER
OPENAI_RESPONSE_SERVICE_TIER: Final[str] = _openai.OPENAI_RESPONSE_SERVICE_TIER
SERVER_ADDRESS: Final[str] = _server.SERVER_ADDRESS
SERVER_PORT: Final[str] = _server.SERVER_PORT
HTTP_RESPONSE_STATUS_CODE: Final[str] = _http.HTTP_RESPONSE_STATUS_CODE
ERROR_TYPE: Final[str] = _error.ERROR_TYPE

# Well-known values. spendgate's operations map onto the convention's: the Responses API is
# a chat-style inference ("chat"); anything that is not inference (files, model lists) has
# no GenAI operation and is named by ``OTHER_OPERATION``.
OPERATIONS: Final[dict[str, str]] = {
    "chat": "chat",
    "responses": "chat",
    "text_completion": "text_completion",
    "embeddings": "embeddings",
}
OTHER_OPERATION: Final = "other"
TOKEN_TYPE_INPUT: Final = "input"
TOKEN_TYPE_OUTPUT: Final = "output"

# ---- ours ----------------------------------------------------------------------------------
SPENDGATE_COST_USD: Final = "spendgate.cost_usd"
SPENDGATE_PRICED: Final = "spendgate.priced"                  # set (false) when unpriced
SPENDGATE_PRICE_TIER: Final = "spendgate.price.tier"           # flex, priority, batch, standard
SPENDGATE_PRICE_CONTEXT_TIER: Final = "spendgate.price.context_tier"  # above_272k; absent: none
SPENDGATE_COST_FEES_USD: Final = "spendgate.cost.fees_usd"     # per-request fees in cost_usd
SPENDGATE_PRICE_SOURCE: Final = "spendgate.price.source"      # set when not a list price
SPENDGATE_PROJECT: Final = "spendgate.project"
SPENDGATE_USER: Final = "spendgate.user"
SPENDGATE_TAG_PREFIX: Final = "spendgate.tag."                 # + key: every tag of the call
SPENDGATE_UPSTREAM: Final = "spendgate.upstream"
SPENDGATE_USAGE_SOURCE: Final = "spendgate.usage.source"      # reported | estimated
SPENDGATE_BUDGET_DECISION: Final = "spendgate.budget.decision"
SPENDGATE_REQUEST_ID: Final = "spendgate.request_id"
SPENDGATE_CLIENT_CLOSED: Final = "spendgate.client_closed"     # set (true) on hang-ups

# ---- metrics -------------------------------------------------------------------------------
METRIC_TOKEN_USAGE: Final[str] = _metrics.GEN_AI_CLIENT_TOKEN_USAGE
METRIC_OPERATION_DURATION: Final[str] = _metrics.GEN_AI_CLIENT_OPERATION_DURATION
METRIC_TIME_TO_FIRST_CHUNK: Final[str] = _metrics.GEN_AI_CLIENT_OPERATION_TIME_TO_FIRST_CHUNK
METRIC_TIME_PER_OUTPUT_CHUNK: Final[str] = _metrics.GEN_AI_CLIENT_OPERATION_TIME_PER_OUTPUT_CHUNK

# The convention's advised ExplicitBucketBoundaries (gen-ai-metrics.md; the 0.66b2 factory
# helpers carry no advice, so they are set here).
TOKEN_BUCKETS: Final = (1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0,
                        262144.0, 1048576.0, 4194304.0, 16777216.0, 67108864.0)
DURATION_BUCKETS: Final = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24,
                           20.48, 40.96, 81.92)

# Units with a Prometheus suffix; annotation units ({token}) have none.
_UNIT_SUFFIX: Final = {"s": "seconds", "By": "bytes", "1": "ratio"}


def prometheus_name(name: str, unit: str) -> str:
    """``gen_ai.client.operation.duration``, ``s`` -> ``..._operation_duration_seconds``."""
    base = name.replace(".", "_")
    suffix = _UNIT_SUFFIX.get(unit)
    return f"{base}_{suffix}" if suffix and not base.endswith("_" + suffix) else base


def prometheus_label(key: str) -> str:
    """``gen_ai.request.model`` -> ``gen_ai_request_model``."""
    return key.replace(".", "_")
