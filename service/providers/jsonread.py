"""Never-raising readers of untrusted JSON, shared by the wire protocols.

Upstream bodies and SSE events are data from outside: every reader here returns ``None`` (or
an empty value) for anything of the wrong shape instead of raising, so a strange body can
only cost a usage estimate, never a call.
"""

from __future__ import annotations

from collections.abc import Container
from typing import Any

import orjson

from spendgate.providers.sse import SSEEvent


def count(value: Any) -> int | None:
    """A token count as reported, or None for anything that is not a non-negative integer."""
    if type(value) is int:  # not isinstance: bool is an int subclass
        return value if value >= 0 else None
    if type(value) is float and value.is_integer() and value >= 0:
        return int(value)
    return None


def loads_object(data: bytes) -> dict[str, Any] | None:
    """The JSON object in ``data``, or None for anything else."""
    try:
        parsed = orjson.loads(data)
    except ValueError:  # orjson.JSONDecodeError, invalid UTF-8 included
        return None
    return parsed if isinstance(parsed, dict) else None


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
