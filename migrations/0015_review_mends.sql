-- Mends from an attack review with psql (issue 14). Each closes a way around 0009–0014:
--
-- A. `BEGIN; SELECT * FROM vault.reveal(...); ROLLBACK;` returned sealed rows and rolled the
--    audit row back. A reveal is now two statements in two transactions: reveal_request()
--    commits the audit row and a single-use grant; reveal_rows() serves only a grant committed
--    before the current transaction began (granted_at < now()).
-- B. The same trick with vault.job_begin(): a job is served only once committed, and only the
--    pages its action needs (an `erase` job no longer reads the vault).
-- C. count_not_sealed_at()'s caller-chosen prefix was an oracle on sealed bytes; the format
--    marker is now fixed here.
-- D. The admin could append a forged `erase` row with audit_append(); nothing in etl uses it.
-- E. Admin UPDATE is limited to the columns its jobs write; the table locks the key jobs need
--    are taken through vault.lock_for_key_job() (LOCK needs a table-level grant).
-- F. Changing wrapped key material (retire, rewrap) is audited by a trigger, whoever does it.
-- G. A transaction holding the audit head can no longer stall every audited statement
--    forever: appends give up after lock_timeout.
-- H. A reason of only whitespace (tabs, newlines) is refused like a short one.

-- ---------------------------------------------------------------------------------------------
-- H, G: the append itself.
CREATE OR REPLACE FUNCTION vault.audit_write(
    p_action text, p_selector text, p_user_id text, p_ticket text, p_reason text, p_actor text,
    p_records integer, p_subjects text[], p_digest bytea)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '5s'
AS $$
DECLARE
    head record;
    new_id bigint;
    new_at timestamptz := pg_catalog.now();
    new_hash bytea;
BEGIN
    IF p_action IS NULL OR p_action NOT IN
        ('reveal', 'erase', 'reencrypt', 'retokenize', 'verify', 'replay', 'retire', 'rewrap') THEN
        RAISE EXCEPTION 'audit action % is not one piivault records', p_action USING ERRCODE = '22023';
    END IF;
    IF p_reason IS NULL
       OR pg_catalog.char_length(pg_catalog.regexp_replace(p_reason, '^\s+|\s+$', '', 'g')) < 8 THEN
        RAISE EXCEPTION 'an audited access needs a reason of at least 8 characters' USING ERRCODE = '22023';
    END IF;
    IF pg_catalog.octet_length(p_reason) > 4096 OR pg_catalog.octet_length(p_selector) > 4096
       OR pg_catalog.octet_length(p_ticket) > 256 OR pg_catalog.octet_length(p_actor) > 256 THEN
        RAISE EXCEPTION 'an audit field is too long (reason and selector 4096 bytes, ticket and actor 256)'
            USING ERRCODE = '22001';
    END IF;
    IF p_records IS NULL OR p_records < 0 THEN
        RAISE EXCEPTION 'records must be a count' USING ERRCODE = '22023';
    END IF;
    SELECT h.id, h.hash INTO head FROM vault.audit_head h WHERE h.only_row FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'vault.audit_head is empty: run etl migrate' USING ERRCODE = '55000';
    END IF;
    new_id := head.id + 1;
    new_hash := vault.audit_row_hash(head.hash, new_id, new_at, session_user::text,
        coalesce(p_actor, 'unknown'), p_action, p_selector, p_user_id, p_ticket, p_reason,
        p_records, p_subjects, p_digest);
    INSERT INTO vault.reveal_audit (id, at, db_role, actor, action, selector, user_id, ticket,
        reason, records, subjects, records_digest, prev_hash, hash, chain_format)
    VALUES (new_id, new_at, session_user::text, coalesce(p_actor, 'unknown'), p_action, p_selector,
        p_user_id, p_ticket, p_reason, p_records, p_subjects, p_digest, head.hash, new_hash, 2);
    UPDATE vault.audit_head SET id = new_id, hash = new_hash WHERE only_row;
    RETURN new_id;
END
$$;

-- D.
REVOKE EXECUTE ON FUNCTION vault.audit_append(text, text, text, text, text, text, integer, text[], bytea)
    FROM piivault_admin;

-- ---------------------------------------------------------------------------------------------
-- A: reveal in two committed steps.
CREATE TABLE IF NOT EXISTS vault.reveal_grants(
    audit_id bigint PRIMARY KEY,
    db_role text NOT NULL,
    ids text[] NOT NULL,
    granted_at timestamptz NOT NULL DEFAULT now(),
    used_at timestamptz
);
REVOKE ALL ON vault.reveal_grants FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE ON vault.reveal_grants TO piivault_definer;

-- Selects the records, commits nothing itself: the caller's statement (autocommit) commits the
-- audit row and the grant together. Returns the audit row's id and the number of records.
CREATE OR REPLACE FUNCTION vault.reveal_request(p_selector text, p_value text, p_reason text,
    p_ticket text, p_actor text)
RETURNS TABLE (audit_id bigint, records integer)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    ids text[];
    users text[];
    new_id bigint;
BEGIN
    IF p_value IS NULL THEN
        RAISE EXCEPTION 'reveal needs a value to select by' USING ERRCODE = '22023';
    END IF;
    IF p_selector = 'user_id' THEN
        SELECT pg_catalog.array_agg(p.message_id) INTO ids
        FROM vault.login_pii p WHERE p.user_id = p_value;
    ELSIF p_selector = 'message_id' THEN
        SELECT pg_catalog.array_agg(p.message_id) INTO ids
        FROM vault.login_pii p WHERE p.message_id = p_value;
    ELSIF p_selector = 'token' THEN
        SELECT pg_catalog.array_agg(u.message_id) INTO ids
        FROM public.user_logins u
        WHERE (u.masked_ip = p_value OR u.masked_device_id = p_value) AND u.message_id IS NOT NULL;
    ELSE
        RAISE EXCEPTION 'reveal selector must be user_id, message_id or token' USING ERRCODE = '22023';
    END IF;
    -- Only messages that have a vault row are revealed, and counted.
    SELECT coalesce(pg_catalog.array_agg(p.message_id), '{}'::text[]),
           coalesce(pg_catalog.array_agg(DISTINCT p.user_id::text), '{}'::text[])
        INTO ids, users
    FROM vault.login_pii p WHERE p.message_id = ANY (coalesce(ids, '{}'::text[]));
    SELECT coalesce(pg_catalog.array_agg(u ORDER BY u), '{}'::text[]) INTO users
    FROM pg_catalog.unnest(users) AS u;
    new_id := vault.audit_write('reveal', p_selector || '=' || p_value,
        CASE WHEN p_selector = 'user_id' THEN p_value END, p_ticket, p_reason, p_actor,
        pg_catalog.cardinality(ids), users, vault.records_digest(ids));
    INSERT INTO vault.reveal_grants (audit_id, db_role, ids) VALUES (new_id, session_user::text, ids);
    RETURN QUERY SELECT new_id, pg_catalog.cardinality(ids);
END
$$;

-- Serves one grant once: this login's, committed before this transaction began, unused, at most
-- ten minutes old.
CREATE OR REPLACE FUNCTION vault.reveal_rows(p_audit bigint)
RETURNS TABLE (message_id text, user_id text, key_version integer, ip_sealed bytea,
    device_id_sealed bytea, created_at timestamptz)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    wanted text[];
BEGIN
    SELECT g.ids INTO wanted FROM vault.reveal_grants g
    WHERE g.audit_id = p_audit AND g.db_role = session_user::text AND g.used_at IS NULL
      AND g.granted_at < pg_catalog.now()
      AND g.granted_at > pg_catalog.now() - interval '10 minutes'
    FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'reveal % is not an unused, committed request of this login: call vault.reveal_request() in its own transaction first', p_audit
            USING ERRCODE = '42501';
    END IF;
    UPDATE vault.reveal_grants SET used_at = pg_catalog.now() WHERE audit_id = p_audit;
    RETURN QUERY
        SELECT p.message_id, p.user_id::text, p.key_version, p.ip_sealed, p.device_id_sealed,
               p.created_at
        FROM vault.login_pii p WHERE p.message_id = ANY (wanted)
        ORDER BY p.created_at, p.message_id;
END
$$;

-- The one-statement reveal could be rolled back after reading: gone.
DROP FUNCTION IF EXISTS vault.reveal(text, text, text, text, text);

-- ---------------------------------------------------------------------------------------------
-- B: jobs are served once committed, and only what their action reads.
CREATE OR REPLACE FUNCTION vault.job_serves(p_job bigint, p_actions text[]) RETURNS void
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

CREATE OR REPLACE FUNCTION vault.job_check(p_job bigint) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM vault.job_serves(p_job, ARRAY['reencrypt', 'retokenize', 'verify', 'erase', 'replay']);
END
$$;

CREATE OR REPLACE FUNCTION vault.job_vault_rows(p_job bigint, p_filter text, p_version integer,
    p_prefix bytea, p_after text, p_limit bigint)
RETURNS TABLE (message_id text, user_id text, login_user_id text, key_version integer,
    ip_sealed bytea, device_id_sealed bytea, masked_ip text, masked_device_id text,
    token_version integer)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM vault.job_serves(p_job, ARRAY['reencrypt', 'retokenize', 'verify']);
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

CREATE OR REPLACE FUNCTION vault.job_quarantine_rows(p_job bigint, p_only text, p_version integer,
    p_prefix bytea, p_after text, p_limit bigint)
RETURNS TABLE (message_id text, received_at timestamptz, key_version integer, body_sealed bytea)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM vault.job_serves(p_job, ARRAY['reencrypt', 'verify', 'replay']);
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

CREATE OR REPLACE FUNCTION vault.job_untagged_bodies(p_job bigint, p_after text, p_limit bigint)
RETURNS TABLE (message_id text, received_at timestamptz, key_version integer, body_sealed bytea)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM vault.job_serves(p_job, ARRAY['erase']);
    RETURN QUERY
        SELECT q.message_id, q.received_at, q.key_version, q.body_sealed
        FROM etl.quarantine q
        WHERE q.user_tags IS NULL AND q.message_id > p_after
        ORDER BY q.message_id
        LIMIT p_limit;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- C: the format marker (src/crypto/seal.rs FORMAT_2_PREFIX) is fixed, not the caller's.
DROP FUNCTION IF EXISTS vault.count_not_sealed_at(integer, bytea);
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

-- ---------------------------------------------------------------------------------------------
-- E: the admin writes only the columns its jobs write.
REVOKE UPDATE ON vault.login_pii, public.user_logins, etl.quarantine FROM piivault_admin;
GRANT UPDATE (key_version, ip_sealed, device_id_sealed) ON vault.login_pii TO piivault_admin;
GRANT UPDATE (masked_ip, masked_device_id, token_version) ON public.user_logins TO piivault_admin;
GRANT UPDATE (key_version, body_sealed, user_tags, reason) ON etl.quarantine TO piivault_admin;

-- LOCK TABLE needs a table-level write grant: the key jobs lock through this instead.
CREATE OR REPLACE FUNCTION vault.lock_for_key_job(p_what text) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_what = 'user_logins' THEN
        LOCK TABLE public.user_logins IN SHARE ROW EXCLUSIVE MODE;
    ELSIF p_what = 'sealed' THEN
        LOCK TABLE vault.login_pii, etl.quarantine IN SHARE ROW EXCLUSIVE MODE;
    ELSIF p_what = 'protected' THEN
        LOCK TABLE public.user_logins, vault.login_pii, etl.quarantine, etl.token_next
            IN SHARE ROW EXCLUSIVE MODE;
    ELSE
        RAISE EXCEPTION 'lock_for_key_job: unknown set %', p_what USING ERRCODE = '22023';
    END IF;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- F: key material changes are audited, whoever makes them.
CREATE OR REPLACE FUNCTION vault.audit_key_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NEW.wrapped IS DISTINCT FROM OLD.wrapped THEN
        PERFORM vault.audit_write(
            CASE WHEN NEW.wrapped IS NULL THEN 'retire' ELSE 'rewrap' END,
            pg_catalog.format('%s key v%s', NEW.purpose, NEW.version), NULL, NULL,
            CASE WHEN NEW.wrapped IS NULL THEN 'wrapped key destroyed (crypto-shredding)'
                 ELSE pg_catalog.format('wrapped key replaced (kek %s, deployment %s)',
                                        NEW.kek_uri, coalesce(NEW.deployment, 'legacy')) END,
            NULL, 0, NULL, NULL);
    END IF;
    RETURN NEW;
END
$$;
DROP TRIGGER IF EXISTS data_keys_audit ON vault.data_keys;
CREATE TRIGGER data_keys_audit AFTER UPDATE ON vault.data_keys
    FOR EACH ROW EXECUTE FUNCTION vault.audit_key_change();

-- ---------------------------------------------------------------------------------------------
REVOKE ALL ON FUNCTION vault.reveal_request(text, text, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION vault.reveal_rows(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION vault.job_serves(bigint, text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION vault.count_not_sealed_at(integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION vault.lock_for_key_job(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION vault.audit_key_change() FROM PUBLIC;
GRANT CREATE ON SCHEMA vault TO piivault_definer;
ALTER FUNCTION vault.reveal_request(text, text, text, text, text) OWNER TO piivault_definer;
ALTER FUNCTION vault.reveal_rows(bigint) OWNER TO piivault_definer;
ALTER FUNCTION vault.job_serves(bigint, text[]) OWNER TO piivault_definer;
ALTER FUNCTION vault.count_not_sealed_at(integer) OWNER TO piivault_definer;
ALTER FUNCTION vault.lock_for_key_job(text) OWNER TO piivault_definer;
ALTER FUNCTION vault.audit_key_change() OWNER TO piivault_definer;
REVOKE CREATE ON SCHEMA vault FROM piivault_definer;
GRANT EXECUTE ON FUNCTION vault.reveal_request(text, text, text, text, text),
    vault.reveal_rows(bigint) TO piivault_auditor;
GRANT EXECUTE ON FUNCTION vault.count_not_sealed_at(integer), vault.lock_for_key_job(text)
    TO piivault_admin;
