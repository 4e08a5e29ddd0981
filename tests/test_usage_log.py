"""The structured usage log: real proxy processes writing it, and its rotation."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from spendgate.accounting.pricing import PriceCatalog
from spendgate.exporters.usage_log import UsageLogSink
from spendgate.hotpath.tracecontext import TraceIds
from spendgate.records import UsageRecord
from spendgate.usage import Usage
from tests.conftest import ProxyProcess, basic_config
from tests.fake_upstream import FakeUpstream, Reply, fixture

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
KEY = "sk-caller-USAGELOGSECRET-9d1f"


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_one_line_per_call_with_exact_cost(fake: FakeUpstream, spawn: Any,
                                           upstream: FakeUpstream, tmp_path: Path) -> None:
    log_path = tmp_path / "logs" / "usage.jsonl"
    proxy: ProxyProcess = spawn(basic_config(fake, telemetry={"usage_log": {"path": str(log_path)}}))
    upstream.queue(Reply(body=fixture("openai_chat_response.json")))
    httpx.post(proxy.url + "/openai/v1/chat/completions",
               content=b'{"model":"o4-mini","messages":[{"role":"user","content":"x"}]}',
               headers={"traceparent": f"00-{TRACE}-00f067aa0ba902b7-01",
                        "x-request-id": "usage-1", "x-spendgate-project": "billing",
                        "x-spendgate-user": "bob", "authorization": f"Bearer {KEY}"})
    events = [e + b"\n\n" for e in fixture("openai_chat_stream_ollama_no_usage.sse").split(b"\n\n")
              if e.strip()]
    upstream.queue(Reply(content_type="text/event-stream", chunks=events))
    httpx.post(proxy.url + "/openai/v1/chat/completions", headers={"x-request-id": "usage-2"},
               content=b'{"model":"llama3.1:8b","stream":true,"messages":[{"role":"user",'
                       b'"content":"Why is the sky blue?"}]}')
    upstream.queue(Reply(status=500, body=b'{"error":{"message":"boom"}}'))
    httpx.post(proxy.url + "/openai/v1/chat/completions", headers={"x-request-id": "usage-3"},
               content=b'{"model":"o4-mini","messages":[]}')
    proxy.metrics_text()  # a scrape waits for the pipeline: every call is written by now
    chat, stream, failed = lines(log_path)

    assert chat["trace_id"] == TRACE and chat["request_id"] == "usage-1"
    assert (chat["upstream"], chat["provider"], chat["operation"]) == ("openai", "openai", "chat")
    assert (chat["model"], chat["response_model"]) == ("o4-mini", "o4-mini-2025-04-16")
    assert (chat["project"], chat["user"], chat["status"]) == ("billing", "bob", 200)
    assert chat["tokens"] == {"input": {"count": 1236, "source": "reported"},
                              "output": {"count": 201, "source": "reported"},
                              "cached_input": {"count": 1152, "source": "reported"},
                              "reasoning": {"count": 192, "source": "reported"}}
    price = PriceCatalog.load().resolve("o4-mini-2025-04-16")
    assert price is not None
    exact = price.price.cost(Usage(input=1236, output=201, cached_input=1152, reasoning=192))
    assert Decimal(chat["cost_usd"]) == exact and "E" not in chat["cost_usd"]
    assert chat["priced"] is True and chat["duration_s"] > 0 and chat["ttft_s"] is None
    assert chat["time"].endswith("Z")

    assert stream["stream"] is True and stream["ttft_s"] is not None
    assert stream["tokens"]["output"]["source"] == "estimated"
    assert stream["priced"] is False and stream["cost_usd"] == "0"
    assert (failed["status"], failed["tokens"]) == (500, {})
    assert KEY not in log_path.read_text()


def test_stdout(fake: FakeUpstream, spawn: Any, upstream: FakeUpstream) -> None:
    proxy: ProxyProcess = spawn(basic_config(fake, telemetry={"usage_log": {"path": "-"}}))
    upstream.queue(Reply(body=fixture("openai_chat_response.json")))
    httpx.post(proxy.url + "/openai/v1/chat/completions", headers={"x-request-id": "to-stdout"},
               content=b'{"model":"o4-mini","messages":[]}')
    proxy.metrics_text()
    written = [orjson.loads(line) for line in proxy.log().splitlines() if line.startswith("{")]
    assert [w["request_id"] for w in written] == ["to-stdout"]


def test_an_unwritable_path_fails_at_startup(fake: FakeUpstream, spawn: Any,
                                             tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    bad = tmp_path / "a-file" / "usage.jsonl"
    with pytest.raises(RuntimeError, match=r"telemetry\.usage_log\.path: cannot open"):
        spawn(basic_config(fake, telemetry={"usage_log": {"path": str(bad)}}))


def record(i: int) -> UsageRecord:
    return UsageRecord(
        start_unix=1_760_000_000.0 + i, upstream="openai", provider="openai",
        protocol="openai", operation="chat", model="gpt-4o", response_model=None,
        project="p", user=None, virtual_key=None, status=200, stream=False, metered=True,
        usage=Usage(input=10, output=5), cost_usd=Decimal("0.0000125"), priced=True,
        price_source="builtin", duration_s=0.5, ttft_s=None, tpot_s=0.1, overhead_s=0.0001,
        error_type=None, client_closed=False, response_id=None, finish_reasons=(),
        service_tier=None, request_id=f"r{i}", max_tokens=None,
        trace=TraceIds(TRACE, f"{i + 1:016x}", None, True))


def test_rotates_by_size_keeping_backups(tmp_path: Path) -> None:
    path = tmp_path / "usage.jsonl"
    sink = UsageLogSink(str(path), max_mb=2000 / (1024 * 1024), backups=2)
    for i in range(40):
        sink.export([record(i)])
    sink.shutdown()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["usage.jsonl", "usage.jsonl.1", "usage.jsonl.2"]
    assert all(p.stat().st_size <= 2000 for p in tmp_path.iterdir())
    newest = lines(path)
    assert newest[-1]["request_id"] == "r39"
    older = lines(tmp_path / "usage.jsonl.1")
    assert older[-1]["request_id"] == f"r{int(newest[0]['request_id'][1:]) - 1}"
    assert newest[0]["cost_usd"] == "0.0000125"


def test_zero_backups_truncates(tmp_path: Path) -> None:
    path = tmp_path / "usage.jsonl"
    sink = UsageLogSink(str(path), max_mb=2000 / (1024 * 1024), backups=0)
    for i in range(40):
        sink.export([record(i)])
    sink.shutdown()
    assert [p.name for p in tmp_path.iterdir()] == ["usage.jsonl"]
    assert path.stat().st_size <= 2000 and lines(path)[-1]["request_id"] == "r39"


def test_appends_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "usage.jsonl"
    for i in range(2):
        sink = UsageLogSink(str(path))
        sink.export([record(i)])
        sink.shutdown()
    assert [line["request_id"] for line in lines(path)] == ["r0", "r1"]
