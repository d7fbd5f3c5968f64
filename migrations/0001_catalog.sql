-- The catalog: users (created from their first token) and the services providers offer.

CREATE TABLE users (
    id            text PRIMARY KEY,              -- the token's subject
    email         text,
    display_name  text,
    roles         text[] NOT NULL DEFAULT '{}',
    webhook_url   text,                          -- where signed notification webhooks go, if any
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE services (
    id                        uuid PRIMARY KEY,
    provider_id               text NOT NULL REFERENCES users (id),
    name                      text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    description               text NOT NULL DEFAULT '',
    price_amount_minor        bigint NOT NULL CHECK (price_amount_minor >= 0),
    price_currency            char(3) NOT NULL CHECK (price_currency ~ '^[A-Z]{3}$'),
    duration_minutes          integer NOT NULL CHECK (duration_minutes > 0),
    capacity_per_slot         integer NOT NULL CHECK (capacity_per_slot > 0),
    response_deadline_seconds integer NOT NULL CHECK (response_deadline_seconds > 0),
    active                    boolean NOT NULL DEFAULT true,
    version                   integer NOT NULL DEFAULT 1,
    created_at                timestamptz NOT NULL DEFAULT now(),
    updated_at                timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX services_provider_idx ON services (provider_id);
CREATE INDEX services_active_name_idx ON services (active, name);
