"""spendgate's exceptions, and error bodies in the caller's own protocol.

Hierarchy::

    SpendgateError
    ├── ConfigError            a config file is invalid (carries every problem)
    ├── ReconcileError         a provider's admin API failed (reconcile/; endpoint and
    │                          status only, never the key or the provider's body)
    └── ProxyError             a call the proxy answers itself, with an HTTP status
        ├── BadRequest           400: a path or request spendgate will not forward; an
        │                        attribution header over 256 bytes
        ├── Unauthorized         401: missing or wrong virtual key
        │   └── KeyExpired         401: a virtual key past its ``expires``
        ├── ForbiddenOrigin      403: a browser origin not in ``server.allowed_origins``
        ├── ModelNotAllowed      403: a model or upstream outside the key's ``models`` /
        │                        ``upstreams``
        ├── MaxReserveExceeded   403: a call whose worst case is over its key's
        │                        ``max_reserve_usd``
        ├── NotFound             404: unknown upstream
        ├── BodyTooLarge         413: body over ``server.max_body_mb``
        ├── MisdirectedRequest   421: a ``Host`` not in ``server.allowed_hosts``
        ├── ClientClosed         499: the caller hung up before its body was complete
        ├── BudgetExceeded       429: a ``block`` budget has no room for this call
        ├── RateLimitExceeded    429: a rate limit (``limits``) has no room for this call
        ├── BudgetStoreUnavailable 503: budget store down and ``store.on_error: closed``
        ├── UpstreamUnreachable  502: connect/read failure
        └── UpstreamTimeout      504: ``timeout_s`` passed

Client errors (``http1``, OS) are translated into these at the boundary (``upstream.py``),
so the proxy deals with one family only. Messages never carry secrets.

``refused`` marks the errors that refuse a call (400, 401, 403, 404, 413, 421): such a call
is counted with nothing its request claimed, model ``unknown`` and the project of its
virtual key, else ``unknown``, so a caller the proxy turns away cannot choose labels.
``MaxReserveExceeded`` is not ``refused``: like ``BudgetExceeded`` it judges a call the key
may make (its model is allowed), so the call keeps its model label.

The key's errors carry their issue-defined type (``model_not_allowed``, ``key_expired``) in
both the OpenAI and the Anthropic body, as ``budget_exceeded`` does: the SDKs pick their
exception by status (``PermissionDeniedError``, ``AuthenticationError``) and the type says why.
"""

from __future__ import annotations

import orjson


class SpendgateError(Exception):
    """Base of every error spendgate raises on purpose."""


class ConfigError(SpendgateError):
    """Invalid configuration; ``problems`` holds one ``path: message`` line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class ReconcileError(SpendgateError):
    """A provider's usage or cost API failed or answered something unreadable."""


class ProxyError(SpendgateError):
    status = 500
    error_type = "proxy_error"
    openai_type = "server_error"
    anthropic_type = "api_error"
    refused = False     # True: the call was not admitted (see the module docstring)

    def __init__(self, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or []


class BadRequest(ProxyError):
    status = 400
    error_type = "bad_request"
    openai_type = "invalid_request_error"
    anthropic_type = "invalid_request_error"
    refused = True


class Unauthorized(ProxyError):
    status = 401
    error_type = "unauthorized"
    openai_type = "invalid_request_error"
    anthropic_type = "authentication_error"
    refused = True


class KeyExpired(Unauthorized):
    """A virtual key used after its ``expires`` (checked per call: no restart needed)."""

    error_type = "key_expired"
    openai_type = "key_expired"
    anthropic_type = "key_expired"


class ModelNotAllowed(ProxyError):
    """A call outside its virtual key's ``models`` or ``upstreams``: one type for both, as
    the issue names only this one; the message says which rule refused it."""

    status = 403
    error_type = "model_not_allowed"
    openai_type = "model_not_allowed"
    anthropic_type = "model_not_allowed"
    refused = True


class MaxReserveExceeded(ProxyError):
    """A call whose worst-case cost is over its virtual key's ``max_reserve_usd``."""

    status = 403
    error_type = "max_reserve_exceeded"
    openai_type = "max_reserve_exceeded"
    anthropic_type = "max_reserve_exceeded"


class ForbiddenOrigin(ProxyError):
    """A proxied call from a browser page whose origin is not allowed: any web page can
    send a "simple" cross-site POST to a proxy on localhost, with its custody key."""

    status = 403
    error_type = "forbidden_origin"
    openai_type = "invalid_request_error"
    anthropic_type = "permission_error"
    refused = True


class NotFound(ProxyError):
    status = 404
    error_type = "not_found"
    openai_type = "invalid_request_error"
    anthropic_type = "not_found_error"
    refused = True


class BodyTooLarge(ProxyError):
    status = 413
    error_type = "body_too_large"
    openai_type = "invalid_request_error"
    anthropic_type = "request_too_large"
    refused = True


class MisdirectedRequest(ProxyError):
    """A ``Host`` the proxy does not serve (DNS rebinding: a hostile name resolving to it)."""

    status = 421
    error_type = "misdirected_request"
    openai_type = "invalid_request_error"
    anthropic_type = "invalid_request_error"
    refused = True


class BudgetExceeded(ProxyError):
    status = 429
    error_type = "budget_exceeded"
    openai_type = "budget_exceeded"
    anthropic_type = "budget_exceeded"


class RateLimitExceeded(ProxyError):
    """A rate limit has no room for this call; its headers say when to retry
    (``retry-after``, ``x-ratelimit-*``: ``spendgate.limits.gate``)."""

    status = 429
    error_type = "rate_limit_exceeded"
    openai_type = "rate_limit_exceeded"
    anthropic_type = "rate_limit_exceeded"


class BudgetStoreUnavailable(ProxyError):
    status = 503
    error_type = "budget_store_unavailable"
    openai_type = "budget_store_unavailable"
    anthropic_type = "api_error"


class ClientClosed(ProxyError):
    """The caller hung up before its request body was complete: nothing goes upstream."""

    status = 499
    error_type = "client_closed"


class UpstreamUnreachable(ProxyError):
    status = 502
    error_type = "upstream_unreachable"
    openai_type = "upstream_unreachable"
    anthropic_type = "api_error"


class UpstreamTimeout(ProxyError):
    status = 504
    error_type = "timeout"
    openai_type = "upstream_timeout"
    anthropic_type = "timeout_error"


# Gemini's (Google APIs') canonical status names, by HTTP status.
_GOOGLE_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                  404: "NOT_FOUND", 413: "INVALID_ARGUMENT", 421: "PERMISSION_DENIED",
                  429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 502: "UNAVAILABLE",
                  503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
# Bedrock's error types (``x-amzn-errortype``), by HTTP status: what botocore raises.
_BEDROCK_TYPE = {400: "ValidationException", 401: "UnrecognizedClientException",
                 403: "AccessDeniedException", 404: "ResourceNotFoundException",
                 413: "ValidationException", 421: "AccessDeniedException",
                 429: "ThrottlingException", 499: "ValidationException",
                 502: "ServiceUnavailableException", 503: "ServiceUnavailableException",
                 504: "ModelTimeoutException"}


def error_headers(error: ProxyError, protocol: str) -> list[tuple[bytes, bytes]]:
    """Headers the error body of ``protocol`` goes with (Bedrock names its type in one)."""
    if protocol == "bedrock":
        kind = _BEDROCK_TYPE.get(error.status, "InternalServerException")
        return [(b"x-amzn-errortype", kind.encode())]
    return []


def error_body(error: ProxyError, protocol: str) -> bytes:
    """The JSON error body a client of ``protocol`` (openai | anthropic | gemini | bedrock)
    expects."""
    if protocol == "gemini":
        return orjson.dumps({"error": {"code": error.status, "message": error.message,
                                       "status": _GOOGLE_STATUS.get(error.status, "INTERNAL")}})
    if protocol == "bedrock":
        return orjson.dumps({"message": error.message})
    if protocol == "anthropic":
        return orjson.dumps(
            {"type": "error", "error": {"type": error.anthropic_type, "message": error.message}})
    code = "spendgate_" + error.error_type
    return orjson.dumps({"error": {"message": error.message, "type": error.openai_type,
                                   "param": None, "code": code}})
