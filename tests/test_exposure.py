"""Issue 15 item 5: safe defaults for where the proxy runs, through real proxies.

``server.allowed_hosts`` (421 for any other ``Host``; loopback names by default on loopback,
required elsewhere), ``server.allowed_origins`` (403 for a proxied call from a browser
origin not listed), ``/docs`` and ``/openapi.json`` only behind ``admin_key``, no redirect
built from the caller's ``Host``, and ``metrics_key`` on ``/metrics``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
import yaml

from tests.conftest import ProxyProcess, basic_config, free_port, spendgate_command
from tests.fake_upstream import FakeUpstream, Reply, fixture

ADMIN = "adm-exposure-7f3a"
METRICS_KEY = "mk-exposure-51c2"
CHAT = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hi"}]}'
EXEMPT = ("/healthz", "/readyz", "/metrics")


def raw_status(port: int, request: bytes) -> tuple[int, bytes]:
    """Send one raw request; the status and the whole response (``Connection: close``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1]), data


def get(proxy: ProxyProcess, path: str, host: str, **headers: str) -> httpx.Response:
    return httpx.get(proxy.url + path, headers={"host": host, **headers}, timeout=10)


# ---- Host ----------------------------------------------------------------------------------

@pytest.mark.parametrize("host", ["evil.example", "evil.example:4000", "127.0.0.1.nip.io",
                                  "localhost.evil.example", "[::2]:4000", ""])
def test_other_hosts_get_421_on_proxied_admin_and_docs_paths(proxy: ProxyProcess,
                                                            upstream: FakeUpstream,
                                                            host: str) -> None:
    before = proxy.sample("spendgate_requests_total", status="421") or 0
    r = httpx.post(proxy.url + "/openai/v1/chat/completions", content=CHAT,
                   headers={"host": host})
    assert r.status_code == 421
    assert r.json()["error"]["code"] == "spendgate_misdirected_request"
    assert "server.allowed_hosts" in r.json()["error"]["message"]
    r = httpx.post(proxy.url + "/anthropic/v1/messages", content=CHAT,
                   headers={"host": host, "anthropic-version": "2023-06-01"})
    assert r.status_code == 421 and r.json()["type"] == "error"
    for path in ("/admin/budgets", "/docs", "/openapi.json", "/", "/admin/budgets/"):
        r = get(proxy, path, host)
        assert r.status_code == 421, path
        assert "server.allowed_hosts" in r.json()["detail"]
    assert upstream.requests == []
    # Proxied refusals are counted like any call: status 421, nothing from the caller.
    assert proxy.sample("spendgate_requests_total", status="421", model="unknown",
                        project="unknown") == before + 2


def test_a_request_without_host_is_421(proxy: ProxyProcess, upstream: FakeUpstream) -> None:
    status, _ = raw_status(proxy.port, b"GET /openai/v1/models HTTP/1.0\r\n\r\n")
    assert status == 421
    assert upstream.requests == []


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST:4000", "127.0.0.1", "localhost.",
                                  "127.0.0.1:1", "[::1]", "[::1]:4000"])
def test_loopback_names_are_served_by_default_on_loopback(proxy: ProxyProcess,
                                                          upstream: FakeUpstream,
                                                          host: str) -> None:
    upstream.queue(Reply())
    assert httpx.get(proxy.url + "/openai/v1/models", headers={"host": host}).status_code == 200
    assert get(proxy, "/admin/budgets", host).status_code == 404  # admin off: no admin_key


@pytest.mark.parametrize("path", EXEMPT)
def test_probes_and_scrapes_are_served_whatever_the_host(proxy: ProxyProcess, path: str) -> None:
    # kubelet probes and Prometheus reach pods by IP: these answer any Host.
    assert get(proxy, path, "10.1.2.3:4000").status_code == 200


def test_listed_hosts_replace_the_default(spawn: Any, fake: FakeUpstream,
                                          upstream: FakeUpstream) -> None:
    listed = spawn(basic_config(fake, server={"allowed_hosts": ["Proxy.Internal", "::1"]}))
    upstream.queue(Reply())
    assert httpx.get(listed.url + "/openai/v1/models",
                     headers={"host": "proxy.internal:8443"}).status_code == 200
    assert httpx.get(listed.url + "/openai/v1/models",
                     headers={"host": "[::1]:4000"}).status_code == 200
    assert httpx.get(listed.url + "/openai/v1/models",
                     headers={"host": "localhost"}).status_code == 421


def test_star_allows_any_host(spawn: Any, fake: FakeUpstream, upstream: FakeUpstream) -> None:
    anywhere = spawn(basic_config(fake, server={"allowed_hosts": ["*"]}))
    upstream.queue(Reply())
    assert httpx.get(anywhere.url + "/openai/v1/models",
                     headers={"host": "whatever.example"}).status_code == 200


def test_binding_beyond_loopback_needs_allowed_hosts(tmp_path: Path, fake: FakeUpstream) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({**basic_config(fake), "server": {"host": "0.0.0.0"}}))
    checked = subprocess.run(spendgate_command("check-config", str(config)),
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 1
    assert checked.stdout.startswith("server.allowed_hosts: required"), checked.stdout
    loopback = tmp_path / "l.yaml"
    loopback.write_text(yaml.safe_dump(basic_config(fake)))
    # --host counts: the loopback default does not follow the proxy off loopback.
    served = subprocess.run(spendgate_command("serve", "--config", str(loopback), "--host",
                                              "0.0.0.0", "--port", str(free_port())),
                            capture_output=True, text=True, timeout=60)
    assert served.returncode == 1
    assert "server.allowed_hosts: required" in served.stderr, served.stderr


def test_the_image_default_serves_the_loopback_names_off_loopback(
        tmp_path: Path, fake: FakeUpstream, upstream: FakeUpstream) -> None:
    # The Dockerfile's CMD binds 0.0.0.0 and sets SPENDGATE_ALLOWED_HOSTS, which stands in
    # for server.allowed_hosts when the config sets none.
    port = free_port()
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(basic_config(fake)))
    log = (tmp_path / "log").open("wb")
    proc = subprocess.Popen(
        spendgate_command("serve", "--config", str(config), "--host", "0.0.0.0", "--port",
                          str(port), "--log-level", "warning"),
        env={**os.environ, "SPENDGATE_ALLOWED_HOSTS": "localhost, gw.example"},
        stdout=log, stderr=log)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url + "/healthz", timeout=1)
                break
            except httpx.HTTPError:
                assert proc.poll() is None and time.monotonic() < deadline, \
                    (tmp_path / "log").read_text()
                time.sleep(0.05)
        upstream.queue(Reply(), Reply())
        for host in ("localhost:4000", "GW.example"):
            assert httpx.get(url + "/openai/v1/models", headers={"host": host}
                             ).status_code == 200, host
        assert httpx.get(url + "/openai/v1/models", headers={"host": "127.0.0.1"}
                         ).status_code == 421
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        log.close()
    env_listed = subprocess.run(spendgate_command("check-config", str(config)),
                                capture_output=True, text=True, timeout=60,
                                env={**os.environ,
                                     "SPENDGATE_ALLOWED_HOSTS": "gw.example"})
    assert env_listed.returncode == 0, env_listed.stdout


# ---- Origin --------------------------------------------------------------------------------

def test_a_cross_site_browser_post_is_403_and_never_forwarded(proxy: ProxyProcess,
                                                              upstream: FakeUpstream) -> None:
    # A page on any site can send a "simple" text/plain POST to localhost with no preflight.
    before = proxy.sample("spendgate_requests_total", status="403") or 0
    r = httpx.post(proxy.url + "/openai/v1/chat/completions", content=CHAT,
                   headers={"content-type": "text/plain", "origin": "https://evil.example",
                            "x-spendgate-project": "victim"})
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "spendgate_forbidden_origin"
    assert "server.allowed_origins" in r.json()["error"]["message"]
    with pytest.raises(anthropic.PermissionDeniedError):
        anthropic.Anthropic(base_url=proxy.url + "/anthropic", api_key="sk-x", max_retries=0,
                            default_headers={"origin": "null"}).messages.create(
            model="claude-haiku-4-5", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert upstream.requests == []
    assert proxy.sample("spendgate_requests_total", status="403", model="unknown",
                        project="unknown") == before + 2
    # Not a proxied path: the proxy's own endpoints do not judge Origin.
    assert httpx.get(proxy.url + "/healthz", headers={"origin": "https://evil.example"}
                     ).status_code == 200


def test_listed_origins_are_let_through(spawn: Any, fake: FakeUpstream,
                                        upstream: FakeUpstream) -> None:
    listed = spawn(basic_config(fake, server={"allowed_origins": ["https://app.example"]}))
    upstream.queue(Reply(body=fixture("openai_chat_response.json")))
    api = openai.OpenAI(base_url=listed.url + "/openai/v1", api_key="sk-x", max_retries=0,
                        default_headers={"origin": "https://app.example"})
    api.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    for other in ("https://app.example.evil", "http://app.example", "https://APP.example/"):
        r = httpx.post(listed.url + "/openai/v1/chat/completions", content=CHAT,
                       headers={"origin": other})
        assert r.status_code == 403, other
    assert len(upstream.requests) == 1
    anyone = spawn(basic_config(fake, server={"allowed_origins": ["*"]}))
    upstream.queue(Reply())
    assert httpx.get(anyone.url + "/openai/v1/models",
                     headers={"origin": "https://any.example"}).status_code == 200


# ---- docs, redirects, metrics key ----------------------------------------------------------

@pytest.fixture(scope="module")
def guarded(fake: FakeUpstream, spawn: Any) -> ProxyProcess:
    return spawn(basic_config(fake, admin_key=ADMIN,  # type: ignore[no-any-return]
                              metrics_key=METRICS_KEY))


def test_docs_and_openapi_are_404_without_an_admin_key(proxy: ProxyProcess) -> None:
    for path in ("/docs", "/openapi.json", "/redoc", "/docs/oauth2-redirect"):
        r = httpx.get(proxy.url + path, headers={"authorization": "Bearer anything"})
        assert r.status_code == 404, path


def test_docs_and_openapi_need_the_admin_key(guarded: ProxyProcess) -> None:
    for path in ("/docs", "/openapi.json"):
        assert httpx.get(guarded.url + path).status_code == 404, path
        assert httpx.get(guarded.url + path, headers={"authorization": "Bearer nope"}
                         ).status_code == 404, path
    spec = httpx.get(guarded.url + "/openapi.json", headers={"authorization": f"Bearer {ADMIN}"})
    assert spec.status_code == 200 and "/admin/budgets" in spec.json()["paths"]
    page = httpx.get(guarded.url + "/docs", headers={"x-spendgate-admin-key": ADMIN})
    assert page.status_code == 200 and "swagger" in page.text.lower()
    assert '"/admin/budgets"' in page.text  # the spec is in the page: no second, keyless fetch
    assert ADMIN not in page.text


def test_no_redirect_is_built_from_the_callers_host(guarded: ProxyProcess) -> None:
    for path in ("/admin/budgets/", "/healthz/", "/metrics/"):
        r = httpx.get(guarded.url + path, headers={"authorization": f"Bearer {ADMIN}"})
        assert r.status_code == 404, path
        assert "location" not in r.headers


def test_metrics_key_guards_metrics(guarded: ProxyProcess) -> None:
    url = guarded.url + "/metrics"
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": METRICS_KEY},
                    {"authorization": f"Basic {METRICS_KEY}"}, {"x-spendgate-admin-key": ADMIN}):
        r = httpx.get(url, headers=headers)
        assert r.status_code == 401, headers
        assert r.headers["www-authenticate"] == "Bearer"
        assert "spendgate_" not in r.text
    ok = httpx.get(url, headers={"authorization": f"Bearer {METRICS_KEY}"})
    assert ok.status_code == 200 and "spendgate_requests_total" in ok.text
    assert httpx.get(guarded.url + "/healthz").status_code == 200  # probes need no key
    assert METRICS_KEY not in guarded.log()


def test_metrics_key_is_applied_on_reload(spawn: Any, fake: FakeUpstream) -> None:
    config = basic_config(fake, metrics_key="mk-before")
    proxy = spawn(config)
    proxy.config_path.write_text(yaml.safe_dump({**config, "metrics_key": "mk-after"}))
    assert proxy.proc is not None
    proxy.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while httpx.get(proxy.url + "/metrics", headers={"authorization": "Bearer mk-after"}
                    ).status_code != 200:
        assert time.monotonic() < deadline, proxy.log()
        time.sleep(0.05)
    assert httpx.get(proxy.url + "/metrics", headers={"authorization": "Bearer mk-before"}
                     ).status_code == 401


def test_hosts_never_seen_before_do_not_pile_up_in_memory(spawn: Any, fake: FakeUpstream) -> None:
    # Verdicts are remembered per raw Host value, a bounded number of them: never the
    # values an attacker can make a megabyte long.
    # Heads up to 4 MB, so a 1 MB Host reaches the check instead of the head limit (431).
    proxy = spawn(basic_config(fake, server={"max_header_kb": 4096}))
    assert proxy.proc is not None

    def rss_mb() -> float:
        status = Path(f"/proc/{proxy.proc.pid}/status").read_text()  # type: ignore[union-attr]
        return int(next(line.split()[1] for line in status.splitlines()
                        if line.startswith("VmRSS:"))) / 1024

    filler = "h" * (1024 * 1024)
    with httpx.Client(timeout=30) as client:
        client.get(proxy.url + "/openai/v1/models", headers={"host": f"warm{filler}"})
        before = rss_mb()
        for i in range(100):
            r = client.get(proxy.url + "/openai/v1/models", headers={"host": f"{i}{filler}"})
            assert r.status_code == 421
    assert rss_mb() - before < 40, "distinct Host values are being kept"
