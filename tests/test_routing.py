"""Routing and the canonical path, as units and fuzzed (end-to-end cases: test_proxy.py,
test_bypass.py)."""

from __future__ import annotations

import string
import time
from urllib.parse import unquote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spendgate.config import UpstreamConfig
from spendgate.errors import BadRequest, NotFound
from spendgate.hotpath.routing import Route, route
from spendgate.upstream.client import UpstreamTarget

# Upstream name -> segments after which an encoded "/" is data (Provider.encoded_slash_after).
KNOWN: dict[str, frozenset[str]] = {"openai": frozenset(), "bedrock": frozenset({"model"})}
UNRESERVED = string.ascii_letters + string.digits + "-._~"


def test_route_keeps_a_plain_path_and_the_query() -> None:
    r = route(b"/openai/v1/files/a%20b", b"x=%2F&y=1", KNOWN)
    assert (r.upstream, r.path, r.view, r.raw_query) == (
        "openai", "/v1/files/a%20b", "/v1/files/a b", "x=%2F&y=1")
    assert route(b"/openai/v1/chat/completions", b"", KNOWN) == Route(
        "openai", "/v1/chat/completions", "/v1/chat/completions", "")
    assert route(b"/openai", b"", KNOWN).path == ""


@pytest.mark.parametrize(("raw", "path", "view"), [
    (b"/openai/v1/chat/%63ompletions", "/v1/chat/completions", "/v1/chat/completions"),
    (b"/%6Fpenai/v1/%6d%65ssages", "/v1/messages", "/v1/messages"),
    (b"/openai/v1/a%3ab%3A", "/v1/a%3Ab%3A", "/v1/a:b:"),
    (b"/openai/v1/%7e%2D%2e%5f", "/v1/~-._", "/v1/~-._"),
    (b"/openai/v1/caf\xc3\xa9 x", "/v1/caf%C3%A9%20x", "/v1/caf\u00e9 x"),
    (b"/openai/v1//chat/completions/", "/v1//chat/completions/", "/v1/chat/completions"),
    (b"/openai/v1/chat;a=1/completions;b", "/v1/chat;a=1/completions;b", "/v1/chat/completions"),
    (b"/openai/v1/100%2525", "/v1/100%2525", "/v1/100%"),
    (b"/openai/", "/", "/"),
    (b"/openai//evil.example/v1/models", "//evil.example/v1/models", "/evil.example/v1/models"),
])
def test_canonical_form_and_view(raw: bytes, path: str, view: str) -> None:
    r = route(raw, b"", KNOWN)
    assert (r.path, r.view) == (path, view)


def test_an_encoded_slash_is_data_only_where_the_protocol_says() -> None:
    arn = b"arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile%2fus.anthropic.claude"
    r = route(b"/bedrock/model/" + arn + b"/converse", b"", KNOWN)
    assert r.path == ("/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile"
                      "%2Fus.anthropic.claude/converse")
    assert r.view.endswith(":inference-profile/us.anthropic.claude/converse")
    for refused in (b"/bedrock/v1/a%2Fb", b"/openai/model/a%2Fb", b"/bedrock/model/x/a%2Fb",
                    b"/bedrock/model/..%2F..%2Fadmin"):
        with pytest.raises(BadRequest):
            route(refused, b"", KNOWN)


@pytest.mark.parametrize("path", [
    b"/openai/../x", b"/openai/v1/%2E%2E/x", b"/openai/./x", b"/openai/v1/%252e%252e/x",
    b"/openai/a%5cb", b"/openai/a\\b", b"/openai/..", b"/openai/v1/..;/x", b"/openai/v1/.;x",
    b"/openai/v1/chat%2Fcompletions", b"/openai/v1/a%00", b"/openai/v1/a%1F", b"/openai/a%7f",
    b"/openai/v1/a\x0ab", b"/openai/v1/a%250A", b"/openai/v1/a%255C", b"/openai/v1/%",
    b"/openai/v1/%4", b"/openai/v1/%zz", b"/openai/v1/%u002e"])
def test_ambiguous_paths_are_refused(path: bytes) -> None:
    with pytest.raises(BadRequest):
        route(path, b"", KNOWN)


def test_dots_inside_names_are_fine() -> None:
    assert route(b"/openai/v1/files/report..v2.json", b"", KNOWN).path.endswith("v2.json")
    assert route(b"/openai/v1/.well-known", b"", KNOWN).view == "/v1/.well-known"


@pytest.mark.parametrize("path", [b"/other/v1", b"//openai/v1", b"*", b"/%6Fther/v1"])
def test_unknown_upstream(path: bytes) -> None:
    with pytest.raises(NotFound):
        route(path, b"", KNOWN)


@pytest.mark.parametrize("raw", ["//evil.example/x", "/http://evil.example/", "/@evil.example"])
def test_target_host_is_fixed_whatever_the_path(raw: str) -> None:
    target = UpstreamTarget("o", UpstreamConfig(url="https://api.openai.com/base"))
    url = target.url(raw, "a=1")
    assert (url.scheme, url.host, url.port) == ("https", "api.openai.com", 443)
    assert url.raw_path == "/base" + raw


# ---- fuzzing (issue 15, item 7): never raises anything else, linear, agrees on valid input --

def _canonical_or_refused(raw: bytes) -> Route | None:
    try:
        return route(raw, b"", KNOWN)
    except (BadRequest, NotFound):
        return None


@settings(max_examples=1500, deadline=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200), st.sampled_from([b"/openai", b"/bedrock/model", b""]))
def test_fuzz_any_bytes_only_refuse_in_spendgates_terms(tail: bytes, prefix: bytes) -> None:
    r = _canonical_or_refused(prefix + tail)
    if r is not None:
        # What is forwarded is canonical: canonicalising it again changes nothing.
        again = route(b"/" + r.upstream.encode() + r.path.encode("latin-1"), b"", KNOWN)
        assert (again.path, again.view) == (r.path, r.view)
        assert r.path.isascii() and not any(c in r.path for c in "\\\x00\r\n")


# A segment: unreserved characters, each sent as itself (0) or percent-encoded in lower (1)
# or upper (2) case hex; "." and ".." are refused, so not generated.
segment = st.lists(st.tuples(st.sampled_from(UNRESERVED), st.integers(0, 2)),
                   min_size=1, max_size=12).filter(
    lambda chars: "".join(c for c, _ in chars) not in (".", ".."))
SPELLINGS = ("{}", "%{:02x}", "%{:02X}")


@settings(max_examples=300, deadline=200)
@given(st.lists(segment, max_size=8))
def test_fuzz_encoded_unreserved_paths_canonicalise_to_the_plain_path(
        segments: list[list[tuple[str, int]]]) -> None:
    # The reference: a path of unreserved characters, any of them percent-encoded in either
    # case, is the plain path itself to every upstream (RFC 3986 §6.2.2.2).
    plain = "".join("/" + "".join(c for c, _ in chars) for chars in segments)
    encoded = "".join("/" + "".join(SPELLINGS[how].format(c if how == 0 else ord(c))
                                    for c, how in chars) for chars in segments)
    assert unquote(encoded) == plain
    r = route(b"/openai" + encoded.encode(), b"", KNOWN)
    assert (r.upstream, r.path, r.view) == ("openai", plain, plain or "/")


def _best_time(raw: bytes) -> float:
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        _canonical_or_refused(raw)
        best = min(best, time.perf_counter() - started)
    return best


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=1, max_size=16), st.sampled_from([b"", b"/%2", b"/..", b"%5C"]))
def test_fuzz_canonicalisation_is_linear_in_the_path(unit: bytes, ending: bytes) -> None:
    # A unit repeated to ~4 KB, then 8x that; an ending the pass refuses only at the end.
    repeat = 4096 // len(unit) + 1
    small = _best_time(b"/openai/v1/" + unit * repeat + ending)
    large = _best_time(b"/openai/v1/" + unit * (8 * repeat) + ending)
    # 8x the input costs about 8x, not 64x; 32x leaves room for a shared, noisy machine
    # (20x was crossed under a load average of 7) and still fails a quadratic pass.
    assert large < 32 * small + 0.002, (unit, small, large)
