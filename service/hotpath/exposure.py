"""Who may reach the proxy: by which name (``Host``) and, for browsers, from which site.

A proxy on localhost is reachable from any web page the user opens: through a hostile name
that resolves to 127.0.0.1 (DNS rebinding: the page then reads the answers too), or by a
cross-site "simple" POST (``text/plain``, no preflight). Either spends the custody key of a
proxy without virtual keys. So:

* ``HostAllowList``: the ``Host`` names served (``server.allowed_hosts``, resolved by
  ``config.allowed_hosts``); any other gets 421. The host part is compared (port ignored,
  case-insensitive, IPv6 brackets and one trailing dot dropped); a request without ``Host``
  matches nothing. ``app`` applies it to proxied, admin and docs paths, not to ``/healthz``,
  ``/readyz`` and ``/metrics``, which kubelet probes and Prometheus reach by pod IP.
* ``OriginAllowList``: a proxied call carrying ``Origin`` (browsers send it on every
  cross-site POST) is refused with 403 unless ``server.allowed_origins`` lists that origin
  exactly, or ``*``. SDKs and servers send no ``Origin``.

Both are built once, at construction, and cost a dict or frozenset lookup per call. Used on
the event loop; safe from any thread (the memo is a dict, written under the GIL).
"""

from __future__ import annotations

from collections.abc import Iterable

ANY = "*"
_MEMO_SIZE = 256    # distinct raw Host values remembered; past that, parsed each time
_MEMO_VALUE = 300   # bytes: a DNS name (253) and a port; longer values are never kept


def host_part(raw: str) -> str | None:
    """The host of a ``Host`` header value, lower-cased, without port, IPv6 brackets or a
    trailing dot; None when the value is not a well-formed ``host[:port]``."""
    text = raw.strip().lower()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        host, port = text[1:end], text[end + 1:]
        if port and not (port[0] == ":" and port[1:].isdigit()):
            return None
    else:
        host, _, port = text.partition(":")
        if port and not port.isdigit():   # a bare IPv6 address is not a Host value
            return None
    return host.removesuffix(".") or None


def configured_name(name: str) -> str:
    """A name of ``server.allowed_hosts`` as ``host_part`` gives it (IPv6 with or without
    brackets)."""
    return name.strip().lower().removeprefix("[").removesuffix("]").removesuffix(".")


class HostAllowList:
    """The ``Host`` names the proxy answers to; ``ANY`` in ``names`` allows every one."""

    def __init__(self, names: Iterable[str]) -> None:
        listed = list(names)
        self.any = ANY in listed
        self._names = frozenset(map(configured_name, listed))
        # Raw header value -> verdict: a steady caller sends the same bytes every time. At
        # most _MEMO_SIZE values of at most _MEMO_VALUE bytes: memory an attacker cannot grow.
        self._memo: dict[bytes | None, bool] = {}

    def allows(self, raw: bytes | None) -> bool:
        verdict = self._memo.get(raw)
        if verdict is None:
            verdict = self.any or (raw is not None
                                   and host_part(raw.decode("latin-1")) in self._names)
            if len(self._memo) < _MEMO_SIZE and (raw is None or len(raw) <= _MEMO_VALUE):
                self._memo[raw] = verdict
        return verdict


class OriginAllowList:
    """The browser origins whose proxied calls are let through; ``ANY`` lets every one."""

    def __init__(self, origins: Iterable[str]) -> None:
        listed = list(origins)
        self.any = ANY in listed
        self._origins = frozenset(o.encode("latin-1") for o in listed)

    def allows(self, raw: bytes | None) -> bool:
        """``raw``: the request's ``Origin`` header, None when it has none (not a browser)."""
        return raw is None or self.any or raw in self._origins
