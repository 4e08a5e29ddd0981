#!/usr/bin/env python3
"""Which async HTTP client for upstream calls: aiohttp vs httpx vs spendgate's own, measured.

    python bench/client_choice.py [-n 5000] [--rounds 3] [--out bench/results/client_choice.json]

Against the canned nginx of ``bench/run.py`` (same launcher), under uvloop, each client POSTs
the same chat request N times over a pooled keep-alive connection pool, two ways:

* sequential: one request at a time over a pool holding one connection (latency per call);
* sequential again once a 32-wide burst has left 32 idle connections in the pool, the
  usual state of a proxy's pool after any load (httpx's per-request cost grows with it);
* concurrent: 32 requests in flight (throughput, as a proxy under load sees it).

Reported per client and mode: mean/p50/p99 latency, requests/s, and the client process's
CPU time per request (the cost a proxy pays per upstream call). Clients are set up the
way a proxy uses them: aiohttp as spendgate's upstream module used it before it had its own
client (no auto headers, no decompression, dummy cookie jar), httpx with an equivalent pool,
and spendgate's own ``UpstreamClient`` (``spendgate.upstream.client`` over
``spendgate.upstream.http1``, source in ``service/upstream/``; "http1") as the proxy calls
it, imported from this checkout through ``scripts/sourcetree.py``, never from an installed
copy. Rounds rotate the clients, and medians over rounds are reported. With 2+ cores
this process is pinned to one core and nginx to another.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import signal
import statistics
import sys
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp
import httpx
import uvloop
from run import (
    AUTH_HEADER,
    BENCH_DIR,
    CHAT_REQUEST,
    JSON_PATH,
    REPO,
    load_sourcetree,
    pick_cpus,
    start_nginx,
)

# No folder of the checkout is named spendgate (pyproject maps service/ to it): import this
# checkout's source, ahead of any installed spendgate.
load_sourcetree().install(REPO)

from spendgate.config import UpstreamConfig  # noqa: E402
from spendgate.upstream.client import UpstreamClient, UpstreamTarget, read_body  # noqa: E402

CONCURRENCY = 32
WARMUP = 300
BODY = json.dumps(CHAT_REQUEST, separators=(",", ":")).encode()
HEADERS = {"Content-Type": "application/json", "Authorization": AUTH_HEADER}

Post = Callable[[], Awaitable[int]]
MODES = (("sequential", "sequential, 1 pooled connection"),
         ("sequential_idle_pool", f"sequential, {CONCURRENCY} idle pooled connections"),
         ("concurrent", f"{CONCURRENCY} concurrent"))


class AiohttpClient:
    name = "aiohttp"

    def __init__(self, url: str) -> None:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=60)
        self.session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=30))
        self.url = url

    async def post(self) -> int:
        async with self.session.post(self.url, data=BODY, headers=HEADERS) as response:
            await response.read()
            return response.status

    async def close(self) -> None:
        await self.session.close()


class HttpxClient:
    name = "httpx"

    def __init__(self, url: str) -> None:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None,
                              keepalive_expiry=60)
        self.client = httpx.AsyncClient(limits=limits, timeout=30, follow_redirects=False)
        self.url = url

    async def post(self) -> int:
        response = await self.client.post(self.url, content=BODY, headers=HEADERS)
        await response.aread()
        return response.status_code

    async def close(self) -> None:
        await self.client.aclose()


class Http1Client:
    """spendgate's own, exactly as the proxy calls it (``spendgate.upstream.client``)."""

    name = "http1"

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        self.client = UpstreamClient()
        self.target = UpstreamTarget("bench", UpstreamConfig(
            url=f"{parts.scheme}://{parts.netloc}", timeout_s=30))
        self.url = self.target.url(parts.path, "")
        self.headers = list(HEADERS.items())

    async def post(self) -> int:
        async with self.client.open(self.target, "POST", self.url, self.headers,
                                    BODY) as response:
            await read_body(response, self.target)
            return response.status

    async def close(self) -> None:
        await self.client.close()


Client = AiohttpClient | HttpxClient | Http1Client
CLIENTS: tuple[type[Client], ...] = (AiohttpClient, HttpxClient, Http1Client)


async def run_mode(post: Post, n: int, concurrency: int) -> dict[str, Any]:
    latencies: list[int] = []
    errors = 0
    remaining = n

    async def worker() -> None:
        nonlocal remaining, errors
        while remaining > 0:
            remaining -= 1
            start = time.perf_counter_ns()
            status = await post()
            latencies.append(time.perf_counter_ns() - start)
            if status != 200:
                errors += 1

    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    latencies.sort()
    return {
        "requests": len(latencies), "errors": errors, "seconds": wall, "rps": n / wall,
        "mean_us": statistics.fmean(latencies) / 1000,
        "p50_us": latencies[len(latencies) // 2] / 1000,
        "p99_us": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] / 1000,
        "cpu_us_per_req": cpu * 1e6 / n,
    }


async def bench_client(cls: type[Client], url: str, n: int,
                       ) -> dict[str, dict[str, Any]]:
    """One fresh client: the pool holds 1 connection, then 32 once a burst has opened them."""
    client = cls(url)
    try:
        await run_mode(client.post, WARMUP, 1)
        sequential = await run_mode(client.post, n, 1)
        await run_mode(client.post, WARMUP, CONCURRENCY)
        return {"sequential": sequential,
                "sequential_idle_pool": await run_mode(client.post, n, 1),
                "concurrent": await run_mode(client.post, n, CONCURRENCY)}
    finally:
        await client.close()


def render(results: dict[str, dict[str, dict[str, Any]]], n: int, rounds: int,
           pinned: bool) -> str:
    lines = [
        "## Upstream HTTP client: " + " vs ".join(results), "",
        f"{n:,} POSTs per client and mode to a canned nginx chat completion, uvloop, pooled "
        f"keep-alive connections; median of {rounds} round(s); "
        + ("client pinned to one core, nginx to the other." if pinned else "no CPU pinning."),
        "",
        "| client | mode | mean (µs) | p50 (µs) | p99 (µs) | req/s | client CPU µs/req |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, modes in results.items():
        for mode, label in MODES:
            m = modes[mode]
            lines.append(f"| {name} | {label} | {m['mean_us']:.0f} | {m['p50_us']:.0f} | "
                         f"{m['p99_us']:.0f} | {m['rps']:,.0f} | {m['cpu_us_per_req']:.0f} |")
    for better, worse in (("aiohttp", "httpx"), ("http1", "aiohttp")):
        a, h = results[better], results[worse]

        def ratio(mode: str, key: str, higher_is_better: bool = False,
                  a: dict[str, dict[str, Any]] = a, h: dict[str, dict[str, Any]] = h) -> str:
            value = (a[mode][key] / h[mode][key] if higher_is_better
                     else h[mode][key] / a[mode][key])
            return f"{value:.1f}x"

        lines += ["", f"{better} vs {worse} (how many times better {better} is): sequential "
                  f"p50 {ratio('sequential', 'p50_us')} (with {CONCURRENCY} idle pooled "
                  f"connections {ratio('sequential_idle_pool', 'p50_us')}), {CONCURRENCY}-"
                  f"concurrent throughput {ratio('concurrent', 'rps', True)}, CPU per request "
                  f"{ratio('sequential', 'cpu_us_per_req')} sequential / "
                  f"{ratio('concurrent', 'cpu_us_per_req')} concurrent."]
    return "\n".join(lines)


def median_of(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    return {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}


def _raise_interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--requests", type=int, default=5000,
                        help="requests per client and mode (default 5000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; medians are reported")
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--out", default=str(BENCH_DIR / "results" / "client_choice.json"))
    args = parser.parse_args()
    if args.requests < 100 or args.rounds < 1:
        parser.error("--requests must be >= 100 and --rounds >= 1")
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_interrupt)

    client_cpus, nginx_cpus = pick_cpus(args.no_pin)
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)
    raw: dict[str, list[dict[str, dict[str, Any]]]] = {cls.name: [] for cls in CLIENTS}
    try:
        with start_nginx(cpus=nginx_cpus) as nginx, \
                asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            url = nginx.base_url + JSON_PATH
            for index in range(args.rounds):
                # Rotate which client goes first, round by round.
                shift = index % len(CLIENTS)
                for cls in CLIENTS[shift:] + CLIENTS[:shift]:
                    print(f"round {index + 1}/{args.rounds}: {cls.name}", file=sys.stderr,
                          flush=True)
                    raw[cls.name].append(runner.run(bench_client(cls, url, args.requests)))
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130

    results = {name: {mode: median_of([r[mode] for r in rounds])
                      for mode, _ in MODES}
               for name, rounds in raw.items()}
    errors = sum(m["errors"] for modes in results.values() for m in modes.values())
    report = render(results, args.requests, args.rounds, client_cpus is not None)
    print(report)
    versions = {p: importlib.metadata.version(p)
                for p in ("aiohttp", "httpx", "httptools", "uvloop")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"versions": versions, "requests": args.requests,
                               "rounds": args.rounds, "concurrency": CONCURRENCY,
                               "pinned": client_cpus is not None, "loadavg": os.getloadavg(),
                               "results": results, "raw": raw, "report_markdown": report},
                              indent=2) + "\n")
    print(f"\nversions: {versions}\nJSON: {out}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
