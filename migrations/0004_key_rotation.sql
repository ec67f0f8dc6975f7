-- Key rotation: key states, crypto-shredding of retired keys, and the staging table where
-- `etl keys retokenize` prepares new-version tokens before swapping them in at once.
ALTER TABLE vault.data_keys
    ALTER COLUMN wrapped DROP NOT NULL,
    ADD COLUMN IF NOT EXISTS rewrapped_at timestamptz,
    ADD COLUMN IF NOT EXISTS retired_at timestamptz;

ALTER TABLE vault.data_keys
    ADD CONSTRAINT data_keys_state_check CHECK (state IN ('active', 'previous', 'pending', 'retired')),
    -- A retired key has no key material left; every other key has it.
    ADD CONSTRAINT data_keys_shredded_check CHECK ((state = 'retired') = (wrapped IS NULL)),
    ADD CONSTRAINT data_keys_pending_check CHECK (state <> 'pending' OR purpose = 'token');

CREATE UNIQUE INDEX IF NOT EXISTS data_keys_one_active ON vault.data_keys (purpose) WHERE state = 'active';
CREATE UNIQUE INDEX IF NOT EXISTS data_keys_one_pending ON vault.data_keys (purpose) WHERE state = 'pending';

-- retire counts the rows still using a version (while writers wait: keep it an index lookup).
CREATE INDEX IF NOT EXISTS login_pii_key_version_idx ON vault.login_pii (key_version);
CREATE INDEX IF NOT EXISTS quarantine_key_version_idx ON etl.quarantine (key_version);
CREATE INDEX IF NOT EXISTS user_logins_token_version_idx ON user_logins (token_version);

-- New-version tokens, staged; analysts keep seeing one consistent version until the swap.
CREATE TABLE IF NOT EXISTS etl.token_next(
    message_id text PRIMARY KEY,
    token_version integer NOT NULL,
    masked_ip varchar(256),
    masked_device_id varchar(256)
);
