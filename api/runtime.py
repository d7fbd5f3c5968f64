"""Everything the API talks to, wired once per process (``ApiRuntime.start`` in the lifespan).

The API starts even when a dependency is down — readiness reports it, and requests that need
it answer 503 (changes to bookings need only PostgreSQL: their events wait in the outbox,
``api.outbox``) — rather than crash-looping: Postgres gets a lazy pool, and the Kafka producer
keeps reconnecting in the background until the broker is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import asyncpg
import httpx
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from cachetools import TLRUCache, TTLCache
from opentelemetry.trace import SpanKind
from redis.asyncio import Redis

from api.auth import DevIssuer, KeySource, Principal, RemoteJwks, RevocationList, TokenVerifier
from api.outbox import ApiOutbox
from api.ratelimit import RateLimiter
from api.readmodel import delete_expired_idempotency_keys
from erynoa import tracing
from erynoa.codec import EventCodec, RegistryUnavailable, SchemaError, codec_for
from erynoa.db import create_pool
from erynoa.events import BookingEvent, CatalogEvent
from erynoa.kafka import H_REQUEST_ID, KAFKA_REFUSALS, EventPublisher, Published, producer_config
from erynoa.settings import Settings
from erynoa.topics import TopicCatalog, load_catalog

log = logging.getLogger("erynoa.api")

CLIENT_ID = "erynoa-api"


@dataclass(frozen=True)
class EventContext:
    """What a request hands on to the events it causes: its id (also the correlation id of a
    saga it starts) and the Kafka headers that travel with them (request id, trace context,
    the synthetic-traffic marker)."""

    request_id: str
    headers: Mapping[str, str]


class KafkaUnavailable(Exception):
    """The event could not be handed to Kafka; the caller must not report success."""


class SchemaIds:
    """The codec's schema ids, resolved in the background: the API starts (and answers what
    needs no new event) while the Schema Registry is down; readiness reports it, and a request
    that must write an event meanwhile gets a 503 (``RegistryUnavailable``)."""

    def __init__(self, codec: EventCodec) -> None:
        self.codec = codec
        self._task: asyncio.Task[None] | None = None
        self._tried = asyncio.Event()

    async def start(self, first_try_seconds: float) -> None:
        """Start resolving; wait for the first try (bounded), so a registry that answers has
        the ids resolved before the first request."""
        if self.codec.writers_ready:
            return
        self._task = asyncio.create_task(self._warm_up(), name="schema-registry-warm-up")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._tried.wait(), first_try_seconds)

    async def stop(self) -> None:
        if self._task is not None:
            # A request in flight in its thread ends within the registry client's timeout.
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def check(self) -> None:
        """Raise unless every id is resolved (what requests need; no request to the registry)."""
        if not self.codec.writers_ready:
            raise RegistryUnavailable(self.codec.registry_failure or "schema ids not resolved")

    async def _warm_up(self) -> None:
        delay = 0.5
        while not self.codec.writers_ready:
            try:
                await asyncio.to_thread(self.codec.warm_up)
            except (RegistryUnavailable, SchemaError) as exc:
                self._tried.set()
                # SchemaError: a version not registered while auto-registration is off; it may
                # be registered (``erynoa schemas register``) without restarting the API.
                log.warning(
                    "schema ids not resolved; retrying in %.1f s",
                    delay,
                    extra={"dependency": "schema-registry", "error": str(exc)},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        self._tried.set()


PublisherFactory = Callable[[AIOKafkaProducer, EventCodec, TopicCatalog], EventPublisher]
"""How the API builds its publisher from a producer (``EventPublisher``; tests pass their own)."""


class KafkaLink:
    """The API's one producer (idempotent, ``acks=all``), reconnecting in the background."""

    def __init__(
        self,
        settings: Settings,
        codec: EventCodec,
        catalog: TopicCatalog,
        publisher_factory: PublisherFactory = EventPublisher,
    ) -> None:
        self._settings = settings
        self._codec = codec
        self._catalog = catalog
        self._publisher_factory = publisher_factory
        self._publisher: EventPublisher | None = None
        self._last_error: str = "not connected yet"
        self._reconnect: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self._publisher is not None

    @property
    def catalog(self) -> TopicCatalog:
        return self._catalog

    async def start(self) -> None:
        if not await self._connect_once():
            self._reconnect = asyncio.create_task(self._keep_connecting(), name="kafka-reconnect")

    async def stop(self) -> None:
        if self._reconnect is not None:
            self._reconnect.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnect
        if self._publisher is not None:
            await self._publisher.stop()
            self._publisher = None

    async def _connect_once(self) -> bool:
        # A request that publishes waits for the acknowledgement before it answers, and the
        # outbox publishes what was committed as soon as it can, so a linger is pure latency;
        # what is in flight at once still shares the producer's batches.
        config = producer_config(self._settings.kafka_bootstrap, CLIENT_ID)
        publisher = self._publisher_factory(
            AIOKafkaProducer(**{**config, "linger_ms": 0}), self._codec, self._catalog
        )
        try:
            await asyncio.wait_for(publisher.start(), timeout=10)
        except (KafkaError, OSError, TimeoutError) as exc:
            self._last_error = str(exc) or type(exc).__name__
            log.warning("kafka producer not connected", extra={"error": self._last_error})
            with contextlib.suppress(Exception):
                await publisher.stop()
            return False
        self._publisher = publisher
        log.info("kafka producer connected", extra={"bootstrap": self._settings.kafka_bootstrap})
        return True

    async def _keep_connecting(self) -> None:
        delay = 1.0
        while not await self._connect_once():
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def publish(
        self, event: BookingEvent | CatalogEvent, context: EventContext | None = None
    ) -> Published:
        """Send one event and return once Kafka acknowledged it (``acks=all``)."""
        publisher = self._publisher
        if publisher is None:
            raise KafkaUnavailable(self._last_error)
        if not self._codec.writers_ready:
            # Encoding would ask the registry, on the event loop.
            raise RegistryUnavailable(self._codec.registry_failure or "schema ids not resolved")
        about: dict[str, str] = (
            tracing.event_attributes(event)
            if isinstance(event, BookingEvent)
            else {"service_id": event.service_id, "event_type": event.event_type}
        )
        # A producer span per event: the agents' spans become its children, one trace per booking.
        with tracing.span(
            "erynoa.api",
            f"publish {event.event_type}",
            kind=SpanKind.PRODUCER,
            attributes={"messaging.system": "kafka", **about},
        ):
            try:
                published = await publisher.publish(event, context.headers if context else None)
            except KafkaError as exc:
                raise KafkaUnavailable(str(exc) or type(exc).__name__) from exc
            log.info(
                "published %s",
                event.event_type,
                extra={
                    **about,
                    "request_id": context.request_id if context else None,
                    "topic": published.topic,
                    "partition": published.partition,
                    "offset": published.offset,
                },
            )
        return published

    async def publish_encoded(
        self, items: Sequence[tuple[BookingEvent, bytes, Mapping[str, str]]]
    ) -> list[Published]:
        """Send encoded events (outbox rows) in order; return once Kafka acknowledged them all."""
        publisher = self._publisher
        if publisher is None:
            raise KafkaUnavailable(self._last_error)
        try:
            published = await publisher.publish_encoded(items)
        except KAFKA_REFUSALS:
            raise  # not an outage: the outbox sets the refused record aside
        except KafkaError as exc:
            raise KafkaUnavailable(str(exc) or type(exc).__name__) from exc
        for (event, _, headers), where in zip(items, published, strict=True):
            # Published after the request's COMMIT, outside its span: the acknowledgement is
            # recorded as a producer span in the request's trace (its context travels in the
            # outbox row's headers), and the log line carries that trace.
            with tracing.consumer_span(
                "erynoa.api",
                f"publish {event.event_type}",
                headers,
                {**tracing.event_attributes(event), "messaging.destination.name": where.topic},
                kind=SpanKind.PRODUCER,
            ):
                log.info(
                    "published %s",
                    event.event_type,
                    extra={
                        **tracing.event_attributes(event),
                        "request_id": headers.get(H_REQUEST_ID),
                        "topic": where.topic,
                        "partition": where.partition,
                        "offset": where.offset,
                    },
                )
        return published

    async def check(self) -> None:
        """Raise unless a broker answers a metadata request now."""
        publisher = self._publisher
        if publisher is None:
            raise KafkaUnavailable(self._last_error)
        try:
            await publisher.producer.client.fetch_all_metadata()
        except KafkaError as exc:
            raise KafkaUnavailable(str(exc) or type(exc).__name__) from exc


class SeenUsers:
    """Creates (or refreshes the roles of) a caller's ``users`` row from their token, at most
    once per ``ttl_seconds`` per user and process, so a request is not also a write."""

    def __init__(self, ttl_seconds: float = 60.0, max_entries: int = 10_000) -> None:
        # user -> the token fields last written
        self._seen: TTLCache[str, tuple[object, ...]] = TTLCache(
            maxsize=max_entries, ttl=ttl_seconds, timer=time.monotonic
        )

    @staticmethod
    def _fingerprint(principal: Principal) -> tuple[object, ...]:
        return (principal.email, principal.name, tuple(sorted(principal.roles)))

    def is_fresh(self, principal: Principal) -> bool:
        """Whether ``ensure`` would write nothing now (so its caller needs no connection)."""
        return self._seen.get(principal.sub) == self._fingerprint(principal)

    async def ensure(self, conn: asyncpg.Connection, principal: Principal) -> None:
        if self.is_fresh(principal):
            return
        roles = sorted(principal.roles)
        fingerprint = self._fingerprint(principal)
        # Roles belong to the identity provider and follow the token; email and name are
        # only filled in when missing, so a profile edited through PUT /users/me sticks.
        await conn.execute(
            """
            INSERT INTO users (id, email, display_name, roles) VALUES ($1, $2, $3, $4)
            ON CONFLICT (id) DO UPDATE SET
                roles = EXCLUDED.roles,
                email = COALESCE(users.email, EXCLUDED.email),
                display_name = COALESCE(users.display_name, EXCLUDED.display_name),
                updated_at = now()
            WHERE users.roles IS DISTINCT FROM EXCLUDED.roles
               OR (users.email IS NULL AND EXCLUDED.email IS NOT NULL)
               OR (users.display_name IS NULL AND EXCLUDED.display_name IS NOT NULL)
            """,
            principal.sub,
            principal.email,
            principal.name,
            roles,
        )
        self._seen[principal.sub] = fingerprint

    def forget(self, sub: str) -> None:
        self._seen.pop(sub, None)


@dataclass(frozen=True)
class ServiceTerms:
    """What a booking takes from its service's row."""

    provider_id: str
    price_amount_minor: int
    price_currency: str
    duration_minutes: int
    response_deadline_seconds: int
    active: bool


# How stale a cached service row may be: a service deactivated (or repriced) elsewhere, by
# another API process or straight in the database, is refused (or charged anew) by every
# process at most this long later (the age counts from when the read was sent). The saga's
# reservation step re-reads ``active`` anyway and fails a booking of a deactivated service.
SERVICE_TERMS_TTL_SECONDS = 2.0


class ServiceTermsCache:
    """Service rows for ``POST /bookings``, kept for ``ttl_seconds`` per process.

    A booking reads its service's terms; under load most requests name a service read a
    moment ago, and the read was one database round trip per request. Only rows found are
    kept (a new service is bookable at once); this process's own changes drop the entry
    (``forget``); everyone else's show within ``ttl_seconds``.
    """

    def __init__(
        self,
        ttl_seconds: float = SERVICE_TERMS_TTL_SECONDS,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        # The age counts from when the read was sent: (sent at, terms), kept until sent + ttl.
        self._terms: TLRUCache[uuid.UUID, tuple[float, ServiceTerms]] = TLRUCache(
            maxsize=max_entries, ttu=lambda _id, kept, _now: kept[0] + ttl_seconds, timer=clock
        )

    async def get(
        self,
        service_id: uuid.UUID,
        load: Callable[[uuid.UUID], Awaitable[ServiceTerms | None]],
    ) -> ServiceTerms | None:
        """The service's terms, from the cache or ``load`` (None: no such service)."""
        cached = self._terms.get(service_id)
        if cached is not None:
            return cached[1]
        read_at = self._clock()
        terms = await load(service_id)
        if terms is None:
            self._terms.pop(service_id, None)
            return None
        self._terms[service_id] = (read_at, terms)
        return terms

    def forget(self, service_id: uuid.UUID) -> None:
        self._terms.pop(service_id, None)


@dataclass
class ApiRuntime:
    settings: Settings
    catalog: TopicCatalog
    pool: asyncpg.Pool
    kafka: KafkaLink
    outbox: ApiOutbox
    schema_ids: SchemaIds
    redis: Redis
    http: httpx.AsyncClient
    verifier: TokenVerifier
    revocations: RevocationList
    limiter: RateLimiter
    dev_issuer: DevIssuer | None
    users: SeenUsers
    services: ServiceTermsCache
    started_at: float
    key_expiry: asyncio.Task[None] | None = field(default=None, repr=False)

    @classmethod
    async def start(
        cls, settings: Settings, publisher_factory: PublisherFactory = EventPublisher
    ) -> ApiRuntime:
        catalog = load_catalog(
            settings.topics_file, settings.topics_environment, settings.topic_prefix
        )
        pool = await _pool(settings)
        redis = Redis.from_url(
            settings.redis_url,
            socket_timeout=2.0,
            socket_connect_timeout=2.0,
            health_check_interval=30,
        )
        http = httpx.AsyncClient(timeout=5.0, follow_redirects=False)
        revocations = RevocationList(redis)
        dev_issuer = DevIssuer.from_settings(settings) if settings.dev_issuer_enabled else None
        keys: KeySource
        if dev_issuer is not None:
            # Our own key: no HTTP round trip to ourselves (which could not answer during start).
            keys = dev_issuer.key_set()
        else:
            discovery = settings.oidc_discovery_url or (
                settings.oidc_issuer.rstrip("/") + "/.well-known/openid-configuration"
            )
            keys = RemoteJwks(discovery, http, issuer=settings.oidc_issuer)
        verifier = TokenVerifier(
            issuer=settings.oidc_issuer,
            audience=settings.oidc_audience,
            roles_claim=settings.roles_claim,
            keys=keys,
            revocations=revocations,
            max_lifetime_seconds=settings.max_token_lifetime_seconds,
            token_types=settings.access_token_types,
        )
        codec = codec_for(settings)
        # Schema ids resolved in the background, never inside a request.
        schema_ids = SchemaIds(codec)
        await schema_ids.start(first_try_seconds=2 * settings.registry_timeout_seconds)
        kafka = KafkaLink(settings, codec, catalog, publisher_factory)
        await kafka.start()
        outbox = ApiOutbox(pool, kafka, codec)
        outbox.start()
        return cls(
            settings=settings,
            catalog=catalog,
            pool=pool,
            kafka=kafka,
            outbox=outbox,
            schema_ids=schema_ids,
            redis=redis,
            http=http,
            verifier=verifier,
            revocations=revocations,
            # Counters per deployment: stacks that share a Redis (see topic_prefix) do not
            # eat into each other's limits.
            limiter=RateLimiter(redis, prefix=f"{settings.topic_prefix}erynoa:rl"),
            dev_issuer=dev_issuer,
            users=SeenUsers(),
            services=ServiceTermsCache(),
            started_at=time.time(),
            key_expiry=asyncio.create_task(
                _expire_idempotency_keys(pool, settings.idempotency_key_ttl_seconds),
                name="idempotency-key-expiry",
            ),
        )

    async def close(self) -> None:
        if self.key_expiry is not None:
            self.key_expiry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.key_expiry
        await self.outbox.stop()
        await self.schema_ids.stop()
        await self.kafka.stop()
        await self.http.aclose()
        await self.redis.aclose()
        await self.pool.close()


async def _pool(settings: Settings) -> asyncpg.Pool:
    try:
        return await asyncio.wait_for(create_pool(settings), timeout=10)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        # Start anyway with a lazy pool: readiness reports postgres down until it is back.
        log.warning("postgres not reachable at start", extra={"error": str(exc)})
        return await create_pool(settings, min_size=0)


async def _expire_idempotency_keys(pool: asyncpg.Pool, ttl_seconds: int) -> None:
    """Delete expired idempotency keys now and then, in every API process (a delete that
    finds nothing costs an index probe; two replicas deleting the same rows is harmless)."""
    interval = min(600.0, ttl_seconds / 4)
    while True:
        try:
            # One batch a round: a backlog (after a long outage) goes over a few rounds.
            await delete_expired_idempotency_keys(pool, ttl_seconds)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            log.warning("idempotency keys not expired this round", extra={"error": str(exc)})
        await asyncio.sleep(interval)
