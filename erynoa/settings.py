"""All configuration, read from the environment (prefix ``ERYNOA_``) and an optional ``.env``.

Every process builds one ``Settings`` at start-up and passes it down; nothing reads the
environment anywhere else. Invalid values fail at start-up with the variable's name.
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from erynoa.outbound import STANDARD_PORTS, parse_allow_rule

PROJECT_ROOT = Path(__file__).resolve().parent.parent

Environment = Literal["development", "test", "production"]

_PLACEHOLDER_SECRETS = {"", "changeme", "dev-secret", "whsec_dev"}
# Stripe's live secret and restricted keys; test-mode keys move no money.
_LIVE_STRIPE_KEY = re.compile(r"^(sk|rk)_live_[A-Za-z0-9]{16,}$")
# What Stripe issues for an endpoint: "whsec_" and at least 24 more characters.
_STRIPE_WEBHOOK_SECRET = re.compile(r"^whsec_[A-Za-z0-9+/=_-]{24,}$")
MIN_SECRET_LENGTH = 32


class UnsafeConfiguration(RuntimeError):
    """Settings a process must refuse to start with (the message says why and what to set)."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ERYNOA_", env_file=".env", extra="ignore", frozen=True
    )

    # No default: a process is development, test or production only when told so. Unset, it
    # gets no development conveniences (the token issuer, placeholder secrets).
    environment: Environment | None = None

    # --- local stack: where `erynoa stack` keeps its services (all git-ignored) ---
    state_dir: Path = PROJECT_ROOT / ".stack"
    kafka_port: int = 19092
    kafka_controller_port: int = 19093
    kafka_heap: str = "768m"
    postgres_port: int = 15432
    redis_port: int = 16379
    stripe_mock_port: int = 12111
    # The Schema Registry (Apicurio): its API port and its health/metrics port, both loopback.
    registry_port: int = 18081
    registry_management_port: int = 18082
    registry_heap: str = "256m"

    # --- connections used by every runtime ---
    kafka_bootstrap: str = "127.0.0.1:19092"
    database_url: str = "postgresql://erynoa@127.0.0.1:15432/erynoa"
    redis_url: str = "redis://127.0.0.1:16379/0"
    # The Confluent-compatible Schema Registry API. Set: events are written in the Confluent
    # wire format (magic 0, schema id) under TopicRecordNameStrategy subjects. Empty: Avro
    # single-object encoding and no registry (a cluster not yet migrated; see README).
    registry_url: str | None = "http://127.0.0.1:18081/apis/ccompat/v7"
    # What the writers write when a registry is set: "single-object" only while a running
    # cluster moves to the registry (readers decode both formats either way; README).
    wire_format: Literal["confluent", "single-object"] = "confluent"
    # Register a missing schema version at start-up (the runtimes only: operator commands such
    # as `erynoa dlq` never register). Production turns it off and registers from the release
    # pipeline (`erynoa schemas register`), so a runtime cannot add schemas.
    registry_auto_register: bool = True
    # Each registry request's timeout; start-up keeps retrying through an outage.
    registry_timeout_seconds: float = Field(default=5.0, gt=0)
    db_pool_min: int = 1
    db_pool_max: int = 10
    # Partition lanes per agent worker (handled at once, each its own transaction). 0: one lane
    # for an agent whose work is all in PostgreSQL (larger batches, less CPU per message), up
    # to 8 for one that waits on outside services (Stripe, SMTP, webhooks).
    agent_lanes: int = Field(default=0, ge=0, le=64)

    # --- topics ---
    topics_file: Path = PROJECT_ROOT / "topics.yaml"
    schemas_dir: Path = PROJECT_ROOT / "schemas"
    # Which `environments:` overrides of topics.yaml apply (replication per cluster).
    topics_environment: str = "local"
    # Prefix for every topic and consumer group, so several stacks can share a cluster.
    topic_prefix: str = ""

    # --- API ---
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    public_base_url: str = "http://127.0.0.1:8080"
    cors_origins: list[str] = Field(default_factory=list)
    max_body_bytes: int = 64 * 1024
    rate_limit_per_minute_user: int = 600
    rate_limit_per_minute_ip: int = 1200
    # Proxies (CIDRs, JSON list) whose X-Forwarded-For names the client; from anyone else the
    # header is ignored. Empty: the API is reached directly and the peer is the client.
    trusted_proxies: list[IPv4Network | IPv6Network] = Field(default_factory=list)
    # A repeated Idempotency-Key returns its booking for this long; after it, the key is
    # refused as expired (422) and its row is deleted.
    idempotency_key_ttl_seconds: int = Field(default=86_400, ge=60)

    # --- auth ---
    oidc_issuer: str = "http://127.0.0.1:8080/api/v1/auth/dev"
    oidc_audience: str = "erynoa-api"
    oidc_discovery_url: str | None = None
    roles_claim: str = "roles"
    # The longest lifetime (exp - iat) of a token the API accepts.
    max_token_lifetime_seconds: int = Field(default=86_400, ge=60)
    # The JOSE `typ` of an access token (compared case-insensitively, "application/" dropped).
    # RFC 9068 says "at+jwt"; many providers still send "JWT". ID tokens are refused.
    access_token_types: list[str] = Field(default_factory=lambda: ["at+jwt", "JWT"])
    # Mints a token for any user and role without a login: it runs only where the environment
    # is explicitly development or test and the API listens on loopback (see
    # ``require_safe_dev_issuer``); elsewhere set it false and point oidc_issuer at the IdP.
    dev_issuer_enabled: bool = True
    # For a container only: the API listens on 0.0.0.0 inside it, and its port is published on
    # the host's 127.0.0.1 alone (compose.yaml), so loopback is still the only way in.
    dev_issuer_published_on_loopback: bool = False
    # The development issuer's refresh: a session (the tokens refreshed from one login) ends
    # this long after the login, however often it was refreshed.
    dev_session_max_seconds: int = Field(default=86_400, ge=60)
    dev_signing_key_file: Path = PROJECT_ROOT / ".stack" / "dev-signing-key.pem"

    # --- payments ---
    payment_gateway: Literal["sandbox", "stripe"] = "sandbox"
    stripe_api_key: str = "sk_test_123"
    stripe_api_base: str | None = None
    stripe_webhook_secret: str = "whsec_dev"
    sandbox_latency_ms: int = 0
    refund_policy: Literal["full", "none"] = "full"
    # A booking waiting for the customer's 3-D Secure step fails after this long.
    payment_action_timeout_seconds: int = Field(default=1800, ge=1)

    # --- notifications ---
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 2525
    mail_from: str = "bookings@erynoa.local"
    webhook_signing_secret: str = "dev-secret"

    # --- outbound requests to URLs users choose (webhooks; see erynoa.outbound) ---
    # Comma-separated addresses or networks, optionally with :port, exempt from the guard
    # (e.g. 127.0.0.1 for tests and development). Empty: public addresses only.
    outbound_allow: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Ports a public destination may use (comma-separated).
    outbound_ports: Annotated[list[int], NoDecode] = Field(
        default_factory=lambda: sorted(STANDARD_PORTS)
    )

    # --- observability ---
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Each process serves /metrics on base + its offset (erynoa.metrics.PORT_OFFSETS:
    # materializer 0, reservation 1, payment 2, notification 3, provider-response 4, api 5),
    # on metrics_host; 0 turns them off. The API's public port does not serve them.
    metrics_port_base: int = Field(default=9100, ge=0, le=65535 - 10)
    metrics_host: str = "127.0.0.1"
    # OpenTelemetry traces: off by default (a no-op tracer). "console" writes one JSON line per
    # span to stderr (beside the logs); "otlp" sends them over OTLP/HTTP to otlp_endpoint
    # (unset: the exporter's default, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or localhost:4318).
    tracing_exporter: Literal["none", "console", "otlp"] = "none"
    otlp_endpoint: str | None = None
    # Fraction of new traces recorded (a trace started upstream keeps its own decision).
    tracing_sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)

    @field_validator("outbound_allow", "outbound_ports", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("registry_url")
    @classmethod
    def _registry_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError(
                f"{value!r} is not an http(s) URL; give the registry's Confluent-compatible API, "
                "e.g. http://127.0.0.1:18081/apis/ccompat/v7, or leave it empty for none"
            )
        return value

    @field_validator("outbound_allow")
    @classmethod
    def _parse_allow_rules(cls, value: list[str]) -> list[str]:
        for entry in value:
            parse_allow_rule(entry)  # fails at start-up with the entry, not at first send
        return value

    @model_validator(mode="after")
    def _refuse_placeholders_in_production(self) -> Settings:
        if self.environment != "production":
            return self
        # Each message names the variable and the rule, never the value (it may be a secret).
        problems = []
        if self.dev_issuer_enabled:
            problems.append("ERYNOA_DEV_ISSUER_ENABLED must be false in production")
        if self.payment_gateway != "stripe":
            problems.append(
                "ERYNOA_PAYMENT_GATEWAY must be stripe in production (the sandbox confirms "
                "bookings without taking money)"
            )
        if not _LIVE_STRIPE_KEY.match(self.stripe_api_key):
            problems.append(
                "ERYNOA_STRIPE_API_KEY must be a live secret or restricted key "
                "(sk_live_... or rk_live_...), not a test or publishable key"
            )
        if self.stripe_webhook_secret in _PLACEHOLDER_SECRETS:
            problems.append("ERYNOA_STRIPE_WEBHOOK_SECRET is a placeholder")
        elif not _STRIPE_WEBHOOK_SECRET.match(self.stripe_webhook_secret):
            problems.append(
                "ERYNOA_STRIPE_WEBHOOK_SECRET must be the endpoint's signing secret as Stripe "
                "shows it (whsec_ and at least 24 more characters)"
            )
        if self.webhook_signing_secret in _PLACEHOLDER_SECRETS:
            problems.append("ERYNOA_WEBHOOK_SIGNING_SECRET is a placeholder")
        elif len(self.webhook_signing_secret) < MIN_SECRET_LENGTH:
            problems.append(
                f"ERYNOA_WEBHOOK_SIGNING_SECRET must be at least {MIN_SECRET_LENGTH} characters"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def development_or_test(self) -> bool:
        """Whether this process was explicitly declared a development or test environment."""
        return self.environment in ("development", "test")

    @property
    def stripe_webhook_secret_usable(self) -> bool:
        """Whether Stripe events signed with ``stripe_webhook_secret`` may be trusted: a
        placeholder is public (it is in this file), so only development and test accept it."""
        return self.development_or_test or self.stripe_webhook_secret not in _PLACEHOLDER_SECRETS

    def require_safe_dev_issuer(self) -> None:
        """Raise ``UnsafeConfiguration`` unless the development issuer is off, or on where only
        this machine can reach it: an explicit development or test environment, on loopback."""
        if not self.dev_issuer_enabled:
            return
        problems = []
        if not self.development_or_test:
            problems.append(
                f"ERYNOA_ENVIRONMENT is {self.environment or 'not set'}; the issuer needs "
                "development or test, set explicitly"
            )
        if not (_is_loopback(self.api_host) or self.dev_issuer_published_on_loopback):
            problems.append(
                f"ERYNOA_API_HOST={self.api_host} is reachable from other machines; the "
                "issuer listens on loopback only (127.0.0.1 or ::1)"
            )
        if problems:
            raise UnsafeConfiguration(
                "refusing to start: the development token issuer (ERYNOA_DEV_ISSUER_ENABLED, "
                "on by default) gives anyone who reaches it a token for any user and role, "
                f"admin included. {'; '.join(problems)}. For a local run set "
                "ERYNOA_ENVIRONMENT=development and keep ERYNOA_API_HOST=127.0.0.1 (make run "
                "does); anywhere else set ERYNOA_DEV_ISSUER_ENABLED=false and ERYNOA_OIDC_ISSUER "
                "to your identity provider."
            )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # any other name may resolve to anything


def describe_invalid(error: ValidationError) -> str:
    """A ``Settings`` validation error as one line: each problem under its variable's name."""
    # A rule across several fields (the production checks) has no location; its message
    # names the variables itself.
    return "; ".join(
        f"ERYNOA_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" if e["loc"] else e["msg"]
        for e in error.errors()
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (built once; tests build their own ``Settings``)."""
    return Settings()
