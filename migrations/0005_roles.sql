-- Access control: NOLOGIN group roles with exactly the privileges each job needs. Deployers
-- grant them to login users (README, "Roles"). Roles are cluster-wide, so creating them tolerates
-- another database (or a concurrent migration) having created them first.
DO $$
DECLARE r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['piivault_etl', 'piivault_analyst', 'piivault_auditor', 'piivault_admin'] LOOP
        BEGIN
            EXECUTE format('CREATE ROLE %I NOLOGIN', r);
        EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
        END;
    END LOOP;
END $$;

-- Nothing by default: the vault and etl schemas are reachable only through these grants.
REVOKE ALL ON SCHEMA vault, etl FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA vault, etl FROM PUBLIC;

-- ETL (`etl run`): insert rows, read wrapped keys; never read the vault or the audit back.
GRANT USAGE ON SCHEMA vault, etl TO piivault_etl;
GRANT INSERT ON user_logins, vault.login_pii, etl.quarantine TO piivault_etl;
-- ON CONFLICT (message_id) reads the conflict column only: no PII in it.
GRANT SELECT (message_id) ON user_logins, vault.login_pii, etl.quarantine TO piivault_etl;
GRANT SELECT ON vault.data_keys TO piivault_etl;

-- Analyst: the tokenised table only.
GRANT SELECT ON user_logins TO piivault_analyst;

-- Auditor (`etl reveal`): read the vault and the keys, append to the audit; nothing else.
GRANT USAGE ON SCHEMA vault TO piivault_auditor;
GRANT SELECT ON vault.login_pii, vault.data_keys, vault.reveal_audit TO piivault_auditor;
-- Tokens only: `reveal --token` finds the messages behind a masked value here.
GRANT SELECT ON user_logins TO piivault_auditor;
GRANT INSERT ON vault.reveal_audit TO piivault_auditor;
GRANT USAGE ON SEQUENCE vault.reveal_audit_id_seq TO piivault_auditor;

-- Admin (`etl keys ...`, rotation): keys, re-sealing, re-tokenising, retiring.
GRANT USAGE ON SCHEMA vault, etl TO piivault_admin;
GRANT SELECT, INSERT, UPDATE ON vault.data_keys TO piivault_admin;
GRANT SELECT, UPDATE ON vault.login_pii, etl.quarantine, user_logins TO piivault_admin;
GRANT SELECT, INSERT, UPDATE, DELETE ON etl.token_next TO piivault_admin;
