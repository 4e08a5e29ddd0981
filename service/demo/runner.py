"""``spendgate demo``: live spend and latency in a terminal, with no API key and no network.

It starts, all on loopback:

1. the simulated upstream (``demo.simulator.server``) in this process's event loop;
2. the real proxy in front of it: ``spendgate serve`` in a child process (the same code path
   as in production, with its own core for the hot path), configured with upstreams
   ``openai`` and ``anthropic`` (the simulator) and ``local`` (a self-hosted llama with an
   upstream default price), and a few budgets, its ledger in a temporary directory;
3. the traffic generator (``demo.traffic``) sending calls through the proxy with the
   official SDKs.

It prints the proxy and metrics URLs and what to try, then a summary computed from the
proxy's ``/metrics`` every ``refresh_s`` (redrawn in place on a terminal, one plain line per
refresh otherwise), until Ctrl-C (or SIGTERM) or ``duration``. Then it stops sending, gives
calls in flight ``DRAIN_GRACE_S`` and hangs up on the rest, prints the final summary, and
stops the simulator, the proxy (SIGTERM: its graceful shutdown) and the temporary directory,
in that order. A second Ctrl-C skips the wait.

``--traffic-only`` sends the traffic (and shows the summary) to a proxy that is already
running at ``--proxy-url``: the docker-compose demo profile runs it beside ``spendgate
simulate`` and a configured proxy.

The proxy child runs in its own session so a terminal's Ctrl-C reaches only the demo, which
stops it after the last scrape; on Linux it also dies with the demo (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.util
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import yaml

import spendgate
from spendgate.config import parse_config
from spendgate.demo import summary as demo_summary
from spendgate.demo.simulator.server import Simulator
from spendgate.demo.traffic import LOCAL_MODEL, Traffic
from spendgate.errors import ConfigError

HOST = "127.0.0.1"
DRAIN_GRACE_S = 2.0
LOCAL_PRICE = {"input_per_mtok": "0.10", "output_per_mtok": "0.40"}
BUDGETS: list[dict[str, Any]] = [
    {"name": "search-daily", "project": "search", "limit_usd": "1", "window": "day",
     "action": "alert", "alert_at": [0.5, 0.8, 1.0]},
    {"name": "support-monthly", "project": "support", "limit_usd": "20", "window": "month",
     "action": "alert"},
    {"name": "experiments-cap", "project": "experiments", "limit_usd": "0.05",
     "window": "total", "action": "block"},
    {"name": "all-monthly", "limit_usd": "100", "window": "month", "action": "alert"},
]
# The child: ``spendgate serve`` exactly, after asking Linux to end it if the demo dies. It
# loads the very spendgate the demo runs (argv 1 and 2: the package and its exporters'
# directories), installed or a source checkout alike.
_CHILD = ("import importlib.util, sys\n"
          "if sys.platform == 'linux':\n"
          "    import ctypes, signal\n"
          "    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG\n"
          "for name, where in (('spendgate', sys.argv[1]), ('spendgate.exporters', sys.argv[2])):\n"
          "    spec = importlib.util.spec_from_file_location(\n"
          "        name, where + '/__init__.py', submodule_search_locations=[where])\n"
          "    sys.modules[name] = module = importlib.util.module_from_spec(spec)\n"
          "    spec.loader.exec_module(module)\n"
          "from spendgate.cli import main\n"
          "raise SystemExit(main(sys.argv[3:]))\n")


def _package_dir(name: str) -> str:
    """Where package ``name`` is loaded from, without importing it."""
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.submodule_search_locations, name
    return str(Path(next(iter(spec.submodule_search_locations))).resolve())


@dataclass(frozen=True)
class DemoOptions:
    port: int = 4000
    duration: float | None = None
    rate: float = 5.0
    seed: int | None = None
    error_rate: float = 0.03
    traffic_only: bool = False
    proxy_url: str | None = None
    refresh_s: float = 2.0


class DemoError(Exception):
    """The demo cannot run (port taken, proxy failed); the message says why."""


def demo_config(simulator_url: str, ledger: Path) -> dict[str, Any]:
    """The proxy's config: three upstreams on the simulator, budgets, a private ledger."""
    config: dict[str, Any] = {
        "server": {"host": HOST},
        "upstreams": {
            "openai": {"url": simulator_url, "provider": "openai", "timeout_s": 120},
            "anthropic": {"url": simulator_url, "provider": "anthropic", "timeout_s": 120},
            "local": {"url": simulator_url, "provider": "openai", "provider_name": "ollama",
                      "timeout_s": 120, "pricing": LOCAL_PRICE},
        },
    }
    config["store"] = {"url": f"sqlite:///{ledger}"}
    config["budgets"] = BUDGETS
    config["attribution"] = {"tag_keys": ["feature"]}
    try:
        parse_config(config)  # fail here, clearly, rather than in the child
    except ConfigError as error:
        raise DemoError("the demo's proxy config is invalid: " + "; ".join(error.problems)
                        ) from None
    return config


def choose_port(port: int) -> int:
    """``port`` if it is free on loopback (0: any free port); raises ``DemoError``."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind((HOST, port))
        except OSError as error:
            raise DemoError(f"port {port} on {HOST} is not available ({error.strerror}): "
                            "choose another with --port, or --port 0 for any free one"
                            ) from None
        return int(sock.getsockname()[1])


class ProxyChild:
    """``spendgate serve`` in a child process, in its own session; logs to a file."""

    def __init__(self, config_path: Path, port: int, log_path: Path) -> None:
        self.config_path = config_path
        self.port = port
        self.log_path = log_path
        self.url = f"http://{HOST}:{port}"
        self.proc: asyncio.subprocess.Process | None = None

    async def spawn(self) -> None:
        package = str(Path(spendgate.__file__).resolve().parent)
        sinks = _package_dir("spendgate.exporters")
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _CHILD, package, sinks,
                "serve", "--config", str(self.config_path),
                "--host", HOST, "--port", str(self.port), "--log-level", "warning",
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
                cwd=self.config_path.parent, start_new_session=True)

    async def wait_ready(self, session: aiohttp.ClientSession, timeout_s: float = 30.0) -> None:
        assert self.proc is not None, "spawn first"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.returncode is not None:
                raise DemoError(f"the proxy exited at startup:\n{self.log_tail()}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(self.url + "/readyz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
        raise DemoError(f"the proxy was not ready after {timeout_s:.0f}s:\n{self.log_tail()}")

    @property
    def exited(self) -> bool:
        return self.proc is not None and self.proc.returncode is not None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    async def stop(self, timeout_s: float = 15.0) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)  # uvicorn: drain, then the lifespan shutdown
        try:
            await asyncio.wait_for(self.proc.wait(), timeout_s)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


class Screen:
    """Where the summary goes: redrawn in place on a terminal, plain lines otherwise."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.live = out.isatty()
        self._drawn = 0

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def refresh(self, lines: list[str], plain: str) -> None:
        if not self.live:
            self.say(plain)
            return
        erase = f"\x1b[{self._drawn}F\x1b[J" if self._drawn else ""
        self.out.write(erase + "\n".join(lines) + "\n")
        self.out.flush()
        self._drawn = len(lines)

    def clear(self) -> None:
        """Erase the live block (the final summary replaces it)."""
        if self.live and self._drawn:
            self.out.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0


def _banner(proxy_url: str, simulator_url: str | None, upstreams: frozenset[str],
            options: DemoOptions) -> list[str]:
    stop = ("Ctrl-C to stop." if options.duration is None
            else f"Running for {options.duration:g}s (Ctrl-C stops sooner).")
    routes = ", ".join(f"/{name}" for name in sorted(upstreams))
    if simulator_url is None:  # --traffic-only: someone else runs the proxy and upstreams
        return [f"  console    {proxy_url}/ui   (spend, budgets and calls, live)",
                f"spendgate demo: traffic from 5 projects at ~{options.rate:g} calls/s",
                f"  proxy      {proxy_url}   (upstreams {routes})",
                f"  metrics    {proxy_url}/metrics", stop, ""]
    budgets = ", ".join(
        f"{b['name']} ${b['limit_usd']} "
        f"{'total' if b['window'] == 'total' else 'a ' + b['window']} ({b['action']})"
        for b in BUDGETS)
    return [
        f"  console    {proxy_url}/ui   (spend, budgets and calls, live; in your browser)",
        "",
        "spendgate demo: a simulated OpenAI + Anthropic provider (no key, no network), the "
        "spendgate proxy in front of it,",
        f"and traffic from 5 projects at ~{options.rate:g} calls/s. Latencies are simulated "
        "(the simulator's pacing), not a real provider's.",
        "",
        f"  proxy      {proxy_url}   (upstreams {routes})",
        f"  metrics    {proxy_url}/metrics",
        f"  simulator  {simulator_url}   (local: {LOCAL_MODEL}, self-hosted, reports no usage: "
        "spendgate estimates it)",
        f"  budgets    {budgets}",
        "",
        "Try it:",
        f"  curl -s {proxy_url}/openai/v1/chat/completions -H 'content-type: application/json' "
        "-H 'x-spendgate-project: me' \\",
        "    -d '{\"model\": \"gpt-4o-mini\", \"messages\": [{\"role\": \"user\", "
        "\"content\": \"Hello\"}]}'",
        f"  OPENAI_BASE_URL={proxy_url}/openai/v1 OPENAI_API_KEY=sk-demo python -c \"from openai "
        "import OpenAI; print(OpenAI().chat.completions.create(model='gpt-4o-mini', "
        "messages=[{'role': 'user', 'content': 'Hi'}]).usage)\"",
        f"  curl -s {proxy_url}/metrics | grep spendgate_cost_usd_total",
        f"  spendgate spend --url {proxy_url} --by project,model      "
        f"spendgate budgets --url {proxy_url}",
        "  Grafana dashboards on the same kind of traffic: docker compose --profile demo up, "
        "then http://localhost:3000",
        "",
        stop,
        "",
    ]


def _client_line(traffic: Traffic) -> str:
    s = traffic.stats
    parts = [f"{s['sent']:,} sent", f"{s['ok']:,} ok"]
    for key, label in (("rate_limited", "rate limited"), ("budget_blocked", "blocked by budget"),
                       ("server_error", "server errors"), ("connection", "cut off"),
                       ("no_upstream", "to a missing upstream"), ("other", "other errors"),
                       ("abandoned", "abandoned at stop"),
                       ("dropped", "dropped (too many in flight)")):
        if s[key]:
            parts.append(f"{s[key]:,} {label}")
    return f"client ({traffic.sender.kind}): " + ", ".join(parts)


async def _scrape(session: aiohttp.ClientSession, url: str) -> demo_summary.Snapshot | None:
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=10)) as response:
            if response.status != 200:
                return None
            text = await response.text()
    except (aiohttp.ClientError, TimeoutError):
        return None
    return await asyncio.to_thread(demo_summary.Snapshot.parse, text)


async def run_demo(options: DemoOptions, out: TextIO) -> int:
    """The whole demo; returns the exit code. Installs SIGINT/SIGTERM handlers meanwhile."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    main = asyncio.current_task()

    def on_signal() -> None:
        if stop.is_set() and main is not None:
            main.cancel()   # a second Ctrl-C: skip the grace period
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal)
    screen = Screen(out)
    try:
        async with contextlib.AsyncExitStack() as stack:
            session = await stack.enter_async_context(aiohttp.ClientSession())
            proxy_url, simulator, child = await _start(stack, options)
            simulator_url = simulator.url if simulator is not None else None
            # The SDKs load and warm up while the proxy child starts (another process).
            seed = None if options.seed is None else options.seed + 1
            traffic = Traffic(proxy_url, options.rate, seed)
            stack.push_async_callback(traffic.close)
            await traffic.warm_up()
            if child is not None:
                await child.wait_ready(session)
            else:
                await _wait_healthy(session, proxy_url, 60.0)
            for text in _banner(proxy_url, simulator_url, traffic.upstreams, options):
                screen.say(text)
            sender = asyncio.create_task(traffic.run(stop))
            started = time.monotonic()
            if options.traffic_only and not screen.live:
                # A container's log, for hours: a line every 10 s is plenty.
                options = dataclasses.replace(options, refresh_s=max(options.refresh_s, 10.0))
            snapshot = await _watch(screen, session, proxy_url, traffic, options, stop,
                                    started, lambda: child is not None and child.exited)
            stop.set()
            await sender
            await traffic.drain(DRAIN_GRACE_S)
            await asyncio.sleep(0.3)  # the proxy records hang-ups once it notices them
            snapshot = await _scrape(session, proxy_url + "/metrics") or snapshot
            if child is not None and child.exited:
                print(f"spendgate demo: the proxy stopped unexpectedly:\n{child.log_tail()}",
                      file=sys.stderr, flush=True)
                return 1
            screen.clear()
            screen.say(f"\nspendgate demo: stopped after {time.monotonic() - started:.1f}s.")
            for text in demo_summary.table(snapshot or demo_summary.Snapshot()):
                screen.say(text)
            screen.say(_client_line(traffic))
            if simulator is not None:
                # Hang up on calls the proxy still forwards (callers already gone), so the
                # proxy's graceful shutdown does not wait for their answers.
                await simulator.stop()
        return 0
    except DemoError as error:
        print(f"spendgate demo: {error}", file=sys.stderr, flush=True)
        return 1
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


async def _start(stack: contextlib.AsyncExitStack,
                 options: DemoOptions) -> tuple[str, Simulator | None, ProxyChild | None]:
    """Start the simulator and spawn the proxy (not yet ready), or name the proxy to drive;
    cleanups go on ``stack``."""
    if options.traffic_only:
        return (options.proxy_url or f"http://{HOST}:{options.port}").rstrip("/"), None, None
    port = choose_port(options.port)
    simulator = Simulator(seed=options.seed, error_rate=options.error_rate)
    simulator_url = await simulator.start(HOST, 0)
    stack.push_async_callback(simulator.stop)
    workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="spendgate-demo-")))
    config_path = workdir / "spendgate-demo.yaml"
    config_path.write_text(yaml.safe_dump(demo_config(simulator_url, workdir / "ledger.sqlite3"),
                                          sort_keys=False))
    child = ProxyChild(config_path, port, workdir / "proxy.log")
    stack.push_async_callback(child.stop)
    await child.spawn()
    await simulator.warm_up()  # while the child starts
    return child.url, simulator, child


async def _wait_healthy(session: aiohttp.ClientSession, url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(url + "/healthz") as response:
                if response.status == 200:
                    return
        if time.monotonic() > deadline:
            raise DemoError(f"no spendgate answering at {url}/healthz")
        await asyncio.sleep(0.5)


async def _watch(screen: Screen, session: aiohttp.ClientSession, proxy_url: str,
                 traffic: Traffic, options: DemoOptions, stop: asyncio.Event, started: float,
                 proxy_died: Callable[[], bool]) -> demo_summary.Snapshot | None:
    """Refresh the summary until stopped, out of time, or the proxy died; the last one."""
    snapshot = None
    previous, previous_at = 0.0, started
    deadline = None if options.duration is None else started + options.duration
    while not stop.is_set() and not proxy_died():
        wait = options.refresh_s
        if deadline is not None:
            wait = min(wait, deadline - time.monotonic())
        if wait > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
        if stop.is_set() or (deadline is not None and time.monotonic() >= deadline):
            break
        latest = await _scrape(session, proxy_url + "/metrics")
        if latest is None:
            continue
        snapshot, now = latest, time.monotonic()
        per_second = (latest.total.requests - previous) / max(now - previous_at, 1e-9)
        previous, previous_at = latest.total.requests, now
        elapsed = now - started
        head = (f"live, since start: {elapsed:5.0f}s elapsed, {per_second:.1f} calls/s, "
                f"{traffic.in_flight} in flight")
        screen.refresh([head, *demo_summary.table(latest), _client_line(traffic)],
                       demo_summary.line(latest, elapsed, per_second))
    return snapshot


def main(options: DemoOptions) -> int:
    """Run the demo in a fresh event loop (uvloop not needed: the proxy runs in its child)."""
    try:
        return asyncio.run(run_demo(options, sys.stdout))
    except (KeyboardInterrupt, asyncio.CancelledError):
        return 130
