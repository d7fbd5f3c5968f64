-- A failure an agent's adapter gave up on (it recorded the failure as an event, and the saga went
-- on) is kept here in the batch's commit until its message is copied to the retry or dead-letter
-- topic. A worker that dies in between leaves the row, and the message's redelivery, skipped as
-- processed otherwise, copies it then. Keyed like processed_events: the agent and the event id.
CREATE TABLE agent_gave_up (
    agent       text NOT NULL,
    event_id    uuid NOT NULL,
    error_class text NOT NULL,
    error       text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (agent, event_id)
);
