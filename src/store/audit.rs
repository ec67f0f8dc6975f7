//! `vault.reveal_audit`: the append-only trail of reveals and erasures, written in the same
//! transaction as the access it records. Hashing lives in `crypto::chain`; this module only
//! stores and reads rows.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};

use super::StoreError;

type Tx<'a> = Transaction<'a, Postgres>;

/// Advisory lock serialising appends, so the chain has one order ("audit" in ASCII).
const CHAIN_LOCK: i64 = 0x0061_7564_6974;

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
    pub prev_hash: Option<Vec<u8>>,
    pub hash: Option<Vec<u8>>,
}

/// Where the next row goes: its id, the database role writing it, and the previous row's hash.
pub struct ChainHead {
    pub id: i64,
    pub db_role: String,
    pub prev_hash: Vec<u8>,
}

/// Locks the chain for this transaction and returns where the next row goes.
pub async fn head(tx: &mut Tx<'_>) -> Result<ChainHead, StoreError> {
    let during = StoreError::during;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(CHAIN_LOCK)
        .execute(&mut **tx)
        .await
        .map_err(during("locking the audit chain"))?;
    let prev_hash: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT hash FROM vault.reveal_audit ORDER BY id DESC LIMIT 1")
            .fetch_optional(&mut **tx)
            .await
            .map_err(during("reading the audit chain"))?
            .flatten();
    let (id, db_role): (i64, String) =
        sqlx::query_as("SELECT nextval('vault.reveal_audit_id_seq'), session_user::text")
            .fetch_one(&mut **tx)
            .await
            .map_err(during("writing the audit row"))?;
    Ok(ChainHead {
        id,
        db_role,
        prev_hash: prev_hash.unwrap_or_default(),
    })
}

/// Appends one row (its hash computed by the caller).
pub async fn append(tx: &mut Tx<'_>, row: &AuditRow) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO vault.reveal_audit
           (id, at, db_role, actor, action, selector, user_id, ticket, reason, records, prev_hash, hash)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(row.id)
    .bind(row.at)
    .bind(&row.db_role)
    .bind(&row.actor)
    .bind(&row.action)
    .bind(&row.selector)
    .bind(&row.user_id)
    .bind(&row.ticket)
    .bind(&row.reason)
    .bind(row.records)
    .bind(&row.prev_hash)
    .bind(&row.hash)
    .execute(&mut **tx)
    .await
    .map_err(StoreError::during("writing the audit row"))?;
    Ok(())
}

/// Every row since `since` (all when `None`), in chain order.
pub async fn list(
    pool: &PgPool,
    since: Option<DateTime<Utc>>,
) -> Result<Vec<AuditRow>, StoreError> {
    sqlx::query_as(
        "SELECT id, at, db_role, actor, action, selector, user_id, ticket, reason, records, prev_hash, hash
         FROM vault.reveal_audit WHERE $1::timestamptz IS NULL OR at >= $1 ORDER BY id",
    )
    .bind(since)
    .fetch_all(pool)
    .await
    .map_err(StoreError::during("reading vault.reveal_audit"))
}
