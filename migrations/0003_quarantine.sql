-- Messages that are not valid logins. The raw body may hold PII, so it is sealed like the vault's
-- values; the reason is a fixed, PII-free text.
CREATE SCHEMA IF NOT EXISTS etl;

CREATE TABLE IF NOT EXISTS etl.quarantine(
    message_id text PRIMARY KEY,
    received_at timestamptz NOT NULL,
    reason text NOT NULL,
    key_version integer NOT NULL,
    body_sealed bytea NOT NULL
);
