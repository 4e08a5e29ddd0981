"""The budget store on Redis beyond one node: a 3-node Redis Cluster and a Sentinel-managed
master with a replica, each started by the test from Debian's ``redis-server`` on spare
ports (never the shared Redis).

Budgets ``a`` and ``b`` both cover every call, so each reservation and settlement touches
keys of two budgets in one script: in a cluster that works only because every key of the
store shares one hash slot (the prefix is a hash tag). A call costs $0.10.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from redis.cluster import RedisCluster

from tests.budget_helpers import budget_config, chat_body, chat_reply, wait_for
from tests.conftest import ProxyProcess, free_port, need
from tests.fake_upstream import FakeUpstream

JSON = {"content-type": "application/json"}
BUDGETS = [{"name": "a", "limit_usd": "0.5", "window": "total", "action": "block"},
           {"name": "b", "model": "budget-model", "limit_usd": 1, "window": "total",
            "action": "block"}]


def redis_server(workdir: Path, port: int, *args: str) -> subprocess.Popen[bytes]:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        need("redis-server and redis-cli are not installed")
    home = workdir / f"redis-{port}"  # each its own: replication writes files there
    home.mkdir()
    proc = subprocess.Popen(["redis-server", *args, "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", str(home)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port, socket_timeout=1)
    assert wait_for(lambda: _pings(client), 10), f"redis-server on {port} did not start"
    return proc


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def stop(*procs: subprocess.Popen[bytes]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free and valid too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


@pytest.fixture()
def cluster(tmp_path: Path) -> Iterator[list[int]]:
    ports = [cluster_port() for _ in range(3)]
    procs = []
    try:
        for port in ports:
            procs.append(redis_server(tmp_path, port, "--cluster-enabled", "yes",
                                      "--cluster-config-file", f"nodes-{port}.conf"))
        subprocess.run(["redis-cli", "--cluster", "create",
                        *[f"127.0.0.1:{p}" for p in ports], "--cluster-replicas", "0",
                        "--cluster-yes"], check=True, capture_output=True, timeout=30)
        for port in ports:
            node = redis.Redis(port=port)
            assert wait_for(lambda n=node: b"cluster_state:ok" in n.execute_command(
                "CLUSTER", "INFO"), 15)
        yield ports
    finally:
        stop(*procs)


def calls(proxy: ProxyProcess, n: int) -> list[int]:
    with httpx.Client(timeout=10) as http:
        return [http.post(proxy.url + "/openai/v1/chat/completions", content=chat_body(100),
                          headers=JSON).status_code for _ in range(n)]


def budgets(proxy: ProxyProcess) -> dict[str, Any]:
    r = httpx.get(proxy.url + "/admin/budgets", headers={"authorization": "Bearer adm"})
    return {b["name"]: (b["spend_usd"], b["reserved_usd"]) for b in r.json()["budgets"]}


def test_a_three_node_cluster_holds_budgets_spanning_two_budgets(
        spawn: Any, upstream: FakeUpstream, cluster: list[int]) -> None:
    url = f"redis+cluster://127.0.0.1:{cluster[0]},127.0.0.1:{cluster[1]}"
    proxy: ProxyProcess = spawn(budget_config(upstream, BUDGETS, admin_key="adm",
                                              store={"url": url, "timeout_s": 1}))
    upstream.queue(*[chat_reply(100) for _ in range(6)])
    assert calls(proxy, 6) == [200] * 5 + [429]  # "a" is full at $0.50
    assert wait_for(lambda: budgets(proxy) == {"a": (0.5, 0), "b": (0.5, 0)})
    spend = httpx.get(proxy.url + "/admin/spend?group_by=model&window=total",
                      headers={"authorization": "Bearer adm"}).json()
    assert spend["total_usd"] == 0.5
    client = RedisCluster(host="127.0.0.1", port=cluster[0])
    assert client.hget("{spendgate:}budget:a:total", "spend") == b"500000000"
    assert proxy.sample("spendgate_store_errors_total") is None


def test_a_three_node_cluster_holds_rate_limits_spanning_two_limits(
        spawn: Any, upstream: FakeUpstream, cluster: list[int]) -> None:
    """Every key of a call's limits is in the store's hash slot: one script, no CROSSSLOT."""
    url = f"redis+cluster://127.0.0.1:{cluster[0]},127.0.0.1:{cluster[1]}"
    limits = [{"name": "rpm", "requests_per_minute": 3},
              {"name": "flight", "upstream": "openai", "max_concurrent": 2,
               "tokens_per_minute": 100000}]
    proxy: ProxyProcess = spawn(budget_config(upstream, [], limits=limits,
                                              store={"url": url, "timeout_s": 1}))
    upstream.queue(*[chat_reply(100) for _ in range(4)])
    assert calls(proxy, 4) == [200] * 3 + [429]
    client = RedisCluster(host="127.0.0.1", port=cluster[0])
    assert client.zcard("{spendgate:}limitlog:rpm") == 3
    assert wait_for(lambda: client.zcard("{spendgate:}limitslots:flight") == 0)
    assert proxy.sample("spendgate_store_errors_total") is None


def test_sentinel_failover_keeps_every_cent(spawn: Any, upstream: FakeUpstream,
                                            tmp_path: Path) -> None:
    master_port, replica_port, sentinel_port = free_port(), free_port(), free_port()
    master = redis_server(tmp_path, master_port)
    replica = redis_server(tmp_path, replica_port, "--replicaof", "127.0.0.1", str(master_port))
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"sentinel monitor main 127.0.0.1 {master_port} 1\n"
                    "sentinel down-after-milliseconds main 500\n"
                    "sentinel failover-timeout main 2000\n")
    sentinel = redis_server(tmp_path, sentinel_port, str(conf), "--sentinel")
    try:
        proxy: ProxyProcess = spawn(budget_config(upstream, [
            {"name": "a", "limit_usd": 100, "window": "total", "action": "block"}],
            admin_key="adm",
            store={"url": f"redis+sentinel://127.0.0.1:{sentinel_port}/main/0",
                   "timeout_s": 0.3}))
        primary = redis.Redis(port=master_port)
        assert wait_for(lambda: primary.info("replication")["connected_slaves"] == 1, 15)
        upstream.queue(*[chat_reply(100) for _ in range(20)])
        assert calls(proxy, 4) == [200] * 4
        assert wait_for(lambda: budgets(proxy)["a"] == (0.4, 0))
        promoted = redis.Redis(port=replica_port)
        assert wait_for(lambda: int(promoted.hget("spendgate:budget:a:total", "spend") or 0)
                        == 400_000_000)  # the replica has it all
        stop(master)  # sentinel promotes the replica; calls go on meanwhile (on_error: open)
        assert calls(proxy, 6) == [200] * 6
        assert wait_for(lambda: promoted.info("replication")["role"] == "master", 15)
        assert wait_for(lambda: int(promoted.hget("spendgate:budget:a:total", "spend") or 0)
                        == 1_000_000_000, 15)
    finally:
        stop(sentinel, replica, master)
