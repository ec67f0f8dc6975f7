//! `etl keys verify`: every sealed value opens under its AAD, every token equals the token
//! recomputed from the opened original with the row's token version, and every vault row names
//! the same user as its `user_logins` row. Prints counts only.

use std::time::Instant;

use serde_json::json;

use crate::commands::progress::Progress;
use crate::commands::{Context, begin_job, print_line, report_open_failure};
use crate::crypto::{Field, KeyVersion, Place, Sealed};
use crate::error::Error;
use crate::protect::{SealedLogin, tokens_of};
use crate::store::{self, rotation};

/// Scans everything in pages of `batch` rows.
pub async fn run(ctx: &Context, batch: i64) -> Result<(), Error> {
    let started = Instant::now();
    let pool = ctx.pool(2).await?;
    let keys = ctx.keyring(&pool).await?;
    let job = begin_job(&pool, "verify", "all sealed values", "etl keys verify").await?;
    let mut progress = Progress::new("verify", 0);
    let (mut vault_rows, mut tokens_checked, mut failed, mut mismatched) = (0u64, 0u64, 0u64, 0u64);
    let mut after = String::new();
    loop {
        let rows = rotation::vault_with_tokens(&pool, job, &after, batch).await?;
        let Some(last) = rows.last() else { break };
        after = last.message_id.clone();
        for row in &rows {
            vault_rows += 1;
            let sealed = |v: &Option<Vec<u8>>| v.clone().map(Sealed::from_bytes);
            let (ip, device) = (sealed(&row.ip_sealed), sealed(&row.device_id_sealed));
            // Reveal and erase find originals by the vault's user_id: it must be the login's.
            if row
                .login_user_id
                .as_ref()
                .is_some_and(|u| *u != row.user_id)
            {
                mismatched += 1;
                tracing::error!(
                    message_id = %row.message_id,
                    "message {}: the vault row's user_id differs from its user_logins row",
                    row.message_id
                );
            }
            // `retire` trusts the key_version column: it must name the key inside the values.
            let labelled = KeyVersion(row.key_version as u32);
            if [&ip, &device]
                .into_iter()
                .flatten()
                .any(|v| v.version() != Some(labelled))
            {
                mismatched += 1;
                tracing::error!(
                    message_id = %row.message_id,
                    "message {}: key_version {} differs from the sealed values' version",
                    row.message_id, row.key_version
                );
            }
            let Some(version) = row.token_version else {
                // No analysts' row carries a token for it (cannot happen for rows piivault wrote).
                for (field, value) in [(Field::Ip, &ip), (Field::DeviceId, &device)] {
                    if let Some(v) = value
                        && let Err(e) =
                            keys.open(&Place::login(&row.message_id, &row.user_id, field), v)
                    {
                        failed += 1;
                        report_open_failure(&e);
                    }
                }
                continue;
            };
            let Some(token_key) = keys.token_key(KeyVersion(version as u32)) else {
                mismatched += 1;
                tracing::error!(
                    message_id = %row.message_id,
                    "message {} carries token v{version}, whose key is gone",
                    row.message_id
                );
                continue;
            };
            let login = SealedLogin {
                message_id: &row.message_id,
                user_id: &row.user_id,
                ip: ip.as_ref(),
                device_id: device.as_ref(),
            };
            match tokens_of(&keys, token_key, login) {
                Ok((ip_token, device_token)) => {
                    tokens_checked += 1;
                    let same = ip_token.as_ref().map(|t| t.as_str()) == row.masked_ip.as_deref()
                        && device_token.as_ref().map(|t| t.as_str())
                            == row.masked_device_id.as_deref();
                    if !same {
                        mismatched += 1;
                        tracing::error!(
                            message_id = %row.message_id,
                            "message {}: stored tokens differ from the recomputed ones",
                            row.message_id
                        );
                    }
                }
                Err(e) => {
                    failed += 1;
                    report_open_failure(&e);
                }
            }
        }
        progress.add(rows.len() as u64);
    }
    let mut quarantine_rows = 0u64;
    let mut after = String::new();
    loop {
        let rows = store::quarantine::page(&pool, job, None, &after, batch).await?;
        let Some(last) = rows.last() else { break };
        after = last.message_id.clone();
        for row in &rows {
            quarantine_rows += 1;
            let body = Sealed::from_bytes(row.body_sealed.clone());
            if body.version() != Some(KeyVersion(row.key_version as u32)) {
                mismatched += 1;
                tracing::error!(
                    message_id = %row.message_id,
                    "message {}: key_version {} differs from the sealed body's version",
                    row.message_id, row.key_version
                );
            }
            if let Err(e) = keys.open(
                &Place::body(&row.message_id),
                &Sealed::from_bytes(row.body_sealed.clone()),
            ) {
                failed += 1;
                report_open_failure(&e);
            }
        }
        progress.add(rows.len() as u64);
    }
    progress.finish();
    store::jobs::end(&pool, job).await?;
    let seconds = (started.elapsed().as_secs_f64() * 100.0).round() / 100.0;
    print_line(
        &json!({"vault_rows": vault_rows, "quarantine_rows": quarantine_rows, "tokens_checked": tokens_checked,
                "failed": failed, "mismatched": mismatched, "seconds": seconds})
        .to_string(),
    )?;
    if failed + mismatched > 0 {
        return Err(Error::Verify { failed, mismatched });
    }
    Ok(())
}
