-- What the API itself keeps besides the read model.

-- A provider's answer as submitted through the API. The first answer is the answer: the unique
-- key turns a repeated accept into a no-op (same decision) or a 409 (the other decision), and
-- the row is written in the same transaction that publishes ProviderAnswerSubmitted, so it
-- exists exactly when the event was acknowledged.
CREATE TABLE provider_answers (
    booking_id    uuid PRIMARY KEY,
    provider_id   text NOT NULL,
    decision      text NOT NULL CHECK (decision IN ('accept', 'reject')),
    reason        text,
    event_id      uuid NOT NULL,
    submitted_at  timestamptz NOT NULL DEFAULT now()
);
