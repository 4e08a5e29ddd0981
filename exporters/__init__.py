"""Sinks: where finished calls go. One sink per module behind ``base.RecordSink``.

Sinks receive immutable ``records.UsageRecord`` batches from the record pipeline's thread
(Prometheus ``prometheus.py``, spans ``otel.py`` with ``otlp_encoding.py``, GenAI convention
metrics ``genai_metrics.py``, the usage log ``usage_log.py``, the OTLP metric provider's
lifetime ``otel_metrics.py``); ``genai.py``, ``genai_content.py`` and ``semconv.py`` read a
record through the OpenTelemetry GenAI conventions for them.
May import: ``records``, ``usage``, ``labels`` and ``__version__``. Nothing of the
hot path, accounting or budgets.
"""
