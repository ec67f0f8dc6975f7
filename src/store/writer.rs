//! Batch writes: one multi-row insert per table, idempotent on `message_id`, inside the caller's
//! transaction. The caller commits, then acks.

use sqlx::{Postgres, Transaction};

use super::StoreError;
use crate::crypto::{BodyTag, Sealed, Token};
use crate::protect::{ProtectedLogin, QuarantineEntry, Record};

/// What one batch write did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchCounts {
    /// New `user_logins` rows.
    pub loaded: u64,
    /// New `etl.quarantine` rows.
    pub quarantined: u64,
    /// Records whose `message_id` was already stored (redeliveries).
    pub duplicates: u64,
}

/// Writes a batch of records (unique message ids) in the caller's transaction.
pub async fn write_batch(
    tx: &mut Transaction<'_, Postgres>,
    records: &[Record],
) -> Result<BatchCounts, StoreError> {
    let mut logins = Vec::new();
    let mut rejected = Vec::new();
    for record in records {
        match record {
            Record::Login(login) => logins.push(login),
            Record::Quarantine(entry) => rejected.push(entry),
        }
    }
    // One lock order for every writer: two batches sharing redelivered ids cannot deadlock.
    logins.sort_unstable_by(|a, b| a.message_id.cmp(&b.message_id));
    rejected.sort_unstable_by(|a, b| a.message_id.cmp(&b.message_id));
    let loaded = insert_logins(tx, &logins).await?;
    insert_vault(tx, &logins).await?;
    let quarantined = insert_quarantine(tx, &rejected).await?;
    Ok(BatchCounts {
        loaded,
        quarantined,
        duplicates: (records.len() as u64) - loaded - quarantined,
    })
}

fn tokens<'a>(tokens: impl Iterator<Item = Option<&'a Token>>) -> Vec<Option<&'a str>> {
    tokens.map(|t| t.map(Token::as_str)).collect()
}

fn sealed<'a>(values: impl Iterator<Item = Option<&'a Sealed>>) -> Vec<Option<&'a [u8]>> {
    values.map(|v| v.map(Sealed::as_bytes)).collect()
}

async fn insert_logins(
    tx: &mut Transaction<'_, Postgres>,
    logins: &[&ProtectedLogin],
) -> Result<u64, StoreError> {
    if logins.is_empty() {
        return Ok(0);
    }
    let result = sqlx::query(
        "INSERT INTO user_logins (message_id, user_id, device_type, masked_ip, masked_device_id,
             locale, app_version, app_version_text, token_version, create_date, received_at)
         SELECT * FROM UNNEST($1::text[], $2::varchar[], $3::varchar[], $4::varchar[], $5::varchar[],
             $6::varchar[], $7::int4[], $8::varchar[], $9::int4[], $10::date[], $11::timestamptz[])
         ON CONFLICT (message_id) DO NOTHING",
    )
    .bind(logins.iter().map(|l| l.message_id.as_str()).collect::<Vec<_>>())
    .bind(logins.iter().map(|l| l.user_id.as_str()).collect::<Vec<_>>())
    .bind(logins.iter().map(|l| l.device_type.as_deref()).collect::<Vec<_>>())
    .bind(tokens(logins.iter().map(|l| l.masked_ip.as_ref())))
    .bind(tokens(logins.iter().map(|l| l.masked_device_id.as_ref())))
    .bind(logins.iter().map(|l| l.locale.as_deref()).collect::<Vec<_>>())
    .bind(logins.iter().map(|l| l.app_version).collect::<Vec<_>>())
    .bind(logins.iter().map(|l| l.app_version_text.as_deref()).collect::<Vec<_>>())
    .bind(logins.iter().map(|l| l.token_version.0 as i32).collect::<Vec<_>>())
    .bind(logins.iter().map(|l| l.create_date).collect::<Vec<_>>())
    .bind(logins.iter().map(|l| l.received_at).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await
    .map_err(StoreError::during("inserting into user_logins"))?;
    Ok(result.rows_affected())
}

async fn insert_vault(
    tx: &mut Transaction<'_, Postgres>,
    logins: &[&ProtectedLogin],
) -> Result<(), StoreError> {
    if logins.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO vault.login_pii (message_id, user_id, key_version, ip_sealed, device_id_sealed)
         SELECT * FROM UNNEST($1::text[], $2::varchar[], $3::int4[], $4::bytea[], $5::bytea[])
         ON CONFLICT (message_id) DO NOTHING",
    )
    .bind(logins.iter().map(|l| l.message_id.as_str()).collect::<Vec<_>>())
    .bind(logins.iter().map(|l| l.user_id.as_str()).collect::<Vec<_>>())
    .bind(logins.iter().map(|l| l.seal_version.0 as i32).collect::<Vec<_>>())
    .bind(sealed(logins.iter().map(|l| l.ip_sealed.as_ref())))
    .bind(sealed(logins.iter().map(|l| l.device_id_sealed.as_ref())))
    .execute(&mut **tx)
    .await
    .map_err(StoreError::during("inserting into vault.login_pii"))?;
    Ok(())
}

async fn insert_quarantine(
    tx: &mut Transaction<'_, Postgres>,
    entries: &[&QuarantineEntry],
) -> Result<u64, StoreError> {
    if entries.is_empty() {
        return Ok(0);
    }
    let result = sqlx::query(
        "INSERT INTO etl.quarantine (message_id, received_at, reason, key_version, body_sealed, user_tags)
         SELECT id, received_at, reason, key_version, body, string_to_array(tags, ',')
         FROM UNNEST($1::text[], $2::timestamptz[], $3::text[], $4::int4[], $5::bytea[], $6::text[])
           AS x(id, received_at, reason, key_version, body, tags)
         ON CONFLICT (message_id) DO NOTHING",
    )
    .bind(
        entries
            .iter()
            .map(|e| e.message_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(entries.iter().map(|e| e.received_at).collect::<Vec<_>>())
    .bind(
        entries
            .iter()
            .map(|e| e.reason.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        entries
            .iter()
            .map(|e| e.key_version.0 as i32)
            .collect::<Vec<_>>(),
    )
    .bind(
        entries
            .iter()
            .map(|e| e.body_sealed.as_bytes())
            .collect::<Vec<_>>(),
    )
    // Tags are `v<n>:` + base64url: a comma never occurs in one.
    .bind(
        entries
            .iter()
            .map(|e| {
                e.user_tags
                    .iter()
                    .map(BodyTag::as_str)
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect::<Vec<_>>(),
    )
    .execute(&mut **tx)
    .await
    .map_err(StoreError::during("inserting into etl.quarantine"))?;
    Ok(result.rows_affected())
}
