"""Tags: free ``key=value`` labels a call carries, for spend by feature, environment, team...

Where they come from: the caller's ``x-spendgate-tags`` header (``parse_header``) and the
virtual key's fixed ``tags`` (config), the key's value winning for a key both name
(``merged``): a caller cannot move spend off its key's tags by header.

The grammar, one for the header and for keys' ``tags`` (``problem``):

* a key is 1 to 32 characters of ``[a-z0-9_.-]`` (lower case: no folding, a key spelled
  ``Feature`` is refused rather than silently merged with ``feature``);
* a value is 1 to 64 characters of ``[A-Za-z0-9_.:/@+-]``: no space, comma, ``=``,
  quote or glob character, so a value is one token in a header, a label, a log line and
  a budget's selector (where ``*``, ``?`` and ``[`` mean a glob);
* at most ``MAX_TAGS`` pairs.

The header is ``k=v`` pairs separated by commas; spaces and tabs around a pair, a key or a
value are trimmed, and empty items (``a=1,,b=2``, a trailing comma) are skipped. A key given
twice, a pair without ``=``, an empty key or value, a character outside the grammar or more
than ``MAX_TAGS`` pairs is refused, naming the problem (the proxy answers 400 in the
caller's protocol). Pure functions; thread-safe.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

from spendgate.errors import BadRequest

HEADER = b"x-spendgate-tags"
MAX_TAGS = 10
MAX_KEY_CHARS = 32
MAX_VALUE_CHARS = 64
_KEY = re.compile(rf"[a-z0-9_.-]{{1,{MAX_KEY_CHARS}}}")
_VALUE = re.compile(rf"[A-Za-z0-9_.:/@+-]{{1,{MAX_VALUE_CHARS}}}")
NO_TAGS: Mapping[str, str] = MappingProxyType({})   # shared by every untagged call
_MAX_HEADER_BYTES = 2048    # 10 pairs of 32 + 64 characters, separators and spaces


def key_problem(key: str) -> str | None:
    """Why ``key`` cannot be a tag key; None if it can."""
    if not _KEY.fullmatch(key):
        return (f"tag key {key[:40]!r} is not 1 to {MAX_KEY_CHARS} characters of "
                "a-z, 0-9, '_', '.', '-'")
    return None


def problem(key: str, value: str) -> str | None:
    """Why ``key: value`` cannot be a tag; None if it can."""
    if (found := key_problem(key)) is not None:
        return found
    if not _VALUE.fullmatch(value):
        return (f"tag {key!r}: value {value[:70]!r} is not 1 to {MAX_VALUE_CHARS} characters "
                "of A-Z, a-z, 0-9, '_', '.', ':', '/', '@', '+', '-'")
    return None


def parse_header(raw: bytes | None) -> Mapping[str, str]:
    """The tags of an ``x-spendgate-tags`` value (None or blank: none). Raises
    ``BadRequest`` naming the header and the problem."""
    if raw is None:
        return NO_TAGS
    if len(raw) > _MAX_HEADER_BYTES:
        raise _refused(f"over {_MAX_HEADER_BYTES} bytes")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise _refused("not ASCII") from None
    tags: dict[str, str] = {}
    for item in text.split(","):
        item = item.strip(" \t")
        if not item:
            continue
        key, equals, value = item.partition("=")
        key, value = key.strip(" \t"), value.strip(" \t")
        if not equals:
            raise _refused(f"{item[:80]!r} is not key=value")
        if (found := problem(key, value)) is not None:
            raise _refused(found)
        if key in tags:
            raise _refused(f"tag key {key!r} is given twice")
        tags[key] = value
        if len(tags) > MAX_TAGS:
            raise _refused(f"more than {MAX_TAGS} tags")
    return MappingProxyType(tags) if tags else NO_TAGS


def merged(header: Mapping[str, str], fixed: Mapping[str, str]) -> Mapping[str, str]:
    """A call's tags: the header's under the key's ``fixed`` ones (which win)."""
    if not fixed:
        return header
    if not header:
        return fixed
    return MappingProxyType({**header, **fixed})


def frozen(tags: Mapping[str, str] | None) -> Mapping[str, str]:
    """``tags`` as a read-only mapping (shared between calls, never mutated)."""
    return MappingProxyType(dict(tags)) if tags else NO_TAGS


def _refused(why: str) -> BadRequest:
    return BadRequest(f"x-spendgate-tags: {why} (comma-separated key=value, at most "
                      f"{MAX_TAGS}; see the README's Tags section)")
