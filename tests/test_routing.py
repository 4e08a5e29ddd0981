"""Routing and path safety, as units (the end-to-end cases are in test_proxy.py)."""

from __future__ import annotations

import pytest

from spendgate.config import UpstreamConfig
from spendgate.errors import BadRequest, NotFound
from spendgate.hotpath.routing import route
from spendgate.upstream.client import UpstreamTarget

KNOWN = {"openai": object()}


def test_route_keeps_the_encoded_path_and_query() -> None:
    r = route(b"/openai/v1/files/a%20b", b"x=%2F&y=1", KNOWN)
    assert (r.upstream, r.raw_path, r.raw_query) == ("openai", "/v1/files/a%20b", "x=%2F&y=1")
    assert route(b"/openai", b"", KNOWN).raw_path == ""


@pytest.mark.parametrize("path", [b"/openai/../x", b"/openai/v1/%2E%2E/x", b"/openai/./x",
                                  b"/openai/v1/%252e%252e/x", b"/openai/a%5cb", b"/openai/.."])
def test_climbing_paths_are_refused(path: bytes) -> None:
    with pytest.raises(BadRequest):
        route(path, b"", KNOWN)


def test_dots_inside_names_are_fine() -> None:
    assert route(b"/openai/v1/files/report..v2.json", b"", KNOWN).raw_path.endswith("v2.json")


def test_unknown_upstream() -> None:
    with pytest.raises(NotFound):
        route(b"/other/v1", b"", KNOWN)


@pytest.mark.parametrize("raw", ["//evil.example/x", "/http://evil.example/", "/@evil.example"])
def test_target_host_is_fixed_whatever_the_path(raw: str) -> None:
    target = UpstreamTarget("o", UpstreamConfig(url="https://api.openai.com/base"))
    url = target.url(raw, "a=1")
    assert (url.scheme, url.host, url.port) == ("https", "api.openai.com", 443)
    assert url.raw_path == "/base" + raw
