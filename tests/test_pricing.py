"""Pricing: exact cost math, price resolution, the generated catalog and the CLI renderers.

Real data only: the committed catalog, and the LiteLLM price map it is generated from
(``scripts/data/litellm_model_prices.json``) to check that catalog against.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from itertools import repeat
from pathlib import Path

import pytest

from spendgate.accounting.describe import describe_price, price_table
from spendgate.accounting.pricing import (
    Price,
    PriceCatalog,
    ResolvedPrice,
    convert_litellm,
    per_mtok,
)
from spendgate.usage import Usage

REPO = Path(__file__).resolve().parents[1]
CATALOG_FILE = REPO / "service" / "accounting" / "data" / "prices.json"
BUILD_SCRIPT = REPO / "scripts" / "build_price_catalog.py"
LITELLM_MAP = REPO / "scripts" / "data" / "litellm_model_prices.json"

PRICE_FIELDS = {"input": "input_cost_per_token", "output": "output_cost_per_token",
                "cached_input": "cache_read_input_token_cost",
                "cache_write": "cache_creation_input_token_cost"}


@pytest.fixture(scope="module")
def catalog() -> PriceCatalog:
    return PriceCatalog.load()


@pytest.fixture(scope="module")
def litellm() -> dict[str, dict[str, object]]:
    data: dict[str, dict[str, object]] = json.loads(LITELLM_MAP.read_text(encoding="utf-8"))
    return data


def resolved(cat: PriceCatalog, model: str | None, **kw: str) -> ResolvedPrice:
    hit = cat.resolve(model, **kw)
    assert hit is not None, model
    return hit


# --- cost math ---------------------------------------------------------------------------

def test_gpt_4o_mini_example_is_exact(catalog: PriceCatalog) -> None:
    price = resolved(catalog, "gpt-4o-mini").price
    usage = Usage(input=1000, cached_input=200, output=50)
    # 800 * 0.15 / 1e6 + 200 * 0.075 / 1e6 + 50 * 0.6 / 1e6
    assert price.cost(usage) == Decimal("0.000165")


def test_a_million_tiny_calls_sum_exactly() -> None:
    price = Price(input=Decimal("0.15"), output=Decimal("0.6"))
    one = price.cost(Usage(input=7, output=3))  # 7 * 0.15 + 3 * 0.6 = 2.85 micro-dollars
    assert one == Decimal("0.00000285")
    assert sum(repeat(one, 1_000_000), Decimal(0)) == Decimal("2.85")
    assert sum(repeat(7 * 0.15e-6 + 3 * 0.6e-6, 1_000_000)) != 2.85  # what floats would do


def test_cache_write_and_fallbacks() -> None:
    anthropic_like = Price(input=Decimal(3), output=Decimal(15), cached_input=Decimal("0.3"),
                           cache_write=Decimal("3.75"))
    usage = Usage(input=10_000, cached_input=6_000, cache_write=3_000, output=500, reasoning=200)
    # plain 1000 * 3 + 6000 * 0.3 + 3000 * 3.75 + 500 * 15 (reasoning is inside output)
    assert anthropic_like.cost(usage) == Decimal("0.02355")
    flat = Price(input=Decimal(2), output=Decimal(8))  # cache prices fall back to input
    assert flat.cost(usage) == Decimal("0.024")


def test_none_counts_zero_and_cost_is_never_negative() -> None:
    price = Price(input=Decimal(1), output=Decimal(2), cached_input=Decimal("0.5"))
    assert price.cost(Usage()) == 0
    assert price.cost(Usage(output=1_000_000)) == 2
    # inconsistent report (cached without input): the plain part floors at 0
    assert price.cost(Usage(cached_input=1_000_000)) == Decimal("0.5")
    assert Price(output=Decimal(1)).cost(Usage(input=5, output=1_000_000)) == 1


def test_price_is_frozen_and_parses_config_values() -> None:
    price = Price.from_mapping({"input": 0.15, "output": "0.6", "cached_input": 0})
    assert price == Price(input=Decimal("0.15"), output=Decimal("0.6"), cached_input=Decimal(0))
    with pytest.raises(dataclasses.FrozenInstanceError):
        price.input = Decimal(1)  # type: ignore[misc]
    for bad in ({"input": -1}, {"input": "abc"}, {"input": True}, {"inptu": 1},
                {"output": float("nan")}):
        with pytest.raises(ValueError):
            Price.from_mapping(bad)


# --- conversion --------------------------------------------------------------------------

@pytest.mark.parametrize(("per_token", "expected"), [
    (1.5e-07, "0.15"), (7.5e-08, "0.075"), (1e-05, "10"), (0.0, "0"), (0, "0"), (3, "3000000"),
    (2.99999e-06, "2.99999"),  # a short repr is what was typed, kept as is
    (2.0000000000000002e-07, "0.2"),  # float artefacts of 0.2 / 1e6 and the like
    (9.499999999999999e-07, "0.95"), (1.4850000000000002e-06, "1.485"),
    (4.2000000000000006e-08, "0.042"),
    (1.1428571428571428e-06, "1.1428571428571428"),  # 8/7: genuinely long, kept
])
def test_per_mtok_is_exact_without_float_artefacts(per_token: float, expected: str) -> None:
    assert per_mtok(per_token) == expected


def test_committed_catalog_has_clean_decimal_strings() -> None:
    doc = json.loads(CATALOG_FILE.read_text(encoding="utf-8"))
    assert doc["format"] == 1 and doc["unit"] == "USD per million tokens"
    assert "LiteLLM" in doc["source"] and "MIT" in doc["source"]
    for key, row in doc["models"].items():
        for field in ("input_per_mtok", "cached_input_per_mtok", "cache_write_per_mtok",
                      "output_per_mtok"):
            if field in row:
                text = row[field]
                assert format(Decimal(text).normalize(), "f") == text, (key, text)
                assert "00000" not in text.lstrip("0.") and "99999" not in text, (key, text)
    assert 300 <= len(doc["models"]) <= 1200
    # 1,102 models and 898 tier tables (Bedrock ids and every tier): 321 KiB on 2026-12-07.
    assert CATALOG_FILE.stat().st_size < 400 * 1024


def test_committed_catalog_is_what_the_build_script_produces(tmp_path: Path) -> None:
    committed = CATALOG_FILE.read_text(encoding="utf-8")
    date = json.loads(committed)["generated"]
    out = tmp_path / "prices.json"
    subprocess.run([sys.executable, str(BUILD_SCRIPT), str(LITELLM_MAP), "--output", str(out),
                    "--date", date], check=True, capture_output=True, cwd=tmp_path)
    assert out.read_text(encoding="utf-8") == committed, "re-run scripts/build_price_catalog.py"
    # without --date, an unchanged catalog keeps its date: re-running gives no diff
    subprocess.run([sys.executable, str(BUILD_SCRIPT), str(LITELLM_MAP), "--output", str(out)],
                   check=True, capture_output=True)
    assert out.read_text(encoding="utf-8") == committed


FLAGSHIPS = ["gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-5", "o3", "text-embedding-3-small",
             "claude-sonnet-4-5", "claude-sonnet-4-5-20250929", "claude-opus-4-7",
             "gemini/gemini-2.5-pro", "mistral/mistral-large-latest", "deepseek-chat",
             "deepseek/deepseek-chat", "xai/grok-4.7", "command-a-03-2025",
             "cohere/embed-v4.0", "voyage/voyage-3.5", "moonshot/kimi-k3", "zai/glm-5.3"]


@pytest.mark.parametrize("model", FLAGSHIPS)
def test_flagship_prices_equal_litellms(catalog: PriceCatalog, model: str,
                                        litellm: dict[str, dict[str, object]]) -> None:
    entry = catalog.entries[model]
    spec = litellm[model]
    assert entry.provider == spec["litellm_provider"] and entry.mode == spec["mode"]
    for ours, theirs in PRICE_FIELDS.items():
        value = spec.get(theirs)
        expected = None if value is None else Decimal(repr(value)) * 10**6
        assert getattr(entry.price, ours) == expected, (model, ours)
    assert entry.price.input and entry.price.input > 0
    assert resolved(catalog, model) == ResolvedPrice(entry.price, "exact", model)


def test_what_the_catalog_leaves_out(catalog: PriceCatalog,
                                     litellm: dict[str, dict[str, object]]) -> None:
    assert "ft:gpt-4o-mini-2024-07-18" in litellm and catalog.resolve("ft:gpt-4o-mini") is None
    assert litellm["gpt-image-1"]["mode"] == "image_generation"
    assert catalog.resolve("gpt-image-1") is None
    tiered = litellm["dashscope/qwen3-max"]  # tiered-only pricing: Price cannot express it
    assert "tiered_pricing" in tiered and "input_cost_per_token" not in tiered
    assert "dashscope/qwen3-max" not in catalog.entries
    assert "azure/gpt-4o" not in catalog.entries and "sample_spec" not in catalog.entries
    assert all(e.mode in ("chat", "completion", "responses", "embedding")
               for e in catalog.entries.values())


# --- resolution --------------------------------------------------------------------------

def test_override_beats_everything_and_upstream_default_beats_the_catalog() -> None:
    mine = Price(input=Decimal(1), output=Decimal(2))
    local = Price(input=Decimal("0.01"), output=Decimal("0.02"))
    cat = PriceCatalog.load(overrides={"GPT-4o-mini": mine}, upstream_defaults={"vllm": local})
    assert cat.resolve("gpt-4o-mini", upstream="vllm") == ResolvedPrice(mine, "override",
                                                                        "GPT-4o-mini")
    assert cat.resolve("gpt-4o", upstream="vllm") == ResolvedPrice(local, "upstream_default",
                                                                   "vllm")
    assert cat.resolve(None, upstream="vllm") == ResolvedPrice(local, "upstream_default", "vllm")
    assert cat.resolve("my-finetune", upstream="vllm") is not None
    assert resolved(cat, "gpt-4o", upstream="openai").source == "exact"
    assert cat.resolve("gpt-4o-mini-2024-07-18") == ResolvedPrice(
        PriceCatalog.load().entries["gpt-4o-mini-2024-07-18"].price, "exact",
        "gpt-4o-mini-2024-07-18")  # the override is for the exact name only


@pytest.mark.parametrize(("model", "source", "matched"), [
    ("gpt-4o-mini", "exact", "gpt-4o-mini"),
    ("GPT-4O-Mini", "exact", "gpt-4o-mini"),
    ("claude-sonnet-latest", "exact", "claude-sonnet-5-5"),  # LiteLLM's own alias
    ("minimax/minimax-m3", "exact", "minimax/MiniMax-M3"),
    ("gpt-4o-mini-2099-12-31", "snapshot", "gpt-4o-mini"),
    ("claude-sonnet-4-6-20260101", "snapshot", "claude-sonnet-4-6"),
    ("claude-sonnet-4-6@20260101", "snapshot", "claude-sonnet-4-6"),  # vertex style
    ("Claude-Opus-4-7-Latest", "snapshot", "claude-opus-4-7"),
    ("gpt-4o-audio-preview", "snapshot", "gpt-4o-audio-preview-2025-06-03"),  # newest dated
    ("gpt-5.1-preview", "snapshot", "gpt-5.1"),
    ("openai/gpt-4o", "provider_prefix", "gpt-4o"),
    ("openrouter/anthropic/claude-opus-4-7", "provider_prefix", "claude-opus-4-7"),
    ("gemini-2.5-pro", "provider_prefix", "gemini/gemini-2.5-pro"),
    ("mistral-large-latest", "provider_prefix", "mistral/mistral-large-latest"),
    ("grok-4.7", "provider_prefix", "xai/grok-4.7"),
    ("gemini-2.5-flash-preview-09-2025", "provider_prefix", "gemini/gemini-2.5-flash"),
])
def test_resolution_steps(catalog: PriceCatalog, model: str, source: str, matched: str) -> None:
    hit = resolved(catalog, model)
    assert (hit.source, hit.matched) == (source, matched)
    assert hit.price == catalog.entries[matched].price


def test_the_calls_provider_is_tried_as_a_prefix(catalog: PriceCatalog) -> None:
    groq = resolved(catalog, "openai/gpt-oss-120b", provider="groq")
    assert (groq.source, groq.matched) == ("provider_prefix", "groq/openai/gpt-oss-120b")
    together = resolved(catalog, "openai/gpt-oss-120b", provider="together_ai")
    assert together.matched == "together_ai/openai/gpt-oss-120b"
    # an open model sold by several hosts has no bare name: the host must be known
    assert catalog.resolve("openai/gpt-oss-120b") is None
    assert resolved(catalog, "gemini-2.5-pro", provider="gemini").source == "provider_prefix"


@pytest.mark.parametrize("model", [None, "", "  ", "no-such-model", "gpt-99", "claude-3-opus",
                                   "acme/no-such-model", "2024-07-18", "-latest"])
def test_unknown_is_none(catalog: PriceCatalog, model: str | None) -> None:
    assert catalog.resolve(model) is None
    assert catalog.resolve(model, upstream="not-configured", provider="openai") is None


def test_resolution_is_memoised_bounded_and_thread_safe(catalog: PriceCatalog) -> None:
    first = catalog.resolve("gpt-4o-mini-2024-07-18")
    assert catalog.resolve("gpt-4o-mini-2024-07-18") is first
    names = [f"made-up-{i}" for i in range(10_000)] + ["gpt-4o", "gemini-2.5-pro"] * 500
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(catalog.resolve, names))
    assert results[:10_000] == [None] * 10_000
    assert {r.matched for r in results[10_000:] if r} == {"gpt-4o", "gemini/gemini-2.5-pro"}
    assert len(catalog._cache) <= 4096


def test_catalog_is_read_only(catalog: PriceCatalog) -> None:
    with pytest.raises(TypeError):
        catalog.entries["gpt-4o"] = catalog.entries["o3"]  # type: ignore[index]
    with pytest.raises(AttributeError):
        catalog.new_attribute = 1  # type: ignore[attr-defined]


# --- loading -----------------------------------------------------------------------------

def test_loading_a_litellm_format_file(tmp_path: Path) -> None:
    raw = {
        "sample_spec": {"litellm_provider": "one of ...", "mode": "one of: chat, ..."},
        "gpt-7": {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": 2e-06,
                  "cache_read_input_token_cost": 2.0000000000000002e-07,
                  "output_cost_per_token": 8e-06, "output_cost_per_token_batches": 4e-06,
                  "max_output_tokens": 100000},
        "gpt-7-latest": {"alias_of": "gpt-7"},
        "gemini/gemini-9-pro": {"litellm_provider": "gemini", "mode": "chat",
                                "input_cost_per_token": 1e-06, "output_cost_per_token": 4e-06,
                                "input_cost_per_token_above_200k_tokens": 2e-06},
        "ft:gpt-7": {"litellm_provider": "openai", "mode": "chat",
                     "input_cost_per_token": 1e-06, "output_cost_per_token": 1e-06},
        "gpt-7-image": {"litellm_provider": "openai", "mode": "image_generation",
                        "input_cost_per_token": 1e-06},
        "azure/gpt-7": {"litellm_provider": "azure", "mode": "chat",
                        "input_cost_per_token": 1e-06, "output_cost_per_token": 1e-06},
        "dashscope/qwen-9": {"litellm_provider": "dashscope", "mode": "chat", "tiered_pricing": [
            {"input_cost_per_token": 1e-06, "output_cost_per_token": 1e-06, "range": [0, 1]}]},
        "bedrock/gpt-7-latest": {"alias_of": "azure/gpt-7"},
    }
    path = tmp_path / "model_prices_and_context_window.json"
    path.write_text(json.dumps(raw), encoding="utf-8")
    cat = PriceCatalog.load(str(path))
    assert sorted(cat.entries) == ["gemini/gemini-9-pro", "gpt-7"]
    assert dict(cat.aliases) == {"gpt-7-latest": "gpt-7"}
    gpt7 = cat.entries["gpt-7"]
    assert gpt7.price == Price(input=Decimal(2), output=Decimal(8), cached_input=Decimal("0.2"),
                               tiers=(("batch", Price(output=Decimal(4))),))
    assert gpt7.max_output_tokens == 100000
    assert cat.entries["gemini/gemini-9-pro"].price.tiers == (
        ("above_200k", Price(input=Decimal(2))),)
    assert resolved(cat, "gpt-7-latest").matched == "gpt-7"
    assert resolved(cat, "gemini-9-pro").source == "provider_prefix"
    for skipped in ("ft:gpt-7", "gpt-7-image", "dashscope/qwen-9", "sample_spec"):
        assert cat.resolve(skipped) is None, skipped
    # azure's own entry is left out, but its name still finds the vendor's price
    assert resolved(cat, "azure/gpt-7") == ResolvedPrice(gpt7.price, "provider_prefix", "gpt-7")
    assert str(path) in cat.source and len(cat.generated) == 10
    # The conversion itself, field for field: exact decimal strings per Mtok (the float
    # artefact 2.0000000000000002e-07 is read as the 0.2 the maintainers typed), the batch
    # and long-context tiers kept, the skipped entries absent.
    assert convert_litellm(raw) == {
        "gpt-7": {"provider": "openai", "mode": "chat", "input_per_mtok": "2",
                  "output_per_mtok": "8", "cached_input_per_mtok": "0.2",
                  "tiers": {"batch": {"output_per_mtok": "4"}}, "max_output_tokens": 100000},
        "gemini/gemini-9-pro": {"provider": "gemini", "mode": "chat", "input_per_mtok": "1",
                                "output_per_mtok": "4",
                                "tiers": {"above_200k": {"input_per_mtok": "2"}}},
        "gpt-7-latest": {"alias_of": "gpt-7"},
    }


def test_loading_our_own_format_and_rejecting_bad_files(tmp_path: Path) -> None:
    copy = tmp_path / "prices.json"
    copy.write_bytes(CATALOG_FILE.read_bytes())
    loaded = PriceCatalog.load(str(copy))
    builtin = PriceCatalog.load()
    assert loaded.entries == builtin.entries and loaded.generated == builtin.generated
    bad = tmp_path / "bad.json"
    for text in ('{"format": 1, "models": {"m": {"input_per_mtok": "-1"}}}',
                 '{"format": 1, "models": {"m": {"input_per_mtok": "cheap"}}}',
                 '{"format": 1, "models": {"a": {"alias_of": "missing"}}}',
                 '{"format": 2, "models": {}}', "[]", "not json"):
        bad.write_text(text, encoding="utf-8")
        with pytest.raises(ValueError):
            PriceCatalog.load(str(bad))
    with pytest.raises(OSError):
        PriceCatalog.load(str(tmp_path / "missing.json"))


# --- CLI renderers -----------------------------------------------------------------------

def test_describe_price(catalog: PriceCatalog) -> None:
    text = describe_price(catalog, "gpt-4o-mini-2024-07-18")
    assert "matched: gpt-4o-mini-2024-07-18 (exact)" in text
    assert "input 0.15\n" in text and "cached input 0.075\n" in text
    assert "output 0.6\n" in text and "cache write - (charged at the input price)" in text
    assert "provider: openai, mode: chat" in text
    assert f"catalog: {catalog.source}, generated {catalog.generated}" in text
    claude = describe_price(catalog, "claude-sonnet-4-5")
    assert "cache write 3.75" in claude and "output 15\n" in claude
    gemini = describe_price(catalog, "gemini-2.5-pro")
    assert "matched: gemini/gemini-2.5-pro (provider_prefix)" in gemini
    assert "above_200k: input 2.5, cached input 0.25, output 15" in gemini


def test_describe_unknown_and_override() -> None:
    free_cache = Price(input=Decimal(1), cached_input=Decimal(0))
    cat = PriceCatalog.load(overrides={"house-model": Price(input=Decimal("0.5")),
                                       "free-cache": free_cache})
    text = describe_price(cat, "no-such-model")
    assert text.startswith("unknown model 'no-such-model'") and "cost 0" in text
    assert cat.resolve("no-such-model") is None  # how the CLI knows to exit 1
    own = describe_price(cat, "house-model")
    assert "matched: house-model (override)" in own and "input 0.5\n" in own
    assert "output -\n" in own
    free = describe_price(cat, "free-cache")
    assert "cached input 0\n" in free and "cache write - (charged at the input price)" in free


def test_price_table(catalog: PriceCatalog) -> None:
    cat = PriceCatalog.load(overrides={"house-model": Price(input=Decimal("0.5"))},
                            upstream_defaults={"vllm": Price(input=Decimal(0))})
    lines = price_table(cat).splitlines()
    header = lines[0].split()
    assert header == ["MODEL", "PROVIDER", "MODE", "INPUT", "CACHED", "CACHE_WRITE", "OUTPUT"]
    row = next(line for line in lines if line.startswith("gpt-4o-mini "))
    assert row.split() == ["gpt-4o-mini", "openai", "chat", "0.15", "0.075", "-", "0.6"]
    assert lines[1].split()[:2] == ["house-model", "(override)"]
    assert lines[2].startswith("upstream:vllm")
    # numbers are right-aligned under their header
    output_end = len(lines[0])
    assert row.endswith("0.6") and len(row) == output_end
    assert len(lines) == 1 + 2 + len(catalog) + 1
    assert lines[-1].startswith(f"{len(catalog)} models") and catalog.generated in lines[-1]


# --- tiers: conversion of every tier key, literal values ---------------------------------

def test_conversion_carries_every_tier_key() -> None:
    raw = {"gpt-9": {
        "litellm_provider": "openai", "mode": "chat",
        "input_cost_per_token": 2.5e-06, "output_cost_per_token": 1.5e-05,
        "cache_read_input_token_cost": 2.5e-07,
        "input_cost_per_token_flex": 1.25e-06, "output_cost_per_token_priority": 3e-05,
        "cache_read_input_token_cost_batches": 1.3e-07,
        "input_cost_per_token_above_272k_tokens": 5e-06,
        "output_cost_per_token_above_272k_tokens_flex": 1.125e-05,
        "cache_creation_input_token_cost": 3.75e-06,
        "cache_creation_input_token_cost_above_1hr": 6e-06,
        "cache_creation_input_token_cost_above_1hr_above_200k_tokens": 1.2e-05,
        "input_cost_per_audio_token": 4e-05, "output_cost_per_audio_token": 8e-05,
        "input_cost_per_image_token": 5e-06, "output_cost_per_image_token": 4e-05,
        "input_cost_per_audio_token_priority": 7e-05,
        "search_context_cost_per_query": {"search_context_size_low": 0.03,
                                          "search_context_size_medium": 0.035,
                                          "search_context_size_high": 0.05},
        # not tiers we price: left out
        "cache_creation_input_token_cost_above_12hr": 9e-06,
        "input_cost_per_token_ultrafast": 1e-05, "input_cost_per_character": 1e-06},
        "claude-9": {"litellm_provider": "anthropic", "mode": "chat",
                     "input_cost_per_token": 3e-06, "output_cost_per_token": 1.5e-05,
                     "search_context_cost_per_query": {"search_context_size_low": 0.01,
                                                       "search_context_size_medium": 0.01,
                                                       "search_context_size_high": 0.01}}}
    assert convert_litellm(raw) == {
        "gpt-9": {
            "provider": "openai", "mode": "chat",
            "input_per_mtok": "2.5", "output_per_mtok": "15", "cached_input_per_mtok": "0.25",
            "cache_write_per_mtok": "3.75", "cache_write_1h_per_mtok": "6",
            "input_audio_per_mtok": "40", "output_audio_per_mtok": "80",
            "input_image_per_mtok": "5", "output_image_per_mtok": "40",
            "tiers": {"above_200k": {"cache_write_1h_per_mtok": "12"},
                      "above_272k": {"input_per_mtok": "5"},
                      "above_272k_flex": {"output_per_mtok": "11.25"},
                      "batch": {"cached_input_per_mtok": "0.13"},
                      "flex": {"input_per_mtok": "1.25"},
                      "priority": {"output_per_mtok": "30", "input_audio_per_mtok": "70"}},
            "web_search_per_query": {"low": "0.03", "medium": "0.035", "high": "0.05"}},
        "claude-9": {"provider": "anthropic", "mode": "chat", "input_per_mtok": "3",
                     "output_per_mtok": "15", "web_search_per_query": "0.01"}}


def text_rates(input_: str, cached: str, output: str) -> dict[str, str]:
    """A tier of input, cached input and output rates, as the catalog writes it."""
    return {"input_per_mtok": input_, "cached_input_per_mtok": cached, "output_per_mtok": output}


@pytest.mark.parametrize(("model", "row"), [
    ("gpt-5", {"web_search_per_query": "0.01", "tiers": {
        "batch": text_rates("0.625", "0.0625", "5"), "flex": text_rates("0.625", "0.0625", "5"),
        "priority": text_rates("2.5", "0.25", "20")}}),
    ("gpt-5.4", {"tiers": {
        "above_272k": text_rates("5", "0.5", "22.5"),
        "above_272k_batch": text_rates("2.5", "0.25", "11.25"),
        "above_272k_flex": text_rates("2.5", "0.25", "11.25"),
        "batch": text_rates("1.25", "0.13", "7.5"), "flex": text_rates("1.25", "0.13", "7.5"),
        "priority": text_rates("5", "0.5", "30")}}),
    ("claude-sonnet-4-6", {"cache_write_1h_per_mtok": "6", "cache_write_per_mtok": "3.75",
                           "web_search_per_query": "0.01", "tiers": {"batch": {
                               "cache_write_per_mtok": "1.875", "cached_input_per_mtok": "0.15",
                               "input_per_mtok": "1.5", "output_per_mtok": "7.5"}}}),
    ("gemini/gemini-2.5-pro", {"web_search_per_query": "0.035"}),
    ("gpt-4o-audio-preview-2025-06-03", {"input_audio_per_mtok": "40",
                                         "output_audio_per_mtok": "80"}),
])
def test_committed_catalog_rows_carry_the_maps_tiers(model: str, row: dict[str, object]) -> None:
    # Literal values read off scripts/data/litellm_model_prices.json (per token x 1e6).
    committed = json.loads(CATALOG_FILE.read_text(encoding="utf-8"))["models"][model]
    assert {k: committed.get(k) for k in row} == row
    assert "note" not in committed or "above" not in committed["note"]


def test_gemini_long_context_tiers_in_the_catalog(catalog: PriceCatalog) -> None:
    tiers = dict(catalog.entries["gemini/gemini-2.5-pro"].price.tiers)
    assert tiers["above_200k"] == Price(input=Decimal("2.5"), cached_input=Decimal("0.25"),
                                        output=Decimal(15))
    assert tiers["above_200k_priority"] == Price(input=Decimal("4.5"),
                                                 cached_input=Decimal("0.45"),
                                                 output=Decimal(27))


# --- tiers: cost per tier kind, literal arithmetic from the map's rates ------------------

def quote(model: str, usage: Usage, tier: str | None = None) -> object:
    return resolved(PriceCatalog.load(), model).price.quote(usage, tier)


def test_service_tiers_price_the_issue_rows() -> None:
    usage = Usage(input=1000, cached_input=200, output=500)
    gpt5 = resolved(PriceCatalog.load(), "gpt-5").price
    # base: 800 x 1.25 + 200 x 0.125 + 500 x 10 = 6025 micro-USD
    assert gpt5.quote(usage, "default").cost == Decimal("0.006025")
    # flex: 800 x 0.625 + 200 x 0.0625 + 500 x 5 = 3012.5 micro-USD
    flex = gpt5.quote(usage, "flex")
    assert (flex.cost, flex.tier, flex.fallbacks) == (Decimal("0.0030125"), "flex", frozenset())
    # priority: 800 x 2.5 + 200 x 0.25 + 500 x 20 = 12050 micro-USD
    assert gpt5.quote(usage, "priority").cost == Decimal("0.01205")
    # a tier gpt-5 has no price for: the base price, counted as a fallback
    scale = gpt5.quote(usage, "scale")
    assert (scale.cost, scale.tier, scale.fallbacks) == (Decimal("0.006025"), "standard",
                                                         frozenset({"tier"}))


def test_cache_ttl_and_web_search_fee() -> None:
    sonnet = resolved(PriceCatalog.load(), "claude-sonnet-4-6").price
    usage = Usage(input=3010, cache_write=3000, cache_write_1h=2000, output=100, web_search=4)
    # 10 x 3 + 1000 x 3.75 + 2000 x 6 + 100 x 15 = 17280 micro-USD; + 4 x $0.01
    q = sonnet.quote(usage)
    assert (q.cost, q.fees, q.fallbacks) == (Decimal("0.05728"), Decimal("0.04"), frozenset())
    # a model without a 1-hour price: 1h writes at the cache-write price, counted
    gpt = Price(input=Decimal(3), cache_write=Decimal("3.75"))
    no_ttl = gpt.quote(Usage(input=2000, cache_write=2000, cache_write_1h=2000, web_search=1))
    # 2000 x 3.75 = 7500 micro-USD, no search price: no fee, counted
    assert no_ttl.cost == Decimal("0.0075")
    assert no_ttl.fallbacks == frozenset({"cache_ttl", "fee"})


def test_context_tiers_reprice_every_token_type() -> None:
    cat = PriceCatalog.load()
    gemini = resolved(cat, "gemini-2.5-pro").price
    # 250,000 prompt (50,000 cached) > 200k: 200000 x 2.5 + 50000 x 0.25 + 1000 x 15
    q = gemini.quote(Usage(input=250_000, cached_input=50_000, output=1000))
    assert (q.cost, q.context_tier) == (Decimal("0.5275"), "above_200k")
    # exactly 200,000 is not above: 150000 x 1.25 + 50000 x 0.125 + 1000 x 10 = 203750
    assert gemini.quote(Usage(input=200_000, cached_input=50_000, output=1000)).cost == Decimal(
        "0.20375")
    gpt54 = resolved(cat, "gpt-5.4").price
    # 300,000 prompt > 272k: 300000 x 5 + 1000 x 22.5 = 1,522,500 micro-USD
    q = gpt54.quote(Usage(input=300_000, output=1000))
    assert (q.cost, q.context_tier) == (Decimal("1.5225"), "above_272k")
    # flex above 272k: 300000 x 2.5 + 1000 x 11.25
    assert gpt54.quote(Usage(input=300_000, output=1000), "flex").cost == Decimal("0.76125")
    # priority above 272k is not in the map: priority rates, counted as a context fallback
    # 300000 x 5 + 1000 x 30
    q = gpt54.quote(Usage(input=300_000, output=1000), "priority")
    assert (q.cost, q.fallbacks) == (Decimal("1.53"), frozenset({"context"}))


def test_modalities() -> None:
    audio = resolved(PriceCatalog.load(), "gpt-4o-audio-preview-2025-06-03").price
    usage = Usage(input=300, input_audio=100, output=1000, output_audio=400)
    # 200 x 2.5 + 100 x 40 + 600 x 10 + 400 x 80 = 42500 micro-USD
    q = audio.quote(usage)
    assert (q.cost, q.fallbacks) == (Decimal("0.0425"), frozenset())
    # gpt-4o has no audio price: audio tokens at the text rates, counted
    # 300 x 2.5 + 1000 x 10 = 10750 micro-USD
    q = resolved(PriceCatalog.load(), "gpt-4o").price.quote(usage)
    assert (q.cost, q.fallbacks) == (Decimal("0.01075"), frozenset({"modality"}))


def test_multiplier_and_worst_rates() -> None:
    gpt5 = resolved(PriceCatalog.load(), "gpt-5").price
    usage = Usage(input=1000, cached_input=200, output=500)
    # 6025 micro-USD x 0.8 = 4820
    assert gpt5.quote(usage, multiplier=Decimal("0.8")).cost == Decimal("0.00482")
    gpt54 = resolved(PriceCatalog.load(), "gpt-5.4").price
    assert gpt54.worst_rates("priority", 1000) == (Decimal(5), Decimal(30))
    assert gpt54.worst_rates(None, 300_000) == (Decimal(5), Decimal("22.5"))
    assert gpt54.worst_rates("flex", 1000) == (Decimal("1.25"), Decimal("7.5"))


def test_config_style_prices_with_tiers() -> None:
    price = Price.from_row({"input_per_mtok": "1", "output_per_mtok": 2,
                            "tiers": {"flex": {"input_per_mtok": "0.5"},
                                      "above_128k": {"output_per_mtok": "4"}},
                            "web_search_per_query": {"low": "0.02", "medium": "0.03"},
                            "web_fetch_per_request": "0.001"})
    usage = Usage(input=200_000, output=1000, web_search=2, web_fetch=3)
    # above 128k: 200000 x 1 + 1000 x 4 = 204000 micro-USD; 2 x 0.02 (low) + 3 x 0.001
    q = price.quote(usage, search_size="low")
    assert (q.cost, q.fees, q.context_tier) == (Decimal("0.247"), Decimal("0.043"), "above_128k")
    for bad in ({"tiers": {"turbo": {}}}, {"tiers": {"above_0k": {}}},
                {"web_search_per_query": {"huge": 1}}, {"tiers": {"flex": {"tiers": {"batch": {}}}}},
                {"tiers": {"flex": {"web_fetch_per_request": 1}}}):
        with pytest.raises(ValueError):
            Price.from_row(bad)
