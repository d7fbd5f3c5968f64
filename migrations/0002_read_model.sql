-- The read model the API serves: each booking's current state and its event history,
-- both written by the materializer as the fold of the event log (see erynoa/saga.py).

CREATE TABLE bookings (
    id                    uuid PRIMARY KEY,
    customer_id           text NOT NULL,
    provider_id           text NOT NULL,
    service_id            uuid NOT NULL,
    slot_start            timestamptz NOT NULL,
    slot_end              timestamptz NOT NULL,
    amount_minor          bigint NOT NULL CHECK (amount_minor >= 0),
    currency              char(3) NOT NULL,
    payment_method        text NOT NULL,
    notes                 text,
    status                text NOT NULL,
    hold                  text NOT NULL,     -- none | held | released | converted | rejected
    payment               text NOT NULL,     -- none | authorized | action_required | captured | voided | refunded | failed
    payment_id            text,
    provider_deadline_at  timestamptz,
    provider_notified     boolean NOT NULL DEFAULT false,
    customer_notified     boolean NOT NULL DEFAULT false,
    failure_reason        text,
    correlation_id        text NOT NULL,
    idempotency_key       text,
    events_applied        integer NOT NULL,
    requested_at          timestamptz NOT NULL,
    updated_at            timestamptz NOT NULL,
    -- The materializer's fold (erynoa.saga.BookingState) and the last event folded into it,
    -- ordered by (occurred_at, event_id): a later event folds in, an earlier one refolds.
    -- NULL on the row the API writes at 202 time, until the materializer has seen it.
    state                 jsonb,
    last_event_at         timestamptz,
    last_event_id         uuid
);
CREATE INDEX bookings_customer_idx ON bookings (customer_id, requested_at DESC);
CREATE INDEX bookings_provider_idx ON bookings (provider_id, requested_at DESC);
CREATE INDEX bookings_status_idx ON bookings (status, updated_at);

CREATE TABLE booking_events (
    event_id        uuid PRIMARY KEY,
    booking_id      uuid NOT NULL,
    event_type      text NOT NULL,
    producer        text NOT NULL,
    occurred_at     timestamptz NOT NULL,
    correlation_id  text NOT NULL,
    causation_id    text,
    topic           text NOT NULL,
    partition       integer NOT NULL,
    "offset"        bigint NOT NULL,
    payload         jsonb NOT NULL,
    body            bytea NOT NULL,                -- the Avro bytes, to refold exactly
    recorded_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX booking_events_booking_idx ON booking_events (booking_id, occurred_at);

-- Where each consumer is in each partition, written in the same transaction as its
-- projection, so a redelivered batch is recognised and skipped (exactly-once effect).
CREATE TABLE consumer_positions (
    consumer    text NOT NULL,
    topic       text NOT NULL,
    partition   integer NOT NULL,
    next_offset bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, topic, partition)
);

-- Events a handler has fully processed; the unique key turns a redelivery into a no-op.
CREATE TABLE processed_events (
    consumer     text NOT NULL,
    event_id     uuid NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

-- Client idempotency: the same Idempotency-Key from the same user means the same booking.
CREATE TABLE idempotency_keys (
    customer_id   text NOT NULL,
    key           text NOT NULL,
    request_hash  text NOT NULL,
    booking_id    uuid NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, key)
);
