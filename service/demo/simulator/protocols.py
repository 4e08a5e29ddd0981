"""The simulated upstream's answers on the wire: OpenAI chat, Responses, Anthropic Messages.

``respond`` renders one ``Call`` (decided by ``demo.simulator.server``: model, draws, fault) as
the real API would, streamed or not. Shapes follow the providers' documented responses and
stream transcripts field for field, so the official SDKs parse them:

* chat: ``chat.completion`` / ``chat.completion.chunk``; a stream ends with a chunk carrying
  ``finish_reason``, then (only with ``stream_options.include_usage``) a chunk with empty
  ``choices`` and the usage (every earlier chunk then has ``"usage": null``), then
  ``data: [DONE]``. Self-hosted models send no usage at all, whatever was asked.
* responses: ``response.created`` ... ``response.output_text.delta`` ... ``response.completed``
  (``response.incomplete`` when ``max_output_tokens`` cut the answer).
* messages: ``message_start`` (input and cache usage, provisional ``output_tokens: 1``),
  ``content_block_start``, ``ping``, ``content_block_delta`` x N, ``content_block_stop``,
  ``message_delta`` (stop reason, final ``output_tokens``), ``message_stop``.

Streams are paced: the first token after the call's time to first token, then one piece per
token delay (OpenAI: one word per chunk; Anthropic: 1-4 words per delta, as they do). A call
with the ``cut`` fault stops part-way and drops the connection, as a failing upstream does.
"""

from __future__ import annotations

import asyncio
import random
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from aiohttp import web

from spendgate.providers.jsonread import count


@dataclass(slots=True)
class Prompt:
    """Prompt tokens of one call: ``tokens`` in all, of which ``cached`` read and ``written``."""

    tokens: int
    cached: int = 0
    written: int = 0


@dataclass(slots=True)
class Call:
    """One call being answered: what was asked, and the draws that decide the answer."""

    kind: str                 # chat | embeddings | responses | messages | count_tokens
    protocol: str             # openai | anthropic
    body: dict[str, Any]
    model: str
    profile: Any              # simulated_models.ModelProfile
    stream: bool
    rng: random.Random
    fault: str | None         # rate_limit | server_error | overloaded | cut | None
    request_id: str
    created: int


class Pacer(Protocol):
    """What the simulator decides per call (``demo.simulator.server.Simulator``)."""

    def first_token_delay(self, call: Call) -> float: ...
    def token_delay(self, call: Call) -> float: ...
    def answer(self, call: Call, limit: int | None) -> tuple[list[tuple[str, int]], bool]: ...
    def output_tokens(self, call: Call, text: str) -> int: ...


Pieces = list[tuple[str, int]]
_ALPHANUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def random_id(rng: random.Random, length: int) -> str:
    return "".join(rng.choice(_ALPHANUM) for _ in range(length))


def json_response(body: dict[str, Any], call: Call, status: int = 200) -> web.Response:
    headers = {"request-id" if call.protocol == "anthropic" else "x-request-id": call.request_id}
    return web.Response(body=orjson.dumps(body), status=status, headers=headers,
                        content_type="application/json")


async def respond(pacer: Pacer, request: web.Request, call: Call,
                  prompt: Prompt) -> web.StreamResponse:
    """Answer a chat, responses or messages call, streamed or not."""
    body = call.body
    if call.kind == "responses":
        limit = count(body.get("max_output_tokens"))
    elif call.kind == "messages":
        limit = count(body.get("max_tokens"))
    else:
        limit = count(body.get("max_completion_tokens"))
        limit = limit if limit is not None else count(body.get("max_tokens"))
    pieces, truncated = pacer.answer(call, limit)
    render = _RENDERERS[call.kind]
    if call.stream:
        return await _stream(pacer, request, call, pieces, render(call, prompt, truncated))
    tokens = sum(n for _, n in pieces)
    await asyncio.sleep(pacer.first_token_delay(call) + tokens * pacer.token_delay(call))
    text = "".join(p for p, _ in pieces)
    return json_response(render(call, prompt, truncated).complete(
        text, pacer.output_tokens(call, text)), call)


async def _stream(pacer: Pacer, request: web.Request, call: Call, pieces: Pieces,
                  renderer: Renderer) -> web.StreamResponse:
    id_header = "request-id" if call.protocol == "anthropic" else "x-request-id"
    response = web.StreamResponse(headers={
        "content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache",
        id_header: call.request_id})
    cut_at = len(pieces) * call.rng.uniform(0.2, 0.8) if call.fault == "cut" else None
    try:
        await response.prepare(request)
        sent = 0
        text: list[str] = []
        async for group in _paced(pacer, call, pieces, renderer.group_size):
            events = renderer.start() if sent == 0 else b""
            if cut_at is not None and sent >= cut_at:
                await response.write(events)
                if request.transport is not None:
                    request.transport.close()   # the upstream died mid-answer
                return response
            delta = "".join(p for p, _ in group)
            text.append(delta)
            sent += len(group)
            await response.write(events + renderer.delta(delta))
        if sent == 0:
            await response.write(renderer.start())
        full = "".join(text)
        await response.write(renderer.finish(full, pacer.output_tokens(call, full)))
        await response.write_eof()
    except ConnectionError:
        pass  # the caller hung up: stop generating, as a real upstream does
    return response


async def _paced(pacer: Pacer, call: Call, pieces: Pieces,
                 group_size: Callable[[random.Random], int]) -> AsyncIterator[Pieces]:
    """Groups of pieces, each released when its tokens would have been generated."""
    loop = asyncio.get_running_loop()
    due = loop.time() + pacer.first_token_delay(call)
    index = 0
    while index < len(pieces):
        group = pieces[index:index + group_size(call.rng)]
        index += len(group)
        wait = due - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        yield group
        due += sum(n for _, n in group) * pacer.token_delay(call)


def _sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + orjson.dumps(data) + b"\n\n"


class Renderer(ABC):
    """One call's wire format. ``start``/``delta``/``finish`` are stream bytes; ``complete``
    is the non-streamed body."""

    def __init__(self, call: Call, prompt: Prompt, truncated: bool) -> None:
        self.call = call
        self.prompt = prompt
        self.truncated = truncated
        self.usage = call.profile.reports_usage

    def group_size(self, rng: random.Random) -> int:
        return 1

    def start(self) -> bytes:
        return b""

    @abstractmethod
    def delta(self, text: str) -> bytes:
        """Stream bytes carrying one piece of generated ``text``."""

    @abstractmethod
    def finish(self, text: str, output: int) -> bytes:
        """The stream's closing bytes (usage where the protocol reports it)."""

    @abstractmethod
    def complete(self, text: str, output: int) -> dict[str, Any]:
        """The non-streamed response body."""


class ChatRenderer(Renderer):
    def __init__(self, call: Call, prompt: Prompt, truncated: bool) -> None:
        super().__init__(call, prompt, truncated)
        self.id = "chatcmpl-" + random_id(call.rng, 29)
        self.self_hosted = not self.usage
        options = call.body.get("stream_options")
        self.include_usage = isinstance(options, dict) and options.get("include_usage") is True
        fingerprint = "fp_ollama" if self.self_hosted else "fp_" + random_id(
            random.Random(call.profile.reported), 10).lower()
        self.meta: dict[str, Any] = {"id": self.id, "object": "chat.completion.chunk",
                                     "created": call.created, "model": call.profile.reported}
        if not self.self_hosted:
            self.meta["service_tier"] = "default"
        self.meta["system_fingerprint"] = fingerprint
        self.finish_reason = "length" if truncated else "stop"

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        chunk = {**self.meta, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                           "finish_reason": finish}]}
        if self.include_usage and not self.self_hosted:
            chunk["usage"] = None
        return _sse(chunk)

    def start(self) -> bytes:
        return self._chunk({"role": "assistant", "content": "", "refusal": None})

    def delta(self, text: str) -> bytes:
        return self._chunk({"content": text})

    def finish(self, text: str, output: int) -> bytes:
        out = self._chunk({}, self.finish_reason)
        if self.include_usage and self.usage:
            out += _sse({**self.meta, "choices": [], "usage": self._usage(output)})
        return out + b"data: [DONE]\n\n"

    def _usage(self, output: int) -> dict[str, Any]:
        return {"prompt_tokens": self.prompt.tokens, "completion_tokens": output,
                "total_tokens": self.prompt.tokens + output,
                "prompt_tokens_details": {"cached_tokens": self.prompt.cached,
                                          "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                              "accepted_prediction_tokens": 0,
                                              "rejected_prediction_tokens": 0}}

    def complete(self, text: str, output: int) -> dict[str, Any]:
        body = {**self.meta, "object": "chat.completion", "choices": [{
            "index": 0, "logprobs": None, "finish_reason": self.finish_reason,
            "message": {"role": "assistant", "content": text, "refusal": None,
                        "annotations": []}}]}
        if self.usage:
            body["usage"] = self._usage(output)
        return body


class ResponsesRenderer(Renderer):
    def __init__(self, call: Call, prompt: Prompt, truncated: bool) -> None:
        super().__init__(call, prompt, truncated)
        self.id = "resp_" + random_id(call.rng, 48).lower()
        self.item_id = "msg_" + random_id(call.rng, 48).lower()
        self.sequence = 0

    def _event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return _sse(data, kind)

    def _response(self, status: str, output: list[Any], usage: dict[str, Any] | None,
                  ) -> dict[str, Any]:
        body = self.call.body
        return {"id": self.id, "object": "response", "created_at": self.call.created,
                "status": status, "model": self.call.profile.reported, "output": output,
                "error": None, "incomplete_details": {"reason": "max_output_tokens"}
                if status == "incomplete" else None,
                "instructions": body.get("instructions"),
                "max_output_tokens": body.get("max_output_tokens"), "parallel_tool_calls": True,
                "temperature": body.get("temperature", 1.0), "top_p": 1.0, "tool_choice": "auto",
                "tools": [], "text": {"format": {"type": "text"}}, "truncation": "disabled",
                "metadata": {}, "service_tier": "default", "usage": usage}

    def _item(self, text: str, status: str) -> dict[str, Any]:
        content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
        return {"id": self.item_id, "type": "message", "status": status, "role": "assistant",
                "content": content if status == "completed" else []}

    def _usage(self, output: int) -> dict[str, Any] | None:
        if not self.usage:
            return None
        return {"input_tokens": self.prompt.tokens,
                "input_tokens_details": {"cached_tokens": self.prompt.cached},
                "output_tokens": output, "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": self.prompt.tokens + output}

    def start(self) -> bytes:
        response = self._response("in_progress", [], None)
        part = {"type": "output_text", "text": "", "annotations": []}
        return (self._event("response.created", response=response)
                + self._event("response.in_progress", response=response)
                + self._event("response.output_item.added", output_index=0,
                              item=self._item("", "in_progress"))
                + self._event("response.content_part.added", item_id=self.item_id,
                              output_index=0, content_index=0, part=part))

    def delta(self, text: str) -> bytes:
        return self._event("response.output_text.delta", item_id=self.item_id, output_index=0,
                           content_index=0, delta=text, logprobs=[])

    def finish(self, text: str, output: int) -> bytes:
        final = self.complete(text, output)
        part = {"type": "output_text", "text": text, "annotations": []}
        return (self._event("response.output_text.done", item_id=self.item_id, output_index=0,
                            content_index=0, text=text, logprobs=[])
                + self._event("response.content_part.done", item_id=self.item_id,
                              output_index=0, content_index=0, part=part)
                + self._event("response.output_item.done", output_index=0,
                              item=final["output"][0])
                + self._event("response.incomplete" if self.truncated
                              else "response.completed", response=final))

    def complete(self, text: str, output: int) -> dict[str, Any]:
        status = "incomplete" if self.truncated else "completed"
        return self._response(status, [self._item(text, "completed")], self._usage(output))


class MessagesRenderer(Renderer):
    def __init__(self, call: Call, prompt: Prompt, truncated: bool) -> None:
        super().__init__(call, prompt, truncated)
        self.id = "msg_01" + random_id(call.rng, 22)
        self.stop_reason = "max_tokens" if truncated else "end_turn"

    def group_size(self, rng: random.Random) -> int:
        return rng.randint(1, 4)

    def _usage(self, output: int) -> dict[str, Any]:
        p = self.prompt
        return {"input_tokens": p.tokens - p.cached - p.written,
                "cache_creation_input_tokens": p.written, "cache_read_input_tokens": p.cached,
                "cache_creation": {"ephemeral_5m_input_tokens": p.written,
                                   "ephemeral_1h_input_tokens": 0},
                "output_tokens": output, "service_tier": "standard"}

    def _message(self, content: list[Any], stop: str | None, output: int) -> dict[str, Any]:
        return {"id": self.id, "type": "message", "role": "assistant",
                "model": self.call.profile.reported, "content": content, "stop_reason": stop,
                "stop_sequence": None, "usage": self._usage(output)}

    def start(self) -> bytes:
        return (_sse({"type": "message_start", "message": self._message([], None, 1)},
                     "message_start")
                + _sse({"type": "content_block_start", "index": 0,
                        "content_block": {"type": "text", "text": ""}}, "content_block_start")
                + _sse({"type": "ping"}, "ping"))

    def delta(self, text: str) -> bytes:
        return _sse({"type": "content_block_delta", "index": 0,
                     "delta": {"type": "text_delta", "text": text}}, "content_block_delta")

    def finish(self, text: str, output: int) -> bytes:
        return (_sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
                + _sse({"type": "message_delta", "delta": {"stop_reason": self.stop_reason,
                                                           "stop_sequence": None},
                        "usage": {"output_tokens": output}}, "message_delta")
                + _sse({"type": "message_stop"}, "message_stop"))

    def complete(self, text: str, output: int) -> dict[str, Any]:
        return self._message([{"type": "text", "text": text}], self.stop_reason, output)


_RENDERERS: dict[str, type[Renderer]] = {"chat": ChatRenderer, "responses": ResponsesRenderer,
                                         "messages": MessagesRenderer}
