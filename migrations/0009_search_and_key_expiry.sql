-- Service search by name (ILIKE '%q%') through a trigram index instead of reading every row;
-- pg_trgm is a trusted extension, so the database's owner may create it.
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE INDEX IF NOT EXISTS services_name_trgm_idx ON services USING gin (name gin_trgm_ops);

-- Idempotency keys expire: the API deletes the ones older than its TTL, oldest first.
CREATE INDEX IF NOT EXISTS idempotency_keys_created_at_idx ON idempotency_keys (created_at);
