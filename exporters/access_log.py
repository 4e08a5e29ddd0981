"""The access log: one line per call, on standard error, written off the hot path.

Each call, once its record is built (in the record pipeline's thread, after the caller has
its last byte), becomes one line, ``server.access_log: text`` (the default)::

    2026-01-02T03:04:05.678Z 4f1c... POST /openai/v1/chat/completions 200 upstream=openai
    model=gpt-4o served=gpt-4o-2024-08-06 project=search user=alice tokens=12/34
    cost=$0.000123 duration=1.234s ttft=0.200s budget=allowed

(one line; wrapped here), ``~`` before a token count spendgate estimated, and for a call
that failed ``error=KIND cause="..."``: the kind of ``outcomes.error_kind`` and the cause in
words, as the caller's error message said it (``upstream 'openai' (api.openai.com:443) is
unreachable: DNS lookup of api.openai.com failed``). ``json`` writes the same fields as one
JSON object per line (``access_fields``); ``off`` writes nothing.

Lines are written when the ``spendgate.access`` logger is enabled for ``info`` (``spendgate
serve --log-level warning`` silences them). Values a caller chose (project, user, model)
are quoted when they hold a space, a quote or a non-printable character, and the path is
escaped (``builder.loggable_path``): no caller can forge a line. No secret is ever written:
the record carries none.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import IO, Any

import orjson

from spendgate.exporters.base import RecordSink
from spendgate.exporters.outcomes import error_kind
from spendgate.records import UsageRecord

MODEL_CHARS = 100   # of a model name (the caller's choice), in a line


def access_fields(record: UsageRecord) -> dict[str, Any]:
    """The access-log fields of one call (the console's recent calls show the same)."""
    usage = record.usage
    return {
        "time": datetime.fromtimestamp(record.start_unix, UTC)
        .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "request_id": record.request_id,
        "method": record.method,
        "path": record.path,
        "status": record.status,
        "upstream": record.upstream,
        "model": record.model[:MODEL_CHARS],
        "response_model": (record.response_model or "")[:MODEL_CHARS] or None,
        "project": record.project,
        "user": record.user,
        "key": record.virtual_key,
        "tokens_in": usage.input,
        "tokens_out": usage.output,
        "tokens_in_estimated": usage.source("input") == "estimated",
        "tokens_out_estimated": usage.source("output") == "estimated",
        "cost_usd": format(record.cost_usd.normalize(), "f"),  # exact, no trailing zeros
        "duration_s": round(record.duration_s, 6),
        "ttft_s": None if record.ttft_s is None else round(record.ttft_s, 6),
        "budget": record.budget_decision,
        "error": error_kind(record),
        "cause": record.error_message,
    }


def _value(text: str) -> str:
    """A caller's value as one field: bare when safe, else JSON-quoted."""
    if text and text.isprintable() and not any(c in text for c in ' "='):
        return text
    return orjson.dumps(text).decode()


def _tokens(count: int | None, estimated: bool) -> str:
    return "-" if count is None else f"~{count}" if estimated else str(count)


def text_line(f: dict[str, Any]) -> str:
    """One access-log line in the text format (module docstring)."""
    parts = [f["time"], f["request_id"] or "-", f["method"] or "-", f["path"] or "-",
             str(f["status"]), f"upstream={_value(f['upstream'])}",
             f"model={_value(f['model'])}"]
    if f["response_model"] and f["response_model"] != f["model"]:
        parts.append(f"served={_value(f['response_model'])}")
    parts.append(f"project={_value(f['project'])}")
    if f["user"] is not None:
        parts.append(f"user={_value(f['user'])}")
    if f["tokens_in"] is not None or f["tokens_out"] is not None:
        parts.append(f"tokens={_tokens(f['tokens_in'], f['tokens_in_estimated'])}/"
                     f"{_tokens(f['tokens_out'], f['tokens_out_estimated'])}")
    parts.append(f"cost=${f['cost_usd']}")
    parts.append(f"duration={f['duration_s']:.3f}s")
    if f["ttft_s"] is not None:
        parts.append(f"ttft={f['ttft_s']:.3f}s")
    if f["budget"] is not None:
        parts.append(f"budget={f['budget']}")
    if f["error"] is not None:
        parts.append(f"error={f['error']}")
    if f["cause"]:
        parts.append(f"cause={orjson.dumps(f['cause']).decode()}")
    return " ".join(parts)


class AccessLogSink(RecordSink):
    """Writes one line per record to ``stream`` (default: standard error), as ``fmt``
    (``text`` or ``json``), while ``logger`` is enabled for info. Pipeline thread only."""

    name = "access_log"

    def __init__(self, fmt: str = "text", stream: IO[str] | None = None,
                 logger: logging.Logger | None = None) -> None:
        if fmt not in ("text", "json"):
            raise ValueError(f"access log format: text or json, not {fmt!r}")
        self._json = fmt == "json"
        self._stream = stream
        self._logger = logger or logging.getLogger("spendgate.access")

    def export(self, records: Sequence[UsageRecord]) -> None:
        if not records or not self._logger.isEnabledFor(logging.INFO):
            return
        if self._json:
            lines = [orjson.dumps(access_fields(r)).decode() for r in records]
        else:
            lines = [text_line(access_fields(r)) for r in records]
        stream = self._stream or sys.stderr
        stream.write("\n".join(lines) + "\n")
        stream.flush()
