-- Issue 19: the duplicates report and the status page read a summary of shared tokens instead
-- of grouping every row of user_logins on each read (about 2 s per million rows, so 20 s at
-- 10 M and a status page that times out). The summary is rebuilt as a whole, one session at a
-- time, by public.refresh_shared_tokens() (`etl report refresh`, a CronJob in deploy/, or
-- `etl report duplicates` when it finds it too old). It records the token key version it was
-- built for: after a token switch it serves nothing until rebuilt, so analysts never get tokens
-- of a version user_logins no longer shows. Only the definer role writes it.

CREATE TABLE etl.shared_tokens (
    by_column text NOT NULL CHECK (by_column IN ('device', 'ip')),
    token text NOT NULL,
    users bigint NOT NULL CHECK (users >= 2),
    logins bigint NOT NULL,
    PRIMARY KEY (by_column, token)
);
CREATE INDEX shared_tokens_rank_idx ON etl.shared_tokens (by_column, users DESC, logins DESC, token);
COMMENT ON TABLE etl.shared_tokens IS 'tokens seen with two or more users, as of etl.shared_tokens_state; written only by public.refresh_shared_tokens()';

CREATE TABLE etl.shared_tokens_state (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    token_version integer,
    refreshed_at timestamptz NOT NULL,
    groups bigint NOT NULL,
    seconds double precision NOT NULL
);
COMMENT ON TABLE etl.shared_tokens_state IS 'when etl.shared_tokens was built, and for which token key version';

-- The active token key's version, or NULL before `keys init`.
CREATE FUNCTION vault.active_token_version() RETURNS integer
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.max(k.version) FROM vault.data_keys k WHERE k.purpose = 'token' AND k.state = 'active'
$$;

-- Rebuilds the summary unless it is current and younger than p_max_age (NULL: always). A stale
-- summary's callers wait for a rebuild another session is running, then re-check, so concurrent
-- callers cost one scan; returns whether this call rebuilt it.
CREATE FUNCTION public.refresh_shared_tokens(p_max_age interval) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- Two sorts of every row: in memory up to about a million rows, external beyond. No JIT: it
-- compiled for over a second at a million rows and saved less.
SET work_mem = '128MB'
SET jit = off
SET enable_hashagg = off
AS $$
DECLARE
    started timestamptz := pg_catalog.clock_timestamp();
BEGIN
    -- Fresh enough: answer at once, without queueing behind a rebuild in progress. Else take
    -- the rebuild's lock and look again: the rebuild this call waited for may be enough.
    FOR pass IN 1..2 LOOP
        IF p_max_age IS NOT NULL AND EXISTS (
            SELECT 1 FROM etl.shared_tokens_state s
            WHERE s.token_version IS NOT DISTINCT FROM vault.active_token_version()
              AND s.refreshed_at > pg_catalog.clock_timestamp() - p_max_age) THEN
            RETURN false;
        END IF;
        EXIT WHEN pass = 2;
        PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('piivault.shared_tokens'));
    END LOOP;
    DELETE FROM etl.shared_tokens;
    -- One statement, one snapshot: the version recorded is the one the view showed. A sorted
    -- pass per column keeps the tokens whose first and last user differ (two users or more;
    -- bytewise order, far cheaper than count(DISTINCT) on every token); the users of those few
    -- are then counted exactly through the token indexes.
    WITH shared AS (
        SELECT 'device'::text AS by_column, u.masked_device_id COLLATE "C" AS token,
            pg_catalog.count(*) AS logins
        FROM public.user_logins u
        WHERE u.masked_device_id IS NOT NULL
        GROUP BY 2
        HAVING pg_catalog.min(u.user_id COLLATE "C") <> pg_catalog.max(u.user_id COLLATE "C")
        UNION ALL
        SELECT 'ip'::text, u.masked_ip COLLATE "C", pg_catalog.count(*)
        FROM public.user_logins u
        WHERE u.masked_ip IS NOT NULL
        GROUP BY 2
        HAVING pg_catalog.min(u.user_id COLLATE "C") <> pg_catalog.max(u.user_id COLLATE "C")),
    grouped AS (
        INSERT INTO etl.shared_tokens (by_column, token, users, logins)
        SELECT s.by_column, s.token, c.users, s.logins
        FROM shared s
        CROSS JOIN LATERAL (
            SELECT pg_catalog.count(DISTINCT u.user_id) AS users FROM public.user_logins u
            WHERE s.by_column = 'device' AND u.masked_device_id = (s.token COLLATE "default")
            UNION ALL
            SELECT pg_catalog.count(DISTINCT u.user_id) FROM public.user_logins u
            WHERE s.by_column = 'ip' AND u.masked_ip = (s.token COLLATE "default")) c
        WHERE c.users >= 2
        RETURNING 1)
    INSERT INTO etl.shared_tokens_state (only_row, token_version, refreshed_at, groups, seconds)
    SELECT true, vault.active_token_version(), started, (SELECT pg_catalog.count(*) FROM grouped),
        pg_catalog.date_part('epoch', pg_catalog.clock_timestamp() - started)
    ON CONFLICT (only_row) DO UPDATE SET token_version = excluded.token_version,
        refreshed_at = excluded.refreshed_at, groups = excluded.groups, seconds = excluded.seconds;
    RETURN true;
END
$$;

-- When the summary was built, for which token version, and whether it is the version analysts
-- see now. No row: never built.
CREATE FUNCTION public.shared_tokens_state()
RETURNS TABLE (refreshed_at timestamptz, token_version integer, current boolean, groups bigint,
    seconds double precision)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT s.refreshed_at, s.token_version,
        s.token_version IS NOT DISTINCT FROM vault.active_token_version(), s.groups, s.seconds
    FROM etl.shared_tokens_state s
$$;

-- shared_tokens() read from the summary, with its bounds (at least 2 users, at most 1,000
-- groups); nothing while the summary is of another token version.
CREATE FUNCTION public.shared_tokens_summary(by_column text, min_users bigint, max_groups bigint)
RETURNS TABLE (token text, users bigint, logins bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF by_column IS NULL OR by_column NOT IN ('device', 'ip') THEN
        RAISE EXCEPTION 'shared_tokens_summary: by_column must be device or ip' USING ERRCODE = '22023';
    END IF;
    RETURN QUERY
        SELECT g.token, g.users, g.logins
        FROM etl.shared_tokens g
        WHERE g.by_column = shared_tokens_summary.by_column
          AND g.users >= CASE WHEN min_users IS NULL OR min_users < 2 THEN 2 ELSE min_users END
          AND EXISTS (SELECT 1 FROM etl.shared_tokens_state s
                      WHERE s.token_version IS NOT DISTINCT FROM vault.active_token_version())
        ORDER BY g.users DESC, g.logins DESC, g.token
        LIMIT CASE WHEN max_groups IS NULL OR max_groups < 0 THEN 0 WHEN max_groups > 1000 THEN 1000 ELSE max_groups END;
END
$$;

-- Ownership and grants: the definer writes the summary; the ETL role and analysts call the
-- functions; nobody else writes or reads the tables directly.
REVOKE ALL ON FUNCTION vault.active_token_version() FROM PUBLIC;
REVOKE ALL ON FUNCTION public.refresh_shared_tokens(interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION public.shared_tokens_state() FROM PUBLIC;
REVOKE ALL ON FUNCTION public.shared_tokens_summary(text, bigint, bigint) FROM PUBLIC;
GRANT CREATE ON SCHEMA vault, public TO piivault_definer;
ALTER FUNCTION vault.active_token_version() OWNER TO piivault_definer;
ALTER FUNCTION public.refresh_shared_tokens(interval) OWNER TO piivault_definer;
ALTER FUNCTION public.shared_tokens_state() OWNER TO piivault_definer;
ALTER FUNCTION public.shared_tokens_summary(text, bigint, bigint) OWNER TO piivault_definer;
REVOKE CREATE ON SCHEMA vault, public FROM piivault_definer;

REVOKE ALL ON etl.shared_tokens, etl.shared_tokens_state FROM PUBLIC, piivault_etl,
    piivault_analyst, piivault_auditor, piivault_admin;
GRANT SELECT, INSERT, DELETE ON etl.shared_tokens TO piivault_definer;
GRANT SELECT, INSERT, UPDATE ON etl.shared_tokens_state TO piivault_definer;
GRANT SELECT ON vault.data_keys TO piivault_definer;
GRANT EXECUTE ON FUNCTION public.refresh_shared_tokens(interval), public.shared_tokens_state(),
    public.shared_tokens_summary(text, bigint, bigint) TO piivault_etl, piivault_analyst;
