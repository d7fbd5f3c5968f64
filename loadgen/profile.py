"""The traffic profile: who books what, how often, and how each booking should end.

A profile is a YAML file (``loadgen/profiles/default.yaml`` is the default mix). Loading it
validates every field and names the file and the field in the error::

    profile = load_profile(Path("loadgen/profiles/default.yaml"))
    # ProfileError: loadgen/profiles/x.yaml: outcomes.provider_accepts: Input should be ...

Pure: no I/O beyond reading the file.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from erynoa.saga import Status

PROFILES_DIR = Path(__file__).resolve().parent / "profiles"
DEFAULT_PROFILE = PROFILES_DIR / "default.yaml"


class ProfileError(ValueError):
    """A profile file that cannot be used; the message names the file and the field."""


class Intent(StrEnum):
    """How a synthetic booking is meant to end: what its customer and provider will do."""

    PROVIDER_ACCEPTS = "provider_accepts"
    PROVIDER_REJECTS = "provider_rejects"
    PROVIDER_NEVER_ANSWERS = "provider_never_answers"
    CARD_DECLINED = "card_declined"
    ACTION_REQUIRED = "action_required"
    CUSTOMER_CANCELS = "customer_cancels"
    CAPTURE_FAILS = "capture_fails"


EXPECTED_STATUS: dict[Intent, Status] = {
    Intent.PROVIDER_ACCEPTS: Status.CONFIRMED,
    Intent.PROVIDER_REJECTS: Status.REJECTED,
    Intent.PROVIDER_NEVER_ANSWERS: Status.EXPIRED,
    Intent.CARD_DECLINED: Status.FAILED,
    # The simulated customer completes the challenge (a signed Stripe webhook), then the
    # provider accepts.
    Intent.ACTION_REQUIRED: Status.CONFIRMED,
    Intent.CUSTOMER_CANCELS: Status.CANCELLED,
    Intent.CAPTURE_FAILS: Status.FAILED,
}
"""The status a booking of each intent ends in when its slot had room (else ``rejected``)."""

# Stripe's test payment methods, which the sandbox gateway (and Stripe test mode) honour.
PAYMENT_METHOD: dict[Intent, str] = {
    Intent.CARD_DECLINED: "pm_card_chargeDeclined",
    Intent.ACTION_REQUIRED: "pm_card_authenticationRequired",
    Intent.CAPTURE_FAILS: "pm_card_captureFails",
}
DEFAULT_PAYMENT_METHOD = "pm_card_visa"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DelayRange(_Strict):
    """A delay drawn uniformly from [min_ms, max_ms] for each booking."""

    min_ms: int = Field(default=0, ge=0, le=3_600_000)
    max_ms: int = Field(default=0, ge=0, le=3_600_000)

    @model_validator(mode="after")
    def _ordered(self) -> DelayRange:
        if self.max_ms < self.min_ms:
            raise ValueError(f"max_ms ({self.max_ms}) is less than min_ms ({self.min_ms})")
        return self


class Population(_Strict):
    customers: int = Field(default=1000, ge=1, le=1_000_000)
    providers: int = Field(default=50, ge=1, le=100_000)
    services: int = Field(default=200, ge=1, le=100_000)
    slots_per_service: int = Field(default=24, ge=1, le=10_000)

    @model_validator(mode="after")
    def _every_provider_offers_something(self) -> Population:
        if self.providers > self.services:
            raise ValueError(
                f"providers ({self.providers}) exceeds services ({self.services}); "
                "every provider needs at least one service"
            )
        return self


class Catalog(_Strict):
    # Service k (by popularity rank, from 1) is picked with probability ∝ 1 / k**skew.
    popularity_skew: float = Field(default=1.1, ge=0.0, le=5.0)
    capacity_per_slot: int = Field(default=1000, ge=1, le=10_000)
    # A few services with tiny, few slots draw a fixed share of the requests, so that share
    # mostly finds them full (rejected) once the first seats are gone.
    hot_services: int = Field(default=0, ge=0)
    hot_capacity_per_slot: int = Field(default=2, ge=1, le=10_000)
    hot_slots: int = Field(default=2, ge=1, le=10_000)
    hot_traffic_share: float = Field(default=0.0, ge=0.0, le=1.0)
    price_min_minor: int = Field(default=1500, ge=0)
    price_max_minor: int = Field(default=12000, ge=0)
    currency: str = Field(default="EUR", pattern=r"^[A-Z]{3}$")
    duration_minutes: int = Field(default=45, ge=1, le=7 * 24 * 60)
    # How long a provider that never answers takes to expire (the loadgen's services are
    # created in the database, so shorter than the API's 60 s minimum is allowed here).
    response_deadline_seconds: int = Field(default=15, ge=1, le=3600)

    @model_validator(mode="after")
    def _prices_ordered(self) -> Catalog:
        if self.price_max_minor < self.price_min_minor:
            raise ValueError(
                f"price_max_minor ({self.price_max_minor}) is less than "
                f"price_min_minor ({self.price_min_minor})"
            )
        return self


class Timing(_Strict):
    """How long the simulated people take once the booking is ready for them."""

    provider_delay: DelayRange = DelayRange(min_ms=0, max_ms=50)
    action_delay: DelayRange = DelayRange(min_ms=0, max_ms=50)
    cancel_delay: DelayRange = DelayRange(min_ms=0, max_ms=50)


class Outcomes(_Strict):
    """Relative weights of the intents (they need not sum to 100)."""

    provider_accepts: float = Field(default=0.0, ge=0.0)
    provider_rejects: float = Field(default=0.0, ge=0.0)
    provider_never_answers: float = Field(default=0.0, ge=0.0)
    card_declined: float = Field(default=0.0, ge=0.0)
    action_required: float = Field(default=0.0, ge=0.0)
    customer_cancels: float = Field(default=0.0, ge=0.0)
    capture_fails: float = Field(default=0.0, ge=0.0)

    @model_validator(mode="after")
    def _something_to_do(self) -> Outcomes:
        if sum(self.weights().values()) <= 0:
            raise ValueError("all weights are zero; give at least one outcome a positive weight")
        return self

    def weights(self) -> dict[Intent, float]:
        return {intent: float(getattr(self, intent.value)) for intent in Intent}

    def shares(self) -> dict[Intent, float]:
        """Each intent's share of the traffic (sums to 1)."""
        weights = self.weights()
        total = sum(weights.values())
        return {intent: w / total for intent, w in weights.items()}


class Profile(_Strict):
    name: str = Field(default="custom", min_length=1, max_length=100)
    description: str = ""
    population: Population = Population()
    catalog: Catalog = Catalog()
    outcomes: Outcomes
    timing: Timing = Timing()

    @model_validator(mode="after")
    def _hot_services_fit(self) -> Profile:
        cat, services = self.catalog, self.population.services
        if cat.hot_services > services:
            raise ValueError(
                f"catalog.hot_services ({cat.hot_services}) exceeds "
                f"population.services ({services})"
            )
        if cat.hot_traffic_share > 0 and cat.hot_services == 0:
            raise ValueError("catalog.hot_traffic_share is set but catalog.hot_services is 0")
        if cat.hot_traffic_share == 1.0 and cat.hot_services < services:
            raise ValueError(
                "catalog.hot_traffic_share is 1: the services that are not hot get no traffic"
            )
        return self


def _where(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def parse_profile(data: Any, source: str) -> Profile:
    """Validate already-parsed YAML; ``source`` names the file in errors."""
    if not isinstance(data, dict):
        raise ProfileError(f"{source}: the top level must be a mapping of sections")
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            message = error["msg"].removeprefix("Value error, ")
            problems.append(f"{source}: {_where(error['loc'])}: {message}")
        raise ProfileError("\n".join(problems)) from None


def load_profile(path: Path) -> Profile:
    """Read and validate a profile file; raises ``ProfileError`` naming the file and field."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ProfileError(f"{path}: invalid YAML{where}: {problem}") from None
    return parse_profile(data, str(path))


def resolve_profile(name_or_path: str) -> Path:
    """``default`` or ``happy`` name a bundled profile; anything else is a file path."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        return candidate
    return PROFILES_DIR / f"{name_or_path}.yaml"
