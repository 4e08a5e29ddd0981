#!/usr/bin/env python3
"""Generate spendgate's built-in price catalog from LiteLLM's community price map.

    python scripts/build_price_catalog.py [INPUT] [--output PATH] [--source TEXT] [--date DATE]

INPUT is LiteLLM's ``model_prices_and_context_window.json`` (MIT licence); it defaults to
the copy committed in ``scripts/data/`` (see its README). The result is committed too:
``service/accounting/data/prices.json``, which the package ships; nothing reads INPUT at
run time. The conversion is ``spendgate.accounting.pricing.convert_litellm``, the very code
``PriceCatalog.load`` runs on a user's own LiteLLM file; the format is documented in
``service/accounting/pricing.py``. Every tier of the map is carried (``litellm_rates``):
service tiers (``_flex``, ``_priority``, ``_batches``), context thresholds (``_above_<N>k_tokens``,
per token type, also with a service tier), 1-hour cache writes
(``cache_creation_input_token_cost_above_1hr``), audio and image token rates (input and
output) and the web search fee (``search_context_cost_per_query``, by context size).

The output is deterministic (sorted, one model per line). ``generated`` is ``--date``, else
the existing file's date when its models and source are unchanged (so a re-run gives no
diff), else today (UTC). Pass ``--source`` naming the LiteLLM version when updating INPUT.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))  # run as a plain script from anywhere
import sourcetree  # noqa: E402

sourcetree.install(REPO)  # this checkout's converter, whatever else is installed
from spendgate.accounting.pricing import convert_litellm  # noqa: E402

DEFAULT_INPUT = REPO / "scripts" / "data" / "litellm_model_prices.json"
DEFAULT_OUTPUT = REPO / "service" / "accounting" / "data" / "prices.json"
DEFAULT_SOURCE = "LiteLLM model_prices_and_context_window.json (MIT), litellm 1.110"
UNIT = "USD per million tokens"


def render(source: str, generated: str, models: dict[str, dict[str, Any]]) -> str:
    """The catalog document as text: header fields, then one sorted model per line."""
    def dump(value: object) -> str:
        return json.dumps(value, sort_keys=True, ensure_ascii=False)

    header = {"format": 1, "generated": generated, "source": source, "unit": UNIT}
    lines = ["{", *(f" {dump(k)}: {dump(v)}," for k, v in header.items()), ' "models": {']
    rows = [f"  {dump(k)}: {dump(models[k])}" for k in sorted(models)]
    return "\n".join([*lines, ",\n".join(rows), " }", "}"]) + "\n"


def previous_date(output: Path, source: str, models: dict[str, dict[str, Any]]) -> str | None:
    """The existing catalog's ``generated`` date if nothing else in it would change."""
    try:
        old = json.loads(output.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if old.get("source") == source and old.get("models") == models:
        return str(old.get("generated"))
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", nargs="?", type=Path, default=DEFAULT_INPUT,
                        help="LiteLLM price map JSON (default: %(default)s)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                        help="catalog to write (default: %(default)s)")
    parser.add_argument("--source", default=DEFAULT_SOURCE, help="provenance to record")
    parser.add_argument("--date", help="generated date, YYYY-MM-DD (default: see above)")
    args = parser.parse_args(argv)

    raw = json.loads(args.input.read_text(encoding="utf-8"))
    models = convert_litellm(raw)
    generated = (args.date or previous_date(args.output, args.source, models)
                 or datetime.now(UTC).date().isoformat())
    text = render(args.source, generated, models)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    aliases = sum("alias_of" in row for row in models.values())
    tiers = sum(len(row.get("tiers", ())) for row in models.values())
    print(f"{args.output}: {len(models) - aliases} models, {aliases} aliases, {tiers} tiers, "
          f"{len(text.encode()) / 1024:.0f} KB, generated {generated}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
