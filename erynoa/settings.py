"""All configuration, read from the environment (prefix ``ERYNOA_``) and an optional ``.env``.

Every process builds one ``Settings`` at start-up and passes it down; nothing reads the
environment anywhere else. Invalid values fail at start-up with the variable's name.
"""

from __future__ import annotations

from functools import lru_cache
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent

Environment = Literal["development", "test", "production"]

_PLACEHOLDER_SECRETS = {"", "changeme", "dev-secret", "whsec_dev"}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ERYNOA_", env_file=".env", extra="ignore", frozen=True
    )

    environment: Environment = "development"

    # --- local stack: where `erynoa stack` keeps its services (all git-ignored) ---
    state_dir: Path = PROJECT_ROOT / ".stack"
    kafka_port: int = 19092
    kafka_controller_port: int = 19093
    kafka_heap: str = "768m"
    postgres_port: int = 15432
    redis_port: int = 16379
    stripe_mock_port: int = 12111

    # --- connections used by every runtime ---
    kafka_bootstrap: str = "127.0.0.1:19092"
    database_url: str = "postgresql://erynoa@127.0.0.1:15432/erynoa"
    redis_url: str = "redis://127.0.0.1:16379/0"
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
    dev_issuer_enabled: bool = True
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

    # --- observability ---
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Each non-API process serves /metrics on base + its offset (erynoa.metrics.PORT_OFFSETS:
    # materializer 0, reservation 1, payment 2, notification 3, provider-response 4);
    # 0 turns them off. The API serves GET /metrics on its own port.
    metrics_port_base: int = Field(default=9100, ge=0, le=65535 - 10)
    metrics_host: str = "127.0.0.1"
    # OpenTelemetry traces: off by default (a no-op tracer). "console" writes one JSON line per
    # span to stderr (beside the logs); "otlp" sends them over OTLP/HTTP to otlp_endpoint
    # (unset: the exporter's default, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or localhost:4318).
    tracing_exporter: Literal["none", "console", "otlp"] = "none"
    otlp_endpoint: str | None = None
    # Fraction of new traces recorded (a trace started upstream keeps its own decision).
    tracing_sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _refuse_placeholders_in_production(self) -> Settings:
        if self.environment != "production":
            return self
        problems = []
        if self.dev_issuer_enabled:
            problems.append("ERYNOA_DEV_ISSUER_ENABLED must be false in production")
        if self.stripe_webhook_secret in _PLACEHOLDER_SECRETS:
            problems.append("ERYNOA_STRIPE_WEBHOOK_SECRET is a placeholder")
        if self.webhook_signing_secret in _PLACEHOLDER_SECRETS:
            problems.append("ERYNOA_WEBHOOK_SIGNING_SECRET is a placeholder")
        if problems:
            raise ValueError("; ".join(problems))
        return self


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (built once; tests build their own ``Settings``)."""
    return Settings()
