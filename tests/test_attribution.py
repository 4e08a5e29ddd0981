"""Virtual keys, projects and key custody, through a real proxy."""

from __future__ import annotations

import base64
import socket
from typing import Any

import anthropic
import httpx
import openai
import pytest

from spendgate.config import VirtualKey
from spendgate.hotpath.attribution import KeyRing, credential_secrets
from tests.conftest import ProxyProcess, basic_config
from tests.fake_upstream import FakeUpstream, Reply, fixture

SEARCH_KEY = "sg-search-0123456789abcdef"
SUPPORT_KEY = "sg-support-fedcba9876543210"


@pytest.fixture(scope="module")
def keyed(fake: FakeUpstream, spawn: Any) -> ProxyProcess:
    config = basic_config(fake, keys=[{"key": "${TEAM_SEARCH_KEY}", "project": "search"},
                                      {"key": SUPPORT_KEY, "project": "support"}])
    config["upstreams"]["openai"]["api_key"] = "${OPENAI_API_KEY}"
    config["upstreams"]["anthropic"]["api_key"] = "sk-ant-proxy-owned"
    config["upstreams"]["google"] = {"url": fake.url, "provider": "openai",
                                     "api_key": "sk-goog-proxy", "api_key_header": "X-Goog-Api-Key"}
    return spawn(config, env={"TEAM_SEARCH_KEY": SEARCH_KEY, "OPENAI_API_KEY": "sk-proxy-owned"})  # type: ignore[no-any-return]


def test_virtual_key_sets_project_and_is_never_forwarded(keyed: ProxyProcess,
                                                         upstream: FakeUpstream) -> None:
    upstream.queue(Reply(body=fixture("openai_chat_response.json")))
    api = openai.OpenAI(base_url=keyed.url + "/openai/v1", api_key=SEARCH_KEY, max_retries=0,
                        default_headers={"x-spendgate-project": "support"})  # cannot re-route
    api.chat.completions.create(model="o4-mini", messages=[{"role": "user", "content": "x"}])
    seen = upstream.requests[-1]
    assert seen.header("authorization") == "Bearer sk-proxy-owned"
    assert all(SEARCH_KEY not in v for _, v in seen.headers)
    assert keyed.sample("spendgate_requests_total", project="search", status="200") == 1
    assert keyed.sample("spendgate_requests_total", project="support") is None
    assert SEARCH_KEY not in keyed.metrics_text() and SEARCH_KEY not in keyed.log()


def test_anthropic_sdk_with_virtual_key_gets_proxy_key(keyed: ProxyProcess,
                                                       upstream: FakeUpstream) -> None:
    upstream.queue(Reply(body=fixture("anthropic_messages_response_cached.json")))
    anthropic.Anthropic(base_url=keyed.url + "/anthropic", api_key=SUPPORT_KEY,
                        max_retries=0).messages.create(
        model="claude-sonnet-4-5-20250929", max_tokens=10,
        messages=[{"role": "user", "content": "x"}])
    seen = upstream.requests[-1]
    assert seen.header("x-api-key") == "sk-ant-proxy-owned"
    assert seen.header("authorization") is None
    assert keyed.sample("spendgate_requests_total", project="support", status="200") == 1


@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer sg-wrong"},
                                     {"x-api-key": SEARCH_KEY[:-1]},
                                     {"x-spendgate-key": "nope"}])
def test_missing_or_wrong_key_is_401_and_counted(keyed: ProxyProcess, upstream: FakeUpstream,
                                                 headers: dict[str, str]) -> None:
    before = keyed.sample("spendgate_requests_total", status="401") or 0
    r = httpx.post(keyed.url + "/openai/v1/chat/completions",
                   content=b'{"model":"gpt-4o","messages":[]}', headers=headers)
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert SEARCH_KEY not in r.text
    assert upstream.requests == []
    # Refused: counted, but with nothing its body or headers claimed.
    assert keyed.sample("spendgate_requests_total", status="401", model="unknown",
                        project="unknown") == before + 1


def test_401_in_anthropic_protocol(keyed: ProxyProcess) -> None:
    with pytest.raises(anthropic.AuthenticationError) as caught:
        anthropic.Anthropic(base_url=keyed.url + "/anthropic", api_key="bad",
                            max_retries=0).messages.create(
            model="claude-sonnet-4-5-20250929", max_tokens=10, messages=[])
    assert caught.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]


def test_key_in_spendgate_header_leaves_caller_credential_to_custody(
        keyed: ProxyProcess, upstream: FakeUpstream) -> None:
    upstream.queue(Reply())
    httpx.get(keyed.url + "/openai/v1/models",
              headers={"x-spendgate-key": SUPPORT_KEY, "authorization": "Bearer sk-caller"})
    seen = upstream.requests[-1]
    assert seen.header("authorization") == "Bearer sk-proxy-owned"  # api_key set: replaced
    assert seen.header("x-spendgate-key") is None


def test_without_keys_project_comes_from_header_and_caller_key_is_forwarded(
        proxy: ProxyProcess, upstream: FakeUpstream) -> None:
    upstream.queue(Reply(body=fixture("openai_chat_response.json")), Reply())
    httpx.post(proxy.url + "/openai/v1/chat/completions", content=b'{"model":"o4-mini"}',
               headers={"authorization": "Bearer sk-own", "x-spendgate-project": "hdr",
                        "x-spendgate-user": "alice@example.com"})
    assert upstream.requests[-1].header("authorization") == "Bearer sk-own"
    httpx.post(proxy.url + "/openai/v1/chat/completions", content=b'{"model":"o4-mini"}')
    assert proxy.sample("spendgate_requests_total", project="hdr") == 1
    assert proxy.sample("spendgate_requests_total", project="default") >= 1
    assert "alice@example.com" not in proxy.metrics_text()  # users never become labels


def test_keyring_compares_every_key() -> None:
    ring = KeyRing([VirtualKey(key="a" * 20, project="p1"), VirtualKey(key="b" * 20,
                                                                       project="p2")])
    found = ring.match(b"b" * 20)
    assert found is not None and (found.project, found.name) == ("p2", "p2#1")
    assert ring.match(b"a" * 19) is None
    assert not KeyRing(None).enabled


def test_virtual_key_never_travels_even_beside_x_spendgate_key(keyed: ProxyProcess,
                                                                upstream: FakeUpstream) -> None:
    # "local" has no api_key: the caller's own credential is forwarded, but not a virtual key
    upstream.queue(Reply(), Reply())
    httpx.get(keyed.url + "/local/v1/models",
              headers={"x-spendgate-key": SEARCH_KEY, "authorization": f"Bearer {SEARCH_KEY}"})
    httpx.get(keyed.url + "/local/v1/models",
              headers={"x-spendgate-key": SEARCH_KEY, "x-api-key": SUPPORT_KEY,
                       "authorization": "Bearer sk-own-provider-key"})
    first, second = upstream.requests
    assert all(SEARCH_KEY not in v and SUPPORT_KEY not in v for _, v in first.headers)
    assert all(SUPPORT_KEY not in v for _, v in second.headers)
    assert second.header("authorization") == "Bearer sk-own-provider-key"


def test_custom_api_key_header_is_kept_in_custody(keyed: ProxyProcess,
                                                  upstream: FakeUpstream) -> None:
    upstream.queue(Reply())
    httpx.get(keyed.url + "/google/v1/models",
              headers={"x-spendgate-key": SEARCH_KEY, "x-goog-api-key": "caller-own"})
    seen = upstream.requests[-1]
    assert [v for k, v in seen.headers if k.lower() == "x-goog-api-key"] == ["sk-goog-proxy"]


def test_credential_secrets_in_any_scheme() -> None:
    basic = base64.b64encode(b"user:vk-1")
    assert credential_secrets(b"  vk-1 ") == [b"vk-1"]
    assert credential_secrets(b"Bearer vk-1") == [b"Bearer vk-1", b"vk-1"]
    assert credential_secrets(b"Token   vk-1") == [b"Token   vk-1", b"vk-1"]
    assert credential_secrets(b"Basic " + basic)[-2:] == [b"user", b"vk-1"]
    assert credential_secrets(b"Basic !!not-base64") == [b"Basic !!not-base64",
                                                         b"!!not-base64"]
def test_a_key_whose_variable_is_unset_admits_nothing(fake: FakeUpstream, spawn: Any,
                                                      upstream: FakeUpstream) -> None:
    # Deploy examples take keys from a Secret, allowed empty (${VAR:-}): without it the
    # proxy still starts, keys on, and refuses every call that does not bring a key that
    # is set. (A bare ${VAR} unset stops the proxy at start: tests/test_config.py.)
    config = basic_config(fake, keys=[{"key": "${SPENDGATE_TEST_UNSET_KEY:-}", "project": "a"},
                                      {"key": "${SPENDGATE_TEST_UNSET_KEY_2:-}", "project": "b"},
                                      {"key": SUPPORT_KEY, "project": "support"}])
    proxy = spawn(config)
    url = proxy.url + "/openai/v1/models"
    for headers in ({}, {"authorization": "Bearer"}, {"x-api-key": ""}, {"api-key": '""'}):
        assert httpx.get(url, headers=headers).status_code == 401, headers
    for raw in (b"authorization: Bearer ", b"x-spendgate-key:  ", b"x-api-key: Bearer  "):
        with socket.create_connection(("127.0.0.1", proxy.port)) as sock:  # what httpx refuses
            sock.sendall(b"GET /openai/v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n%s\r\n"
                         b"Connection: close\r\n\r\n" % raw)
            assert sock.recv(65536).startswith(b"HTTP/1.1 401"), raw
    upstream.queue(Reply())
    assert httpx.get(url, headers={"x-spendgate-key": SUPPORT_KEY}).status_code == 200
    assert len(upstream.requests) == 1
    assert "keys.0.key: empty" in proxy.log() and "keys.1.key: empty" in proxy.log()
