-- The analysts' table. It may already exist with exactly the original seven columns (and rows):
-- create it only if absent, then add piivault's columns without touching existing data.
CREATE TABLE IF NOT EXISTS user_logins(
    user_id varchar(128),
    device_type varchar(32),
    masked_ip varchar(256),
    masked_device_id varchar(256),
    locale varchar(32),
    app_version integer,
    create_date date
);

ALTER TABLE user_logins
    ADD COLUMN IF NOT EXISTS message_id text,
    ADD COLUMN IF NOT EXISTS app_version_text varchar(64),
    ADD COLUMN IF NOT EXISTS token_version integer,
    ADD COLUMN IF NOT EXISTS received_at timestamptz;

-- Idempotency key. Rows loaded before piivault have NULL here; NULLs never conflict.
CREATE UNIQUE INDEX IF NOT EXISTS user_logins_message_id_key ON user_logins (message_id);
-- Duplicate detection groups by token.
CREATE INDEX IF NOT EXISTS user_logins_masked_device_id_idx ON user_logins (masked_device_id);
CREATE INDEX IF NOT EXISTS user_logins_masked_ip_idx ON user_logins (masked_ip);

COMMENT ON COLUMN user_logins.masked_ip IS 'v<ver>:base64url(HMAC-SHA256) of the canonical IP; equal IPs, equal tokens';
COMMENT ON COLUMN user_logins.masked_device_id IS 'v<ver>:base64url(HMAC-SHA256) of the trimmed NFC device id';
COMMENT ON COLUMN user_logins.app_version IS 'major*1000000 + minor*1000 + patch for 1-3 numeric parts each 0-999, else NULL';
COMMENT ON COLUMN user_logins.app_version_text IS 'app_version exactly as sent';
COMMENT ON COLUMN user_logins.create_date IS 'UTC date of the SQS SentTimestamp (load date for --input)';
