"""The comparison: the provider's tokens and cost against the ledger's, per upstream x UTC
day x model, and each day's drift.

Drift is ``(provider - ours) / provider`` over a day's whole cost (every model): positive
when the provider bills more than spendgate counted (calls that bypassed the proxy, or a
price missing from the catalog), negative when spendgate counted more. A day on which the
provider reports no cost has drift 0 when spendgate counted none either, else -1. Models
are joined by name: the ledger keeps the model the upstream reported (the dated snapshot
the provider's reports name), else the one asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from spendgate.money import from_nano
from spendgate.reconcile.base import HistoryKey, ProviderReport
from spendgate.usage import TOKEN_TYPES

SHOWN_TYPES = ("input", "cached_input", "cache_write", "output")


def drift(provider: Decimal, ours: Decimal) -> float:
    if provider == 0:
        return 0.0 if ours == 0 else -1.0
    return float((provider - ours) / provider)


@dataclass(slots=True)
class Row:
    """One model's day: the provider's figures and the ledger's."""

    upstream: str
    day: str
    model: str
    provider_tokens: dict[str, int] = field(default_factory=dict)
    provider_cost: Decimal = Decimal(0)
    our_tokens: dict[str, int] = field(default_factory=dict)
    our_cost: Decimal = Decimal(0)

    @property
    def ratio(self) -> float:
        return drift(self.provider_cost, self.our_cost)


@dataclass(slots=True)
class Day:
    """One upstream's day: every model summed, and whether it drifts past the threshold."""

    upstream: str
    day: str
    provider_cost: Decimal
    our_cost: Decimal
    ratio: float
    drifted: bool


@dataclass(slots=True)
class Comparison:
    rows: list[Row]
    days: list[Day]

    @property
    def drifted(self) -> bool:
        return any(d.drifted for d in self.days)


def compare(upstream: str, days: Sequence[str], report: ProviderReport,
            history: dict[HistoryKey, int], warn_ratio: float) -> Comparison:
    """``report`` (the provider's) against ``history`` (the ledger's) for ``days``."""
    rows: dict[tuple[str, str], Row] = {}
    wanted = set(days)
    for (day, model), reported in report.items():
        if day in wanted:
            row = rows.setdefault((day, model), Row(upstream, day, model))
            row.provider_tokens, row.provider_cost = dict(reported.tokens), reported.cost
    for (day, name, model, kind), amount in history.items():
        if name != upstream or day not in wanted:
            continue
        row = rows.setdefault((day, model), Row(upstream, day, model))
        if kind == "cost":
            row.our_cost += from_nano(amount)
        elif kind in TOKEN_TYPES:
            row.our_tokens[kind] = row.our_tokens.get(kind, 0) + amount
    ordered = sorted(rows.values(), key=lambda r: (r.day, r.model))
    totals = []
    for day in sorted(wanted):
        theirs = sum((r.provider_cost for r in ordered if r.day == day), Decimal(0))
        ours = sum((r.our_cost for r in ordered if r.day == day), Decimal(0))
        ratio = drift(theirs, ours)
        totals.append(Day(upstream, day, theirs, ours, ratio, abs(ratio) > warn_ratio))
    return Comparison(ordered, totals)


def merge(comparisons: Sequence[Comparison]) -> Comparison:
    return Comparison([r for c in comparisons for r in c.rows],
                      [d for c in comparisons for d in c.days])


def _tokens(tokens: dict[str, int]) -> str:
    return "/".join(f"{tokens.get(t, 0):,}" for t in SHOWN_TYPES)


def _usd(amount: Decimal) -> str:
    return f"${amount.quantize(Decimal('0.000001')):,}"


def table(comparison: Comparison) -> str:
    """``spendgate reconcile``'s table: one line per model and day, then one per day."""
    head = ("UPSTREAM", "DAY", "MODEL", "PROVIDER TOKENS", "PROVIDER USD", "OUR TOKENS",
            "OUR USD", "DIFF USD", "RATIO")
    lines: list[tuple[str, ...]] = [head]
    for r in comparison.rows:
        lines.append((r.upstream, r.day, r.model, _tokens(r.provider_tokens),
                      _usd(r.provider_cost), _tokens(r.our_tokens), _usd(r.our_cost),
                      _usd(r.provider_cost - r.our_cost), f"{r.ratio:+.2%}"))
    for d in comparison.days:
        lines.append((d.upstream, d.day, "(day total)", "", _usd(d.provider_cost), "",
                      _usd(d.our_cost), _usd(d.provider_cost - d.our_cost),
                      f"{d.ratio:+.2%}" + (" DRIFT" if d.drifted else "")))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = ["  ".join(c.ljust(w) if i < 3 else c.rjust(w)
                     for i, (c, w) in enumerate(zip(line, widths, strict=True))).rstrip()
           for line in lines]
    return "\n".join(out) + f"\ntokens: {'/'.join(SHOWN_TYPES)}\n"


def as_json(comparison: Comparison) -> dict[str, Any]:
    """The same figures for machines: costs as exact decimal strings."""
    return {
        "rows": [{"upstream": r.upstream, "day": r.day, "model": r.model,
                  "provider_tokens": r.provider_tokens, "provider_cost_usd": str(r.provider_cost),
                  "our_tokens": r.our_tokens, "our_cost_usd": str(r.our_cost),
                  "diff_usd": str(r.provider_cost - r.our_cost), "ratio": r.ratio}
                 for r in comparison.rows],
        "days": [{"upstream": d.upstream, "day": d.day, "provider_cost_usd": str(d.provider_cost),
                  "our_cost_usd": str(d.our_cost), "ratio": d.ratio, "drift": d.drifted}
                 for d in comparison.days],
        "drift": comparison.drifted,
    }
