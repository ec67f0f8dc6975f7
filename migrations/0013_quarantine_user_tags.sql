-- Erasure finds every quarantined body that names the user (issue 14). At quarantine time the
-- writer stores a keyed tag (src/crypto/body_tag.rs) of every user_id a lenient scan of the raw
-- body finds (src/user_ids.rs): broken JSON, arrays, repeated keys, nested objects. `etl erase`
-- deletes by tag without opening bodies. NULL marks a body quarantined before this migration:
-- erase scans those (through an audited job) and `keys reencrypt` tags them as it re-seals.
ALTER TABLE etl.quarantine ADD COLUMN IF NOT EXISTS user_tags text[];
CREATE INDEX IF NOT EXISTS quarantine_user_tags_idx ON etl.quarantine USING gin (user_tags);
CREATE INDEX IF NOT EXISTS quarantine_untagged_idx ON etl.quarantine (message_id) WHERE user_tags IS NULL;

-- Tags are not values: the admin may match and count by them.
GRANT SELECT (user_tags) ON etl.quarantine TO piivault_admin;

-- A page of bodies that carry no tags yet, for an open job (erase's fallback scan).
CREATE OR REPLACE FUNCTION vault.job_untagged_bodies(p_job bigint, p_after text, p_limit bigint)
RETURNS TABLE (message_id text, received_at timestamptz, key_version integer, body_sealed bytea)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM vault.job_check(p_job);
    RETURN QUERY
        SELECT q.message_id, q.received_at, q.key_version, q.body_sealed
        FROM etl.quarantine q
        WHERE q.user_tags IS NULL AND q.message_id > p_after
        ORDER BY q.message_id
        LIMIT p_limit;
END
$$;

-- Erase's job now opens only the untagged bodies: its audit row counts those.
CREATE OR REPLACE FUNCTION vault.job_begin(p_action text, p_selector text, p_reason text, p_actor text)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    scope bigint;
    audited bigint;
    job bigint;
BEGIN
    IF p_action IN ('reencrypt', 'verify') THEN
        scope := (SELECT pg_catalog.count(*) FROM vault.login_pii)
               + (SELECT pg_catalog.count(*) FROM etl.quarantine);
    ELSIF p_action = 'retokenize' THEN
        scope := (SELECT pg_catalog.count(*) FROM vault.login_pii);
    ELSIF p_action = 'replay' THEN
        scope := (SELECT pg_catalog.count(*) FROM etl.quarantine);
    ELSIF p_action = 'erase' THEN
        scope := (SELECT pg_catalog.count(*) FROM etl.quarantine q WHERE q.user_tags IS NULL);
    ELSE
        RAISE EXCEPTION 'a key job is reencrypt, retokenize, verify, erase or replay, not %', p_action
            USING ERRCODE = '22023';
    END IF;
    audited := vault.audit_write(p_action, p_selector, NULL, NULL, p_reason, p_actor,
        (CASE WHEN scope > 2147483647 THEN 2147483647 ELSE scope END)::integer, NULL, NULL);
    INSERT INTO vault.key_jobs (action, db_role, audit_id)
    VALUES (p_action, session_user::text, audited)
    RETURNING id INTO job;
    RETURN job;
END
$$;

REVOKE ALL ON FUNCTION vault.job_untagged_bodies(bigint, text, bigint) FROM PUBLIC;
GRANT CREATE ON SCHEMA vault TO piivault_definer;
ALTER FUNCTION vault.job_untagged_bodies(bigint, text, bigint) OWNER TO piivault_definer;
ALTER FUNCTION vault.job_begin(text, text, text, text) OWNER TO piivault_definer;
REVOKE CREATE ON SCHEMA vault FROM piivault_definer;
GRANT EXECUTE ON FUNCTION vault.job_untagged_bodies(bigint, text, bigint) TO piivault_admin;
