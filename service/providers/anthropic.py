"""The Anthropic Messages API wire protocol.

``POST .../v1/messages`` (the path's lenient view, in any case) is the metered ``chat``
operation; Message Batches creation and results (``batch_create``, ``batch_results``) are
unmetered calls whose responses the accounting reads (``accounting.batches``); everything else
(``/v1/messages/count_tokens``, models) is ``other`` and unmetered. Bodies are never
rewritten: Anthropic streams always carry usage. A streamed call looks like::

    event: message_start
    data: {"type":"message_start","message":{"id":"msg_01","model":"claude-sonnet-4-5",
           "usage":{"input_tokens":12,"cache_creation_input_tokens":0,
                    "cache_read_input_tokens":2048,"output_tokens":1}}}

    event: content_block_delta
    data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}

    event: message_delta
    data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},
           "usage":{"output_tokens":57}}

    event: message_stop
    data: {"type":"message_stop"}

Usage mapping: Anthropic's ``input_tokens`` excludes cache tokens, so
``input = input_tokens + cache_creation_input_tokens + cache_read_input_tokens``;
``cached_input = cache_read_input_tokens``; ``cache_write = cache_creation_input_tokens``;
``output = output_tokens``; ``reasoning = output_tokens_details.thinking_tokens``;
``cache_write_1h = cache_creation.ephemeral_1h_input_tokens`` (the rest of the writes are the
5-minute cache; without ``cache_creation_input_tokens`` the two TTLs add up to cache_write);
``web_search``/``web_fetch = server_tool_use.web_search_requests``/``web_fetch_requests``. A
field the upstream did not send stays None (input is then ``input_tokens`` alone); without
``input_tokens`` the total is unknown, so input stays None.

Streamed output is taken only from ``message_delta`` (cumulative; the last one wins). The
``output_tokens`` in ``message_start`` is a provisional count (usually 1) and is ignored: a
stream cut off before ``message_delta`` reports output None, so the pipeline estimates it
from the text seen instead of billing a placeholder. Input and cache counts come from
``message_start``; any of them repeated in ``message_delta`` (newer API versions, server
tools) win, as in Anthropic's own SDK: ``message_delta`` usage is cumulative, so a field in it
replaces the one held (never added to it).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from spendgate.providers.base import (
    BatchLine,
    RequestInfo,
    ResponseSummary,
    StreamSplitter,
    StreamTracker,
    sse_splitter,
)
from spendgate.providers.jsonread import (
    append_text,
    as_dict,
    as_str,
    count,
    event_object,
    loads_object,
    over_limit,
)
from spendgate.providers.sse import SSEEvent
from spendgate.usage import Usage

_OPENS_OBJECT = re.compile(rb"[ \t\n\r]*\{")
# Bounded by jsonread.LIMIT_MAX: over it, the request is invalid (400, never forwarded).
_LIMITS = ("max_tokens",)
# Input-side fields of ``usage``: from message_start, overridden by message_delta.
_INPUT_FIELDS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens",
                 "cache_creation")
# Only these events carry anything we read; ping, content_block_start/stop, message_stop
# and error are forwarded without parsing.
_WANTED = frozenset({"message_start", "content_block_delta", "message_delta"})
# content_block_delta payload field per delta type; all of it is generated output.
_DELTA_TEXT = {"text_delta": "text", "thinking_delta": "thinking",
               "input_json_delta": "partial_json"}






def anthropic_usage(raw: dict[str, Any]) -> Usage:
    """Normalise Anthropic usage fields (see the module docstring) into ``Usage``."""
    base = count(raw.get("input_tokens"))
    ttl = as_dict(raw.get("cache_creation"))
    five, hour = count(ttl.get("ephemeral_5m_input_tokens")), count(
        ttl.get("ephemeral_1h_input_tokens"))
    cache_write = count(raw.get("cache_creation_input_tokens"))
    if cache_write is None and (five is not None or hour is not None):
        cache_write = (five or 0) + (hour or 0)
    cache_read = count(raw.get("cache_read_input_tokens"))
    total = None if base is None else base + (cache_write or 0) + (cache_read or 0)
    tools = as_dict(raw.get("server_tool_use"))
    return Usage(
        input=total,
        output=count(raw.get("output_tokens")),
        cached_input=cache_read,
        cache_write=cache_write,
        reasoning=count(as_dict(raw.get("output_tokens_details")).get("thinking_tokens")),
        cache_write_1h=hour,
        web_search=count(tools.get("web_search_requests")),
        web_fetch=count(tools.get("web_fetch_requests")),
    )


def _batch_request(method: str, path: str) -> tuple[str, str | None] | None:
    """Message Batches calls the accounting reads: ``POST .../messages/batches``
    (batch_create) and ``GET .../messages/batches/{id}/results`` (batch_results)."""
    parts = path.split("/")
    lower = [p.lower() for p in parts]
    if method == "POST" and lower[-2:] == ["messages", "batches"]:
        return "batch_create", None
    if method == "GET" and len(parts) >= 4 and lower[-4:-2] == ["messages", "batches"] and (
            lower[-1] == "results"):
        return "batch_results", parts[-2]
    return None


def batch_ids(body: bytes) -> tuple[str | None, str | None]:
    """(batch id, None) of a Message Batch object: its results are fetched by batch id."""
    return as_str((loads_object(body) or {}).get("id")), None


def batch_results(body: bytes) -> list[BatchLine]:
    """The lines of a Message Batch's results (JSONL: ``{"custom_id", "result": {"type":
    "succeeded", "message": {...}}}``; errored, canceled and expired lines cost nothing)."""
    lines: list[BatchLine] = []
    for raw in body.splitlines():
        line = loads_object(raw) if raw.strip() else None
        result = as_dict(line.get("result")) if line is not None else {}
        if line is None or not result:
            continue
        kind = as_str(result.get("type")) or "errored"
        message = as_dict(result.get("message"))
        lines.append(BatchLine(
            key=as_str(line.get("custom_id")) or str(len(lines)),
            model=as_str(message.get("model")),
            usage=anthropic_usage(as_dict(message.get("usage"))),
            status=200 if kind == "succeeded" else 500,
            error_type=None if kind == "succeeded" else kind,
            response_id=as_str(message.get("id"))))
    return lines


class AnthropicProvider:
    """Anthropic Messages protocol. Stateless; see the module docstring for the contract."""

    name = "anthropic"
    encoded_slash_after: frozenset[str] = frozenset()  # no Messages path holds an encoded "/"
    key_header = "x-api-key"
    key_query: str | None = None

    def parse_request(self, method: str, path: str, body: bytes) -> RequestInfo:
        """Classify the call; the body is always forwarded unchanged. Never raises."""
        path = path.partition("?")[0].rstrip("/")
        if batch := _batch_request(method.upper(), path):
            return RequestInfo(operation=batch[0], model=None, stream=False, upstream_body=body,
                               metered=False, keep_body=True, batch_ref=batch[1])
        path = path.lower()
        post = method.upper() == "POST"
        metered = post and (path.endswith("/messages") or path == "messages")
        parsed: dict[str, Any] | None = None
        if metered or (post and _OPENS_OBJECT.match(body)):
            parsed = loads_object(body)
        if parsed is None:
            return RequestInfo(operation="chat" if metered else "other", model=None,
                               stream=False, upstream_body=body, metered=metered)
        return RequestInfo(
            operation="chat" if metered else "other",
            model=as_str(parsed.get("model")),
            stream=metered and parsed.get("stream") is True,
            upstream_body=body,
            json=parsed,
            max_tokens=count(parsed.get("max_tokens")) if metered else None,
            metered=metered,
            invalid=over_limit(parsed, _LIMITS) if metered else None,
        )

    def parse_response(self, info: RequestInfo, body: bytes) -> ResponseSummary:
        """Usage and metadata of a complete Message; empty summary on anything odd."""
        if not info.metered:
            return ResponseSummary()
        message = loads_object(body)
        if message is None:
            return ResponseSummary()
        usage = as_dict(message.get("usage"))
        parts: list[str] = []
        content = message.get("content")
        for block in content if isinstance(content, list) else ():
            block = as_dict(block)
            kind = block.get("type")
            if kind == "text":
                append_text(parts, block.get("text"))
            elif kind == "thinking":
                append_text(parts, block.get("thinking"))
            elif kind == "tool_use" and isinstance(block.get("input"), dict):
                # The model generated this JSON; count it like streamed input_json_delta.
                parts.append(orjson.dumps(block["input"]).decode())
        stop = as_str(message.get("stop_reason"))
        return ResponseSummary(
            usage=anthropic_usage(usage),
            response_model=as_str(message.get("model")),
            response_id=as_str(message.get("id")),
            finish_reasons=(stop,) if stop else (),
            service_tier=as_str(usage.get("service_tier")),
            output_text="".join(parts),
        )

    def stream_tracker(self, info: RequestInfo) -> StreamTracker:
        return AnthropicStreamTracker()

    def stream_splitter(self, info: RequestInfo, content_type: str,
                        max_event: int) -> StreamSplitter | None:
        return sse_splitter(content_type, max_event)




class AnthropicStreamTracker:
    """Follows one Messages stream; forwards every event (``feed`` always returns True)."""

    __slots__ = ("_id", "_model", "_parts", "_stop", "_tier", "_usage")

    def __init__(self) -> None:
        self._usage: dict[str, Any] = {}  # raw Anthropic usage fields, merged as they come
        self._id: str | None = None
        self._model: str | None = None
        self._stop: str | None = None
        self._tier: str | None = None
        self._parts: list[str] = []

    def feed(self, event: SSEEvent) -> bool:
        data = event_object(event, _WANTED)
        if data is None:
            return True
        kind = data.get("type")
        if kind == "content_block_delta":
            delta = as_dict(data.get("delta"))
            delta_type = delta.get("type")
            field = _DELTA_TEXT.get(delta_type) if isinstance(delta_type, str) else None
            if field is not None:
                append_text(self._parts, delta.get(field))
        elif kind == "message_start":
            message = as_dict(data.get("message"))
            self._id = as_str(message.get("id")) or self._id
            self._model = as_str(message.get("model")) or self._model
            usage = as_dict(message.get("usage"))
            self._tier = as_str(usage.get("service_tier")) or self._tier
            # Input side only: message_start's output_tokens is a provisional placeholder.
            for name in _INPUT_FIELDS:
                if count(usage.get(name)) is not None or isinstance(usage.get(name), dict):
                    self._usage[name] = usage[name]
        elif kind == "message_delta":
            self._stop = as_str(as_dict(data.get("delta")).get("stop_reason")) or self._stop
            usage = as_dict(data.get("usage"))
            self._tier = as_str(usage.get("service_tier")) or self._tier
            for name, value in usage.items():
                if value is not None:  # present values win; nulls do not erase
                    self._usage[name] = value
        return True

    def summary(self) -> ResponseSummary:
        return ResponseSummary(
            usage=anthropic_usage(self._usage), response_model=self._model,
            response_id=self._id, finish_reasons=(self._stop,) if self._stop else (),
            service_tier=self._tier, output_text="".join(self._parts))
