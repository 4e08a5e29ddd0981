"""Shared fixtures: fake providers as real servers, and spendgate as a real process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from scripts import sourcetree
from tests.fake_upstream import FakeUpstream

ROOT = Path(__file__).resolve().parent.parent


def spendgate_command(*args: str) -> list[str]:
    """The argv of ``spendgate ARGS`` run from this checkout (``scripts/sourcetree.py``)."""
    return sourcetree.command(ROOT, *args)


def need(reason: str) -> NoReturn:
    """A test dependency is missing: skip with the reason, but fail under CI=true, where a
    missing package or service means a broken CI, not an optional test."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ProxyProcess:
    """``spendgate serve`` in a subprocess with a given config; a real server on loopback."""

    def __init__(self, config: dict[str, Any], workdir: Path, env: dict[str, str] | None = None,
                 log_level: str = "warning") -> None:
        self.port = free_port()
        self.config_path = workdir / f"spendgate-{self.port}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / f"spendgate-{self.port}.log"
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_level = log_level   # "info" writes the access log to log()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ProxyProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            spendgate_command("serve", "--config", str(self.config_path),
                              "--port", str(self.port), "--log-level", self.log_level),
            cwd=self.config_path.parent, env=self.env,
            stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"spendgate exited early:\n{self.log()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError(f"spendgate did not become healthy:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_line(self, request_id: str, timeout_s: float = 5.0) -> str:
        """The one access-log line of a call (written after the caller has its bytes)."""
        deadline = time.monotonic() + timeout_s
        while True:
            lines = [ln for ln in self.log().splitlines() if request_id in ln]
            if lines or time.monotonic() > deadline:
                assert len(lines) == 1, self.log()[-3000:]
                return lines[0]
            time.sleep(0.05)

    def peak_rss_mb(self) -> float:
        """The process's peak resident memory so far (``VmHWM``, Linux), in MiB."""
        assert self.proc is not None
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))
        return int(kib) / 1024

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def metrics_text(self) -> str:
        return httpx.get(self.url + "/metrics", timeout=10).text

    def sample(self, name: str, **labels: str) -> float | None:
        """The value of one sample in ``/metrics`` (None if absent), summed over other labels."""
        total = None
        for family in text_string_to_metric_families(self.metrics_text()):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    total = (total or 0.0) + s.value
        return total


    def eventually(self, name: str, timeout_s: float = 5.0, **labels: str) -> float | None:
        """``sample``, polled until it exists: for calls that end after the caller left."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = self.sample(name, **labels)
            if value is not None or time.monotonic() > deadline:
                return value
            time.sleep(0.05)


@contextmanager
def proxies_exporting_to(receiver: Any, spawn: Any) -> Iterator[Any]:
    """Start proxies that export to ``receiver`` (started); on exit they stop before the
    receiver does, so their last flush has somewhere to go."""
    started: list[ProxyProcess] = []

    def start(config: dict[str, Any], env: dict[str, str] | None = None) -> ProxyProcess:
        proxy: ProxyProcess = spawn(config, env)
        started.append(proxy)
        return proxy

    try:
        yield start
    finally:
        for proxy in started:
            proxy.stop()
        receiver.stop()


@pytest.fixture(scope="session")
def fake() -> Iterator[FakeUpstream]:
    upstream = FakeUpstream().start()
    yield upstream
    upstream.stop()


@pytest.fixture()
def upstream(fake: FakeUpstream) -> FakeUpstream:
    """The shared fake provider, emptied for this test."""
    return fake.reset()


@pytest.fixture(scope="session")
def spawn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Start spendgate processes; all are stopped at the end of the session."""
    started: list[ProxyProcess] = []

    def _spawn(config: dict[str, Any], env: dict[str, str] | None = None) -> ProxyProcess:
        proc = ProxyProcess(config, tmp_path_factory.mktemp("proxy"), env).start()
        started.append(proc)
        return proc

    yield _spawn
    for proc in started:
        proc.stop()


def basic_config(fake: FakeUpstream, **extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "upstreams": {
            "openai": {"url": fake.url, "provider": "openai", "timeout_s": 5},
            "anthropic": {"url": fake.url, "provider": "anthropic", "timeout_s": 5},
            "local": {"url": fake.url + "/base", "provider": "openai", "timeout_s": 1,
                      "pricing": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}},
        },
        "pricing": {"overrides": {"my-finetune": {"input_per_mtok": 1.0, "output_per_mtok": 2.0,
                                                  "cached_input_per_mtok": 0.5,
                                                  "cache_write_per_mtok": 1.25}}},
    }
    config.update(extra)
    return config


@pytest.fixture(scope="session")
def proxy(fake: FakeUpstream, spawn: Any) -> ProxyProcess:
    """One spendgate in front of the fake provider, no virtual keys."""
    return spawn(basic_config(fake))  # type: ignore[no-any-return]
