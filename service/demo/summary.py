"""The demo's terminal summary, computed from the proxy's own ``/metrics`` as a dashboard would.

``Snapshot.parse`` reads one Prometheus exposition (``prometheus_client.parser``) into totals
per project and per model: requests, errors (status 400 and up, 499 hang-ups included), spend
(``spendgate_cost_usd_total``), tokens in and out (and how many were estimated), and latency
percentiles interpolated from the histogram buckets the way PromQL's ``histogram_quantile``
does. Budgets appear when the proxy exports ``spendgate_budget_*``. Everything is cumulative
since the proxy started. ``table`` renders the full view (live on a terminal, and at the
end); ``line`` is one plain line, for logs and pipes. Pure functions, no I/O.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families


@dataclass
class Totals:
    requests: float = 0.0
    errors: float = 0.0
    spend: float = 0.0
    tokens_in: float = 0.0
    tokens_out: float = 0.0
    estimated: float = 0.0
    cached: float = 0.0
    latency: dict[float, float] = field(default_factory=lambda: defaultdict(float))
    ttft: dict[float, float] = field(default_factory=lambda: defaultdict(float))

    def p95(self) -> float | None:
        return quantile(0.95, self.latency)

    def ttft_p50(self) -> float | None:
        return quantile(0.5, self.ttft)


@dataclass
class Budget:
    name: str
    spend: float = 0.0
    limit: float = 0.0
    blocked: float = 0.0
    action: str = ""


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """``histogram_quantile(q, ...)`` over cumulative bucket counts keyed by upper bound."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower  # beyond the last finite bucket: its bound, as Prometheus says
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


@dataclass
class Snapshot:
    projects: dict[str, Totals] = field(default_factory=lambda: defaultdict(Totals))
    models: dict[tuple[str, str], Totals] = field(default_factory=lambda: defaultdict(Totals))
    total: Totals = field(default_factory=Totals)
    budgets: dict[str, Budget] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Snapshot:
        snap = cls()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                snap._add(sample.name, sample.labels, sample.value)
        return snap

    def _rows(self, labels: dict[str, str]) -> list[Totals]:
        return [self.total, self.projects[labels["project"]],
                self.models[(labels["model"], labels["upstream"])]]

    def _add(self, name: str, labels: dict[str, str], value: float) -> None:
        if name.startswith("spendgate_budget_"):
            self._add_budget(name, labels, value)
            return
        if name == "spendgate_requests_total":
            status = labels["status"]
            failed = status.isdigit() and int(status) >= 400
            for row in self._rows(labels):
                row.requests += value
                row.errors += value if failed else 0.0
        elif name == "spendgate_cost_usd_total":
            for row in self._rows(labels):
                row.spend += value
        elif name == "spendgate_tokens_total":
            kind = labels["type"]
            for row in self._rows(labels):
                if kind == "input":
                    row.tokens_in += value
                elif kind == "output":
                    row.tokens_out += value
                elif kind == "cached_input":
                    row.cached += value
                if labels["source"] == "estimated" and kind in ("input", "output"):
                    row.estimated += value
        elif name in ("spendgate_request_duration_seconds_bucket",
                      "spendgate_time_to_first_token_seconds_bucket"):
            bound = float(labels["le"])
            for row in self._rows(labels):
                series = row.latency if "duration" in name else row.ttft
                series[bound] += value

    def _add_budget(self, name: str, labels: dict[str, str], value: float) -> None:
        budget_name = labels.get("budget")
        if budget_name is None:
            return
        budget = self.budgets.setdefault(budget_name, Budget(budget_name))
        if name == "spendgate_budget_spend_usd":
            budget.spend = value
        elif name == "spendgate_budget_limit_usd":
            budget.limit = value
        elif name == "spendgate_budget_blocked_total":
            budget.blocked += value
        elif name == "spendgate_budget_info":
            budget.action = labels.get("action", "")


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def _money(value: float) -> str:
    return f"${value:,.4f}" if value < 100 else f"${value:,.2f}"


def _int(value: float) -> str:
    return f"{round(value):,}"


def table(snap: Snapshot) -> list[str]:
    """The full summary as lines: by project, by model, budgets."""
    lines = [f"{'project':<16}{'requests':>9}{'errors':>8}{'p95':>8}{'tokens in':>12}"
             f"{'tokens out':>12}{'spend':>12}"]
    rows = sorted(snap.projects.items(), key=lambda item: -item[1].spend)
    for name, row in [*rows, ("total", snap.total)]:
        lines.append(f"{name[:15]:<16}{_int(row.requests):>9}{_int(row.errors):>8}"
                     f"{_seconds(row.p95()):>8}{_int(row.tokens_in):>12}"
                     f"{_int(row.tokens_out):>12}{_money(row.spend):>12}")
    lines += ["", f"{'model':<24}{'upstream':<11}{'requests':>9}{'ttft p50':>9}{'p95':>8}"
              f"{'estimated':>10}{'spend':>12}"]
    for (model, upstream), row in sorted(snap.models.items(), key=lambda item: -item[1].spend):
        lines.append(f"{model[:23]:<24}{upstream[:10]:<11}{_int(row.requests):>9}"
                     f"{_seconds(row.ttft_p50()):>9}{_seconds(row.p95()):>8}"
                     f"{_int(row.estimated):>10}{_money(row.spend):>12}")
    if snap.budgets:
        lines += ["", "budgets"]
        for budget in snap.budgets.values():
            used = f"{budget.spend / budget.limit:.0%}" if budget.limit else "-"
            blocked = f", {_int(budget.blocked)} calls blocked" if budget.blocked else ""
            action = f" ({budget.action})" if budget.action else ""
            lines.append(f"  {budget.name:<24}{_money(budget.spend):>11} of "
                         f"{_money(budget.limit):<10}{used:>5}{action}{blocked}")
    return lines


def line(snap: Snapshot, elapsed_s: float, per_second: float) -> str:
    """One plain progress line (non-terminal output)."""
    t = snap.total
    projects = ", ".join(f"{name} {_money(row.spend)}" for name, row in
                         sorted(snap.projects.items(), key=lambda item: -item[1].spend))
    return (f"[{elapsed_s:6.1f}s] {_int(t.requests)} requests ({per_second:.1f}/s), "
            f"{_int(t.errors)} errors, p95 {_seconds(t.p95())}, tokens {_int(t.tokens_in)} in / "
            f"{_int(t.tokens_out)} out ({_int(t.estimated)} estimated), "
            f"spend {_money(t.spend)}: {projects or 'none yet'}")
