"""A verified Stripe webhook takes effect exactly once, whatever fails after its 2xx: it is
recorded with its event in the API's outbox in one transaction, so Kafka being down does not
refuse it (the relay publishes later), a redelivery publishes nothing new, and a COMMIT that
fails answers 503 (Stripe redelivers) and publishes nothing.

The module runs its own API server on its own database and topics, with the switchable
publisher of ``test_acknowledged_requests``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from erynoa import events as ev
from erynoa.settings import Settings
from tests.conftest import unique
from tests.integration.api.conftest import Seen
from tests.integration.api.test_acknowledged_requests import PrivateApi, private_api
from tests.integration.api.test_payments_and_webhooks import deliver, stripe_event

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def hooks(settings: Settings, key_file: Path) -> AsyncIterator[PrivateApi]:
    async with private_api(settings, key_file) as api:
        yield api


@pytest.fixture(autouse=True)
def kafka_works_again(hooks: PrivateApi) -> Iterator[None]:
    yield
    hooks.kafka.mode = "ok"


def received_for(seen: list[Seen], booking_id: str) -> list[ev.StripeEventReceived]:
    return [
        s.event
        for s in seen
        if isinstance(s.event, ev.StripeEventReceived) and s.event.booking_id == booking_id
    ]


async def test_a_webhook_acknowledged_while_kafka_is_down_is_published_once_kafka_is_back(
    hooks: PrivateApi,
) -> None:
    webhooks = await hooks.probe("payment-webhooks")
    try:
        booking_id = unique()
        event = stripe_event(booking_id)
        hooks.kafka.mode = "refuse"
        response = await deliver(hooks.http, hooks.live, event)
        assert response.status_code == 200, response.text
        assert response.json()["data"]["forwarded"] is True
        assert received_for(await webhooks.events(), booking_id) == []

        hooks.kafka.mode = "ok"
        await hooks.outbox_drained(booking_id)
        [received] = received_for(await webhooks.events(), booking_id)
        assert received.stripe_event_id == event["id"]
        assert received.event_id == ev.derived_event_id(booking_id, f"stripe.{event['id']}")
        assert received.payment_id == event["data"]["object"]["id"]
    finally:
        await webhooks.stop()


async def test_the_same_webhook_delivered_twice_publishes_one_event(hooks: PrivateApi) -> None:
    webhooks = await hooks.probe("payment-webhooks")
    try:
        booking_id = unique()
        event = stripe_event(booking_id)
        # Kafka down for both deliveries: the first one's event waits in the outbox, and the
        # redelivery must not queue another.
        hooks.kafka.mode = "refuse"
        first = await deliver(hooks.http, hooks.live, event)
        second = await deliver(hooks.http, hooks.live, event)
        assert [first.status_code, second.status_code] == [200, 200], second.text
        assert second.json()["data"]["duplicate"] is True

        hooks.kafka.mode = "ok"
        await hooks.outbox_drained(booking_id)
        third = await deliver(hooks.http, hooks.live, event)
        assert third.json()["data"]["duplicate"] is True
        published = received_for(await webhooks.events(), booking_id)
        assert [e.stripe_event_id for e in published] == [event["id"]]
    finally:
        await webhooks.stop()


async def test_a_webhook_whose_commit_fails_gets_503_and_publishes_nothing(
    hooks: PrivateApi,
) -> None:
    booking_id = unique()
    # A deferred constraint trigger raises at COMMIT for this booking's webhook records.
    await hooks.pool.execute(
        """CREATE OR REPLACE FUNCTION test_refuse_webhook_at_commit() RETURNS trigger
           LANGUAGE plpgsql AS $$
           BEGIN RAISE EXCEPTION 'commit refused by the test'; END $$"""
    )
    await hooks.pool.execute(
        f"""CREATE CONSTRAINT TRIGGER "refuse_{booking_id}" AFTER INSERT ON stripe_webhook_events
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
            WHEN (NEW.booking_id = '{booking_id}'::uuid)
            EXECUTE FUNCTION test_refuse_webhook_at_commit()"""
    )
    webhooks = await hooks.probe("payment-webhooks")
    try:
        event = stripe_event(booking_id)
        response = await deliver(hooks.http, hooks.live, event)
        assert response.status_code == 503, response.text
        assert response.json()["error"]["details"][0]["component"] == "postgres"
        assert received_for(await webhooks.events(), booking_id) == []
        recorded = await hooks.pool.fetchval(
            "SELECT count(*) FROM stripe_webhook_events WHERE stripe_event_id = $1", event["id"]
        )
        queued = await hooks.pool.fetchval(
            "SELECT count(*) FROM api_outbox WHERE booking_id = $1", booking_id
        )
        assert (recorded, queued) == (0, 0)

        # Stripe's redelivery, once PostgreSQL takes it, is forwarded.
        await hooks.pool.execute(f'DROP TRIGGER "refuse_{booking_id}" ON stripe_webhook_events')
        again = await deliver(hooks.http, hooks.live, event)
        assert again.status_code == 200, again.text
        assert again.json()["data"]["forwarded"] is True
        await hooks.outbox_drained(booking_id)
        assert [e.stripe_event_id for e in received_for(await webhooks.events(), booking_id)] == [
            event["id"]
        ]
    finally:
        await webhooks.stop()
