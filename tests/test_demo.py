"""``spendgate demo`` as a user runs it: a real subprocess, its printed URLs, its /metrics.

Both demos start together (they are independent, on their own free ports) so the module
costs one demo's time: one runs out its ``--duration``, the other is stopped with SIGINT.
"""

from __future__ import annotations

import queue
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT, free_port, spendgate_command

PROJECTS = ("search", "support", "analytics", "internal-tools", "experiments")


class Demo:
    """``spendgate demo ...`` with its stdout read line by line in a thread."""

    def __init__(self, *args: str) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            spendgate_command("demo", "--port", str(self.port), *args),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout_s: float) -> re.Match[str]:
        """The first printed line (from the start) matching ``pattern``."""
        deadline = time.monotonic() + timeout_s
        seen = 0
        while True:
            for line in self.lines[seen:]:
                if found := re.search(pattern, line):
                    return found
            seen = len(self.lines)
            try:
                got = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r}; output:\n"
                                     + "\n".join(self.lines)) from None
            if got is None:
                raise AssertionError(f"demo exited without {pattern!r}:\n" + "\n".join(
                    self.lines) + "\n" + self.stderr())
            self.lines.append(got)

    def finish(self, timeout_s: float) -> int:
        code = self.proc.wait(timeout_s)
        while (line := self._queue.get(timeout=5)) is not None:
            self.lines.append(line)
        return code

    def stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def demos() -> Iterator[tuple[Demo, Demo]]:
    timed = Demo("--duration", "8", "--rate", "10", "--seed", "5")
    interrupted = Demo("--rate", "10", "--seed", "6")
    yield timed, interrupted
    timed.kill()
    interrupted.kill()


def metrics(url: str) -> list[tuple[str, dict[str, str], float]]:
    text = httpx.get(url, timeout=10).text
    return [(s.name, s.labels, s.value) for f in text_string_to_metric_families(text)
            for s in f.samples]


def mix(samples: list[tuple[str, dict[str, str], float]],
        ) -> tuple[set[str], set[str], set[str], float]:
    """Projects, models and providers with calls, and the local model's estimated tokens."""
    requests = [labels for name, labels, _ in samples if name == "spendgate_requests_total"]
    estimated = sum(value for name, labels, value in samples
                    if name == "spendgate_tokens_total" and labels["model"] == "llama3.1:8b"
                    and labels["source"] == "estimated" and labels["upstream"] == "local")
    return ({r["project"] for r in requests}, {r["model"] for r in requests},
            {r["provider"] for r in requests}, estimated)


def port_closed(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_demo_serves_real_metrics_and_exits_on_its_own(demos: tuple[Demo, Demo]) -> None:
    demo = demos[0]
    proxy = demo.wait_for(r"^\s+proxy\s+(http://\S+)", 60)[1]
    metrics_url = demo.wait_for(r"^\s+metrics\s+(http://\S+/metrics)", 5)[1]
    assert proxy == f"http://127.0.0.1:{demo.port}"
    assert metrics_url == proxy + "/metrics"
    demo.wait_for(r"curl -s http://127\.0\.0\.1:\d+/openai/v1/chat/completions", 5)
    demo.wait_for(r"OPENAI_BASE_URL=http://127\.0\.0\.1:\d+/openai/v1", 5)

    # While it runs, the proxy's own /metrics shows the whole mix.
    deadline = time.monotonic() + 8
    last = mix([])
    while True:
        try:
            last = mix(metrics(metrics_url))
        except httpx.HTTPError:  # the demo ended meanwhile: judge the last scrape
            break
        projects, models, providers, estimated = last
        if (len(projects) >= 4 and len(models) >= 4 and {"openai", "anthropic"} <= providers
                and estimated > 0) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    projects, models, providers, estimated = last
    assert len(projects) >= 4, projects
    assert len(models) >= 4, models
    assert {"openai", "anthropic"} <= providers, providers
    assert estimated > 0, "the self-hosted model's tokens are estimated"

    assert demo.finish(40) == 0, demo.stderr()
    out = "\n".join(demo.lines)
    assert "stopped after" in out
    # Non-TTY output: plain periodic lines, then the final table.
    assert re.search(r"^\[\s*\d+\.\ds\] \d+ requests", out, re.MULTILINE)
    spend = {m[1]: float(m[2].replace(",", "")) for m in re.finditer(
        r"^(\S+)\s+[\d,]+\s+[\d,]+\s+\S+\s+[\d,]+\s+[\d,]+\s+\$([\d,.]+)$", out, re.MULTILINE)}
    assert sum(1 for p in PROJECTS if spend.get(p, 0) > 0) >= 3, spend
    assert spend["total"] > 0
    assert port_closed(demo.port), "the proxy child is stopped"


def test_demo_stops_cleanly_on_ctrl_c(demos: tuple[Demo, Demo]) -> None:
    demo = demos[1]
    demo.wait_for(r"^\s+metrics\s+(http://\S+/metrics)", 60)
    assert re.match(r"^\s+console\s+http://127\.0\.0\.1:\d+/ui\s", demo.lines[0]), demo.lines[:2]
    demo.wait_for(r"^\[\s*\d+\.\ds\] [1-9][\d,]* requests", 15)
    url = f"http://127.0.0.1:{demo.port}"
    # The demo has no admin key: the CLI reads it through its console (loopback).
    budgets = subprocess.run(spendgate_command("budgets", "--url", url), capture_output=True,
                             text=True, timeout=30)
    assert budgets.returncode == 0, budgets.stderr
    assert re.search(r"^experiments-cap\s+block\s+total\s+\$", budgets.stdout, re.MULTILINE)
    spend = subprocess.run(spendgate_command("spend", "--url", url, "--format", "csv"),
                           capture_output=True, text=True, timeout=30)
    assert spend.returncode == 0 and spend.stdout.startswith("project,spend_usd"), spend.stderr
    assert httpx.get(url + "/ui").status_code == 200
    demo.proc.send_signal(signal.SIGINT)
    assert demo.finish(30) == 0, demo.stderr()
    out = "\n".join(demo.lines)
    assert "stopped after" in out and re.search(r"^total\s+[1-9]", out, re.MULTILINE)
    assert port_closed(demo.port), "the proxy child is stopped"


def test_demo_refuses_a_busy_port() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(spendgate_command("demo", "--port", str(port)),
                                capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 1
    assert f"port {port} on 127.0.0.1 is not available" in result.stderr
    assert "--port 0" in result.stderr
