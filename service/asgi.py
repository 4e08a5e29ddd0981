"""ASGI types, as the proxy and the app use them (the shapes of starlette's ``types``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# An app that ends a response short on purpose (a stream the upstream broke off, or one cut
# by the server's shutdown timeout) sets ``scope[CUT_SHORT] = True`` before it returns (or
# lets the cancellation go on). The server (``hotpath.server``) then closes the connection,
# the caller's answer left truncated, without logging it as an app that failed to complete
# its response: the app has recorded the call and its cause itself.
CUT_SHORT = "spendgate.cut_short"
