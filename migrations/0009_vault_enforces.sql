-- The vault enforces its own rules (issue 14): reveals and audit appends go through SECURITY
-- DEFINER functions, the server computes every audit row's id, time, role and hash, and no login
-- role may write the audit table or read sealed values directly.
--
-- Every definer function pins `search_path = pg_catalog, pg_temp` and names its tables and
-- functions with their schema. Operators (`||`, `=`) are resolved through that pinned path:
-- pg_catalog is searched first and pg_temp is never searched for functions or operators, so no
-- role can shadow them.

-- A dedicated NOLOGIN role owns the definer functions and holds only what they need, instead of
-- whoever ran the migration (often a superuser).
DO $$
BEGIN
    CREATE ROLE piivault_definer NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END $$;
-- Handing a function to that role needs membership in it (a no-op for a superuser).
DO $$
BEGIN
    IF NOT pg_catalog.pg_has_role(current_user, 'piivault_definer', 'MEMBER') THEN
        EXECUTE pg_catalog.format('GRANT piivault_definer TO %I', current_user);
    END IF;
END $$;
GRANT USAGE ON SCHEMA vault TO piivault_definer;

-- ---------------------------------------------------------------------------------------------
-- The audit trail, written by the server.
ALTER TABLE vault.reveal_audit
    -- 1: row hashed by an etl client before this migration (JSON); 2: hashed by the server.
    ADD COLUMN IF NOT EXISTS chain_format smallint NOT NULL DEFAULT 1,
    -- Whose records the access concerned (distinct user ids), whatever the selector.
    ADD COLUMN IF NOT EXISTS subjects text[],
    -- SHA-256 over the message ids concerned (length-prefixed, in message-id byte order).
    ADD COLUMN IF NOT EXISTS records_digest bytea;
ALTER TABLE vault.reveal_audit ALTER COLUMN chain_format DROP DEFAULT;

-- The chain's head: one row, locked by each append so the chain has a single order. Ids come
-- from here (gapless), not from a sequence a caller could advance.
CREATE TABLE IF NOT EXISTS vault.audit_head(
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    id bigint NOT NULL,
    hash bytea NOT NULL
);
INSERT INTO vault.audit_head (id, hash)
SELECT coalesce((SELECT max(a.id) FROM vault.reveal_audit a), 0),
       coalesce((SELECT a.hash FROM vault.reveal_audit a ORDER BY a.id DESC LIMIT 1), ''::bytea)
ON CONFLICT (only_row) DO NOTHING;

-- One length-prefixed field of a row's hash input: 4-byte big-endian length, then UTF-8 bytes;
-- NULL is length -1. `etl audit verify` recomputes exactly this (src/crypto/chain.rs).
CREATE OR REPLACE FUNCTION vault.audit_field(v text) RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN v IS NULL THEN '\xffffffff'::bytea
                ELSE pg_catalog.int4send(pg_catalog.octet_length(pg_catalog.convert_to(v, 'UTF8')))
                     || pg_catalog.convert_to(v, 'UTF8') END
$$;

-- The hash of one format-2 row.
CREATE OR REPLACE FUNCTION vault.audit_row_hash(
    prev bytea, id bigint, at timestamptz, db_role text, actor text, action text, selector text,
    user_id text, ticket text, reason text, records integer, subjects text[], records_digest bytea)
RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.sha256(
        prev
        || vault.audit_field('piivault-audit-2')
        || vault.audit_field(id::text)
        || vault.audit_field((pg_catalog.extract('epoch', at) * 1000000)::bigint::text)
        || vault.audit_field(db_role)
        || vault.audit_field(actor)
        || vault.audit_field(action)
        || vault.audit_field(selector)
        || vault.audit_field(user_id)
        || vault.audit_field(ticket)
        || vault.audit_field(reason)
        || vault.audit_field(records::text)
        || CASE WHEN subjects IS NULL THEN vault.audit_field(NULL)
                ELSE vault.audit_field(pg_catalog.cardinality(subjects)::text)
                     || coalesce((SELECT pg_catalog.string_agg(vault.audit_field(s.v), ''::bytea ORDER BY s.o)
                                  FROM pg_catalog.unnest(subjects) WITH ORDINALITY AS s(v, o)), ''::bytea)
           END
        || vault.audit_field(pg_catalog.encode(records_digest, 'hex')))
$$;

-- The digest of a set of message ids: SHA-256 over their length-prefixed forms in byte order.
CREATE OR REPLACE FUNCTION vault.records_digest(ids text[]) RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.sha256(coalesce(
        (SELECT pg_catalog.string_agg(vault.audit_field(i.v), ''::bytea ORDER BY i.v COLLATE "C")
         FROM pg_catalog.unnest(ids) AS i(v)), ''::bytea))
$$;

-- Appends one chained row; the server sets id, time, database role and hashes. Callers choose
-- only what they did and why. Executable by no login role: the definer functions that do what a
-- row records call it. It waits at most lock_timeout for the head, so a transaction left open
-- cannot stall every audited statement; a reason of only whitespace is refused.
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

-- A free-standing append for the tables' owner (e.g. to record an outside event). Granted to no
-- login role: rows come with what they record, never on their own. Never for `reveal`.
CREATE OR REPLACE FUNCTION vault.audit_append(
    p_action text, p_selector text, p_user_id text, p_ticket text, p_reason text, p_actor text,
    p_records integer, p_subjects text[], p_digest bytea)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_action = 'reveal' THEN
        RAISE EXCEPTION 'a reveal is recorded by vault.reveal_request() only' USING ERRCODE = '42501';
    END IF;
    RETURN vault.audit_write(p_action, p_selector, p_user_id, p_ticket, p_reason, p_actor,
        p_records, p_subjects, p_digest);
END
$$;

-- Append-only, for every role but the definer's own inserts. The table owner can still disable
-- these triggers (ALTER TABLE ... DISABLE TRIGGER, or session_replication_role as a superuser);
-- `etl audit verify` then shows the edit (SECURITY.md, "Reveal, audit and erasure").
CREATE OR REPLACE FUNCTION vault.audit_refuse_change() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP = 'INSERT' AND current_user = 'piivault_definer' THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'vault.% is append-only and written by vault.audit_write(): % refused',
        TG_TABLE_NAME, TG_OP USING ERRCODE = '42501';
END
$$;
DROP TRIGGER IF EXISTS reveal_audit_append_only ON vault.reveal_audit;
CREATE TRIGGER reveal_audit_append_only BEFORE INSERT OR UPDATE OR DELETE ON vault.reveal_audit
    FOR EACH ROW EXECUTE FUNCTION vault.audit_refuse_change();
DROP TRIGGER IF EXISTS reveal_audit_no_truncate ON vault.reveal_audit;
CREATE TRIGGER reveal_audit_no_truncate BEFORE TRUNCATE ON vault.reveal_audit
    FOR EACH STATEMENT EXECUTE FUNCTION vault.audit_refuse_change();

-- ---------------------------------------------------------------------------------------------
-- Reveal: the only way to read sealed values, in two statements and two transactions.
-- reveal_request() commits the audit row (who, why, whose records, a digest of which) and a
-- single-use grant; reveal_rows() serves only a grant committed before the current transaction
-- began (granted_at < now()), so `BEGIN; request; read; ROLLBACK` reads nothing.
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

-- ---------------------------------------------------------------------------------------------
-- shared_tokens(), hardened: pinned path, qualified names, owned by the definer role, and it
-- never lists a token seen with a single user (min_users >= 2) or more than 1,000 groups.
CREATE OR REPLACE FUNCTION public.shared_tokens(by_column text, min_users bigint, max_groups bigint)
RETURNS TABLE (token text, users bigint, logins bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF by_column IS NULL OR by_column NOT IN ('device', 'ip') THEN
        RAISE EXCEPTION 'shared_tokens: by_column must be device or ip' USING ERRCODE = '22023';
    END IF;
    RETURN QUERY
        SELECT g.token::text, pg_catalog.count(DISTINCT g.user_id), pg_catalog.count(*)
        FROM (SELECT CASE WHEN by_column = 'ip' THEN u.masked_ip ELSE u.masked_device_id END AS token,
                     u.user_id
              FROM public.user_logins u) g
        WHERE g.token IS NOT NULL
        GROUP BY g.token
        HAVING pg_catalog.count(DISTINCT g.user_id) >= CASE WHEN min_users IS NULL OR min_users < 2 THEN 2 ELSE min_users END
        ORDER BY 2 DESC, 3 DESC, 1
        LIMIT CASE WHEN max_groups IS NULL OR max_groups < 0 THEN 0 WHEN max_groups > 1000 THEN 1000 ELSE max_groups END;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Ownership and grants. Functions are executable by PUBLIC by default: revoke that first.
REVOKE ALL ON FUNCTION vault.audit_write(text, text, text, text, text, text, integer, text[], bytea) FROM PUBLIC;
REVOKE ALL ON FUNCTION vault.audit_append(text, text, text, text, text, text, integer, text[], bytea) FROM PUBLIC;
REVOKE ALL ON FUNCTION vault.reveal_request(text, text, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION vault.reveal_rows(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION public.shared_tokens(text, bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION vault.audit_refuse_change() FROM PUBLIC;
-- A new owner needs CREATE on the function's schema at the moment of the change (unless a
-- superuser runs this); it keeps none afterwards.
GRANT CREATE ON SCHEMA vault, public TO piivault_definer;
ALTER FUNCTION vault.audit_write(text, text, text, text, text, text, integer, text[], bytea) OWNER TO piivault_definer;
ALTER FUNCTION vault.audit_append(text, text, text, text, text, text, integer, text[], bytea) OWNER TO piivault_definer;
ALTER FUNCTION vault.reveal_request(text, text, text, text, text) OWNER TO piivault_definer;
ALTER FUNCTION vault.reveal_rows(bigint) OWNER TO piivault_definer;
ALTER FUNCTION public.shared_tokens(text, bigint, bigint) OWNER TO piivault_definer;
REVOKE CREATE ON SCHEMA vault, public FROM piivault_definer;

-- What the definer functions read and write, and nothing else.
GRANT SELECT ON vault.login_pii TO piivault_definer;
GRANT SELECT (message_id, user_id, masked_ip, masked_device_id) ON public.user_logins TO piivault_definer;
GRANT INSERT ON vault.reveal_audit TO piivault_definer;
GRANT SELECT, UPDATE ON vault.audit_head TO piivault_definer;

-- Nobody writes the trail directly or advances its old sequence; nobody but the owner (and the
-- definer functions) reads sealed values.
REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON vault.reveal_audit FROM PUBLIC, piivault_etl,
    piivault_analyst, piivault_auditor, piivault_admin;
REVOKE ALL ON SEQUENCE vault.reveal_audit_id_seq FROM PUBLIC, piivault_auditor, piivault_admin;
REVOKE ALL ON vault.audit_head FROM PUBLIC;
REVOKE SELECT ON vault.login_pii FROM piivault_auditor;
-- The auditor found token groups in user_logins for --token; vault.reveal_request() does now.
REVOKE SELECT ON public.user_logins FROM piivault_auditor;

GRANT SELECT ON vault.audit_head TO piivault_auditor;
GRANT EXECUTE ON FUNCTION vault.reveal_request(text, text, text, text, text),
    vault.reveal_rows(bigint) TO piivault_auditor;
GRANT EXECUTE ON FUNCTION public.shared_tokens(text, bigint, bigint) TO piivault_etl, piivault_analyst;
