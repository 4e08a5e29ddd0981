"""Vertex AI through a real proxy: Gemini bodies on ``provider: gemini`` with the caller's
Bearer token or the proxy's own service account (``google_credentials``), and Anthropic
models on Vertex (``:rawPredict`` / ``:streamRawPredict``) read by the Anthropic reader.

The service account is real in all but name: an RSA key made here, in a service-account
JSON whose ``token_uri`` is a local token endpoint that checks the JWT assertion against the
key's public half before it mints a token; the fake Vertex refuses any other token.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import anthropic
import pytest
from aiohttp import web

from tests.conftest import ProxyProcess, need
from tests.fake_upstream import FakeUpstream, Reply, SeenRequest, fixture
from tests.threaded_app import ThreadedApp

try:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from google import genai
    from google.auth import jwt
    from google.genai import errors as genai_errors
    from google.genai import types
    from google.oauth2.credentials import Credentials
except ImportError:  # pragma: no cover - CI installs the test extra
    genai = None  # type: ignore[assignment]

PROJECT, LOCATION = "acme-prod", "us-central1"
CALLER_TOKEN = "ya29.caller-own-token"
SA_EMAIL = "spendgate@acme-prod.iam.gserviceaccount.com"
PREFIX = f"/v1beta1/projects/{PROJECT}/locations/{LOCATION}/publishers"
# Gemini transcripts as in test_gemini.py: (4172 - 4056) * 1.25 + 4056 * 0.125 + 447 * 10
# = 5122 per Mtok = $0.005122 at gemini/gemini-2.5-pro's rates.
GEMINI_COST = 0.005122
# Anthropic transcripts (anthropic_messages_*_cached): input 21, cache write 188, cache read
# 3072, output 57, at claude-sonnet-4-5's rates (3, 3.75, 0.3, 15 per Mtok):
# 21 * 3 + 188 * 3.75 + 3072 * 0.3 + 57 * 15 = 63 + 705 + 921.6 + 855 = 2544.6 per Mtok
CLAUDE_COST = 0.0025446


class TokenEndpoint(ThreadedApp):
    """Google's OAuth token endpoint for service accounts (JWT bearer grant)."""

    def __init__(self, public_pem: bytes) -> None:
        super().__init__()
        self.public_pem = public_pem
        self.minted: list[str] = []
        self.expires_in = 3600

    def make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/token", self._token)
        return app

    async def _token(self, request: web.Request) -> web.Response:
        form = parse_qs((await request.read()).decode())
        try:  # the assertion must be signed by the service account's key
            claims = jwt.decode(form["assertion"][0], certs=self.public_pem.decode(),
                                audience="https://oauth2.googleapis.com/token")
        except (KeyError, ValueError) as error:
            return web.json_response({"error": "invalid_grant", "error_description": str(error)},
                                     status=400)
        assert claims["iss"] == SA_EMAIL
        token = f"ya29.minted-{len(self.minted) + 1}"
        self.minted.append(token)
        return web.json_response({"access_token": token, "expires_in": self.expires_in,
                                  "token_type": "Bearer"})


@pytest.fixture(scope="module")
def service_account(tmp_path_factory: Any) -> Iterator[tuple[Path, TokenEndpoint]]:
    if genai is None:
        need("google-genai / google-auth are not installed (pip install -e '.[test]')")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    endpoint = TokenEndpoint(public_pem).start()
    path = tmp_path_factory.mktemp("sa") / "service-account.json"
    path.write_text(json.dumps({
        "type": "service_account", "project_id": PROJECT, "private_key_id": "0123abcd",
        "private_key": private_pem, "client_email": SA_EMAIL, "client_id": "1234567890",
        "token_uri": endpoint.url + "/token"}))
    yield path, endpoint
    endpoint.stop()


@pytest.fixture(scope="module")
def vertex_proxy(fake: FakeUpstream, spawn: Any,
                 service_account: tuple[Path, TokenEndpoint]) -> ProxyProcess:
    up = {"url": fake.url, "provider": "gemini", "timeout_s": 5}
    return spawn({"upstreams": {  # type: ignore[no-any-return]
        "vertex": up,
        "vertex-sa": {**up, "google_credentials": str(service_account[0])}}})


def gemini_client(proxy: ProxyProcess, upstream: str, project: str) -> Any:
    return genai.Client(
        vertexai=True, project=PROJECT, location=LOCATION,
        credentials=Credentials(token=CALLER_TOKEN),
        http_options=types.HttpOptions(base_url=f"{proxy.url}/{upstream}",
                                       headers={"x-spendgate-project": project},
                                       retry_options=types.HttpRetryOptions(attempts=1)))


def minted_only(endpoint: TokenEndpoint) -> Any:
    def check(seen: SeenRequest) -> Reply | None:
        if seen.header("authorization") in {f"Bearer {t}" for t in endpoint.minted}:
            return None
        return Reply(status=401, body=b'{"error":{"code":401,"message":"bad token",'
                                      b'"status":"UNAUTHENTICATED"}}')
    return check


def exact(proxy: ProxyProcess, project: str, provider: str, cost: float, **counts: int) -> None:
    for kind, value in counts.items():
        assert proxy.sample("spendgate_tokens_total", project=project, type=kind,
                            source="reported") == value, kind
    assert proxy.sample("spendgate_cost_usd_total", project=project,
                        provider=provider) == pytest.approx(cost, rel=1e-12)


def test_gemini_on_vertex_with_the_callers_token(vertex_proxy: ProxyProcess,
                                                 upstream: FakeUpstream) -> None:
    upstream.queue(Reply(body=fixture("gemini_generate_content_response.json")))
    client = gemini_client(vertex_proxy, "vertex", "vx-caller")
    result = client.models.generate_content(model="gemini-2.5-pro", contents="Capital?")
    assert result.text == "The capital of France is **Paris**."
    seen = upstream.requests[-1]
    assert seen.raw_path == f"{PREFIX}/google/models/gemini-2.5-pro:generateContent"
    assert seen.header("authorization") == f"Bearer {CALLER_TOKEN}"
    exact(vertex_proxy, "vx-caller", "gcp.gemini", GEMINI_COST, input=4172,
          cached_input=4056, output=447, reasoning=438)


def test_service_account_tokens_minted_cached_and_refreshed(
        vertex_proxy: ProxyProcess, upstream: FakeUpstream,
        service_account: tuple[Path, TokenEndpoint]) -> None:
    endpoint = service_account[1]
    upstream.check = minted_only(endpoint)
    gemini = Reply(body=fixture("gemini_generate_content_response.json"))
    try:
        client = gemini_client(vertex_proxy, "vertex-sa", "vx-sa")
        # google-auth refreshes a token within minutes of its expiry: a 60 s token is
        # refreshed on each call...
        endpoint.expires_in = 60
        upstream.queue(gemini, gemini)
        client.models.generate_content(model="gemini-2.5-pro", contents="Capital?")
        client.models.generate_content(model="gemini-2.5-pro", contents="Capital?")
        assert endpoint.minted == ["ya29.minted-1", "ya29.minted-2"]
        # ...an hour's token is minted once and kept while valid.
        endpoint.expires_in = 3600
        upstream.queue(gemini, Reply(content_type="text/event-stream", chunks=[
            e + b"\r\n\r\n" for e in fixture("gemini_stream_generate_content.sse")
            .split(b"\r\n\r\n") if e.strip()]))
        client.models.generate_content(model="gemini-2.5-pro", contents="Capital?")
        list(client.models.generate_content_stream(model="gemini-2.5-pro", contents="Capital?"))
        assert endpoint.minted == ["ya29.minted-1", "ya29.minted-2", "ya29.minted-3"]
        seen = upstream.requests[-1]
        assert seen.header("authorization") == "Bearer ya29.minted-3"
        assert CALLER_TOKEN not in str(seen.headers)  # custody: only the proxy's token
    finally:
        upstream.check = None
    exact(vertex_proxy, "vx-sa", "gcp.vertex_ai", 4 * GEMINI_COST, input=4 * 4172,
          cached_input=4 * 4056, output=4 * 447, reasoning=4 * 438)


def test_anthropic_models_on_vertex(vertex_proxy: ProxyProcess, upstream: FakeUpstream) -> None:
    upstream.queue(Reply(body=fixture("anthropic_messages_response_cached.json")),
                   Reply(content_type="text/event-stream", chunks=[
                       e + b"\n\n" for e in fixture("anthropic_messages_stream_cached.sse")
                       .split(b"\n\n") if e.strip()]))
    client = anthropic.AnthropicVertex(
        region=LOCATION, project_id=PROJECT, access_token=CALLER_TOKEN, max_retries=0,
        base_url=f"{vertex_proxy.url}/vertex/v1",
        default_headers={"x-spendgate-project": "vx-claude"})
    message = client.messages.create(model="claude-sonnet-4-5@20250929", max_tokens=1024,
                                     messages=[{"role": "user", "content": "Capital?"}])
    assert message.usage.cache_read_input_tokens == 3072
    assert upstream.requests[-1].raw_path == (
        f"/v1/projects/{PROJECT}/locations/{LOCATION}/publishers/anthropic/models/"
        "claude-sonnet-4-5@20250929:rawPredict")
    with client.messages.stream(model="claude-sonnet-4-5@20250929", max_tokens=1024,
                                messages=[{"role": "user", "content": "Capital?"}]) as stream:
        assert "Paris" in "".join(stream.text_stream)
    assert upstream.requests[-1].raw_path.endswith(":streamRawPredict")
    exact(vertex_proxy, "vx-claude", "gcp.gemini", 2 * CLAUDE_COST, input=2 * 3281,
          cached_input=2 * 3072, cache_write=2 * 188, output=2 * 57)
    assert vertex_proxy.sample("spendgate_requests_total", project="vx-claude",
                               model="claude-sonnet-4-5@20250929") == 2


def test_provider_names_by_default() -> None:
    from spendgate.config import UpstreamConfig
    from spendgate.hotpath.proxy import provider_name_for

    def name(url: str, **extra: Any) -> str:
        config = UpstreamConfig(url=url, **extra)
        return provider_name_for(config, url.partition("//")[2])

    assert name("https://generativelanguage.googleapis.com", provider="gemini") == "gcp.gemini"
    assert name("https://us-central1-aiplatform.googleapis.com",
                provider="gemini") == "gcp.vertex_ai"
    assert name("https://bedrock-runtime.us-east-1.amazonaws.com",
                provider="bedrock") == "aws.bedrock"
    assert name("https://proxy.internal", provider="gemini",
                google_credentials="/sa.json") == "gcp.vertex_ai"


def test_token_endpoint_down_is_a_502_in_gemini_shape(
        spawn: Any, upstream: FakeUpstream, tmp_path: Path,
        service_account: tuple[Path, TokenEndpoint]) -> None:
    from tests.conftest import free_port
    broken = json.loads(service_account[0].read_text())
    broken["token_uri"] = f"http://127.0.0.1:{free_port()}/token"  # nothing listens there
    path = tmp_path / "sa-unreachable.json"
    path.write_text(json.dumps(broken))
    proxy = spawn({"upstreams": {"vertex": {"url": upstream.url, "provider": "gemini",
                                            "timeout_s": 5, "google_credentials": str(path)}}})
    client = gemini_client(proxy, "vertex", "vx-down")
    with pytest.raises(genai_errors.ServerError) as raised:
        client.models.generate_content(model="gemini-2.5-pro", contents="Capital?")
    assert (raised.value.code, raised.value.status) == (502, "UNAVAILABLE")
    assert "could not obtain a Google access token" in (raised.value.message or "")
    assert "PRIVATE KEY" not in proxy.log() and upstream.requests == []
    assert proxy.sample("spendgate_requests_total", project="vx-down", status="502") == 1
