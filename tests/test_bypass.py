"""No way around metering, budgets or keys (issue 15): what the upstream serves is metered.

Each case here is a way a caller got a call served without it being metered, budgeted or
its key kept, found on main: a percent-encoded path, a body orjson refuses but Python's json
reads, a body nobody can read under a block budget, a ``max_tokens`` beyond any bound, a
``x-spendgate_key`` or a ``Token``-scheme virtual key forwarded, an upstream's own
``x-spendgate-*`` headers passed back. The metering cases run against ``LenientUpstream``,
which routes decoded paths and parses bodies with Python's json, as Python servers do.
"""

from __future__ import annotations

import base64
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import ProxyProcess, basic_config
from tests.fake_upstream import FakeUpstream, Reply, fixture
from tests.lenient_upstream import LenientUpstream

ANTHROPIC = {"anthropic-version": "2023-06-01", "content-type": "application/json"}
JSON = {"content-type": "application/json"}
VIRTUAL_KEY = "vk-bypass-0123456789abcdef"


@pytest.fixture(scope="module")
def lenient() -> Iterator[LenientUpstream]:
    server = LenientUpstream(input_tokens=1000, output_tokens=500).start()
    yield server
    server.stop()


@pytest.fixture()
def python_upstream(lenient: LenientUpstream) -> LenientUpstream:
    lenient.requests.clear()
    return lenient


@pytest.fixture(scope="module")
def guarded(lenient: LenientUpstream, spawn: Any) -> ProxyProcess:
    """A proxy in front of the lenient upstream with two block budgets: $0.01 for project
    ``capped``, and $0.001 for model ``gpt-4.1`` (any project)."""
    upstream = {"url": lenient.url, "timeout_s": 5}
    return spawn({  # type: ignore[no-any-return]
        "upstreams": {"openai": {**upstream, "provider": "openai"},
                      "anthropic": {**upstream, "provider": "anthropic"}},
        "budgets": [
            {"name": "capped", "project": "capped", "limit_usd": 0.01, "action": "block",
             "window": "total"},
            {"name": "gpt41", "model": "gpt-4.1", "limit_usd": 0.001, "action": "block",
             "window": "total"},
        ]})


def chat(model: str, extra: str = "") -> bytes:
    return (b'{"model": "%s", "messages": [{"role": "user", "content": "Hi"}]%s}'
            % (model.encode(), extra.encode()))


def post(proxy: ProxyProcess, path: str, body: bytes, project: str,
         headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(proxy.url + path, content=body,
                      headers={**(headers or JSON), "x-spendgate-project": project})


# ---- item 1: meter what the upstream will serve -------------------------------------------

def test_percent_encoded_paths_are_metered_and_counted(guarded: ProxyProcess,
                                                       python_upstream: LenientUpstream) -> None:
    r = post(guarded, "/openai/v1/chat/%63ompletions", chat("gpt-4o-mini"), "encoded")
    assert r.status_code == 200, r.text
    r = post(guarded, "/anthropic/v1/%6Dessages", chat("claude-haiku-4-5", ', "max_tokens": 64'),
             "encoded", ANTHROPIC)
    assert r.status_code == 200, r.text
    # The upstream got the canonical path: the one spendgate metered.
    assert [s.raw_path for s in python_upstream.requests] == ["/v1/chat/completions",
                                                              "/v1/messages"]
    for model, cost in (("gpt-4o-mini", 0.00045), ("claude-haiku-4-5", 0.0035)):
        # 1000 input, 500 output tokens: gpt-4o-mini at $0.15/$0.60 per Mtok is $0.00045,
        # claude-haiku-4-5 at $1/$5 per Mtok is $0.0035.
        labels = {"project": "encoded", "model": model}
        assert guarded.sample("spendgate_tokens_total", type="input", source="reported",
                              **labels) == 1000
        assert guarded.sample("spendgate_tokens_total", type="output", source="reported",
                              **labels) == 500
        assert guarded.sample("spendgate_cost_usd_total", **labels) == pytest.approx(cost)


def test_percent_encoded_paths_are_stopped_by_a_block_budget(
        guarded: ProxyProcess, python_upstream: LenientUpstream) -> None:
    # Without max_tokens, a gpt-4o call may cost 16,384 output tokens at $10/Mtok ($0.16),
    # and a claude-haiku-4-5 one with max_tokens 4000 at $5/Mtok $0.02: over the $0.01 cap.
    calls = [("/openai/v1/chat/%63ompletions", chat("gpt-4o"), JSON),
             ("/openai/v1/chat/%63%6F%6Dpletions/", chat("gpt-4o"), JSON),
             ("/openai/v1//chat/completions;x=1", chat("gpt-4o"), JSON),
             ("/anthropic/v1/%6Dessages", chat("claude-haiku-4-5", ', "max_tokens": 4000'),
              ANTHROPIC)]
    for path, body, headers in calls:
        r = post(guarded, path, body, "capped", headers)
        assert r.status_code == 429, (path, r.status_code, r.text)
    assert python_upstream.requests == []
    assert guarded.sample("spendgate_budget_blocked_total", budget="capped") == len(calls)


@pytest.mark.parametrize("override", ["X-HTTP-Method-Override", "X-HTTP-Method",
                                      "X-Method-Override"])
def test_a_method_override_is_metered_as_the_method_it_names(
        guarded: ProxyProcess, python_upstream: LenientUpstream, override: str) -> None:
    # Servers that honour these headers (Google APIs, Express, Rails) serve this GET as the
    # POST it names: it is metered, so the block budget holds it.
    r = httpx.request("GET", guarded.url + "/openai/v1/chat/completions", content=chat("gpt-4o"),
                      headers={**JSON, "x-spendgate-project": "capped", override: "post"})
    assert r.status_code == 429, r.text
    assert python_upstream.requests == []


@pytest.mark.parametrize("path", ["/openai/v1/chat%2Fcompletions", "/openai/v1/chat%2fx",
                                  "/openai/v1/%5Cchat", "/openai/v1/chat%0A", "/openai/v1/a%7F",
                                  "/openai/v1/%zz", "/openai/v1/a%2", "/openai/v1/a%255c",
                                  "/openai/v1/..;/x"])
def test_ambiguous_paths_are_400_in_the_callers_protocol(
        guarded: ProxyProcess, python_upstream: LenientUpstream, path: str) -> None:
    before = guarded.sample("spendgate_requests_total", status="400") or 0
    with socket.create_connection(("127.0.0.1", guarded.port)) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n"
                     f"Connection: close\r\n\r\n{{}}".encode())
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 400"), reply
    assert b'"code":"spendgate_bad_request"' in reply
    assert python_upstream.requests == []
    assert guarded.eventually("spendgate_requests_total", status="400") == before + 1


# ---- item 2: bodies read as leniently as upstreams read them ------------------------------

LENIENT_BODIES = {
    "nan": b'{"model": "gpt-4.1", "max_tokens": 1, "temperature": NaN, '
           b'"messages": [{"role": "user", "content": "Hi"}]}',
    "lone surrogate": b'{"model": "gpt-4.1", "max_tokens": 1, '
                      b'"messages": [{"role": "user", "content": "Hi \\ud800"}]}',
    "bom": b'\xef\xbb\xbf{"model": "gpt-4.1", "max_tokens": 1, '
           b'"messages": [{"role": "user", "content": "Hi"}]}',
    "1e400": b'{"model": "gpt-4.1", "max_tokens": 1, "frequency_penalty": 1e400, '
             b'"seed": 123456789012345678901234567890, '
             b'"messages": [{"role": "user", "content": "Hi"}]}',
}


def test_bodies_python_json_reads_are_held_to_their_models_budget(
        guarded: ProxyProcess, python_upstream: LenientUpstream) -> None:
    # Fill the $0.001 gpt-4.1 budget: a call reserving ~$0.0001 (max_tokens 1) that the
    # upstream reports at 1000 input + 500 output tokens ($0.006). Spend lands once the
    # call is settled; probe until it refuses.
    probe = chat("gpt-4.1", ', "max_tokens": 1')
    deadline = time.monotonic() + 10
    while post(guarded, "/openai/v1/chat/completions", probe, "lenient").status_code != 429:
        assert time.monotonic() < deadline, "the gpt-4.1 budget never filled"
        time.sleep(0.1)
    python_upstream.requests.clear()
    for name, body in LENIENT_BODIES.items():
        r = post(guarded, "/openai/v1/chat/completions", body, "lenient-bodies")
        assert r.status_code == 429, (name, r.status_code, r.text)
        assert "gpt41" in r.json()["error"]["message"]
    assert python_upstream.requests == []
    assert guarded.sample("spendgate_requests_total", project="lenient-bodies", model="gpt-4.1",
                          status="429") == len(LENIENT_BODIES)


def test_lenient_bodies_reach_the_upstream_unchanged_and_are_counted(
        guarded: ProxyProcess, python_upstream: LenientUpstream) -> None:
    # gpt-4o-mini: no budget covers it, so the body goes upstream as the caller sent it,
    # and its usage is read and priced like any other call's.
    for name, body in LENIENT_BODIES.items():
        body = body.replace(b"gpt-4.1", b"gpt-4o-mini")
        r = post(guarded, "/openai/v1/chat/completions", body, "lenient-" + name)
        assert r.status_code == 200, (name, r.text)
        assert python_upstream.requests[-1].body == body
        assert guarded.sample("spendgate_tokens_total", project="lenient-" + name,
                              model="gpt-4o-mini", type="output", source="reported") == 500


@pytest.mark.parametrize(("path", "headers", "shape"), [
    ("/openai/v1/chat/completions", JSON, "openai"),
    ("/anthropic/v1/messages", ANTHROPIC, "anthropic")])
def test_unreadable_body_under_a_block_budget_is_400(
        guarded: ProxyProcess, python_upstream: LenientUpstream, path: str,
        headers: dict[str, str], shape: str) -> None:
    r = post(guarded, path, b'{"model": gpt', "capped", headers)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    if shape == "anthropic":
        assert r.json()["type"] == "error" and error["type"] == "invalid_request_error"
    else:
        assert error["code"] == "spendgate_bad_request"
    assert "JSON" in error["message"]
    assert python_upstream.requests == []
    # A refused call chooses no label: counted as model and project "unknown" (no key here).
    assert guarded.eventually("spendgate_requests_total", project="unknown", model="unknown",
                              status="400") is not None


# ---- item 6 (small fixes): parameter bounds, headers --------------------------------------

@pytest.mark.parametrize(("path", "field", "value"), [
    ("/openai/v1/chat/completions", "max_tokens", "1e300"),
    ("/openai/v1/chat/completions", "max_tokens", "9223372036854775808"),
    ("/openai/v1/chat/completions", "max_completion_tokens", "1e400"),
    ("/openai/v1/chat/completions", "n", "9223372036854775808"),
    ("/openai/v1/responses", "max_output_tokens", "1e300"),
    ("/anthropic/v1/messages", "max_tokens", "1e300")])
def test_absurd_token_limits_are_400_not_500(guarded: ProxyProcess,
                                              python_upstream: LenientUpstream, path: str,
                                              field: str, value: str) -> None:
    project = f"absurd-{path.split('/')[1]}-{field}-{len(value)}"
    refused = {"project": "unknown", "model": "unknown", "status": "400"}
    before = guarded.sample("spendgate_requests_total", **refused) or 0
    body = chat("gpt-4.1", f', "{field}": {value}')
    anthropic = path.startswith("/anthropic")
    r = post(guarded, path, body, project, ANTHROPIC if anthropic else JSON)
    assert r.status_code == 400, r.text
    message = r.json()["error"]["message"]
    assert field in message and "2147483647" in message
    assert (r.json().get("type") == "error") is anthropic
    assert python_upstream.requests == []
    deadline = time.monotonic() + 5
    while (guarded.sample("spendgate_requests_total", **refused) or 0) < before + 1:
        assert time.monotonic() < deadline, "the refused call was not counted"
        time.sleep(0.05)
    assert guarded.sample("spendgate_requests_total", project=project) is None
    assert "Traceback" not in guarded.log()


@pytest.fixture(scope="module")
def keyed(fake: FakeUpstream, spawn: Any) -> ProxyProcess:
    return spawn(basic_config(  # type: ignore[no-any-return]
        fake, keys=[{"key": VIRTUAL_KEY, "project": "keyed"}]))


BASIC = base64.b64encode(f"me:{VIRTUAL_KEY}".encode()).decode()


@pytest.mark.parametrize("headers", [
    {"x-spendgate-key": VIRTUAL_KEY, "x-spendgate_key": VIRTUAL_KEY},
    {"x-spendgate-key": VIRTUAL_KEY, "X_SPENDGATE_KEY": VIRTUAL_KEY},
    {"x-spendgate-key": VIRTUAL_KEY, "authorization": f"Token {VIRTUAL_KEY}"},
    {"x-spendgate-key": VIRTUAL_KEY, "api-key": f"Key   {VIRTUAL_KEY}"},
    {"x-spendgate-key": VIRTUAL_KEY, "authorization": f"Basic {BASIC}"},
    {"authorization": f"Token {VIRTUAL_KEY}"}])
def test_a_virtual_key_never_reaches_the_upstream_in_any_spelling(
        keyed: ProxyProcess, upstream: FakeUpstream, headers: dict[str, str]) -> None:
    r = httpx.post(keyed.url + "/openai/v1/chat/completions", content=chat("gpt-4o-mini"),
                   headers={**JSON, **headers})
    assert r.status_code == 200, r.text
    seen = upstream.requests[-1]
    assert all(VIRTUAL_KEY not in value and BASIC not in value for _, value in seen.headers)
    assert not [name for name, _ in seen.headers
                if name.lower().replace("_", "-").startswith("x-spendgate")]


@pytest.mark.parametrize("path", ["/openai/v1/chat/completions", "/openai/v1/models"])
def test_upstream_spendgate_headers_never_reach_the_caller(proxy: ProxyProcess,
                                                          upstream: FakeUpstream,
                                                          path: str) -> None:
    upstream.queue(Reply(body=fixture("openai_chat_response.json"), headers={
        "x-spendgate-request-id": "forged-by-upstream", "X-Spendgate-Cost-Usd": "0",
        "x_spendgate_budget": "unlimited"}))
    r = httpx.post(proxy.url + path, content=chat("gpt-4o-mini"), headers=JSON)
    assert r.status_code == 200
    ours = r.headers.get_list("x-spendgate-request-id")
    assert len(ours) == 1 and ours != ["forged-by-upstream"]
    assert [k for k in r.headers if k.replace("_", "-").startswith("x-spendgate")] == [
        "x-spendgate-request-id"]
