"""What went wrong with a call, as one word a dashboard can count: ``error_kind``.

``status`` stays what the caller got (a stream the upstream cut off after its ``200`` is
still ``200`` there); the kind says what happened:

=======================  =====================================================================
``client_closed``        the caller hung up (status 499)
``upstream_cut``         the upstream broke off a response it had begun (stream cut mid-way)
``cancelled``            the proxy cut the call itself (its shutdown timeout)
``upstream_timeout``     no headers, or no next bytes, within ``timeout_s`` (504, or mid-body)
``upstream_unreachable`` DNS, connect, TLS or connection failure before a response (502)
``budget_exceeded``      refused by a block budget (429)
``rate_limit_exceeded``  refused by a rate limit (429)
``upstream_status_4xx``  the upstream answered 4xx (its own 429 included)
``upstream_status_5xx``  the upstream answered 5xx
other                    the proxy's refusals keep their ``error_type`` (``bad_request``,
                         ``unauthorized``, ``key_expired``, ``forbidden_origin``,
                         ``model_not_allowed``, ``max_reserve_exceeded``, ``not_found``,
                         ``body_too_large``, ``misdirected_request``,
                         ``budget_store_unavailable``, ``proxy_error``, ``record_build_failed``)
=======================  =====================================================================

A fixed vocabulary: every value is spendgate's own, never the caller's, so it is safe as a
metric label.
"""

from __future__ import annotations

from spendgate.records import STATUS_CLIENT_CLOSED, UsageRecord


def error_kind(record: UsageRecord) -> str | None:
    """The call's error kind (module docstring), or None for a call that went well."""
    kind = record.error_type
    if record.client_closed or record.status == STATUS_CLIENT_CLOSED:
        return "client_closed"
    if kind == "timeout":
        return "upstream_timeout"
    if kind == "upstream_unreachable":
        return "upstream_cut" if record.status < 400 else "upstream_unreachable"
    if kind is not None:
        return kind
    if record.status >= 500:
        return "upstream_status_5xx"
    if record.status >= 400:
        return "upstream_status_4xx"
    return None
