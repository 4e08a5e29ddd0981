"""Telemetry setup: from the ``telemetry:`` config section and the ``OTEL_*`` environment to
the record sinks (spans, GenAI metrics, usage log) and the hot path's two switches.

Precedence: a value set in the config file wins over its environment variable, which wins
over the default. The one exception is ``OTEL_SDK_DISABLED=true``: the standard kill switch
turns OpenTelemetry export off whatever the file says (the usage log and ``/metrics`` stay).

==============================  ==============================================================
``telemetry.enabled``           false: no OTLP export. Unset: on when an endpoint is set
                                (file or ``OTEL_EXPORTER_OTLP_[TRACES_|METRICS_]ENDPOINT``).
                                true with no endpoint: the OTLP default (localhost:4318/4317).
``endpoint``                    base URL, like ``OTEL_EXPORTER_OTLP_ENDPOINT`` (http/protobuf
                                appends ``/v1/traces``, ``/v1/metrics``)
``traces_endpoint``,            full URLs, like ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` /
``metrics_endpoint``            ``..._METRICS_ENDPOINT``
``protocol``                    ``http/protobuf`` (default) or ``grpc``, like
                                ``OTEL_EXPORTER_OTLP_[TRACES_|METRICS_]PROTOCOL``. grpc needs
                                the optional ``opentelemetry-exporter-otlp-proto-grpc``
                                (``pip install 'spendgate[grpc]'``); without it startup fails
                                with a message saying so.
``headers``                     like ``OTEL_EXPORTER_OTLP_[TRACES_|METRICS_]HEADERS``
``service_name``,               like ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES``
``resource_attributes``         (merged; the file wins per key). Default name: ``spendgate``.
``sampler``, ``sampler_arg``    like ``OTEL_TRACES_SAMPLER`` / ``..._ARG``: see below
``capture_content``             like ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT``
``content_max_chars``           text characters per content attribute
``usage_log``                   ``exporters.usage_log`` (independent of OpenTelemetry)
==============================  ==============================================================

``OTEL_TRACES_EXPORTER`` / ``OTEL_METRICS_EXPORTER`` = ``none`` turn one signal off; the
SDK's own variables (``OTEL_BSP_*``, ``OTEL_METRIC_EXPORT_INTERVAL``,
``OTEL_EXPORTER_OTLP_*_TIMEOUT|COMPRESSION|CERTIFICATE``) apply as usual.

Sampling is decided on the hot path (``hotpath.tracecontext``) so the upstream's
``traceparent`` and the exported span agree: a caller's sampled flag is always followed (a
proxy in the middle of a trace must not cut it); new traces are sampled per the sampler:
``parentbased_always_on`` (default) and ``always_on``: all; ``parentbased_always_off``:
none; ``[parentbased_]traceidratio``: the ratio ``sampler_arg`` (by trace id, as the SDK);
``always_off``: no spans at all.

With no exporter configured, no span sink exists and the hot path only forwards the
caller's ``traceparent``; tracing then costs nothing per call. Over http/protobuf, spans are
encoded by ``exporters.otlp_encoding`` (the SDK's exporter otherwise); grpc uses the SDK's.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

from spendgate import __version__
from spendgate.config import Config, TelemetryConfig
from spendgate.errors import ConfigError
from spendgate.exporters.base import RecordSink
from spendgate.exporters.genai import servers
from spendgate.redact import safe_url
from spendgate.upstream.client import UpstreamTarget

log = logging.getLogger("spendgate.telemetry")

PROTOCOLS = ("http/protobuf", "grpc")
_RATIO_SAMPLERS = ("traceidratio", "parentbased_traceidratio")
SAMPLERS = ("parentbased_always_on", "always_on", "parentbased_always_off", "always_off",
            *_RATIO_SAMPLERS)
_CAPTURE_ON = ("true", "1", "span_only", "span_and_event")
_DEFAULT_BASE = {"http/protobuf": "http://localhost:4318", "grpc": "http://localhost:4317"}


@dataclass
class Telemetry:
    """What ``Spendgate`` wires: sinks for the pipeline and the hot path's switches."""

    sinks: list[RecordSink] = field(default_factory=list)
    tracing: bool = False                  # spans are exported (exemplars follow)
    sample_new_traces: bool | float = True
    capture_content: bool = False
    summary: str = "telemetry: OpenTelemetry export off"


@dataclass(frozen=True)
class Signal:
    """Where one signal (traces or metrics) goes."""

    protocol: str
    endpoint: str
    headers: dict[str, str]


def _env_true(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def _protocol(cfg: TelemetryConfig, env: Mapping[str, str], signal: str) -> str:
    if cfg.protocol:  # validated by the config model
        return cfg.protocol
    for name in (f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        value = env.get(name)
        if value:
            if value not in PROTOCOLS:
                raise ConfigError([f"{name}: {value!r} is not supported "
                                   f"(use {' or '.join(PROTOCOLS)})"])
            return value
    return "http/protobuf"


def _headers(cfg: TelemetryConfig, env: Mapping[str, str], signal: str) -> dict[str, str]:
    if cfg.headers:
        # Lower case, as the SDK makes the env's: gRPC rejects upper-case metadata keys.
        return {key.lower(): value for key, value in cfg.headers.items()}
    from opentelemetry.util.re import parse_env_headers

    raw = env.get(f"OTEL_EXPORTER_OTLP_{signal}_HEADERS") or env.get("OTEL_EXPORTER_OTLP_HEADERS")
    return dict(parse_env_headers(raw, liberal=True)) if raw else {}


def resolve_signal(cfg: TelemetryConfig, env: Mapping[str, str], signal: str) -> Signal | None:
    """Where ``signal`` (``TRACES`` or ``METRICS``) is exported, or None if it is not."""
    if cfg.enabled is False or _env_true(env.get("OTEL_SDK_DISABLED")):
        return None
    if env.get(f"OTEL_{signal}_EXPORTER", "otlp").strip().lower() == "none":
        return None
    own = cfg.traces_endpoint if signal == "TRACES" else cfg.metrics_endpoint
    env_own = env.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if cfg.enabled is None and not (own or cfg.endpoint or env_own or base):
        return None
    protocol = _protocol(cfg, env, signal)
    path = "" if protocol == "grpc" else f"/v1/{signal.lower()}"
    if own:
        endpoint = own
    elif cfg.endpoint:
        endpoint = cfg.endpoint.rstrip("/") + path
    elif env_own:
        endpoint = env_own
    else:
        endpoint = (base or _DEFAULT_BASE[protocol]).rstrip("/") + path
    return Signal(protocol, endpoint, _headers(cfg, env, signal))


def resolve_sampler(cfg: TelemetryConfig, env: Mapping[str, str]) -> bool | float | None:
    """New-trace sampling for the hot path: bool, a ratio, or None for ``always_off``."""
    source = "telemetry.sampler" if cfg.sampler else "OTEL_TRACES_SAMPLER"
    name = (cfg.sampler or env.get("OTEL_TRACES_SAMPLER") or SAMPLERS[0]).strip().lower()
    if name not in SAMPLERS:
        raise ConfigError([f"{source}: {name!r} is not supported (one of: "
                           f"{', '.join(SAMPLERS)})"])
    if name == "always_off":
        return None
    if name == "parentbased_always_off":
        return False
    if name not in _RATIO_SAMPLERS:
        return True
    arg = cfg.sampler_arg or env.get("OTEL_TRACES_SAMPLER_ARG") or "1.0"
    try:
        ratio = float(arg)
    except ValueError:
        ratio = -1.0
    if not 0.0 <= ratio <= 1.0:
        where = "telemetry.sampler_arg" if cfg.sampler_arg else "OTEL_TRACES_SAMPLER_ARG"
        raise ConfigError([f"{where}: {arg!r} is not a ratio between 0 and 1"])
    return True if ratio == 1.0 else False if ratio == 0.0 else ratio


def resolve_capture(cfg: TelemetryConfig, env: Mapping[str, str]) -> bool:
    if cfg.capture_content is not None:
        return cfg.capture_content
    value = env.get("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "")
    return value.strip().lower() in _CAPTURE_ON


def _resource(cfg: TelemetryConfig) -> Any:
    from opentelemetry.sdk.resources import Resource

    from spendgate.exporters import semconv as sc

    given: dict[str, str] = dict(cfg.resource_attributes)
    if cfg.service_name:
        given[sc.SERVICE_NAME] = cfg.service_name
    # Resource.create merges OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME under ``given``.
    resource = Resource({sc.SERVICE_VERSION: __version__}).merge(Resource.create(given))
    if str(resource.attributes.get(sc.SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({sc.SERVICE_NAME: "spendgate"}))
    return resource


def _grpc_missing(signal: str) -> ConfigError:
    return ConfigError([f"telemetry.protocol: grpc export of {signal} needs the optional "
                        "package opentelemetry-exporter-otlp-proto-grpc (pip install "
                        "'spendgate[grpc]'); or use http/protobuf"])


# The OTLP exporter class of each signal and protocol; grpc ones need the optional package.
_EXPORTERS = {
    ("traces", "grpc"): ("opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
                         "OTLPSpanExporter"),
    ("metrics", "grpc"): ("opentelemetry.exporter.otlp.proto.grpc.metric_exporter",
                          "OTLPMetricExporter"),
    ("traces", "http/protobuf"): ("spendgate.exporters.otlp_encoding", "FastOTLPSpanExporter"),
    ("metrics", "http/protobuf"): ("opentelemetry.exporter.otlp.proto.http.metric_exporter",
                                   "OTLPMetricExporter"),
}


def _exporter(name: str, signal: Signal) -> Any:
    """The OTLP exporter for one signal (``traces`` or ``metrics``)."""
    module, cls = _EXPORTERS[(name, signal.protocol)]
    try:
        factory = getattr(importlib.import_module(module), cls)
    except ImportError:
        raise _grpc_missing(name) from None
    return factory(endpoint=signal.endpoint, headers=signal.headers or None)


def check_telemetry(config: Config, environ: Mapping[str, str] | None = None) -> None:
    """Raise ``ConfigError`` for settings ``build_telemetry`` would refuse; build nothing."""
    env = os.environ if environ is None else environ
    cfg = config.telemetry
    traces = resolve_signal(cfg, env, "TRACES")
    metrics = resolve_signal(cfg, env, "METRICS")
    if traces is not None:
        resolve_sampler(cfg, env)
    for name, signal in (("traces", traces), ("metrics", metrics)):
        if signal is not None and signal.protocol == "grpc":
            try:
                import opentelemetry.exporter.otlp.proto.grpc  # type: ignore[import-not-found,unused-ignore]  # noqa: F401
            except ImportError:
                raise _grpc_missing(name) from None


def build_telemetry(config: Config, registry: CollectorRegistry,
                    environ: Mapping[str, str] | None = None) -> Telemetry:
    """Build every telemetry sink the config and environment ask for. Raises ``ConfigError``
    (``path: message`` lines) on an unusable setting; opens the usage log file."""
    env = os.environ if environ is None else environ
    cfg = config.telemetry
    out = Telemetry()
    upstream_servers = servers({name: UpstreamTarget(name, up)
                                for name, up in config.upstreams.items()})
    traces = resolve_signal(cfg, env, "TRACES")
    metrics = resolve_signal(cfg, env, "METRICS")
    sampling = resolve_sampler(cfg, env) if traces is not None else None
    described = []
    resource = _resource(cfg) if traces or metrics else None

    if traces is not None and sampling is not None:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ALWAYS_ON

        from spendgate.exporters.otel import PresetIds, SpanSink

        ids = PresetIds()
        provider = TracerProvider(resource=resource, sampler=ALWAYS_ON, id_generator=ids,
                                  shutdown_on_exit=False)
        provider.add_span_processor(BatchSpanProcessor(_exporter("traces", traces)))
        out.tracing = True
        out.sample_new_traces = sampling
        out.capture_content = resolve_capture(cfg, env)
        out.sinks.append(SpanSink(provider, ids, upstream_servers,
                                  cfg.content_max_chars if out.capture_content else None))
        described.append(f"traces to {safe_url(traces.endpoint)} ({traces.protocol}, new traces "
                         f"sampled: {sampling}, content capture "
                         f"{'on' if out.capture_content else 'off'})")

    meter, meter_sink = None, None
    if metrics is not None:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        from spendgate.exporters import semconv as sc

        reader = PeriodicExportingMetricReader(_exporter("metrics", metrics))
        meter_provider = MeterProvider(metric_readers=[reader], resource=resource,
                                       shutdown_on_exit=False)
        meter = meter_provider.get_meter(sc.SCOPE_NAME, __version__)
        from spendgate.exporters.otel_metrics import MeterProviderSink

        meter_sink = MeterProviderSink(meter_provider)
        described.append(f"GenAI metrics to {safe_url(metrics.endpoint)} ({metrics.protocol})")
    if config.metrics.gen_ai or meter is not None:
        from spendgate.exporters.genai_metrics import GenAIMetricsSink

        out.sinks.append(GenAIMetricsSink(
            registry if config.metrics.gen_ai else None, upstream_servers,
            config.metrics.label_limit, meter, exemplars=out.tracing,
            pair_limit=config.metrics.pair_limit))
    if meter_sink is not None:
        out.sinks.append(meter_sink)

    if cfg.usage_log is not None:
        from spendgate.exporters.usage_log import UsageLogSink

        try:
            out.sinks.append(UsageLogSink(cfg.usage_log.path, cfg.usage_log.max_mb,
                                          cfg.usage_log.backups))
        except OSError as error:
            raise ConfigError([f"telemetry.usage_log.path: cannot open {cfg.usage_log.path} "
                               f"({error.strerror})"]) from None
        described.append(f"usage log to {cfg.usage_log.path}")
    if described:
        out.summary = "telemetry: " + "; ".join(described)
    return out
