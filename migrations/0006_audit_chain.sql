-- Tamper-evident audit: each row stores the hash of its own content chained over the previous
-- row's hash (computed by etl, checked by `etl audit verify`), plus what was selected and why.
ALTER TABLE vault.reveal_audit
    ADD COLUMN IF NOT EXISTS action text NOT NULL DEFAULT 'reveal',
    ADD COLUMN IF NOT EXISTS selector text,
    ADD COLUMN IF NOT EXISTS ticket text,
    ADD COLUMN IF NOT EXISTS prev_hash bytea,
    ADD COLUMN IF NOT EXISTS hash bytea;

-- The admin erases (right to erasure) and audits it in the same trail.
GRANT USAGE ON SEQUENCE vault.reveal_audit_id_seq TO piivault_admin;
GRANT SELECT, INSERT ON vault.reveal_audit TO piivault_admin;
GRANT DELETE ON user_logins, vault.login_pii, etl.quarantine TO piivault_admin;
