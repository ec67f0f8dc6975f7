-- Side-by-side token versions (issue 19). `keys retokenize` used to stage new tokens and then
-- UPDATE every analysts' row in one transaction while writers waited (31.6 s at 1 M rows).
-- Now the rows live in etl.logins with two token slots, a and b. The active token key writes
-- its slot; while a rotation is pending, writers also fill the pending key's slot, and
-- retokenize fills it for older rows in small committed batches. Analysts read
-- public.user_logins, a view that shows one slot under the old column names, the one named in
-- the one-row vault.token_view; making the pending key active updates that row in the same
-- transaction, after the database itself has checked that every row carries the new version.
-- Neither writers nor analysts' queries hold it up, and it holds none of them up.
--
-- Also here (issue 19, item 4): the single-value indexes that only served the rotation jobs
-- (user_logins.token_version, login_pii.key_version, quarantine.key_version) go, and the token
-- indexes become partial, so an empty slot costs nothing per insert.

-- ---------------------------------------------------------------------------------------------
-- The table behind the view.
ALTER TABLE public.user_logins SET SCHEMA etl;
ALTER TABLE etl.user_logins RENAME TO logins;
ALTER TABLE etl.logins RENAME COLUMN masked_ip TO ip_token_a;
ALTER TABLE etl.logins RENAME COLUMN masked_device_id TO device_token_a;
ALTER TABLE etl.logins RENAME COLUMN token_version TO token_version_a;
ALTER TABLE etl.logins
    ADD COLUMN ip_token_b varchar(256),
    ADD COLUMN device_token_b varchar(256),
    ADD COLUMN token_version_b integer;
ALTER INDEX etl.user_logins_message_id_key RENAME TO logins_message_id_key;
COMMENT ON TABLE etl.logins IS 'analysts'' rows with two token slots; analysts read public.user_logins';

DROP INDEX etl.user_logins_masked_ip_idx;
DROP INDEX etl.user_logins_masked_device_id_idx;
DROP INDEX etl.user_logins_token_version_idx;
DROP INDEX vault.login_pii_key_version_idx;
DROP INDEX etl.quarantine_key_version_idx;
CREATE INDEX logins_ip_token_a_idx ON etl.logins (ip_token_a) WHERE ip_token_a IS NOT NULL;
CREATE INDEX logins_device_token_a_idx ON etl.logins (device_token_a) WHERE device_token_a IS NOT NULL;
CREATE INDEX logins_ip_token_b_idx ON etl.logins (ip_token_b) WHERE ip_token_b IS NOT NULL;
CREATE INDEX logins_device_token_b_idx ON etl.logins (device_token_b) WHERE device_token_b IS NOT NULL;

-- ---------------------------------------------------------------------------------------------
-- Which slot a token key writes. The active and the pending key never share one.
ALTER TABLE vault.data_keys ADD COLUMN slot text;
-- The active key's tokens are in the old columns (a); a pending key's staged ones move to b.
UPDATE vault.data_keys SET slot = 'a' WHERE purpose = 'token' AND state = 'active';
UPDATE vault.data_keys SET slot = 'b' WHERE purpose = 'token' AND state = 'pending';
ALTER TABLE vault.data_keys
    ADD CONSTRAINT data_keys_slot_name CHECK (slot IN ('a', 'b')),
    ADD CONSTRAINT data_keys_token_slot CHECK (purpose <> 'token' OR state NOT IN ('active', 'pending') OR slot IS NOT NULL);
CREATE UNIQUE INDEX data_keys_one_key_per_slot ON vault.data_keys (slot)
    WHERE purpose = 'token' AND state IN ('active', 'pending');

-- The slot analysts see: one row, written only by vault.show_token_slot() (through the key
-- table's triggers below).
CREATE TABLE vault.token_view(
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    slot text NOT NULL CHECK (slot IN ('a', 'b'))
);
INSERT INTO vault.token_view (slot) VALUES ('a');
REVOKE ALL ON vault.token_view FROM PUBLIC;

-- A key's purpose, version and slot never change: a key is a new row, and its tokens are where
-- its slot says.
CREATE FUNCTION vault.refuse_key_identity_change() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NEW.purpose IS DISTINCT FROM OLD.purpose OR NEW.version IS DISTINCT FROM OLD.version
       OR NEW.slot IS DISTINCT FROM OLD.slot THEN
        RAISE EXCEPTION 'a data key''s purpose, version and slot never change; add a key with etl keys rotate'
            USING ERRCODE = '55000';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER data_keys_identity BEFORE UPDATE ON vault.data_keys
    FOR EACH ROW EXECUTE FUNCTION vault.refuse_key_identity_change();
-- Tokens retokenize had staged before this migration move into slot b.
UPDATE etl.logins l
SET ip_token_b = n.masked_ip, device_token_b = n.masked_device_id, token_version_b = n.token_version
FROM etl.token_next n WHERE n.message_id = l.message_id;

-- ---------------------------------------------------------------------------------------------
-- The analysts' view: the slot vault.token_view names. Each branch's condition is a one-time
-- filter (an InitPlan evaluated once per query, under the query's snapshot), so exactly one
-- branch runs, and conditions on masked_* reach that slot's indexes.
CREATE VIEW public.user_logins AS
SELECT l.user_id, l.device_type, l.ip_token_a AS masked_ip, l.device_token_a AS masked_device_id,
       l.locale, l.app_version, l.create_date, l.message_id, l.app_version_text,
       l.token_version_a AS token_version, l.received_at
FROM etl.logins l WHERE (SELECT v.slot FROM vault.token_view v) = 'a'
UNION ALL
SELECT l.user_id, l.device_type, l.ip_token_b, l.device_token_b,
       l.locale, l.app_version, l.create_date, l.message_id, l.app_version_text,
       l.token_version_b, l.received_at
FROM etl.logins l WHERE (SELECT v.slot FROM vault.token_view v) = 'b';
COMMENT ON VIEW public.user_logins IS 'one login per row; masked_* are tokens of the active token key (never two versions at once)';
COMMENT ON COLUMN public.user_logins.masked_ip IS 'v<ver>:base64url(HMAC-SHA256) of the canonical IP; equal IPs, equal tokens';
COMMENT ON COLUMN public.user_logins.masked_device_id IS 'v<ver>:base64url(HMAC-SHA256) of the trimmed NFC device id';
COMMENT ON COLUMN public.user_logins.app_version IS 'major*1000000 + minor*1000 + patch for 1-3 numeric parts each 0-999, else NULL';
COMMENT ON COLUMN public.user_logins.app_version_text IS 'app_version exactly as sent';
COMMENT ON COLUMN public.user_logins.create_date IS 'UTC date of the SQS SentTimestamp (load date for --input)';

-- Points the view at a slot: one row, so the switch takes constant time and no lock any reader
-- or writer holds. Only the key table's triggers call it, with the slot of the key row.
CREATE FUNCTION vault.show_token_slot(p_slot text) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_slot IS NULL OR p_slot NOT IN ('a', 'b') THEN
        RAISE EXCEPTION 'show_token_slot: unknown slot %', p_slot USING ERRCODE = '22023';
    END IF;
    UPDATE vault.token_view SET slot = p_slot;
END
$$;

-- Rows of etl.logins that do not carry token key p_version in slot p_slot: a piivault row
-- without that version, or a row loaded before piivault (no version in either slot) whose
-- masked values are in the other slot but not in this one.
CREATE FUNCTION vault.rows_missing_slot(p_slot text, p_version integer) RETURNS bigint
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    missing bigint;
BEGIN
    IF p_slot = 'a' THEN
        SELECT pg_catalog.count(*) INTO missing FROM etl.logins l
        WHERE l.token_version_a IS DISTINCT FROM p_version
          AND (l.token_version_a IS NOT NULL OR l.token_version_b IS NOT NULL
               OR (l.ip_token_b IS NOT NULL AND l.ip_token_a IS DISTINCT FROM l.ip_token_b)
               OR (l.device_token_b IS NOT NULL AND l.device_token_a IS DISTINCT FROM l.device_token_b));
    ELSIF p_slot = 'b' THEN
        SELECT pg_catalog.count(*) INTO missing FROM etl.logins l
        WHERE l.token_version_b IS DISTINCT FROM p_version
          AND (l.token_version_a IS NOT NULL OR l.token_version_b IS NOT NULL
               OR (l.ip_token_a IS NOT NULL AND l.ip_token_b IS DISTINCT FROM l.ip_token_a)
               OR (l.device_token_a IS NOT NULL AND l.device_token_b IS DISTINCT FROM l.device_token_a));
    ELSE
        RAISE EXCEPTION 'rows_missing_slot: unknown slot %', p_slot USING ERRCODE = '22023';
    END IF;
    RETURN missing;
END
$$;

-- A token key becoming active switches the analysts' view to its slot, whoever issues the
-- UPDATE, and only when every row carries that version there: analysts never see two versions.
CREATE FUNCTION vault.token_key_activated() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    missing bigint;
BEGIN
    missing := vault.rows_missing_slot(NEW.slot, NEW.version);
    IF missing > 0 THEN
        RAISE EXCEPTION 'token key v% cannot become active: % row(s) do not carry it yet', NEW.version, missing
            USING ERRCODE = '55000', HINT = 'run etl keys retokenize';
    END IF;
    PERFORM vault.show_token_slot(NEW.slot);
    RETURN NEW;
END
$$;
CREATE TRIGGER data_keys_token_activated AFTER UPDATE OF state ON vault.data_keys
    FOR EACH ROW WHEN (NEW.purpose = 'token' AND NEW.state = 'active' AND OLD.state <> 'active')
    EXECUTE FUNCTION vault.token_key_activated();

-- A token key inserted active or pending gets its slot from the database, never from the
-- caller: an active one the slot analysts see (and only if every row already carries its
-- version there: `keys init` on an empty table, or vault.rewrite_data_keys() putting the key
-- back), a pending one the other slot.
CREATE FUNCTION vault.assign_token_slot() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    shown text;
    missing bigint;
BEGIN
    IF NEW.purpose = 'token' AND NEW.state IN ('active', 'pending') THEN
        SELECT v.slot INTO shown FROM vault.token_view v;
        IF NEW.state = 'active' THEN
            NEW.slot := shown;
            missing := vault.rows_missing_slot(NEW.slot, NEW.version);
            IF missing > 0 THEN
                RAISE EXCEPTION 'token key v% cannot be added active: % row(s) do not carry it', NEW.version, missing
                    USING ERRCODE = '55000', HINT = 'add it pending with etl keys rotate';
            END IF;
        ELSE
            NEW.slot := CASE shown WHEN 'a' THEN 'b' ELSE 'a' END;
        END IF;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER data_keys_assign_slot BEFORE INSERT ON vault.data_keys
    FOR EACH ROW EXECUTE FUNCTION vault.assign_token_slot();

-- A page of vault rows whose analysts' row lacks the pending token key in its slot, for
-- `keys retokenize` (an open job of that login).
CREATE FUNCTION vault.job_token_fill_rows(p_job bigint, p_version integer, p_after text, p_limit bigint)
RETURNS TABLE (message_id text, user_id text, key_version integer, ip_sealed bytea,
    device_id_sealed bytea)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_slot text;
BEGIN
    PERFORM vault.job_check(p_job, ARRAY['retokenize']);
    SELECT k.slot INTO v_slot FROM vault.data_keys k
    WHERE k.purpose = 'token' AND k.version = p_version AND k.state = 'pending';
    IF v_slot IS NULL THEN
        RAISE EXCEPTION 'token key v% is not pending', p_version USING ERRCODE = '55000';
    END IF;
    RETURN QUERY
        SELECT p.message_id, p.user_id::text, p.key_version, p.ip_sealed, p.device_id_sealed
        FROM vault.login_pii p JOIN etl.logins l ON l.message_id = p.message_id
        WHERE p.message_id > p_after
          AND CASE v_slot WHEN 'a' THEN l.token_version_a ELSE l.token_version_b END
              IS DISTINCT FROM p_version
        ORDER BY p.message_id
        LIMIT p_limit;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Functions that named etl.token_next (gone) or the table (now behind the view).
CREATE OR REPLACE FUNCTION vault.job_vault_rows(p_job bigint, p_filter text, p_version integer,
    p_after text, p_limit bigint)
RETURNS TABLE (message_id text, user_id text, login_user_id text, key_version integer,
    ip_sealed bytea, device_id_sealed bytea, masked_ip text, masked_device_id text,
    token_version integer)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    shown text;
BEGIN
    PERFORM vault.job_check(p_job, ARRAY['reencrypt', 'retokenize', 'verify']);
    IF p_filter IS NULL OR p_filter NOT IN ('all', 'not_sealed_at') THEN
        RAISE EXCEPTION 'job_vault_rows: unknown filter %', p_filter USING ERRCODE = '22023';
    END IF;
    -- The table, not the view: a join through the view's UNION ALL is planned as a hash join
    -- over every row, per page. The tokens are those of the slot analysts see.
    SELECT v.slot INTO shown FROM vault.token_view v;
    RETURN QUERY
        SELECT p.message_id, p.user_id::text, u.user_id::text, p.key_version, p.ip_sealed,
               p.device_id_sealed,
               (CASE shown WHEN 'a' THEN u.ip_token_a ELSE u.ip_token_b END)::text,
               (CASE shown WHEN 'a' THEN u.device_token_a ELSE u.device_token_b END)::text,
               CASE shown WHEN 'a' THEN u.token_version_a ELSE u.token_version_b END
        FROM vault.login_pii p LEFT JOIN etl.logins u ON u.message_id = p.message_id
        WHERE p.message_id > p_after
          AND (p_filter <> 'not_sealed_at'
               OR p.key_version <> p_version
               OR pg_catalog.substr(coalesce(p.ip_sealed, p.device_id_sealed), 1, 2) <> '\xff02'::bytea)
        ORDER BY p.message_id
        LIMIT p_limit;
END
$$;

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
    WITH gone AS (DELETE FROM vault.login_pii p WHERE p.user_id = p_user_id RETURNING p.message_id)
    SELECT coalesce(pg_catalog.array_agg(gone.message_id), '{}') INTO vault_ids FROM gone;
    -- Both slots go with the row.
    DELETE FROM etl.logins l WHERE l.user_id = p_user_id;
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

CREATE OR REPLACE FUNCTION vault.lock_for_key_job(p_what text) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_what = 'user_logins' THEN
        LOCK TABLE etl.logins IN SHARE ROW EXCLUSIVE MODE;
    ELSIF p_what = 'sealed' THEN
        LOCK TABLE vault.login_pii, etl.quarantine IN SHARE ROW EXCLUSIVE MODE;
    ELSE
        RAISE EXCEPTION 'lock_for_key_job: unknown set %', p_what USING ERRCODE = '22023';
    END IF;
END
$$;

DROP TABLE etl.token_next;

-- ---------------------------------------------------------------------------------------------
-- Ownership and grants.
REVOKE ALL ON FUNCTION vault.assign_token_slot() FROM PUBLIC;
REVOKE ALL ON FUNCTION vault.show_token_slot(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION vault.rows_missing_slot(text, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION vault.token_key_activated() FROM PUBLIC;
REVOKE ALL ON FUNCTION vault.job_token_fill_rows(bigint, integer, text, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION vault.refuse_key_identity_change() FROM PUBLIC;
GRANT CREATE ON SCHEMA vault TO piivault_definer;
ALTER FUNCTION vault.assign_token_slot() OWNER TO piivault_definer;
ALTER FUNCTION vault.show_token_slot(text) OWNER TO piivault_definer;
ALTER FUNCTION vault.rows_missing_slot(text, integer) OWNER TO piivault_definer;
ALTER FUNCTION vault.token_key_activated() OWNER TO piivault_definer;
ALTER FUNCTION vault.job_token_fill_rows(bigint, integer, text, bigint) OWNER TO piivault_definer;
REVOKE CREATE ON SCHEMA vault FROM piivault_definer;

-- The definer functions read the view, the table and the shown slot.
GRANT USAGE ON SCHEMA etl TO piivault_definer;
GRANT SELECT ON public.user_logins TO piivault_definer;
GRANT SELECT, DELETE ON etl.logins TO piivault_definer;
GRANT SELECT, UPDATE ON vault.token_view TO piivault_definer;

-- Grants moved with the table; restate what each role has on it now. Analysts (and auditors,
-- who had none left) read only the view: the other slot holds a version they must not see.
REVOKE ALL ON etl.logins FROM PUBLIC, piivault_analyst, piivault_auditor;
GRANT SELECT ON public.user_logins TO piivault_analyst;
REVOKE ALL ON public.user_logins FROM PUBLIC, piivault_etl, piivault_auditor, piivault_admin;
-- Everyone may know which slot is shown (it names no value); only the triggers change it.
GRANT SELECT ON vault.token_view TO piivault_etl, piivault_admin;
-- Writers: insert both slots; ON CONFLICT (message_id) reads the key column only.
GRANT INSERT ON etl.logins TO piivault_etl;
GRANT SELECT (message_id) ON etl.logins TO piivault_etl;
-- The admin's jobs: fill and clear token slots, count versions; replay inserts.
GRANT SELECT, INSERT ON etl.logins TO piivault_admin;
GRANT UPDATE (ip_token_a, device_token_a, token_version_a, ip_token_b, device_token_b, token_version_b)
    ON etl.logins TO piivault_admin;
GRANT EXECUTE ON FUNCTION vault.job_token_fill_rows(bigint, integer, text, bigint) TO piivault_admin;
GRANT EXECUTE ON FUNCTION vault.rows_missing_slot(text, integer) TO piivault_admin;
