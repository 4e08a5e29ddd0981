"""Bedrock's wire for tests: event-stream frames, and a SigV4 check written from the spec.

``frame`` encodes one event-stream message (the fixtures ``tests/fixtures/bedrock_*.
eventstream`` were made with it; ``tests/test_bedrock.py`` checks them with botocore's own
decoder). ``sigv4_problem`` checks a request as it reached the fake upstream against
AWS Signature Version 4 (hashlib/hmac only, not the botocore code the proxy signs with), so a
request the proxy re-signed wrongly (host, path, query, body or key) is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import struct
import zlib
from urllib.parse import quote, unquote

from tests.fake_upstream import SeenRequest

_AUTH = re.compile(r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request,"
                   r" ?SignedHeaders=([a-z0-9;-]+), ?Signature=([0-9a-f]{64})")


def frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message with string headers (type 7) and both CRCs."""
    encoded = b"".join(bytes([len(k)]) + k.encode() + b"\x07" + len(v.encode()).to_bytes(2, "big")
                       + v.encode() for k, v in headers.items())
    prelude = struct.pack(">II", 16 + len(encoded) + len(payload), len(encoded))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    message = prelude + encoded + payload
    return message + struct.pack(">I", zlib.crc32(message))


def event(kind: str, payload: bytes) -> bytes:
    return frame({":event-type": kind, ":content-type": "application/json",
                  ":message-type": "event"}, payload)


def exception(kind: str, message: str) -> bytes:
    return frame({":exception-type": kind, ":content-type": "application/json",
                  ":message-type": "exception"}, b'{"message":"%s"}' % message.encode())


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def sigv4_problem(seen: SeenRequest, access_key: str, secret: str, region: str,
                  service: str = "bedrock") -> str | None:
    """Why ``seen`` is not signed by ``access_key``/``secret`` for ``region``; None if it is."""
    match = _AUTH.fullmatch(seen.header("authorization") or "")
    if match is None:
        return "no SigV4 authorization header"
    key_id, day, got_region, got_service, signed, signature = match.groups()
    if (key_id, got_region, got_service) != (access_key, region, service):
        return f"signed as {key_id}/{got_region}/{got_service}"
    amz_date = seen.header("x-amz-date") or ""
    if not amz_date.startswith(day):
        return "x-amz-date does not match the credential scope"
    names = signed.split(";")
    if "host" not in names:
        return "host is not signed"
    values = []
    for name in names:
        value = seen.header(name)
        if value is None:
            return f"signed header {name} did not arrive"
        values.append(f"{name}:{' '.join(value.split())}\n")
    pairs = [item.partition("=") for item in seen.query.split("&") if item]
    query = "&".join(sorted(f"{quote(unquote(k), safe='-_.~')}={quote(unquote(v), safe='-_.~')}"
                            for k, _, v in pairs))
    canonical = "\n".join([seen.method, quote(seen.raw_path, safe="/~"), query, "".join(values),
                           signed, hashlib.sha256(seen.body).hexdigest()])
    scope = f"{day}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    key = _hmac(_hmac(_hmac(_hmac(("AWS4" + secret).encode(), day), region), service),
                "aws4_request")
    expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return None if hmac.compare_digest(expected, signature) else "signature does not match"
