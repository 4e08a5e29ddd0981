"""Config loading: contract keys, env interpolation, errors that name their key path."""

from __future__ import annotations

import subprocess
import time
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
import yaml

from spendgate.config import ConfigError, load_config, parse_config
from tests.conftest import free_port, spendgate_command

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


def test_explicitly_empty_env_means_no_api_key_and_defaults_apply() -> None:
    config = parse_config({"upstreams": {"o": {"url": "http://h:1",
                                               "api_key": "${NOPE_UNSET:-}",
                                               "timeout_s": "${T:-30}"}}}, {})
    assert config.upstreams["o"].api_key is None
    assert config.upstreams["o"].timeout_s == 30


def test_an_unset_variable_is_an_error_naming_it_and_its_key_path() -> None:
    tree = {"upstreams": {"openai": {"url": "https://api.openai.com",
                                     "api_key": "${OPENAI_API_KEY}"}},
            "admin_key": "${SPENDGATE_ADMIN_KEY}", "keys": [{"key": "${K1}", "project": "a"}]}
    with pytest.raises(ConfigError) as caught:
        parse_config(tree, {"K1": ""})
    problems = caught.value.problems
    assert [p.split(" (")[0] for p in problems] == [
        "upstreams.openai.api_key: ${OPENAI_API_KEY} is not set",
        "admin_key: ${SPENDGATE_ADMIN_KEY} is not set",
        "keys.0.key: ${K1} is set but empty"], problems
    assert all("${" in p and ":-}" in p for p in problems)  # each says how to allow empty
    config = parse_config(tree, {"OPENAI_API_KEY": "sk-x", "SPENDGATE_ADMIN_KEY": "adm",
                                 "K1": "vk"})
    assert (config.upstreams["openai"].api_key, config.admin_key) == ("sk-x", "adm")


def test_an_unset_variable_is_not_reported_twice_as_a_bad_value() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"upstreams": {"o": {"url": "http://h:1", "timeout_s": "${T}"}}}, {})
    assert [p.split(" (")[0] for p in caught.value.problems] == [
        "upstreams.o.timeout_s: ${T} is not set"]


def test_unknown_keys_suggest_the_closest_known_key() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"server": {"prot": 1, "zzz": 2},
                      "upstreams": {"o": {"url": "http://h:1", "timout_s": 5}},
                      "budgets": [{"name": "b", "limit_usd": 1, "windw": "day"}],
                      "storee": {}}, {})
    assert set(caught.value.problems) == {
        "server.prot: unknown key (did you mean port?)",
        "server.zzz: unknown key",
        "upstreams.o.timout_s: unknown key (did you mean timeout_s?)",
        "budgets.0.windw: unknown key (did you mean window?)",
        "storee: unknown key (did you mean store?)"}


def test_schema_and_cross_field_problems_come_in_one_pass() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"upstreams": {"metrics": {"url": "http://x"}, "o": {"url": "ftp://x"}},
                      "keys": [{"key": "a", "project": "p"}, {"key": "a", "project": "q"}],
                      "budgets": [{"name": "b", "limit_usd": -1},
                                  {"name": "b", "limit_usd": 1, "key": "nobody"}],
                      "limits": [{"name": "l", "key": "p#9", "requests_per_minute": 5}]}, {})
    problems = caught.value.problems
    assert any(p.startswith("limits.0.key: limit 'l': key 'p#9' names no virtual key")
               for p in problems)
    assert "upstreams.o.url: not a URL: scheme 'ftp' is not http or https" in problems
    assert any(p.startswith("budgets.0.limit_usd:") for p in problems)
    assert "budgets: budget names must be unique: ['b'] repeated" in problems
    assert "keys: the same key is listed twice" in problems
    assert any(p.startswith("budgets.1.key: budget 'b': key 'nobody' names no virtual key")
               for p in problems)
    assert any(p.startswith("upstreams: 'metrics' cannot name an upstream") for p in problems)


@pytest.mark.parametrize(("url", "why"), [
    ("vllm:8000", "'vllm:8000' has no scheme (write http://vllm:8000 or https://vllm:8000)"),
    ("ftp://h", "scheme 'ftp' is not http or https"),
    ("localhost", "'localhost' has no scheme (write http://localhost or https://localhost)"),
    ("http://", "'http://' has no host name"),
    ("http://h:99999", "'http://h:99999' has an invalid port"),
    ("http://h/?q=1", "no query, fragment or credentials allowed"),
])
def test_a_rejected_url_says_why(url: str, why: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"upstreams": {"o": {"url": url}}}, {})
    assert caught.value.problems == [f"upstreams.o.url: not a URL: {why}"]


@pytest.mark.parametrize("absolute", [False, True])
def test_sqlite_urls_relative_and_absolute(tmp_path: Path, absolute: bool) -> None:
    """``sqlite:///rel/path`` is under the working directory, ``sqlite:////abs/path`` is
    absolute; the server logs the resolved absolute path at start."""
    target = tmp_path / "data" / "ledger.sqlite3"
    url = f"sqlite:///{target}" if absolute else "sqlite:///data/ledger.sqlite3"
    assert url.startswith("sqlite:////") == absolute
    config = tmp_path / "c.yaml"
    config.write_text(f"store: {{url: '{url}'}}\nadmin_key: adm\n"
                      "upstreams: {o: {url: 'http://127.0.0.1:9'}}\n")
    port = free_port()
    proc = subprocess.Popen([*spendgate_command("serve", "--config", str(config), "--port",
                                                str(port))],
                            cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).is_success:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        assert target.exists()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert f"budget ledger: sqlite file {target}" in err, err


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
    assert "server.prot: unknown key (did you mean port?)" in problems
    assert "upstreams.local.url: not a URL: 'vllm:8000' has no scheme (write " \
        "http://vllm:8000 or https://vllm:8000)" in problems
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
                        env={"TEAM_SEARCH_KEY": "x", "OPENAI_API_KEY": "sk-x", "PATH": ""})
    assert ok.returncode == 0, ok.stdout + ok.stderr
    failed = subprocess.run([*run, str(bad)], capture_output=True, text=True)
    assert failed.returncode == 1
    assert failed.stdout.splitlines() == [
        "upstreams.local.url: not a URL: 'nope' has no scheme (write http://nope or "
        "https://nope)", "upstreams.local.colour: unknown key"]
    unset = tmp_path / "unset.yaml"
    unset.write_text("upstreams:\n  openai: {url: https://api.openai.com, "
                     "api_key: '${OPENAI_API_KEY}', timout_s: 5}\n"
                     "budgets: [{name: a, limit_usd: 1}, {name: a, limit_usd: 0}]\n")
    every = subprocess.run([*run, str(unset)], capture_output=True, text=True, env={"PATH": ""})
    assert every.returncode == 1
    assert [line.split(" (")[0] for line in every.stdout.splitlines()] == [
        "upstreams.openai.api_key: ${OPENAI_API_KEY} is not set",
        "upstreams.openai.timout_s: unknown key",
        "budgets.1.limit_usd: Input should be greater than 0",
        "budgets: budget names must be unique: ['a'] repeated"], every.stdout
    assert "did you mean timeout_s?" in every.stdout
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


def test_check_config_runs_every_check_in_the_pass_of_a_schema_error(tmp_path: Path) -> None:
    """A schema error does not hide the catalog, telemetry and allowed-hosts checks: they
    run on what parsed, and one run names every problem; a check does not report again a
    key the schema rejected (the default standing in for it)."""
    run = spendgate_command("check-config")
    many = tmp_path / "many.yaml"
    many.write_text(
        "server: {host: 0.0.0.0, port: many}\n"
        "upstreams:\n  local: {url: 'http://127.0.0.1:9', provider: openai, timout_s: 5}\n"
        f"pricing: {{catalog: '{tmp_path / 'absent.json'}'}}\n"
        "telemetry: {endpoint: 'http://127.0.0.1:4318', sampler: coin_flip}\n")
    every = subprocess.run([*run, str(many)], capture_output=True, text=True, env={"PATH": ""})
    assert every.returncode == 1
    assert [line.split(": ", 1)[0] for line in every.stdout.splitlines()] == [
        "server.port", "upstreams.local.timout_s", "pricing.catalog", "telemetry.sampler",
        "server.allowed_hosts"], every.stdout
    assert "absent.json" in every.stdout and "'coin_flip' is not supported" in every.stdout
    assert "required when serving on 0.0.0.0" in every.stdout
    rejected = tmp_path / "rejected.yaml"
    rejected.write_text("server: {host: 0.0.0.0, allowed_hosts: ['not a host']}\n")
    once = subprocess.run([*run, str(rejected)], capture_output=True, text=True,
                          env={"PATH": ""})
    assert once.returncode == 1
    assert len(once.stdout.splitlines()) == 1, once.stdout
    assert once.stdout.startswith("server.allowed_hosts: ") and "required" not in once.stdout
