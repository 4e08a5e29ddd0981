"""Credentials the proxy holds for an upstream and puts on each request itself (custody).

An upstream whose protocol authenticates each request by more than a fixed header gets a
``RequestSigner``, built once from its config (``signer_for``), applied to every request
after the caller's headers are filtered and before it is sent:

- ``upstreams.X.aws`` (Bedrock): ``AwsSigV4Signer`` drops whatever signature the caller sent
  (``authorization``, ``x-amz-date``, ``x-amz-security-token``, ``x-amz-content-sha256``)
  and signs the request as it goes upstream (method, host, path, query, body) with
  botocore's SigV4 signer, service ``bedrock``; with ``access_key_id`` and
  ``secret_access_key`` given, those, else the standard AWS credential chain
  (environment, shared files, container or instance role), resolved once at start-up;
  credentials that expire (a role's) are refreshed by botocore when a request is signed,
  on the event loop: a blocking call to the credential source, once per expiry.
- ``upstreams.X.google_credentials`` (Vertex AI): ``GoogleTokenSigner`` mints an OAuth
  access token from a service-account JSON file with google-auth, refreshes it before it
  expires (in a worker thread, one refresh at a time), and sends it as
  ``authorization: Bearer``, dropping the caller's ``authorization`` and ``x-goog-api-key``.

botocore and google-auth are optional extras (``spendgate[bedrock]``, ``spendgate[vertex]``),
imported only when a config needs them; without them ``signer_for`` raises ``ConfigError``
naming the extra. Signers are used on the event loop only (not thread-safe); a failed token
refresh is ``UpstreamUnreachable`` (502), its message free of secrets.
"""

from __future__ import annotations

import asyncio
import importlib
from types import ModuleType
from typing import Any, Protocol

from spendgate.config import UpstreamConfig
from spendgate.errors import ConfigError, UpstreamUnreachable

AWS_SIGNATURE_HEADERS = frozenset({"authorization", "x-amz-date", "x-amz-security-token",
                                   "x-amz-content-sha256"})
GOOGLE_CREDENTIAL_HEADERS = frozenset({"authorization", "x-goog-api-key"})
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"


class RequestSigner(Protocol):
    """Puts the proxy's credential on one request: returns ``headers`` without the caller's
    credential headers and with the proxy's. ``host`` is the ``Host`` header the request is
    sent with; ``url`` its full URL (scheme, host, path and query as sent)."""

    async def sign(self, method: str, url: str, host: str, headers: list[tuple[str, str]],
                   body: bytes | None) -> list[tuple[str, str]]: ...


def signer_for(name: str, config: UpstreamConfig) -> RequestSigner | None:
    """The signer an upstream's config asks for, or None. Raises ``ConfigError`` when the
    extra it needs is not installed or its credentials cannot be found or read."""
    if config.aws is not None:
        return AwsSigV4Signer(name, config)
    if config.google_credentials is not None:
        return GoogleTokenSigner(name, config.google_credentials)
    return None


def _extra(module: str, extra: str, key: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError([f"{key}: needs the {extra!r} extra: pip install "
                           f"'spendgate[{extra}]'"]) from None


def _without(headers: list[tuple[str, str]], names: frozenset[str]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in headers if k.lower() not in names]


class AwsSigV4Signer:
    """SigV4 (service ``bedrock``) with the upstream's AWS credentials; see the module."""

    def __init__(self, name: str, config: UpstreamConfig) -> None:
        aws = config.aws
        assert aws is not None
        key = f"upstreams.{name}.aws"
        auth = _extra("botocore.auth", "bedrock", key)
        self._awsrequest = _extra("botocore.awsrequest", "bedrock", key)
        if aws.access_key_id and aws.secret_access_key:
            credentials: Any = _extra("botocore.credentials", "bedrock", key).Credentials(
                aws.access_key_id, aws.secret_access_key, aws.session_token or None)
        else:
            credentials = _extra("botocore.session", "bedrock", key).get_session(
            ).get_credentials()
            if credentials is None:
                raise ConfigError([f"{key}: no access_key_id/secret_access_key, and the "
                                   "standard AWS credential chain found none"])
        self._credentials = credentials
        self._auth = auth
        self._region = aws.region

    async def sign(self, method: str, url: str, host: str, headers: list[tuple[str, str]],
                   body: bytes | None) -> list[tuple[str, str]]:
        request = self._awsrequest.AWSRequest(method=method, url=url, data=body or b"",
                                              headers={"host": host})
        frozen = self._credentials.get_frozen_credentials()
        self._auth.SigV4Auth(frozen, "bedrock", self._region).add_auth(request)
        signed = [(k.lower(), v) for k, v in request.headers.items() if k.lower() != "host"]
        return [*_without(headers, AWS_SIGNATURE_HEADERS), *signed]


class GoogleTokenSigner:
    """A service account's OAuth access token, minted and refreshed; see the module."""

    def __init__(self, name: str, path: str) -> None:
        key = f"upstreams.{name}.google_credentials"
        service_account = _extra("google.oauth2.service_account", "vertex", key)
        transport = _extra("google.auth.transport.requests", "vertex", key)
        try:
            self._credentials = service_account.Credentials.from_service_account_file(
                path, scopes=[CLOUD_PLATFORM_SCOPE])
        except (OSError, ValueError) as error:  # unreadable, not JSON, not a service account
            raise ConfigError([f"{key}: cannot read a service-account JSON from {path!r} "
                               f"({type(error).__name__})"]) from None
        self._request = transport.Request()
        self._name = name
        self._lock = asyncio.Lock()

    async def sign(self, method: str, url: str, host: str, headers: list[tuple[str, str]],
                   body: bytes | None) -> list[tuple[str, str]]:
        if not self._credentials.valid:
            async with self._lock:
                if not self._credentials.valid:
                    await self._refresh()
        token = self._credentials.token
        return [*_without(headers, GOOGLE_CREDENTIAL_HEADERS),
                ("authorization", f"Bearer {token}")]

    async def _refresh(self) -> None:
        try:  # google-auth is blocking: a thread keeps the loop serving other calls
            await asyncio.to_thread(self._credentials.refresh, self._request)
        except Exception as error:  # google.auth.exceptions.* and transport errors
            raise UpstreamUnreachable(f"could not obtain a Google access token for upstream "
                                      f"{self._name!r} ({type(error).__name__})") from None
