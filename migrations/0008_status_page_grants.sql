-- Tokens shared by several users, for `etl report duplicates` (analysts) and the status page of
-- `etl run --metrics-addr` (the ETL role). SECURITY DEFINER so the ETL role gets the groups —
-- tokens and counts — without being able to read user_logins itself: a compromised consumer
-- still cannot list user ids. Fixed SQL, pinned search_path, nothing from the caller but the
-- column choice (checked) and two numbers.
CREATE OR REPLACE FUNCTION public.shared_tokens(by_column text, min_users bigint, max_groups bigint)
RETURNS TABLE (token text, users bigint, logins bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, public
AS $$
BEGIN
    IF by_column NOT IN ('device', 'ip') THEN
        RAISE EXCEPTION 'shared_tokens: by_column must be device or ip' USING ERRCODE = '22023';
    END IF;
    RETURN QUERY
        SELECT g.token::text, count(DISTINCT g.user_id), count(*)
        FROM (SELECT CASE WHEN by_column = 'ip' THEN u.masked_ip ELSE u.masked_device_id END AS token,
                     u.user_id
              FROM public.user_logins u) g
        WHERE g.token IS NOT NULL
        GROUP BY g.token
        HAVING count(DISTINCT g.user_id) >= min_users
        ORDER BY 2 DESC, 3 DESC, 1
        LIMIT max_groups;
END
$$;
REVOKE ALL ON FUNCTION public.shared_tokens(text, bigint, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.shared_tokens(text, bigint, bigint) TO piivault_etl, piivault_analyst;
