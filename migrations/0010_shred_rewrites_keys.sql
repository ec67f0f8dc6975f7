-- Shredding that happens (issue 14): `keys retire` and `keys rewrap` overwrite wrapped keys, but
-- an UPDATE leaves the old row version in the table's pages, and VACUUM by a login that does not
-- own the table only warns. This function rewrites the (tiny) key table into a fresh file in the
-- caller's transaction: TRUNCATE gives the table a new file and the old one is emptied at commit,
-- so no destroyed or superseded wrapped key stays in the live table's files. Copies in WAL,
-- replicas and backups remain until they expire (SECURITY.md).
CREATE OR REPLACE FUNCTION vault.rewrite_data_keys() RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    saved vault.data_keys[];
    kept integer;
BEGIN
    SELECT pg_catalog.array_agg(k) INTO saved FROM vault.data_keys k;
    TRUNCATE vault.data_keys;
    INSERT INTO vault.data_keys SELECT * FROM pg_catalog.unnest(coalesce(saved, '{}'));
    GET DIAGNOSTICS kept = ROW_COUNT;
    RETURN kept;
END
$$;

-- Destroying or replacing wrapped key material is audited, whoever issues the UPDATE.
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
                 ELSE pg_catalog.format('wrapped key replaced (kek %s)', NEW.kek_uri) END,
            NULL, 0, NULL, NULL);
    END IF;
    RETURN NEW;
END
$$;
DROP TRIGGER IF EXISTS data_keys_audit ON vault.data_keys;
CREATE TRIGGER data_keys_audit AFTER UPDATE ON vault.data_keys
    FOR EACH ROW EXECUTE FUNCTION vault.audit_key_change();

REVOKE ALL ON FUNCTION vault.rewrite_data_keys() FROM PUBLIC;
REVOKE ALL ON FUNCTION vault.audit_key_change() FROM PUBLIC;
GRANT CREATE ON SCHEMA vault TO piivault_definer;
ALTER FUNCTION vault.rewrite_data_keys() OWNER TO piivault_definer;
ALTER FUNCTION vault.audit_key_change() OWNER TO piivault_definer;
REVOKE CREATE ON SCHEMA vault FROM piivault_definer;
GRANT SELECT, INSERT, TRUNCATE ON vault.data_keys TO piivault_definer;
GRANT EXECUTE ON FUNCTION vault.rewrite_data_keys() TO piivault_admin;
