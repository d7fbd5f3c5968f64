-- The relay skips every booking with a row set aside, on every pass: find those rows by
-- booking without reading the whole outbox (it can be long after a Kafka outage).
CREATE INDEX api_outbox_set_aside_idx ON api_outbox (booking_id) WHERE refused_at IS NOT NULL;
