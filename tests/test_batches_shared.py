"""Batch results across replicas and restarts: the creator pays, once.

Real proxies (``spendgate serve``) share a real store: two replicas on the shared Redis (own
key prefix), one proxy restarted on its SQLite file, one whose private Redis dies before the
download. Expected costs are literal, worked out by hand from the LiteLLM map's batch rates.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import orjson
import redis

from spendgate.accounting.batches import BatchBook, Owner
from spendgate.budgets.ledger import Ledger
from spendgate.budgets.store.sqlite import SQLiteStore
from tests.budget_helpers import (  # noqa: F401  (fixtures)
    SHARED_REDIS,
    RedisServer,
    private_redis,
    redis_prefix,
    wait_for,
)
from tests.conftest import ProxyProcess, basic_config
from tests.fake_upstream import FakeUpstream, Reply, fixture
from tests.test_proxy import client

OUTPUT = fixture("openai_batch_output.jsonl")
OUTPUT_FILE = "file-7Bn4Cx9Dz2Fv6Gh1Jk3Lm8"
MODEL = "gpt-5-2025-08-07"
# gpt-5 batch: input 0.625, cached 0.0625, output 5 per Mtok
# line 1: 800 x 0.625 + 200 x 0.0625 + 500 x 5 = 500 + 12.5 + 2500 = 3012.5 micro-USD
# line 2: 2000 x 0.625 + 100 x 5 = 1250 + 500 = 1750 micro-USD; total 4762.5 micro-USD
# (the standard tier would be twice that: 9525 micro-USD)
BATCH_USD = 0.0047625
BATCH_NANO = 4_762_500


def queue_batch(upstream: FakeUpstream, downloads: int) -> None:
    upstream.queue(Reply(body=fixture("openai_batch_created.json")),
                   Reply(body=fixture("openai_batch_completed.json")),
                   *[Reply(body=OUTPUT, content_type="application/octet-stream")
                     for _ in range(downloads)])


def create_batch(proxy: ProxyProcess, project: str) -> str:
    batch = client(proxy, project).batches.create(
        input_file_id="file-3Qk8Lm2Np9Rs4Tu7Vw1Xy5", endpoint="/v1/chat/completions",
        completion_window="24h")
    return batch.id


def download(proxy: ProxyProcess, project: str) -> None:
    assert client(proxy, project).files.content(OUTPUT_FILE).content == OUTPUT


def cost(proxies: list[ProxyProcess], project: str) -> float | None:
    """``spendgate_cost_usd_total`` of ``project`` summed over ``proxies`` (None: nowhere)."""
    found = [p.sample("spendgate_cost_usd_total", project=project) for p in proxies]
    return sum(v for v in found if v is not None) if any(v is not None for v in found) else None


def redis_ledger_nano(prefix: str, project: str) -> int | None:
    spend = redis.Redis.from_url(SHARED_REDIS).hgetall(f"{prefix}spend:total")
    found = [int(v) for k, v in spend.items() if orjson.loads(k)[1] == project]
    return sum(found) if found else None


def sqlite_ledger_nano(path: Path, project: str) -> int | None:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        row = db.execute("SELECT SUM(spend) FROM dim_spend WHERE win = 'total' AND project = ?",
                         (project,)).fetchone()
    return int(row[0]) if row and row[0] is not None else None


def test_created_on_one_replica_downloaded_on_both_counts_once_for_the_creator(
        spawn: Any, upstream: FakeUpstream, redis_prefix: str) -> None:  # noqa: F811
    config = basic_config(upstream, store={"url": SHARED_REDIS, "key_prefix": redis_prefix})
    a, b = spawn(config), spawn(config)
    queue_batch(upstream, downloads=2)
    batch_id = create_batch(a, "shared-owner")
    a.sample("spendgate_requests_total")  # /metrics flushes A's pipeline: the create is kept
    assert client(b, "shared-reader").batches.retrieve(batch_id).output_file_id == OUTPUT_FILE
    download(b, "shared-reader")          # B never saw the create: the owner is in Redis
    assert wait_for(lambda: cost([b], "shared-owner")) == BATCH_USD
    download(a, "shared-reader")          # A never saw the status: the file link is in Redis
    assert upstream.requests[-1].raw_path == f"/v1/files/{OUTPUT_FILE}/content"
    assert wait_for(lambda: redis_ledger_nano(redis_prefix, "shared-owner")) == BATCH_NANO
    assert cost([a, b], "shared-owner") == BATCH_USD    # counted once, on B only
    assert a.sample("spendgate_cost_usd_total", project="shared-owner") is None
    assert sum(p.sample("spendgate_requests_total", project="shared-owner", model=MODEL) or 0
               for p in (a, b)) == 2                    # two result lines, once
    assert cost([a, b], "shared-reader") is None
    assert redis_ledger_nano(redis_prefix, "shared-reader") is None
    keys = {k.decode().removeprefix(redis_prefix) for k in
            redis.Redis.from_url(SHARED_REDIS).scan_iter(match=redis_prefix + "*batch-*")}
    assert keys == {f"memo:batch-owner:openai:{batch_id}",
                    f"memo:batch-file:openai:{OUTPUT_FILE}", f"claim:batch-accounted:openai:{batch_id}"}
    assert 35 * 86400 - 60 < redis.Redis.from_url(SHARED_REDIS).ttl(
        f"{redis_prefix}memo:batch-owner:openai:{batch_id}") <= 35 * 86400


def test_a_restart_forgets_nothing_with_the_sqlite_store(
        spawn: Any, upstream: FakeUpstream, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.sqlite3"
    proxy = spawn(basic_config(upstream, store={"url": f"sqlite:///{ledger}"}))
    queue_batch(upstream, downloads=3)
    batch_id = create_batch(proxy, "restart-owner")
    assert client(proxy, "restart-reader").batches.retrieve(batch_id).output_file_id == (
        OUTPUT_FILE)
    proxy.stop()
    proxy.start()
    for _ in range(2):
        download(proxy, "restart-reader")
    assert wait_for(lambda: cost([proxy], "restart-owner")) == BATCH_USD  # once, the creator's
    assert proxy.sample("spendgate_requests_total", project="restart-owner", model=MODEL) == 2
    proxy.stop()
    proxy.start()
    download(proxy, "restart-reader")     # after a second restart: the claim in the file holds
    assert proxy.sample("spendgate_requests_total", project="restart-reader") == 1
    assert proxy.sample("spendgate_cost_usd_total", project="restart-owner") is None
    assert proxy.sample("spendgate_cost_usd_total", project="restart-reader") is None
    assert wait_for(lambda: sqlite_ledger_nano(ledger, "restart-owner")) == BATCH_NANO
    assert sqlite_ledger_nano(ledger, "restart-reader") is None
    assert len(upstream.requests) == 5


def test_a_store_that_fails_at_download_time_still_accounts_the_results(
        spawn: Any, upstream: FakeUpstream, private_redis: RedisServer) -> None:  # noqa: F811
    proxy = spawn(basic_config(upstream, store={"url": private_redis.url, "timeout_s": 0.2}))
    queue_batch(upstream, downloads=1)
    batch_id = create_batch(proxy, "outage-owner")
    assert client(proxy, "outage-reader").batches.retrieve(batch_id).output_file_id == (
        OUTPUT_FILE)
    proxy.sample("spendgate_requests_total")  # the create and the status are recorded
    private_redis.kill()
    download(proxy, "outage-reader")      # the claim fails: accounted (never drop spend)
    assert wait_for(lambda: cost([proxy], "outage-owner")) == BATCH_USD
    assert cost([proxy], "outage-reader") is None       # this process knew the creator
    assert (proxy.sample("spendgate_store_errors_total", operation="claim") or 0) >= 1
    assert "accounted here, maybe twice" in proxy.log()


def test_two_books_on_one_sqlite_file_share_owners_links_and_claims(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "ledger.sqlite3", timeout_s=1.0, lease_s=60)
    now = [1_000_000.0]
    errors: list[str] = []
    ledger = Ledger(store, lambda: now[0], errors.append)
    try:
        first, second = (BatchBook(shared=lambda: ledger) for _ in range(2))
        alice = Owner("alice", "u1", None)
        first.created("openai", "batch_1", alice)
        second.output_file("openai", "file-out-1", "batch_1")
        assert first.owner("openai", "file-out-1") == second.owner("openai", "batch_1") == alice
        assert second.owner("anthropic", "batch_1") is None   # ids are per upstream
        assert second.first_download("openai", "file-out-1") is True
        assert first.first_download("openai", "batch_1") is False  # the same results
        assert BatchBook(shared=lambda: ledger).first_download("openai", "batch_1") is False
        now[0] += 35 * 86400 + 1                               # past the TTL: forgotten
        assert BatchBook(shared=lambda: ledger).owner("openai", "batch_1") is None
        assert BatchBook(shared=lambda: ledger).first_download("openai", "batch_1") is True
        assert errors == []
    finally:
        store.close()
