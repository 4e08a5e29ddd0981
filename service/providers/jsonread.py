"""Never-raising readers of untrusted JSON, shared by the wire protocols.

Request and upstream bodies and SSE events are data from outside: every reader here returns
``None`` (or an empty value) for anything of the wrong shape instead of raising, so a strange
body can only cost a usage estimate, never a call.

Bodies are read as leniently as upstreams read them: orjson first (strict RFC 8259, fast),
then, for what it refuses, Python's ``json``, which Python servers use (FastAPI's
``request.json()``, aiohttp handlers, Flask): NaN and Infinity, lone surrogates
(``"\\ud800"``), a UTF-8 BOM (and UTF-16/32 bodies), 1e400 (infinity), integers beyond 64
bits. A body such an upstream serves is then never one whose model the proxy missed, and
so never one its model's budgets do not cover.
"""

from __future__ import annotations

import json
import re
from collections.abc import Container
from typing import Any

import orjson

from spendgate.providers.sse import SSEEvent

# A \uD800-\uDFFF escape, or a body not in UTF-8 (a NUL among the first bytes: UTF-16/32):
# only then can Python's json hand back lone surrogates.
_MAY_HOLD_SURROGATES = re.compile(rb"\\u[dD][89a-fA-F]|^.{0,3}\x00", re.DOTALL)
_SURROGATE = re.compile("[\ud800-\udfff]")


# The largest token limit or choice count a request may ask for (``max_tokens``,
# ``max_completion_tokens``, ``max_output_tokens``, ``n``): the int32 maximum, a thousand
# times any model's output limit and more choices than any server generates, and small
# enough that limit x n x any price stays within the ledger's and telemetry's integers.
LIMIT_MAX = 2**31 - 1


def count(value: Any) -> int | None:
    """A token count as reported, or None for anything that is not a non-negative integer."""
    if type(value) is int:  # not isinstance: bool is an int subclass
        return value if value >= 0 else None
    if type(value) is float and value.is_integer() and value >= 0:
        return int(value)
    return None


def over_limit(parsed: dict[str, Any], names: tuple[str, ...]) -> str | None:
    """Why the request must be refused (400): the first of ``names`` that is a number over
    ``LIMIT_MAX`` (2^63, 1e300, Infinity), else None. Other values (negative, fractional,
    strings) are the upstream's to judge."""
    for name in names:
        value = parsed.get(name)
        # type(), not isinstance: True is no limit; NaN compares False.
        if (type(value) is int or type(value) is float) and value > LIMIT_MAX:
            return f"'{name}' must be at most {LIMIT_MAX} (spendgate's bound on token limits)"
    return None


def loads_object(data: bytes) -> dict[str, Any] | None:
    """The JSON object in ``data``, leniently read (``read_object``), or None."""
    return read_object(data)[0]


def read_object(data: bytes) -> tuple[dict[str, Any] | None, bool]:
    """The JSON object in ``data`` (None for anything else), and whether orjson refused it
    and Python's json semantics read it (see the module docstring).

    What the lenient reading gives back stays in orjson's domain where later readers rely on
    it: a lone surrogate becomes U+FFFD (so text encodes for the tokenizer and the sinks),
    an integer beyond 64 bits a float, as orjson reads it; NaN and infinities stay floats.
    A leniently read body must not be re-serialised (``orjson.dumps`` would turn NaN into
    null): the caller's bytes are forwarded.
    """
    try:
        parsed = orjson.loads(data)
    except ValueError:  # orjson.JSONDecodeError, invalid UTF-8 included
        return _lenient(data), True
    return (parsed if isinstance(parsed, dict) else None), False


def _lenient(data: bytes) -> dict[str, Any] | None:
    try:
        parsed = json.loads(data, parse_int=_integer)
        if not isinstance(parsed, dict):
            return None
        found: dict[str, Any] = parsed
        if _MAY_HOLD_SURROGATES.search(data) is not None:
            found = _without_surrogates(parsed)
    except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError; too deep
        return None
    return found


def _integer(text: str) -> int | float:
    """An integer literal as orjson reads it: an int within 64 bits, else a float (never
    Python's ValueError past 4300 digits)."""
    if len(text) < 19:
        return int(text)
    value = float(text)
    return int(text) if -2.0 ** 63 <= value < 2.0 ** 64 else value


def _without_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_without_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {_without_surrogates(k): _without_surrogates(v) for k, v in value.items()}
    return value


def event_object(event: SSEEvent, wanted: Container[str] | None = None) -> dict[str, Any] | None:
    """The JSON object of an SSE event, skipping the parse for events not ``wanted``.

    Providers that name their events (``event:`` lines) let trackers skip uninteresting
    ones without parsing; ``[DONE]``, comments and keep-alives are never JSON objects.
    """
    if wanted is not None and event.event is not None and event.event not in wanted:
        return None
    if not event.data.startswith(b"{"):
        return None
    return loads_object(event.data)


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def as_str(value: Any) -> str | None:
    # Empty counts as absent: Azure's first stream chunk has "id": "" and "model": "".
    return value if isinstance(value, str) and value else None


def append_text(parts: list[str], value: Any) -> None:
    if isinstance(value, str) and value:
        parts.append(value)
