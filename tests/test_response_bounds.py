"""What an upstream sends cannot make the proxy hold or work without bound: a gzip bomb is
decoded only up to ``server.max_decoded_mb``, an SSE event is held only up to
``server.max_event_kb``, and splitting a stream takes time linear in its bytes. Each call is
still forwarded byte for byte and counted; usage it carried unreadably is estimated.

Memory is the proxy process's own peak RSS (``VmHWM``), so each test has a proxy of its own.
"""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys
import time
import zlib
from typing import Any

import httpx
import orjson

from tests.conftest import ProxyProcess, basic_config
from tests.fake_upstream import FakeUpstream, Reply, fixture

MiB = 1024 * 1024
CHAT = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}'


def gzip_bomb(gib: int = 1) -> bytes:
    """A valid one-member gzip body of about 1 MB that decodes to ``gib`` GiB of zeros,
    built without compressing a GiB: after a full flush each MiB of zeros deflates to the
    same bytes, so they are repeated, then the trailer (CRC-32 and size) is appended."""
    zeros = bytes(MiB)
    deflater = zlib.compressobj(9, zlib.DEFLATED, 31)
    first = deflater.compress(zeros) + deflater.flush(zlib.Z_FULL_FLUSH)
    again = deflater.compress(zeros) + deflater.flush(zlib.Z_FULL_FLUSH)
    blocks = gib * 1024
    crc = 0
    for _ in range(blocks):
        crc = zlib.crc32(zeros, crc)
    final_empty_block = b"\x03\x00"
    return (first + again * (blocks - 1) + final_empty_block
            + struct.pack("<II", crc, (blocks * MiB) & 0xFFFFFFFF))


def warm_up(proxy: ProxyProcess, upstream: FakeUpstream) -> None:
    """One call whose usage is estimated: the tokenizer (tens of MiB, loaded on first use)
    is then part of the baseline the memory bounds are measured from."""
    upstream.queue(Reply(body=b'{"choices": []}'))
    httpx.post(proxy.url + "/openai/v1/chat/completions", content=CHAT,
               headers={"x-spendgate-project": "warm-up"})
    assert proxy.sample("spendgate_usage_missing_total", project="warm-up") == 1


def test_the_gzip_bomb_decodes_to_a_gib() -> None:
    bomb = gzip_bomb()
    inflater = zlib.decompressobj(31)
    total, data = 0, bomb
    while data:
        total += len(inflater.decompress(data, 64 * MiB))
        data = inflater.unconsumed_tail
    assert len(bomb) < 1.1 * MiB and total == 1024 * MiB and inflater.eof


def test_a_gzip_bomb_is_forwarded_byte_for_byte_counted_and_memory_stays_bounded(
        fake: FakeUpstream, upstream: FakeUpstream, spawn: Any) -> None:
    proxy: ProxyProcess = spawn(basic_config(fake))  # max_decoded_mb: 64 (the default)
    warm_up(proxy, upstream)
    bomb = gzip_bomb()
    upstream.queue(Reply(body=bomb, headers={"Content-Encoding": "gzip"}))
    before = proxy.peak_rss_mb()
    with httpx.stream("POST", proxy.url + "/openai/v1/chat/completions", content=CHAT,
                      headers={"x-spendgate-project": "bomb"}, timeout=60) as r:
        received = b"".join(r.iter_raw())
    assert r.status_code == 200 and r.headers["content-encoding"] == "gzip"
    assert received == bomb
    assert proxy.eventually("spendgate_requests_total", project="bomb", status="200") == 1
    assert proxy.sample("spendgate_usage_missing_total", project="bomb") == 1
    assert proxy.sample("spendgate_tokens_total", project="bomb", type="input",
                        source="estimated") > 0
    assert proxy.sample("spendgate_tokens_total", project="bomb", source="reported") is None
    grown = proxy.peak_rss_mb() - before
    assert grown < 100, f"peak RSS grew by {grown:.0f} MiB"  # 64 MiB decoded, at most
    warnings = [line for line in proxy.log().splitlines() if "max_decoded_mb" in line]
    assert len(warnings) == 1 and len(warnings[0]) < 300, warnings


def test_a_small_gzip_body_is_still_read(fake: FakeUpstream, upstream: FakeUpstream,
                                         spawn: Any) -> None:
    proxy: ProxyProcess = spawn(basic_config(fake, server={"max_decoded_mb": 1}))
    body = fixture("openai_chat_response.json")
    gzipped = zlib.compress(body, wbits=31)
    deflated = zlib.compress(body)
    raw_deflated = zlib.compress(body, wbits=-15)
    for project, data, encoding in (("gz", gzipped, "gzip"), ("zl", deflated, "deflate"),
                                    ("raw", raw_deflated, "deflate")):
        upstream.queue(Reply(body=data, headers={"Content-Encoding": encoding}))
        r = httpx.post(proxy.url + "/openai/v1/chat/completions", content=CHAT,
                       headers={"x-spendgate-project": project, "accept-encoding": encoding})
        assert r.status_code == 200 and r.content == body
        usage = orjson.loads(body)["usage"]
        assert proxy.sample("spendgate_tokens_total", project=project, type="input",
                            source="reported") == usage["prompt_tokens"]


# /healthz polled from a process of its own (the test process is busy streaming) until
# SIGTERM; prints the slowest answer and how many there were.
HEALTH_POLLER = r"""
import http.client, json, signal, sys, time
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
worst, count = 0.0, 0
while not stop:
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=10)
    conn.request("GET", "/healthz")
    assert conn.getresponse().read() == b'{"status":"ok"}'
    conn.close()
    worst, count = max(worst, time.perf_counter() - started), count + 1
    time.sleep(0.02)
print(json.dumps({"worst_s": worst, "count": count}))
"""


def stream_without_terminator(proxy: ProxyProcess, upstream: FakeUpstream,
                              mib: int) -> tuple[float, str]:
    """One streamed call whose answer is ``data: `` and ``mib`` MiB with no blank line:
    (seconds it took, the SHA-256 of what the caller got)."""
    block = b"x" * MiB
    upstream.queue(Reply(content_type="text/event-stream", chunks=[b"data: "] + [block] * mib))
    body = b'{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"Hi"}]}'
    digest = hashlib.sha256()
    started = time.monotonic()
    with httpx.stream("POST", proxy.url + "/openai/v1/chat/completions", content=body,
                      headers={"x-spendgate-project": f"flood{mib}"}, timeout=120) as r:
        for chunk in r.iter_raw():
            digest.update(chunk)
    return time.monotonic() - started, digest.hexdigest()


def test_128_mb_of_sse_without_a_terminator_goes_through_in_linear_time_and_bounded_memory(
        fake: FakeUpstream, upstream: FakeUpstream, spawn: Any) -> None:
    proxy: ProxyProcess = spawn(basic_config(fake))  # max_event_kb: 1024 (the default)
    warm_up(proxy, upstream)
    before = proxy.peak_rss_mb()
    small_s, _ = stream_without_terminator(proxy, upstream, 16)
    poller = subprocess.Popen([sys.executable, "-c", HEALTH_POLLER, str(proxy.port)],
                              stdout=subprocess.PIPE)
    try:
        time.sleep(0.3)  # its first answers come from an idle proxy
        large_s, received = stream_without_terminator(proxy, upstream, 128)
    finally:
        poller.terminate()
        out, _ = poller.communicate(timeout=10)
    assert received == hashlib.sha256(b"data: " + b"x" * (128 * MiB)).hexdigest()
    # Linear: 8x the bytes in about 8x the time (rescanning the partial event: 64x).
    assert large_s < 20 * max(small_s, 0.1) and large_s < 60, (small_s, large_s)
    health = json.loads(out)
    # Rescanning stalled it 1.5 s; 0.25 s leaves room for a loaded 2-core machine.
    assert health["count"] > 5 and health["worst_s"] < 0.25, health
    grown = proxy.peak_rss_mb() - before
    assert grown < 60, f"peak RSS grew by {grown:.0f} MiB"
    assert proxy.eventually("spendgate_requests_total", project="flood128", status="200") == 1
    assert proxy.sample("spendgate_usage_missing_total", project="flood128") == 1
    assert "forwarded unparsed" in proxy.log()


def test_an_event_over_max_event_kb_is_forwarded_unparsed_and_its_usage_estimated(
        fake: FakeUpstream, upstream: FakeUpstream, spawn: Any) -> None:
    proxy: ProxyProcess = spawn(basic_config(fake, server={"max_event_kb": 1}))
    events = [e + b"\n\n" for e in fixture("openai_chat_stream.sse").split(b"\n\n") if e.strip()]
    usage = next(i for i, e in enumerate(events) if b'"choices":[]' in e)
    # The usage chunk, padded past 1 KiB as an upstream may (a long system fingerprint).
    padded = events[usage].replace(b'"usage":', b'"padding":"' + b"p" * 2048 + b'","usage":')
    events[usage] = padded
    upstream.queue(Reply(content_type="text/event-stream", chunks=events))
    body = b'{"model":"o4-mini","stream":true,"messages":[{"role":"user","content":"Hi"}]}'
    with httpx.stream("POST", proxy.url + "/openai/v1/chat/completions", content=body,
                      headers={"x-spendgate-project": "oversized"}) as r:
        received = r.read()
    # Unparsed, so not recognised as the usage chunk the proxy asked for: it goes through,
    # while the others lose the "usage":null the proxy's include_usage added to them.
    assert received == b"".join(e if e is padded else e.replace(b'"usage":null,', b"")
                                for e in events)
    from spendgate.accounting.tokens import TokenEstimator
    text = "The capital of France is Paris."
    assert proxy.eventually("spendgate_tokens_total", project="oversized", type="output",
                            source="estimated") == TokenEstimator().count_text(text, "o4-mini")
    assert proxy.sample("spendgate_tokens_total", project="oversized", source="reported") is None
    assert proxy.sample("spendgate_usage_missing_total", project="oversized") == 1
    assert proxy.sample("spendgate_requests_total", project="oversized", status="200") == 1
    assert "1 stream event(s) over server.max_event_kb (1 KiB)" in proxy.log()
