"""``provider: bedrock`` through a real proxy, with boto3's bedrock-runtime as the client.

The fake Bedrock (a ``FakeUpstream`` whose ``check`` verifies SigV4 from the spec, in
``tests/bedrock_wire.py``) refuses, as AWS does, any request not signed by the proxy's own
credentials: every call that succeeds here was re-signed right (host, path, body). Replies
are literal transcripts (tests/fixtures/bedrock_*). Expected costs by hand from the catalog's
``us.anthropic.claude-sonnet-4-5-20250929-v1:0`` rates (LiteLLM's bedrock_converse entry,
USD per Mtok): input 3.3, cached input 0.33, cache write 4.125, output 16.5.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from tests.bedrock_wire import exception, sigv4_problem
from tests.conftest import ProxyProcess, need
from tests.fake_upstream import FakeUpstream, Reply, SeenRequest, fixture

try:
    import boto3
    import botocore.config
    import botocore.exceptions
    from botocore.eventstream import EventStreamBuffer
except ImportError:  # pragma: no cover - CI installs the test extra
    boto3 = None

MODEL = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
PROXY_KEY_ID, PROXY_SECRET = "AKIAPROXYCUSTODY0001", "proxy/secret+custody/key0123456789abcd"
CALLER_KEY_ID, CALLER_SECRET = "AKIACALLER0000000001", "caller/secret0123456789abcdefghijklmn"
VIRTUAL_KEY = "vk-bedrock-0123456789abcdef"
REGION = "us-east-1"
EVENTSTREAM = "application/vnd.amazon.eventstream"
# input 23 + cache read 2048 = 2071; output 12:
# (2071 - 2048) * 3.3 + 2048 * 0.33 + 12 * 16.5 = 75.9 + 675.84 + 198 = 949.74 per Mtok
CACHE_READ_COST = 0.00094974
# input 23 + cache write 2048 = 2071; output 12:
# 23 * 3.3 + 2048 * 4.125 + 12 * 16.5 = 75.9 + 8448 + 198 = 8721.9 per Mtok
CACHE_WRITE_COST = 0.0087219
MESSAGES = [{"role": "user", "content": [{"text": "What is the capital of France?"}]}]
ANTHROPIC_BODY = json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 256,
                             "messages": [{"role": "user",
                                           "content": "What is the capital of France?"}]})


def signed_by_proxy(seen: SeenRequest) -> Reply | None:
    """Bedrock's check: a SigV4 request must be signed with the proxy's key; a Bearer
    (Bedrock API key) is taken as it is."""
    if (seen.header("authorization") or "").startswith("Bearer "):
        return None
    problem = sigv4_problem(seen, PROXY_KEY_ID, PROXY_SECRET, REGION)
    if problem is None:
        return None
    return Reply(status=403, body=orjson.dumps({"message": f"InvalidSignature: {problem}"}),
                 headers={"x-amzn-errortype": "InvalidSignatureException"})


@pytest.fixture(scope="module")
def bedrock_fake() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    server.check = signed_by_proxy
    yield server
    server.stop()


@pytest.fixture()
def aws(bedrock_fake: FakeUpstream) -> FakeUpstream:
    return bedrock_fake.reset()


@pytest.fixture(scope="module")
def bedrock_proxy(bedrock_fake: FakeUpstream, spawn: Any, tmp_path_factory: Any) -> ProxyProcess:
    log = tmp_path_factory.mktemp("bedrock") / "usage.jsonl"
    up = {"url": bedrock_fake.url, "provider": "bedrock", "timeout_s": 5}
    return spawn({  # type: ignore[no-any-return]
        "upstreams": {
            "bedrock": {**up, "aws": {"region": REGION, "access_key_id": PROXY_KEY_ID,
                                      "secret_access_key": PROXY_SECRET}},
            "bedrock-keys": up},   # Bedrock API keys: the caller's Bearer goes as it is
        "telemetry": {"usage_log": {"path": str(log)}}})


@pytest.fixture(scope="module")
def keyed_proxy(bedrock_fake: FakeUpstream, spawn: Any) -> ProxyProcess:
    return spawn({  # type: ignore[no-any-return]
        "upstreams": {"bedrock": {
            "url": bedrock_fake.url, "provider": "bedrock", "timeout_s": 5,
            "aws": {"region": REGION, "access_key_id": PROXY_KEY_ID,
                    "secret_access_key": PROXY_SECRET}}},
        "keys": [{"key": VIRTUAL_KEY, "project": "aws-team"}]})


def runtime(proxy: ProxyProcess, project: str | None, upstream: str = "bedrock",
            key_id: str = CALLER_KEY_ID) -> Any:
    if boto3 is None:
        need("boto3 is not installed (pip install -e '.[test]')")
    client = boto3.client("bedrock-runtime", region_name=REGION,
                          endpoint_url=f"{proxy.url}/{upstream}", aws_access_key_id=key_id,
                          aws_secret_access_key=CALLER_SECRET,
                          config=botocore.config.Config(retries={"max_attempts": 1}))
    if project:
        client.meta.events.register(
            "before-sign.bedrock-runtime.*",
            lambda request, **_: request.headers.__setitem__("x-spendgate-project", project))
    return client


def frames(name: str) -> list[bytes]:
    """A transcript's frames, one per chunk, as Bedrock writes them."""
    return _split(fixture(name))


def _split(data: bytes) -> list[bytes]:
    out, i = [], 0
    while i < len(data):
        total = int.from_bytes(data[i:i + 4], "big")
        out.append(data[i:i + total])
        i += total
    return out


def exact(proxy: ProxyProcess, project: str, cost: float, cached: int, written: int) -> None:
    got = {t: proxy.sample("spendgate_tokens_total", project=project, type=t,
                           source="reported")
           for t in ("input", "output", "cached_input", "cache_write")}
    # A type counted 0 has no sample.
    assert got == {"input": 2071, "output": 12, "cached_input": cached or None,
                   "cache_write": written or None}
    assert proxy.sample("spendgate_cost_usd_total", project=project, model=MODEL,
                        provider="aws.bedrock") == pytest.approx(cost, rel=1e-12)


def upstream_signed(aws: FakeUpstream, action: str) -> SeenRequest:
    seen = aws.requests[-1]
    assert seen.raw_path == f"/model/{MODEL.replace(':', '%3A')}/{action}"
    assert sigv4_problem(seen, PROXY_KEY_ID, PROXY_SECRET, REGION) is None
    assert CALLER_KEY_ID not in str(seen.headers)  # custody: only the proxy's credential
    return seen


def test_fixtures_are_valid_event_streams() -> None:
    if boto3 is None:
        need("boto3 is not installed (pip install -e '.[test]')")
    for name in ("bedrock_converse_stream.eventstream",
                 "bedrock_invoke_anthropic_stream.eventstream"):
        buffer = EventStreamBuffer()
        buffer.add_data(fixture(name))
        messages = list(buffer)  # botocore checks both CRCs of every frame
        assert len(messages) == len(_split(fixture(name))) >= 6


def test_converse_is_re_signed_and_priced(bedrock_proxy: ProxyProcess, aws: FakeUpstream) -> None:
    aws.queue(Reply(body=fixture("bedrock_converse_response.json")))
    result = runtime(bedrock_proxy, "br-converse").converse(modelId=MODEL, messages=MESSAGES)
    assert result["output"]["message"]["content"][0]["text"] == "The capital of France is Paris."
    seen = upstream_signed(aws, "converse")
    assert orjson.loads(seen.body)["messages"] == MESSAGES
    exact(bedrock_proxy, "br-converse", CACHE_WRITE_COST, cached=0, written=2048)


def test_converse_stream_frames_untouched(bedrock_proxy: ProxyProcess,
                                          aws: FakeUpstream) -> None:
    aws.queue(Reply(content_type=EVENTSTREAM,
                    chunks=frames("bedrock_converse_stream.eventstream")))
    result = runtime(bedrock_proxy, "br-stream").converse_stream(modelId=MODEL,
                                                                 messages=MESSAGES)
    events = list(result["stream"])
    text = "".join(e["contentBlockDelta"]["delta"]["text"] for e in events
                   if "contentBlockDelta" in e)
    assert text == "The capital of France is Paris."
    assert events[-1]["metadata"]["usage"]["cacheReadInputTokens"] == 2048
    upstream_signed(aws, "converse-stream")
    exact(bedrock_proxy, "br-stream", CACHE_READ_COST, cached=2048, written=0)
    # Byte for byte, whatever pieces the frames arrive in.
    raw = fixture("bedrock_converse_stream.eventstream")
    aws.queue(Reply(content_type=EVENTSTREAM, chunks=[raw[i:i + 37]
                                                      for i in range(0, len(raw), 37)]))
    r = httpx.post(bedrock_proxy.url + f"/bedrock/model/{MODEL}/converse-stream",
                   content=orjson.dumps({"messages": MESSAGES}),
                   headers={"x-spendgate-project": "br-bytes"})
    assert r.content == raw
    exact(bedrock_proxy, "br-bytes", CACHE_READ_COST, cached=2048, written=0)


def test_invoke_model_anthropic(bedrock_proxy: ProxyProcess, aws: FakeUpstream) -> None:
    aws.queue(Reply(body=fixture("bedrock_invoke_anthropic_response.json")))
    result = runtime(bedrock_proxy, "br-invoke").invoke_model(modelId=MODEL,
                                                              body=ANTHROPIC_BODY)
    assert json.loads(result["body"].read())["content"][0]["text"].endswith("Paris.")
    assert upstream_signed(aws, "invoke").body == ANTHROPIC_BODY.encode()
    exact(bedrock_proxy, "br-invoke", CACHE_READ_COST, cached=2048, written=0)


def test_invoke_model_with_response_stream(bedrock_proxy: ProxyProcess,
                                           aws: FakeUpstream) -> None:
    aws.queue(Reply(content_type=EVENTSTREAM,
                    chunks=frames("bedrock_invoke_anthropic_stream.eventstream")))
    result = runtime(bedrock_proxy, "br-invoke-stream").invoke_model_with_response_stream(
        modelId=MODEL, body=ANTHROPIC_BODY)
    chunks = [json.loads(e["chunk"]["bytes"]) for e in result["body"]]
    assert chunks[-1]["amazon-bedrock-invocationMetrics"]["outputTokenCount"] == 12
    upstream_signed(aws, "invoke-with-response-stream")
    exact(bedrock_proxy, "br-invoke-stream", CACHE_READ_COST, cached=2048, written=0)


def test_exception_frame_after_200_is_an_error_of_the_call(
        bedrock_proxy: ProxyProcess, aws: FakeUpstream) -> None:
    first = frames("bedrock_converse_stream.eventstream")[:3]
    aws.queue(Reply(content_type=EVENTSTREAM, chunks=[
        *first, exception("modelStreamErrorException", "The model stopped unexpectedly")]))
    result = runtime(bedrock_proxy, "br-broken").converse_stream(modelId=MODEL,
                                                                 messages=MESSAGES)
    with pytest.raises(botocore.exceptions.EventStreamError) as raised:
        list(result["stream"])
    assert raised.value.response["Error"]["Code"] == "modelStreamErrorException"
    # Counted, estimated (no metadata came: the prompt, and the text that was streamed), and
    # recorded as that error.
    from spendgate.accounting.tokens import TokenEstimator
    estimator = TokenEstimator()
    assert bedrock_proxy.eventually("spendgate_tokens_total", project="br-broken",
                                    type="output", source="estimated") == \
        estimator.count_text("The capital of France is Paris.", MODEL)
    assert bedrock_proxy.sample("spendgate_tokens_total", project="br-broken", type="input",
                                source="estimated") == \
        estimator.estimate_prompt("chat", {"messages": MESSAGES}, MODEL)
    config = yaml.safe_load(bedrock_proxy.config_path.read_text())
    log = Path(config["telemetry"]["usage_log"]["path"])
    records = [orjson.loads(line) for line in log.read_text().splitlines()]
    broken = [r for r in records if r.get("project") == "br-broken"]
    assert broken and broken[-1]["error_type"] == "modelStreamErrorException"


def test_bedrock_api_key_bearer_is_forwarded(bedrock_proxy: ProxyProcess, aws: FakeUpstream,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", "ABSKbedrock-api-key-0123456789")
    aws.queue(Reply(body=fixture("bedrock_converse_response.json")))
    runtime(bedrock_proxy, "br-apikey", upstream="bedrock-keys").converse(
        modelId=MODEL, messages=MESSAGES)
    seen = aws.requests[-1]
    assert seen.header("authorization") == "Bearer ABSKbedrock-api-key-0123456789"
    exact(bedrock_proxy, "br-apikey", CACHE_WRITE_COST, cached=0, written=2048)


def test_virtual_key_as_the_access_key_id(keyed_proxy: ProxyProcess, aws: FakeUpstream) -> None:
    aws.queue(Reply(body=fixture("bedrock_converse_response.json")))
    runtime(keyed_proxy, None, key_id=VIRTUAL_KEY).converse(modelId=MODEL, messages=MESSAGES)
    seen = upstream_signed(aws, "converse")
    assert VIRTUAL_KEY not in str(seen.headers)
    exact(keyed_proxy, "aws-team", CACHE_WRITE_COST, cached=0, written=2048)
    with pytest.raises(botocore.exceptions.ClientError) as raised:
        runtime(keyed_proxy, None, key_id="AKIANOTAVIRTUALKEY01").converse(
            modelId=MODEL, messages=MESSAGES)
    error = raised.value.response
    assert error["Error"]["Code"] == "UnrecognizedClientException"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 401
    assert "virtual key" in error["Error"]["Message"]


def test_inference_profile_arn_model_id(bedrock_proxy: ProxyProcess, aws: FakeUpstream) -> None:
    arn = f"arn:aws:bedrock:{REGION}:123456789012:inference-profile/{MODEL}"
    aws.queue(Reply(body=fixture("bedrock_converse_response.json")))
    runtime(bedrock_proxy, "br-arn").converse(modelId=arn, messages=MESSAGES)
    seen = aws.requests[-1]
    assert seen.raw_path == ("/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3A"
                             f"inference-profile%2F{MODEL.replace(':', '%3A')}/converse")
    assert sigv4_problem(seen, PROXY_KEY_ID, PROXY_SECRET, REGION) is None
    exact(bedrock_proxy, "br-arn", CACHE_WRITE_COST, cached=0, written=2048)


def test_the_check_refuses_a_wrong_signature(bedrock_proxy: ProxyProcess,
                                             aws: FakeUpstream) -> None:
    """The fake's check is what makes the tests above fail when re-signing is wrong."""
    aws.queue(Reply(body=fixture("bedrock_converse_response.json")))
    runtime(bedrock_proxy, "br-check").converse(modelId=MODEL, messages=MESSAGES)
    good = aws.requests[-1]
    tampered = SeenRequest(good.method, good.raw_path, good.query, good.headers,
                           good.body + b" ")
    assert sigv4_problem(tampered, PROXY_KEY_ID, PROXY_SECRET, REGION) == \
        "signature does not match"
    assert sigv4_problem(good, CALLER_KEY_ID, CALLER_SECRET, REGION) is not None
    headers = {"authorization": good.header("authorization") or "",
               "x-amz-date": good.header("x-amz-date") or ""}
    r = httpx.post(aws.url + good.raw_path, content=good.body + b" ", headers=headers)
    assert r.status_code == 403 and r.headers["x-amzn-errortype"] == "InvalidSignatureException"
    aws.queue(Reply(body=b"{}"))
    assert httpx.post(aws.url + good.raw_path, content=good.body,
                      headers=headers).status_code == 200  # the very request signed


# ---- the event-stream framing --------------------------------------------------------------

def test_splitter_hands_on_whole_frames_and_bounds_what_it_holds() -> None:
    from spendgate.providers.eventstream import EventStreamSplitter
    raw = fixture("bedrock_converse_stream.eventstream")
    sizes = [len(f) for f in _split(raw)]
    splitter = EventStreamSplitter()
    events = [e for i in range(0, len(raw), 5) for e in splitter.feed(raw[i:i + 5])]
    assert [len(e.raw) for e in events] == sizes  # frame by frame, each whole
    assert [e.event for e in events] == ["messageStart", "contentBlockDelta",
                                         "contentBlockDelta", "contentBlockStop",
                                         "messageStop", "metadata"]
    # A bound under the metadata frame: it goes on unparsed, in pieces, and is counted.
    small = EventStreamSplitter(max_event=sizes[-1] - 1)
    events = [e for i in range(0, len(raw), 64) for e in small.feed(raw[i:i + 64])]
    assert b"".join(e.raw for e in events) == raw and small.oversized_events == 1
    assert all(e.oversized for e in events if e.event is None) and \
        [e.event for e in events if not e.oversized][-1] == "messageStop"


def test_a_broken_prelude_passes_the_rest_through_unparsed() -> None:
    from spendgate.providers.eventstream import EventStreamSplitter
    frame_bytes = _split(fixture("bedrock_converse_stream.eventstream"))
    broken = frame_bytes[0] + b"\x00\x00\x00\x20garbage-prelude!" + frame_bytes[1]
    splitter = EventStreamSplitter()
    events = splitter.feed(broken)
    assert events[0].event == "messageStart"
    assert b"".join(e.raw for e in events) == broken
    assert all(e.oversized for e in events[1:])
    assert splitter.feed(b"more") == [events[-1].__class__(b"more", None, b"", True)]


@pytest.mark.parametrize(("body", "usage", "text"), [
    # Amazon Nova through InvokeModel
    (b'{"output":{"message":{"content":[{"text":"Paris."}],"role":"assistant"}},'
     b'"stopReason":"end_turn","usage":{"inputTokens":11,"outputTokens":3,"totalTokens":14,'
     b'"cacheReadInputTokenCount":0,"cacheWriteInputTokenCount":0}}',
     {"input": 11, "output": 3, "cached_input": 0, "cache_write": 0}, "Paris."),
    # Meta Llama through InvokeModel
    (b'{"generation":" Paris.","prompt_token_count":17,"generation_token_count":4,'
     b'"stop_reason":"stop"}', {"input": 17, "output": 4}, " Paris."),
    # Titan embeddings
    (b'{"embedding":[0.1,0.2],"inputTextTokenCount":6}', {"input": 6}, ""),
])
def test_invoke_bodies_of_other_model_families(body: bytes, usage: dict[str, int],
                                               text: str) -> None:
    from spendgate.providers.bedrock import BedrockProvider
    from spendgate.usage import Usage
    provider = BedrockProvider()
    info = provider.parse_request("POST", "/model/amazon.nova-pro-v1:0/invoke", b"{}")
    summary = provider.parse_response(info, body)
    assert summary.usage == Usage(**usage) and summary.output_text == text


def test_paths_classified_leniently() -> None:
    from spendgate.providers.bedrock import BedrockProvider
    provider = BedrockProvider()
    for path, (stream, model, metered) in {
        f"/model/{MODEL}/converse-stream": (True, MODEL, True),
        f"/MODEL/{MODEL}/Converse": (False, MODEL, True),
        "/model/arn:aws:bedrock:us-east-1:1:inference-profile/eu.amazon.nova-pro-v1:0/invoke":
            (False, "eu.amazon.nova-pro-v1:0", True),
        f"/model/{MODEL}/count-tokens": (False, MODEL, False),
        "/async-invoke": (False, None, False),
    }.items():
        info = provider.parse_request("POST", path, b'{"inferenceConfig":{"maxTokens":99}}')
        assert (info.stream, info.model, info.metered) == (stream, model, metered), path
        assert info.max_tokens == (99 if metered else None)


@pytest.mark.parametrize("action", ["%63onverse", "CONVERSE", "converse;x=1", "converse/"])
def test_encoded_actions_are_metered(bedrock_proxy: ProxyProcess, aws: FakeUpstream,
                                     action: str) -> None:
    aws.queue(Reply(body=fixture("bedrock_converse_response.json")))
    project = "br-enc-" + str(abs(hash(action)))
    r = httpx.post(f"{bedrock_proxy.url}/bedrock/model/{MODEL.replace(':', '%3a')}/{action}",
                   content=orjson.dumps({"messages": MESSAGES}),
                   headers={"x-spendgate-project": project})
    assert r.status_code == 200, r.text  # re-signed for the path as forwarded
    exact(bedrock_proxy, project, CACHE_WRITE_COST, cached=0, written=2048)
