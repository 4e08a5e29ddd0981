"""spendgate's span encoder writes what the SDK's OTLP encoder writes, message for message."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import SpanKind, Status, StatusCode

from spendgate.exporters.otel import PresetIds, SpanSink
from spendgate.exporters.otlp_encoding import Unencodable, encode_request
from spendgate.hotpath.tracecontext import start_trace
from spendgate.records import UsageRecord
from spendgate.usage import Usage


def provider() -> tuple[TracerProvider, InMemorySpanExporter, PresetIds]:
    memory = InMemorySpanExporter()
    ids = PresetIds()
    tp = TracerProvider(sampler=ALWAYS_ON, id_generator=ids, shutdown_on_exit=False,
                        resource=Resource.create({"service.name": "enc-test", "n": 3}))
    tp.add_span_processor(SimpleSpanProcessor(memory))
    return tp, memory, ids


def same_as_sdk(spans: Any) -> None:
    ours = ExportTraceServiceRequest.FromString(encode_request(spans))
    assert ours == encode_spans(spans)


def record(**kw: Any) -> UsageRecord:
    base: dict[str, Any] = dict(
        start_unix=1_760_000_000.123456, upstream="openai", provider="openai",
        protocol="openai", operation="chat", model="gpt-4o", response_model="gpt-4o-2024-08-06",
        project="p", user="ünïcode-üser", virtual_key=None, status=200, stream=True,
        metered=True, usage=Usage(input=0, output=7, cached_input=3), cost_usd=Decimal("0"),
        priced=True, price_source="builtin", duration_s=1.5, ttft_s=0.25, tpot_s=0.01,
        overhead_s=0.0002, error_type=None, client_closed=False, response_id="id-1",
        finish_reasons=("stop", "length"), service_tier="default", request_id="r",
        max_tokens=16, trace=start_trace({}, True),
        request_json={"temperature": 0.0, "seed": -5, "stop": ["\n"], "stream": True,
                      "messages": [{"role": "user", "content": "héllo"}]},
        output_text="wörld")
    base.update(kw)
    return UsageRecord(**base)


def test_spendgate_spans_encode_as_the_sdk_encodes_them() -> None:
    tp, memory, ids = provider()
    caller = start_trace({b"traceparent": b"00-0af7651916cd43dd8448eb211c80319c-"
                                          b"b7ad6b7169203331-01",
                          b"tracestate": b"a=1,b=2"})
    SpanSink(tp, ids, {"openai": ("api.openai.com", 443)}, content_max_chars=100).export([
        record(),
        record(trace=caller, status=499, client_closed=True, error_type="client_closed"),
        record(status=500, stream=False, ttft_s=None, usage=Usage(), priced=False),
        record(upstream="elsewhere", model="unknown", operation="other", metered=False),
    ])
    spans = memory.get_finished_spans()
    assert len(spans) == 4 and spans[1].parent is not None
    same_as_sdk(spans)
    same_as_sdk(spans[:1])


def test_every_attribute_type_and_status() -> None:
    tp, memory, ids = provider()
    tracer = tp.get_tracer("scope-a", "1.2", schema_url="https://example/s")
    other = tp.get_tracer("scope-b")
    values: dict[str, Any] = {"s": "x", "empty": "", "t": True, "f": False, "zero": 0,
                              "neg": -1, "big": 2**62, "pi": 3.14, "fzero": 0.0,
                              "strs": ("a", ""), "ints": (1, -2), "floats": (0.5,),
                              "bools": (True, False)}
    for i, (tr, kind, status) in enumerate([
            (tracer, SpanKind.CLIENT, Status(StatusCode.ERROR, "boom")),
            (tracer, SpanKind.INTERNAL, Status(StatusCode.OK)),
            (other, SpanKind.SERVER, Status(StatusCode.UNSET))]):
        ids.trace_id, ids.span_id = 0x1234 + i, 0x99 + i
        span = tr.start_span(f"span {i}", kind=kind, attributes=values, start_time=10**18 + i)
        span.set_status(status)
        span.end(end_time=10**18 + 1000 + i)
    same_as_sdk(memory.get_finished_spans())


def test_spans_with_events_are_left_to_the_sdk() -> None:
    tp, memory, ids = provider()
    ids.trace_id, ids.span_id = 1, 2
    span = tp.get_tracer("x").start_span("with event")
    span.add_event("e")
    span.end()
    finished: list[ReadableSpan] = list(memory.get_finished_spans())
    with pytest.raises(Unencodable):
        encode_request(finished)
