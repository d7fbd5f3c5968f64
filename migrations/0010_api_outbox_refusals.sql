-- A row the broker refuses every time (a record too large, a topic it may not write) is set
-- aside instead of holding back every row behind it. The booking's later rows wait with it,
-- so its events are never published out of order. An operator fixes the cause and clears
-- refused_at; the relay then publishes the booking's rows in order.
ALTER TABLE api_outbox
    ADD COLUMN refused_at timestamptz,
    ADD COLUMN refusal    text;
