"""``/{upstream}/{path}``: which upstream a request is for, and whether its path is safe.

The path after the upstream name is forwarded still percent-encoded, exactly as the caller
sent it, onto the upstream's fixed host (see ``UpstreamTarget.url``). A path that could climb
out of the upstream's base path (``..`` or ``.`` segments, also percent-encoded, or a
backslash some servers treat as ``/``) is refused with 400 rather than normalised, because
normalising would change what the caller asked for.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass
from urllib.parse import unquote

from spendgate.errors import BadRequest, NotFound


@dataclass(frozen=True, slots=True)
class Route:
    upstream: str
    raw_path: str      # still percent-encoded, starts with "/" (or is empty)
    raw_query: str


def route(raw_path: bytes, raw_query: bytes, known: Container[str]) -> Route:
    """Split ``/{upstream}/{rest}``. Raises ``NotFound`` or ``BadRequest``."""
    text = raw_path.decode("latin-1")
    name, sep, rest = text[1:].partition("/")
    if name not in known:
        shown = unquote(name)[:64]
        raise NotFound(f"no upstream named {shown!r}; requests go to /{{upstream}}/{{path}}")
    rest = sep + rest
    if "%" in rest or "." in rest or "\\" in rest:
        _check_segments(rest)
    return Route(name, rest, raw_query.decode("latin-1"))


def _check_segments(raw: str) -> None:
    decoded = unquote(unquote(raw))  # twice: %252e%252e is %2e%2e to a server that decodes again
    if "\\" in decoded:
        raise BadRequest("path may not contain a backslash")
    for segment in decoded.split("/"):
        if segment in (".", ".."):
            raise BadRequest("path may not contain '.' or '..' segments")
