#!/usr/bin/env python3
"""Streams at scale: many concurrent long SSE streams through one proxy worker.

    python bench/streams.py [--streams 200,500,1000] [--chunks 100] [--interval-ms 50]
                            [--litellm PATH] [--out bench/results/latest-streams.json]

An asyncio upstream (this script, in a child process) answers every chat completion with a
stream of ``--chunks`` OpenAI chunks, one every ``--interval-ms``, each carrying the
monotonic time it was sent, then a usage chunk and ``[DONE]``. A load generator (also a
child process, so its CPU is not the proxy's) opens N streams at once through a target and
reads them to the end. For each target and N: the proxy's CPU per 1,000 SSE events
(``/proc``, the whole process tree), its resident memory per concurrent stream (peak during
the run minus before it, over N), its peak of open file descriptors, and the per-chunk
latency (arrival minus send time) p50 and p99; ``added`` is that minus the same figure
direct to the upstream, in the same run.

Targets: ``direct``; ``spendgate`` (one worker, this checkout); ``floor``
(``bench/floor_proxy.py``: a minimal pass-through on the same server stack); ``litellm``
with ``--litellm PATH`` (a LiteLLM proxy installed in its own venv, e.g.
``litellm[proxy]==1.108.7``): without it, LiteLLM is reported as not measured.
Loopback only; every process started here is stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import (
    AUTH_HEADER,
    BENCH_DIR,
    HOST,
    REPO,
    Service,
    Tree,
    free_port,
    rss_mb,
    settled_cpu_seconds,
    wait_http,
)

PATH = "/v1/chat/completions"
_TS = re.compile(rb'"content":"t(\d+)"')


# --- the upstream and the load generator (child processes) ------------------------------

async def upstream_main(port: int, chunks: int, interval_s: float) -> None:
    import uvloop

    uvloop.install()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?i)content-length:\s*(\d+)", head)
                await reader.readexactly(int(length[1]) if length else 0)
                if b"/healthz" in head.split(b"\r\n", 1)[0]:
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    continue
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                             b"transfer-encoding: chunked\r\n\r\n")
                for _ in range(chunks):
                    event = (b'data: {"id":"c","object":"chat.completion.chunk","created":1,'
                             b'"model":"gpt-4o-mini","choices":[{"index":0,"delta":'
                             b'{"content":"t%d"},"finish_reason":null}]}\n\n'
                             % time.monotonic_ns())
                    writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                    await writer.drain()
                    await asyncio.sleep(interval_s)
                tail = (b'data: {"id":"c","object":"chat.completion.chunk","created":1,'
                        b'"model":"gpt-4o-mini","choices":[],"usage":{"prompt_tokens":10,'
                        b'"completion_tokens":%d,"total_tokens":%d}}\n\ndata: [DONE]\n\n'
                        % (chunks, chunks + 10))
                writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(tail), tail))
                await writer.drain()
                if re.search(rb"(?i)\r\nconnection:\s*close", head):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, HOST, port, backlog=4096)
    await server.serve_forever()


async def load_main(url: str, streams: int, out: str) -> None:
    import uvloop

    uvloop.install()
    host, port = url.split("//", 1)[1].split("/", 1)[0].split(":")
    path = "/" + url.split("//", 1)[1].split("/", 1)[1]
    body = json.dumps({"model": "gpt-4o-mini", "stream": True,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    request = (f"POST {path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n"
               f"authorization: {AUTH_HEADER}\r\nconnection: close\r\n"
               f"content-length: {len(body)}\r\n\r\n").encode() + body
    latencies: list[int] = []
    events = errors = 0
    start = asyncio.Event()

    async def one() -> None:
        nonlocal events, errors
        try:
            reader, writer = await asyncio.open_connection(host, int(port))
        except OSError:
            errors += 1
            return
        await start.wait()
        writer.write(request)
        seen = 0
        try:
            while data := await reader.read(65536):
                now = time.monotonic_ns()
                for match in _TS.finditer(data):
                    latencies.append(now - int(match[1]))
                    seen += 1
        except ConnectionError:
            errors += 1
        writer.close()
        events += seen

    tasks = [asyncio.create_task(one()) for _ in range(streams)]
    await asyncio.sleep(0.5)   # every connection open before the first request
    start.set()
    await asyncio.gather(*tasks)
    latencies.sort()

    def pick(q: float) -> float | None:
        return (latencies[min(int(q * len(latencies)), len(latencies) - 1)] / 1e6
                if latencies else None)

    Path(out).write_text(json.dumps({"events": events, "errors": errors,
                                     "p50_ms": pick(0.5), "p99_ms": pick(0.99)}))


# --- orchestration -----------------------------------------------------------------------

def measure(name: str, url: str, pid: int | None, streams: int, workdir: Path,
            cpus: set[int] | None) -> dict[str, Any]:
    out = workdir / f"{name}-{streams}.json"
    before_cpu = settled_cpu_seconds(pid) if pid else 0.0
    before_rss = rss_mb(pid) if pid else 0.0
    load = Service(f"load-{name}-{streams}", [sys.executable, __file__, "--_load", url,
                   str(streams), str(out)], workdir / f"load-{name}.log", cpus=cpus)
    peak, fds = before_rss, 0
    while load.alive():
        if pid:
            peak = max(peak, rss_mb(pid))
            fds = max(fds, open_fds(pid))
        time.sleep(0.2)
    load.stop()
    result: dict[str, Any] = json.loads(out.read_text())
    if pid:
        used = settled_cpu_seconds(pid) - before_cpu
        result["cpu_ms_per_1000_events"] = used * 1e6 / max(result["events"], 1)
        result["rss_kb_per_stream"] = (peak - before_rss) * 1024 / streams
        result["peak_fds"] = fds
    return result


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] in ("--_upstream", "--_load"):
        if sys.argv[1] == "--_upstream":
            asyncio.run(upstream_main(int(sys.argv[2]), int(sys.argv[3]),
                                      float(sys.argv[4])))
        else:
            asyncio.run(load_main(sys.argv[2], int(sys.argv[3]), sys.argv[4]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", default="200,500,1000")
    parser.add_argument("--chunks", type=int, default=100)
    parser.add_argument("--interval-ms", type=float, default=50)
    parser.add_argument("--litellm", metavar="PATH", help="a LiteLLM proxy executable")
    parser.add_argument("--out", default=str(BENCH_DIR / "results" / "latest-streams.json"))
    args = parser.parse_args()
    counts = [int(n) for n in args.streams.split(",")]
    allowed = sorted(os.sched_getaffinity(0))
    proxy_cpus = {allowed[0]} if len(allowed) > 1 else None
    load_cpus = {allowed[1]} if len(allowed) > 1 else None
    workdir = Path(tempfile.mkdtemp(prefix="spendgate-streams-"))
    services: list[Service] = []
    results: dict[str, dict[str, Any]] = {}
    notes: dict[str, str] = {} if args.litellm else {"litellm": "not measured (no --litellm)"}
    try:
        port = free_port()
        services.append(Service("upstream", [sys.executable, __file__, "--_upstream", str(port),
                                             str(args.chunks), str(args.interval_ms / 1000)],
                                workdir / "upstream.log", cpus=load_cpus))
        wait_http(f"http://{HOST}:{port}/healthz", services[-1], 30)
        upstream = f"http://{HOST}:{port}"
        targets: list[tuple[str, str, list[str] | None, dict[str, str] | None, Path]] = [
            ("direct", upstream + PATH, None, None, workdir)]
        sg_port = free_port()
        config = workdir / "spendgate.yaml"
        config.write_text(json.dumps({"upstreams": {"bench": {
            "url": upstream, "provider": "openai", "timeout_s": 60}}}))
        argv, changes = Tree.detect(REPO).serve_command(
            "--config", str(config), "--port", str(sg_port), "--log-level", "warning")
        targets.append(("spendgate", f"http://{HOST}:{sg_port}/bench{PATH}", argv,
                        {**os.environ, **changes}, workdir))
        fl_port = free_port()
        targets.append(("floor", f"http://{HOST}:{fl_port}{PATH}",
                        [sys.executable, str(BENCH_DIR / "floor_proxy.py"), "--upstream",
                         upstream, "--port", str(fl_port)], None, workdir))
        if args.litellm:
            ll_port = free_port()
            ll_config = workdir / "litellm.yaml"
            ll_config.write_text(json.dumps({"model_list": [{"model_name": "gpt-4o-mini",
                "litellm_params": {"model": "openai/gpt-4o-mini", "api_key": "sk-bench",
                                   "api_base": upstream + "/v1"}}]}))
            targets.append(("litellm", f"http://{HOST}:{ll_port}{PATH}",
                            [args.litellm, "--host", HOST, "--port", str(ll_port), "--config",
                             str(ll_config), "--num_workers", "1"],
                            {**os.environ, "LITELLM_LOG": "ERROR",
                             "LITELLM_MASTER_KEY": AUTH_HEADER.split()[1]}, workdir))
        for name, url, command, env, cwd in targets:
            service = None
            if command is not None:  # one proxy at a time, alone on its core
                service = Service(name, command, workdir / f"{name}.log", cpus=proxy_cpus,
                                  env=env, cwd=cwd)
                services.append(service)
                health = url.rsplit(PATH, 1)[0].removesuffix("/bench") + (
                    "/health/liveliness" if name == "litellm" else "/healthz")
                try:
                    wait_http(health, service, 180)
                except RuntimeError as error:
                    notes[name] = f"failed to run: {str(error).splitlines()[0]}"
                    service.stop()
                    continue
            pid = service.pid if service else None
            results[name] = {}
            measure(name, url, pid, 20, workdir, load_cpus)  # warm-up
            for n in counts:
                print(f"  {name}: {n} streams", file=sys.stderr, flush=True)
                results[name][str(n)] = measure(name, url, pid, n, workdir, load_cpus)
            if service is not None:
                service.stop()
    finally:
        for service in services:
            service.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    report = render(results, counts, args, environment_line(), notes)
    print(report)
    Path(args.out).write_text(json.dumps({"results": results, "notes": notes,
                                          "report_markdown": report,
                                          "chunks": args.chunks,
                                          "interval_ms": args.interval_ms}, indent=2) + "\n")
    return 0


def environment_line() -> str:
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} · {cpu} · "
            f"{os.cpu_count()} cores · load {os.getloadavg()[0]:.2f}")


def render(results: dict[str, dict[str, Any]], counts: list[int], args: Any,
           machine: str, notes: dict[str, str]) -> str:
    lines = ["## Streams at scale", "", machine,
             f"{args.chunks} chunks per stream, one every {args.interval_ms:g} ms; proxy and "
             "upstream + load generator on separate cores (when there are two).", "",
             "| target | streams | events | errors | chunk latency p50 / p99 (ms) | added p50 / "
             "p99 (ms) | proxy CPU per 1,000 events (ms) | RSS per stream (KiB) | peak fds |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in ("direct", "spendgate", "floor", "litellm"):
        for n in counts:
            m = results.get(name, {}).get(str(n))
            if m is None:
                if name in notes:
                    lines.append(f"| {name} | {n} | {notes[name]} | | | | | | |")
                continue
            base = results["direct"][str(n)]
            added = ("–" if name == "direct" or m["p50_ms"] is None or base["p50_ms"] is None
                     else f"{m['p50_ms'] - base['p50_ms']:.2f} / "
                          f"{m['p99_ms'] - base['p99_ms']:.2f}")
            cpu = m.get("cpu_ms_per_1000_events")
            rss = m.get("rss_kb_per_stream")
            lines.append(
                f"| {name} | {n} | {m['events']:,} | {m['errors']} | "
                f"{m['p50_ms'] or 0:.2f} / {m['p99_ms'] or 0:.2f} | {added} | "
                f"{'–' if cpu is None else f'{cpu:.0f}'} | "
                f"{'–' if rss is None else f'{rss:.1f}'} | {m.get('peak_fds', '–')} |")
    sg = [results.get("spendgate", {}).get(str(n), {}).get("cpu_ms_per_1000_events")
          for n in counts]
    fl = [results.get("floor", {}).get(str(n), {}).get("cpu_ms_per_1000_events")
          for n in counts]
    ratios = [a / b for a, b in zip(sg, fl, strict=True) if a and b]
    if ratios:
        lines += ["", f"spendgate / floor CPU per event: "
                  f"{', '.join(f'{r:.2f}x' for r in ratios)} "
                  f"(median {statistics.median(ratios):.2f}x; target <= 1.5x)"]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
