"""The AWS Bedrock Runtime wire protocol: Converse and InvokeModel, streamed and not.

Paths (the lenient view; the model id is percent-encoded by the SDKs, ``:`` as ``%3A``, and
an ARN's ``/`` as ``%2F``, which routing lets through after ``model``)::

    POST /model/{modelId}/converse                     -> chat, buffered
    POST /model/{modelId}/converse-stream              -> chat, streamed
    POST /model/{modelId}/invoke                       -> chat, buffered
    POST /model/{modelId}/invoke-with-response-stream  -> chat, streamed
    anything else (count-tokens, async-invoke, guardrails) -> other: forwarded, never charged

The model is the id in the path (``us.anthropic.claude-sonnet-4-5-20250929-v1:0``; of an
inference-profile ARN, the part after its last ``/``). Streams are event-stream frames
(``eventstream.EventStreamSplitter``), each forwarded untouched once complete.

Usage:

- Converse: ``usage`` of the response, or of the stream's ``metadata`` event.
  ``inputTokens`` excludes the cache, as Anthropic's does: ``input = inputTokens +
  cacheReadInputTokens + cacheWriteInputTokens``, ``cached_input = cacheReadInputTokens``,
  ``cache_write = cacheWriteInputTokens``, ``output = outputTokens``.
- InvokeModel: the model's own body. Anthropic models (``"type": "message"``, and in a stream
  the decoded ``chunk`` events) are read by the Anthropic reader; Amazon Nova's ``usage`` as
  Converse's; Meta Llama's ``prompt_token_count`` / ``generation_token_count``; Titan
  embeddings' ``inputTextTokenCount``. A stream's last chunk carries
  ``amazon-bedrock-invocationMetrics`` (``inputTokenCount``, ``outputTokenCount``,
  ``cacheRead/WriteInputTokenCount``), used for every count the model's own events left out.

No response model is reported: an Anthropic body's ``model`` (``claude-sonnet-4-5-20250929``)
names the model family, and would be priced at Anthropic's own rates, not at those of the
Bedrock model id called (a ``us.`` inference profile costs 10% more).

An ``exception`` frame after the 200 (``modelStreamErrorException``, throttling...) makes
the call an error of that type (``ResponseSummary.error_type``). Nothing here raises.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import replace
from typing import Any

from spendgate.providers.anthropic import AnthropicProvider, AnthropicStreamTracker
from spendgate.providers.base import RequestInfo, ResponseSummary, StreamSplitter, StreamTracker
from spendgate.providers.eventstream import EventStreamSplitter
from spendgate.providers.jsonread import (
    append_text,
    as_dict,
    as_str,
    count,
    loads_object,
    over_limit,
)
from spendgate.providers.sse import SSEEvent
from spendgate.usage import Usage

_ACTIONS = {"converse": False, "converse-stream": True, "invoke": False,
            "invoke-with-response-stream": True}
_EVENTSTREAM = "application/vnd.amazon.eventstream"
# Exception frames Bedrock documents; any other name is reported as a generic stream error
# (the name becomes a label value: an upstream must not be able to invent them).
_EXCEPTIONS = frozenset({"internalServerException", "modelStreamErrorException",
                         "validationException", "throttlingException",
                         "serviceUnavailableException", "modelTimeoutException"})
_ANTHROPIC = AnthropicProvider()


def converse_usage(raw: Any) -> Usage:
    """Normalise a Converse ``usage`` (or Nova's, or ``invocationMetrics``) object."""
    raw = as_dict(raw)
    base = count(raw.get("inputTokens", raw.get("inputTokenCount")))
    read = count(raw.get("cacheReadInputTokens", raw.get("cacheReadInputTokenCount")))
    write = count(raw.get("cacheWriteInputTokens", raw.get("cacheWriteInputTokenCount")))
    return Usage(input=None if base is None else base + (read or 0) + (write or 0),
                 output=count(raw.get("outputTokens", raw.get("outputTokenCount"))),
                 cached_input=read, cache_write=write)


def _model_and_action(path: str) -> tuple[str, str] | None:
    """(model id, action lower-cased) of ``.../model/{id...}/{action}``."""
    at = path.lower().find("/model/")
    model, slash, action = path[at + 7:].rstrip("/").rpartition("/")
    if at < 0 or not slash or not model:
        return None
    if model.lower().startswith("arn:"):
        model = model.rpartition("/")[2]
    return model, action.lower()


def _prompt_view(parsed: dict[str, Any]) -> dict[str, Any]:
    """Converse and Anthropic-style bodies in the estimator's chat shape."""
    messages = [m for m in parsed.get("messages") or () if isinstance(m, dict)]
    system = parsed.get("system")
    if system:
        messages.insert(0, {"role": "system", "content": system})
    if not messages:
        for name in ("prompt", "inputText"):  # Llama, Titan
            if isinstance(parsed.get(name), str):
                messages.append({"role": "user", "content": parsed[name]})
    return {"messages": messages}


def _max_tokens(parsed: dict[str, Any]) -> tuple[int | None, str | None]:
    config = as_dict(parsed.get("inferenceConfig"))
    titan = as_dict(parsed.get("textGenerationConfig"))
    for where, name in ((config, "maxTokens"), (config, "max_new_tokens"),
                        (parsed, "max_tokens"), (parsed, "max_gen_len"),
                        (titan, "maxTokenCount")):
        if name in where:
            return count(where[name]), over_limit(where, (name,))
    return None, None


def _message_text(parts: list[str], content: Any) -> None:
    for block in content if isinstance(content, list) else ():
        block = as_dict(block)
        append_text(parts, block.get("text"))
        append_text(parts, as_dict(block.get("reasoningContent")).get("text"))


class BedrockProvider:
    """Bedrock Runtime protocol. Stateless; see the module docstring for the contract."""

    name = "bedrock"
    encoded_slash_after: frozenset[str] = frozenset({"model"})  # ARNs hold %2F
    key_header = "authorization"   # Bedrock API keys: Bearer
    key_query: str | None = None

    def parse_request(self, method: str, path: str, body: bytes) -> RequestInfo:
        """Classify the call from its path; the body is always forwarded unchanged."""
        call = _model_and_action(path) if method.upper() == "POST" else None
        if call is None or call[1] not in _ACTIONS:
            return RequestInfo(operation="other", model=call[0] if call else None,
                               stream=False, upstream_body=body, metered=False)
        model, action = call
        parsed = loads_object(body)
        max_tokens, invalid = _max_tokens(parsed) if parsed is not None else (None, None)
        return RequestInfo(
            operation="chat", model=model, stream=_ACTIONS[action], upstream_body=body,
            json=parsed, max_tokens=max_tokens, invalid=invalid,
            prompt_view=_prompt_view(parsed) if parsed is not None else None,
            reader="converse" if action.startswith("converse") else "invoke")

    def parse_response(self, info: RequestInfo, body: bytes) -> ResponseSummary:
        """Usage and metadata of a complete response body; empty summary on anything odd."""
        if not info.metered:
            return ResponseSummary()
        parsed = loads_object(body)
        if parsed is None:
            return ResponseSummary()
        if parsed.get("type") == "message":  # an Anthropic model through InvokeModel
            return replace(_ANTHROPIC.parse_response(info, body), response_model=None)
        parts: list[str] = []
        message = as_dict(as_dict(parsed.get("output")).get("message"))
        _message_text(parts, message.get("content"))             # Converse, Nova
        append_text(parts, parsed.get("generation"))              # Llama
        usage = converse_usage(parsed.get("usage"))
        if usage.is_empty:
            prompt = count(parsed.get("prompt_token_count", parsed.get("inputTextTokenCount")))
            usage = Usage(input=prompt, output=count(parsed.get("generation_token_count")))
        stop = as_str(parsed.get("stopReason")) or as_str(parsed.get("stop_reason"))
        return ResponseSummary(usage=usage, finish_reasons=(stop,) if stop else (),
                               output_text="".join(parts))

    def stream_tracker(self, info: RequestInfo) -> StreamTracker:
        if info.reader == "converse":
            return ConverseStreamTracker()
        return InvokeStreamTracker()

    def stream_splitter(self, info: RequestInfo, content_type: str,
                        max_event: int) -> StreamSplitter | None:
        if content_type.startswith(_EVENTSTREAM):
            return EventStreamSplitter(max_event)
        return None


def _stream_error(name: str | None) -> str | None:
    """The error type of an ``exception:`` / ``error:`` frame, else None."""
    if name is None or not name.startswith(("exception:", "error:")):
        return None
    kind = name.partition(":")[2]
    return kind if kind in _EXCEPTIONS else "upstream_stream_error"


class ConverseStreamTracker:
    """Follows a ConverseStream: text deltas, ``messageStop``, usage in ``metadata``."""

    __slots__ = ("_error", "_parts", "_stop", "_usage")

    def __init__(self) -> None:
        self._usage = Usage()
        self._parts: list[str] = []
        self._stop: str | None = None
        self._error: str | None = None

    def feed(self, event: SSEEvent) -> bool:
        self._error = _stream_error(event.event) or self._error
        if event.event not in ("contentBlockDelta", "messageStop", "metadata"):
            return True
        data = loads_object(event.data)
        if data is None:
            return True
        if event.event == "contentBlockDelta":
            delta = as_dict(data.get("delta"))
            append_text(self._parts, delta.get("text"))
            append_text(self._parts, as_dict(delta.get("toolUse")).get("input"))
            append_text(self._parts, as_dict(delta.get("reasoningContent")).get("text"))
        elif event.event == "messageStop":
            self._stop = as_str(data.get("stopReason")) or self._stop
        else:
            self._usage = converse_usage(data.get("usage"))
        return True

    def summary(self) -> ResponseSummary:
        return ResponseSummary(usage=self._usage, finish_reasons=(self._stop,) if self._stop
                               else (), output_text="".join(self._parts), error_type=self._error)


class InvokeStreamTracker:
    """Follows an InvokeModelWithResponseStream: each ``chunk`` event holds one of the
    model's own stream events, base64-encoded in ``bytes``. Anthropic ones go to an
    ``AnthropicStreamTracker``; ``amazon-bedrock-invocationMetrics`` fills the rest."""

    __slots__ = ("_anthropic", "_error", "_metrics", "_parts", "_stop")

    def __init__(self) -> None:
        self._anthropic = AnthropicStreamTracker()
        self._metrics = Usage()
        self._parts: list[str] = []
        self._stop: str | None = None
        self._error: str | None = None

    def feed(self, event: SSEEvent) -> bool:
        self._error = _stream_error(event.event) or self._error
        if event.event != "chunk":
            return True
        try:
            inner = base64.b64decode(as_str(as_dict(loads_object(event.data)).get("bytes"))
                                     or "", validate=True)
        except (binascii.Error, ValueError):
            return True
        data = loads_object(inner)
        if data is None:
            return True
        kind = as_str(data.get("type"))
        if kind is not None:  # an Anthropic Messages stream event
            self._anthropic.feed(SSEEvent(raw=b"", event=kind, data=inner))
        append_text(self._parts, data.get("generation"))                      # Llama
        append_text(self._parts, as_dict(as_dict(data.get("contentBlockDelta"))
                                         .get("delta")).get("text"))         # Nova
        self._stop = as_str(data.get("stop_reason")) or self._stop
        metrics = data.get("amazon-bedrock-invocationMetrics")
        if isinstance(metrics, dict):
            self._metrics = converse_usage(metrics)
        return True

    def summary(self) -> ResponseSummary:
        summary = self._anthropic.summary()
        summary.response_model = None  # see the module docstring
        summary.usage = self._metrics.merged(summary.usage)  # the model's own counts win
        summary.output_text += "".join(self._parts)
        if not summary.finish_reasons and self._stop:
            summary.finish_reasons = (self._stop,)
        summary.error_type = self._error
        return summary
