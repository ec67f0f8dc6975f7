-- Reveal governance (issue 16), enforced here for any client:
-- - every reveal names a purpose from a fixed list, restricted per deployment;
-- - a policy (set by the key admin, audited) limits the distinct users one login reveals per
--   rolling window and the records one reveal returns; a refusal is itself an audit row;
-- - purposes may need a second person: a request, approved by another login (session_user),
--   executed once by its requester within a time to live.
-- Audit rows gain purpose, request id and a note; they are hashed in chain format 3
-- (the format-2 hash, extended by those three fields).

DO $$
BEGIN
    CREATE ROLE piivault_approver NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END $$;
GRANT USAGE ON SCHEMA vault TO piivault_approver;

ALTER TABLE vault.reveal_audit
    ADD COLUMN IF NOT EXISTS purpose text,
    ADD COLUMN IF NOT EXISTS request_id bigint,
    ADD COLUMN IF NOT EXISTS note text;
-- The quota looks back over one login's reveals.
CREATE INDEX IF NOT EXISTS reveal_audit_reveals_by_role ON vault.reveal_audit (db_role, at)
    WHERE action = 'reveal';

-- The purposes piivault knows. A deployment allows a subset (vault.reveal_policy.purposes).
CREATE OR REPLACE FUNCTION vault.known_purposes() RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT ARRAY['fraud-investigation', 'data-subject-request', 'legal-request',
                 'security-incident', 'customer-support', 'other']::text[]
$$;

-- One row: the deployment's reveal policy. Read by auditors, approvers and the admin; changed
-- only through vault.policy_set(), which audits the change.
CREATE TABLE IF NOT EXISTS vault.reveal_policy(
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    purposes text[] NOT NULL,
    users_per_window integer NOT NULL CHECK (users_per_window BETWEEN 1 AND 1000000),
    window_hours integer NOT NULL CHECK (window_hours BETWEEN 1 AND 8760),
    records_per_reveal integer NOT NULL CHECK (records_per_reveal BETWEEN 1 AND 10000000),
    two_person text[] NOT NULL,
    request_ttl_hours integer NOT NULL CHECK (request_ttl_hours BETWEEN 1 AND 720),
    CHECK (pg_catalog.cardinality(purposes) > 0 AND purposes <@ vault.known_purposes()),
    CHECK (two_person <@ purposes)
);
INSERT INTO vault.reveal_policy
VALUES (true, vault.known_purposes(), 50, 24, 10000, '{}', 24)
ON CONFLICT (only_row) DO NOTHING;
REVOKE ALL ON vault.reveal_policy FROM PUBLIC;
GRANT SELECT ON vault.reveal_policy TO piivault_auditor, piivault_approver, piivault_admin;

-- Requests under the two-person rule. The id is the audit id of the request's own row.
CREATE TABLE IF NOT EXISTS vault.reveal_requests(
    id bigint PRIMARY KEY,
    requested_by text NOT NULL,
    selector text NOT NULL,
    value text NOT NULL,
    purpose text NOT NULL,
    reason text NOT NULL,
    ticket text,
    records integer NOT NULL,
    requested_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    approved_by text,
    approved_at timestamptz,
    executed_at timestamptz
);
REVOKE ALL ON vault.reveal_requests FROM PUBLIC;

-- The hash of one format-3 row: the format-2 hash of its common fields, then the new ones.
CREATE OR REPLACE FUNCTION vault.audit_row_hash_v3(
    prev bytea, id bigint, at timestamptz, db_role text, actor text, action text, selector text,
    user_id text, ticket text, reason text, records integer, subjects text[], records_digest bytea,
    purpose text, request_id bigint, note text)
RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.sha256(
        vault.audit_row_hash(prev, id, at, db_role, actor, action, selector, user_id, ticket,
                             reason, records, subjects, records_digest)
        || vault.audit_field('piivault-audit-3')
        || vault.audit_field(purpose)
        || vault.audit_field(request_id::text)
        || vault.audit_field(note))
$$;

-- Appends one chained row (format 3); the server sets id, time, database role and hashes.
-- Executable by no login role. Reason rules as before; `note` says why a request was refused.
CREATE OR REPLACE FUNCTION vault.audit_record(
    p_action text, p_selector text, p_user_id text, p_ticket text, p_reason text, p_actor text,
    p_records integer, p_subjects text[], p_digest bytea, p_purpose text, p_request bigint,
    p_note text)
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
        ('reveal', 'erase', 'reencrypt', 'retokenize', 'verify', 'replay', 'retire', 'rewrap',
         'reveal-refused', 'reveal-request', 'reveal-approve', 'policy') THEN
        RAISE EXCEPTION 'audit action % is not one piivault records', p_action USING ERRCODE = '22023';
    END IF;
    IF p_reason IS NULL
       OR pg_catalog.char_length(pg_catalog.regexp_replace(p_reason, '^\s+|\s+$', '', 'g')) < 8 THEN
        RAISE EXCEPTION 'an audited access needs a reason of at least 8 characters' USING ERRCODE = '22023';
    END IF;
    IF pg_catalog.octet_length(p_reason) > 4096 OR pg_catalog.octet_length(p_selector) > 4096
       OR pg_catalog.octet_length(p_ticket) > 256 OR pg_catalog.octet_length(p_actor) > 256
       OR pg_catalog.octet_length(p_note) > 4096 THEN
        RAISE EXCEPTION 'an audit field is too long (reason, selector and note 4096 bytes, ticket and actor 256)'
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
    new_hash := vault.audit_row_hash_v3(head.hash, new_id, new_at, session_user::text,
        coalesce(p_actor, 'unknown'), p_action, p_selector, p_user_id, p_ticket, p_reason,
        p_records, p_subjects, p_digest, p_purpose, p_request, p_note);
    INSERT INTO vault.reveal_audit (id, at, db_role, actor, action, selector, user_id, ticket,
        reason, records, subjects, records_digest, prev_hash, hash, chain_format, purpose,
        request_id, note)
    VALUES (new_id, new_at, session_user::text, coalesce(p_actor, 'unknown'), p_action, p_selector,
        p_user_id, p_ticket, p_reason, p_records, p_subjects, p_digest, head.hash, new_hash, 3,
        p_purpose, p_request, p_note);
    UPDATE vault.audit_head SET id = new_id, hash = new_hash WHERE only_row;
    RETURN new_id;
END
$$;

-- The older entry point, used by erasure, key jobs and the key-table trigger: same rules, no
-- purpose. Every row is format 3 from now on.
CREATE OR REPLACE FUNCTION vault.audit_write(
    p_action text, p_selector text, p_user_id text, p_ticket text, p_reason text, p_actor text,
    p_records integer, p_subjects text[], p_digest bytea)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_action LIKE 'reveal%' OR p_action = 'policy' THEN
        RAISE EXCEPTION 'audit action % is recorded by its own vault function only', p_action
            USING ERRCODE = '42501';
    END IF;
    RETURN vault.audit_record(p_action, p_selector, p_user_id, p_ticket, p_reason, p_actor,
        p_records, p_subjects, p_digest, NULL, NULL, NULL);
END
$$;

-- The records a selector names that have a vault row, the distinct users they belong to
-- (sorted), and their digest. Not granted: the definer functions below call it.
CREATE OR REPLACE FUNCTION vault.reveal_select(p_selector text, p_value text,
    OUT ids text[], OUT users text[], OUT digest bytea)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
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
    SELECT coalesce(pg_catalog.array_agg(p.message_id), '{}'::text[]),
           coalesce(pg_catalog.array_agg(DISTINCT p.user_id::text), '{}'::text[])
        INTO ids, users
    FROM vault.login_pii p WHERE p.message_id = ANY (coalesce(ids, '{}'::text[]));
    SELECT coalesce(pg_catalog.array_agg(u ORDER BY u), '{}'::text[]) INTO users
    FROM pg_catalog.unnest(users) AS u;
    digest := vault.records_digest(ids);
END
$$;

-- Input rules every reveal path shares: a known purpose, and for `other` a longer reason.
CREATE OR REPLACE FUNCTION vault.reveal_check_input(p_purpose text, p_reason text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_purpose IS NULL OR NOT (p_purpose = ANY (vault.known_purposes())) THEN
        RAISE EXCEPTION 'reveal purpose must be one of %', pg_catalog.array_to_string(vault.known_purposes(), ', ')
            USING ERRCODE = '22023';
    END IF;
    IF p_purpose = 'other'
       AND pg_catalog.char_length(pg_catalog.regexp_replace(coalesce(p_reason, ''), '^\s+|\s+$', '', 'g')) < 40 THEN
        RAISE EXCEPTION 'purpose other needs a reason of at least 40 characters' USING ERRCODE = '22023';
    END IF;
END
$$;

-- Why the policy refuses this reveal by session_user, or NULL when it allows it.
CREATE OR REPLACE FUNCTION vault.reveal_refusal(p_purpose text, p_users text[], p_records integer,
    p_approved boolean)
RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    pol vault.reveal_policy%ROWTYPE;
    distinct_users bigint;
BEGIN
    SELECT * INTO pol FROM vault.reveal_policy WHERE only_row;
    IF NOT (p_purpose = ANY (pol.purposes)) THEN
        RETURN pg_catalog.format('purpose %s is not allowed in this deployment (allowed: %s)',
            p_purpose, pg_catalog.array_to_string(pol.purposes, ', '));
    END IF;
    IF p_purpose = ANY (pol.two_person) AND NOT p_approved THEN
        RETURN pg_catalog.format('purpose %s needs a request approved by another login (etl reveal request, then etl reveal approve)',
            p_purpose);
    END IF;
    IF p_records > pol.records_per_reveal THEN
        RETURN pg_catalog.format('the reveal selects %s records; the policy allows %s per reveal (records_per_reveal)',
            p_records, pol.records_per_reveal);
    END IF;
    SELECT pg_catalog.count(DISTINCT s.u) INTO distinct_users
    FROM (SELECT pg_catalog.unnest(a.subjects) AS u FROM vault.reveal_audit a
          WHERE a.action = 'reveal' AND a.db_role = session_user::text
            AND a.at > pg_catalog.now() - pg_catalog.make_interval(hours => pol.window_hours)
          UNION ALL
          SELECT pg_catalog.unnest(p_users)) AS s;
    IF distinct_users > pol.users_per_window THEN
        RETURN pg_catalog.format('this login would have revealed %s distinct users in %s h; the policy allows %s (users_per_window)',
            distinct_users, pol.window_hours, pol.users_per_window);
    END IF;
    RETURN NULL;
END
$$;

-- Records the reveal (or its refusal) and grants its rows to this login, once; see 0009 for
-- the two-transaction design. A refusal is committed like a reveal: it returns normally, with
-- `refused` set and no grant.
CREATE OR REPLACE FUNCTION vault.reveal_grant(p_selector text, p_value text, p_purpose text,
    p_reason text, p_ticket text, p_actor text, p_request bigint)
RETURNS TABLE (audit_id bigint, records integer, refused text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '5s'
AS $$
DECLARE
    sel record;
    refusal text;
    new_id bigint;
    uid text := CASE WHEN p_selector = 'user_id' THEN p_value END;
BEGIN
    -- Counting and recording must not interleave with another reveal: without this lock, one
    -- login running many reveals at once would pass the quota in each before any was recorded.
    -- audit_record takes the same lock; each statement after it sees every committed reveal.
    -- Every entry point here waits at most lock_timeout (5 s, then 55P03, exit 75) for it.
    PERFORM 1 FROM vault.audit_head h WHERE h.only_row FOR UPDATE;
    SELECT * INTO sel FROM vault.reveal_select(p_selector, p_value);
    refusal := vault.reveal_refusal(p_purpose, sel.users, pg_catalog.cardinality(sel.ids),
        p_request IS NOT NULL);
    IF refusal IS NOT NULL THEN
        new_id := vault.audit_record('reveal-refused', p_selector || '=' || p_value, uid, p_ticket,
            p_reason, p_actor, pg_catalog.cardinality(sel.ids), sel.users, sel.digest, p_purpose,
            p_request, refusal);
        RETURN QUERY SELECT new_id, 0, refusal;
        RETURN;
    END IF;
    new_id := vault.audit_record('reveal', p_selector || '=' || p_value, uid, p_ticket, p_reason,
        p_actor, pg_catalog.cardinality(sel.ids), sel.users, sel.digest, p_purpose, p_request, NULL);
    INSERT INTO vault.reveal_grants (audit_id, db_role, ids) VALUES (new_id, session_user::text, sel.ids);
    RETURN QUERY SELECT new_id, pg_catalog.cardinality(sel.ids), NULL::text;
END
$$;

-- A direct reveal (no second person): for purposes the policy does not put under the rule.
DROP FUNCTION IF EXISTS vault.reveal_request(text, text, text, text, text);
CREATE OR REPLACE FUNCTION vault.reveal_request(p_selector text, p_value text, p_purpose text,
    p_reason text, p_ticket text, p_actor text)
RETURNS TABLE (audit_id bigint, records integer, refused text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '5s'
AS $$
BEGIN
    PERFORM vault.reveal_check_input(p_purpose, p_reason);
    RETURN QUERY SELECT * FROM vault.reveal_grant(p_selector, p_value, p_purpose, p_reason,
        p_ticket, p_actor, NULL);
END
$$;

-- Asks for a reveal under the two-person rule: an audit row and a pending request, nothing
-- revealed. Returns the request id.
CREATE OR REPLACE FUNCTION vault.reveal_ask(p_selector text, p_value text, p_purpose text,
    p_reason text, p_ticket text, p_actor text)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '5s'
AS $$
DECLARE
    sel record;
    new_id bigint;
    ttl integer;
BEGIN
    PERFORM vault.reveal_check_input(p_purpose, p_reason);
    SELECT * INTO sel FROM vault.reveal_select(p_selector, p_value);
    new_id := vault.audit_record('reveal-request', p_selector || '=' || p_value,
        CASE WHEN p_selector = 'user_id' THEN p_value END, p_ticket, p_reason, p_actor,
        pg_catalog.cardinality(sel.ids), sel.users, sel.digest, p_purpose, NULL, NULL);
    SELECT p.request_ttl_hours INTO ttl FROM vault.reveal_policy p WHERE p.only_row;
    INSERT INTO vault.reveal_requests (id, requested_by, selector, value, purpose, reason, ticket,
        records, requested_at, expires_at)
    VALUES (new_id, session_user::text, p_selector, p_value, p_purpose, p_reason, p_ticket,
        pg_catalog.cardinality(sel.ids), pg_catalog.now(),
        pg_catalog.now() + pg_catalog.make_interval(hours => ttl));
    RETURN new_id;
END
$$;

-- Approves another login's pending request. The database compares session_user, the login
-- that authenticated (SET ROLE does not change it): a requester never approves their own.
-- A refused approval is an audit row too (returned in `refused`).
CREATE OR REPLACE FUNCTION vault.reveal_approve(p_request bigint, p_reason text, p_actor text)
RETURNS TABLE (audit_id bigint, refused text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '5s'
AS $$
DECLARE
    req vault.reveal_requests%ROWTYPE;
    refusal text;
    new_id bigint;
BEGIN
    SELECT * INTO req FROM vault.reveal_requests r WHERE r.id = p_request FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'reveal request % does not exist', p_request USING ERRCODE = '22023';
    END IF;
    IF NOT (pg_catalog.pg_has_role(session_user, 'piivault_approver', 'MEMBER')
            OR pg_catalog.pg_has_role(session_user, 'piivault_auditor', 'MEMBER')) THEN
        refusal := 'only a login holding piivault_approver or piivault_auditor may approve';
    ELSIF req.requested_by = session_user::text THEN
        refusal := 'a requester cannot approve their own request (two-person rule)';
    ELSIF req.approved_at IS NOT NULL THEN
        refusal := pg_catalog.format('request %s was already approved by %s', req.id, req.approved_by);
    ELSIF req.executed_at IS NOT NULL THEN
        refusal := pg_catalog.format('request %s was already executed', req.id);
    ELSIF req.expires_at <= pg_catalog.now() THEN
        refusal := pg_catalog.format('request %s expired at %s', req.id, req.expires_at);
    END IF;
    new_id := vault.audit_record(CASE WHEN refusal IS NULL THEN 'reveal-approve' ELSE 'reveal-refused' END,
        req.selector || '=' || req.value,
        CASE WHEN req.selector = 'user_id' THEN req.value END, req.ticket, p_reason, p_actor, 0,
        NULL, NULL, req.purpose, req.id, refusal);
    IF refusal IS NULL THEN
        UPDATE vault.reveal_requests SET approved_by = session_user::text, approved_at = pg_catalog.now()
        WHERE id = req.id;
    END IF;
    RETURN QUERY SELECT new_id, refusal;
END
$$;

-- Executes an approved request, once, by its requester, before it expires; the quotas apply.
-- Then vault.reveal_rows() serves the records, as for a direct reveal.
CREATE OR REPLACE FUNCTION vault.reveal_execute(p_request bigint, p_actor text)
RETURNS TABLE (audit_id bigint, records integer, refused text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '5s'
AS $$
DECLARE
    req vault.reveal_requests%ROWTYPE;
    refusal text;
    new_id bigint;
    granted record;
BEGIN
    SELECT * INTO req FROM vault.reveal_requests r WHERE r.id = p_request FOR UPDATE;
    IF NOT FOUND OR req.requested_by <> session_user::text THEN
        RAISE EXCEPTION 'reveal request % is not a request of this login', p_request
            USING ERRCODE = '42501';
    END IF;
    IF req.approved_at IS NULL THEN
        refusal := pg_catalog.format('request %s is not approved yet', req.id);
    ELSIF req.executed_at IS NOT NULL THEN
        refusal := pg_catalog.format('request %s was already executed at %s', req.id, req.executed_at);
    ELSIF req.expires_at <= pg_catalog.now() THEN
        refusal := pg_catalog.format('request %s expired at %s', req.id, req.expires_at);
    END IF;
    IF refusal IS NOT NULL THEN
        new_id := vault.audit_record('reveal-refused', req.selector || '=' || req.value,
            CASE WHEN req.selector = 'user_id' THEN req.value END, req.ticket, req.reason, p_actor,
            0, NULL, NULL, req.purpose, req.id, refusal);
        RETURN QUERY SELECT new_id, 0, refusal;
        RETURN;
    END IF;
    SELECT * INTO granted FROM vault.reveal_grant(req.selector, req.value, req.purpose,
        req.reason, req.ticket, p_actor, req.id);
    -- A request refused by a quota stays approved: it may run once the window has room.
    IF granted.refused IS NULL THEN
        UPDATE vault.reveal_requests SET executed_at = pg_catalog.now() WHERE id = req.id;
    END IF;
    RETURN QUERY SELECT granted.audit_id, granted.records, granted.refused;
END
$$;

-- Pending requests (not executed, not expired), for requesters and approvers.
CREATE OR REPLACE FUNCTION vault.reveal_pending()
RETURNS TABLE (id bigint, requested_by text, selector text, value text, purpose text,
    reason text, ticket text, records integer, requested_at timestamptz, expires_at timestamptz,
    approved_by text, approved_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT r.id, r.requested_by, r.selector, r.value, r.purpose, r.reason, r.ticket, r.records,
           r.requested_at, r.expires_at, r.approved_by, r.approved_at
    FROM vault.reveal_requests r
    WHERE r.executed_at IS NULL AND r.expires_at > pg_catalog.now()
    ORDER BY r.id
$$;

-- Changes the policy (NULL keeps a setting) and audits the change with the new policy as note.
CREATE OR REPLACE FUNCTION vault.policy_set(p_purposes text[], p_users_per_window integer,
    p_window_hours integer, p_records_per_reveal integer, p_two_person text[],
    p_request_ttl_hours integer, p_reason text, p_actor text)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '5s'
AS $$
DECLARE
    pol vault.reveal_policy%ROWTYPE;
BEGIN
    UPDATE vault.reveal_policy SET
        purposes = coalesce(p_purposes, purposes),
        users_per_window = coalesce(p_users_per_window, users_per_window),
        window_hours = coalesce(p_window_hours, window_hours),
        records_per_reveal = coalesce(p_records_per_reveal, records_per_reveal),
        two_person = coalesce(p_two_person, two_person),
        request_ttl_hours = coalesce(p_request_ttl_hours, request_ttl_hours)
    WHERE only_row
    RETURNING * INTO pol;
    RETURN vault.audit_record('policy', NULL, NULL, NULL, p_reason, p_actor, 0, NULL, NULL, NULL,
        NULL, pg_catalog.format('purposes=%s users_per_window=%s window_hours=%s records_per_reveal=%s two_person=%s request_ttl_hours=%s',
            pg_catalog.array_to_string(pol.purposes, ','), pol.users_per_window, pol.window_hours,
            pol.records_per_reveal, pg_catalog.array_to_string(pol.two_person, ','),
            pol.request_ttl_hours));
END
$$;

-- Ownership and grants: revoke PUBLIC's default EXECUTE first.
REVOKE ALL ON FUNCTION vault.audit_row_hash_v3(bytea, bigint, timestamptz, text, text, text, text, text, text, text, integer, text[], bytea, text, bigint, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION vault.audit_record(text, text, text, text, text, text, integer, text[], bytea, text, bigint, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION vault.reveal_select(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION vault.reveal_check_input(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION vault.reveal_refusal(text, text[], integer, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION vault.reveal_grant(text, text, text, text, text, text, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION vault.reveal_request(text, text, text, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION vault.reveal_ask(text, text, text, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION vault.reveal_approve(bigint, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION vault.reveal_execute(bigint, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION vault.reveal_pending() FROM PUBLIC;
REVOKE ALL ON FUNCTION vault.policy_set(text[], integer, integer, integer, text[], integer, text, text) FROM PUBLIC;

GRANT CREATE ON SCHEMA vault TO piivault_definer;
ALTER FUNCTION vault.audit_row_hash_v3(bytea, bigint, timestamptz, text, text, text, text, text, text, text, integer, text[], bytea, text, bigint, text) OWNER TO piivault_definer;
ALTER FUNCTION vault.audit_record(text, text, text, text, text, text, integer, text[], bytea, text, bigint, text) OWNER TO piivault_definer;
ALTER FUNCTION vault.reveal_select(text, text) OWNER TO piivault_definer;
ALTER FUNCTION vault.reveal_check_input(text, text) OWNER TO piivault_definer;
ALTER FUNCTION vault.reveal_refusal(text, text[], integer, boolean) OWNER TO piivault_definer;
ALTER FUNCTION vault.reveal_grant(text, text, text, text, text, text, bigint) OWNER TO piivault_definer;
ALTER FUNCTION vault.reveal_request(text, text, text, text, text, text) OWNER TO piivault_definer;
ALTER FUNCTION vault.reveal_ask(text, text, text, text, text, text) OWNER TO piivault_definer;
ALTER FUNCTION vault.reveal_approve(bigint, text, text) OWNER TO piivault_definer;
ALTER FUNCTION vault.reveal_execute(bigint, text) OWNER TO piivault_definer;
ALTER FUNCTION vault.reveal_pending() OWNER TO piivault_definer;
ALTER FUNCTION vault.policy_set(text[], integer, integer, integer, text[], integer, text, text) OWNER TO piivault_definer;
ALTER FUNCTION vault.known_purposes() OWNER TO piivault_definer;
REVOKE CREATE ON SCHEMA vault FROM piivault_definer;

GRANT SELECT, UPDATE ON vault.reveal_policy TO piivault_definer;
GRANT SELECT, INSERT, UPDATE ON vault.reveal_requests TO piivault_definer;
GRANT SELECT ON vault.reveal_audit TO piivault_definer;
-- (piivault_definer already holds SELECT, UPDATE on vault.audit_head since 0009.)

GRANT EXECUTE ON FUNCTION vault.reveal_request(text, text, text, text, text, text),
    vault.reveal_ask(text, text, text, text, text, text),
    vault.reveal_execute(bigint, text) TO piivault_auditor;
GRANT EXECUTE ON FUNCTION vault.reveal_approve(bigint, text, text),
    vault.reveal_pending() TO piivault_auditor, piivault_approver;
GRANT EXECUTE ON FUNCTION vault.policy_set(text[], integer, integer, integer, text[], integer, text, text)
    TO piivault_admin;
