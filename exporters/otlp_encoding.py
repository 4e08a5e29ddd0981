"""OTLP/protobuf encoding of finished spans, written straight to wire bytes.

Why: the SDK's encoder builds one protobuf object per attribute, key and value; for
spendgate's ~20-attribute spans that is the largest single cost of tracing (measured here:
about half of the SDK's time), paid on the export thread of a process whose event loop
shares the GIL. The output is the same ``ExportTraceServiceRequest`` the SDK produces
(``tests/test_otlp_encoding.py`` decodes both and compares); spans this module does not
handle (events, links, map-valued attributes) go through the SDK encoder instead.

``FastOTLPSpanExporter`` is the SDK's OTLP/HTTP span exporter (endpoint, headers, TLS,
compression, retries, timeouts: all the SDK's) with only the encoding step replaced. It
sends through the exporter's HTTP client; should a future SDK rename that internal, the
exporter falls back to the SDK's own ``export`` (checked once, at construction).

Wire format: https://protobuf.dev/programming-guides/encoding/ ; field numbers from
``opentelemetry/proto/{collector/trace,trace,common,resource}/v1/*.proto``. Proto3 default
values (0, "", empty) are omitted, as the SDK's serializer omits them.
"""

from __future__ import annotations

import logging
import struct
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import SpanKind, StatusCode

log = logging.getLogger("spendgate.telemetry")

_KIND = {SpanKind.INTERNAL: 1, SpanKind.SERVER: 2, SpanKind.CLIENT: 3, SpanKind.PRODUCER: 4,
         SpanKind.CONSUMER: 5}
_STATUS = {StatusCode.UNSET: 0, StatusCode.OK: 1, StatusCode.ERROR: 2}
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200   # SpanFlags context masks
_FLAGS_TAG = b"\x85\x01"                    # field 16, wire type 5 (fixed32)
_pack_double = struct.Struct("<d").pack
_pack_fixed64 = struct.Struct("<Q").pack
_pack_fixed32 = struct.Struct("<I").pack


class Unencodable(Exception):
    """A value this encoder does not handle; the caller uses the SDK's encoder."""


def _varint(value: int) -> bytes:
    if 0 <= value < 0x80:
        return _BYTE[value]
    value &= 0xFFFF_FFFF_FFFF_FFFF  # negative int64: two's complement, ten bytes
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_BYTE = [bytes((i,)) for i in range(256)]


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (numbers below 16: one-byte tag)."""
    size = len(payload)
    return _BYTE[number << 3 | 2] + (_BYTE[size] if size < 0x80 else _varint(size)) + payload


def _string(number: int, text: str) -> bytes:
    return _field(number, text.encode()) if text else b""


def _any_value(value: Any) -> bytes:
    # AnyValue's members form a oneof: a default value (0, False, "") is still written.
    if isinstance(value, str):
        return _field(1, value.encode())
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        return b"\x18" + _varint(value)
    if isinstance(value, float):
        return b"\x21" + _pack_double(value)
    if isinstance(value, bytes):
        return _field(7, value)
    if isinstance(value, Sequence):
        return _field(5, b"".join([_field(1, _any_value(v)) for v in value]))
    raise Unencodable(type(value).__name__)


# KeyValue.key fields by name (attribute names repeat). Bounded; written only by the export
# thread(s), and a dict's get/set are atomic, so no lock is needed.
_KEYS: dict[str, bytes] = {}


def _key(name: str) -> bytes:
    encoded = _KEYS.get(name)
    if encoded is None:
        encoded = _field(1, name.encode())
        if len(_KEYS) < 4096:
            _KEYS[name] = encoded
    return encoded


def _attributes(number: int, attributes: Mapping[str, Any] | None) -> bytes:
    if not attributes:
        return b""
    return b"".join([_field(number, _key(key) + _field(2, _any_value(value)))
                     for key, value in attributes.items()])


def _span(span: ReadableSpan) -> bytes:
    if span.events or span.links:
        raise Unencodable("events or links")
    context = span.get_span_context()
    assert context is not None
    parent = span.parent
    flags = _HAS_IS_REMOTE | (_IS_REMOTE if parent is not None and parent.is_remote else 0)
    status = span.status
    code = _STATUS[status.status_code]
    status_bytes = _string(2, status.description or "") + (b"\x18" + _varint(code) if code
                                                           else b"")
    trace_state = ",".join([f"{k}={v}" for k, v in context.trace_state.items()]) \
        if context.trace_state else ""
    parts = [
        _field(1, context.trace_id.to_bytes(16, "big")),
        _field(2, context.span_id.to_bytes(8, "big")),
        _string(3, trace_state),
        _field(4, parent.span_id.to_bytes(8, "big")) if parent is not None else b"",
        _string(5, span.name),
        b"\x30" + _varint(_KIND[span.kind]) if _KIND[span.kind] else b"",
        b"\x39" + _pack_fixed64(span.start_time or 0) if span.start_time else b"",
        b"\x41" + _pack_fixed64(span.end_time or 0) if span.end_time else b"",
        _attributes(9, span.attributes),
        b"\x50" + _varint(span.dropped_attributes) if span.dropped_attributes else b"",
        _field(15, status_bytes),  # always present, as the SDK writes it
        _FLAGS_TAG + _pack_fixed32(flags),
    ]
    return b"".join(parts)


def encode_request(spans: Sequence[ReadableSpan]) -> bytes:
    """``ExportTraceServiceRequest`` bytes for ``spans``, grouped by resource and scope as
    the SDK groups them. Raises ``Unencodable`` for spans it does not handle."""
    grouped: dict[Any, dict[Any, list[bytes]]] = defaultdict(lambda: defaultdict(list))
    for span in spans:
        grouped[span.resource][span.instrumentation_scope].append(_field(2, _span(span)))
    out = []
    for resource, scopes in grouped.items():
        scope_spans = []
        for scope, encoded in scopes.items():
            scope_bytes = b"" if scope is None else (
                _string(1, scope.name) + _string(2, scope.version or "")
                + _attributes(3, scope.attributes))
            scope_spans.append(_field(2, _field(1, scope_bytes) + b"".join(encoded)
                                      + _string(3, (scope.schema_url if scope else "") or "")))
        out.append(_field(1, _field(1, _attributes(1, resource.attributes))
                          + b"".join(scope_spans) + _string(3, resource.schema_url or "")))
    return b"".join(out)


class FastOTLPSpanExporter(OTLPSpanExporter):
    """The SDK's OTLP/HTTP span exporter with ``encode_request`` as its encoder."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        client = getattr(self, "_client", None)
        self._send = getattr(client, "export", None)
        if not callable(self._send):
            log.warning("this OpenTelemetry SDK's exporter has no known HTTP client; spans "
                        "are encoded by the SDK (slower)")

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if not callable(self._send) or getattr(self, "_shutdown", False):
            return super().export(spans)
        try:
            data = encode_request(spans)
        except Unencodable:
            data = encode_spans(spans).SerializePartialToString()
        result = self._send(data)
        ok = getattr(result, "success", True)
        return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE
