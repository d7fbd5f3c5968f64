-- What operators do to the running system, kept for audit: dead-letter replays.

-- One row per dead-letter message that was re-driven to its origin topic. The primary key is
-- the message's position in its dead-letter topic, so replaying the same message twice has one
-- effect: the second `erynoa dlq replay` finds the row and skips the message. The row is
-- written ('pending') before the message is published and completed after the broker's
-- acknowledgement; a 'failed' row may be claimed again, a 'pending' one only with --again
-- (the run that claimed it may still be publishing).
CREATE TABLE dlq_replays (
    dlq_topic           text NOT NULL,
    dlq_partition       integer NOT NULL,
    dlq_offset          bigint NOT NULL,
    replay_id           uuid NOT NULL,          -- the run of `erynoa dlq replay` that did it last
    operator            text NOT NULL,
    origin_topic        text NOT NULL,
    origin_partition    integer,
    origin_offset       bigint,
    event_id            text,                   -- NULL for an undecodable message
    event_type          text,
    booking_id          text,
    error_class         text,
    attempts            integer,
    result              text NOT NULL CHECK (result IN ('pending', 'replayed', 'failed')),
    detail              text,
    replayed_partition  integer,                -- where the copy landed in the origin topic
    replayed_offset     bigint,
    replay_count        integer NOT NULL DEFAULT 1,  -- > 1 after --again
    first_replayed_at   timestamptz NOT NULL DEFAULT now(),
    replayed_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dlq_topic, dlq_partition, dlq_offset)
);
CREATE INDEX dlq_replays_booking_idx ON dlq_replays (booking_id);
CREATE INDEX dlq_replays_replay_idx ON dlq_replays (replay_id);

-- Every replay of a message, forced ones (--again) included: who re-drove what, when, and how it
-- ended. dlq_replays holds the latest state per message; this is its history.
CREATE TABLE dlq_replay_log (
    id                  bigserial PRIMARY KEY,
    replay_id           uuid NOT NULL,
    dlq_topic           text NOT NULL,
    dlq_partition       integer NOT NULL,
    dlq_offset          bigint NOT NULL,
    operator            text NOT NULL,
    forced              boolean NOT NULL,
    result              text NOT NULL CHECK (result IN ('replayed', 'failed')),
    detail              text,
    replayed_partition  integer,
    replayed_offset     bigint,
    logged_at           timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (dlq_topic, dlq_partition, dlq_offset)
        REFERENCES dlq_replays (dlq_topic, dlq_partition, dlq_offset)
);
CREATE INDEX dlq_replay_log_message_idx ON dlq_replay_log (dlq_topic, dlq_partition, dlq_offset);
