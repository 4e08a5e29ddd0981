"""Which Redis ``store.url`` names, and the redis-py clients that reach it.

* ``redis://``, ``rediss://`` (TLS), ``unix://``: one server, as redis-py reads the URL.
* ``redis+sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT...]/SERVICE[/DB]`` (``rediss+sentinel``:
  TLS to the master): the master Sentinel names for ``SERVICE``, found again after a
  failover (the next operation after the switch reconnects to the new master).
* ``redis+cluster://[:PASSWORD@]HOST:PORT[,HOST:PORT...]`` (``rediss+cluster``): a Redis
  Cluster, from any of its nodes.

Clients never retry by themselves (the ledger does). The password is never part of
``description``s (``redact.safe_url``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

SCHEMES = ("redis://", "rediss://", "unix://", "redis+sentinel://", "rediss+sentinel://",
           "redis+cluster://", "rediss+cluster://")


@dataclass(frozen=True, slots=True)
class Topology:
    kind: str                              # "single", "sentinel" or "cluster"
    url: str
    nodes: tuple[tuple[str, int], ...] = ()
    service: str = ""
    db: int = 0
    password: str | None = None
    tls: bool = False

    @classmethod
    def parse(cls, url: str) -> Topology:
        scheme = url.split("://", 1)[0]
        if "+" not in scheme:
            return cls("single", url)
        parts = urlsplit(url)
        userinfo, _, hosts = parts.netloc.rpartition("@")
        nodes = []
        for node in hosts.split(","):
            host, _, port = node.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"{scheme}://: expected HOST:PORT[,HOST:PORT...]")
            nodes.append((host.strip("[]"), int(port)))
        password = unquote(userinfo.partition(":")[2]) or None if userinfo else None
        path = [p for p in parts.path.split("/") if p]
        tls = scheme.startswith("rediss")
        if scheme.endswith("+sentinel"):
            if not path:
                raise ValueError("redis+sentinel:// needs the service name: "
                                 "redis+sentinel://HOST:PORT/SERVICE[/DB]")
            return cls("sentinel", url, tuple(nodes), path[0],
                       int(path[1]) if len(path) > 1 else 0, password, tls)
        return cls("cluster", url, tuple(nodes), password=password, tls=tls)

    def sync_client(self, options: dict[str, Any]) -> Any:
        if self.kind == "single":
            return redis.Redis.from_url(self.url, retry=Retry(NoBackoff(), 0), **options)
        if self.kind == "sentinel":
            from redis.sentinel import Sentinel

            sentinel = Sentinel(list(self.nodes), sentinel_kwargs=options, **options)
            return sentinel.master_for(self.service, db=self.db, password=self.password,
                                       ssl=self.tls, retry=Retry(NoBackoff(), 0))
        from redis.cluster import ClusterNode, RedisCluster

        return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in self.nodes],  # type: ignore[no-untyped-call]
                            password=self.password, ssl=self.tls,
                            cluster_error_retry_attempts=1, **options)

    def async_client(self, options: dict[str, Any]) -> Any:
        """Made in the event loop that will use it."""
        if self.kind == "single":
            return redis.asyncio.Redis.from_url(self.url, retry=AsyncRetry(NoBackoff(), 0),
                                                **options)
        if self.kind == "sentinel":
            from redis.asyncio.sentinel import Sentinel

            sentinel = Sentinel(list(self.nodes), sentinel_kwargs=options, **options)
            return sentinel.master_for(self.service, db=self.db, password=self.password,
                                       ssl=self.tls, retry=AsyncRetry(NoBackoff(), 0))
        from redis.asyncio.cluster import ClusterNode, RedisCluster

        return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in self.nodes],
                            password=self.password, ssl=self.tls,
                            cluster_error_retry_attempts=1, **options)
