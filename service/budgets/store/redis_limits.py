"""Rate limits in Redis (``base.Store.limit_*``): the Lua scripts and how calls map to them.

Keys, per limit (``P`` is the store's prefix, a hash tag in a cluster, so every key of one
call's limits is in one slot and one script sees them all)::

    P limit:{name}        hash  tokens (sum of the log's), t:{rid} -> one call's tokens
    P limitlog:{name}     zset  rid -> admission time: the calls of the sliding window
    P limitslots:{name}   zset  rid -> lease end: the calls in flight

Times are the callers' clocks (unix seconds, as the budget store's leases): replicas'
clocks should agree to well under the window. Token counts are added with ``HINCRBY``
(exact integers); comparisons are Lua numbers, exact to 2^53. A log holds one entry per
admitted call of the last window: bounded by ``requests_per_minute`` when set, else by the
calls a minute brings. Keys expire a minute after their last entry could matter.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from spendgate.budgets.store.base import CONCURRENT_RETRY_S, LimitEnd, LimitHold, LimitState

# KEYS: 3 per hold (hash, log, slots). ARGV[1] rid, ARGV[2] now, ARGV[3] lease end; then per
# hold: requests, tokens, concurrent (0: unset), cost, window. Reply {0}, or {i, what,
# requests, tokens, in_flight, retry_after (-1: never), reset} for the first refusing hold.
ADMIT = """
local n = #KEYS / 3
local rid, now, lease_end = ARGV[1], tonumber(ARGV[2]), ARGV[3]
for i = 1, n do
  local h, log, slots = KEYS[3*i-2], KEYS[3*i-1], KEYS[3*i]
  local a = 3 + (i-1)*5
  local rpm, tpm, maxc = tonumber(ARGV[a+1]), tonumber(ARGV[a+2]), tonumber(ARGV[a+3])
  local cost, window = tonumber(ARGV[a+4]), tonumber(ARGV[a+5])
  local edge = now - window
  local old = redis.call('ZRANGEBYSCORE', log, '-inf', edge)
  for _, id in ipairs(old) do
    local t = redis.call('HGET', h, 't:' .. id)
    if t then
      redis.call('HINCRBY', h, 'tokens', -tonumber(t))
      redis.call('HDEL', h, 't:' .. id)
    end
  end
  if #old > 0 then redis.call('ZREMRANGEBYSCORE', log, '-inf', edge) end
  redis.call('ZREMRANGEBYSCORE', slots, '-inf', now)
  local count = redis.call('ZCARD', log)
  local used = tonumber(redis.call('HGET', h, 'tokens') or '0')
  local flying = redis.call('ZCARD', slots)
  local what = nil
  if rpm > 0 and count + 1 > rpm then what = 'requests'
  elseif tpm > 0 and used + cost > tpm then what = 'tokens'
  elseif maxc > 0 and flying + 1 > maxc then what = 'concurrent' end
  if what then
    local retry = -1
    if what == 'requests' then
      local e = redis.call('ZRANGE', log, count - rpm, count - rpm, 'WITHSCORES')
      retry = tonumber(e[2]) + window - now
    elseif what == 'tokens' and cost <= tpm then
      local need, freed = used + cost - tpm, 0
      retry = window
      local e = redis.call('ZRANGE', log, 0, 9999, 'WITHSCORES')
      for j = 1, #e, 2 do
        freed = freed + tonumber(redis.call('HGET', h, 't:' .. e[j]) or '0')
        if freed >= need then
          retry = tonumber(e[j+1]) + window - now
          break
        end
      end
    elseif what == 'concurrent' then
      retry = tonumber(ARGV[4 + n*5])
    end
    local reset = 0
    local last = redis.call('ZRANGE', log, -1, -1, 'WITHSCORES')
    if #last > 0 then reset = tonumber(last[2]) + window - now end
    return {i, what, count, tostring(used), flying, tostring(retry), tostring(reset)}
  end
end
for i = 1, n do
  local h, log, slots = KEYS[3*i-2], KEYS[3*i-1], KEYS[3*i]
  local a = 3 + (i-1)*5
  local window = tonumber(ARGV[a+5])
  if tonumber(ARGV[a+1]) > 0 or tonumber(ARGV[a+2]) > 0 then
    redis.call('ZADD', log, now, rid)
    redis.call('HSET', h, 't:' .. rid, ARGV[a+4])
    redis.call('HINCRBY', h, 'tokens', ARGV[a+4])
    local ttl = math.ceil(window) + 60
    redis.call('EXPIRE', h, ttl)
    redis.call('EXPIRE', log, ttl)
  end
  if tonumber(ARGV[a+3]) > 0 then
    redis.call('ZADD', slots, lease_end, rid)
    redis.call('EXPIRE', slots, math.ceil(tonumber(lease_end) - now) + 60)
  end
end
return {0}
"""

# KEYS: slot zsets; ARGV[1]: rid.
RELEASE = """
for _, slots in ipairs(KEYS) do redis.call('ZREM', slots, ARGV[1]) end
return 0
"""

# KEYS: 2 per end (hash, slots); ARGV: 3 per end: rid, tokens ('' : keep), slot ('1' / '').
END = """
for i = 1, #KEYS / 2 do
  local h, slots = KEYS[2*i-1], KEYS[2*i]
  local rid, tokens = ARGV[3*i-2], ARGV[3*i-1]
  if tokens ~= '' then
    local old = redis.call('HGET', h, 't:' .. rid)
    if old then
      redis.call('HSET', h, 't:' .. rid, tokens)
      redis.call('HINCRBY', h, 'tokens', tonumber(tokens) - tonumber(old))
    end
  end
  if ARGV[3*i] ~= '' then redis.call('ZREM', slots, rid) end
end
return 0
"""


def keys_of(prefix: str, limit: str) -> tuple[str, str, str]:
    return (f"{prefix}limit:{limit}", f"{prefix}limitlog:{limit}",
            f"{prefix}limitslots:{limit}")


def admit_args(prefix: str, rid: str, holds: Sequence[LimitHold], now: float,
               lease_s: float) -> tuple[list[str], list[str]]:
    keys: list[str] = []
    args = [rid, repr(now), repr(now + lease_s)]
    for h in holds:
        keys += keys_of(prefix, h.limit)
        args += [str(h.requests), str(h.tokens), str(h.concurrent), str(h.cost),
                 repr(h.window_s)]
    args.append(repr(CONCURRENT_RETRY_S))
    return keys, args


def admit_reply(holds: Sequence[LimitHold], reply: Any) -> LimitState | None:
    index = int(reply[0])
    if index == 0:
        return None
    what = reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1])
    retry = float(reply[5])
    return LimitState(holds[index - 1].limit, what, int(reply[2]), int(float(reply[3])),
                      int(reply[4]), None if retry < 0 else max(retry, 0.0),
                      max(float(reply[6]), 0.0))


def end_args(prefix: str, ends: Sequence[LimitEnd]) -> tuple[list[str], list[str]]:
    keys: list[str] = []
    args: list[str] = []
    for e in ends:
        h, _, slots = keys_of(prefix, e.limit)
        keys += [h, slots]
        args += [e.rid, "" if e.tokens is None else str(e.tokens), "1" if e.slot else ""]
    return keys, args


def slot_keys(prefix: str, limits: Sequence[str]) -> list[str]:
    return [keys_of(prefix, name)[2] for name in limits]

