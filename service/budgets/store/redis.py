"""The shared budget store: one Redis database for every replica, updated by Lua scripts.

Keys (``P`` is ``store.key_prefix``; budget names are user text, window ids never are, so
``budget:window`` cannot collide)::

    P budget:{budget}:{window}   hash   spend, reserved (nano-dollars), r:{rid} per reservation
    P leases:{budget}:{window}   zset   rid -> lease end (unix seconds)
    P spend:{window}             hash   JSON [upstream, project, model, key] -> nano-dollars
    P day:{day}                  hash   JSON [upstream, model, kind] -> amount (daily history)
    P claim:{name}               string alert dedupe (SET NX)
    P settled:{source}           string last batch seq applied from a process (one day)
    P memo:{name}                string ``remember``'s value (batch owners), until its TTL
    P limit*:{name}              rate limits (``redis_limits.py``)

Each script runs atomically in Redis, so the check-and-increment of ``reserve`` holds under
any number of replicas. Amounts travel as decimal strings and are added with ``HINCRBY``
(exact 64-bit integers); only the admission comparison is done in Lua numbers (doubles),
exact up to 2^53 nano-dollars (9 million USD) and within 1e-16 of the truth beyond.
Scripts touch keys they compute from the prefix. ``store.url`` may name a standalone Redis,
a Sentinel-managed one or a Redis Cluster (``redis_topology.py``); in a cluster the prefix
becomes a hash tag (``{spendgate:}budget:...``), so every key lives in one slot. Two clients:
a sync one (any thread, its own pool) and an asyncio one for the hot path, created in the
loop on first use. No retries inside the client: the ledger retries.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import orjson
import redis
import redis.asyncio

import spendgate.budgets.store.redis_limits as redis_limits
from spendgate.budgets.store.base import (
    DIM_CAP,
    HISTORY_CAP,
    Dims,
    HistoryKey,
    Hold,
    LimitEnd,
    LimitHold,
    LimitState,
    Refusal,
    SettleBatch,
    Store,
    StoreError,
    Totals,
)
from spendgate.budgets.store.redis_topology import Topology
from spendgate.labels import OTHER
from spendgate.redact import safe_url

_RESERVE = """
local n = #KEYS / 2
for i = 1, n do
  local h, z = KEYS[2*i-1], KEYS[2*i]
  local expired = redis.call('ZRANGEBYSCORE', z, '-inf', ARGV[2], 'LIMIT', 0, 100)
  for _, id in ipairs(expired) do
    local amount = redis.call('HGET', h, 'r:' .. id)
    if amount and amount ~= '0' then redis.call('HINCRBY', h, 'reserved', '-' .. amount) end
    redis.call('HDEL', h, 'r:' .. id)
    redis.call('ZREM', z, id)
  end
end
for i = 1, n do
  local a = 3 + (i-1)*3
  local h = KEYS[2*i-1]
  local spend = redis.call('HGET', h, 'spend') or '0'
  local reserved = redis.call('HGET', h, 'reserved') or '0'
  local used = tonumber(spend) + tonumber(reserved)
  if used >= tonumber(ARGV[a+1]) or used + tonumber(ARGV[a+2]) > tonumber(ARGV[a+1]) then
    return {i, spend, reserved}
  end
end
for i = 1, n do
  local a = 3 + (i-1)*3
  local h, z = KEYS[2*i-1], KEYS[2*i]
  redis.call('HINCRBY', h, 'reserved', ARGV[a+2])
  redis.call('HSET', h, 'r:' .. ARGV[1], ARGV[a+2])
  redis.call('ZADD', z, ARGV[3], ARGV[1])
  local ttl = tonumber(ARGV[a+3])
  if ttl > 0 then
    redis.call('EXPIRE', h, ttl)
    redis.call('EXPIRE', z, ttl)
  end
end
return {0}
"""

# KEYS[1]: the source's last applied seq; ARGV[2]: this batch's seq. ARGV[1]: JSON ops,
# amounts as strings:
# {"r": [[hash, zset, rid]], "c": [[hash, amount, ttl]], "d": [[hash, field, amount, ttl]],
#  "t": [hash, ...] (budget hashes whose totals to return), "o": other-field, "cap": n,
#  "h": [[day hash, field, amount, ttl, other-field]] (daily history), "hcap": n}
_SETTLE = """
local ops = cjson.decode(ARGV[1])
if tonumber(ARGV[2]) > tonumber(redis.call('GET', KEYS[1]) or '0') then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', 86400)
  for _, r in ipairs(ops.r) do
    local amount = redis.call('HGET', r[1], 'r:' .. r[3])
    if amount then
      if amount ~= '0' then redis.call('HINCRBY', r[1], 'reserved', '-' .. amount) end
      redis.call('HDEL', r[1], 'r:' .. r[3])
    end
    redis.call('ZREM', r[2], r[3])
  end
  for _, c in ipairs(ops.c) do
    redis.call('HINCRBY', c[1], 'spend', c[2])
    if c[3] > 0 then redis.call('EXPIRE', c[1], c[3]) end
  end
  for _, d in ipairs(ops.d) do
    local f = d[2]
    if redis.call('HEXISTS', d[1], f) == 0 and redis.call('HLEN', d[1]) >= ops.cap then
      f = ops.o
    end
    redis.call('HINCRBY', d[1], f, d[3])
    if d[4] > 0 then redis.call('EXPIRE', d[1], d[4]) end
  end
  for _, h in ipairs(ops.h or {}) do
    local f = h[2]
    if redis.call('HEXISTS', h[1], f) == 0 and redis.call('HLEN', h[1]) >= ops.hcap then
      f = h[5]
    end
    redis.call('HINCRBY', h[1], f, h[3])
    if h[4] > 0 then redis.call('EXPIRE', h[1], h[4]) end
  end
end
local out = {}
for _, h in ipairs(ops.t) do
  local v = redis.call('HMGET', h, 'spend', 'reserved')
  out[#out+1] = v[1] or '0'
  out[#out+1] = v[2] or '0'
end
return out
"""

_OTHER_FIELD = orjson.dumps([OTHER] * 4).decode()


class RedisStore(Store):
    backend = "redis"

    def __init__(self, url: str, timeout_s: float, lease_s: float, prefix: str = "spendgate:"
                 ) -> None:
        super().__init__(timeout_s, lease_s)
        self.description = f"redis {safe_url(url)}"
        self._topology = Topology.parse(url)
        # In a cluster every key of the store shares one hash slot (the prefix is the hash
        # tag), so each script's keys (all budgets of a call, its dimensions) are on one
        # node and each reservation stays atomic across budgets.
        self.prefix = f"{{{prefix}}}" if self._topology.kind == "cluster" else prefix
        options: dict[str, Any] = {"socket_timeout": timeout_s,
                                   "socket_connect_timeout": timeout_s}
        self._sync = self._topology.sync_client(options)
        self._options = options
        self._async: Any = None
        self._reserve_sync = self._sync.register_script(_RESERVE)
        self._settle_sync = self._sync.register_script(_SETTLE)
        self._reserve_async: Any = None
        self._limit_admit_sync = self._sync.register_script(redis_limits.ADMIT)
        self._limit_end_sync = self._sync.register_script(redis_limits.END)
        self._limit_admit_async: Any = None
        self._limit_release_async: Any = None

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """The one place redis-py's failures (and a reply slower than ``timeout_s``) become
        ``StoreError``, naming the store but never its password."""
        try:
            yield
        except TimeoutError:
            raise StoreError(f"{self.description} did not answer in {self.timeout_s:g} s"
                             ) from None
        except redis.RedisError as error:
            raise StoreError(f"{self.description}: {type(error).__name__}: {error}") from None

    def _budget_keys(self, budget: str, window: str) -> tuple[str, str]:
        return (f"{self.prefix}budget:{budget}:{window}", f"{self.prefix}leases:{budget}:{window}")

    def _reserve_args(self, rid: str, holds: Sequence[Hold],
                      now: float) -> tuple[list[str], list[str]]:
        keys: list[str] = []
        args = [rid, repr(now), repr(now + self.lease_s)]
        for h in holds:
            keys += self._budget_keys(h.budget, h.window)
            args += [str(h.limit), str(h.amount), str(h.ttl_s)]
        return keys, args

    @staticmethod
    def _refusal(holds: Sequence[Hold], reply: Any) -> Refusal | None:
        index = int(reply[0])
        if index == 0:
            return None
        h = holds[index - 1]
        return Refusal(h.budget, h.window, int(reply[1]), int(reply[2]), h.amount)

    def reserve(self, rid: str, holds: Sequence[Hold], now: float) -> Refusal | None:
        keys, args = self._reserve_args(rid, holds, now)
        with self._errors():
            reply = self._reserve_sync(keys=keys, args=args)
        return self._refusal(holds, reply)

    async def reserve_async(self, rid: str, holds: Sequence[Hold],
                            now: float) -> Refusal | None:
        if self._async is None:
            self._async = self._topology.async_client(self._options)
            self._reserve_async = self._async.register_script(_RESERVE)
        keys, args = self._reserve_args(rid, holds, now)
        with self._errors():
            reply = await asyncio.wait_for(self._reserve_async(keys=keys, args=args),
                                           self.timeout_s)
        return self._refusal(holds, reply)

    def settle(self, batch: SettleBatch, now: float) -> Totals:
        touched = list(dict.fromkeys([(b, w) for _, b, w in batch.releases]
                                     + [(c.budget, c.window) for c in batch.charges]))
        ops = {
            "r": [[*self._budget_keys(b, w), rid] for rid, b, w in batch.releases],
            "c": [[self._budget_keys(c.budget, c.window)[0], str(c.amount), c.ttl_s]
                  for c in batch.charges],
            "d": [[f"{self.prefix}spend:{d.window}", orjson.dumps(list(d.dims)).decode(),
                   str(d.amount), d.ttl_s] for d in batch.dims],
            "t": [self._budget_keys(b, w)[0] for b, w in touched],
            "o": _OTHER_FIELD, "cap": DIM_CAP,
            "h": [[f"{self.prefix}day:{h.day}", orjson.dumps([h.upstream, h.model, h.kind]
                                                             ).decode(), str(h.amount), h.ttl_s,
                   orjson.dumps([OTHER, OTHER, h.kind]).decode()] for h in batch.days],
            "hcap": HISTORY_CAP,
        }
        with self._errors():
            reply = self._settle_sync(keys=[f"{self.prefix}settled:{batch.source}"],
                                      args=[orjson.dumps(ops), str(batch.seq)])
        return {key: (int(reply[2 * i]), int(reply[2 * i + 1])) for i, key in enumerate(touched)}

    def totals(self, keys: Sequence[tuple[str, str]], now: float) -> Totals:
        with self._errors():
            pipe = self._sync.pipeline(transaction=False)
            for budget, window in keys:
                pipe.hmget(self._budget_keys(budget, window)[0], "spend", "reserved")
            replies = pipe.execute()
        return {key: (int(spend or 0), int(reserved or 0))
                for key, (spend, reserved) in zip(keys, replies, strict=True)}

    def dims(self, window: str) -> dict[Dims, int]:
        with self._errors():
            raw = self._sync.hgetall(f"{self.prefix}spend:{window}")
        out: dict[Dims, int] = {}
        for field, value in raw.items():
            u, p, m, k = orjson.loads(field)
            out[(u, p, m, k)] = int(value)
        return out

    def history(self, days: Sequence[str]) -> dict[HistoryKey, int]:
        with self._errors():
            pipe = self._sync.pipeline(transaction=False)
            for day in days:
                pipe.hgetall(f"{self.prefix}day:{day}")
            replies = pipe.execute()
        out: dict[HistoryKey, int] = {}
        for day, raw in zip(days, replies, strict=True):
            for field, value in raw.items():
                upstream, model, kind = orjson.loads(field)
                out[(day, upstream, model, kind)] = int(value)
        return out

    def claim(self, name: str, ttl_s: int, now: float) -> bool:
        kwargs: dict[str, Any] = {"ex": ttl_s} if ttl_s > 0 else {}
        with self._errors():
            return bool(self._sync.set(f"{self.prefix}claim:{name}", b"1", nx=True, **kwargs))

    def close(self) -> None:
        self._sync.close()

    async def aclose(self) -> None:
        if self._async is not None:
            await self._async.aclose()
            self._async = None

    def remember(self, name: str, value: str, ttl_s: int, now: float) -> None:
        kwargs: dict[str, Any] = {"ex": ttl_s} if ttl_s > 0 else {}
        with self._errors():
            self._sync.set(f"{self.prefix}memo:{name}", value.encode(), **kwargs)

    def recall(self, name: str, now: float) -> str | None:
        with self._errors():
            value = self._sync.get(f"{self.prefix}memo:{name}")
        return value.decode() if isinstance(value, bytes) else None

    # -- rate limits (redis_limits.py) ------------------------------------------------------

    def _async_client(self) -> Any:
        """The asyncio client (made in the loop on first use), its limit scripts with it."""
        if self._async is None:
            self._async = self._topology.async_client(self._options)
            self._reserve_async = self._async.register_script(_RESERVE)
            self._limit_admit_async = self._limit_release_async = None
        return self._async

    def limit_admit(self, rid: str, holds: Sequence[LimitHold], now: float
                    ) -> LimitState | None:
        keys, args = redis_limits.admit_args(self.prefix, rid, holds, now, self.lease_s)
        with self._errors():
            reply = self._limit_admit_sync(keys=keys, args=args)
        return redis_limits.admit_reply(holds, reply)

    async def limit_admit_async(self, rid: str, holds: Sequence[LimitHold], now: float
                                ) -> LimitState | None:
        client = self._async_client()
        if self._limit_admit_async is None:
            self._limit_admit_async = client.register_script(redis_limits.ADMIT)
        keys, args = redis_limits.admit_args(self.prefix, rid, holds, now, self.lease_s)
        with self._errors():
            reply = await asyncio.wait_for(self._limit_admit_async(keys=keys, args=args),
                                           self.timeout_s)
        return redis_limits.admit_reply(holds, reply)

    async def limit_release_async(self, rid: str, limits: Sequence[str]) -> None:
        client = self._async_client()
        if self._limit_release_async is None:
            self._limit_release_async = client.register_script(redis_limits.RELEASE)
        with self._errors():
            await asyncio.wait_for(self._limit_release_async(
                keys=redis_limits.slot_keys(self.prefix, limits), args=[rid]), self.timeout_s)

    def limit_end(self, ends: Sequence[LimitEnd]) -> None:
        keys, args = redis_limits.end_args(self.prefix, ends)
        with self._errors():
            self._limit_end_sync(keys=keys, args=args)
