-- The vault: wrapped data keys, sealed originals and the reveal audit trail. A separate schema so
-- that access can be granted per role (analysts never get USAGE on it).
CREATE SCHEMA IF NOT EXISTS vault;

CREATE TABLE IF NOT EXISTS vault.data_keys(
    purpose text NOT NULL CHECK (purpose IN ('seal', 'token')),
    version integer NOT NULL CHECK (version > 0),
    kek_uri text NOT NULL,
    wrapped bytea NOT NULL,
    state text NOT NULL DEFAULT 'active',
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (purpose, version)
);

CREATE TABLE IF NOT EXISTS vault.login_pii(
    message_id text PRIMARY KEY,
    user_id varchar(128) NOT NULL,
    key_version integer NOT NULL,
    ip_sealed bytea,
    device_id_sealed bytea,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS login_pii_user_id_idx ON vault.login_pii (user_id);

CREATE TABLE IF NOT EXISTS vault.reveal_audit(
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    db_role text NOT NULL DEFAULT session_user,
    actor text NOT NULL,
    user_id varchar(128),
    reason text NOT NULL,
    records integer NOT NULL
);
