"""The topic catalog (``topics.yaml``) and the migration files, checked with tmp files only.

Run: ``python -m pytest tests/unit/test_topics_catalog.py -q``
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from erynoa.db import MigrationError, discover
from erynoa.settings import PROJECT_ROOT
from erynoa.topics import CatalogError, TopicCatalog, load_catalog, parse_duration_ms

TOPICS_FILE = PROJECT_ROOT / "topics.yaml"
BOOKING_TOPICS = {
    "bookings",
    "reservations",
    "payments",
    "payment-webhooks",
    "notifications",
    "provider-answers",
    "provider-responses",
}


@pytest.fixture(scope="module")
def real_spec() -> dict[str, Any]:
    data = yaml.safe_load(TOPICS_FILE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture
def write_catalog(
    tmp_path: Path, real_spec: dict[str, Any]
) -> Callable[[Callable[[dict[str, Any]], None]], Path]:
    """Write a copy of the real catalog, changed by ``mutate``, and return its path."""

    def write(mutate: Callable[[dict[str, Any]], None]) -> Path:
        spec = copy.deepcopy(real_spec)
        mutate(spec)
        path = tmp_path / "topics.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        return path

    return write


def _error_of(path: Path, **kwargs: str) -> str:
    with pytest.raises(CatalogError) as info:
        load_catalog(path, **kwargs)
    message = str(info.value)
    # Every catalog error names the file it is about.
    assert str(path) in message
    return message


# --- durations ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0ms", 0),
        ("500ms", 500),
        ("10s", 10_000),
        ("5m", 300_000),
        ("2h", 7_200_000),
        ("7d", 604_800_000),
        ("30d", 2_592_000_000),
        ("forever", -1),
    ],
)
def test_durations_convert_to_milliseconds(text: str, expected: int) -> None:
    assert parse_duration_ms(text) == expected


@pytest.mark.parametrize(
    "text", ["", "7", "d", "7 d", "7D", "1.5h", "-1s", "1w", "7days", "Forever", " 7d", "7d "]
)
def test_invalid_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration_ms(text)


# --- the real catalog ----------------------------------------------------------------------


def test_the_real_catalog_loads_for_every_declared_environment(real_spec: dict[str, Any]) -> None:
    for environment in real_spec["environments"]:
        catalog = load_catalog(TOPICS_FILE, environment)
        assert isinstance(catalog, TopicCatalog)
        assert catalog.source == TOPICS_FILE


def test_local_environment_uses_one_replica() -> None:
    catalog = load_catalog(TOPICS_FILE, "local")
    for topic in catalog.topics.values():
        assert topic.replication_factor == 1, topic.name
        assert topic.configs["min.insync.replicas"] == "1", topic.name


def test_production_environment_uses_three_replicas_and_min_isr_two() -> None:
    catalog = load_catalog(TOPICS_FILE, "production")
    for topic in catalog.topics.values():
        assert topic.replication_factor == 3, topic.name
        assert topic.configs["min.insync.replicas"] == "2", topic.name


def test_environment_overrides_partitions_but_keeps_the_other_defaults() -> None:
    local = load_catalog(TOPICS_FILE, "local")
    production = load_catalog(TOPICS_FILE, "production")
    assert local.topics["bookings"].partitions == 6
    assert production.topics["bookings"].partitions == 12
    for catalog in (local, production):
        assert catalog.topics["bookings"].configs["retention.ms"] == "-1"
        assert catalog.topics["bookings"].configs["cleanup.policy"] == "delete"


def test_default_environment_is_local() -> None:
    assert load_catalog(TOPICS_FILE) == load_catalog(TOPICS_FILE, "local")


def test_topic_settings_override_the_defaults() -> None:
    services = load_catalog(TOPICS_FILE, "local").topics["catalog-services"]
    assert services.key == "service_id"
    assert services.configs["cleanup.policy"] == "compact"
    assert services.configs["retention.ms"] == "-1"


def test_every_booking_topic_is_keyed_by_booking_id_and_co_partitioned() -> None:
    for environment in ("local", "production"):
        catalog = load_catalog(TOPICS_FILE, environment)
        booking = [t for t in catalog.by_kind("event") if t.name in BOOKING_TOPICS]
        assert {t.name for t in booking} == BOOKING_TOPICS
        assert {t.key for t in booking} == {"booking_id"}
        assert len({t.partitions for t in booking}) == 1


@pytest.mark.parametrize("environment", ["local", "production"])
def test_booking_topics_keep_every_event_forever(environment: str) -> None:
    """The read model is rebuilt from these logs: a deleted event is a lost booking."""
    catalog = load_catalog(TOPICS_FILE, environment)
    folded = set(catalog.consumer("materializer").consumes)
    assert folded == BOOKING_TOPICS
    for name in folded:
        configs = catalog.topics[name].configs
        assert configs["retention.ms"] == "-1", name
        assert configs["cleanup.policy"] == "delete", name


@pytest.mark.parametrize(
    ("where", "setting", "value"),
    [
        ("reservations", "retention", "7d"),
        ("defaults", "retention", "30d"),
        ("payments", "cleanup_policy", "compact"),
        ("bookings", "cleanup_policy", "compact,delete"),
    ],
)
def test_a_booking_topic_that_would_delete_events_is_refused(
    write_catalog: Callable[..., Path], where: str, setting: str, value: str
) -> None:
    def mutate(spec: dict[str, Any]) -> None:
        section = spec["defaults"] if where == "defaults" else spec["topics"][where]
        section[setting] = value

    message = _error_of(write_catalog(mutate))
    topic = "reservations" if where == "defaults" else where
    assert f"topics.{topic}: a booking topic must keep every event" in message


def test_topic_for_names_the_topic_of_each_event() -> None:
    catalog = load_catalog(TOPICS_FILE)
    assert catalog.topic_for("BookingRequested") == "bookings"
    assert catalog.topic_for("BookingCancellationRequested") == "bookings"
    assert catalog.topic_for("ReservationHeld") == "reservations"
    assert catalog.topic_for("PaymentCaptureFailed") == "payments"
    assert catalog.topic_for("StripeEventReceived") == "payment-webhooks"
    assert catalog.topic_for("NotificationFailed") == "notifications"
    assert catalog.topic_for("ProviderAnswerSubmitted") == "provider-answers"
    assert catalog.topic_for("ProviderTimedOut") == "provider-responses"
    assert catalog.topic_for("ServiceChanged") == "catalog-services"


def test_topic_for_an_undeclared_event_names_the_catalog() -> None:
    catalog = load_catalog(TOPICS_FILE)
    with pytest.raises(KeyError, match="BookingTeleported") as info:
        catalog.topic_for("BookingTeleported")
    assert str(TOPICS_FILE) in str(info.value)


def test_event_types_lists_every_declared_event_once(real_spec: dict[str, Any]) -> None:
    declared = [e for t in real_spec["topics"].values() for e in t["events"]]
    catalog = load_catalog(TOPICS_FILE)
    assert catalog.event_types == frozenset(declared)
    assert len(declared) == len(set(declared))


def test_each_consumer_gets_a_group_retry_tiers_and_a_dead_letter_topic() -> None:
    catalog = load_catalog(TOPICS_FILE)
    payment = catalog.consumer("payment")
    assert payment.group_id == "erynoa-payment"
    assert payment.consumes == (
        "bookings",
        "reservations",
        "provider-responses",
        "payment-webhooks",
    )
    assert payment.retry_topics == ("payment.retry.1s", "payment.retry.10s", "payment.retry.60s")
    assert payment.retry_delays_ms == (1_000, 10_000, 60_000)
    assert payment.dead_letter_topic == "payment.dlq"


def test_an_undeclared_consumer_names_the_catalog() -> None:
    catalog = load_catalog(TOPICS_FILE)
    with pytest.raises(KeyError, match="nobody") as info:
        catalog.consumer("nobody")
    assert str(TOPICS_FILE) in str(info.value)


def test_retry_and_dead_letter_topics_match_the_booking_partitions() -> None:
    for environment, partitions in (("local", 6), ("production", 12)):
        catalog = load_catalog(TOPICS_FILE, environment)
        derived = catalog.by_kind("retry") + catalog.by_kind("dead_letter")
        assert derived
        for topic in derived:
            assert topic.partitions == partitions, topic.name
            assert topic.key == "booking_id"
            assert topic.events == ()


def test_by_kind_splits_the_topics_and_covers_them_all() -> None:
    catalog = load_catalog(TOPICS_FILE)
    events = catalog.by_kind("event")
    retries = catalog.by_kind("retry")
    dead_letters = catalog.by_kind("dead_letter")
    assert {t.name for t in events} == BOOKING_TOPICS | {"catalog-services"}
    assert {t.name for t in dead_letters} == {f"{c}.dlq" for c in catalog.consumers}
    expected_retries = {name for c in catalog.consumers.values() for name in c.retry_topics}
    assert {t.name for t in retries} == expected_retries
    assert len(events) + len(retries) + len(dead_letters) == len(catalog.topics)


def test_retry_and_dead_letter_retention_come_from_their_sections() -> None:
    catalog = load_catalog(TOPICS_FILE)
    assert catalog.topics["payment.retry.1s"].configs["retention.ms"] == str(7 * 86_400_000)
    # A parked message is the only record of work left undone: it stays until replayed.
    assert catalog.topics["payment.dlq"].configs["retention.ms"] == "-1"
    assert catalog.topics["payment.dlq"].configs["cleanup.policy"] == "delete"


def test_prefix_goes_before_every_topic_group_and_consumed_topic() -> None:
    catalog = load_catalog(TOPICS_FILE, prefix="t-123.")
    assert all(name.startswith("t-123.") for name in catalog.topics)
    assert all(t.name.startswith("t-123.") for t in catalog.topics.values())
    payment = catalog.consumer("payment")
    assert payment.group_id == "t-123.erynoa-payment"
    assert payment.consumes[0] == "t-123.bookings"
    assert payment.retry_topics[0] == "t-123.payment.retry.1s"
    assert payment.dead_letter_topic == "t-123.payment.dlq"
    assert all(t in catalog.topics for t in payment.consumes + payment.retry_topics)
    assert catalog.topic_for("BookingRequested") == "t-123.bookings"
    # The same catalog, only renamed.
    plain = load_catalog(TOPICS_FILE)
    assert len(catalog.topics) == len(plain.topics)


# --- malformed copies ----------------------------------------------------------------------


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    message = _error_of(tmp_path / "absent.yaml")
    assert "not found" in message


def test_invalid_yaml_is_named(tmp_path: Path) -> None:
    path = tmp_path / "topics.yaml"
    path.write_text("topics: [unclosed\n")
    assert "not valid YAML" in _error_of(path)


def test_an_empty_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "topics.yaml"
    path.write_text("")
    _error_of(path)


def test_the_copy_of_the_real_catalog_loads(write_catalog: Callable[..., Path]) -> None:
    path = write_catalog(lambda spec: None)
    assert load_catalog(path).topics == load_catalog(TOPICS_FILE).topics


def set_at(*path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A change to the catalog: the value at ``path`` becomes ``value``."""

    def mutate(spec: dict[str, Any]) -> None:
        node = spec
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return mutate


def refused_at(*path: str, value: Any, id: str) -> Any:
    """A table row: the catalog with ``value`` at ``path`` is refused, naming that path."""
    return pytest.param(set_at(*path, value=value), [".".join(path)], id=id)


def renamed_topic(old: str, new: str) -> Callable[[dict[str, Any]], None]:
    def mutate(spec: dict[str, Any]) -> None:
        spec["topics"][new] = spec["topics"].pop(old)

    return mutate


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        refused_at("topics", "bookings", "partitions", value=0, id="a-zero-partition-count"),
        refused_at(
            "topics", "bookings", "partitions", value="many", id="a-non-integer-partition-count"
        ),
        refused_at("defaults", "retention", value="a week", id="an-invalid-default-retention"),
        refused_at(
            "dead_letter_topics", "retention", value="30 d", id="an-invalid-dead-letter-retention"
        ),
        refused_at(
            "topics", "payments", "cleanup_policy", value="shred", id="an-unknown-cleanup-policy"
        ),
        refused_at("topics", "payments", "key", value="customer_id", id="an-unknown-key-type"),
        refused_at("topics", "payments", "events", value=[], id="a-topic-without-events"),
        pytest.param(
            lambda spec: spec.pop("consumers"), ["consumers"], id="a-missing-required-section"
        ),
        pytest.param(
            lambda spec: spec["consumers"]["payment"]["consumes"].append("invoices"),
            ["consumers.payment.consumes", "invoices is not a declared topic"],
            id="a-consumer-of-an-undeclared-topic",
        ),
        pytest.param(
            lambda spec: spec["topics"]["payments"]["events"].append("ReservationHeld"),
            ["topics.payments.events", "ReservationHeld is also on reservations"],
            id="an-event-on-two-topics",
        ),
        pytest.param(
            set_at("topics", "payments", "partitions", value=24),
            ["co-partitioning"],
            id="booking-topics-with-different-partition-counts",
        ),
        pytest.param(
            renamed_topic("catalog-services", "Bad_Topic"),
            ["topics.Bad_Topic: not a valid topic name"],
            id="an-invalid-topic-name",
        ),
    ],
)
def test_a_bad_catalog_is_refused_naming_what_is_wrong(
    write_catalog: Callable[..., Path],
    mutate: Callable[[dict[str, Any]], None],
    expected: list[str],
) -> None:
    message = _error_of(write_catalog(mutate))
    for part in expected:
        assert part in message


@pytest.mark.parametrize(
    ("where", "expected_field"),
    [
        (("topics", "payments"), "topics.payments.partition_count"),
        (("defaults",), "defaults.partition_count"),
        (("environments", "local"), "environments.local.partition_count"),
        (("consumers", "payment"), "consumers.payment.partition_count"),
        ((), "partition_count"),
    ],
)
def test_unknown_keys_are_rejected(
    write_catalog: Callable[..., Path], where: tuple[str, ...], expected_field: str
) -> None:
    message = _error_of(write_catalog(set_at(*where, "partition_count", value=6)))
    assert expected_field in message
    assert "Extra inputs are not permitted" in message


@pytest.mark.parametrize("retention", ["7 days", "1w", "", "-1d", "forever!"])
def test_an_invalid_topic_retention_names_the_field(
    write_catalog: Callable[..., Path], retention: str
) -> None:
    message = _error_of(
        write_catalog(set_at("topics", "reservations", "retention", value=retention))
    )
    assert "topics.reservations.retention" in message
    assert "not a duration" in message


@pytest.mark.parametrize("delay", ["soon", "0s", "forever"])
def test_a_retry_delay_must_be_a_positive_duration(
    write_catalog: Callable[..., Path], delay: str
) -> None:
    mutate = set_at("consumers", "payment", "retry", value=["1s", delay])
    assert "consumers.payment.retry" in _error_of(write_catalog(mutate))


def test_min_isr_above_replication_names_the_topic(write_catalog: Callable[..., Path]) -> None:
    mutate = set_at("topics", "payments", "min_insync_replicas", value=2)
    # Local has one replica: two in-sync replicas can never be met.
    message = _error_of(write_catalog(mutate), environment="local")
    assert "topics.payments" in message
    assert "min_insync_replicas 2 exceeds replication 1" in message


def test_min_isr_above_replication_in_one_environment_only(
    write_catalog: Callable[..., Path],
) -> None:
    path = write_catalog(set_at("environments", "production", value={"min_insync_replicas": 4}))
    load_catalog(path, "local")
    message = _error_of(path, environment="production")
    assert "min_insync_replicas 4 exceeds replication 3" in message


def test_an_undeclared_environment_is_named_with_the_known_ones(
    write_catalog: Callable[..., Path],
) -> None:
    path = write_catalog(lambda spec: None)
    message = _error_of(path, environment="staging")
    assert "environments.staging" in message
    assert "local, production" in message


def test_a_non_booking_topic_may_have_its_own_partition_count(
    write_catalog: Callable[..., Path],
) -> None:
    catalog = load_catalog(
        write_catalog(set_at("topics", "catalog-services", "partitions", value=1))
    )
    assert catalog.topics["catalog-services"].partitions == 1
    assert catalog.topics["bookings"].partitions == 6


def test_every_problem_is_reported_at_once(write_catalog: Callable[..., Path]) -> None:
    def mutate(spec: dict[str, Any]) -> None:
        spec["topics"]["payments"]["events"].append("ReservationHeld")
        spec["consumers"]["payment"]["consumes"].append("invoices")

    message = _error_of(write_catalog(mutate))
    assert "ReservationHeld is also on reservations" in message
    assert "invoices is not a declared topic" in message


# --- migration files -----------------------------------------------------------------------


def test_the_real_migrations_are_found_in_order() -> None:
    migrations = discover()
    versions = [m.version for m in migrations]
    assert versions == sorted(versions)
    assert versions[0] == "0001"
    assert len(versions) == len(set(versions))


def test_migrations_are_discovered_in_version_order(tmp_path: Path) -> None:
    (tmp_path / "0010_late.sql").write_text("SELECT 10;")
    (tmp_path / "0002_second.sql").write_text("SELECT 2;")
    (tmp_path / "0001_first.sql").write_text("SELECT 1;")
    (tmp_path / "README.md").write_text("not a migration")
    migrations = discover(tmp_path)
    assert [(m.version, m.name) for m in migrations] == [
        ("0001", "first"),
        ("0002", "second"),
        ("0010", "late"),
    ]
    assert migrations[0].sql == "SELECT 1;"


def test_an_empty_migration_directory_has_nothing_to_apply(tmp_path: Path) -> None:
    assert discover(tmp_path) == []


def test_a_migration_checksum_follows_its_text(tmp_path: Path) -> None:
    (tmp_path / "0001_first.sql").write_text("SELECT 1;")
    before = discover(tmp_path)[0].checksum
    assert discover(tmp_path)[0].checksum == before
    (tmp_path / "0001_first.sql").write_text("SELECT 1; -- edited")
    assert discover(tmp_path)[0].checksum != before


@pytest.mark.parametrize(
    "name",
    [
        "1_first.sql",
        "0001-first.sql",
        "0001_First.sql",
        "first.sql",
        "00001_first.sql",
        "0001_.sql",
    ],
)
def test_a_badly_named_migration_is_refused(tmp_path: Path, name: str) -> None:
    (tmp_path / "0001_ok.sql").write_text("SELECT 1;")
    (tmp_path / name).write_text("SELECT 2;")
    with pytest.raises(MigrationError, match=r"NNNN_snake_case\.sql") as info:
        discover(tmp_path)
    assert name in str(info.value)


def test_two_migrations_with_one_version_are_refused(tmp_path: Path) -> None:
    (tmp_path / "0001_first.sql").write_text("SELECT 1;")
    (tmp_path / "0001_other.sql").write_text("SELECT 2;")
    with pytest.raises(MigrationError, match="share a version"):
        discover(tmp_path)
