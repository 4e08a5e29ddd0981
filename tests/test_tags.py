"""Tags (issue 14, section 1): ``x-spendgate-tags`` and keys' fixed tags, accounted by
``attribution.tag_keys`` in the ledger, ``/admin/spend``, ``spendgate spend`` and the
``spendgate_tag_*`` metrics; every tag in the usage log and spans; tag budgets that block
across replicas sharing Redis. Real proxies, a fake provider, real Redis, the official SDKs."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from spendgate.config import parse_config
from spendgate.errors import BadRequest, ConfigError
from spendgate.tags import MAX_TAGS, parse_header
from tests.budget_helpers import (  # noqa: F401  (fixtures)
    MODEL,
    SHARED_REDIS,
    budget_config,
    chat_body,
    chat_reply,
    redis_prefix,
    wait_for,
)
from tests.conftest import ProxyProcess, free_port, spendgate_command
from tests.fake_upstream import FakeUpstream
from tests.otlp_receiver import OTLPReceiver
from tests.test_batches_shared import BATCH_USD, OUTPUT, OUTPUT_FILE, queue_batch
from tests.test_proxy import client

ADMIN = "adm-tags"
JSON = {"content-type": "application/json"}
TINY = "tiny-model"        # $0.5 per Mtok of output: a token costs $0.0000005
TOKEN_USD = {MODEL: Decimal("0.001"), TINY: Decimal("0.0000005")}


def tag_config(fake: FakeUpstream, tag_keys: list[str], budgets: list[dict[str, Any]] | None = None,
               **extra: Any) -> dict[str, Any]:
    config = budget_config(fake, budgets or [], attribution={"tag_keys": tag_keys},
                           admin_key=ADMIN, **extra)
    config["pricing"]["overrides"][TINY] = {"input_per_mtok": 0, "output_per_mtok": 0.5}
    return config


def samples(proxy: ProxyProcess, name: str) -> list[tuple[dict[str, str], float]]:
    return [(dict(s.labels), s.value)
            for family in text_string_to_metric_families(proxy.metrics_text())
            for s in family.samples if s.name == name]


def admin_spend(proxy: ProxyProcess, **query: str) -> httpx.Response:
    return httpx.get(proxy.url + "/admin/spend", params=query,
                     headers={"authorization": f"Bearer {ADMIN}"}, timeout=20)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(spendgate_command(*args), capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin"})


def post(proxy: ProxyProcess, tags: str | None, tokens: int, model: str = MODEL,
         fake: FakeUpstream | None = None, **headers: str) -> httpx.Response:
    if fake is not None:
        fake.queue(chat_reply(tokens, model=model))
    sent = {**JSON, **headers, **({"x-spendgate-tags": tags} if tags is not None else {})}
    return httpx.post(proxy.url + "/openai/v1/chat/completions", content=chat_body(tokens, model),
                      headers=sent, timeout=20)


def recorded(proxy: ProxyProcess, calls: int) -> None:
    """Wait until ``calls`` calls are in ``spendgate_requests_total`` (recorded after the
    caller has its bytes)."""
    assert wait_for(lambda: (proxy.sample("spendgate_requests_total") or 0) >= calls), \
        "calls not recorded"


# ---- the header's grammar ------------------------------------------------------------------

def test_the_header_parses_trimmed_pairs_and_skips_empty_items() -> None:
    assert dict(parse_header(b" feature = search ,env=prod,, team=a.b-c_d:e/f@g+h ,")) == {
        "feature": "search", "env": "prod", "team": "a.b-c_d:e/f@g+h"}
    assert dict(parse_header(None)) == {} and dict(parse_header(b"  ")) == {}
    many = ",".join(f"k{i}=v" for i in range(MAX_TAGS)).encode()
    assert len(parse_header(many)) == MAX_TAGS


@pytest.mark.parametrize(("value", "problem"), [
    (b"feature", "'feature' is not key=value"),
    (b"Feature=search", "tag key 'Feature' is not 1 to 32 characters"),
    (b"=search", "tag key '' is not"),
    (b"feature=", "value '' is not 1 to 64 characters"),
    (b"feature=a b", "value 'a b' is not"),
    (b"feature=search*", "value 'search*' is not"),
    (b"feature=" + b"x" * 65, "is not 1 to 64 characters"),
    (b"k" * 33 + b"=v", "is not 1 to 32 characters"),
    (b"feature=a,feature=b", "tag key 'feature' is given twice"),
    (",".join(f"k{i}=v" for i in range(MAX_TAGS + 1)).encode(), "more than 10 tags"),
    ("feature=caf\u00e9".encode(), "not ASCII"),
])
def test_a_malformed_header_is_refused_naming_the_problem(value: bytes, problem: str) -> None:
    with pytest.raises(BadRequest) as refused:
        parse_header(value)
    assert refused.value.message.startswith("x-spendgate-tags: ")
    assert problem in refused.value.message


# ---- 400 in both protocols, counted; the header never reaches the upstream; key tags win --

@pytest.fixture(scope="module")
def tagged(fake: FakeUpstream, spawn: Any, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[ProxyProcess, Path, OTLPReceiver]]:
    """A proxy with keys (one with fixed tags), a usage log and spans to a receiver."""
    log_path = tmp_path_factory.mktemp("tags-log") / "usage.jsonl"
    rx = OTLPReceiver().start()
    config = tag_config(fake, ["feature", "team"], telemetry={"usage_log": {"path": str(log_path)}},
                        keys=[{"key": "sk-growth", "project": "growth", "name": "growth",
                               "tags": {"team": "growth", "tier": "gold"}},
                              {"key": "sk-plain", "project": "plain"}])
    config["store"] = {"url": f"sqlite:///{log_path.parent}/ledger.sqlite3"}
    proxy: ProxyProcess = spawn(config, {"OTEL_EXPORTER_OTLP_ENDPOINT": rx.url,
                                         "OTEL_BSP_SCHEDULE_DELAY": "50"})
    yield proxy, log_path, rx
    proxy.stop()
    rx.stop()


def usage_lines(path: Path) -> dict[str, dict[str, Any]]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return {line["request_id"]: line for line in lines if line["request_id"]}


def test_a_malformed_header_is_a_400_in_each_protocol_and_counted(
        tagged: tuple[ProxyProcess, Path, OTLPReceiver], upstream: FakeUpstream) -> None:
    proxy, log_path, _ = tagged
    before = proxy.sample("spendgate_requests_total", status="400", project="plain") or 0
    client = openai.OpenAI(base_url=proxy.url + "/openai/v1", api_key="sk-plain", max_retries=0,
                           default_headers={"x-spendgate-tags": "feature=a,feature=b",
                                            "x-request-id": "tags-bad-openai"})
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=MODEL, max_tokens=5,
                                       messages=[{"role": "user", "content": "x"}])
    error = refused.value.response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith("x-spendgate-tags: tag key 'feature' is given twice")
    claude = anthropic.Anthropic(base_url=proxy.url + "/anthropic", api_key="sk-plain",
                                 max_retries=0,
                                 default_headers={"x-spendgate-tags": "team=a b",
                                                  "x-request-id": "tags-bad-anthropic"})
    with pytest.raises(anthropic.BadRequestError) as refused_claude:
        claude.messages.create(model=MODEL, max_tokens=5,
                               messages=[{"role": "user", "content": "x"}])
    body = refused_claude.value.response.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "x-spendgate-tags: tag 'team': value 'a b' is not" in body["error"]["message"]
    assert upstream.requests == []   # refused before the body was read, let alone sent
    # Counted under the key's project, and in the usage log.
    assert wait_for(lambda: proxy.sample("spendgate_requests_total", status="400",
                                         project="plain") == before + 2)
    lines = usage_lines(log_path)
    assert (lines["tags-bad-openai"]["status"], lines["tags-bad-anthropic"]["status"]) == (400, 400)
    assert lines["tags-bad-openai"]["project"] == "plain"


def test_key_tags_win_over_the_header_and_every_tag_reaches_log_and_span(
        tagged: tuple[ProxyProcess, Path, OTLPReceiver], upstream: FakeUpstream) -> None:
    proxy, log_path, rx = tagged
    client = openai.OpenAI(base_url=proxy.url + "/openai/v1", api_key="sk-growth", max_retries=0,
                           default_headers={"x-request-id": "tags-growth",
                                            "x-spendgate-tags": "team=other, feature=search, "
                                                                "env=prod"})
    upstream.queue(chat_reply(7))
    client.chat.completions.create(model=MODEL, max_tokens=7,
                                   messages=[{"role": "user", "content": "x"}])
    assert upstream.requests[-1].header("x-spendgate-tags") is None   # never forwarded
    expected = {"team": "growth", "tier": "gold", "feature": "search", "env": "prod"}
    span = rx.span("tags-growth")
    assert {k.removeprefix("spendgate.tag."): v for k, v in span.attributes.items()
            if k.startswith("spendgate.tag.")} == expected
    lines = usage_lines(log_path)
    assert lines["tags-growth"]["tags"] == expected     # env, tier: not accounted, still here
    # Accounted: only feature and team, the key's team.
    cost = proxy.sample("spendgate_tag_cost_usd_total", tag_key="team", tag_value="growth")
    assert cost == pytest.approx(0.007)
    assert proxy.sample("spendgate_tag_cost_usd_total", tag_key="team", tag_value="other") is None
    assert proxy.sample("spendgate_tag_requests_total", tag_key="feature",
                        tag_value="search") == 1
    assert not [s for s, _ in samples(proxy, "spendgate_tag_requests_total")
                if s["tag_key"] in ("env", "tier")]
    # A call without tags: an empty object in the log, no span attribute.
    upstream.queue(chat_reply(3))
    openai.OpenAI(base_url=proxy.url + "/openai/v1", api_key="sk-plain", max_retries=0,
                  default_headers={"x-request-id": "tags-none"}).chat.completions.create(
        model=MODEL, max_tokens=3, messages=[{"role": "user", "content": "x"}])
    assert not [k for k in rx.span("tags-none").attributes if k.startswith("spendgate.tag.")]
    assert wait_for(lambda: "tags-none" in usage_lines(log_path))
    assert usage_lines(log_path)["tags-none"]["tags"] == {}


# ---- group_by=tag:KEY: admin API, CLI ------------------------------------------------------

# (tags, model, output tokens): exact costs from TOKEN_USD
TRAFFIC = [("feature=search,env=prod", TINY, 3), ("feature=search", MODEL, 7),
           ("feature=chat,env=dev", TINY, 1), (None, MODEL, 2), ("env=prod", TINY, 5)]


def expected_by(tag_key: str) -> dict[str, Decimal]:
    sums: dict[str, Decimal] = {}
    for tags, model, tokens in TRAFFIC:
        value = dict(p.split("=") for p in tags.split(",")).get(tag_key, "") if tags else ""
        sums[value] = sums.get(value, Decimal(0)) + tokens * TOKEN_USD[model]
    return sums


def test_spend_by_tag_in_the_admin_api_and_the_cli_is_exact(
        fake: FakeUpstream, spawn: Any, tmp_path: Path) -> None:
    fake.reset()
    config = tag_config(fake, ["feature", "env"],
                        store={"url": f"sqlite:///{tmp_path}/ledger.sqlite3"})
    proxy: ProxyProcess = spawn(config)
    for tags, model, tokens in TRAFFIC:
        assert post(proxy, tags, tokens, model, fake).status_code == 200
    recorded(proxy, len(TRAFFIC))
    total = sum(tokens * TOKEN_USD[model] for _, model, tokens in TRAFFIC)

    def csv_rows(**query: str) -> list[dict[str, str]]:
        served = admin_spend(proxy, format="csv", **query)
        assert served.status_code == 200, served.text
        return list(csv.DictReader(io.StringIO(served.text)))

    assert wait_for(lambda: len(csv_rows(group_by="tag:feature")) == 3)
    for key in ("feature", "env"):
        rows = csv_rows(group_by=f"tag:{key}", window="month")
        assert {r[f"tag:{key}"]: Decimal(r["spend_usd"]) for r in rows} == expected_by(key)
        view = admin_spend(proxy, group_by=f"tag:{key}").json()
        assert Decimal(repr(view["total_usd"])) == total and view["tag_keys"] == ["feature",
                                                                                  "env"]
    by_model = csv_rows(group_by="tag:feature,model")
    assert {(r["tag:feature"], r["model"]): Decimal(r["spend_usd"]) for r in by_model} == {
        ("search", TINY): Decimal("0.0000015"), ("search", MODEL): Decimal("0.007"),
        ("chat", TINY): Decimal("0.0000005"), ("", MODEL): Decimal("0.002"),
        ("", TINY): Decimal("0.0000025")}
    # The CLI reads the same view; its table keeps the digits, "-" for untagged.
    run = cli("spend", "--url", proxy.url, "--admin-key", ADMIN, "--by", "tag:feature")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[1].split() == ["TAG:FEATURE", "SPEND"]
    assert {line.split()[0]: line.split()[1] for line in lines[2:]} == {
        "search": "$0.0070015", "-": "$0.0020025", "chat": "$0.0000005", "TOTAL": "$0.0090045"}
    run = cli("spend", "--url", proxy.url, "--admin-key", ADMIN, "--by", "tag:env",
              "--format", "csv")
    assert run.returncode == 0, run.stderr
    assert run.stdout == admin_spend(proxy, group_by="tag:env", format="csv").text.replace(
        "\r\n", "\n")
    # What cannot be grouped: a 400 naming why; the CLI refuses a malformed key itself.
    for group_by, why in (("tag:colour", "attribution.tag_keys lists ['feature', 'env']"),
                          ("tag:feature,project", "alone or with upstream and model"),
                          ("tag:feature,tag:env", "alone or with upstream and model")):
        refused = admin_spend(proxy, group_by=group_by)
        assert refused.status_code == 400 and why in refused.json()["detail"], refused.text
    assert cli("spend", "--url", proxy.url, "--by", "tag:Bad Key").returncode == 2


# ---- metrics: capped per key, exact under a flood of distinct values ----------------------

def test_tag_metrics_stay_within_their_caps_under_a_flood_and_sum_exactly(
        fake: FakeUpstream, spawn: Any, tmp_path: Path) -> None:
    fake.reset()
    limit, flood = 25, 2000
    config = tag_config(fake, ["feature", "env"], metrics={"label_limit": limit},
                        store={"url": f"sqlite:///{tmp_path}/ledger.sqlite3"})
    proxy: ProxyProcess = spawn(config)
    fake.queue(*[chat_reply(1 + i % 7) for i in range(flood)])
    failures: list[int] = []

    def caller(start: int) -> None:
        with httpx.Client(timeout=30) as http:
            for i in range(start, flood, 4):
                r = http.post(proxy.url + "/openai/v1/chat/completions",
                              content=chat_body(1 + i % 7), headers={
                                  **JSON, "x-spendgate-tags": f"feature=f{i},env=e{i % 3}"})
                if r.status_code != 200:
                    failures.append(r.status_code)

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert failures == []
    recorded(proxy, flood)
    exact = sum(1 + i % 7 for i in range(flood)) * TOKEN_USD[MODEL]
    cost = samples(proxy, "spendgate_tag_cost_usd_total")
    requests = samples(proxy, "spendgate_tag_requests_total")
    total = proxy.sample("spendgate_cost_usd_total")
    assert total == pytest.approx(float(exact), rel=1e-12)
    for key, distinct in (("feature", limit + 1), ("env", 3)):
        values = {labels["tag_value"] for labels, _ in cost if labels["tag_key"] == key}
        assert len(values) == distinct    # at most label_limit values, then "other"
        assert ("other" in values) == (key == "feature")
        assert sum(v for labels, v in cost if labels["tag_key"] == key) == pytest.approx(
            float(exact), rel=1e-12)
        assert sum(v for labels, v in requests if labels["tag_key"] == key) == flood
    # One series per key and value (and upstream, model): never per combination of tags.
    assert len(cost) == len(requests) == limit + 1 + 3
    assert {tuple(sorted(labels)) for labels, _ in cost} == {
        ("model", "tag_key", "tag_value", "upstream")}
    # The ledger's tag family is capped too, and still sums to the whole spend.
    view = admin_spend(proxy, group_by="tag:feature").json()
    assert len(view["rows"]) <= 1001
    assert Decimal(repr(view["total_usd"])) == exact


def test_tag_metrics_cap_value_and_model_pairs_per_key(
        fake: FakeUpstream, spawn: Any, tmp_path: Path) -> None:
    """Tag values and models are capped apart, and their pairs too: 20 values x 15 models
    would be 300 series per key; past ``pair_limit`` a value keeps its own series with its
    model read ``other``, and the counts still add up."""
    fake.reset()
    calls, pair_limit = 300, 40
    config = tag_config(fake, ["feature"],
                        metrics={"label_limit": 50, "pair_limit": pair_limit},
                        store={"url": f"sqlite:///{tmp_path}/ledger.sqlite3"})
    proxy: ProxyProcess = spawn(config)
    fake.queue(*[chat_reply(1) for _ in range(calls)])
    with httpx.Client(timeout=30) as http:
        for i in range(calls):
            r = http.post(proxy.url + "/openai/v1/chat/completions",
                          content=chat_body(1, model=f"m-{i // 20}"),
                          headers={**JSON, "x-spendgate-tags": f"feature=f{i % 20}"})
            assert r.status_code == 200, r.text
    recorded(proxy, calls)
    requests = samples(proxy, "spendgate_tag_requests_total")
    pairs = {(labels["tag_value"], labels["model"]) for labels, _ in requests}
    assert len(pairs) <= pair_limit + 20          # the admitted pairs, + (value, other) each
    assert sum(1 for _, model in pairs if model == "other") > 0
    assert sum(v for _, v in requests) == calls


# ---- a tag budget blocks across replicas sharing Redis -------------------------------------

def test_a_tag_budget_blocks_across_two_replicas_sharing_redis(
        spawn: Any, upstream: FakeUpstream, redis_prefix: str) -> None:  # noqa: F811
    limit_calls = 12
    config = tag_config(upstream, ["feature"], [
        {"name": "search-cap", "tags": {"feature": "search"}, "limit_usd": str(limit_calls * Decimal("0.1")),
         "window": "day", "action": "block"}],
        store={"url": SHARED_REDIS, "key_prefix": redis_prefix})
    replicas = [spawn(config), spawn(config)]
    upstream.queue(*[chat_reply(100, delay_s=0.02) for _ in range(200)])
    outcomes: list[tuple[int, int]] = []
    start = threading.Barrier(8)

    def caller(i: int) -> None:
        proxy = replicas[i % 2]
        with httpx.Client(timeout=30) as http:
            start.wait()
            for _ in range(40):
                r = http.post(proxy.url + "/openai/v1/chat/completions",
                              content=chat_body(100),
                              headers={**JSON, "x-spendgate-tags": "feature=search,env=ci"})
                outcomes.append((i % 2, r.status_code))
                if r.status_code != 200:
                    return

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    served = [replica for replica, status in outcomes if status == 200]
    assert {status for _, status in outcomes} == {200, 429}
    assert set(served) == {0, 1}                       # both replicas spent from one cap
    assert len(upstream.requests) == len(served)
    assert limit_calls - 2 < len(served) <= limit_calls  # the cap, to within two calls
    # Once spent, the SDKs see budget_exceeded on either replica, in both protocols; calls
    # the budget does not select (another feature, no tags) still go through.
    for proxy in replicas:
        client = openai.OpenAI(base_url=proxy.url + "/openai/v1", api_key="sk", max_retries=0,
                               default_headers={"x-spendgate-tags": "feature=search"})
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(model=MODEL, max_tokens=100,
                                           messages=[{"role": "user", "content": "x"}])
        error = refused.value.response.json()["error"]
        assert error["type"] == "budget_exceeded" and "'search-cap'" in error["message"]
    claude = anthropic.Anthropic(base_url=replicas[1].url + "/anthropic", api_key="sk",
                                 max_retries=0, default_headers={"x-spendgate-tags":
                                                                 "env=x,feature=search"})
    with pytest.raises(anthropic.RateLimitError) as refused_claude:
        claude.messages.create(model=MODEL, max_tokens=100,
                               messages=[{"role": "user", "content": "x"}])
    assert refused_claude.value.response.json()["error"]["type"] == "budget_exceeded"
    assert post(replicas[0], "feature=chat", 100).status_code == 200
    assert post(replicas[1], None, 100).status_code == 200
    # Both replicas show the same shared spend, exactly the served calls, nothing reserved;
    # the budget's selector reads tag:feature.
    for proxy in replicas:
        recorded(proxy, 1)
        r = httpx.get(proxy.url + "/admin/budgets", headers={"authorization": f"Bearer {ADMIN}"})
        budget = {b["name"]: b for b in r.json()["budgets"]}["search-cap"]
        assert budget["selectors"] == {"tag:feature": "search"}
        assert wait_for(lambda p=proxy: _spend(p) == (pytest.approx(0.1 * len(served)), 0))
        assert proxy.sample("spendgate_budget_blocked_total", budget="search-cap") >= 1
    spend = admin_spend(replicas[0], group_by="tag:feature").json()
    by_value = {r["tag:feature"]: r["spend_usd"] for r in spend["rows"]}
    assert by_value["search"] == pytest.approx(0.1 * len(served))


def _spend(proxy: ProxyProcess) -> tuple[Any, Any]:
    r = httpx.get(proxy.url + "/admin/budgets", headers={"authorization": f"Bearer {ADMIN}"})
    budget = {b["name"]: b for b in r.json()["budgets"]}["search-cap"]
    return budget["spend_usd"], budget["reserved_usd"]


# ---- config --------------------------------------------------------------------------------

def test_config_checks_key_tags_and_tag_keys(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps({
        "keys": [{"key": "sk-1", "project": "p", "tags": {"Team": "a", "env": "a b"}}],
        "attribution": {"tag_keys": ["feature", "feature", "Env"]},
        "server": {"port": free_port()}}))
    run = cli("check-config", str(path))
    assert run.returncode != 0
    out = run.stdout + run.stderr
    assert "keys.0.tags: tag key 'Team' is not 1 to 32 characters" in out
    assert "tag 'env': value 'a b' is not" in out
    assert "attribution.tag_keys: tag key 'Env' is not" in out and "listed twice" in out


# ---- batches: result lines carry the creator's tags ----------------------------------------

def test_batch_results_carry_the_creators_tags_across_replicas(
        spawn: Any, upstream: FakeUpstream, redis_prefix: str) -> None:  # noqa: F811
    config = tag_config(upstream, ["feature"],
                        store={"url": SHARED_REDIS, "key_prefix": redis_prefix})
    a, b = spawn(config), spawn(config)
    queue_batch(upstream, downloads=1)
    created = client(a, "batcher", **{"x-spendgate-tags": "feature=nightly"}).batches.create(
        input_file_id="file-3Qk8Lm2Np9Rs4Tu7Vw1Xy5", endpoint="/v1/chat/completions",
        completion_window="24h")
    a.sample("spendgate_requests_total")  # /metrics flushes A's pipeline: the create is kept
    reader = client(b, "reader", **{"x-spendgate-tags": "feature=downloads"})
    assert reader.batches.retrieve(created.id).output_file_id == OUTPUT_FILE
    assert reader.files.content(OUTPUT_FILE).content == OUTPUT
    assert wait_for(lambda: b.sample("spendgate_tag_cost_usd_total", tag_key="feature",
                                     tag_value="nightly")) == BATCH_USD
    assert b.sample("spendgate_tag_requests_total", tag_key="feature",
                    tag_value="nightly") == 2            # two result lines
    assert b.sample("spendgate_tag_cost_usd_total", tag_key="feature",
                    tag_value="downloads") is None


def test_a_budget_tag_selector_names_keys_as_the_header_does() -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config({"budgets": [{"name": "b", "tags": {"Feature": "search"},
                                   "limit_usd": 1}]})
    assert refused.value.problems == [
        "budgets.0.tags: tag key 'Feature' is not 1 to 32 characters of a-z, 0-9, '_', '.', "
        "'-'"]
    parse_config({"budgets": [{"name": "b", "tags": {"feature": "search-*"}, "limit_usd": 1}]})
