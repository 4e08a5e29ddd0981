"""Who a call is for: the caller's virtual key, project and user, and credential custody.

With ``keys`` configured every call must bring a virtual key: in ``x-spendgate-key``, or as
the caller's own credential (``authorization``, ``x-api-key``, ``api-key`` or
``x-goog-api-key``, whichever the SDK sends, in any scheme: ``Bearer vk``, ``Token vk``,
``Basic`` of ``user:vk``, bare, or the access key id of an AWS SigV4 signature), or in the
query parameter the upstream's protocol takes keys in (Gemini's ``?key=``). It is
compared in constant time against every configured key (no early exit, so timing tells
nothing about which key nearly matched) and never forwarded. The key fixes the project: a
keyed caller cannot charge another project by header. Without ``keys``, the project comes
from ``x-spendgate-project``, else ``default``.

Steps on headers alone, before the proxy reads a byte of the body: ``authenticate`` (401
without a valid key: an unauthenticated caller never makes the proxy buffer a body; it
gives the key's ``KeyEntry``), ``check_key`` (401 ``KeyExpired`` past its ``expires``, 403
``ModelNotAllowed`` for an upstream not in its ``upstreams``) and ``admit`` (400 for an
``x-spendgate-project`` or ``x-spendgate-user`` over ``MAX_ATTRIBUTION_BYTES``: they go to
logs, traces and labels; 400 for a malformed ``x-spendgate-tags``). A call's tags are the
header's under its key's fixed ``tags``, which win for a key both name (``spendgate.tags``).
Once the body is parsed, ``check_model`` holds the call to the key's ``models`` (403
``ModelNotAllowed``); its ``max_reserve_usd`` goes on the outcome for the budget gate, which
alone can price the call. A call refused at any step is counted under ``UNKNOWN_PROJECT``,
or its key's project once the key is known.

Credential custody: an upstream with ``api_key`` gets the proxy's key, and every credential
the caller sent is dropped; otherwise the caller's credential is forwarded as it came, except
one that carries a virtual key, whatever its scheme (``credential_secrets``).
``x-spendgate-*`` headers, in any spelling, never reach an upstream (``hotpath/headers.py``).
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from spendgate.config import UpstreamConfig, VirtualKey
from spendgate.errors import BadRequest, KeyExpired, ModelNotAllowed, Unauthorized
from spendgate.money import to_nano
from spendgate.providers.base import RequestInfo
from spendgate.selectors import model_glob_matches
from spendgate.tags import HEADER as TAGS_HEADER
from spendgate.tags import NO_TAGS, frozen, merged, parse_header

CREDENTIAL_HEADERS = frozenset({b"authorization", b"x-api-key", b"api-key", b"x-goog-api-key"})
DEFAULT_PROJECT = "default"
UNKNOWN_PROJECT = "unknown"     # a call refused before a key or header could name one
MAX_ATTRIBUTION_BYTES = 256


@dataclass(frozen=True, slots=True)
class Admission:
    project: str
    user: str | None
    key_name: str | None          # the key's name, else "project#index": never the secret
    drop_caller_credentials: bool
    # x-spendgate-tags under the key's fixed tags (shared, never mutated)
    tags: Mapping[str, str] = field(default_factory=lambda: NO_TAGS)


@dataclass(frozen=True, slots=True)
class KeyEntry:
    """One configured virtual key as the hot path checks it: never the secret.

    ``models``: lower-cased globs (None: any model); ``upstreams``: names (None: any);
    ``expires``: Unix time it stops working at (None: never); ``max_reserve``: nano-dollars,
    the most one call may cost at worst (``budgets.gate`` enforces it; None: no ceiling)."""

    project: str
    name: str                   # the key's name, else "project#index"
    models: tuple[str, ...] | None = None
    upstreams: frozenset[str] | None = None
    expires: float | None = None
    max_reserve: int | None = None
    tags: Mapping[str, str] = field(default_factory=lambda: NO_TAGS)  # fixed: win over the header

    @classmethod
    def of(cls, key: VirtualKey, index: int) -> KeyEntry:
        return cls(key.project, key.name or f"{key.project}#{index}",
                   tuple(m.lower() for m in key.models) if key.models is not None else None,
                   frozenset(key.upstreams) if key.upstreams is not None else None,
                   key.expires.timestamp() if key.expires is not None else None,
                   to_nano(key.max_reserve_usd) if key.max_reserve_usd is not None else None,
                   frozen(key.tags) if key.tags else NO_TAGS)


class KeyRing:
    """The configured virtual keys. Immutable; thread-safe. An empty key (its variable
    unset) is left out: it would match an empty credential; keys stay on all the same."""

    def __init__(self, keys: Sequence[VirtualKey] | None) -> None:
        self.enabled = keys is not None
        self._keys = [(k.key.encode(), KeyEntry.of(k, i))
                      for i, k in enumerate(keys or ()) if k.key]

    def match(self, presented: bytes) -> KeyEntry | None:
        """The key ``presented`` is, compared with every key."""
        found: KeyEntry | None = None
        for secret, entry in self._keys:
            if hmac.compare_digest(secret, presented) and found is None:
                found = entry
        return found

    def match_credential(self, value: bytes) -> KeyEntry | None:
        """``match`` for a credential header's value: the key it carries, in any scheme."""
        for secret in credential_secrets(value):
            found = self.match(secret)
            if found is not None:
                return found
        return None


def credential_secrets(value: bytes) -> list[bytes]:
    """Every secret a credential header may carry, whatever its scheme: the value itself;
    for ``scheme SP token`` (``Bearer``, ``Token``, any other), the token; for ``Basic``,
    both halves of the ``user:password`` it encodes."""
    value = value.strip()
    secrets = [value]
    scheme, space, token = value.partition(b" ")
    token = token.strip()
    if space and token:
        secrets.append(token)
        if scheme.upper() == b"AWS4-HMAC-SHA256":  # Credential=KEYID/date/region/service/...
            credential = token.partition(b"Credential=")[2]
            secrets.append(credential.partition(b"/")[0])
        if scheme.lower() == b"basic":
            try:
                decoded = base64.b64decode(token, validate=True)
            except (binascii.Error, ValueError):
                return secrets
            user, colon, password = decoded.partition(b":")
            secrets += [user, password] if colon else [decoded]
    return secrets


def authenticate(headers: dict[bytes, bytes], keyring: KeyRing,
                 query_key: bytes | None = None) -> KeyEntry | None:
    """The call's virtual key; None when keys are off.
    ``query_key``: a key the caller sent in the query (the protocol's ``key_query``).

    Raises ``Unauthorized`` when keys are on and none matches."""
    if not keyring.enabled:
        return None
    explicit = headers.get(b"x-spendgate-key")
    candidates = [explicit] if explicit else [
        *(headers.get(h) for h in CREDENTIAL_HEADERS), query_key]
    for value in candidates:
        if value:
            matched = keyring.match_credential(value)
            if matched is not None:
                return matched
    raise Unauthorized("a valid spendgate virtual key is required "
                       "(x-spendgate-key, authorization or x-api-key)")


def admit(headers: dict[bytes, bytes], key: KeyEntry | None,
          upstream: UpstreamConfig) -> Admission:
    """Attribute an authenticated call (``key`` from ``authenticate``); raises
    ``BadRequest`` for an attribution header over ``MAX_ATTRIBUTION_BYTES`` or a malformed
    ``x-spendgate-tags`` (``spendgate.tags``)."""
    user_value = headers.get(b"x-spendgate-user")
    project_value = headers.get(b"x-spendgate-project")
    if len(user_value or b"") > MAX_ATTRIBUTION_BYTES or \
            len(project_value or b"") > MAX_ATTRIBUTION_BYTES:
        raise _too_long(user_value)
    user = user_value.decode("utf-8", "replace") if user_value else None
    if key is None:
        project = project_value.decode("utf-8", "replace") if project_value else DEFAULT_PROJECT
        return Admission(project, user, None, upstream.api_key is not None,
                         parse_header(headers.get(TAGS_HEADER)))
    # A key sent as the caller's credential must not travel on; one sent in
    # x-spendgate-key leaves the caller's credential to the custody rule.
    drop = upstream.api_key is not None or not headers.get(b"x-spendgate-key")
    return Admission(key.project, user, key.name, drop,
                     merged(parse_header(headers.get(TAGS_HEADER)), key.tags))


def _too_long(user: bytes | None) -> BadRequest:
    name = "x-spendgate-user" if len(user or b"") > MAX_ATTRIBUTION_BYTES else "x-spendgate-project"
    return BadRequest(f"{name} is over {MAX_ATTRIBUTION_BYTES} bytes")


# Methods that generate nothing: under a key with ``models`` they pass without a model.
_READS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})
MODEL_CHARS = 100   # of a refused model name, in a message (the caller's choice)


def check_key(key: KeyEntry, upstream: str, now: float) -> None:
    """What a key allows that headers tell: not expired (``KeyExpired``, 401), and the
    upstream among its ``upstreams`` (``ModelNotAllowed``, 403)."""
    if key.expires is not None and now >= key.expires:
        raise KeyExpired(f"virtual key {key.name!r} expired at "
                         f"{datetime.fromtimestamp(key.expires, UTC).isoformat()}")
    if key.upstreams is not None and upstream not in key.upstreams:
        raise ModelNotAllowed(f"virtual key {key.name!r} may not use upstream {upstream!r} "
                              f"(its upstreams: {', '.join(sorted(key.upstreams))})")


def check_model(key: KeyEntry, info: RequestInfo, method: str) -> None:
    """The model the caller asked for among the key's ``models`` (``ModelNotAllowed``, 403).

    A request that names no model spendgate can read passes only when it cannot generate
    anything: a read or a delete (``GET``, ``HEAD``, ``OPTIONS``, ``DELETE``: model lists,
    batch status, file downloads). A metered call without a readable model, or a ``POST``
    whose model is elsewhere (a batch's input file, a multipart upload), is refused: the
    key's limit could not be held to it."""
    if key.models is None:
        return
    model = info.model
    if model is None:
        if info.metered or method.upper() not in _READS:
            raise ModelNotAllowed(f"virtual key {key.name!r} may use only some models "
                                  f"({', '.join(key.models)}), and this request names none "
                                  "spendgate can read")
        return
    if not model_glob_matches(key.models, model):
        raise ModelNotAllowed(f"virtual key {key.name!r} may not use model "
                              f"{model[:MODEL_CHARS]!r} (its models: {', '.join(key.models)})")
