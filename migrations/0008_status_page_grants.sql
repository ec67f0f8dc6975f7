-- The status page of `etl run --metrics-addr` shows the top duplicate groups: tokens and counts
-- over user_logins, exactly what analysts read. The ETL role may read those three columns of the
-- rows it writes anyway; it still cannot read the vault, the quarantine bodies or the audit.
GRANT SELECT (user_id, masked_ip, masked_device_id) ON user_logins TO piivault_etl;
