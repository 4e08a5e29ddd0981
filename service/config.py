"""The configuration file: YAML with ``${ENV_VAR}`` interpolation, validated strictly.

Contract keys (issue-defined; acceptance checks use them)::

    server:    {host, port, max_body_mb}
    upstreams: {NAME: {url, provider, api_key, timeout_s, pricing: {input_per_mtok, ...}}}
    pricing:   {catalog: builtin | PATH, overrides: {MODEL: {input_per_mtok, ...}}}
    keys:      [{key, project, models, upstreams, expires, max_reserve_usd, tags}]
    keys_file: PATH
    attribution: {tag_keys}

Ours beside them: ``upstreams.NAME.aws`` and ``upstreams.NAME.google_credentials``
(credentials the proxy signs Bedrock / Vertex AI requests with: ``upstream/credentials.py``),
``upstreams.NAME.api_key_header`` (where the proxy's key goes, e.g.
``api-key`` for Azure), ``metrics.label_limit`` (distinct values per label before ``other``),
``metrics.gen_ai`` (the GenAI convention histograms too; see ``telemetry``),
``keys[].name`` (how budgets and records name a key), ``keys[].models``, ``upstreams``,
``expires`` and ``max_reserve_usd`` (what a key may use: ``VirtualKey``), ``keys_file`` (more
keys from a file: ``spendgate.keyfile``; its problems are named ``keys_file.N...``),
``store.reservation_lease_s`` and
``budgets[].max_reserve_usd`` (see ``budgets.gate``); ``limits`` (``spendgate.limits``);
``upstreams.NAME.price_multiplier`` and,
in a price, ``tiers``, ``web_search_per_query``, ``web_fetch_per_request`` and the
``cache_write_1h``/audio/image ``_per_mtok`` rates (``accounting.rates``);
``server.access_log`` (``text``, ``json`` or ``off``: ``exporters.access_log``).

``server.allowed_hosts`` has a default that depends on where the proxy listens, which the
``--host`` flag may change: ``allowed_hosts(server, bind_host)`` resolves it (the loopback
names on a loopback address, else it must be given, or ``SPENDGATE_ALLOWED_HOSTS``).

``${VAR}`` is replaced by the environment variable; unset (or empty) it is an error naming
the variable and the key path (``upstreams.openai.api_key: ${OPENAI_API_KEY} is not set``).
``${VAR:-default}`` gives a default, and ``${VAR:-}`` is the explicit way to allow empty: an
empty ``api_key`` means "forward the caller's credential"; an empty ``keys[].key`` admits
nothing (keys stay on; ``Config.empty_keys`` names them). Unknown keys are errors naming
their path, with the closest known key suggested. ``load_config`` raises ``ConfigError``
carrying every problem at once (unset variables, schema and cross-field checks, in one
pass), one ``path: message`` line each. ``load_config_leniently`` also gives, beside those
problems, the config with the rejected parts at their defaults, so ``check-config`` runs its
other checks in the same pass. A ``Config`` is immutable once loaded.

``store.url``: ``sqlite:///relative/path`` (under the working directory) or
``sqlite:////absolute/path``; the store logs the resolved absolute path at start.
"""

from __future__ import annotations

import ipaddress
import os
import re
import types
from datetime import UTC, datetime
from decimal import Decimal
from difflib import get_close_matches
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from spendgate import tags as tag_rules
from spendgate.errors import ConfigError
from spendgate.keyfile import read_keys_file

# Paths the proxy serves itself; an upstream may not take these names.
RESERVED_NAMES = frozenset({"metrics", "healthz", "readyz", "admin", "docs", "openapi.json",
                            "ui"})
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


# A price tier's key, as ``accounting.rates.parse_tier_key`` reads it.
_TIER_KEY = re.compile(r"above_[1-9]\d*k(?:_(?:flex|priority|batch))?|flex|priority|batch")


def _not_negative(value: object) -> None:
    for amount in value.values() if isinstance(value, dict) else (value,):
        if isinstance(amount, Decimal) and amount < 0:
            raise ValueError("must not be negative")


class RatesConfig(_Strict):
    """USD per million tokens per rate type; ``None`` falls back as ``accounting.rates``
    documents (cache prices to input, 1-hour cache writes to cache writes, audio and image
    tokens to text)."""

    input_per_mtok: Decimal | None = None
    output_per_mtok: Decimal | None = None
    cached_input_per_mtok: Decimal | None = None
    cache_write_per_mtok: Decimal | None = None
    cache_write_1h_per_mtok: Decimal | None = None
    input_audio_per_mtok: Decimal | None = None
    output_audio_per_mtok: Decimal | None = None
    input_image_per_mtok: Decimal | None = None
    output_image_per_mtok: Decimal | None = None

    @field_validator("*")
    @classmethod
    def _not_negative(cls, value: object) -> object:
        _not_negative(value)
        return value


class PriceConfig(RatesConfig):
    """A model's price: base rates, ``tiers`` (``flex``, ``priority``, ``batch``,
    ``above_<N>k``, ``above_<N>k_<service tier>`` -> rates) and per-request fees in USD."""

    input_per_mtok: Decimal
    output_per_mtok: Decimal = Decimal(0)
    tiers: dict[str, RatesConfig] = Field(default_factory=dict)
    web_search_per_query: Decimal | dict[Literal["low", "medium", "high"], Decimal] | None = None
    web_fetch_per_request: Decimal | None = None

    @field_validator("tiers")
    @classmethod
    def _tier_keys(cls, value: dict[str, RatesConfig]) -> dict[str, RatesConfig]:
        for key in value:
            if not _TIER_KEY.fullmatch(key):
                raise ValueError(f"{key!r} is not a price tier: flex, priority, batch, "
                                 "above_<N>k, or above_<N>k_<service tier>")
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
    access_log: Literal["text", "json", "off"] = "text"  # one line per call, to stderr

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


class GpuWeights(_Strict):
    """Relative cost of one prompt token (prefill) and one generated token (decode)."""

    input: Decimal = Field(default=Decimal(1), ge=0)
    output: Decimal = Field(default=Decimal(4), ge=0)


class GpuConfig(_Strict):
    """A self-hosted upstream's GPU bill, allocated to its calls (``accounting.gpu``)."""

    hourly_usd: Decimal = Field(gt=0)           # per GPU
    count: int = Field(default=1, ge=1)
    interval_s: int = Field(default=60, ge=1, le=3600)
    weights: GpuWeights = Field(default_factory=GpuWeights)
    metrics_url: str | None = None      # the server's Prometheus endpoint (vLLM /metrics)
    compare_to: str | None = None       # a catalog model: what the same tokens cost on its API


class AwsConfig(_Strict):
    """Bedrock custody: requests are re-signed (SigV4) with these credentials, or with the
    standard AWS credential chain when only ``region`` is given."""

    region: str = Field(min_length=1)
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None

    @model_validator(mode="after")
    def _pair(self) -> AwsConfig:
        if bool(self.access_key_id) != bool(self.secret_access_key):
            raise ValueError("access_key_id and secret_access_key go together (or neither: "
                             "the standard AWS credential chain)")
        return self


class UpstreamConfig(_Strict):
    url: str
    provider: Literal["openai", "anthropic", "gemini", "bedrock"] = "openai"
    api_key: str | None = None
    api_key_header: str | None = None
    provider_name: str | None = None    # gen_ai.provider.name; derived from url when unset
    timeout_s: float = Field(default=600, gt=0)
    connect_timeout_s: float = Field(default=10, gt=0)
    pricing: PriceConfig | None = None
    price_multiplier: Decimal | None = Field(default=None, ge=0)  # on every price, exactly
    # Reconciliation (``reconcile``): the provider's admin key, and the id of the API key the
    # proxy uses (compare only the traffic that went through it). Secrets: never logged.
    admin_key: str | None = None
    provider_key_id: str | None = None
    gpu: GpuConfig | None = None
    aws: AwsConfig | None = None                # bedrock: the proxy signs (custody)
    google_credentials: str | None = None       # gemini on Vertex AI: service-account JSON

    @model_validator(mode="after")
    def _custody(self) -> UpstreamConfig:
        if self.aws is not None and self.provider != "bedrock":
            raise ValueError("aws: only for provider: bedrock")
        if self.google_credentials is not None and self.provider != "gemini":
            raise ValueError("google_credentials: only for provider: gemini (Vertex AI)")
        if self.api_key and (self.aws is not None or self.google_credentials is not None):
            raise ValueError("api_key: not with aws or google_credentials (one credential)")
        return self

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if "://" not in value:
            raise ValueError(f"not a URL: {value!r} has no scheme (write http://{value} or "
                             f"https://{value})")
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"not a URL: scheme {parts.scheme!r} is not http or https")
        if not parts.hostname:
            raise ValueError(f"not a URL: {value!r} has no host name")
        try:
            parts.port  # noqa: B018  # raises on a port that is not a number in range
        except ValueError:
            raise ValueError(f"not a URL: {value!r} has an invalid port") from None
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError("not a URL: no query, fragment or credentials allowed")
        return value.rstrip("/")

    @field_validator("api_key", "admin_key", "provider_key_id", "google_credentials")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value or None


class PricingConfig(_Strict):
    catalog: str = "builtin"
    overrides: dict[str, PriceConfig] = Field(default_factory=dict)


class VirtualKey(_Strict):
    """A virtual key and what it may use (``hotpath.attribution.KeyRing`` enforces it).

    ``models``: globs of the models it may ask for, case-insensitive (as a budget's model
    selector); ``upstreams``: the upstream names it may call; ``expires``: when it stops
    working (an ISO 8601 time with its time zone: a time without one is rejected, it would be
    ambiguous); ``max_reserve_usd``: the most one of its calls may cost at worst (the
    reservation ``budgets.gate`` computes), a call over it is refused. None: no restriction.
    """

    key: str                # empty (its ${VAR} unset): no call can use it
    project: str = Field(min_length=1)
    # How budgets, records and metrics name the key (never the secret); default project#index.
    name: str | None = Field(default=None, min_length=1)
    models: list[str] | None = Field(default=None, min_length=1)
    upstreams: list[str] | None = Field(default=None, min_length=1)
    expires: datetime | None = None
    max_reserve_usd: Decimal | None = Field(default=None, gt=0)
    # Fixed tags of every call made with this key; x-spendgate-tags cannot override them.
    tags: dict[str, str] = Field(default_factory=dict)

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: dict[str, str]) -> dict[str, str]:
        return _valid_tags(value)

    @field_validator("models")
    @classmethod
    def _models(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and any(not m.strip() for m in value):
            raise ValueError("a model pattern is empty (leave models out for any model)")
        return value

    @field_validator("expires")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.utcoffset() is None:
            raise ValueError(f"{value.isoformat()} has no time zone: write it with one "
                             "(2027-01-01T00:00:00Z, or +02:00)")
        return value


def _valid_tags(value: dict[str, str]) -> dict[str, str]:
    """The tag grammar of ``spendgate.tags`` (the header's), for tags given in the config."""
    problems = [found for k, v in value.items() if (found := tag_rules.problem(k, v))]
    if len(value) > tag_rules.MAX_TAGS:
        problems.append(f"at most {tag_rules.MAX_TAGS} tags")
    if problems:
        raise ValueError("; ".join(problems))
    return value


class AttributionConfig(_Strict):
    """What calls are accounted by, besides upstream, project, model and key."""

    # Tag keys accounted as dimensions: the ledger (/admin/spend?group_by=tag:KEY) and
    # spendgate_tag_* metrics. Other tags still reach the usage log and spans.
    tag_keys: list[str] = Field(default_factory=list)

    @field_validator("tag_keys")
    @classmethod
    def _tag_keys(cls, value: list[str]) -> list[str]:
        problems = [found for k in value if (found := tag_rules.key_problem(k))]
        if len(set(value)) != len(value):
            problems.append("a tag key is listed twice")
        if problems:
            raise ValueError("; ".join(problems))
        return value


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
    # Per UTC day, upstream and model: spend and tokens by type, kept this many days
    # (what ``spendgate reconcile`` compares with the provider's bill).
    history_days: int = Field(default=35, ge=1, le=400)
    # The spend journal (budgets.journal): an append-only file; None puts it beside a SQLite
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


class Selectors(_Strict):
    """Which calls a budget or limit covers (``spendgate.selectors``): unset matches all."""

    project: str | None = None
    upstream: str | None = None
    model: str | None = None
    key: str | None = None
    tags: dict[str, str] | None = None

    @field_validator("tags")
    @classmethod
    def _tag_keys(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        # Keys as the header spells them (a glob may stand for a value, not a key).
        problems = [found for k in value or () if (found := tag_rules.key_problem(k))]
        if problems:
            raise ValueError("; ".join(problems))
        return value


class BudgetConfig(Selectors):
    name: str = Field(min_length=1)
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


class LimitConfig(Selectors):
    """A rate limit (``spendgate.limits``): requests and estimated-then-real tokens per
    sliding minute, and calls in flight, shared by every replica through the store."""

    name: str = Field(min_length=1)
    requests_per_minute: int | None = Field(default=None, gt=0)
    tokens_per_minute: int | None = Field(default=None, gt=0)
    max_concurrent: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _some_limit(self) -> LimitConfig:
        if (self.requests_per_minute is None and self.tokens_per_minute is None
                and self.max_concurrent is None):
            raise ValueError(f"limit {self.name!r} limits nothing: set requests_per_minute, "
                             "tokens_per_minute or max_concurrent")
        return self


class AlertsConfig(_Strict):
    webhook_url: str | None = None
    timeout_s: float = Field(default=5, gt=0)
    max_attempts: int = Field(default=6, ge=1)


class ReconcileConfig(_Strict):
    """Comparing the ledger with the providers' usage and cost APIs (``spendgate.reconcile``)."""

    interval_s: float = Field(default=21600, gt=0)
    lookback_days: int = Field(default=7, ge=1, le=31)
    drift_warn_ratio: float = Field(default=0.02, ge=0)
    timeout_s: float = Field(default=30, gt=0)


class Config(_Strict):
    server: ServerConfig = Field(default_factory=ServerConfig)
    upstreams: dict[str, UpstreamConfig] = Field(default_factory=dict)
    pricing: PricingConfig = Field(default_factory=PricingConfig)
    keys: list[VirtualKey] | None = None
    # More keys, from a file (``spendgate.keyfile``), added to ``keys`` when the config is
    # read (so ``keys`` is the union), and re-read with it on SIGHUP.
    keys_file: str | None = Field(default=None, min_length=1)
    attribution: AttributionConfig = Field(default_factory=AttributionConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    budgets: list[BudgetConfig] = Field(default_factory=list)
    limits: list[LimitConfig] = Field(default_factory=list)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    reconcile: ReconcileConfig = Field(default_factory=ReconcileConfig)
    admin_key: str | None = None
    metrics_key: str | None = None      # bearer key for GET /metrics (None: open)

    @field_validator("admin_key", "metrics_key")
    @classmethod
    def _empty_key(cls, value: str | None) -> str | None:
        return value or None

    def empty_keys(self) -> list[str]:
        """A warning for each virtual key left empty (its variable unset): it admits nothing."""
        return [f"keys.{i}.key: empty (is its variable unset?): no call can use this key"
                for i, k in enumerate(self.keys or ()) if not k.key]

    def key_warnings(self, now: datetime | None = None) -> list[str]:
        """``empty_keys``, and one warning for each key already past its ``expires`` at
        ``now`` (default: the current time): it is refused (401 ``key_expired``)."""
        now = now or datetime.now(UTC)
        return self.empty_keys() + [
            f"keys: key {k.name or f'{k.project}#{i}'!r} expired at {k.expires.isoformat()}: "
            "its calls are refused (401 key_expired)"
            for i, k in enumerate(self.keys or ()) if k.expires is not None and k.expires <= now]



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


def interpolate(value: Any, environ: dict[str, str] | os._Environ[str],
                problems: list[str] | None = None, path: str = "") -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string of a parsed YAML tree.

    ``${VAR}`` unset or empty adds ``path: ${VAR} is not set`` to ``problems`` (and becomes
    ""); ``${VAR:-default}`` gives ``default`` instead, so ``${VAR:-}`` allows empty.
    """
    if isinstance(value, str):
        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            found = environ.get(name)
            if found:
                return found
            if default is not None:
                return default
            if problems is not None:
                state = "is set but empty" if name in environ else "is not set"
                problems.append(f"{path or '(top level)'}: ${{{name}}} {state} (write "
                                f"${{{name}:-}} to allow empty, or ${{{name}:-default}})")
            return ""
        return _ENV.sub(substitute, value)
    if isinstance(value, dict):
        return {k: interpolate(v, environ, problems, f"{path}.{k}" if path else str(k))
                for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, environ, problems, f"{path}.{i}" if path else str(i))
                for i, v in enumerate(value)]
    return value


def _without_none(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _keys_at(loc: tuple[int | str, ...]) -> list[str]:
    """The keys the model at ``loc`` (a path into ``Config``) accepts; [] if not a model."""
    current: Any = Config
    for part in loc:
        current = _without_none(current)
        origin = get_origin(current)
        if origin is dict:
            current = get_args(current)[1]
        elif origin is list:
            current = get_args(current)[0]
        elif isinstance(current, type) and issubclass(current, BaseModel) \
                and isinstance(part, str) and part in current.model_fields:
            current = current.model_fields[part].annotation
        else:
            return []
    current = _without_none(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _unknown_key(loc: tuple[int | str, ...]) -> str:
    close = get_close_matches(str(loc[-1]), _keys_at(loc[:-1]), n=1, cutoff=0.6)
    return f"unknown key (did you mean {close[0]}?)" if close else "unknown key"


def _problems(error: ValidationError) -> list[str]:
    lines = []
    for item in error.errors():
        path = ".".join(str(p) for p in item["loc"]) or "(top level)"
        kind = item["type"]
        if kind == "extra_forbidden":
            message = _unknown_key(tuple(item["loc"]))
        elif kind == "missing":
            message = "required"
        else:
            message = str(item["msg"]).removeprefix("Value error, ")
        lines.append(f"{path}: {message}")
    return lines


def _entries(data: dict[str, Any], section: str) -> list[dict[str, Any]]:
    value = data.get(section)
    return [v if isinstance(v, dict) else {} for v in value] if isinstance(value, list) else []


def cross_field_problems(data: dict[str, Any]) -> list[str]:
    """Checks that span entries or sections, on the raw (interpolated) tree, so that they
    are reported together with the schema's problems rather than after them are fixed."""
    problems = []
    upstreams = data.get("upstreams")
    for name in upstreams if isinstance(upstreams, dict) else ():
        if name in RESERVED_NAMES or not isinstance(name, str) or not _NAME.match(name):
            problems.append(f"upstreams: {name!r} cannot name an upstream (reserved or not a "
                            "path segment)")
    keys, budgets = _entries(data, "keys"), _entries(data, "budgets")
    secrets = [k.get("key") for k in keys if k.get("key")]
    if len(secrets) != len(set(map(str, secrets))):
        problems.append("keys: the same key is listed twice")
    names = [str(k["name"]) for k in keys if k.get("name") is not None]
    if len(names) != len(set(names)):
        problems.append("keys: the same name is given to two keys")
    configured = upstreams if isinstance(upstreams, dict) else {}
    for i, k in enumerate(keys):
        allowed = k.get("upstreams")
        for name in allowed if isinstance(allowed, list) else ():
            if name not in configured:
                problems.append(f"keys.{i}.upstreams: {name!r} is not an upstream of this "
                                f"config ({', '.join(sorted(map(str, configured)))})")
    budget_names = [str(b.get("name")) for b in budgets if b.get("name")]
    if twice := sorted({n for n in budget_names if budget_names.count(n) > 1}):
        problems.append(f"budgets: budget names must be unique: {twice} repeated")
    limit_names = [str(x.get("name")) for x in _entries(data, "limits") if x.get("name")]
    if twice := sorted({n for n in limit_names if limit_names.count(n) > 1}):
        problems.append(f"limits: limit names must be unique: {twice} repeated")
    if keys:
        known = {str(k.get("name") or f"{k.get('project')}#{i}") for i, k in enumerate(keys)}
        for section in ("budgets", "limits"):
            for i, b in enumerate(_entries(data, section)):
                key = b.get("key")
                if isinstance(key, str) and not set("*?[") & set(key) and key not in known:
                    problems.append(f"{section}.{i}.key: {section[:-1]} {b.get('name')!r}: "
                                    f"key {key!r} names no virtual key (give the key a name "
                                    "in keys, or use project#index)")
    return problems


def parse_config(data: Any, environ: dict[str, str] | os._Environ[str] | None = None) -> Config:
    """Validate an already-parsed YAML tree (``None`` means the embedded default).

    Raises ``ConfigError`` with every problem found: unset variables, the schema's, and
    the cross-field checks, all in one pass."""
    if data is None:
        data = DEFAULT_CONFIG
    if not isinstance(data, dict):
        raise ConfigError(["(top level): must be a mapping"])
    unset: list[str] = []
    data = _prepared(data, environ, unset)
    problems = list(unset)
    from_file: list[str] = []
    inline = _inline_keys(data)
    data = _with_file_keys(data, from_file)
    problems += from_file
    try:
        config = Config.model_validate(data)
    except ValidationError as error:
        # A key whose variable is unset is reported as such, not as what "" fails.
        flagged = {p.split(": ", 1)[0] for p in unset}
        problems += [p for p in _problems(error) if p.split(": ", 1)[0] not in flagged]
        config = None
    problems += cross_field_problems(data)
    if problems or config is None:
        raise ConfigError([_file_key_path(p, inline) for p in problems])
    return config


def _inline_keys(data: dict[str, Any]) -> int:
    keys = data.get("keys")
    return len(keys) if isinstance(keys, list) else 0


def _with_file_keys(data: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    """``data`` with the entries of its ``keys_file`` after its own ``keys`` (the union:
    ``cross_field_problems`` rejects a secret or name in both); the file's problems added to
    ``problems``. ``keys`` that is not a list is left for the schema to reject."""
    path, keys = data.get("keys_file"), data.get("keys")
    if not isinstance(path, str) or not path or not isinstance(keys, list | None):
        return data
    entries, found = read_keys_file(path)
    problems += found
    return {**data, "keys": [*(keys or ()), *entries]}


_KEY_PATH = re.compile(r"^keys\.(\d+)(?=[.:])")


def _file_key_path(problem: str, inline: int) -> str:
    """A problem of the merged ``keys`` list's entry N, beyond the config's own ``inline``
    entries, named by where it is: ``keys_file.(N - inline)``."""
    match = _KEY_PATH.match(problem)
    if match is None or int(match.group(1)) < inline:
        return problem
    return f"keys_file.{int(match.group(1)) - inline}{problem[match.end():]}"


def _prepared(data: dict[str, Any], environ: dict[str, str] | os._Environ[str] | None,
              unset: list[str] | None = None) -> dict[str, Any]:
    """``data`` interpolated (unset variables added to ``unset``), with the default
    upstreams when it names none."""
    data = interpolate(data, os.environ if environ is None else environ, unset)
    if not data.get("upstreams"):
        data = {**data, "upstreams": DEFAULT_CONFIG["upstreams"]}
    return data


def load_config(path: str | Path | None = None,
                environ: dict[str, str] | os._Environ[str] | None = None) -> Config:
    """Read and validate a config file; ``None`` gives the embedded default."""
    return parse_config(_read_tree(path), environ)


def _read_tree(path: str | Path | None) -> Any:
    if path is None:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError([f"{path}: cannot read ({error.strerror})"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError([f"{path}: not valid YAML ({error})"]) from None
    return data if data is not None else {}


def load_config_leniently(path: str | Path | None = None,
                          environ: dict[str, str] | os._Environ[str] | None = None
                          ) -> tuple[Config | None, list[str]]:
    """What ``check-config`` checks: the problems ``load_config`` finds, and a config to run
    the checks beyond the schema on (catalog, telemetry, allowed hosts, credentials), so
    those come in the same pass. Without problems, the config itself; with some, the file
    with each part the schema rejected left out (its default in its place: ``salvage``);
    None when nothing can be read (not a file, not YAML, not a mapping).

    A check's problem about a key the schema already rejected (or one above it) would be
    about the default standing in for it: ``related`` tells which."""
    try:
        return load_config(path, environ), []
    except ConfigError as error:
        problems = list(error.problems)
    try:
        data = _read_tree(path)
    except ConfigError:
        return None, problems
    if not isinstance(data, dict):
        return None, problems
    return salvage(_with_file_keys(_prepared(data, environ), [])), problems


def salvage(data: dict[str, Any], rounds: int = 8) -> Config | None:
    """``data`` validated with every part the schema rejects removed, so that its default
    applies (a bad field), or the entry holding it goes (a missing required field, an
    entry's own check): what parses of it. None if the top level itself fails."""
    for _ in range(rounds):
        try:
            return Config.model_validate(data)
        except ValidationError as error:
            rejected = {_existing(data, tuple(item["loc"])) for item in error.errors()}
        if () in rejected:
            return None
        data = _pruned(data, rejected, ())
    return None


def _existing(data: Any, loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    """The longest start of ``loc`` that is a path in ``data`` (a missing key's entry; a
    union member's name in an error's location is no key of the data)."""
    for depth, part in enumerate(loc):
        if isinstance(data, dict):
            found = part in data
        else:
            found = isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)
        if not found:
            return loc[:depth]
        data = data[part]
    return loc


def _pruned(value: Any, rejected: set[tuple[int | str, ...]],
            at: tuple[int | str, ...]) -> Any:
    if isinstance(value, dict):
        return {k: _pruned(v, rejected, (*at, k)) for k, v in value.items()
                if (*at, k) not in rejected}
    if isinstance(value, list):
        return [_pruned(v, rejected, (*at, i)) for i, v in enumerate(value)
                if (*at, i) not in rejected]
    return value


def related(problem: str, problems: list[str]) -> bool:
    """Whether ``problem``'s key path (before ``": "``) is one of ``problems``' paths, or
    above one (``server.allowed_hosts`` above ``server.allowed_hosts.0``)."""
    path = problem.split(": ", 1)[0]
    return any(known == path or known.startswith(path + ".")
               for known in (other.split(": ", 1)[0] for other in problems))
