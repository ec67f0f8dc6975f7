//! `vault.reveal_audit`: the append-only trail of reveals, erasures and key jobs. The server
//! writes every row (`vault.audit_write()`, called by the definer functions): id, time,
//! database role and hash are never the client's. This module calls those functions and reads
//! rows back; hashing for verification lives in `crypto::chain`.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::StoreError;

/// One stored audit row.
#[derive(Debug, sqlx::FromRow)]
pub struct AuditRow {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub db_role: String,
    pub actor: String,
    pub action: String,
    pub selector: Option<String>,
    pub user_id: Option<String>,
    pub ticket: Option<String>,
    pub reason: String,
    pub records: i32,
    pub subjects: Option<Vec<String>>,
    pub records_digest: Option<Vec<u8>>,
    pub prev_hash: Option<Vec<u8>>,
    pub hash: Option<Vec<u8>>,
    /// 1: hashed by an `etl` client (before migration 0009); 2 and 3: hashed by the server
    /// (3 since migration 0014, with the governance fields).
    pub chain_format: i16,
    /// The access purpose (reveals, requests, approvals, refusals).
    pub purpose: Option<String>,
    /// The two-person request the row belongs to.
    pub request_id: Option<i64>,
    /// What the server noted: why it refused, or the policy it set.
    pub note: Option<String>,
}

const COLUMNS: &str = "id, at, db_role, actor, action, selector, user_id, ticket, reason, records,
     subjects, records_digest, prev_hash, hash, chain_format, purpose, request_id, note";

/// Every row since `since` (all when `None`), in chain order.
pub async fn list(
    pool: &PgPool,
    since: Option<DateTime<Utc>>,
) -> Result<Vec<AuditRow>, StoreError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM vault.reveal_audit
         WHERE $1::timestamptz IS NULL OR at >= $1 ORDER BY id"
    )))
    .bind(since)
    .fetch_all(pool)
    .await
    .map_err(StoreError::during("reading vault.reveal_audit"))
}

/// Every row and the chain head the server keeps (`vault.audit_head`: the last id and hash it
/// appended), read from one snapshot so a concurrent append cannot look like tampering.
pub async fn chain(pool: &PgPool) -> Result<(Vec<AuditRow>, (i64, Vec<u8>)), StoreError> {
    let during = StoreError::during;
    let mut tx = pool
        .begin()
        .await
        .map_err(during("starting a transaction"))?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await
        .map_err(during("starting a snapshot of the audit trail"))?;
    let head = sqlx::query_as("SELECT id, hash FROM vault.audit_head WHERE only_row")
        .fetch_one(&mut *tx)
        .await
        .map_err(during("reading vault.audit_head"))?;
    let rows = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM vault.reveal_audit ORDER BY id"
    )))
    .fetch_all(&mut *tx)
    .await
    .map_err(during("reading vault.reveal_audit"))?;
    tx.commit()
        .await
        .map_err(during("ending the audit snapshot"))?;
    Ok((rows, head))
}
