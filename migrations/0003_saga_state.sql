-- State the saga's agents keep between events. Each row is owned by one agent.

-- Capacity per (service, slot): the row lock of a conditional UPDATE decides the last seat,
-- so any number of reservation workers agree without coordinating.
CREATE TABLE slot_capacity (
    service_id  uuid NOT NULL,
    slot_start  timestamptz NOT NULL,
    capacity    integer NOT NULL CHECK (capacity > 0),
    held        integer NOT NULL DEFAULT 0 CHECK (held >= 0),
    confirmed   integer NOT NULL DEFAULT 0 CHECK (confirmed >= 0),
    PRIMARY KEY (service_id, slot_start),
    CHECK (held + confirmed <= capacity)
);

CREATE TABLE reservation_holds (
    booking_id  uuid PRIMARY KEY,
    hold_id     uuid NOT NULL UNIQUE,
    service_id  uuid NOT NULL,
    slot_start  timestamptz NOT NULL,
    status      text NOT NULL CHECK (status IN ('held', 'released', 'converted')),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Each agent's fold of the events it has seen for a booking (erynoa.saga.BookingState).
CREATE TABLE agent_state (
    agent       text NOT NULL,
    booking_id  uuid NOT NULL,
    state       jsonb NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (agent, booking_id)
);

-- Durable provider deadlines: survive restarts and rebalances; polled by provider_response.
CREATE TABLE provider_deadlines (
    booking_id   uuid PRIMARY KEY,
    provider_id  text NOT NULL,
    deadline_at  timestamptz NOT NULL,
    status       text NOT NULL CHECK (status IN ('pending', 'accepted', 'rejected', 'timed_out', 'cancelled')),
    correlation_id text NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX provider_deadlines_due_idx ON provider_deadlines (deadline_at) WHERE status = 'pending';

-- Notifications delivered once in effect: the id is derived from booking and step.
CREATE TABLE notification_deliveries (
    notification_id  text NOT NULL,
    channel          text NOT NULL,
    booking_id       uuid NOT NULL,
    recipient        text NOT NULL,
    template         text NOT NULL,
    delivered_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (notification_id, channel)
);

-- The sandbox payment gateway's ledger: every authorization, capture, void and refund,
-- unique per idempotency key so a retried call is recorded once.
CREATE TABLE sandbox_ledger (
    id               bigserial PRIMARY KEY,
    idempotency_key  text NOT NULL UNIQUE,
    booking_id       uuid NOT NULL,
    payment_id       text NOT NULL,
    operation        text NOT NULL CHECK (operation IN ('authorize', 'capture', 'void', 'refund')),
    amount_minor     bigint NOT NULL CHECK (amount_minor >= 0),
    currency         char(3) NOT NULL,
    outcome          text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sandbox_ledger_booking_idx ON sandbox_ledger (booking_id);

-- Stripe webhook events already accepted (Stripe redelivers; we publish each once).
CREATE TABLE stripe_webhook_events (
    stripe_event_id  text PRIMARY KEY,
    booking_id       uuid,
    received_at      timestamptz NOT NULL DEFAULT now()
);
