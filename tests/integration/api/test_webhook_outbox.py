"""A verified Stripe webhook takes effect exactly once, whatever fails after its 2xx: it is
recorded with its event in the API's outbox in one transaction, so Kafka being down does not
refuse it (the relay publishes later), a redelivery publishes nothing new, and a COMMIT that
fails answers 503 (Stripe redelivers) and publishes nothing.

The module runs its own API server on its own database and topics, with the switchable
publisher of ``test_acknowledged_requests`` (the ``private`` fixture).
"""

from __future__ import annotations

import pytest

from erynoa import events as ev
from tests.conftest import unique
from tests.integration.api.conftest import REFUSE_COMMIT, PrivateApi, Seen, events_of
from tests.integration.api.test_payments_and_webhooks import deliver, stripe_event

pytestmark = pytest.mark.integration


def received_for(seen: list[Seen], booking_id: str) -> list[ev.StripeEventReceived]:
    return events_of(seen, ev.StripeEventReceived, booking_id=booking_id)


async def test_a_webhook_acknowledged_while_kafka_is_down_is_published_once_kafka_is_back(
    private: PrivateApi,
) -> None:
    webhooks = await private.probe("payment-webhooks")
    booking_id = unique()
    event = stripe_event(booking_id)
    private.kafka.mode = "refuse"
    response = await deliver(private.http, private.live, event)
    assert response.status_code == 200, response.text
    assert response.json()["data"]["forwarded"] is True
    assert received_for(await webhooks.events(), booking_id) == []

    private.kafka.mode = "ok"
    await private.outbox_drained(booking_id)
    [received] = received_for(await webhooks.events(), booking_id)
    assert received.stripe_event_id == event["id"]
    assert received.event_id == ev.derived_event_id(booking_id, f"stripe.{event['id']}")
    assert received.payment_id == event["data"]["object"]["id"]


async def test_the_same_webhook_delivered_twice_publishes_one_event(private: PrivateApi) -> None:
    webhooks = await private.probe("payment-webhooks")
    booking_id = unique()
    event = stripe_event(booking_id)
    # Kafka down for both deliveries: the first one's event waits in the outbox, and the
    # redelivery must not queue another.
    private.kafka.mode = "refuse"
    first = await deliver(private.http, private.live, event)
    second = await deliver(private.http, private.live, event)
    assert [first.status_code, second.status_code] == [200, 200], second.text
    assert second.json()["data"]["duplicate"] is True

    private.kafka.mode = "ok"
    await private.outbox_drained(booking_id)
    third = await deliver(private.http, private.live, event)
    assert third.json()["data"]["duplicate"] is True
    published = received_for(await webhooks.events(), booking_id)
    assert [e.stripe_event_id for e in published] == [event["id"]]


async def test_a_webhook_whose_commit_fails_gets_503_and_publishes_nothing(
    private: PrivateApi,
) -> None:
    booking_id = unique()
    # This booking's webhook records fail at COMMIT.
    await private.at_commit(
        f"refuse_{booking_id}",
        "stripe_webhook_events",
        f"NEW.booking_id = '{booking_id}'::uuid",
        REFUSE_COMMIT,
    )
    webhooks = await private.probe("payment-webhooks")
    event = stripe_event(booking_id)
    response = await deliver(private.http, private.live, event)
    assert response.status_code == 503, response.text
    assert response.json()["error"]["details"][0]["component"] == "postgres"
    assert received_for(await webhooks.events(), booking_id) == []
    recorded = await private.pool.fetchval(
        "SELECT count(*) FROM stripe_webhook_events WHERE stripe_event_id = $1", event["id"]
    )
    queued = await private.pool.fetchval(
        "SELECT count(*) FROM api_outbox WHERE booking_id = $1", booking_id
    )
    assert (recorded, queued) == (0, 0)

    # Stripe's redelivery, once PostgreSQL takes it, is forwarded.
    await private.pool.execute(f'DROP TRIGGER "refuse_{booking_id}" ON stripe_webhook_events')
    again = await deliver(private.http, private.live, event)
    assert again.status_code == 200, again.text
    assert again.json()["data"]["forwarded"] is True
    await private.outbox_drained(booking_id)
    assert [e.stripe_event_id for e in received_for(await webhooks.events(), booking_id)] == [
        event["id"]
    ]
