-- Erasure through the database, and admin writes limited to what its jobs write (issue 14): the
-- admin role could DELETE a user's originals and analysts' rows, or rewrite their user_id, with no
-- audit row. vault.erase_user() deletes them, and the quarantined bodies
-- tagged with the user (or named by the caller's audited scan of untagged bodies), and appends
-- the audit row, in one statement; the admin keeps no DELETE on vault.login_pii or user_logins.
-- (DELETE on etl.quarantine stays: `quarantine replay` removes bodies it has loaded.)
CREATE OR REPLACE FUNCTION vault.erase_user(p_user_id text, p_tags text[], p_found text[],
    p_note text, p_reason text, p_ticket text, p_actor text)
RETURNS TABLE (audit_id bigint, vault_rows bigint, login_rows bigint, quarantine_rows bigint)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    vault_ids text[];
    body_ids text[];
    logins bigint;
    audited bigint;
BEGIN
    IF p_user_id IS NULL OR pg_catalog.btrim(p_user_id) = '' THEN
        RAISE EXCEPTION 'erase needs a user id' USING ERRCODE = '22023';
    END IF;
    DELETE FROM etl.token_next n
    WHERE n.message_id IN (SELECT p.message_id FROM vault.login_pii p WHERE p.user_id = p_user_id);
    WITH gone AS (DELETE FROM vault.login_pii p WHERE p.user_id = p_user_id RETURNING p.message_id)
    SELECT coalesce(pg_catalog.array_agg(gone.message_id), '{}') INTO vault_ids FROM gone;
    DELETE FROM public.user_logins u WHERE u.user_id = p_user_id;
    GET DIAGNOSTICS logins = ROW_COUNT;
    WITH gone AS (
        DELETE FROM etl.quarantine q
        WHERE q.user_tags && coalesce(p_tags, '{}') OR q.message_id = ANY (coalesce(p_found, '{}'))
        RETURNING q.message_id)
    SELECT coalesce(pg_catalog.array_agg(gone.message_id), '{}') INTO body_ids FROM gone;
    audited := vault.audit_write('erase',
        'user_id=' || p_user_id || coalesce(' (' || p_note || ')', ''), p_user_id, p_ticket,
        p_reason, p_actor,
        pg_catalog.cardinality(vault_ids) + pg_catalog.cardinality(body_ids),
        ARRAY[p_user_id], vault.records_digest(vault_ids || body_ids));
    RETURN QUERY SELECT audited, pg_catalog.cardinality(vault_ids)::bigint, logins,
        pg_catalog.cardinality(body_ids)::bigint;
END
$$;

REVOKE ALL ON FUNCTION vault.erase_user(text, text[], text[], text, text, text, text) FROM PUBLIC;
GRANT CREATE ON SCHEMA vault TO piivault_definer;
ALTER FUNCTION vault.erase_user(text, text[], text[], text, text, text, text) OWNER TO piivault_definer;
REVOKE CREATE ON SCHEMA vault FROM piivault_definer;
GRANT DELETE ON vault.login_pii, public.user_logins, etl.quarantine, etl.token_next TO piivault_definer;
GRANT SELECT (user_id) ON public.user_logins TO piivault_definer;
GRANT EXECUTE ON FUNCTION vault.erase_user(text, text[], text[], text, text, text, text) TO piivault_admin;

REVOKE DELETE ON vault.login_pii, public.user_logins FROM piivault_admin;

-- The admin writes only the columns its jobs write (re-encryption, re-tokenization, re-tagging,
-- replay's reason), never a row's user_id.
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
REVOKE ALL ON FUNCTION vault.lock_for_key_job(text) FROM PUBLIC;
GRANT CREATE ON SCHEMA vault TO piivault_definer;
ALTER FUNCTION vault.lock_for_key_job(text) OWNER TO piivault_definer;
REVOKE CREATE ON SCHEMA vault FROM piivault_definer;
GRANT EXECUTE ON FUNCTION vault.lock_for_key_job(text) TO piivault_admin;
