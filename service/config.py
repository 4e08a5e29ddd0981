"""The configuration file: YAML with ``${ENV_VAR}`` interpolation, validated strictly.

Contract keys (issue-defined; acceptance checks use them)::

    server:    {host, port, max_body_mb}
    upstreams: {NAME: {url, provider, api_key, timeout_s, pricing: {input_per_mtok, ...}}}
    pricing:   {catalog: builtin | PATH, overrides: {MODEL: {input_per_mtok, ...}}}
    keys:      [{key, project}]

Ours beside them: ``upstreams.NAME.api_key_header`` (where the proxy's key goes, e.g.
``api-key`` for Azure), ``metrics.label_limit`` (distinct values per label before ``other``),
``metrics.gen_ai`` (the GenAI convention histograms too; see ``telemetry``),
``keys[].name`` (how budgets and records name a key), ``store.reservation_lease_s`` and
``budgets[].max_reserve_usd`` (see ``budgets.gate``).

``server.allowed_hosts`` has a default that depends on where the proxy listens, which the
``--host`` flag may change: ``allowed_hosts(server, bind_host)`` resolves it (the loopback
names on a loopback address, else it must be given, or ``SPENDGATE_ALLOWED_HOSTS``).

``${VAR}`` is replaced by the environment variable (``${VAR:-default}`` gives a default); an
unset variable becomes the empty string, and an empty ``api_key`` means "forward the caller's
credential"; an empty ``keys[].key`` admits nothing (keys stay on: examples that read keys
from a Secret refuse every call without it; ``Config.empty_keys`` names them). Unknown keys
are errors naming their path. ``load_config`` raises ``ConfigError`` carrying every
problem, one ``path: message`` line each. A ``Config`` is immutable once loaded.
"""

from __future__ import annotations

import ipaddress
import os
import re
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from spendgate.errors import ConfigError

# Paths the proxy serves itself; an upstream may not take these names.
RESERVED_NAMES = frozenset({"metrics", "healthz", "readyz", "admin", "docs", "openapi.json"})
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_HOST_NAME = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?$")
_ORIGIN = re.compile(r"^[a-z][a-z0-9+.-]*://[^/?#\s]+$")
# Served by default when the proxy listens on a loopback address, and only then.
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
ALLOWED_HOSTS_ENV = "SPENDGATE_ALLOWED_HOSTS"   # comma-separated; stands in for the key


def host_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be an entry of ``server.allowed_hosts``; None if it can."""
    if name == "*":
        return None
    bare = name.removeprefix("[").removesuffix("]")
    if ":" in bare:
        try:
            ipaddress.IPv6Address(bare)
        except ValueError:
            return f"{name!r} is not a host name (no scheme, port or path: proxy.internal)"
        return None
    if not _HOST_NAME.match(name):
        return (f"{name!r} is not a host name (no scheme, port or path: proxy.internal; "
                'or "*" alone for any)')
    return None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PriceConfig(_Strict):
    """USD per million tokens; ``None`` falls back as ``accounting.pricing.Price`` documents."""

    input_per_mtok: Decimal
    output_per_mtok: Decimal = Decimal(0)
    cached_input_per_mtok: Decimal | None = None
    cache_write_per_mtok: Decimal | None = None

    @field_validator("*")
    @classmethod
    def _not_negative(cls, value: Decimal | None) -> Decimal | None:
        if value is not None and value < 0:
            raise ValueError("must not be negative")
        return value


class ServerConfig(_Strict):
    """The proxy's own listener, and the bounds on what a caller or upstream may make it hold.

    ``allowed_hosts``: ``Host`` names served (421 otherwise); None means the loopback names
    when bound to loopback, and is an error when bound elsewhere (list the names, or
    ``["*"]``). ``allowed_origins``: browser origins whose proxied calls are let through
    (403 for any other ``Origin``).
    """

    host: str = "127.0.0.1"
    port: int = Field(default=4000, ge=0, le=65535)
    max_body_mb: float = Field(default=32, gt=0)
    max_decoded_mb: float = Field(default=64, gt=0)     # a buffered body, decompressed
    max_event_kb: float = Field(default=1024, gt=0)     # one SSE event, to be parsed
    max_header_kb: float = Field(default=64, gt=0)      # a request head (431 beyond)
    max_headers: int = Field(default=100, ge=1)         # header lines of a request (431)
    header_timeout_s: float = Field(default=10, gt=0)   # to receive a complete request head
    write_timeout_s: float = Field(default=120, gt=0)   # a caller reading nothing: hung up on
    drain_s: float = Field(default=30, gt=0)            # SIGTERM: calls in flight get this long
    workers: int = Field(default=1, ge=1, le=256)       # processes on one port (--workers)
    shutdown_delay_s: float = Field(default=0, ge=0)    # SIGTERM: /readyz 503, still serving
    allowed_hosts: list[str] | None = None
    allowed_origins: list[str] = Field(default_factory=list)

    @field_validator("allowed_hosts")
    @classmethod
    def _host_names(cls, value: list[str] | None) -> list[str] | None:
        for name in value or ():
            if problem := host_name_problem(name):
                raise ValueError(problem)
        return value

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if origin != "*" and not _ORIGIN.match(origin):
                raise ValueError(f"{origin!r} is not an origin: scheme://host[:port], "
                                 'lower-case, no path (as browsers send it), or "*"')
        return value


class UpstreamConfig(_Strict):
    url: str
    provider: Literal["openai", "anthropic"] = "openai"
    api_key: str | None = None
    api_key_header: str | None = None
    provider_name: str | None = None    # gen_ai.provider.name; derived from url when unset
    timeout_s: float = Field(default=600, gt=0)
    connect_timeout_s: float = Field(default=10, gt=0)
    pricing: PriceConfig | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("not a URL")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError("not a URL: no query, fragment or credentials allowed")
        return value.rstrip("/")

    @field_validator("api_key")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value or None


class PricingConfig(_Strict):
    catalog: str = "builtin"
    overrides: dict[str, PriceConfig] = Field(default_factory=dict)


class VirtualKey(_Strict):
    key: str                # empty (its ${VAR} unset): no call can use it
    project: str = Field(min_length=1)
    # How budgets, records and metrics name the key (never the secret); default project#index.
    name: str | None = Field(default=None, min_length=1)


class MetricsConfig(_Strict):
    label_limit: int = Field(default=200, ge=1)     # distinct values per project/model label
    pair_limit: int = Field(default=1000, ge=1)     # distinct (project, model) pairs
    gen_ai: bool = True     # also the OpenTelemetry GenAI convention histograms (gen_ai_*)


class UsageLogConfig(_Strict):
    """One JSON line per call. ``path: "-"`` is stdout."""

    path: str
    max_mb: float = Field(default=100, gt=0)   # rotate past this size (0 backups: truncate)
    backups: int = Field(default=5, ge=0)


class TelemetryConfig(_Strict):
    """OpenTelemetry. Unset fields fall back to the standard ``OTEL_*`` environment variables."""

    enabled: bool | None = None                 # None: on when an endpoint is configured
    service_name: str | None = None
    endpoint: str | None = None                 # OTLP base URL, like OTEL_EXPORTER_OTLP_ENDPOINT
    traces_endpoint: str | None = None
    metrics_endpoint: str | None = None
    protocol: Literal["http/protobuf", "grpc"] | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    resource_attributes: dict[str, str] = Field(default_factory=dict)
    sampler: str | None = None
    sampler_arg: str | None = None
    capture_content: bool | None = None
    content_max_chars: int = Field(default=8192, ge=0)
    usage_log: UsageLogConfig | None = None


class StoreConfig(_Strict):
    """Where budget spend lives: a SQLite file (default) or ``redis://`` shared by replicas."""

    url: str = "sqlite:///spendgate-data/ledger.sqlite3"
    on_error: Literal["open", "closed"] = "open"
    key_prefix: str = "spendgate:"
    timeout_s: float = Field(default=0.25, gt=0)
    # A reservation a replica never settled (it died mid-call) is reclaimed after this.
    reservation_lease_s: float = Field(default=3600, gt=0)
    # The spend journal (budgets.journal): a SQLite file; None puts it beside a SQLite
    # store's file, else in spendgate-data/; false (or "off") turns it off.
    journal: str | Literal[False] | None = None
    journal_fsync: Literal["full", "normal", "off"] = "normal"

    @field_validator("journal", mode="before")
    @classmethod
    def _journal(cls, value: Any) -> Any:
        if value is False or (isinstance(value, str) and value.strip().lower() in ("off", "")):
            return False
        return value

    @field_validator("url")
    @classmethod
    def _store_url(cls, value: str) -> str:
        if not value.startswith(("sqlite:///", "redis://", "rediss://", "unix://",
                                 "redis+sentinel://", "rediss+sentinel://",
                                 "redis+cluster://", "rediss+cluster://")):
            raise ValueError("expected sqlite:///PATH, redis://HOST:PORT/DB, "
                             "redis+sentinel://HOST:PORT/SERVICE or redis+cluster://HOST:PORT")
        return value


class BudgetConfig(_Strict):
    name: str = Field(min_length=1)
    project: str | None = None
    upstream: str | None = None
    model: str | None = None
    key: str | None = None
    limit_usd: Decimal = Field(gt=0)
    window: Literal["day", "week", "month", "total"] = "month"
    timezone: str = "UTC"
    action: Literal["block", "alert"] = "alert"
    alert_at: list[float] = Field(default_factory=lambda: [0.8, 1.0])
    max_reserve_usd: Decimal | None = Field(default=None, gt=0)  # ceiling on one reservation

    @field_validator("limit_usd")
    @classmethod
    def _limit(cls, value: Decimal) -> Decimal:
        if value > 9_000_000_000:  # the ledger counts signed 64-bit nano-dollars
            raise ValueError("at most 9000000000")
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            if value.upper() != "UTC":  # budgets.windows.zone: UTC needs no tz database
                ZoneInfo(value)
        except (ValueError, KeyError):  # ZoneInfoNotFoundError is a KeyError
            raise ValueError(f"unknown time zone {value!r} (an IANA name: Europe/Paris)"
                             ) from None
        return value

    @field_validator("alert_at")
    @classmethod
    def _thresholds(cls, value: list[float]) -> list[float]:
        if any(not 0 < t <= 10 for t in value):
            raise ValueError("thresholds are fractions of the limit: above 0, at most 10")
        return value


class AlertsConfig(_Strict):
    webhook_url: str | None = None
    timeout_s: float = Field(default=5, gt=0)
    max_attempts: int = Field(default=6, ge=1)


class Config(_Strict):
    server: ServerConfig = Field(default_factory=ServerConfig)
    upstreams: dict[str, UpstreamConfig] = Field(default_factory=dict)
    pricing: PricingConfig = Field(default_factory=PricingConfig)
    keys: list[VirtualKey] | None = None
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    budgets: list[BudgetConfig] = Field(default_factory=list)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    admin_key: str | None = None
    metrics_key: str | None = None      # bearer key for GET /metrics (None: open)

    @field_validator("admin_key", "metrics_key")
    @classmethod
    def _empty_key(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("upstreams")
    @classmethod
    def _names(cls, value: dict[str, UpstreamConfig]) -> dict[str, UpstreamConfig]:
        for name in value:
            if name in RESERVED_NAMES or not _NAME.match(name):
                raise ValueError(
                    f"{name!r} cannot name an upstream (reserved or not a path segment)")
        return value

    @field_validator("budgets")
    @classmethod
    def _budget_names(cls, value: list[BudgetConfig], info: ValidationInfo) -> list[BudgetConfig]:
        names = [b.name for b in value]
        if twice := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"budget names must be unique: {twice} repeated")
        keys = info.data.get("keys")
        if keys:
            known = {k.name or f"{k.project}#{i}" for i, k in enumerate(keys)}
            for b in value:
                if b.key is not None and not set("*?[") & set(b.key) and b.key not in known:
                    raise ValueError(f"budget {b.name!r}: key {b.key!r} names no virtual key "
                                     "(give the key a name in keys, or use project#index)")
        return value

    def empty_keys(self) -> list[str]:
        """A warning for each virtual key left empty (its variable unset): it admits nothing."""
        return [f"keys.{i}.key: empty (is its variable unset?): no call can use this key"
                for i, k in enumerate(self.keys or ()) if not k.key]

    @model_validator(mode="after")
    def _unique_keys(self) -> Config:
        if self.keys is not None:
            seen = [k.key for k in self.keys if k.key]
            if len(seen) != len(set(seen)):
                raise ValueError("keys: the same key is listed twice")
            names = [k.name for k in self.keys if k.name is not None]
            if len(names) != len(set(names)):
                raise ValueError("keys: the same name is given to two keys")
        return self


DEFAULT_CONFIG: dict[str, Any] = {
    "upstreams": {
        "openai": {"url": "https://api.openai.com", "provider": "openai"},
        "anthropic": {"url": "https://api.anthropic.com", "provider": "anthropic"},
    }
}


def is_loopback(host: str) -> bool:
    """Whether a bind address listens on loopback only (``localhost``, 127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.removeprefix("[").removesuffix("]")).is_loopback
    except ValueError:
        return False


def allowed_hosts(server: ServerConfig, bind_host: str | None = None,
                  fallback: str | None = None) -> list[str]:
    """The ``Host`` names a proxy bound to ``bind_host`` (default ``server.host``) serves.

    ``server.allowed_hosts`` when set; else ``fallback`` (the comma-separated value of
    ``SPENDGATE_ALLOWED_HOSTS``, which the container image sets); else ``LOOPBACK_NAMES``
    on a loopback address. Bound elsewhere with none of them, raises ``ConfigError``
    naming the key: a proxy reachable from other machines must say by which names.
    """
    if server.allowed_hosts is not None:
        return server.allowed_hosts
    if fallback and fallback.strip():
        names = [n.strip() for n in fallback.split(",") if n.strip()]
        problems = [f"{ALLOWED_HOSTS_ENV}: {p}" for n in names
                    if (p := host_name_problem(n)) is not None]
        if problems:
            raise ConfigError(problems)
        return names
    host = server.host if bind_host is None else bind_host
    if is_loopback(host):
        return list(LOOPBACK_NAMES)
    raise ConfigError([
        f"server.allowed_hosts: required when serving on {host} (not a loopback address): "
        "list the Host names clients use (e.g. [spendgate, proxy.internal]), or [\"*\"] "
        f"for any; {ALLOWED_HOSTS_ENV} (comma-separated) stands in for it"])


def interpolate(value: Any, environ: dict[str, str] | os._Environ[str]) -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string of a parsed YAML tree."""
    if isinstance(value, str):
        return _ENV.sub(lambda m: environ.get(m.group(1)) or (m.group(2) or ""), value)
    if isinstance(value, dict):
        return {k: interpolate(v, environ) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, environ) for v in value]
    return value


def _problems(error: ValidationError) -> list[str]:
    lines = []
    for item in error.errors():
        path = ".".join(str(p) for p in item["loc"]) or "(top level)"
        kind = item["type"]
        if kind == "extra_forbidden":
            message = "unknown key"
        elif kind == "missing":
            message = "required"
        else:
            message = str(item["msg"]).removeprefix("Value error, ")
        lines.append(f"{path}: {message}")
    return lines


def parse_config(data: Any, environ: dict[str, str] | os._Environ[str] | None = None) -> Config:
    """Validate an already-parsed YAML tree (``None`` means the embedded default)."""
    if data is None:
        data = DEFAULT_CONFIG
    if not isinstance(data, dict):
        raise ConfigError(["(top level): must be a mapping"])
    data = interpolate(data, os.environ if environ is None else environ)
    if not data.get("upstreams"):
        data = {**data, "upstreams": DEFAULT_CONFIG["upstreams"]}
    try:
        return Config.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_problems(error)) from None


def load_config(path: str | Path | None = None,
                environ: dict[str, str] | os._Environ[str] | None = None) -> Config:
    """Read and validate a config file; ``None`` gives the embedded default."""
    if path is None:
        return parse_config(None, environ)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError([f"{path}: cannot read ({error.strerror})"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError([f"{path}: not valid YAML ({error})"]) from None
    return parse_config(data if data is not None else {}, environ)
