"""How the ``telemetry:`` section and the ``OTEL_*`` environment combine (spendgate.telemetry),
and the hot path's sampling decision compared with the OpenTelemetry SDK's own."""

from __future__ import annotations

import random
from typing import Any

import pytest
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

from spendgate.config import TelemetryConfig
from spendgate.errors import ConfigError
from spendgate.hotpath.tracecontext import start_trace
from spendgate.telemetry import Signal, resolve_capture, resolve_sampler, resolve_signal


def signal(cfg: dict[str, Any], env: dict[str, str], which: str = "TRACES") -> Signal | None:
    return resolve_signal(TelemetryConfig(**cfg), env, which)


def test_nothing_configured_means_no_export() -> None:
    assert signal({}, {}) is None and signal({}, {}, "METRICS") is None


def test_standard_environment_variables() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/",
           "OTEL_EXPORTER_OTLP_HEADERS": "x-honeycomb-team=abc,other=1%202"}
    assert signal({}, env) == Signal("http/protobuf", "http://collector:4318/v1/traces",
                                     {"x-honeycomb-team": "abc", "other": "1 2"})
    assert signal({}, env, "METRICS").endpoint == "http://collector:4318/v1/metrics"  # type: ignore[union-attr]
    env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = "http://tempo:4318/custom"
    env["OTEL_EXPORTER_OTLP_TRACES_HEADERS"] = "k=v"
    assert signal({}, env) == Signal("http/protobuf", "http://tempo:4318/custom", {"k": "v"})
    # A signal-specific endpoint alone turns on that signal only.
    only = {"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://m:4318/v1/metrics"}
    assert signal({}, only) is None and signal({}, only, "METRICS") is not None


def test_grpc_endpoints_have_no_path() -> None:
    env = {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}
    assert signal({}, env) == Signal("grpc", "http://c:4317", {})
    assert signal({"enabled": True, "protocol": "grpc"}, {}) == Signal(
        "grpc", "http://localhost:4317", {})
    with pytest.raises(ConfigError, match="'http/json' is not supported"):
        signal({}, {**env, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})


def test_the_file_wins_over_the_environment() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://env:4318",
           "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://env-traces:4318/v1/traces",
           "OTEL_EXPORTER_OTLP_HEADERS": "from=env", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    cfg = {"endpoint": "http://file:4318", "headers": {"from": "file"},
           "protocol": "http/protobuf"}
    assert signal(cfg, env) == Signal("http/protobuf", "http://file:4318/v1/traces",
                                      {"from": "file"})
    assert signal({**cfg, "traces_endpoint": "http://file-traces/x"}, env).endpoint \
        == "http://file-traces/x"  # type: ignore[union-attr]
    assert signal({"enabled": False}, env) is None


def test_switches_that_turn_export_off() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}
    # The standard kill switch wins even over an explicit enabled: true.
    assert signal({"enabled": True}, {**env, "OTEL_SDK_DISABLED": "true"}) is None
    assert signal({}, {**env, "OTEL_SDK_DISABLED": "false"}) is not None
    assert signal({}, {**env, "OTEL_TRACES_EXPORTER": "none"}) is None
    assert signal({}, {**env, "OTEL_TRACES_EXPORTER": "none"}, "METRICS") is not None


@pytest.mark.parametrize(("cfg", "env", "expected"), [
    ({}, {}, True),
    ({}, {"OTEL_TRACES_SAMPLER": "always_on"}, True),
    ({}, {"OTEL_TRACES_SAMPLER": "parentbased_always_off"}, False),
    ({}, {"OTEL_TRACES_SAMPLER": "always_off"}, None),
    ({}, {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"}, 0.25),
    ({}, {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio"}, True),
    ({}, {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0"},
     False),
    ({"sampler": "traceidratio", "sampler_arg": "0.5"},
     {"OTEL_TRACES_SAMPLER": "always_off"}, 0.5),
])
def test_sampler(cfg: dict[str, Any], env: dict[str, str], expected: bool | float | None,
                 ) -> None:
    assert resolve_sampler(TelemetryConfig(**cfg), env) == expected


def test_bad_sampler_settings_name_their_source() -> None:
    with pytest.raises(ConfigError, match="OTEL_TRACES_SAMPLER: 'xray' is not supported"):
        resolve_sampler(TelemetryConfig(), {"OTEL_TRACES_SAMPLER": "xray"})
    with pytest.raises(ConfigError, match="OTEL_TRACES_SAMPLER_ARG: 'half' is not a ratio"):
        resolve_sampler(TelemetryConfig(), {"OTEL_TRACES_SAMPLER": "traceidratio",
                                            "OTEL_TRACES_SAMPLER_ARG": "half"})


def test_content_capture_switch() -> None:
    assert resolve_capture(TelemetryConfig(), {}) is False
    for value in ("true", "TRUE", "span_only", "SPAN_AND_EVENT"):
        assert resolve_capture(TelemetryConfig(), {
            "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": value}) is True
    assert resolve_capture(TelemetryConfig(capture_content=False), {
        "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "true"}) is False


def test_ratio_sampling_decides_as_the_sdk_does() -> None:
    random.seed(1234)
    sdk = TraceIdRatioBased(0.3)
    decisions = []
    for _ in range(2000):
        ids = start_trace({}, 0.3)
        expected = sdk.should_sample(None, int(ids.trace_id, 16), "x").decision.is_sampled()
        assert ids.sampled == expected
        decisions.append(ids.sampled)
    assert 0.25 < sum(decisions) / len(decisions) < 0.35


def test_callers_flag_wins_and_its_own_traceparent_is_kept() -> None:
    caller = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    ids = start_trace({b"traceparent": caller}, False)
    assert ids.sampled and ids.parent_traceparent() == caller.decode()
    assert ids.traceparent() != caller.decode()
    assert not start_trace({b"traceparent": caller[:-1] + b"0"}, True).sampled
