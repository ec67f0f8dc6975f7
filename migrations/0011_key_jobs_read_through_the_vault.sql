-- Key jobs open sealed values too (issue 14): `keys reencrypt`, `retokenize`, `verify`,
-- `quarantine replay`, and erasure's scan of bodies quarantined before user tags existed. The
-- admin role loses direct SELECT on the sealed columns; a job first registers itself with
-- vault.job_begin(), whose statement commits an audit row naming the job and how many sealed rows
-- it may open, and then reads pages through definer functions that serve only that login's open,
-- committed jobs, and only the pages the job's action needs. Same conventions as 0009: pinned
-- search_path, schema-qualified names, owned by piivault_definer.
--
-- Also here: etl.quarantine.user_tags. At quarantine time the writer stores a keyed tag
-- (src/crypto/body_tag.rs) of every user_id a lenient scan of the raw body finds
-- (src/user_ids.rs), so `etl erase` finds a user's bodies by tag without opening any. NULL marks
-- a body quarantined before tags existed: erasure opens those in an audited job, and
-- `keys reencrypt` tags them as it re-seals.

CREATE TABLE IF NOT EXISTS vault.key_jobs(
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    action text NOT NULL,
    db_role text NOT NULL,
    audit_id bigint NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    ended_at timestamptz
);
REVOKE ALL ON vault.key_jobs FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE ON vault.key_jobs TO piivault_definer;

ALTER TABLE etl.quarantine ADD COLUMN IF NOT EXISTS user_tags text[];
CREATE INDEX IF NOT EXISTS quarantine_user_tags_idx ON etl.quarantine USING gin (user_tags);
CREATE INDEX IF NOT EXISTS quarantine_untagged_idx ON etl.quarantine (message_id) WHERE user_tags IS NULL;

-- Registers a job, audited before it can read anything; returns its id. An erase job opens only
-- untagged bodies: its audit row counts those.
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

-- Refuses a job that is not this login's, not one of `p_actions`, not committed yet (begun in
-- the current transaction: read-then-roll-back would leave no audit row), ended, or more than a
-- day old.
CREATE OR REPLACE FUNCTION vault.job_check(p_job bigint, p_actions text[]) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM vault.key_jobs j
                   WHERE j.id = p_job AND j.db_role = session_user::text AND j.ended_at IS NULL
                     AND j.action = ANY (p_actions)
                     AND j.started_at < pg_catalog.now()
                     AND j.started_at > pg_catalog.now() - interval '24 hours') THEN
        RAISE EXCEPTION 'key job % is not an open, committed % job of this login: start one with vault.job_begin() in its own transaction',
            p_job, pg_catalog.array_to_string(p_actions, '/')
            USING ERRCODE = '42501';
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION vault.job_end(p_job bigint) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM vault.job_check(p_job, ARRAY['reencrypt', 'retokenize', 'verify', 'erase', 'replay']);
    UPDATE vault.key_jobs SET ended_at = pg_catalog.now() WHERE id = p_job;
END
$$;

-- A page of vault rows for a job, with the message's analysts' row. p_filter:
--   'all'           every row after p_after;
--   'not_sealed_at' rows not sealed under key p_version in the current format (marker 0xFF 0x02,
--                   src/crypto/seal.rs FORMAT_2_PREFIX; fixed here, never the caller's);
--   'unstaged'      rows with an analysts' row and no staged token yet (re-tokenization).
CREATE OR REPLACE FUNCTION vault.job_vault_rows(p_job bigint, p_filter text, p_version integer,
    p_after text, p_limit bigint)
RETURNS TABLE (message_id text, user_id text, login_user_id text, key_version integer,
    ip_sealed bytea, device_id_sealed bytea, masked_ip text, masked_device_id text,
    token_version integer)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM vault.job_check(p_job, ARRAY['reencrypt', 'retokenize', 'verify']);
    IF p_filter IS NULL OR p_filter NOT IN ('all', 'not_sealed_at', 'unstaged') THEN
        RAISE EXCEPTION 'job_vault_rows: unknown filter %', p_filter USING ERRCODE = '22023';
    END IF;
    RETURN QUERY
        SELECT p.message_id, p.user_id::text, u.user_id::text, p.key_version, p.ip_sealed,
               p.device_id_sealed, u.masked_ip::text, u.masked_device_id::text, u.token_version
        FROM vault.login_pii p LEFT JOIN public.user_logins u ON u.message_id = p.message_id
        WHERE p.message_id > p_after
          AND (p_filter <> 'not_sealed_at'
               OR p.key_version <> p_version
               OR pg_catalog.substr(coalesce(p.ip_sealed, p.device_id_sealed), 1, 2) <> '\xff02'::bytea)
          AND (p_filter <> 'unstaged'
               OR (u.message_id IS NOT NULL
                   AND NOT EXISTS (SELECT 1 FROM etl.token_next n WHERE n.message_id = p.message_id)))
        ORDER BY p.message_id
        LIMIT p_limit;
END
$$;

-- A page of quarantined bodies for a job (one message with p_only; not sealed under p_version in
-- the current format when p_version is given).
CREATE OR REPLACE FUNCTION vault.job_quarantine_rows(p_job bigint, p_only text, p_version integer,
    p_after text, p_limit bigint)
RETURNS TABLE (message_id text, received_at timestamptz, key_version integer, body_sealed bytea)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM vault.job_check(p_job, ARRAY['reencrypt', 'verify', 'replay']);
    RETURN QUERY
        SELECT q.message_id, q.received_at, q.key_version, q.body_sealed
        FROM etl.quarantine q
        WHERE (p_only IS NULL OR q.message_id = p_only) AND q.message_id > p_after
          AND (p_version IS NULL OR q.key_version <> p_version
               OR pg_catalog.substr(q.body_sealed, 1, 2) <> '\xff02'::bytea)
        ORDER BY q.message_id
        LIMIT p_limit;
END
$$;

-- A page of bodies that carry no user tags yet, for an erase job.
CREATE OR REPLACE FUNCTION vault.job_untagged_bodies(p_job bigint, p_after text, p_limit bigint)
RETURNS TABLE (message_id text, received_at timestamptz, key_version integer, body_sealed bytea)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM vault.job_check(p_job, ARRAY['erase']);
    RETURN QUERY
        SELECT q.message_id, q.received_at, q.key_version, q.body_sealed
        FROM etl.quarantine q
        WHERE q.user_tags IS NULL AND q.message_id > p_after
        ORDER BY q.message_id
        LIMIT p_limit;
END
$$;

-- How many vault rows and quarantined bodies re-encryption still has to move (no values leave;
-- the format marker is fixed, so the count is no oracle on sealed bytes).
CREATE OR REPLACE FUNCTION vault.count_not_sealed_at(p_version integer)
RETURNS TABLE (vault bigint, quarantine bigint)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT (SELECT pg_catalog.count(*) FROM vault.login_pii p
            WHERE p.key_version <> p_version
               OR pg_catalog.substr(coalesce(p.ip_sealed, p.device_id_sealed), 1, 2) <> '\xff02'::bytea),
           (SELECT pg_catalog.count(*) FROM etl.quarantine q
            WHERE q.key_version <> p_version
               OR pg_catalog.substr(q.body_sealed, 1, 2) <> '\xff02'::bytea)
$$;

REVOKE ALL ON FUNCTION vault.job_begin(text, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION vault.job_check(bigint, text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION vault.job_end(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION vault.job_vault_rows(bigint, text, integer, text, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION vault.job_quarantine_rows(bigint, text, integer, text, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION vault.job_untagged_bodies(bigint, text, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION vault.count_not_sealed_at(integer) FROM PUBLIC;
GRANT CREATE ON SCHEMA vault TO piivault_definer;
ALTER FUNCTION vault.job_begin(text, text, text, text) OWNER TO piivault_definer;
ALTER FUNCTION vault.job_check(bigint, text[]) OWNER TO piivault_definer;
ALTER FUNCTION vault.job_end(bigint) OWNER TO piivault_definer;
ALTER FUNCTION vault.job_vault_rows(bigint, text, integer, text, bigint) OWNER TO piivault_definer;
ALTER FUNCTION vault.job_quarantine_rows(bigint, text, integer, text, bigint) OWNER TO piivault_definer;
ALTER FUNCTION vault.job_untagged_bodies(bigint, text, bigint) OWNER TO piivault_definer;
ALTER FUNCTION vault.count_not_sealed_at(integer) OWNER TO piivault_definer;
REVOKE CREATE ON SCHEMA vault FROM piivault_definer;

-- What the job functions read, beyond 0009's grants.
GRANT USAGE ON SCHEMA etl TO piivault_definer;
GRANT SELECT ON etl.quarantine TO piivault_definer;
GRANT SELECT (message_id) ON etl.token_next TO piivault_definer;
GRANT SELECT (token_version) ON public.user_logins TO piivault_definer;

-- The admin keeps what names no value (tags are not values: it matches and counts by them);
-- sealed columns only through the functions above.
REVOKE SELECT ON vault.login_pii, etl.quarantine FROM piivault_admin;
GRANT SELECT (message_id, user_id, key_version, created_at) ON vault.login_pii TO piivault_admin;
GRANT SELECT (message_id, received_at, reason, key_version, user_tags) ON etl.quarantine TO piivault_admin;
GRANT EXECUTE ON FUNCTION vault.job_begin(text, text, text, text), vault.job_end(bigint),
    vault.job_vault_rows(bigint, text, integer, text, bigint),
    vault.job_quarantine_rows(bigint, text, integer, text, bigint),
    vault.job_untagged_bodies(bigint, text, bigint),
    vault.count_not_sealed_at(integer) TO piivault_admin;
