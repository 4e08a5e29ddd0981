"""The OpenAI-compatible wire protocol: OpenAI, Azure OpenAI, vLLM, Ollama, TGI, llama.cpp.

Operations come from the suffix of the upstream path (its lenient view, matched without
regard to case, as ASP.NET-style servers route), so any base prefix works (Azure's
``/openai/deployments/{name}/...`` too; ``{name}`` is the model when the body has none)::

    POST .../chat/completions -> chat             POST .../embeddings -> embeddings
    POST .../completions      -> text_completion  POST .../responses  -> responses
    anything else             -> other (metered=False, only "model" read from JSON)

Batches: ``POST .../batches`` (batch_create), ``GET .../batches/{id}`` (batch_status) and
``GET .../files/{id}/content`` (batch_results) are unmetered, but their responses are kept
for the accounting (``accounting.batches``), which accounts each line of a batch output file.

A streamed chat/completion call reports usage only when asked, so the proxy asks. The body::

    {"model":"gpt-4o","stream":true,"messages":[...]}

goes upstream with bytes inserted after the opening brace, the rest byte for byte::

    {"stream_options":{"include_usage":true},"model":"gpt-4o","stream":true,"messages":[...]}

(an existing ``stream_options`` is re-serialised keeping its other options, unless only
the lenient reading of ``jsonread`` could read the body: then it goes as sent, and usage is
estimated; with ``include_usage: true`` already, or no stream, the body is the caller's
object) and the tracker hides the extra usage-only chunk the caller did not ask for::

    data: {"id":"chatcmpl-1","object":"chat.completion.chunk","model":"gpt-4o","choices":[],
           "usage":{"prompt_tokens":1200,"completion_tokens":80,
                    "prompt_tokens_details":{"cached_tokens":1024}}}

With ``include_usage`` OpenAI also adds ``"usage":null`` to every other chunk; a caller that
did not ask for usage gets each such chunk with exactly that member (and one comma) cut out of
the provider's bytes, nothing re-encoded: ``..."choices":[...],"usage":null,"obfuscation":"x"}``
becomes ``..."choices":[...],"obfuscation":"x"}``, as the provider sends it unasked.

``max_tokens``, ``max_completion_tokens``, ``max_output_tokens`` and ``n`` over
``jsonread.LIMIT_MAX`` (2^31 - 1) make the request ``invalid`` (a 400, never forwarded).

Usage: ``prompt_tokens``/``input_tokens`` -> input (cached included, as OpenAI reports it),
``*_details.cached_tokens`` -> cached_input, ``cache_write_tokens`` (only if an upstream
reports it) -> cache_write, ``audio_tokens``/``image_tokens`` -> input_audio/input_image,
``completion_tokens``/``output_tokens`` -> output, ``reasoning_tokens`` -> reasoning, the
output details' ``audio_tokens`` -> output_audio; a Responses ``output`` list's
``web_search_call`` items -> web_search (0 when it has none). ``service_tier`` is the tier
served (the final Responses event's, not ``response.created``'s, which echoes the request).
Unreported fields stay None. Nothing here raises.
"""

from __future__ import annotations

import re
from dataclasses import replace
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
    read_object,
)
from spendgate.providers.sse import SSEEvent, parse_event
from spendgate.usage import Usage

_INCLUDE_USAGE = b'"stream_options":{"include_usage":true}'
# JSON whitespace then a brace; matched in place so a large body is never copied.
_OPENS_OBJECT = re.compile(rb"[ \t\n\r]*\{")
_CLOSES_OBJECT = re.compile(rb"[ \t\n\r]*\}")
# Responses API events worth parsing; every other event is forwarded without a look.
_RESPONSES_FINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
_RESPONSES_DELTAS = frozenset({"response.output_text.delta", "response.refusal.delta",
                               "response.function_call_arguments.delta"})
_RESPONSES_WANTED = _RESPONSES_FINAL | _RESPONSES_DELTAS | {"response.created"}
# Bounded by jsonread.LIMIT_MAX, whichever operation: an upstream may honour any of them.
_LIMITS = ("max_tokens", "max_completion_tokens", "max_output_tokens", "n")
# Checked in order: "/chat/completions" also ends with "/completions".
# The member cut from chunks the caller did not ask usage for, and the comma beside it.
_USAGE_NULL = re.compile(rb'"usage"[ \t\n\r]*:[ \t\n\r]*null')
_COMMA_AFTER = re.compile(rb"[ \t\n\r]*,")
_COMMA_BEFORE = re.compile(rb",[ \t\n\r]*$")
_OPERATIONS = (("/chat/completions", "chat"), ("/completions", "text_completion"),
               ("/embeddings", "embeddings"), ("/responses", "responses"))










def openai_usage(raw: Any) -> Usage:
    """Normalise a chat/completions/embeddings or Responses API ``usage`` object."""
    if not isinstance(raw, dict):
        return Usage()
    chat_style = "prompt_tokens" in raw
    details = as_dict(raw.get("prompt_tokens_details" if chat_style else "input_tokens_details"))
    out_details = as_dict(raw.get("completion_tokens_details" if chat_style
                                else "output_tokens_details"))
    return Usage(
        input=count(raw.get("prompt_tokens" if chat_style else "input_tokens")),
        output=count(raw.get("completion_tokens" if chat_style else "output_tokens")),
        cached_input=count(details.get("cached_tokens")),
        cache_write=count(details.get("cache_write_tokens")),
        reasoning=count(out_details.get("reasoning_tokens")),
        input_audio=count(details.get("audio_tokens")),
        input_image=count(details.get("image_tokens")),
        output_audio=count(out_details.get("audio_tokens")),
    )


def responses_usage(response: dict[str, Any]) -> Usage:
    """A Responses API ``response`` object's usage, with its ``web_search_call`` output items
    counted as web searches (each is billed per call)."""
    usage = openai_usage(response.get("usage"))
    output = response.get("output")
    if not isinstance(output, list):
        return usage
    searches = sum(as_dict(item).get("type") == "web_search_call" for item in output)
    return replace(usage, web_search=searches)


def _operation(path: str) -> str:
    """The operation named by ``path`` (one leading slash, no trailing one, lower case)."""
    return next((op for suffix, op in _OPERATIONS if path.endswith(suffix)), "other")


def _batch_request(method: str, path: str) -> tuple[str, str | None] | None:
    """Batch API calls the accounting reads: ``POST .../batches`` (batch_create),
    ``GET .../batches/{id}`` (batch_status: its ``output_file_id``) and
    ``GET .../files/{id}/content`` (batch_results, when the file is a batch's output)."""
    parts = path.split("/")
    if method == "POST" and parts[-1].lower() == "batches":
        return "batch_create", None
    if method == "GET" and len(parts) >= 3 and parts[-2].lower() == "batches" and parts[-1]:
        return "batch_status", parts[-1]
    if (method == "GET" and len(parts) >= 4 and parts[-3].lower() == "files"
            and parts[-1].lower() == "content"):
        return "batch_results", parts[-2]
    return None


def batch_ids(body: bytes) -> tuple[str | None, str | None]:
    """(batch id, output file id) of a Batch object (create or retrieve response)."""
    batch = loads_object(body) or {}
    return as_str(batch.get("id")), as_str(batch.get("output_file_id"))


def batch_results(body: bytes) -> list[BatchLine]:
    """The result lines of a batch output file (JSONL: ``{"id", "custom_id", "response":
    {"status_code", "body"}, "error"}``); a line that is not one is skipped."""
    lines: list[BatchLine] = []
    for raw in body.splitlines():
        line = loads_object(raw) if raw.strip() else None
        if line is None or (not isinstance(line.get("response"), dict)
                            and not line.get("error")):
            continue
        response = as_dict(line.get("response"))
        result = as_dict(response.get("body"))
        status = count(response.get("status_code")) or 500
        usage = (responses_usage(result) if isinstance(result.get("output"), list)
                 else openai_usage(result.get("usage")))
        lines.append(BatchLine(
            key=as_str(line.get("id")) or as_str(line.get("custom_id")) or str(len(lines)),
            model=as_str(result.get("model")), usage=usage, status=status,
            error_type=None if 200 <= status < 300 else str(status),
            response_id=as_str(result.get("id"))))
    return lines


def _azure_deployment(path: str) -> str | None:
    """``my-gpt4o`` from ``/openai/deployments/my-gpt4o/chat/completions``."""
    _, found, rest = path.partition("/deployments/")
    name = rest.partition("/")[0]
    return name if found and name else None


def _with_include_usage(body: bytes, parsed: dict[str, Any], lenient: bool = False,
                        ) -> bytes | None:
    """``body`` asking for ``stream_options.include_usage``; None if it cannot be done safely.

    ``lenient``: only Python's json semantics read the body (``jsonread.read_object``).
    """
    options = parsed.get("stream_options")
    if "stream_options" not in parsed:
        # Insert bytes rather than re-serialise: the caller's body (key order, spacing,
        # number formatting) reaches the upstream unchanged apart from this one member.
        # The body parsed as an object, so its first byte that is not blank (or a BOM) is
        # the opening brace, unless it is UTF-16/32 (NULs), where no byte may be inserted.
        if lenient and b"\x00" in body[:4]:
            return None
        brace = body.index(b"{") + 1
        comma = b"" if _CLOSES_OBJECT.match(body, brace) else b","
        return body[:brace] + _INCLUDE_USAGE + comma + body[brace:]
    if lenient:  # orjson.dumps would not give back what the caller sent (NaN -> null)
        return None
    # stream_options exists (an object without include_usage true, or null): an inserted
    # duplicate key would lose to the caller's, so re-serialise keeping its other options.
    rewritten = dict(parsed)
    rewritten["stream_options"] = {**as_dict(options), "include_usage": True}
    try:
        return orjson.dumps(rewritten)
    except TypeError:  # orjson.JSONEncodeError; cannot happen for parsed JSON, but be safe
        return None


class OpenAIProvider:
    """OpenAI-compatible protocol. Stateless; see the module docstring for the contract."""

    name = "openai"
    encoded_slash_after: frozenset[str] = frozenset()  # no OpenAI path holds an encoded "/"
    key_header = "authorization"
    key_query: str | None = None

    def parse_request(self, method: str, path: str, body: bytes) -> RequestInfo:
        """Classify the call and apply the one sanctioned rewrite; never raises."""
        path = "/" + path.partition("?")[0].strip("/")
        post = method.upper() == "POST"
        operation = _operation(path.lower()) if post else "other"
        parsed: dict[str, Any] | None = None
        lenient = False
        # Unmetered calls (files, audio uploads, ...) are parsed only if they look like JSON.
        if operation != "other" or (post and _OPENS_OBJECT.match(body)):
            parsed, lenient = read_object(body)
        model = as_str(parsed.get("model")) if parsed is not None else None
        if not model:
            model = _azure_deployment(path)
        if parsed is None or operation == "other":
            batch = _batch_request(method.upper(), path) if operation == "other" else None
            return RequestInfo(operation=batch[0] if batch else operation, model=model,
                               stream=False, upstream_body=body, json=parsed,
                               metered=operation != "other", keep_body=batch is not None,
                               batch_ref=batch[1] if batch else None)

        stream = parsed.get("stream") is True
        if operation == "responses":
            max_tokens = count(parsed.get("max_output_tokens"))
        else:
            max_tokens = count(parsed.get("max_completion_tokens"))
            if max_tokens is None:
                max_tokens = count(parsed.get("max_tokens"))
        choices = count(parsed.get("n"))
        info = RequestInfo(operation=operation, model=model, stream=stream, upstream_body=body,
                           json=parsed, max_tokens=max_tokens,
                           choices=choices if choices and choices > 1 else 1,
                           invalid=over_limit(parsed, _LIMITS))
        if (stream and operation in ("chat", "text_completion")
                and as_dict(parsed.get("stream_options")).get("include_usage") is not True):
            rewritten = _with_include_usage(body, parsed, lenient)
            if rewritten is not None:
                info.upstream_body = rewritten
                info.strip_usage_chunk = True
        return info

    def parse_response(self, info: RequestInfo, body: bytes) -> ResponseSummary:
        """Usage and metadata of a complete response body; empty summary on anything odd."""
        if info.operation == "other":  # may be a large file download; usage is never there
            return ResponseSummary()
        parsed = loads_object(body)
        if parsed is None:
            return ResponseSummary()
        summary = ResponseSummary(
            usage=responses_usage(parsed),
            response_model=as_str(parsed.get("model")),
            response_id=as_str(parsed.get("id")),
            service_tier=as_str(parsed.get("service_tier")),
        )
        parts: list[str] = []
        output = parsed.get("output")
        if isinstance(output, list):  # Responses API
            status = as_str(parsed.get("status"))
            summary.finish_reasons = (status,) if status else ()
            for item in output:
                item = as_dict(item)
                append_text(parts, item.get("arguments"))  # function_call items
                content = item.get("content")
                for part in content if isinstance(content, list) else ():
                    append_text(parts, as_dict(part).get("text"))
        else:
            reasons: list[str] = []
            choices = parsed.get("choices")
            for choice in choices if isinstance(choices, list) else ():
                choice = as_dict(choice)
                append_text(reasons, choice.get("finish_reason"))
                append_text(parts, choice.get("text"))  # text completions
                _message_text(parts, as_dict(choice.get("message")))
            summary.finish_reasons = tuple(reasons)
        summary.output_text = "".join(parts)
        return summary

    def stream_tracker(self, info: RequestInfo) -> StreamTracker:
        if info.operation == "responses":
            return ResponsesStreamTracker()
        return ChatStreamTracker(strip_usage_chunk=info.strip_usage_chunk)

    def stream_splitter(self, info: RequestInfo, content_type: str,
                        max_event: int) -> StreamSplitter | None:
        return sse_splitter(content_type, max_event)




def without_usage_null(raw: bytes, chunk: dict[str, Any]) -> bytes | None:
    """``raw`` (one SSE event whose JSON object is ``chunk``, with ``"usage": null``) with
    that member and one comma beside it cut out, byte for byte otherwise; None when the cut
    is not certain (no single match, or the result does not read as ``chunk`` without it)."""
    found = _USAGE_NULL.findall(raw)
    if len(found) != 1:  # nested or escaped look-alikes: forward the bytes as they are
        return None
    match = _USAGE_NULL.search(raw)
    assert match is not None
    start, end = match.span()
    after = _COMMA_AFTER.match(raw, end)
    if after is not None:
        end = after.end()
    else:
        before = _COMMA_BEFORE.search(raw, 0, start)
        if before is None:
            return None
        start = before.start()
    cut = raw[:start] + raw[end:]
    # The one match might be a look-alike while the member itself is spelled with escapes:
    # the cut must read back as the chunk without "usage", or nothing is cut.
    if loads_object(parse_event(cut).data) != {k: v for k, v in chunk.items() if k != "usage"}:
        return None
    return cut


def _message_text(parts: list[str], message: dict[str, Any]) -> None:
    """Generated text of a chat ``message`` or stream ``delta``, reasoning and tool args too."""
    append_text(parts, message.get("reasoning_content"))  # vLLM, DeepSeek, llama.cpp
    append_text(parts, message.get("reasoning"))          # newer vLLM, OpenRouter
    append_text(parts, message.get("content"))
    append_text(parts, message.get("refusal"))
    tool_calls = message.get("tool_calls")
    for call in tool_calls if isinstance(tool_calls, list) else ():
        append_text(parts, as_dict(as_dict(call).get("function")).get("arguments"))


class ChatStreamTracker:
    """Follows a chat or text completion stream (``data: {chunk}`` ... ``data: [DONE]``).

    The last non-null ``usage`` wins (vLLM's ``continuous_usage_stats`` puts a running total
    on every chunk). With ``strip_usage_chunk``, ``feed`` returns False for the usage-only
    chunk (no choices, non-null usage) that only the proxy asked for, and the chunk without
    its ``"usage":null`` member (``without_usage_null``) for the others; True for all else.
    """

    __slots__ = ("_id", "_model", "_parts", "_reasons", "_strip", "_tier", "_usage")

    def __init__(self, strip_usage_chunk: bool = False) -> None:
        self._strip = strip_usage_chunk
        self._usage = Usage()
        self._id: str | None = None
        self._model: str | None = None
        self._tier: str | None = None
        self._parts: list[str] = []
        self._reasons: dict[int, str] = {}

    def feed(self, event: SSEEvent) -> bool | bytes:
        chunk = event_object(event)
        if chunk is None:
            return True
        if self._id is None:
            self._id = as_str(chunk.get("id"))
        if self._model is None:
            self._model = as_str(chunk.get("model"))
        self._tier = as_str(chunk.get("service_tier")) or self._tier
        choices = chunk.get("choices")
        for position, choice in enumerate(choices if isinstance(choices, list) else ()):
            choice = as_dict(choice)
            append_text(self._parts, choice.get("text"))  # text completions
            _message_text(self._parts, as_dict(choice.get("delta")))
            reason = as_str(choice.get("finish_reason"))
            if reason is not None:
                index = choice.get("index")
                self._reasons[index if type(index) is int else position] = reason
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self._usage = openai_usage(usage)
            if self._strip and not choices:
                return False
        elif self._strip and usage is None and "usage" in chunk:
            return without_usage_null(event.raw, chunk) or True
        return True

    def summary(self) -> ResponseSummary:
        return ResponseSummary(
            usage=self._usage, response_model=self._model, response_id=self._id,
            finish_reasons=tuple(self._reasons[i] for i in sorted(self._reasons)),
            service_tier=self._tier, output_text="".join(self._parts))


class ResponsesStreamTracker:
    """Follows a Responses API stream: typed events, usage in the final ``response.*``.

    ``response.created`` gives model and id early (kept if the stream is cut off), text
    deltas build ``output_text``, and ``response.completed`` (or ``.incomplete``/``.failed``)
    gives usage, model, id, status and the service tier used. Every event is forwarded.
    """

    __slots__ = ("_parts", "_summary")

    def __init__(self) -> None:
        self._summary = ResponseSummary()
        self._parts: list[str] = []

    def feed(self, event: SSEEvent) -> bool:
        data = event_object(event, _RESPONSES_WANTED)
        if data is None:
            return True
        kind = as_str(data.get("type"))  # a str: an unhashable type would break ``in``
        if kind in _RESPONSES_DELTAS:
            append_text(self._parts, data.get("delta"))
        elif kind == "response.created" or kind in _RESPONSES_FINAL:
            response = as_dict(data.get("response"))
            summary = self._summary
            summary.response_model = as_str(response.get("model")) or summary.response_model
            summary.response_id = as_str(response.get("id")) or summary.response_id
            if kind != "response.created":  # created has the tier asked for, not the one used
                summary.service_tier = as_str(response.get("service_tier"))
                summary.usage = responses_usage(response)
                status = as_str(response.get("status"))
                summary.finish_reasons = (status,) if status else ()
        return True

    def summary(self) -> ResponseSummary:
        return replace(self._summary, output_text="".join(self._parts))
