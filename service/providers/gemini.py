"""The Gemini API wire protocol: Google AI Studio, and the same bodies on Vertex AI.

The call is named by the last segment of the path's lenient view, ``{model}:{verb}`` (the
``:`` may have been sent as ``%3A``; verbs matched without regard to case), under any
prefix: ``/v1beta/models/gemini-2.5-pro:generateContent`` (AI Studio, ``v1`` alike) and
``/v1/projects/{p}/locations/{l}/publishers/google/models/gemini-2.5-pro:generateContent``
(Vertex AI). The model comes from the path, never the body::

    :generateContent        -> chat, buffered      :embedContent        -> embeddings
    :streamGenerateContent  -> chat, streamed      :batchEmbedContents  -> embeddings
    :countTokens (and any other verb or path) -> other: forwarded, never charged

A stream is SSE with ``?alt=sse`` (what the SDKs ask for), else one JSON array written in
pieces (``jsonarray.JsonArraySplitter``); both are forwarded as they arrive and read by the
same tracker. Vertex AI's Anthropic models (``publishers/anthropic/models/{m}:rawPredict``,
``:streamRawPredict``) carry Anthropic Messages bodies and are read by the Anthropic reader;
their token counter (``models/count-tokens:rawPredict``) is ``other``, never charged.

Usage, from ``usageMetadata``: ``promptTokenCount`` (which includes the cached part) plus
``toolUsePromptTokenCount`` -> input; ``cachedContentTokenCount`` -> cached_input;
``candidatesTokenCount + thoughtsTokenCount`` -> output (thinking is billed as output);
``thoughtsTokenCount`` -> reasoning. A stream repeats running totals on every chunk: the
last ``usageMetadata`` wins, never a sum. ``modelVersion`` is the response model,
``responseId`` its id. Nothing here raises.
"""

from __future__ import annotations

from typing import Any

from spendgate.providers.anthropic import AnthropicProvider
from spendgate.providers.base import (
    RequestInfo,
    ResponseSummary,
    StreamSplitter,
    StreamTracker,
    sse_splitter,
)
from spendgate.providers.jsonarray import JsonArraySplitter
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

# verb (lower case) -> (operation, streamed)
_VERBS = {"generatecontent": ("chat", False), "streamgeneratecontent": ("chat", True),
          "embedcontent": ("embeddings", False), "batchembedcontents": ("embeddings", False)}
_ANTHROPIC_VERBS = {"rawpredict": False, "streamrawpredict": True}
_LIMIT_NAMES = ("maxOutputTokens", "candidateCount")
_ANTHROPIC = AnthropicProvider()


def gemini_usage(raw: Any) -> Usage:
    """Normalise a ``usageMetadata`` object (see the module docstring)."""
    if not isinstance(raw, dict):
        return Usage()
    prompt = count(raw.get("promptTokenCount"))
    tool_prompt = count(raw.get("toolUsePromptTokenCount"))
    candidates = count(raw.get("candidatesTokenCount"))
    thoughts = count(raw.get("thoughtsTokenCount"))
    return Usage(
        input=None if prompt is None else prompt + (tool_prompt or 0),
        output=None if candidates is None and thoughts is None
        else (candidates or 0) + (thoughts or 0),
        cached_input=count(raw.get("cachedContentTokenCount")),
        reasoning=thoughts,
    )


def _call(path: str) -> tuple[str, str] | None:
    """(model, verb lower-cased) of a path ending in ``/{model}:{verb}``."""
    model, colon, verb = path.partition("?")[0].rstrip("/").rpartition("/")[2].rpartition(":")
    return (model, verb.lower()) if colon and model else None


def _prompt_view(operation: str, parsed: dict[str, Any]) -> dict[str, Any]:
    """The request's text in the shape the estimator reads (OpenAI chat / embeddings)."""
    if operation == "embeddings":
        requests = parsed.get("requests")
        contents = ([as_dict(r).get("content") for r in requests]
                    if isinstance(requests, list) else [parsed.get("content")])
        texts = [text for content in contents for text in _texts(as_dict(content))]
        return {"input": texts} if texts else {}
    messages: list[dict[str, Any]] = []
    system = as_dict(parsed.get("systemInstruction") or parsed.get("system_instruction"))
    if system:
        messages.append({"role": "system", "content": "".join(_texts(system))})
    turns: Any = parsed.get("contents")
    if isinstance(turns, str):
        turns = [{"role": "user", "parts": [{"text": turns}]}]
    for content in turns if isinstance(turns, list) else ():
        content = as_dict(content)
        messages.append({"role": as_str(content.get("role")) or "user",
                         "content": "".join(_texts(content))})
    view: dict[str, Any] = {"messages": messages}
    if parsed.get("tools"):
        view["tools"] = parsed["tools"]
    return view


def _texts(content: dict[str, Any]) -> list[str]:
    parts = content.get("parts")
    found: list[str] = []
    for part in parts if isinstance(parts, list) else ():
        append_text(found, as_dict(part).get("text"))
    return found


def _read_response(parsed: dict[str, Any], summary: ResponseSummary, parts: list[str],
                   reasons: list[str]) -> None:
    """Fold one ``GenerateContentResponse`` (a whole body, or a stream chunk) into
    ``summary``: usage and metadata replace, text and finish reasons accumulate."""
    if "usageMetadata" in parsed:
        summary.usage = gemini_usage(parsed["usageMetadata"])
    summary.response_model = as_str(parsed.get("modelVersion")) or summary.response_model
    summary.response_id = as_str(parsed.get("responseId")) or summary.response_id
    candidates = parsed.get("candidates")
    for candidate in candidates if isinstance(candidates, list) else ():
        candidate = as_dict(candidate)
        parts.extend(_texts(as_dict(candidate.get("content"))))
        append_text(reasons, candidate.get("finishReason"))


class GeminiProvider:
    """Gemini API protocol. Stateless; see the module docstring for the contract."""

    name = "gemini"
    encoded_slash_after: frozenset[str] = frozenset()
    key_header = "x-goog-api-key"
    key_query: str | None = "key"

    def parse_request(self, method: str, path: str, body: bytes) -> RequestInfo:
        """Classify the call from its path; the body is always forwarded unchanged."""
        call = _call(path) if method.upper() == "POST" else None
        if call is not None and call[1] in _ANTHROPIC_VERBS and call[0] != "count-tokens":
            info = _ANTHROPIC.parse_request("POST", "/v1/messages", body)
            info.model = call[0]  # Vertex takes the model from the path only
            info.stream = _ANTHROPIC_VERBS[call[1]] or info.stream
            info.reader = "anthropic"
            if info.json is not None:
                info.prompt_view = {"messages": [
                    *([{"role": "system", "content": info.json["system"]}]
                      if info.json.get("system") else []),
                    *(m for m in info.json.get("messages") or () if isinstance(m, dict))]}
            return info
        operation, stream = _VERBS.get(call[1], ("other", False)) if call else ("other", False)
        model = call[0] if call else None
        if operation == "other":
            return RequestInfo(operation="other", model=model, stream=False,
                               upstream_body=body, metered=False)
        parsed = loads_object(body)
        config = as_dict(parsed.get("generationConfig")) if parsed is not None else {}
        candidates = count(config.get("candidateCount"))
        return RequestInfo(
            operation=operation, model=model, stream=stream, upstream_body=body, json=parsed,
            max_tokens=count(config.get("maxOutputTokens")),
            choices=candidates if candidates and candidates > 1 else 1,
            invalid=over_limit(config, _LIMIT_NAMES),
            prompt_view=_prompt_view(operation, parsed) if parsed is not None else None)

    def parse_response(self, info: RequestInfo, body: bytes) -> ResponseSummary:
        """Usage and metadata of a complete response body; empty summary on anything odd."""
        if info.reader == "anthropic":
            return _ANTHROPIC.parse_response(info, body)
        if not info.metered:
            return ResponseSummary()
        summary, parts, reasons = ResponseSummary(), list[str](), list[str]()
        stripped = body.lstrip()
        if stripped.startswith(b"["):  # a streamed call's array, had it been buffered
            splitter = JsonArraySplitter(len(body) + 1)
            for event in splitter.feed(stripped):
                element = loads_object(event.data) if event.data else None
                if element is not None:
                    _read_response(element, summary, parts, reasons)
        elif (parsed := loads_object(body)) is not None:
            _read_response(parsed, summary, parts, reasons)
        summary.output_text, summary.finish_reasons = "".join(parts), tuple(reasons)
        return summary

    def stream_tracker(self, info: RequestInfo) -> StreamTracker:
        if info.reader == "anthropic":
            return _ANTHROPIC.stream_tracker(info)
        return GeminiStreamTracker()

    def stream_splitter(self, info: RequestInfo, content_type: str,
                        max_event: int) -> StreamSplitter | None:
        splitter = sse_splitter(content_type, max_event)
        if splitter is None and info.stream and info.reader is None and \
                content_type.startswith("application/json"):
            return JsonArraySplitter(max_event)
        return splitter


class GeminiStreamTracker:
    """Follows one Gemini stream, SSE events or array elements alike (each event's ``data``
    is one ``GenerateContentResponse``); forwards every byte (``feed`` returns True)."""

    __slots__ = ("_parts", "_reasons", "_summary")

    def __init__(self) -> None:
        self._summary = ResponseSummary()
        self._parts: list[str] = []
        self._reasons: list[str] = []

    def feed(self, event: SSEEvent) -> bool:
        chunk = event_object(event)
        if chunk is not None:
            _read_response(chunk, self._summary, self._parts, self._reasons)
        return True

    def summary(self) -> ResponseSummary:
        summary = self._summary
        return ResponseSummary(
            usage=summary.usage, response_model=summary.response_model,
            response_id=summary.response_id, finish_reasons=tuple(self._reasons),
            output_text="".join(self._parts))
