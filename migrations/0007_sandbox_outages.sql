-- Fault injection for the sandbox payment gateway: while a row exists, every call for that
-- payment method fails the way an unreachable gateway does (retryable), so operators and tests
-- can rehearse retries, dead letters and replay; deleting the row is the fix.
CREATE TABLE sandbox_outages (
    payment_method  text PRIMARY KEY,
    reason          text NOT NULL DEFAULT 'injected outage',
    created_at      timestamptz NOT NULL DEFAULT now()
);
