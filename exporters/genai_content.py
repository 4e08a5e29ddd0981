"""Message content in the GenAI conventions' role/parts JSON shape, for opt-in capture.

``gen_ai.input.messages`` follows the convention's input-messages schema (``role`` plus
``parts``: ``text``, ``tool_call``, ``tool_call_response``; other part kinds, such as
images, appear as a bare ``{"type": ...}`` without their payload). Provider shapes read:
OpenAI chat ``messages``, text-completion ``prompt``, Responses ``input``/``instructions``,
Anthropic ``messages``/``system``. ``gen_ai.output.messages`` is one assistant message with
the generated text spendgate saw (reasoning and tool-call arguments included, as one text
part) and the first finish reason.

Truncation: every text value (content, arguments, responses) draws from one budget of
``max_chars`` characters per attribute; the JSON stays valid, the value where the budget
ran out ends with ``…`` and any later ones are empty. Pure functions, thread-safe.
"""

from __future__ import annotations

from typing import Any

import orjson

Message = dict[str, Any]
_ELLIPSIS = "…"


class _Budget:
    """Characters left for one attribute's text values."""

    def __init__(self, max_chars: int) -> None:
        self.left = max_chars
        self.spent = False

    def take(self, text: str) -> str:
        if len(text) <= self.left:
            self.left -= len(text)
            return text
        if self.spent:  # one ellipsis marks the cut; later values are empty
            return ""
        self.spent = True
        cut = text[: self.left] + _ELLIPSIS
        self.left = 0
        return cut


def _text(value: Any) -> str:
    """A text-ish value as a string (JSON for structured tool arguments and results)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # content blocks: keep their text
        return "".join(_text(item.get("text", "")) if isinstance(item, dict) else _text(item)
                       for item in value)
    if value is None:
        return ""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return str(value)


def _openai_parts(message: dict[str, Any], budget: _Budget) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    content = message.get("content")
    if message.get("role") == "tool":
        return [{"type": "tool_call_response", "id": message.get("tool_call_id"),
                 "response": budget.take(_text(content))}]
    if isinstance(content, str):
        parts.append({"type": "text", "content": budget.take(content)})
    elif isinstance(content, list):
        for item in content:
            if not isinstance(item, dict):
                continue
            kind = item.get("type")
            if kind in ("text", "input_text", "output_text") and isinstance(item.get("text"), str):
                parts.append({"type": "text", "content": budget.take(item["text"])})
            elif isinstance(kind, str):
                parts.append({"type": kind})
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            parts.append({"type": "tool_call", "id": call.get("id"),
                          "name": function.get("name"),
                          "arguments": budget.take(_text(function.get("arguments")))})
    return parts


def _responses_item(item: Any, budget: _Budget) -> Message | None:
    if isinstance(item, str):
        return {"role": "user", "parts": [{"type": "text", "content": budget.take(item)}]}
    if not isinstance(item, dict):
        return None
    kind = item.get("type")
    if kind == "function_call":
        return {"role": "assistant", "parts": [{
            "type": "tool_call", "id": item.get("call_id"), "name": item.get("name"),
            "arguments": budget.take(_text(item.get("arguments")))}]}
    if kind == "function_call_output":
        return {"role": "tool", "parts": [{
            "type": "tool_call_response", "id": item.get("call_id"),
            "response": budget.take(_text(item.get("output")))}]}
    if "role" in item:
        return {"role": item.get("role"), "parts": _openai_parts(item, budget)}
    return None


def _anthropic_parts(content: Any, budget: _Budget) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "content": budget.take(content)}]
    parts: list[dict[str, Any]] = []
    for block in content if isinstance(content, list) else ():
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            parts.append({"type": "text", "content": budget.take(_text(block.get("text")))})
        elif kind == "tool_use":
            parts.append({"type": "tool_call", "id": block.get("id"), "name": block.get("name"),
                          "arguments": budget.take(_text(block.get("input")))})
        elif kind == "tool_result":
            parts.append({"type": "tool_call_response", "id": block.get("tool_use_id"),
                          "response": budget.take(_text(block.get("content")))})
        elif kind == "thinking":
            parts.append({"type": "reasoning",
                          "content": budget.take(_text(block.get("thinking")))})
        elif isinstance(kind, str):
            parts.append({"type": kind})
    return parts


def input_messages(protocol: str, operation: str, body: dict[str, Any] | None,
                   max_chars: int) -> tuple[list[Message], list[dict[str, Any]]]:
    """(``gen_ai.input.messages``, ``gen_ai.system_instructions``) of a request body."""
    budget = _Budget(max_chars)
    messages: list[Message] = []
    system: list[dict[str, Any]] = []
    if not isinstance(body, dict):
        return messages, system
    if protocol == "anthropic":
        instructions = body.get("system")
        if instructions:
            system = _anthropic_parts(instructions, budget)
        for message in body.get("messages") or ():
            if isinstance(message, dict):
                messages.append({"role": message.get("role"),
                                 "parts": _anthropic_parts(message.get("content"), budget)})
    elif operation == "chat":
        for message in body.get("messages") or ():
            if isinstance(message, dict):
                messages.append({"role": message.get("role"),
                                 "parts": _openai_parts(message, budget)})
    elif operation == "text_completion":
        prompt = body.get("prompt")
        for text in [prompt] if isinstance(prompt, str) else prompt or ():
            if isinstance(text, str):
                messages.append({"role": "user",
                                 "parts": [{"type": "text", "content": budget.take(text)}]})
    elif operation == "responses":
        if isinstance(body.get("instructions"), str):
            system = [{"type": "text", "content": budget.take(body["instructions"])}]
        given = body.get("input")
        for item in [given] if isinstance(given, str) else given or ():
            converted = _responses_item(item, budget)
            if converted is not None:
                messages.append(converted)
    return messages, system


def output_messages(text: str, finish_reasons: tuple[str, ...], client_closed: bool,
                    max_chars: int) -> list[Message]:
    """``gen_ai.output.messages``: the generated text as one assistant message."""
    reason = finish_reasons[0] if finish_reasons else ("cancelled" if client_closed else "")
    return [{"role": "assistant",
             "parts": [{"type": "text", "content": _Budget(max_chars).take(text)}],
             "finish_reason": reason}]


def to_json(value: Any) -> str:
    return orjson.dumps(value).decode()
