-- `etl quarantine replay` (admin) loads messages that now decode: it writes the same rows the
-- ETL would, and deletes them from quarantine (DELETE granted in 0006).
GRANT INSERT ON user_logins, vault.login_pii TO piivault_admin;
