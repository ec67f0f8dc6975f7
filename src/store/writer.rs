//! Batch writes: one multi-row insert per table, idempotent on `message_id`, inside the caller's
//! transaction. The caller commits, then acks. A login's active tokens go to the active key's
//! slot of `etl.logins`, its pending tokens (during a token rotation) to the other slot.

use sqlx::{Postgres, Transaction};

use super::StoreError;
use super::keys::TokenSlot;
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

/// Writes a batch of records (unique message ids) in the caller's transaction; `active` is the
/// slot of the token key the records' active tokens were made with.
pub async fn write_batch(
    tx: &mut Transaction<'_, Postgres>,
    records: &[Record],
    active: TokenSlot,
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
    let loaded = insert_logins(tx, &logins, active).await?;
    insert_vault(tx, &logins).await?;
    let quarantined = insert_quarantine(tx, &rejected).await?;
    Ok(BatchCounts {
        loaded,
        quarantined,
        duplicates: (records.len() as u64) - loaded - quarantined,
    })
}

fn sealed<'a>(values: impl Iterator<Item = Option<&'a Sealed>>) -> Vec<Option<&'a [u8]>> {
    values.map(|v| v.map(Sealed::as_bytes)).collect()
}

/// One slot's values for a batch: ip tokens, device tokens, versions.
type SlotColumns<'a> = (Vec<Option<&'a str>>, Vec<Option<&'a str>>, Vec<Option<i32>>);

/// The active tokens of each login, or its pending ones.
fn slot_columns<'a>(logins: &[&'a ProtectedLogin], pending: bool) -> SlotColumns<'a> {
    let mut columns: SlotColumns<'a> = (
        Vec::with_capacity(logins.len()),
        Vec::with_capacity(logins.len()),
        Vec::with_capacity(logins.len()),
    );
    for login in logins {
        let (ip, device, version) = if pending {
            match &login.pending {
                Some(p) => (p.ip.as_ref(), p.device_id.as_ref(), Some(p.version)),
                None => (None, None, None),
            }
        } else {
            (
                login.masked_ip.as_ref(),
                login.masked_device_id.as_ref(),
                Some(login.token_version),
            )
        };
        columns.0.push(ip.map(Token::as_str));
        columns.1.push(device.map(Token::as_str));
        columns.2.push(version.map(|v| v.0 as i32));
    }
    columns
}

async fn insert_logins(
    tx: &mut Transaction<'_, Postgres>,
    logins: &[&ProtectedLogin],
    active: TokenSlot,
) -> Result<u64, StoreError> {
    if logins.is_empty() {
        return Ok(0);
    }
    let (a, b) = match active {
        TokenSlot::A => (slot_columns(logins, false), slot_columns(logins, true)),
        TokenSlot::B => (slot_columns(logins, true), slot_columns(logins, false)),
    };
    let result = sqlx::query(
        "INSERT INTO etl.logins (message_id, user_id, device_type, locale, app_version,
             app_version_text, create_date, received_at, ip_token_a, device_token_a, token_version_a,
             ip_token_b, device_token_b, token_version_b)
         SELECT * FROM UNNEST($1::text[], $2::varchar[], $3::varchar[], $4::varchar[], $5::int4[],
             $6::varchar[], $7::date[], $8::timestamptz[], $9::varchar[], $10::varchar[], $11::int4[],
             $12::varchar[], $13::varchar[], $14::int4[])
         ON CONFLICT (message_id) DO NOTHING",
    )
    .bind(logins.iter().map(|l| l.message_id.as_str()).collect::<Vec<_>>())
    .bind(logins.iter().map(|l| l.user_id.as_str()).collect::<Vec<_>>())
    .bind(logins.iter().map(|l| l.device_type.as_deref()).collect::<Vec<_>>())
    .bind(logins.iter().map(|l| l.locale.as_deref()).collect::<Vec<_>>())
    .bind(logins.iter().map(|l| l.app_version).collect::<Vec<_>>())
    .bind(logins.iter().map(|l| l.app_version_text.as_deref()).collect::<Vec<_>>())
    .bind(logins.iter().map(|l| l.create_date).collect::<Vec<_>>())
    .bind(logins.iter().map(|l| l.received_at).collect::<Vec<_>>())
    .bind(a.0)
    .bind(a.1)
    .bind(a.2)
    .bind(b.0)
    .bind(b.1)
    .bind(b.2)
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
