"""Which headers cross the proxy, each way.

Request headers reach the upstream as the caller sent them (names, order, duplicates),
minus: hop-by-hop headers (``HOP_BY_HOP``, and any the caller's ``Connection`` names),
the framing the upstream client writes itself (``FRAMING``: ``Host``, ``Content-Length``),
spendgate's own headers (``is_spendgate``), the caller's ``traceparent`` (the proxy sends
its own), the credentials custody replaces, and any credential that carries a virtual key,
in any scheme. ``Accept-Encoding`` is narrowed to what the pipeline can undo (streams:
``identity``) so usage stays readable.

Response headers come back as the upstream sent them, minus hop-by-hop ones,
``Content-Length`` (the proxy states the length of what it actually sends) and the
upstream's own spendgate headers (the caller hears only this proxy's ``x-spendgate-*``).
"""

from __future__ import annotations

from collections.abc import Iterable

from spendgate.hotpath.attribution import CREDENTIAL_HEADERS, KeyRing

# RFC 9110 §7.6.1, plus the pre-RFC ``keep-alive`` / ``proxy-*`` / ``trailers`` spellings.
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-authenticate",
                        b"proxy-authorization", b"te", b"trailer", b"trailers",
                        b"transfer-encoding", b"upgrade"})
# End-to-end, but describing one message's framing: the client writes them for what it sends.
FRAMING = frozenset({b"host", b"content-length"})
# Encodings the pipeline can undo to read usage from a buffered body.
DECODABLE = ("gzip", "deflate", "identity")


def is_spendgate(name: bytes) -> bool:
    """A lower-cased header name in spendgate's namespace, in every spelling a server may
    fold into ``x-spendgate-*`` (WSGI and nginx read ``_`` as ``-``): ``x-spendgate-key``,
    ``x-spendgate_key``, ``x_spendgate-project``..."""
    return name[2:11] == b"spendgate" and name[:2] in _X_PREFIXES


_X_PREFIXES = (b"x-", b"x_")


def hop_by_hop(raw: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """``HOP_BY_HOP`` and ``FRAMING``, plus the names a ``Connection`` header declares
    hop-by-hop (RFC 9110 §7.6.1): every header not to pass on as it is."""
    dropped = HOP_BY_HOP | FRAMING
    listed = {token.strip().lower() for name, value in raw if name.lower() == b"connection"
              for token in value.split(b",")} - dropped - {b""}
    return dropped | listed if listed else dropped


# Headers some servers (Google APIs, Express, Rails, ASP.NET) honour to serve a request as
# another method: a GET carrying ``X-HTTP-Method-Override: POST`` is served as a POST.
METHOD_OVERRIDES = (b"x-http-method-override", b"x-http-method", b"x-method-override")


def metered_method(method: str, headers: dict[bytes, bytes]) -> str:
    """The method to meter a call as: an override header's, when the request carries one,
    since an upstream that honours it serves the call so (metering a call it then refuses
    costs nothing; not metering one it serves is a way around every budget)."""
    for name in METHOD_OVERRIDES:
        value = headers.get(name)
        if value is not None:
            return value.strip().decode("latin-1").upper()
    return method


def upstream_headers(raw: list[tuple[bytes, bytes]], drop: frozenset[bytes], stream: bool,
                     keyring: KeyRing) -> list[tuple[str, str]]:
    """The caller's headers as the upstream gets them (see the module docstring); ``drop``:
    the caller's credential headers when the proxy holds the upstream's key."""
    skip = hop_by_hop(raw)
    out: list[tuple[str, str]] = []
    for name, value in raw:
        if name in skip or name in drop or is_spendgate(name):
            continue
        if name == b"traceparent":
            continue
        if (keyring.enabled and name in CREDENTIAL_HEADERS
                and keyring.match_credential(value) is not None):
            continue
        if name == b"accept-encoding":
            # Streams must arrive uncompressed to be read event by event; buffered bodies
            # may be compressed only in ways the pipeline can undo to read usage.
            value = b"identity" if stream else _decodable(value)
        out.append((name.decode("latin-1"), value.decode("latin-1")))
    return out


def response_headers(raw: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The upstream's response headers as the caller gets them, names lower-cased."""
    skip = hop_by_hop(raw)
    return [(name, v) for k, v in raw
            if (name := k.lower()) not in skip and not is_spendgate(name)]


def _decodable(accept: bytes) -> bytes:
    kept = [part.strip() for part in accept.split(b",")
            if part.split(b";")[0].strip().decode("latin-1").lower() in DECODABLE]
    return b", ".join(kept) or b"identity"
