"""``/{upstream}/{path}``: which upstream a request is for, in one canonical form.

The request path is canonicalised once, here, and that one string is what is routed, what
the provider classifies (through its lenient ``view``) and what is forwarded, so there is no
path the proxy reads one way and the upstream another (a ``/v1/chat/%63ompletions`` that an
upstream serves as a chat call while the proxy saw no chat call, metered nothing and let it
past every block budget). In the canonical form:

- percent-encoded unreserved characters (``ALPHA DIGIT - . _ ~``) are decoded (``%63`` ->
  ``c``); every other escape stays, its hex upper-cased (``%3a`` -> ``%3A``); a byte that may
  not appear raw in a path (non-ASCII, ``"<>[]^`{|}`` and space) is percent-encoded;
- empty segments and a trailing slash stay as sent: ``//evil.example/v1/models`` is a path
  on the configured host, never a host (``UpstreamTarget.url`` joins it onto the base path).

Refused with ``BadRequest`` (400), because an upstream could read them as something other
than what the proxy meters, or climb out of its base path:

- a malformed escape (``%`` not followed by two hex digits: ``%zz``, ``%u002e``, ``%2``);
- a backslash or a control character (0x00-0x1F, 0x7F), raw or encoded (also twice,
  ``%255C``): some servers read ``\\`` as ``/``, and a CR/LF or NUL cuts a path short;
- an encoded ``/`` (``%2F``), which some servers decode before routing and others do not,
  except in a segment the upstream's wire protocol declares opaque: the segment after one
  named in ``Provider.encoded_slash_after`` (Bedrock's ``/model/{modelId}/converse``, whose
  percent-encoded ARN model ids legitimately hold ``%3A`` and ``%2F``);
- a ``.`` or ``..`` segment, raw or encoded (also twice), with or without ``;params``
  (``..;/`` is ``..`` to servlet containers).

``Route.view`` is the canonical path read as leniently as any upstream might read it: each
segment percent-decoded (twice), ``;params`` stripped, empty segments dropped, so no trailing
or repeated slash. Providers decide "metered or not" from it: metering a call the upstream
then answers 404 costs nothing, while not metering one it serves is the bypass.

Cost: a path of plain segments (the usual ``/openai/v1/chat/completions``: unreserved and
sub-delimiter characters only, no segment starting with ``.``) is recognised by one
precompiled regex match and is its own canonical form and view; any other path takes one
pass over its segments, linear in its length. Stateless and thread-safe.
"""

from __future__ import annotations

import re
import string
from collections.abc import Container, Mapping
from itertools import product
from typing import NamedTuple
from urllib.parse import unquote

from spendgate.errors import BadRequest, NotFound


class Route(NamedTuple):
    """Where a call goes. Immutable (a NamedTuple: built per call, half a frozen
    dataclass's cost)."""

    upstream: str
    path: str          # canonical, starts with "/" (or is empty): what is forwarded
    view: str          # the lenient reading, starts with "/": what providers classify
    raw_query: str


_UNRESERVED = string.ascii_letters + string.digits + "-._~"
_SUB_DELIMS = "!$&'()*+,;=:@"  # RFC 3986 pchar besides unreserved and escapes
# A path needing no work: plain segments, none empty, none starting with "." or holding ";".
_PLAIN = re.compile(r"(?:/[A-Za-z0-9\-_~!$&'()*+,=:@][A-Za-z0-9\-._~!$&'()*+,=:@]*)+")
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f\\]")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})?")
# Raw characters the canonical form carries percent-encoded (the text is the path's bytes
# read as latin-1, so every character is one byte); "%", "/" and the rest stay as they are.
_ENCODE_RAW = {code: f"%{code:02X}" for code in range(0x20, 0x100)
               if chr(code) not in _UNRESERVED + _SUB_DELIMS + "%/"}


def _escape_table() -> dict[str, str]:
    """Every two-hex-digit escape (any case) -> its canonical form. Left out: the escapes
    that are refused (control characters, backslash) or depend on the segment (``/``)."""
    table: dict[str, str] = {}
    for code in range(256):
        char = chr(code)
        if code < 0x20 or code == 0x7F or char in "\\/":
            continue
        upper = f"{code:02X}"
        canonical = char if char in _UNRESERVED else "%" + upper
        for spelling in product(*({c, c.lower()} for c in upper)):
            table["".join(spelling)] = canonical
    return table


_ESCAPES = _escape_table()


def _fix_escape(match: re.Match[str]) -> str:
    return _escape(match, False)


def _fix_escape_slash_ok(match: re.Match[str]) -> str:
    return _escape(match, True)


def _escape(match: re.Match[str], slash_ok: bool) -> str:
    digits = match.group(1)
    if digits is None:
        raise BadRequest("path has a malformed percent-escape ('%' must be followed by two "
                         "hex digits)")
    canonical = _ESCAPES.get(digits)
    if canonical is not None:
        return canonical
    if digits.upper() == "2F":
        if slash_ok:
            return "%2F"
        raise BadRequest("path may not contain an encoded '/' (%2F): upstreams disagree on "
                         "whether it separates segments")
    raise BadRequest("path may not contain a backslash or a control character")


def route(raw_path: bytes, raw_query: bytes,
          upstreams: Mapping[str, Container[str]]) -> Route:
    """Split and canonicalise ``/{upstream}/{rest}`` (see the module docstring).

    ``upstreams`` maps each upstream name to the segment names after which its protocol
    accepts an encoded ``/`` (``Provider.encoded_slash_after``). Raises ``NotFound`` (no
    such upstream) or ``BadRequest`` (a path refused above); nothing else.
    """
    text = raw_path.decode("latin-1")
    if _PLAIN.fullmatch(text) is not None:
        name, sep, rest = text[1:].partition("/")
        if name not in upstreams:
            raise _unknown(name)
        rest = sep + rest
        return Route(name, rest, rest or "/", raw_query.decode("latin-1"))
    return _canonical(text, raw_query.decode("latin-1"), upstreams)


def _canonical(text: str, query: str, upstreams: Mapping[str, Container[str]]) -> Route:
    """The slow path of ``route``: one pass over the segments."""
    if _FORBIDDEN.search(text) is not None:
        raise BadRequest("path may not contain a backslash or a control character")
    segments = text.translate(_ENCODE_RAW).split("/")
    if segments[0] or len(segments) < 2:  # no leading "/": an asterisk or absolute form
        raise NotFound("requests go to /{upstream}/{path}")
    name = _segment(segments[1], False)
    slash_after = upstreams.get(name)
    if slash_after is None:
        raise _unknown(name)
    canonical: list[str] = []
    view: list[str] = []
    previous = ""   # the last segment of the view: what an opaque segment follows
    for raw in segments[2:]:
        segment = _segment(raw, previous in slash_after)
        canonical.append(segment)
        decoded = unquote(unquote(segment)) if "%" in segment else segment
        if _FORBIDDEN.search(decoded) is not None:  # encoded twice: %255C, %2500
            raise BadRequest("path may not contain a backslash or a control character")
        for part in decoded.split("/"):  # "/" only from %2F in an opaque segment, or %252F
            part = part.partition(";")[0]
            if part in (".", ".."):
                raise BadRequest("path may not contain '.' or '..' segments")
            if part:
                view.append(part)
                previous = part
    path = "/" + "/".join(canonical) if len(segments) > 2 else ""
    return Route(name, path, "/" + "/".join(view), query)


def _segment(raw: str, slash_ok: bool) -> str:
    """One segment in canonical form (its escapes fixed)."""
    if "%" not in raw:
        return raw
    return _ESCAPE.sub(_fix_escape_slash_ok if slash_ok else _fix_escape, raw)


def _unknown(name: str) -> NotFound:
    shown = unquote(name)[:64]
    return NotFound(f"no upstream named {shown!r}; requests go to /{{upstream}}/{{path}}")
