-- The API's transactional outbox, and the cancel requests it accepted.

-- Events the API acknowledged (202), written in the same transaction as the change they
-- announce. Published after COMMIT and then deleted; a row left behind (Kafka refused, the
-- process died) is published by the relay in any API process, with the same event id.
CREATE TABLE api_outbox (
    event_id    uuid PRIMARY KEY,
    booking_id  uuid NOT NULL,
    seq         bigserial,
    payload     bytea NOT NULL,
    headers     jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX api_outbox_seq_idx ON api_outbox (seq);

-- A cancel request as the API accepted it. The first one is the cancellation: its event id is
-- derived from the booking, and a repeated cancel finds this row and publishes nothing.
CREATE TABLE booking_cancellations (
    booking_id         uuid PRIMARY KEY,
    event_id           uuid NOT NULL,
    requested_by       text NOT NULL,
    requested_by_role  text NOT NULL,
    reason             text,
    requested_at       timestamptz NOT NULL DEFAULT now()
);
