-- Issue 19: vault.rewrite_data_keys() (retire, rewrap) truncates vault.data_keys and inserts
-- every key back, holding an ACCESS EXCLUSIVE lock on the key table that every writer's key
-- check waits for. Each re-inserted active token key went through assign_token_slot(), whose
-- rows_missing_slot() scans etl.logins: seconds at 10 M rows, with every writer blocked. A key
-- that function puts back was already there (same purpose, version and state: identities
-- never change), so the scan is skipped for its inserts. The function marks its own transaction
-- in a table only the definer role writes; no other insert can claim the mark.

CREATE TABLE vault.key_rewrites (txid xid8 PRIMARY KEY);
COMMENT ON TABLE vault.key_rewrites IS 'transactions inside vault.rewrite_data_keys(): their re-inserted keys skip the slot scan';
REVOKE ALL ON vault.key_rewrites FROM PUBLIC, piivault_etl, piivault_analyst, piivault_auditor,
    piivault_approver, piivault_admin;
GRANT SELECT, INSERT, DELETE ON vault.key_rewrites TO piivault_definer;

CREATE OR REPLACE FUNCTION vault.rewrite_data_keys() RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    saved vault.data_keys[];
    kept integer;
BEGIN
    INSERT INTO vault.key_rewrites (txid) VALUES (pg_catalog.pg_current_xact_id())
        ON CONFLICT DO NOTHING;
    SELECT pg_catalog.array_agg(k) INTO saved FROM vault.data_keys k;
    TRUNCATE vault.data_keys;
    INSERT INTO vault.data_keys SELECT * FROM pg_catalog.unnest(coalesce(saved, '{}'));
    GET DIAGNOSTICS kept = ROW_COUNT;
    DELETE FROM vault.key_rewrites r WHERE r.txid = pg_catalog.pg_current_xact_id();
    RETURN kept;
END
$$;

CREATE OR REPLACE FUNCTION vault.assign_token_slot() RETURNS trigger
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
            IF NOT EXISTS (SELECT 1 FROM vault.key_rewrites r
                           WHERE r.txid = pg_catalog.pg_current_xact_id()) THEN
                missing := vault.rows_missing_slot(NEW.slot, NEW.version);
                IF missing > 0 THEN
                    RAISE EXCEPTION 'token key v% cannot be added active: % row(s) do not carry it', NEW.version, missing
                        USING ERRCODE = '55000', HINT = 'add it pending with etl keys rotate';
                END IF;
            END IF;
        ELSE
            NEW.slot := CASE shown WHEN 'a' THEN 'b' ELSE 'a' END;
        END IF;
    END IF;
    RETURN NEW;
END
$$;
