"""Config loading: contract keys, env interpolation, errors that name their key path."""

from __future__ import annotations

import subprocess
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from spendgate.config import ConfigError, load_config, parse_config
from tests.conftest import spendgate_command

CONTRACT = """
server: {host: 127.0.0.1, port: 4000, max_body_mb: 32}
upstreams:
  openai:    {url: https://api.openai.com, provider: openai, api_key: "${OPENAI_API_KEY}", timeout_s: 600}
  anthropic: {url: https://api.anthropic.com, provider: anthropic}
  local:     {url: "http://vllm:8000", provider: openai, pricing: {input_per_mtok: 0.1, output_per_mtok: 0.2}}
pricing:
  catalog: builtin
  overrides:
    my-finetune: {input_per_mtok: 1.0, output_per_mtok: 2.0, cached_input_per_mtok: 0.5, cache_write_per_mtok: 1.25}
keys:
  - {key: "${TEAM_SEARCH_KEY}", project: search}
"""


def test_the_issue_contract_example_loads(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(CONTRACT)
    config = load_config(path, {"OPENAI_API_KEY": "sk-x", "TEAM_SEARCH_KEY": "k1"})
    assert config.upstreams["openai"].api_key == "sk-x"
    assert config.upstreams["local"].url == "http://vllm:8000"
    assert config.upstreams["local"].pricing is not None
    assert config.pricing.overrides["my-finetune"].cache_write_per_mtok == Decimal("1.25")
    assert config.keys is not None and config.keys[0].key == "k1"
    assert config.server.max_body_mb == 32


def test_unset_env_means_no_api_key_and_defaults_apply() -> None:
    config = parse_config({"upstreams": {"o": {"url": "http://h:1",
                                               "api_key": "${NOPE_UNSET}",
                                               "timeout_s": "${T:-30}"}}}, {})
    assert config.upstreams["o"].api_key is None
    assert config.upstreams["o"].timeout_s == 30


def test_embedded_default_serves_openai_and_anthropic() -> None:
    config = load_config(None)
    assert {n: u.url for n, u in config.upstreams.items()} == {
        "openai": "https://api.openai.com", "anthropic": "https://api.anthropic.com"}
    assert (config.server.host, config.server.port) == ("127.0.0.1", 4000)


def test_every_problem_is_reported_with_its_path() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"server": {"prot": 1},
                      "upstreams": {"local": {"url": "vllm:8000", "provider": "grpc"}},
                      "pricing": {"overrides": {"m": {"input_per_mtok": -1}}},
                      "keys": [{"project": "p"}]}, {})
    problems = caught.value.problems
    assert "server.prot: unknown key" in problems
    assert "upstreams.local.url: not a URL" in problems
    assert any(p.startswith("upstreams.local.provider:") for p in problems)
    assert "pricing.overrides.m.input_per_mtok: must not be negative" in problems
    assert "keys.0.key: required" in problems


def test_reserved_upstream_names_are_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"upstreams": {"metrics": {"url": "http://x"}}}, {})
    assert caught.value.problems[0].startswith("upstreams: 'metrics' cannot name an upstream")


def test_check_config_cli(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(CONTRACT)
    bad = tmp_path / "bad.yaml"
    bad.write_text("upstreams:\n  local: {url: nope, provider: openai, colour: red}\n")
    run = spendgate_command("check-config")
    ok = subprocess.run([*run, str(good)], capture_output=True, text=True,
                        env={"TEAM_SEARCH_KEY": "x", "PATH": ""})
    assert ok.returncode == 0, ok.stdout + ok.stderr
    failed = subprocess.run([*run, str(bad)], capture_output=True, text=True)
    assert failed.returncode == 1
    assert failed.stdout.splitlines() == ["upstreams.local.url: not a URL",
                                          "upstreams.local.colour: unknown key"]
    missing = subprocess.run([*run, str(tmp_path / "absent.yaml")], capture_output=True,
                             text=True)
    assert missing.returncode == 1 and "cannot read" in missing.stdout


def test_prices_cli() -> None:
    run = spendgate_command("prices")
    one = subprocess.run([*run, "gpt-4o-mini-2024-07-18"], capture_output=True, text=True)
    assert one.returncode == 0 and "gpt-4o-mini" in one.stdout and "0.15" in one.stdout
    unknown = subprocess.run([*run, "no-such-model-xyz"], capture_output=True, text=True)
    assert unknown.returncode == 1
    table = subprocess.run(run, capture_output=True, text=True)
    assert table.returncode == 0 and len(table.stdout.splitlines()) > 300
    tiers = subprocess.run([*run, "gpt-5.4"], capture_output=True, text=True)
    assert tiers.returncode == 0, tiers.stderr
    assert "  above_272k: input 5, cached input 0.5, output 22.5\n" in tiers.stdout
    assert "  priority: input 5, cached input 0.5, output 30\n" in tiers.stdout
    assert "prices from: catalog key 'gpt-5.4'" in tiers.stdout
    claude = subprocess.run([*run, "claude-sonnet-4-6"], capture_output=True, text=True)
    assert "  cache write 1h 6\n" in claude.stdout
    assert "fee: web search per query, USD: low 0.01, medium 0.01, high 0.01" in claude.stdout
    glob = subprocess.run([*run, "GPT-5.4-m*"], capture_output=True, text=True)
    assert glob.returncode == 0
    assert [line for line in glob.stdout.splitlines() if line.startswith("model: ")] == [
        "model: gpt-5.4-mini", "model: gpt-5.4-mini-2026-03-17"]
    none = subprocess.run([*run, "no-such-*"], capture_output=True, text=True)
    assert none.returncode == 1 and "unknown model 'no-such-*'" in none.stderr


def test_prices_with_tiers_fees_and_multiplier_in_the_config(tmp_path: Path) -> None:
    config = tmp_path / "spendgate.yaml"
    config.write_text(yaml.safe_dump({
        "upstreams": {"enterprise": {"url": "https://api.openai.com", "price_multiplier": "0.8",
                                     "pricing": {"input_per_mtok": 2, "output_per_mtok": 8,
                                                 "tiers": {"flex": {"input_per_mtok": 1}},
                                                 "web_search_per_query": {"low": "0.03"}}}},
        "pricing": {"overrides": {"house": {"input_per_mtok": 1, "cache_write_1h_per_mtok": 2,
                                            "tiers": {"above_128k_priority": {
                                                "output_per_mtok": 9}},
                                            "web_fetch_per_request": "0.001"}}}}))
    run = spendgate_command("prices", "--config", str(config))
    up = subprocess.run([*run, "anything", "--upstream", "enterprise"], capture_output=True,
                        text=True)
    assert up.returncode == 0, up.stderr
    assert "prices from: config upstreams.enterprise.pricing" in up.stdout
    assert "  flex: input 1\n" in up.stdout and "web search per query, USD: low 0.03" in up.stdout
    assert "upstreams.enterprise.price_multiplier: 0.8" in up.stdout
    house = subprocess.run([*run, "house"], capture_output=True, text=True)
    assert "  above_128k_priority: output 9\n" in house.stdout
    assert "cache write 1h 2" in house.stdout and "web fetch per request, USD: 0.001" in house.stdout
    for bad in ({"tiers": {"turbo": {"input_per_mtok": 1}}}, {"web_search_per_query": -1},
                {"tiers": {"flex": {"input_per_mtok": -1}}}, {"web_search_per_query": {"xl": 1}}):
        config.write_text(yaml.safe_dump({"upstreams": {"a": {"url": "https://x.example"}},
                                          "pricing": {"overrides": {"m": {
                                              "input_per_mtok": 1, **bad}}}}))
        checked = subprocess.run(spendgate_command("check-config", str(config)),
                                 capture_output=True, text=True)
        assert checked.returncode != 0, bad
    config.write_text(yaml.safe_dump({"upstreams": {"a": {"url": "https://x.example",
                                                          "price_multiplier": -1}}}))
    assert subprocess.run(spendgate_command("check-config", str(config)),
                          capture_output=True, text=True).returncode != 0
