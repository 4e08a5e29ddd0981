#!/usr/bin/env python3
"""Proxy overhead benchmark: spendgate (and LiteLLM, when available) in front of nginx.

    python bench/run.py [--duration 10] [--runs 1] [--out bench/results/latest.json]

An nginx on a free loopback port plays the LLM provider: it answers
``POST /v1/chat/completions`` with a canned OpenAI chat completion (with ``usage``) and
``POST /sse/v1/chat/completions`` with a canned short SSE stream, in a few microseconds.
``wrk`` then POSTs a realistic chat request, for each target:

* ``direct``   -- wrk -> nginx (the baseline),
* ``spendgate``-- wrk -> spendgate (one worker) -> nginx,
* ``litellm``  -- wrk -> LiteLLM proxy (one worker) -> nginx, if LiteLLM can be run;
* ``floor``    -- with ``--floor``: wrk -> ``bench/floor_proxy.py`` (a minimal Python proxy on
  spendgate's server stack) -> nginx, the floor under spendgate's figures;
* ``spendgate@REV`` -- with ``--baseline-src DIR``: another spendgate source tree (e.g. a
  ``git archive`` of an earlier commit), measured in the same run, interleaved round by round
  with ``spendgate`` so that drift on a noisy machine hits both alike; the report adds their
  ratios.

measuring latency at concurrency 1 (p50/p99 from wrk's histogram, in microseconds, via a Lua
``done()`` callback) and throughput at concurrency 32 (requests/s). Added latency is target
minus direct. The proxy's CPU time per request comes from /proc/PID/stat (whole process
tree: utime + stime). With 2+ cores the proxy is pinned to one core and nginx + wrk to
another, so the proxy's single worker has a core to itself.

A source tree (``--src``, ``--baseline-src``) may have either layout, told apart by its
pyproject.toml: one whose ``tool.setuptools.package-dir`` maps ``spendgate`` (``service/``
is the package ``spendgate``) runs through this checkout's ``scripts/sourcetree.py``
(``command(DIR, "serve", ...)``); an older one without that mapping runs as
``python -m service serve`` with ``PYTHONPATH=DIR``.

Standard library only (plus the ``nginx`` and ``wrk`` binaries; the proxies run in their own
processes). Every process started here
is stopped on exit, on Ctrl-C and on SIGTERM. Only loopback addresses are used.
``start_nginx`` is also used by ``bench/client_choice.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import importlib.util
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
SOURCETREE = REPO / "scripts" / "sourcetree.py"
HOST = "127.0.0.1"

# Targets (README "Performance"): spendgate vs the direct baseline and vs LiteLLM.
TARGET_ADDED_P50_MS = 0.5
TARGET_RPS_C32 = 3000.0
TARGET_VS_LITELLM = 10.0

WARMUP_S = 2
# At c=32 a proxy should keep its core busy; below this share something else had the core.
CONTENDED_SHARE = 0.9
LATENCY_CONNECTIONS = 1
THROUGHPUT_CONNECTIONS = 32

# --- canned upstream --------------------------------------------------------------------

CHAT_REQUEST = {"model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": "Say hi"}],
                "max_tokens": 16}
STREAM_REQUEST = {**CHAT_REQUEST, "stream": True}
AUTH_HEADER = "Bearer sk-bench-0000000000000000"

CHAT_RESPONSE = {
    "id": "chatcmpl-bench0000000000000000000001", "object": "chat.completion",
    "created": 1753706500, "model": "gpt-4o-mini-2024-07-18",
    "choices": [{"index": 0,
                 "message": {"role": "assistant", "content": "Hi there! How can I help you today?",
                             "refusal": None, "annotations": []},
                 "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 10, "total_tokens": 19,
              "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
              "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                            "accepted_prediction_tokens": 0,
                                            "rejected_prediction_tokens": 0}},
    "service_tier": "default", "system_fingerprint": "fp_bench0000",
}


def _chunk(delta: dict[str, Any] | None, finish: str | None = None,
           usage: dict[str, int] | None = None) -> str:
    body: dict[str, Any] = {
        "id": "chatcmpl-bench0000000000000000000002", "object": "chat.completion.chunk",
        "created": 1753706500, "model": "gpt-4o-mini-2024-07-18",
        "system_fingerprint": "fp_bench0000",
        "choices": [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None,
                                              "finish_reason": finish}],
    }
    if usage is not None:
        body["usage"] = usage
    return "data: " + json.dumps(body, separators=(",", ":")) + "\n\n"


STREAM_RESPONSE = "".join([
    _chunk({"role": "assistant", "content": "", "refusal": None}),
    _chunk({"content": "Hi"}),
    _chunk({"content": " there!"}),
    _chunk({}, "stop"),
    _chunk(None, usage={"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}),
    "data: [DONE]\n\n",
])

JSON_PATH = "/v1/chat/completions"
SSE_PATH = "/sse/v1/chat/completions"


def _nginx_string(text: str) -> str:
    """``text`` as a single-quoted nginx string (``$`` would start a variable: refused)."""
    if "$" in text or "'" in text or "\\" in text:
        raise ValueError("canned body may not contain $, ' or \\")
    return "'" + text.replace("\n", "\\n") + "'"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


# --- processes --------------------------------------------------------------------------


def _proc_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (via /proc/*/task/*/children)."""
    seen, todo = [], [pid]
    while todo:
        current = todo.pop()
        seen.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            with contextlib.suppress(OSError):
                todo.extend(int(c) for c in (task / "children").read_text().split())
    return seen


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process tree, all threads, in seconds."""
    ticks = 0
    for member in _proc_tree(pid):
        try:
            stat = Path(f"/proc/{member}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        ticks += int(fields[11]) + int(fields[12])   # utime, stime (fields 14 and 15)
    return ticks / os.sysconf("SC_CLK_TCK")


def settled_cpu_seconds(pid: int, limit_s: float = 5.0) -> float:
    """CPU time once the process has gone idle (work queued behind responses included)."""
    deadline = time.monotonic() + limit_s
    last = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = cpu_seconds(pid)
        if now - last < 0.005:
            return now
        last = now
    return last


class Service:
    """A child process in its own session, pinned if asked, output to a log file."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path,
                 cpus: set[int] | None = None, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.cpus = cpus
        self._log = open(log_path, "wb")  # noqa: SIM115 -- closed in stop()
        self._stopped = False

        def pin() -> None:
            if cpus:
                os.sched_setaffinity(0, cpus)

        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                     start_new_session=True, preexec_fn=pin)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        self._log.flush()
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(errors="replace").splitlines()
            return "\n".join(text[-lines:])
        return ""

    def stop(self, grace_s: float = 8.0) -> None:
        """SIGTERM the child's process group (its own session), then SIGKILL if it lingers."""
        if self._stopped:
            return
        self._stopped = True
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        else:
            # The leader is gone; reap anything it left in its group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self._log.close()


def wait_http(url: str, service: Service, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not service.alive():
            raise RuntimeError(f"{service.name} exited (code {service.proc.returncode}) "
                               f"before {url} answered:\n{service.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{service.name}: {url} did not answer within {timeout_s:.0f} s:\n"
                       f"{service.log_tail()}")


def post(url: str, body: dict[str, Any], timeout_s: float = 30) -> tuple[int, bytes]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", "Authorization": AUTH_HEADER})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@dataclass
class Nginx:
    port: int
    service: Service
    workdir: Path

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def stop(self) -> None:
        self.service.stop()


NGINX_CONF = """\
{user}worker_processes 1;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    server_tokens off;
    keepalive_timeout 300s;
    keepalive_requests 10000000;
    client_body_buffer_size 64k;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen {host}:{port} backlog=4096;
        location = {json_path} {{
            default_type application/json;
            return 200 {json_body};
        }}
        location = {sse_path} {{
            default_type text/event-stream;
            add_header Cache-Control no-cache;
            return 200 {sse_body};
        }}
        # An OTLP/HTTP sink for --tracing: an empty body is a valid Export*ServiceResponse.
        location ~ ^/v1/(traces|metrics)$ {{
            default_type application/x-protobuf;
            return 200 "";
        }}
        location / {{
            return 404;
        }}
    }}
}}
"""


def find_nginx(name: str = "nginx") -> str:
    binary = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if binary is None:
        raise RuntimeError("nginx not found (Debian: apt-get install nginx-light)")
    return binary


@contextlib.contextmanager
def start_nginx(cpus: set[int] | None = None, nginx_bin: str = "nginx") -> Iterator[Nginx]:
    """Run the canned-provider nginx (one worker) on a free loopback port; stop it on exit."""
    binary = find_nginx(nginx_bin)
    workdir = Path(tempfile.mkdtemp(prefix="spendgate-bench-nginx-"))
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(NGINX_CONF.format(
        user="user root;\n" if os.geteuid() == 0 else "", tmp=workdir, host=HOST, port=port,
        json_path=JSON_PATH, json_body=_nginx_string(json.dumps(CHAT_RESPONSE,
                                                                separators=(",", ":"))),
        sse_path=SSE_PATH, sse_body=_nginx_string(STREAM_RESPONSE)))
    argv = [binary, "-e", "stderr", "-p", str(workdir), "-c", str(conf),
            "-g", f"daemon off; pid {workdir}/nginx.pid; error_log stderr;"]
    service = Service("nginx", argv, workdir / "nginx.log", cpus=cpus)
    nginx = Nginx(port, service, workdir)
    try:
        _wait_post(nginx.base_url + JSON_PATH, service, 10)
        yield nginx
    finally:
        nginx.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _wait_post(url: str, service: Service, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not service.alive():
            raise RuntimeError(f"{service.name} exited:\n{service.log_tail()}")
        with contextlib.suppress(urllib.error.URLError, OSError):
            if post(url, CHAT_REQUEST, timeout_s=1)[0] == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{service.name}: {url} did not answer:\n{service.log_tail()}")


# --- spendgate source trees -------------------------------------------------------------

_sourcetree_module: ModuleType | None = None


def load_sourcetree() -> ModuleType:
    """This checkout's ``scripts/sourcetree.py``, loaded by path (it is no package)."""
    global _sourcetree_module
    if _sourcetree_module is None:
        spec = importlib.util.spec_from_file_location("sourcetree", SOURCETREE)
        if spec is None or spec.loader is None:
            raise RuntimeError(f"cannot load {SOURCETREE}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _sourcetree_module = module
    return _sourcetree_module


LAYOUT_PACKAGE_DIR = "spendgate"   # pyproject maps spendgate -> service/: via sourcetree.py
LAYOUT_SERVICE = "service"         # older: top-level package service, python -m service


@dataclass(frozen=True)
class Tree:
    """A spendgate source tree and the layout it is run by."""

    root: Path
    layout: str

    @classmethod
    def detect(cls, root: Path) -> Tree:
        """The layout from the tree's pyproject.toml; ``ValueError`` if it is neither."""
        root = root.resolve()
        try:
            project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise ValueError(f"{root}: no readable pyproject.toml ({error})") from None
        mapping = project.get("tool", {}).get("setuptools", {}).get("package-dir", {})
        if "spendgate" in mapping:
            if not (root / mapping["spendgate"] / "cli.py").exists():
                raise ValueError(f"{root}: pyproject maps spendgate to "
                                 f"{mapping['spendgate']!r}, which has no cli.py")
            return cls(root, LAYOUT_PACKAGE_DIR)
        if (root / "service" / "__main__.py").exists():
            return cls(root, LAYOUT_SERVICE)
        raise ValueError(f"{root}: neither a spendgate package-dir mapping in pyproject.toml "
                         "nor service/__main__.py")

    def serve_command(self, *args: str) -> tuple[list[str], dict[str, str]]:
        """argv running ``spendgate serve ARGS`` from this tree, and environment changes."""
        if self.layout == LAYOUT_PACKAGE_DIR:
            # Not ``python -m service``: its ``from spendgate.cli import main`` would import
            # whatever spendgate is installed, not this tree.
            return load_sourcetree().command(self.root, "serve", *args), {}
        path = os.pathsep.join(p for p in (str(self.root), os.environ.get("PYTHONPATH", ""))
                               if p)
        return [sys.executable, "-m", "service", "serve", *args], {"PYTHONPATH": path}

    def revision(self) -> str:
        """Short git revision (``+dirty`` when service/ or exporters/ has changes), or ''."""
        if not (self.root / ".git").exists():
            return ""
        rev = _cmd_version(["git", "-C", str(self.root), "rev-parse", "--short", "HEAD"])
        dirty = _cmd_version(["git", "-C", str(self.root), "status", "--porcelain", "--",
                              "service", "exporters"])
        return (rev + ("+dirty" if dirty else "")) if rev else ""


# --- proxies under test -----------------------------------------------------------------


@dataclass
class Target:
    name: str
    json_url: str
    stream_url: str
    stream_body: dict[str, Any]
    json_body: dict[str, Any] = field(default_factory=lambda: dict(CHAT_REQUEST))
    service: Service | None = None    # None: the baseline (nginx itself)
    rss_start_mb: float | None = None  # resident memory once healthy

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()


def start_spendgate(nginx: Nginx, workdir: Path, cpus: set[int] | None,
                    src: Path | Tree = REPO, tracing: bool = False,
                    name: str = "spendgate", budget: bool = False, workers: int = 1) -> Target:
    """``budget``: with one block budget covering every call (its store and journal in
    ``workdir``), so each call is reserved and settled. ``workers``: ``serve --workers``."""
    tree = src if isinstance(src, Tree) else Tree.detect(src)
    port = free_port()
    config = workdir / f"{name}.yaml"
    settings: dict[str, Any] = {"upstreams": {
        "bench": {"url": nginx.base_url, "provider": "openai", "timeout_s": 30},
        "bench-sse": {"url": nginx.base_url + "/sse", "provider": "openai", "timeout_s": 30},
    }}
    if budget:
        data = workdir / f"{name}-data"
        settings["budgets"] = [{"name": "bench", "limit_usd": 1_000_000_000, "window": "total",
                                "action": "block"}]
        settings["store"] = {"url": f"sqlite:///{data / 'ledger.sqlite3'}",
                             "journal": str(data / "journal.log")}
    if workers > 1:
        settings["server"] = {"workers": workers}
    config.write_text(json.dumps(settings, indent=2))  # JSON is YAML; no PyYAML needed here
    argv, changes = tree.serve_command("--config", str(config), "--port", str(port),
                                       "--log-level", "warning")
    env = {**os.environ, **changes}
    if tracing:  # every call traced and exported (OTLP/HTTP) to nginx's sink; metrics scraped
        env.update(OTEL_EXPORTER_OTLP_ENDPOINT=nginx.base_url, OTEL_METRICS_EXPORTER="none")
    service = Service(name, argv, workdir / f"{name}.log", cpus=cpus, env=env,
                      cwd=tree.root)
    target = Target(name, f"http://{HOST}:{port}/bench{JSON_PATH}",
                    f"http://{HOST}:{port}/bench-sse{JSON_PATH}", dict(STREAM_REQUEST),
                    service=service)
    try:
        wait_http(f"http://{HOST}:{port}/healthz", service, 60)
    except BaseException:
        service.stop()
        raise
    target.rss_start_mb = rss_mb(service.pid)
    return target


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and its children (VmRSS), in MiB."""
    total = 0
    for each in _proc_tree(pid):
        with contextlib.suppress(OSError, StopIteration):
            status = Path(f"/proc/{each}/status").read_text()
            total += int(next(line.split()[1] for line in status.splitlines()
                              if line.startswith("VmRSS:")))
    return total / 1024


def start_floor(nginx: Nginx, workdir: Path, cpus: set[int] | None) -> Target:
    port = free_port()
    argv = [sys.executable, str(BENCH_DIR / "floor_proxy.py"), "--upstream", nginx.base_url,
            "--port", str(port)]
    service = Service("floor", argv, workdir / "floor.log", cpus=cpus)
    target = Target("floor", f"http://{HOST}:{port}{JSON_PATH}",
                    f"http://{HOST}:{port}{SSE_PATH}", dict(STREAM_REQUEST), service=service)
    try:
        wait_http(f"http://{HOST}:{port}/healthz", service, 30)
    except BaseException:
        service.stop()
        raise
    return target


def find_litellm(explicit: str | None) -> list[str] | None:
    """The command that runs LiteLLM's proxy, or None."""
    if explicit:
        return [explicit]
    if importlib.util.find_spec("litellm") is None:
        return None
    beside = Path(sys.executable).parent / "litellm"
    if beside.exists():
        return [str(beside)]
    return [sys.executable, "-c", "import sys; from litellm import run_server; "
            "sys.argv[0] = 'litellm'; run_server()"]


def start_litellm(command: list[str], nginx: Nginx, workdir: Path,
                  cpus: set[int] | None, timeout_s: float) -> Target:
    port = free_port()
    model = {"model": "openai/gpt-4o-mini", "api_key": "sk-bench"}
    config = workdir / "litellm.yaml"
    config.write_text(json.dumps({"model_list": [
        {"model_name": "gpt-4o-mini",
         "litellm_params": {**model, "api_base": nginx.base_url + "/v1"}},
        {"model_name": "gpt-4o-mini-sse",
         "litellm_params": {**model, "api_base": nginx.base_url + "/sse/v1"}},
    ]}, indent=2))
    env = {**os.environ, "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False"}
    for variable in ("DATABASE_URL", "REDIS_HOST", "REDIS_URL"):
        env.pop(variable, None)
    # LiteLLM (1.108) refuses to start without a master key: the key wrk sends is the one.
    env["LITELLM_MASTER_KEY"] = AUTH_HEADER.split()[1]
    argv = [*command, "--host", HOST, "--port", str(port), "--config", str(config),
            "--num_workers", "1"]
    service = Service("litellm", argv, workdir / "litellm.log", cpus=cpus, env=env,
                      cwd=workdir)
    target = Target("litellm", f"http://{HOST}:{port}{JSON_PATH}",
                    f"http://{HOST}:{port}{JSON_PATH}",
                    {**STREAM_REQUEST, "model": "gpt-4o-mini-sse"}, service=service)
    try:
        wait_http(f"http://{HOST}:{port}/health/liveliness", service, timeout_s)
    except BaseException:
        service.stop()
        raise
    return target


def check_target(target: Target) -> None:
    """One real request of each kind, so a misrouted target fails loudly, not fast."""
    status, body = post(target.json_url, target.json_body)
    if status != 200 or b'"usage"' not in body:
        raise RuntimeError(f"{target.name}: POST {target.json_url} gave {status}: "
                           f"{body[:300]!r}")
    status, body = post(target.stream_url, target.stream_body)
    if status != 200 or b"data: [DONE]" not in body:
        raise RuntimeError(f"{target.name}: stream POST {target.stream_url} gave {status}: "
                           f"{body[:300]!r}")


# --- wrk --------------------------------------------------------------------------------

WRK_LUA = """\
wrk.method = "POST"
wrk.body = [==[{body}]==]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "{auth}"

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT {{\\"requests\\":%d,\\"duration_us\\":%d,\\"bytes\\":%d," ..
    "\\"err_connect\\":%d,\\"err_read\\":%d,\\"err_write\\":%d,\\"err_status\\":%d," ..
    "\\"err_timeout\\":%d,\\"mean_us\\":%.2f,\\"stdev_us\\":%.2f,\\"min_us\\":%d," ..
    "\\"max_us\\":%d,\\"p50_us\\":%d,\\"p90_us\\":%d,\\"p99_us\\":%d,\\"p999_us\\":%d}}\\n",
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency.mean, latency.stdev, latency.min, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9)))
end
"""


def write_lua(path: Path, body: dict[str, Any]) -> Path:
    text = json.dumps(body, separators=(",", ":"))
    assert "]==]" not in text
    path.write_text(WRK_LUA.format(body=text, auth=AUTH_HEADER))
    return path


def run_wrk(url: str, script: Path, connections: int, duration_s: float,
            cpus: set[int] | None, wrk_bin: str = "wrk") -> dict[str, Any]:
    argv = [wrk_bin, "-t1", f"-c{connections}", f"-d{duration_s:g}s", "--timeout", "10s",
            "--latency", "-s", str(script), url]

    def pin() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)

    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 30,
                          preexec_fn=pin, stdin=subprocess.DEVNULL)
    for line in done.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            result: dict[str, Any] = json.loads(line.split(" ", 1)[1])
            break
    else:
        raise RuntimeError(f"wrk gave no result (exit {done.returncode}):\n"
                           f"{done.stdout}\n{done.stderr}")
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    result["errors"] = sum(result[k] for k in ("err_connect", "err_read", "err_write",
                                                "err_status", "err_timeout"))
    return result


@dataclass
class Plan:
    duration_s: float
    runs: int
    proxy_cpus: set[int] | None
    load_cpus: set[int] | None
    wrk_bin: str
    src: Path = REPO


KINDS = (("latency", LATENCY_CONNECTIONS), ("throughput", THROUGHPUT_CONNECTIONS))


def _scenario_input(target: Target, scenario: str, workdir: Path) -> tuple[str, Path]:
    url = target.json_url if scenario == "json" else target.stream_url
    body = target.json_body if scenario == "json" else target.stream_body
    return url, write_lua(workdir / f"{target.name}-{scenario}.lua", body)


def warm_up(target: Target, scenario: str, plan: Plan, workdir: Path) -> None:
    url, script = _scenario_input(target, scenario, workdir)
    print(f"  {target.name}/{scenario}: warm-up {WARMUP_S} s", file=sys.stderr, flush=True)
    run_wrk(url, script, THROUGHPUT_CONNECTIONS, WARMUP_S, plan.load_cpus, plan.wrk_bin)


def measure_once(target: Target, scenario: str, kind: str, plan: Plan, workdir: Path,
                 attempt: int) -> dict[str, Any]:
    """One wrk run (``kind``: latency at c=1 or throughput at c=32), with the proxy's CPU."""
    connections = dict(KINDS)[kind]
    url, script = _scenario_input(target, scenario, workdir)
    pid = target.service.pid if target.service else None
    print(f"  {target.name}/{scenario}: {kind} c={connections} {plan.duration_s:g} s"
          f" (run {attempt + 1}/{plan.runs})", file=sys.stderr, flush=True)
    before = settled_cpu_seconds(pid) if pid else 0.0
    result = run_wrk(url, script, connections, plan.duration_s, plan.load_cpus, plan.wrk_bin)
    result["run"] = attempt + 1
    if pid:
        used = settled_cpu_seconds(pid) - before
        result["proxy_cpu_s"] = used
        result["proxy_core_share"] = used / (result["duration_us"] / 1e6)
        result["proxy_cpu_us_per_req"] = (used * 1e6 / result["requests"]
                                          if result["requests"] else None)
    return result


def summarise(lat: list[dict[str, Any]], thr: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over runs of the latency (c=1) and throughput (c=32) measurements."""

    def med(runs: list[dict[str, Any]], key: str) -> float | None:
        values = [r[key] for r in runs if r.get(key) is not None]
        return statistics.median(values) if values else None

    def ms(runs: list[dict[str, Any]], key: str) -> float:
        return float(statistics.median(r[key] for r in runs)) / 1000

    return {
        "latency_runs": lat, "throughput_runs": thr,
        "p50_ms": ms(lat, "p50_us"), "p99_ms": ms(lat, "p99_us"),
        "mean_ms": ms(lat, "mean_us"), "rps_c1": med(lat, "rps"),
        "rps_c32": med(thr, "rps"), "p50_ms_c32": ms(thr, "p50_us"),
        "p99_ms_c32": ms(thr, "p99_us"),
        "cpu_us_per_req_c1": med(lat, "proxy_cpu_us_per_req"),
        "cpu_us_per_req_c32": med(thr, "proxy_cpu_us_per_req"),
        "core_share_c32": med(thr, "proxy_core_share"),
        "errors": sum(r["errors"] for r in lat + thr),
        "requests": sum(r["requests"] for r in lat + thr),
    }


def measure(target: Target, scenario: str, plan: Plan, workdir: Path) -> dict[str, Any]:
    """Warm up, then latency at c=1 and throughput at c=32 (``runs`` times each; medians)."""
    warm_up(target, scenario, plan, workdir)
    runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind, _ in KINDS}
    for kind, _ in KINDS:
        for attempt in range(plan.runs):
            runs[kind].append(measure_once(target, scenario, kind, plan, workdir, attempt))
    return summarise(runs["latency"], runs["throughput"])


def measure_interleaved(targets: Sequence[Target], scenarios: Sequence[str], plan: Plan,
                        workdir: Path) -> dict[str, dict[str, Any]]:
    """Several running proxies measured in turns: per scenario, each is warmed up, then in
    every round (``run``) each measurement kind is taken of every target in a row, the order
    rotating round by round (A B, B A, A B, ...), so that drift of the machine hits all of
    them alike. Each run records its ``run`` and ``slot`` (its place in that round's order)."""
    out: dict[str, dict[str, Any]] = {t.name: {} for t in targets}
    for scenario in scenarios:
        for target in targets:
            warm_up(target, scenario, plan, workdir)
        runs = {t.name: {kind: [] for kind, _ in KINDS} for t in targets}
        for attempt in range(plan.runs):
            shift = attempt % len(targets)
            order = [*targets[shift:], *targets[:shift]]
            for kind, _ in KINDS:
                for slot, target in enumerate(order):
                    result = measure_once(target, scenario, kind, plan, workdir, attempt)
                    result["slot"] = slot + 1
                    runs[target.name][kind].append(result)
        for target in targets:
            out[target.name][scenario] = summarise(runs[target.name]["latency"],
                                                   runs[target.name]["throughput"])
    return out


# --- report -----------------------------------------------------------------------------


def _cmd_version(argv: list[str]) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        text = (done.stdout + done.stderr).strip().splitlines()
        return text[0] if text else ""
    return ""


def environment(plan: Plan, tree: Tree | None = None,
                baseline: tuple[str, Tree] | None = None) -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    tree = tree or Tree.detect(plan.src)
    env: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
        "python": platform.python_version(), "nginx": _cmd_version([find_nginx(), "-v"]),
        "wrk": _cmd_version([plan.wrk_bin, "--version"]),
        "spendgate_rev": tree.revision() or "unknown",
        "spendgate_src": str(tree.root), "spendgate_layout": tree.layout,
    }
    if baseline is not None:
        name, other = baseline
        env["baseline"] = {"name": name, "src": str(other.root), "layout": other.layout,
                           "rev": other.revision() or "unknown"}
    return {
        **env,
        "loadavg_start": os.getloadavg(),
        "pinning": ({"proxy_cpus": sorted(plan.proxy_cpus),
                     "nginx_and_wrk_cpus": sorted(plan.load_cpus)}
                    if plan.proxy_cpus and plan.load_cpus else None),
        "duration_s": plan.duration_s, "runs": plan.runs, "warmup_s": WARMUP_S,
    }


def running_revision(env: dict[str, Any], tree: Tree, baseline: Tree | None = None) -> None:
    """Re-read the revisions once the proxies have imported their code: a checkout that
    moved on since the start (a commit meanwhile) is recorded as what actually runs."""
    for where, source in ((env, tree), (env.get("baseline"), baseline)):
        if where is None or source is None:
            continue
        key = "spendgate_rev" if where is env else "rev"
        now = source.revision() or "unknown"
        if now != where[key]:
            where[f"{key}_at_start"] = where[key]
            where[key] = now


def _ms(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def analyse(results: dict[str, dict[str, Any]], litellm_note: str) -> dict[str, Any]:
    """Added latency, ratios and the PASS/FAIL verdicts from the measured JSON scenario."""
    out: dict[str, Any] = {}
    for scenario in ("json", "stream"):
        direct = results.get("direct", {}).get(scenario)
        if not direct:
            continue
        for name, per_scenario in results.items():
            m = per_scenario.get(scenario)
            if name == "direct" or not m:
                continue
            m["added_p50_ms"] = m["p50_ms"] - direct["p50_ms"]
            m["added_p99_ms"] = m["p99_ms"] - direct["p99_ms"]
    sg = results.get("spendgate", {}).get("json")
    if not sg:
        return out
    ll = results.get("litellm", {}).get("json")
    checks: list[tuple[str, str, str, bool | None]] = [
        ("added p50 latency (c=1)", f"<= {TARGET_ADDED_P50_MS} ms",
         f"{sg['added_p50_ms']:.3f} ms", sg["added_p50_ms"] <= TARGET_ADDED_P50_MS),
        ("throughput (c=32)", f">= {TARGET_RPS_C32:,.0f} req/s",
         f"{sg['rps_c32']:,.0f} req/s", sg["rps_c32"] >= TARGET_RPS_C32),
    ]
    if ll:
        # Only a LiteLLM measured in this run is compared with: never a remembered figure.
        ref = {"added_p50_ms": ll["added_p50_ms"], "rps_c32": ll["rps_c32"],
               "source": "measured here"}
        floor = 0.001  # 1 µs: an added latency at or below zero (noise) counts as 1 µs
        latency_ratio = ref["added_p50_ms"] / max(sg["added_p50_ms"], floor)
        rps_ratio = sg["rps_c32"] / ref["rps_c32"]
        checks += [
            ("added p50 vs LiteLLM", f">= {TARGET_VS_LITELLM:g}x lower",
             f"{latency_ratio:.1f}x lower", latency_ratio >= TARGET_VS_LITELLM),
            ("throughput vs LiteLLM", f">= {TARGET_VS_LITELLM:g}x higher",
             f"{rps_ratio:.1f}x higher", rps_ratio >= TARGET_VS_LITELLM)]
        out["latency_ratio_vs_litellm"] = latency_ratio
        out["rps_ratio_vs_litellm"] = rps_ratio
    else:
        ref = {"added_p50_ms": None, "rps_c32": None,
               "source": f"not measured ({litellm_note})"}
        checks += [("added p50 vs LiteLLM", f">= {TARGET_VS_LITELLM:g}x lower",
                    "LiteLLM did not run in this run", None),
                   ("throughput vs LiteLLM", f">= {TARGET_VS_LITELLM:g}x higher",
                    "LiteLLM did not run in this run", None)]
    if sg["errors"]:
        checks.append(("errors during the run", "0", str(sg["errors"]), False))
    for name, per_scenario in results.items():
        errors = sum(m.get("errors", 0) for m in per_scenario.values())
        if name.startswith("spendgate@") and errors:
            checks.append((f"errors during the run ({name})", "0", str(errors), False))
    out["litellm_reference"] = ref
    out["checks"] = [{"check": c, "target": t, "measured": m, "pass": p}
                     for c, t, m, p in checks]
    # Overall PASS needs every check measured: without LiteLLM in the run it is not measured.
    out["pass"] = None if any(p is None for *_, p in checks) else all(p for *_, p in checks)
    return out


# (key in a scenario's results, label, measurement kind, key in each run, higher is better)
AB_METRICS = (
    ("added_p50_ms", "added p50 c=1 (ms)", "latency", "p50_us", False),
    ("added_p99_ms", "added p99 c=1 (ms)", "latency", "p99_us", False),
    ("rps_c32", "req/s c=32", "throughput", "rps", True),
    ("cpu_us_per_req_c1", "proxy CPU µs/call c=1", "latency", "proxy_cpu_us_per_req", False),
    ("cpu_us_per_req_c32", "proxy CPU µs/call c=32", "throughput", "proxy_cpu_us_per_req",
     False),
)


def compare_ab(results: dict[str, dict[str, Any]], a: str, b: str) -> dict[str, Any]:
    """``a`` vs ``b`` per scenario and metric: medians, their ratio a/b, and the ratios of
    the runs taken side by side in each round (the spread of those is the noise)."""
    out: dict[str, Any] = {"a": a, "b": b, "scenarios": {}}
    for scenario in ("json", "stream"):
        ma, mb = results.get(a, {}).get(scenario), results.get(b, {}).get(scenario)
        direct = results.get("direct", {}).get(scenario)
        if not (ma and mb and direct):
            continue
        metrics: dict[str, Any] = {}
        for key, _label, kind, run_key, higher_is_better in AB_METRICS:
            va, vb = ma.get(key), mb.get(key)
            # added latency per run: that run's percentile minus direct's (median) one
            offset = (direct[{"p50_us": "p50_ms", "p99_us": "p99_ms"}[run_key]] * 1000
                      if key.startswith("added_") else 0.0)
            runs_a = {r["run"]: r for r in ma[f"{kind}_runs"]}
            runs_b = {r["run"]: r for r in mb[f"{kind}_runs"]}
            paired = []
            for run in sorted(runs_a.keys() & runs_b.keys()):
                x, y = runs_a[run].get(run_key), runs_b[run].get(run_key)
                if x is not None and y is not None and y - offset > 0:
                    paired.append((x - offset) / (y - offset))
            worse = sum(1 for r in paired if (r < 1 if higher_is_better else r > 1))
            metrics[key] = {
                "a": va, "b": vb,
                "ratio": va / vb if va is not None and vb not in (None, 0) else None,
                "higher_is_better": higher_is_better,
                "paired_ratios": paired, "rounds_a_worse": worse,
            }
        out["scenarios"][scenario] = metrics
    return out


def _ab_value(key: str, value: float | None) -> str:
    if value is None:
        return "–"
    if key == "rps_c32":
        return f"{value:,.0f}"
    return f"{value:.3f}" if key.startswith("added_") else f"{value:.0f}"


def render_ab(ab: dict[str, Any]) -> list[str]:
    a, b = ab["a"], ab["b"]
    lines = ["", f"### A/B: {a} vs {b} (same run, interleaved)", "",
             f"ratio = {a} / {b} (of the medians); per round: the ratio of the two runs taken "
             f"side by side in each round, min–max, and in how many rounds {a} came out worse "
             "(higher latency or CPU, lower req/s).", "",
             f"| scenario | metric | {a} | {b} | ratio | per-round ratios | {a} worse in |",
             "|---|---|---:|---:|---:|---:|---:|"]
    titles = {"json": "non-streamed", "stream": "streamed"}
    for scenario, metrics in ab["scenarios"].items():
        for key, label, *_ in AB_METRICS:
            m = metrics[key]
            paired = m["paired_ratios"]
            spread = (f"{min(paired):.2f}–{max(paired):.2f}" if len(paired) > 1 else
                      f"{paired[0]:.2f}" if paired else "–")
            ratio = "–" if m["ratio"] is None else f"{m['ratio']:.3f}"
            lines.append(f"| {titles[scenario]} | {label} | {_ab_value(key, m['a'])} | "
                         f"{_ab_value(key, m['b'])} | {ratio} | {spread} | "
                         f"{m['rounds_a_worse']}/{len(paired)} |")
    return lines


def _verdict(passed: bool | None) -> str:
    return "not measured" if passed is None else "PASS" if passed else "FAIL"


def render(env: dict[str, Any], results: dict[str, dict[str, Any]],
           verdict: dict[str, Any]) -> str:
    lines = ["## spendgate proxy overhead", ""]
    pin = env["pinning"]
    lines.append(
        f"{env['date']} · {env['cpu'] or 'unknown CPU'} · {env['cores']} cores · "
        f"Linux {env['kernel']} · Python {env['python']} · spendgate {env['spendgate_rev']}"
        + (f" (the checkout was at {env['spendgate_rev_at_start']} when the run started)"
           if env.get("spendgate_rev_at_start") else "")
        + ("" if env["spendgate_src"] == str(REPO) else f" ({env['spendgate_src']})"))
    if env.get("baseline"):
        base = env["baseline"]
        lines.append(
            f"Baseline {base['name']}: source tree {base['src']} (git {base['rev']}, "
            f"{base['layout']} layout), running beside spendgate ({env['spendgate_layout']} "
            f"layout) and measured in alternating turns with it.")
    lines.append(
        f"wrk -t1, {env['duration_s']:g} s per measurement after a {env['warmup_s']} s "
        f"warm-up, median of {env['runs']} run(s); upstream: nginx (1 worker) returning a "
        f"canned chat completion; proxies: 1 worker each; "
        + (f"proxy pinned to CPU {','.join(map(str, pin['proxy_cpus']))}, nginx + wrk to "
           f"CPU {','.join(map(str, pin['nginx_and_wrk_cpus']))}."
           if pin else "no CPU pinning."))
    load = env["loadavg_start"]
    lines.append(f"Load average at start: {', '.join(f'{x:.2f}' for x in load)}"
                 f"{' (busy machine: numbers are noisy)' if load[0] > 0.5 else ''}.")
    for scenario, title in (("json", "Chat completion, non-streamed"),
                            ("stream", "Chat completion, streamed (SSE, 6 events)")):
        rows = [(name, r[scenario]) for name, r in results.items() if r.get(scenario)]
        if not rows:
            continue
        lines += ["", f"### {title}", "",
                  "| path | p50 c=1 (ms) | p99 c=1 (ms) | added p50 (ms) | added p99 (ms) "
                  "| req/s c=32 | p99 c=32 (ms) | proxy CPU µs/req (c=1 / c=32) "
                  "| proxy core use c=32 | errors |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, m in rows:
            label = {"direct": "direct to nginx", "spendgate": "through spendgate",
                     "floor": "through a minimal Python proxy (floor)",
                     "litellm": "through LiteLLM"}.get(name, f"through {name}")
            cpu = ("–" if m["cpu_us_per_req_c1"] is None else
                   f"{m['cpu_us_per_req_c1']:.0f} / {m['cpu_us_per_req_c32']:.0f}")
            share = ("–" if m.get("core_share_c32") is None else
                     f"{m['core_share_c32']:.0%}")
            lines.append(
                f"| {label} | {_ms(m['p50_ms'])} | {_ms(m['p99_ms'])} | "
                f"{_ms(m.get('added_p50_ms'))} | {_ms(m.get('added_p99_ms'))} | "
                f"{m['rps_c32']:,.0f} | {_ms(m['p99_ms_c32'])} | {cpu} | {share} | "
                f"{m['errors']} |")
        notes = []
        for name, m in rows:
            share, cpu32 = m.get("core_share_c32"), m.get("cpu_us_per_req_c32")
            if share is not None and cpu32 and share < CONTENDED_SHARE:
                notes.append(
                    f"- {name} kept its core only {share:.0%} busy at c=32 (most likely other "
                    f"load on the machine took the rest), so its req/s is understated: its CPU "
                    f"cost per request implies about {1e6 / cpu32:,.0f} req/s on a whole core.")
        if notes:
            lines += ["", *notes]
    if verdict.get("ab"):
        lines += render_ab(verdict["ab"])
    if env.get("rss_start_mb"):
        lines += ["", "Resident memory (MiB), once healthy / at the end: " + ", ".join(
            f"{name} {mb:.1f} / {env.get('rss_end_mb', {}).get(name, 0):.1f}"
            for name, mb in env["rss_start_mb"].items())]
    if verdict.get("checks"):
        ref = verdict["litellm_reference"]
        measured = ref["added_p50_ms"] is not None
        lines += ["", "### Targets (non-streamed)", "",
                  f"LiteLLM reference: {ref['source']}"
                  + (f": added p50 {ref['added_p50_ms']:.3f} ms, {ref['rps_c32']:,.0f} req/s "
                     "at c=32." if measured else "."), "",
                  "| check | target | measured | result |", "|---|---|---|---|"]
        for c in verdict["checks"]:
            lines.append(f"| {c['check']} | {c['target']} | {c['measured']} | "
                         f"{_verdict(c['pass'])} |")
        lines += ["", f"Overall: {_verdict(verdict['pass'])}"]
    return "\n".join(lines)


# --- main -------------------------------------------------------------------------------


def pick_cpus(no_pin: bool) -> tuple[set[int] | None, set[int] | None]:
    allowed = sorted(os.sched_getaffinity(0))
    if no_pin or len(allowed) < 2:
        return None, None
    return {allowed[0]}, {allowed[1]}


def _raise_interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10,
                        help="seconds per measurement (default 10)")
    parser.add_argument("--runs", type=int, default=1,
                        help="repeat each measurement and report medians (default 1)")
    parser.add_argument("--out", default=str(BENCH_DIR / "results" / "latest.json"),
                        help="JSON results file (default bench/results/latest.json)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--no-stream", action="store_true", help="skip the SSE scenario")
    parser.add_argument("--tracing", action="store_true",
                        help="run spendgate with every call traced and exported over OTLP/HTTP "
                        "(to a sink in the same nginx)")
    parser.add_argument("--budget", action="store_true",
                        help="A/B in the same run: spendgate with one block budget covering "
                        "every call (reserved and settled) against spendgate without one")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="A/B in the same run: spendgate with N workers (serve --workers) "
                        "against one worker; with 2 cores, use --no-pin")
    parser.add_argument("--floor", action="store_true",
                        help="also measure bench/floor_proxy.py, a minimal Python proxy on "
                        "the same stack: the floor under spendgate's figures")
    parser.add_argument("--skip-litellm", action="store_true",
                        help="do not run LiteLLM even if installed; compare with the anchor")
    parser.add_argument("--litellm", metavar="CMD",
                        help="LiteLLM proxy executable (e.g. one in its own venv); default: "
                        "the 'litellm' of this interpreter, if importable")
    parser.add_argument("--litellm-start-timeout", type=float, default=180)
    parser.add_argument("--wrk", default="wrk", help="wrk binary (default: wrk on PATH)")
    parser.add_argument("--src", type=Path, default=REPO,
                        help="spendgate source tree to run (default: this checkout); for "
                        "A/B runs against e.g. a 'git archive' of another commit")
    parser.add_argument("--baseline-src", type=Path, metavar="DIR",
                        help="also run the spendgate source tree in DIR (e.g. a 'git archive' "
                        "of another commit) in the same run, interleaved with --src round by "
                        "round, and report their ratios")
    parser.add_argument("--baseline-name", metavar="NAME",
                        help="name the baseline spendgate@NAME (default: its git revision, "
                        "or DIR's name)")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.runs < 1:
        parser.error("--duration must be > 0 and --runs >= 1")
    if shutil.which(args.wrk) is None:
        print(f"{args.wrk} not found (Debian: apt-get install wrk)", file=sys.stderr)
        return 2

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_interrupt)
    proxy_cpus, load_cpus = pick_cpus(args.no_pin)
    try:
        tree = Tree.detect(args.src)
        other = Tree.detect(args.baseline_src) if args.baseline_src else None
    except ValueError as error:
        parser.error(str(error))
    baseline: tuple[str, Tree] | None = None
    if (args.budget or args.workers > 1) and (other is not None
                                              or (args.budget and args.workers > 1)):
        parser.error("--budget, --workers and --baseline-src: one A/B at a time")
    if args.budget:
        baseline = ("spendgate+budget", tree)
    elif args.workers > 1:
        baseline = (f"spendgate-{args.workers}-workers", tree)
    elif other is not None:
        suffix = args.baseline_name or other.revision() or other.root.name
        if suffix == (tree.revision() or tree.root.name) and not args.baseline_name:
            suffix = str(other.root)   # same revision or folder name: tell them apart
        baseline = (f"spendgate@{suffix}", other)
    plan = Plan(args.duration, args.runs, proxy_cpus, load_cpus, args.wrk, tree.root)
    scenarios = ["json"] if args.no_stream else ["json", "stream"]

    litellm_cmd = None if args.skip_litellm else find_litellm(args.litellm)
    if args.skip_litellm:
        litellm_note = "LiteLLM skipped (--skip-litellm)"
    elif litellm_cmd is None:
        litellm_note = "LiteLLM not installed"
        print("LiteLLM: not installed (pip install 'litellm[proxy]' to compare)")
    else:
        litellm_note = ""
    n_targets = 2 + (baseline is not None) + args.floor + (litellm_cmd is not None)
    per = WARMUP_S + 2 * args.runs * (args.duration + 0.5)
    print(f"Measuring {n_targets} targets x {len(scenarios)} scenarios, about "
          f"{n_targets * len(scenarios) * per:.0f} s of load"
          f"{' plus LiteLLM start-up' if litellm_cmd else ''}.", file=sys.stderr)

    env = environment(plan, tree, baseline)
    results: dict[str, dict[str, Any]] = {}
    workdir = Path(tempfile.mkdtemp(prefix="spendgate-bench-"))
    current: Target | None = None
    pair: list[Target] = []
    try:
        with start_nginx(cpus=load_cpus) as nginx:
            direct = Target("direct", nginx.base_url + JSON_PATH, nginx.base_url + SSE_PATH,
                            dict(STREAM_REQUEST))
            check_target(direct)
            results["direct"] = {s: measure(direct, s, plan, workdir) for s in scenarios}
            if baseline is None:
                # One proxy at a time, alone on its core; each is stopped before the next.
                print("starting spendgate", file=sys.stderr, flush=True)
                current = start_spendgate(nginx, workdir, proxy_cpus, tree, args.tracing)
                check_target(current)
                running_revision(env, tree)
                results["spendgate"] = {s: measure(current, s, plan, workdir)
                                        for s in scenarios}
                current.stop()
            else:
                # A/B: both run (on the same core), each idle while the other is measured.
                name, other = baseline
                print(f"starting spendgate ({tree.root}) and {name} ({other.root})",
                      file=sys.stderr, flush=True)
                pair.append(start_spendgate(nginx, workdir, proxy_cpus, tree, args.tracing))
                pair.append(start_spendgate(nginx, workdir, proxy_cpus, other, args.tracing,
                                            name=name, budget=args.budget,
                                            workers=args.workers))
                for target in pair:
                    check_target(target)
                env["rss_start_mb"] = {t.name: t.rss_start_mb for t in pair}
                running_revision(env, tree, None if args.budget or args.workers > 1 else other)
                results.update(measure_interleaved(pair, scenarios, plan, workdir))
                env["rss_end_mb"] = {t.name: rss_mb(t.service.pid) for t in pair
                                     if t.service is not None}
                for target in pair:
                    target.stop()
            if args.floor:
                print("starting the floor proxy", file=sys.stderr, flush=True)
                current = start_floor(nginx, workdir, proxy_cpus)
                check_target(current)
                results["floor"] = {s: measure(current, s, plan, workdir) for s in scenarios}
                current.stop()
            if litellm_cmd is not None:
                print(f"starting LiteLLM: {' '.join(litellm_cmd)}", file=sys.stderr, flush=True)
                try:
                    current = start_litellm(litellm_cmd, nginx, workdir, proxy_cpus,
                                            args.litellm_start_timeout)
                    check_target(current)
                    results["litellm"] = {s: measure(current, s, plan, workdir)
                                          for s in scenarios}
                    env["litellm"] = _cmd_version([*litellm_cmd, "--version"])
                except RuntimeError as error:
                    litellm_note = f"LiteLLM failed to run: {str(error).splitlines()[0]}"
                    print(litellm_note, file=sys.stderr)
                    results.pop("litellm", None)
                finally:
                    if current is not None:
                        current.stop()
    except KeyboardInterrupt:
        print("\ninterrupted: stopping everything", file=sys.stderr)
        return 130
    finally:
        for target in [*pair, current]:
            if target is not None:
                target.stop()
        env["loadavg_end"] = os.getloadavg()
        shutil.rmtree(workdir, ignore_errors=True)

    verdict = analyse(results, litellm_note or "LiteLLM not measured")
    if baseline is not None:
        verdict["ab"] = compare_ab(results, "spendgate", baseline[0])
    report = render(env, results, verdict)
    print()
    print(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"environment": env, "results": results, "verdict": verdict,
                               "litellm_note": litellm_note, "report_markdown": report},
                              indent=2) + "\n")
    print(f"\nJSON: {out}", file=sys.stderr)
    return 0 if verdict.get("pass") is not False else 1


if __name__ == "__main__":
    raise SystemExit(main())
