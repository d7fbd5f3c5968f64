-- What the saga's agents (streams/) keep besides agent_state: an outbox, early arrivals,
-- the request context that travels with a booking, and the sandbox gateway's card behaviour.

-- Kafka headers that travel with a booking (trace context, request id, synthetic marker), so
-- events an agent emits without a triggering message (a provider deadline firing) carry them.
ALTER TABLE agent_state ADD COLUMN headers jsonb NOT NULL DEFAULT '{}'::jsonb;

-- Transactional outbox: the events a handler emitted, written in the same transaction as its
-- state. Publishing happens after COMMIT and deletes the row; a crash in between leaves the
-- row, and the redelivered message (or the relay sweep) publishes it with the same event id.
CREATE TABLE agent_outbox (
    agent       text NOT NULL,
    event_id    uuid NOT NULL,
    booking_id  uuid NOT NULL,
    seq         bigserial,
    payload     bytea NOT NULL,
    headers     jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (agent, event_id)
);
CREATE INDEX agent_outbox_booking_idx ON agent_outbox (agent, booking_id, seq);
CREATE INDEX agent_outbox_created_idx ON agent_outbox (agent, created_at);

-- Events that arrived before their booking's BookingRequested (Kafka orders one partition, not
-- several topics): kept until the booking starts, then folded in arrival order.
CREATE TABLE agent_early_events (
    agent        text NOT NULL,
    event_id     uuid NOT NULL,
    booking_id   uuid NOT NULL,
    seq          bigserial,
    payload      bytea NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (agent, event_id)
);
CREATE INDEX agent_early_events_booking_idx ON agent_early_events (agent, booking_id, seq);

-- The sandbox gateway decides capture outcomes by the card an authorization used.
ALTER TABLE sandbox_ledger ADD COLUMN payment_method text;
