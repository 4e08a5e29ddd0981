"""``spendgate prices``: a model's resolved price with every tier, fee and source, glob
matching, and the catalog table. Text for people; the contracts are in ``pricing``/``rates``."""

from __future__ import annotations

import fnmatch
import re
from decimal import Decimal

from spendgate.accounting.pricing import PriceCatalog, fmt
from spendgate.accounting.rates import RATE_TYPES, SEARCH_SIZES, Price

_RATE_NAMES = {"input": "input", "cached_input": "cached input", "cache_write": "cache write",
               "cache_write_1h": "cache write 1h", "output": "output",
               "input_audio": "input audio", "output_audio": "output audio",
               "input_image": "input image", "output_image": "output image"}
_GLOB = re.compile(r"[*?\[]")


def matching_models(catalog: PriceCatalog, pattern: str) -> list[str]:
    """The names a glob (``gpt-5*``, case-insensitive) matches among overrides, catalog keys
    and aliases, sorted; a pattern without ``*``, ``?`` or ``[`` is returned as it is."""
    if not _GLOB.search(pattern):
        return [pattern]
    names = set(catalog.overrides) | set(catalog.entries) | set(
        catalog.aliases)
    return sorted(n for n in names if fnmatch.fnmatchcase(n.lower(), pattern.lower()))


def _rates_line(price: Price) -> str:
    return ", ".join(f"{_RATE_NAMES[t]} {fmt(v)}" for t in RATE_TYPES
                     if (v := getattr(price, t)) is not None)


def describe_price(catalog: PriceCatalog, model: str, upstream: str | None = None,
                   provider: str | None = None) -> str:
    """``spendgate prices MODEL``: the resolved per-Mtok prices, every tier and fee, where they
    come from (the step and key that matched, the catalog's source and date, or the config
    key), and the upstream's multiplier. An unknown model (``catalog.resolve`` is None: the CLI
    exits 1) gets a message saying its calls are counted at cost 0."""
    footer = f"catalog: {catalog.source}, generated {catalog.generated}\n"
    hit = catalog.resolve(model, upstream, provider)
    if hit is None:
        return (f"unknown model {model!r}: not in the price catalog, so its calls are counted "
                f"at cost 0; add a price override to price it\n{footer}")
    p, entry = hit.price, catalog.entries.get(hit.matched)
    source = f"catalog key {hit.matched!r}"
    if hit.source == "override":
        source = f"config pricing.overrides[{hit.matched!r}]"
    elif hit.source == "upstream_default":
        source = f"config upstreams.{hit.matched}.pricing"
    if hit.source in ("override", "upstream_default"):
        entry = None  # a name that happens to equal a catalog key must not show its metadata
    lines = [f"model: {model}", f"matched: {hit.matched} ({hit.source})",
             f"prices from: {source}"]
    if entry:
        lines.append(f"provider: {entry.provider}, mode: {entry.mode}" + "".join(
            f", max {k} tokens {v}" for k, v in (("input", entry.max_input_tokens),
                                                  ("output", entry.max_output_tokens)) if v))

    def cache_price(d: Decimal | None) -> str:
        return fmt(d) if d is not None or p.input is None else "- (charged at the input price)"

    lines += [f"USD per 1M tokens: input {fmt(p.input)}",
              f"  cached input {cache_price(p.cached_input)}",
              f"  cache write {cache_price(p.cache_write)}", f"  output {fmt(p.output)}"]
    lines += [f"  {_RATE_NAMES[t]} {fmt(v)}" for t in (*RATE_TYPES[5:], "cache_write_1h")
              if (v := getattr(p, t)) is not None]
    if p.tiers:
        lines.append("tiers, USD per 1M tokens (a rate a tier does not list falls back, as "
                     "README Pricing says):")
        lines += [f"  {key}: {_rates_line(table)}" for key, table in p.tiers]
    if p.web_search:
        lines.append("fee: web search per query, USD: " + ", ".join(
            f"{size} {fmt(v)}" for size, v in sorted(
                p.web_search, key=lambda sv: SEARCH_SIZES.index(sv[0]))))
    if p.web_fetch is not None:
        lines.append(f"fee: web fetch per request, USD: {fmt(p.web_fetch)}")
    if (m := catalog.multiplier(upstream)) != 1:
        lines.append(f"upstreams.{upstream}.price_multiplier: {fmt(m)} (on every price above)")
    if entry and entry.note:
        lines.append(f"note: {entry.note} (not applied)")
    return "\n".join(lines) + "\n" + footer


def price_table(catalog: PriceCatalog) -> str:
    """``spendgate prices``: an aligned table of overrides, upstream defaults, then catalog
    models (sorted), with per-Mtok prices; the last line gives the catalog's source and date."""
    listed = [(k, "(override)", "", p) for k, p in sorted(catalog.overrides.items())]
    listed += [(f"upstream:{k}", "(upstream default)", "", p)
               for k, p in sorted(catalog.upstream_defaults.items())]
    listed += [(k, e.provider, e.mode, e.price) for k, e in sorted(catalog.entries.items())]
    rows: list[tuple[str, ...]] = [
        ("MODEL", "PROVIDER", "MODE", "INPUT", "CACHED", "CACHE_WRITE", "OUTPUT")]
    rows += [(k, prov, mode, *map(fmt, (p.input, p.cached_input, p.cache_write, p.output)))
             for k, prov, mode, p in listed]
    widths = [max(map(len, column)) for column in zip(*rows, strict=True)]
    lines = ["  ".join(c.ljust(w) if i < 3 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()
             for row in rows]
    lines.append(f"{len(catalog)} models, {len(catalog.aliases)} aliases; USD per 1M tokens; "
                 f"catalog: {catalog.source}, generated {catalog.generated}")
    return "\n".join(lines) + "\n"
