"""A model's price with its tiers and fees, and the exact cost of one call at that price.

A ``Price`` holds base rates in USD per million tokens, one per rate type (``RATE_TYPES``),
its tiers (each a ``Price`` of rates only) and per-request fees. A tier is named by its key:

* a service tier, ``flex``, ``priority`` or ``batch``: the tier the provider served;
* a context tier, ``above_200k`` (any N, ``above_{N}k``): the call's whole prompt (cached and
  cache-written tokens included) is over N x 1000 tokens; it reprices every token type;
* both, ``above_272k_flex``.

Fees: ``web_search`` USD per search query, by search context size (``low``, ``medium``,
``high``); ``web_fetch`` USD per fetch request. ``None`` = not published.

How a rate is found (``Price.quote``): the largest context tier the prompt is over, and the
served service tier, pick the table ``(service, context)``; a rate type it lacks is taken from
``(service, -)``, then ``(-, context)``, then the base, and each step away is a fallback
(reason ``context`` or ``tier``). A served tier the price has no table for at all is priced at
the base (reason ``tier``). A type no table prices is charged as another type: cached input and
cache writes as input (unpublished cache prices: the input price, not a fallback), 1-hour cache
writes as cache writes (reason ``cache_ttl``), audio and image tokens as text (reason
``modality``). Web searches without a search price cost nothing more than their tokens (reason
``fee``); web fetches are free unless ``web_fetch`` is set (Anthropic charges none). Fallback
reasons are only given for token types and fees the call used.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Context, Decimal, Inexact, InvalidOperation, localcontext
from typing import Any, NamedTuple

from spendgate.usage import Usage

RATE_TYPES = ("input", "cached_input", "cache_write", "cache_write_1h", "output",
              "input_audio", "output_audio", "input_image", "output_image")
SERVICE_TIERS = ("flex", "priority", "batch")
SEARCH_SIZES = ("low", "medium", "high")
FALLBACK_REASONS = ("tier", "context", "cache_ttl", "fee", "modality")
STANDARD = "standard"  # the tier label of base prices
# The type a rate type is charged as when no table prices it, and the fallback reason.
_DERIVED: dict[str, tuple[str, str | None]] = {
    "cached_input": ("input", None), "cache_write": ("input", None),
    "cache_write_1h": ("cache_write", "cache_ttl"), "input_audio": ("input", "modality"),
    "input_image": ("input", "modality"), "output_audio": ("output", "modality"),
    "output_image": ("output", "modality")}
_INPUT_TYPES = ("input", "cached_input", "cache_write", "cache_write_1h", "input_audio",
                "input_image")
_OUTPUT_TYPES = ("output", "output_audio", "output_image")
TIER_KEY = re.compile(r"above_([1-9]\d*)k(?:_(flex|priority|batch))?|(flex|priority|batch)")
# Served-tier names that mean the base price (OpenAI "default"/"auto", Anthropic "standard").
_BASE_NAMES = frozenset({"", "default", "auto", "standard", "standard_only", "on_demand"})
_EXACT = Context(prec=100, traps=[Inexact])  # costs are exact or raise, never silently rounded
_ZERO = Decimal(0)


def tier_key(service: str | None, above_k: int | None) -> str:
    """``("flex", 272)`` -> ``"above_272k_flex"``; ``(None, None)`` -> ``""`` (the base)."""
    return "_".join(p for p in (f"above_{above_k}k" if above_k else "", service or "") if p)


def parse_tier_key(key: str) -> tuple[str | None, int | None]:
    """``"above_272k_flex"`` -> ``("flex", 272)``; raises ``ValueError`` on anything else."""
    m = TIER_KEY.fullmatch(key)
    if m is None:
        raise ValueError(f"{key!r} is not a price tier: flex, priority, batch, above_<N>k, "
                         "or above_<N>k_<service tier>")
    return m[2] or m[3], int(m[1]) if m[1] else None


def served_tier(name: str | None) -> str | None:
    """The service tier a provider's ``service_tier`` value is priced at; None = the base."""
    if name is None:
        return None
    tier = name.strip().lower()
    if tier in _BASE_NAMES:
        return None
    return "batch" if tier == "batches" else tier


def price_value(value: object, what: str) -> Decimal | None:
    """A config or catalog price as exact ``Decimal``; raises ``ValueError`` if not one."""
    if value is None:
        return None
    try:  # a float converts through its repr: 0.15 -> Decimal("0.15"), not its binary value
        d = Decimal(repr(value) if isinstance(value, float) else value)  # type: ignore[arg-type]
        if not isinstance(value, bool) and d.is_finite() and d >= 0:
            return d
    except (InvalidOperation, TypeError, ValueError):
        pass
    raise ValueError(f"{what}: not a price: {value!r}")


class Quote(NamedTuple):
    """One call priced: ``cost`` (fees included, exact USD), the ``fees`` part, the service
    tier and context tier the rates came from, and the fallback reasons taken. Immutable (a
    tuple: built for every call, where a frozen dataclass costs a microsecond more)."""

    cost: Decimal
    fees: Decimal = Decimal(0)
    tier: str = STANDARD
    context_tier: str | None = None
    fallbacks: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Price:
    """Per-Mtok rates, tiers and fees (see the module docstring); ``None`` = not published.
    Immutable; thread-safe."""

    input: Decimal | None = None
    output: Decimal | None = None
    cached_input: Decimal | None = None
    cache_write: Decimal | None = None
    cache_write_1h: Decimal | None = None
    input_audio: Decimal | None = None
    output_audio: Decimal | None = None
    input_image: Decimal | None = None
    output_image: Decimal | None = None
    tiers: tuple[tuple[str, Price], ...] = ()
    web_search: tuple[tuple[str, Decimal], ...] = ()   # USD per query, by context size
    web_fetch: Decimal | None = None                   # USD per fetch request
    _tables: dict[str, Price] = field(default_factory=dict, init=False, repr=False,
                                      compare=False, hash=False)
    _services: set[str] = field(default_factory=set, init=False, repr=False, compare=False,
                                hash=False)
    _levels: list[int] = field(default_factory=list, init=False, repr=False, compare=False,
                               hash=False)
    # worst_rates per (service tier, context tier): a budget reservation per call asks.
    _worst: dict[tuple[str | None, int | None], tuple[Decimal, Decimal]] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        # Derived once, so that pricing a call parses no tier key.
        self._tables.update(self.tiers)
        for key in self._tables:
            service, above_k = parse_tier_key(key)
            if service:
                self._services.add(service)
            if above_k and above_k not in self._levels:
                self._levels.append(above_k)
        self._levels.sort()

    @classmethod
    def from_mapping(cls, values: Mapping[str, object], what: str = "price") -> Price:
        """From ``{"input": "0.15", "output": 0.6, ...}`` (``RATE_TYPES``): str, int, float or
        Decimal per Mtok. Raises ``ValueError`` on unknown keys and negative or non-numeric
        values."""
        if unknown := set(values) - set(RATE_TYPES):
            raise ValueError(f"{what}: unknown price fields {sorted(unknown)}")
        rates: dict[str, Any] = {k: price_value(v, f"{what}.{k}") for k, v in values.items()}
        return cls(**rates)

    @classmethod
    def from_row(cls, row: Mapping[str, Any], what: str = "price") -> Price:
        """From a catalog row or a config price: ``<type>_per_mtok`` rates, ``tiers`` (tier
        key -> rates), ``web_search_per_query`` (USD, or ``{size: USD}``) and
        ``web_fetch_per_request``; other keys are ignored. Raises ``ValueError``."""
        rates: dict[str, Any] = {t: price_value(row.get(f"{t}_per_mtok"), f"{what}.{t}")
                                 for t in RATE_TYPES}
        tiers = row.get("tiers") or {}
        if not isinstance(tiers, Mapping):
            raise ValueError(f"{what}.tiers: not a mapping")
        tables = []
        for key in sorted(tiers):
            parse_tier_key(key)
            table = cls.from_row(tiers[key], f"{what}.tiers.{key}")
            if table.tiers or table.web_search or table.web_fetch is not None:
                raise ValueError(f"{what}.tiers.{key}: a tier holds per-Mtok rates only")
            tables.append((key, table))
        search = row.get("web_search_per_query")
        if search is not None and not isinstance(search, Mapping):
            search = dict.fromkeys(SEARCH_SIZES, search)
        sizes: list[tuple[str, Decimal]] = []
        for size, value in (search or {}).items():
            if size not in SEARCH_SIZES:
                raise ValueError(f"{what}.web_search_per_query: {size!r} is not one of "
                                 f"{', '.join(SEARCH_SIZES)}")
            if (fee := price_value(value, f"{what}.web_search_per_query.{size}")) is not None:
                sizes.append((size, fee))
        return cls(**rates, tiers=tuple(tables), web_search=tuple(sorted(sizes)),
                   web_fetch=price_value(row.get("web_fetch_per_request"),
                                         f"{what}.web_fetch_per_request"))

    @property
    def thresholds(self) -> tuple[int, ...]:
        """The context tiers' N (thousands of prompt tokens), ascending."""
        return tuple(self._levels)

    def cost(self, usage: Usage) -> Decimal:
        """Exact USD cost of ``usage`` at the base tier (``quote``)."""
        return self.quote(usage).cost

    def quote(self, usage: Usage, tier: str | None = None, search_size: str | None = None,
              multiplier: Decimal = Decimal(1)) -> Quote:
        """The exact cost of ``usage`` served at ``tier`` (the provider's ``service_tier``).

        ``None`` token counts count 0. ``usage.input`` holds every prompt token: the plain
        text part is ``input`` less cached, cache-written, audio and image tokens (floored at
        0, so a cost is never negative); ``output`` less ``output_audio`` is text output.
        Reasoning is inside ``output``: not counted again. ``search_size``: the web search
        context size the caller asked for (default medium). ``multiplier`` scales every
        price (an upstream's negotiated rate).
        """
        reasons: set[str] = set()
        service, context = self._tier(tier, usage.input or 0, reasons)
        cached, written = usage.cached_input or 0, usage.cache_write or 0
        hour = min(usage.cache_write_1h or 0, written)
        audio_in, image_in = usage.input_audio or 0, usage.input_image or 0
        audio_out = min(usage.output_audio or 0, usage.output or 0)
        plain = max((usage.input or 0) - cached - written - audio_in - image_in, 0)
        output = (usage.output or 0) - audio_out
        with localcontext(_EXACT):
            if service is None and context is None and not (
                    hour or audio_in or image_in or audio_out or usage.web_search
                    or usage.web_fetch):
                # Most calls: text tokens at the base rates (the types _rate would read).
                p_in = self.input or _ZERO
                tokens = plain * p_in + output * (self.output or _ZERO)
                if cached:
                    tokens += cached * (p_in if self.cached_input is None else self.cached_input)
                if written:
                    tokens += written * (p_in if self.cache_write is None else self.cache_write)
                return Quote(cost=tokens.scaleb(-6) * multiplier,
                             fallbacks=frozenset(reasons) if reasons else frozenset())
            counts = (("input", plain), ("cached_input", cached),
                      ("cache_write", written - hour), ("cache_write_1h", hour),
                      ("input_audio", audio_in), ("input_image", image_in),
                      ("output", output), ("output_audio", audio_out))
            tokens = sum((n * self._rate(t, service, context, reasons)
                          for t, n in counts if n), _ZERO).scaleb(-6)
            fees = self._fees(usage, search_size, reasons)
            return Quote(cost=(tokens + fees) * multiplier, fees=fees * multiplier,
                         tier=service or STANDARD,
                         context_tier=tier_key(None, context) or None,
                         fallbacks=frozenset(reasons))

    def worst_rates(self, tier: str | None, prompt: int) -> tuple[Decimal, Decimal]:
        """The highest (input-side, output-side) per-Mtok rates a call asking for ``tier``
        with up to ``prompt`` prompt tokens can be charged: for budget reservations."""
        reasons: set[str] = set()
        service, context = self._tier(tier, prompt, reasons)
        worst = self._worst.get((service, context))
        if worst is None:  # a few keys per price at most: computed once each
            worst = self._worst[(service, context)] = (
                max(self._rate(t, service, context, reasons) for t in _INPUT_TYPES),
                max(self._rate(t, service, context, reasons) for t in _OUTPUT_TYPES))
        return worst

    def _tier(self, tier: str | None, prompt: int,
              reasons: set[str]) -> tuple[str | None, int | None]:
        """The (service tier, context tier) a call is priced at."""
        service = served_tier(tier)
        if service is not None and service not in self._services:
            reasons.add("tier")
            service = None
        context = None
        for level in self._levels:  # ascending: the last one the prompt is over
            if prompt > level * 1000:
                context = level
        return service, context

    def _rate(self, rate_type: str, service: str | None, context: int | None,
              reasons: set[str]) -> Decimal:
        if service is None and context is None:  # the common case: the base table
            base: Decimal | None = getattr(self, rate_type)
            if base is not None:
                return base
        for s, c in dict.fromkeys(((service, context), (service, None), (None, context),
                                   (None, None))):
            table = self._tables.get(tier_key(s, c)) if s or c else self
            value: Decimal | None = getattr(table, rate_type) if table is not None else None
            if value is not None:
                if s != service:
                    reasons.add("tier")
                if c != context:
                    reasons.add("context")
                return value
        if rate_type not in _DERIVED:
            return Decimal(0)
        derived, reason = _DERIVED[rate_type]
        if reason is not None:
            reasons.add(reason)
        return self._rate(derived, service, context, reasons)

    def _fees(self, usage: Usage, search_size: str | None, reasons: set[str]) -> Decimal:
        fees = Decimal(0)
        if searches := usage.web_search or 0:
            per_size = dict(self.web_search)
            per_query = per_size.get(search_size or "medium") or per_size.get("medium")
            if per_query is None:
                reasons.add("fee")
            else:
                fees += searches * per_query
        if (fetches := usage.web_fetch or 0) and self.web_fetch is not None:
            fees += fetches * self.web_fetch
        return fees
