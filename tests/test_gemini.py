"""``provider: gemini`` through a real proxy, with google-genai as the client (issue 10).

The fake upstream replays literal Gemini API transcripts (tests/fixtures/gemini_*): Gemini
2.5 Pro with thinking tokens and cached content. Expected costs are worked out by hand from
the catalog's ``gemini/gemini-2.5-pro`` rates (USD per Mtok): input 1.25, cached input
0.125, output 10.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import ProxyProcess, need
from tests.fake_upstream import FakeUpstream, Reply, fixture

try:
    from google import genai
    from google.genai import errors as genai_errors
    from google.genai import types
except ImportError:  # pragma: no cover - CI installs the test extra
    genai = None  # type: ignore[assignment]

CALLER_KEY = "AIza-caller-key-0123456789"
PROXY_KEY = "AIza-proxy-custody-key-9876"
VIRTUAL_KEY = "vk-gemini-0123456789abcdef"
# The transcripts' usage: promptTokenCount 4172 (cachedContentTokenCount 4056 of it),
# candidatesTokenCount 9, thoughtsTokenCount 438.
# cost = (4172 - 4056) * 1.25 + 4056 * 0.125 + (9 + 438) * 10   (per Mtok)
#      = 145 + 507 + 4470 = 5122 per Mtok = $0.005122
COST = 0.005122
TOKENS = {"input": 4172, "cached_input": 4056, "output": 447, "reasoning": 438}


@pytest.fixture(scope="module")
def gemini_proxy(fake: FakeUpstream, spawn: Any) -> ProxyProcess:
    up = {"url": fake.url, "provider": "gemini", "timeout_s": 5}
    return spawn({"upstreams": {  # type: ignore[no-any-return]
        "gemini": up,
        "gemini-custody": {**up, "api_key": PROXY_KEY}}})


@pytest.fixture(scope="module")
def keyed_proxy(fake: FakeUpstream, spawn: Any) -> ProxyProcess:
    return spawn({  # type: ignore[no-any-return]
        "upstreams": {"gemini": {"url": fake.url, "provider": "gemini", "timeout_s": 5,
                                 "api_key": PROXY_KEY}},
        "keys": [{"key": VIRTUAL_KEY, "project": "gem-team"}]})


def sdk(proxy: ProxyProcess, project: str | None, api_key: str = CALLER_KEY,
        upstream: str = "gemini") -> Any:
    if genai is None:
        need("google-genai is not installed (pip install -e '.[test]')")
    headers = {"x-spendgate-project": project} if project else {}
    return genai.Client(api_key=api_key, http_options=types.HttpOptions(
        base_url=f"{proxy.url}/{upstream}", headers=headers, api_version="v1beta",
        retry_options=types.HttpRetryOptions(attempts=1)))


def sse_chunks(name: str) -> list[bytes]:
    return [e + b"\r\n\r\n" for e in fixture(name).split(b"\r\n\r\n") if e.strip()]


def tokens(proxy: ProxyProcess, project: str, source: str = "reported") -> dict[str, Any]:
    return {t: proxy.sample("spendgate_tokens_total", project=project, type=t, source=source)
            for t in TOKENS}


def assert_exact(proxy: ProxyProcess, project: str, calls: int = 1) -> None:
    assert tokens(proxy, project) == {t: n * calls for t, n in TOKENS.items()}
    assert proxy.sample("spendgate_cost_usd_total", project=project) == pytest.approx(
        COST * calls, rel=1e-12)
    assert proxy.sample("spendgate_requests_total", project=project, status="200",
                        model="gemini-2.5-pro", provider="gcp.gemini") == calls


def test_generate_content_with_thinking_and_cache(gemini_proxy: ProxyProcess,
                                                  upstream: FakeUpstream) -> None:
    upstream.queue(Reply(body=fixture("gemini_generate_content_response.json")))
    client = sdk(gemini_proxy, "gem")
    result = client.models.generate_content(
        model="gemini-2.5-pro", contents="What is the capital of France?",
        config=types.GenerateContentConfig(
            cached_content="cachedContents/geo-facts-01",
            thinking_config=types.ThinkingConfig(include_thoughts=True)))
    assert result.text == "The capital of France is **Paris**."
    assert result.usage_metadata.thoughts_token_count == 438
    seen = upstream.requests[-1]
    assert seen.raw_path == "/v1beta/models/gemini-2.5-pro:generateContent"
    assert seen.header("x-goog-api-key") == CALLER_KEY  # no custody: the caller's own
    assert orjson.loads(seen.body)["cachedContent"] == "cachedContents/geo-facts-01"
    assert_exact(gemini_proxy, "gem")


def test_stream_sse_keeps_the_last_running_totals(gemini_proxy: ProxyProcess,
                                                  upstream: FakeUpstream) -> None:
    upstream.queue(Reply(content_type="text/event-stream",
                         chunks=sse_chunks("gemini_stream_generate_content.sse")))
    client = sdk(gemini_proxy, "gem-sse")
    text = "".join(chunk.text or "" for chunk in client.models.generate_content_stream(
        model="gemini-2.5-pro", contents="Capital?"))
    assert text.endswith("The capital of France is **Paris**.")
    seen = upstream.requests[-1]
    assert (seen.raw_path, seen.query) == (
        "/v1beta/models/gemini-2.5-pro:streamGenerateContent", "alt=sse")
    assert_exact(gemini_proxy, "gem-sse")  # 2 + 6 + 9 summed would be 17 candidates


def test_stream_json_array_is_forwarded_as_it_arrives(gemini_proxy: ProxyProcess,
                                                      upstream: FakeUpstream) -> None:
    raw = fixture("gemini_stream_generate_content_array.json")
    pieces = [raw[i:i + 400] for i in range(0, len(raw), 400)]  # cut mid-element, mid-string
    upstream.queue(Reply(chunks=pieces, chunk_delay_s=0.15))
    started = time.monotonic()
    with httpx.stream("POST", gemini_proxy.url
                      + "/gemini/v1/models/gemini-2.5-pro:streamGenerateContent",
                      content=b'{"contents":[{"parts":[{"text":"Capital?"}]}]}',
                      headers={"x-goog-api-key": CALLER_KEY,
                               "x-spendgate-project": "gem-array"}) as r:
        parts = r.iter_raw()
        first = next(parts)
        first_at = time.monotonic() - started
        received = first + b"".join(parts)
        total = time.monotonic() - started
    assert received == raw  # byte for byte
    assert len(pieces) >= 8 and first_at < total - 0.5  # the first piece came long before
    assert_exact(gemini_proxy, "gem-array")


def test_custody_replaces_header_and_query_keys(gemini_proxy: ProxyProcess,
                                                upstream: FakeUpstream) -> None:
    upstream.queue(Reply(body=fixture("gemini_generate_content_response.json")))
    r = httpx.post(gemini_proxy.url + "/gemini-custody/v1beta/models/gemini-2.5-pro"
                   ":generateContent?key=" + CALLER_KEY + "&%6Bey=x&$alt=json",
                   content=b'{"contents":"Capital?"}',
                   headers={"x-goog-api-key": CALLER_KEY, "x-spendgate-project": "gem-custody"})
    assert r.status_code == 200
    seen = upstream.requests[-1]
    assert seen.query == "$alt=json"  # every spelling of "key" removed
    assert [v for k, v in seen.headers if k.lower() == "x-goog-api-key"] == [PROXY_KEY]
    assert CALLER_KEY not in str(seen.headers)
    assert_exact(gemini_proxy, "gem-custody")


def test_virtual_key_as_the_sdk_api_key(keyed_proxy: ProxyProcess,
                                        upstream: FakeUpstream) -> None:
    upstream.queue(Reply(body=fixture("gemini_generate_content_response.json")),
                   Reply(body=fixture("gemini_generate_content_response.json")))
    client = sdk(keyed_proxy, None, api_key=VIRTUAL_KEY)
    client.models.generate_content(model="gemini-2.5-pro", contents="Capital?")
    assert upstream.requests[-1].header("x-goog-api-key") == PROXY_KEY
    # The REST habit: the key in the query, no header at all.
    r = httpx.post(keyed_proxy.url + "/gemini/v1beta/models/gemini-2.5-pro:generateContent"
                   "?key=" + VIRTUAL_KEY, content=b'{"contents":"Capital?"}')
    assert r.status_code == 200
    assert upstream.requests[-1].query == ""
    assert upstream.requests[-1].header("x-goog-api-key") == PROXY_KEY
    assert_exact(keyed_proxy, "gem-team", calls=2)


def test_wrong_key_gets_a_gemini_error_the_sdk_raises(keyed_proxy: ProxyProcess,
                                                      upstream: FakeUpstream) -> None:
    client = sdk(keyed_proxy, None, api_key="not-a-key")
    with pytest.raises(genai_errors.ClientError) as raised:
        client.models.generate_content(
            model="gemini-2.5-pro", contents="Capital?")
    assert raised.value.code == 401 and raised.value.status == "UNAUTHENTICATED"
    assert "virtual key" in (raised.value.message or "")
    assert upstream.requests == []


@pytest.mark.parametrize("verb", ["%3AgenerateContent", "%3agenerateContent",
                                  ":%67enerateContent", ":GENERATECONTENT",
                                  ":generateContent/", "%3AgenerateContent;x=1"])
def test_encoded_verbs_are_metered(gemini_proxy: ProxyProcess, upstream: FakeUpstream,
                                   verb: str) -> None:
    upstream.queue(Reply(body=fixture("gemini_generate_content_response.json")))
    project = "gem-enc-" + str(abs(hash(verb)))
    r = httpx.post(f"{gemini_proxy.url}/gemini/v1beta/models/gemini-2.5-pro{verb}",
                   content=b'{"contents":"Capital?"}',
                   headers={"x-goog-api-key": CALLER_KEY, "x-spendgate-project": project})
    assert r.status_code == 200
    assert_exact(gemini_proxy, project)


def test_count_tokens_is_forwarded_never_charged(gemini_proxy: ProxyProcess,
                                                 upstream: FakeUpstream) -> None:
    upstream.queue(Reply(body=b'{"totalTokens": 31, "cachedContentTokenCount": 0}'))
    client = sdk(gemini_proxy, "gem-count")
    result = client.models.count_tokens(
        model="gemini-2.5-pro", contents="What is the capital of France?")
    assert result.total_tokens == 31
    assert upstream.requests[-1].raw_path == "/v1beta/models/gemini-2.5-pro:countTokens"
    assert gemini_proxy.sample("spendgate_requests_total", project="gem-count") == 1
    assert gemini_proxy.sample("spendgate_tokens_total", project="gem-count") is None
    assert gemini_proxy.sample("spendgate_cost_usd_total", project="gem-count") is None


def test_embeddings_without_usage_are_estimated(gemini_proxy: ProxyProcess,
                                                upstream: FakeUpstream) -> None:
    upstream.queue(Reply(body=b'{"embeddings": [{"values": [0.013, -0.008, 0.021]}]}'))
    client = sdk(gemini_proxy, "gem-embed")
    result = client.models.embed_content(
        model="gemini-embedding-001", contents="The capital of France is Paris.")
    assert result.embeddings[0].values == [0.013, -0.008, 0.021]
    from spendgate.accounting.tokens import TokenEstimator
    expected = TokenEstimator().count_text("The capital of France is Paris.",
                                           "gemini-embedding-001")
    assert gemini_proxy.sample("spendgate_tokens_total", project="gem-embed", type="input",
                               source="estimated") == expected
    # gemini/gemini-embedding-001: input 0.15 per Mtok
    assert gemini_proxy.sample("spendgate_cost_usd_total", project="gem-embed") == \
        pytest.approx(expected * 0.15 / 1e6, rel=1e-12)


def test_stream_without_usage_is_estimated(gemini_proxy: ProxyProcess,
                                           upstream: FakeUpstream) -> None:
    bare = [b'data: {"candidates": [{"content": {"parts": [{"text": "Paris is the"}]}}]}\r\n\r\n',
            b'data: {"candidates": [{"content": {"parts": [{"text": " capital."}]},'
            b' "finishReason": "STOP"}]}\r\n\r\n']
    upstream.queue(Reply(content_type="text/event-stream", chunks=bare))
    client = sdk(gemini_proxy, "gem-est")
    list(client.models.generate_content_stream(
        model="gemini-2.5-pro", contents="What is the capital of France?"))
    from spendgate.accounting.tokens import TokenEstimator
    est = TokenEstimator()
    assert gemini_proxy.sample("spendgate_tokens_total", project="gem-est", type="output",
                               source="estimated") == est.count_text("Paris is the capital.",
                                                                     "gemini-2.5-pro")
    prompt = est.estimate_prompt("chat", {"messages": [
        {"role": "user", "content": "What is the capital of France?"}]}, "gemini-2.5-pro")
    assert gemini_proxy.sample("spendgate_tokens_total", project="gem-est", type="input",
                               source="estimated") == prompt
    assert gemini_proxy.sample("spendgate_usage_missing_total", project="gem-est") == 1



# ---- the streamed array, read element by element ------------------------------------------

ARRAY = (b'[{"a": "x\\\\\\"}{[", "b": [{"c": 1}]}\r\n,\r\n{"d": "\\u007d\\\\"} ,'
         b'{"e": {}}, 7, "s{"]')


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 64])
def test_array_splitter_elements_in_any_pieces(size: int) -> None:
    from spendgate.providers.jsonarray import JsonArraySplitter
    splitter, forwarded, elements = JsonArraySplitter(), b"", []
    for i in range(0, len(ARRAY), size):
        for event in splitter.feed(ARRAY[i:i + size]):
            forwarded += event.raw
            if event.data:
                elements.append(orjson.loads(event.data))
    assert forwarded == ARRAY  # every byte goes on at once, nothing held back
    assert elements == [e for e in orjson.loads(ARRAY) if isinstance(e, dict)]
    assert splitter.flush() == b""


def test_array_splitter_does_not_hold_an_element_over_the_bound() -> None:
    from spendgate.providers.jsonarray import JsonArraySplitter
    splitter = JsonArraySplitter(max_event=12)
    data = [e.data for i in range(0, len(ARRAY), 4) for e in splitter.feed(ARRAY[i:i + 4])]
    assert [orjson.loads(d) for d in data if d] == [{"e": {}}]
    assert splitter.oversized_events == 2


def test_usage_mapping_tool_prompt_and_missing_fields() -> None:
    from spendgate.providers.gemini import gemini_usage
    from spendgate.usage import Usage
    assert gemini_usage({"promptTokenCount": 100, "toolUsePromptTokenCount": 20,
                         "candidatesTokenCount": 7, "thoughtsTokenCount": 5,
                         "cachedContentTokenCount": 64}) == Usage(
        input=120, output=12, cached_input=64, reasoning=5)
    assert gemini_usage({"promptTokenCount": 9, "thoughtsTokenCount": 30}) == Usage(
        input=9, output=30, reasoning=30)  # all thinking, no candidates yet
    assert gemini_usage({"totalTokenCount": 3}) == Usage()
    assert gemini_usage("nonsense") == Usage()


def test_unknown_upstream_answers_in_gemini_shape(gemini_proxy: ProxyProcess,
                                                  upstream: FakeUpstream) -> None:
    client = sdk(gemini_proxy, None, upstream="no-such-upstream")
    with pytest.raises(genai_errors.ClientError) as raised:
        client.models.generate_content(model="gemini-2.5-pro", contents="Capital?")
    assert (raised.value.code, raised.value.status) == (404, "NOT_FOUND")
    assert upstream.requests == []


def test_paths_classified_leniently() -> None:
    from spendgate.providers.gemini import GeminiProvider
    p, body = GeminiProvider(), b'{"contents": "Hi", "generationConfig": {"maxOutputTokens": 64}}'
    vertex = "/v1/projects/p/locations/l/publishers"
    for path, (operation, stream, model, metered) in {
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent": ("chat", True,
                                                                 "gemini-2.5-flash", True),
        "/v1beta/tunedModels/my-tuned:generateContent": ("chat", False, "my-tuned", True),
        "/v1/models/text-embedding-004:batchEmbedContents": ("embeddings", False,
                                                            "text-embedding-004", True),
        "/v1beta/models/gemini-2.5-pro:countTokens": ("other", False, "gemini-2.5-pro", False),
        "/v1beta/models": ("other", False, None, False),
        f"{vertex}/anthropic/models/claude-opus-4-1@20250805:streamRawPredict": (
            "chat", True, "claude-opus-4-1@20250805", True),
        f"{vertex}/anthropic/models/count-tokens:rawPredict": ("other", False, "count-tokens",
                                                               False),
    }.items():
        info = p.parse_request("POST", path, body)
        assert (info.operation, info.stream, info.model, info.metered) == (
            operation, stream, model, metered), path
    assert p.parse_request("GET", "/v1beta/models/gemini-2.5-pro:generateContent",
                           b"").metered is False
    info = p.parse_request("POST", "/v1beta/models/g:generateContent",
                           b'{"generationConfig": {"maxOutputTokens": 1e300}}')
    assert info.invalid is not None and "maxOutputTokens" in info.invalid


def test_stream_answered_with_an_error_is_not_billed(gemini_proxy: ProxyProcess,
                                                     upstream: FakeUpstream) -> None:
    error = (b'[{\n  "error": {\n    "code": 429,\n    "message": "Resource has been exhausted",'
             b'\n    "status": "RESOURCE_EXHAUSTED"\n  }\n}\n]')
    upstream.queue(Reply(status=429, body=error))
    r = httpx.post(gemini_proxy.url + "/gemini/v1beta/models/gemini-2.5-pro:streamGenerateContent",
                   content=b'{"contents": "Capital?"}',
                   headers={"x-goog-api-key": CALLER_KEY, "x-spendgate-project": "gem-429"})
    assert (r.status_code, r.content) == (429, error)
    assert gemini_proxy.sample("spendgate_requests_total", project="gem-429", status="429") == 1
    assert gemini_proxy.sample("spendgate_tokens_total", project="gem-429") is None
    assert gemini_proxy.sample("spendgate_cost_usd_total", project="gem-429") is None
