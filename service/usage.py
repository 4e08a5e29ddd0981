"""Normalised token usage: the contract shared by metrics, dashboards, pricing and budgets.

Token types (``TOKEN_TYPES``):

* ``input``        every prompt token, cached and cache-written included
* ``cached_input`` the part of ``input`` read from a prompt cache
* ``cache_write``  the part of ``input`` written to a prompt cache
* ``output``       every generated token, reasoning included
* ``reasoning``    the reasoning part of ``output``

Details the price depends on (``DETAIL_FIELDS``; parts of the counts above, never added to
them, and not token types of the metrics): ``cache_write_1h`` (the part of ``cache_write``
kept one hour; the rest is the 5-minute cache), ``input_audio`` and ``input_image`` (parts of
``input``), ``output_audio`` (part of ``output``), and the server-side tool calls the provider
charges per request, ``web_search`` and ``web_fetch``.

``None`` means "not reported", which is not the same as ``0``. Every count also says where it
came from: a type listed in ``Usage.estimated`` was counted by spendgate's tokenizer, not
reported by the upstream.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

TokenType = Literal["input", "output", "cached_input", "cache_write", "reasoning"]
TOKEN_TYPES: tuple[TokenType, ...] = ("input", "output", "cached_input", "cache_write", "reasoning")
DETAIL_FIELDS = ("cache_write_1h", "input_audio", "input_image", "output_audio", "web_search",
                 "web_fetch")


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one call. Immutable; build a new one with ``merged``/``with_estimates``."""

    input: int | None = None
    output: int | None = None
    cached_input: int | None = None
    cache_write: int | None = None
    reasoning: int | None = None
    estimated: frozenset[str] = field(default=frozenset())
    cache_write_1h: int | None = None
    input_audio: int | None = None
    input_image: int | None = None
    output_audio: int | None = None
    web_search: int | None = None
    web_fetch: int | None = None

    def get(self, token_type: str) -> int | None:
        value: int | None = getattr(self, token_type)
        return value

    def source(self, token_type: str) -> Literal["reported", "estimated"]:
        return "estimated" if token_type in self.estimated else "reported"

    def items(self) -> list[tuple[TokenType, int]]:
        """The reported-or-estimated counts, skipping types that are ``None``."""
        out: list[tuple[TokenType, int]] = []
        for token_type in TOKEN_TYPES:
            value = getattr(self, token_type)
            if value is not None:
                out.append((token_type, value))
        return out

    @property
    def is_empty(self) -> bool:
        return all(getattr(self, t) is None for t in TOKEN_TYPES)

    def merged(self, newer: Usage) -> Usage:
        """Fields of ``newer`` that are reported (not None) win over ours."""
        values = {t: getattr(newer, t) if getattr(newer, t) is not None else getattr(self, t)
                  for t in (*TOKEN_TYPES, *DETAIL_FIELDS)}
        return Usage(**values, estimated=self.estimated | newer.estimated)

    def with_estimates(self, **counts: int | None) -> Usage:
        """Fill the given types that are still ``None`` and mark them estimated."""
        fill = {t: v for t, v in counts.items() if v is not None and getattr(self, t) is None}
        if not fill:
            return self
        return replace(self, **fill, estimated=self.estimated | frozenset(fill))
