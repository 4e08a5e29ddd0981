"""Read the PromQL out of the spendgate dashboards, ready to run against Prometheus.

Used by tests/test_grafana.py (syntax check through promtool) and meant for a live
test that queries a real Prometheus scraping a real proxy, e.g.::

    for q in iter_panel_queries():
        expr = substitute_variables(q.expr, rate_interval="30s", range_="5m")
        result = prometheus_instant_query(expr)   # yours
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DASHBOARD_DIR = Path(__file__).resolve().parent / "dashboards"


@dataclass(frozen=True)
class PanelQuery:
    dashboard_uid: str
    panel_id: int
    panel_title: str
    ref_id: str
    expr: str  # raw, still holding Grafana variables
    instant: bool  # the panel asks for one value (stat, bar gauge, table)
    exemplar: bool

    @property
    def name(self) -> str:
        """Stable id usable in test ids and as a recording-rule name."""
        return f"{self.dashboard_uid}_{self.panel_id}_{self.ref_id}".replace("-", "_")


def load_dashboards(directory: Path = DASHBOARD_DIR) -> dict[str, dict[str, Any]]:
    """File name -> parsed dashboard, for every *.json in the directory."""
    return {p.name: json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))}


def iter_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def iter_panel_queries(directory: Path = DASHBOARD_DIR) -> Iterator[PanelQuery]:
    for dash in load_dashboards(directory).values():
        for panel in iter_panels(dash):
            for t in panel.get("targets", []):
                yield PanelQuery(dash["uid"], panel["id"], panel["title"], t["refId"],
                                 t["expr"], bool(t.get("instant")), bool(t.get("exemplar")))


def iter_variable_queries(directory: Path = DASHBOARD_DIR) -> Iterator[tuple[str, str, str]]:
    """(dashboard uid, variable name, label_values(...) query) of every query variable."""
    for dash in load_dashboards(directory).values():
        for var in dash["templating"]["list"]:
            if var["type"] == "query":
                q = var["query"]
                yield dash["uid"], var["name"], q["query"] if isinstance(q, dict) else q


_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def substitute_variables(expr: str, *, rate_interval: str = "1m", range_: str = "1h",
                         values: Mapping[str, str] | None = None) -> str:
    """Replace Grafana variables the way Grafana would before sending the query.

    `$__rate_interval`/`$__interval` -> rate_interval, `$__range` -> range_,
    `${datasource}` -> "", any other variable -> values[name], default `.*`
    (what a multi-value variable with "All" selected renders as).
    """
    builtins = {"__rate_interval": rate_interval, "__interval": rate_interval,
                "__range": range_, "datasource": ""}
    values = values or {}

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name in builtins:
            return builtins[name]
        if name.startswith("__"):
            raise ValueError(f"unsupported Grafana variable ${name} in {expr!r}")
        return values.get(name, ".*")

    return _VARIABLE.sub(repl, expr)


_LABEL_VALUES = re.compile(r"^\s*label_values\((?:(.+),)?\s*(\w+)\s*\)\s*$", re.S)


def label_values_to_promql(query: str) -> str:
    """`label_values(metric{...}, label)` -> `group by (label) (metric{...})`.

    The same series Grafana lists the variable's values from, as an instant query.
    """
    m = _LABEL_VALUES.match(query)
    if not m or not m.group(1):
        raise ValueError(f"not a label_values(metric, label) query: {query!r}")
    return f"group by ({m.group(2)}) ({m.group(1).strip()})"
