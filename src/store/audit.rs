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

/// The server's head and the snapshot's context, as [`chain`] read them.
#[derive(Debug)]
pub struct ChainHead {
    /// The head the server keeps (`vault.audit_head`): the last id it appended ...
    pub head_id: i64,
    /// ... and that row's hash (empty before the first row).
    pub head_hash: Vec<u8>,
    /// The snapshot's time, the database's clock.
    pub at: DateTime<Utc>,
    /// The database's name: the default deployment name.
    pub database: String,
}

/// Rows per query while reading the chain: memory stays flat whatever the trail's length.
const CHAIN_PAGE: i64 = 5000;

/// Reads the head and every row from one snapshot (so a concurrent append cannot look like
/// tampering), handing the rows to `each` in id order, a page at a time.
pub async fn chain(
    pool: &PgPool,
    mut each: impl FnMut(&AuditRow),
) -> Result<ChainHead, StoreError> {
    let during = StoreError::during;
    let mut tx = pool
        .begin()
        .await
        .map_err(during("starting a transaction"))?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await
        .map_err(during("starting a snapshot of the audit trail"))?;
    let (head_id, head_hash, at, database) = sqlx::query_as(
        "SELECT id, hash, now(), current_database()::text FROM vault.audit_head WHERE only_row",
    )
    .fetch_one(&mut *tx)
    .await
    .map_err(during("reading vault.audit_head"))?;
    let mut after = i64::MIN;
    loop {
        let rows: Vec<AuditRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM vault.reveal_audit WHERE id > $1 ORDER BY id LIMIT $2"
        )))
        .bind(after)
        .bind(CHAIN_PAGE)
        .fetch_all(&mut *tx)
        .await
        .map_err(during("reading vault.reveal_audit"))?;
        rows.iter().for_each(&mut each);
        match rows.last() {
            Some(last) if rows.len() as i64 == CHAIN_PAGE => after = last.id,
            _ => break,
        }
    }
    tx.commit()
        .await
        .map_err(during("ending the audit snapshot"))?;
    Ok(ChainHead {
        head_id,
        head_hash,
        at,
        database,
    })
}

/// `current_database()`: the default deployment name.
pub async fn database_name(pool: &PgPool) -> Result<String, StoreError> {
    sqlx::query_scalar("SELECT current_database()::text")
        .fetch_one(pool)
        .await
        .map_err(StoreError::during("reading the database name"))
}

/// Up to `limit` rows with id above `after_id` (and at or after `since`), in id order: one page
/// of an export that a reader resumes by id.
pub async fn page(
    pool: &PgPool,
    after_id: i64,
    since: Option<DateTime<Utc>>,
    limit: i64,
) -> Result<Vec<AuditRow>, StoreError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM vault.reveal_audit
         WHERE id > $1 AND ($2::timestamptz IS NULL OR at >= $2) ORDER BY id LIMIT $3"
    )))
    .bind(after_id)
    .bind(since)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(StoreError::during("reading vault.reveal_audit"))
}

/// How the access report groups rows.
#[derive(Debug, Clone, Copy)]
pub enum AccessBy {
    /// The database login (`session_user`) that wrote the row.
    Login,
    /// The access purpose.
    Purpose,
}

/// Reveals, requests, approvals and refusals of one login or purpose.
#[derive(Debug, sqlx::FromRow)]
pub struct AccessGroup {
    /// The login or purpose (`-` for rows without one).
    pub key: String,
    /// Reveals that returned records (`reveal` rows).
    pub reveals: i64,
    /// Records those reveals returned.
    pub records: i64,
    /// Distinct users whose records they returned.
    pub users: i64,
    /// Reveals the policy refused.
    pub refusals: i64,
    /// Two-person requests made.
    pub requests: i64,
    /// Approvals given.
    pub approvals: i64,
}

/// Who looked at what since `since`: one group per login or purpose, busiest first.
pub async fn access(
    pool: &PgPool,
    by: AccessBy,
    since: Option<DateTime<Utc>>,
) -> Result<Vec<AccessGroup>, StoreError> {
    sqlx::query_as(
        "WITH a AS (
             SELECT action, records, subjects,
                    CASE WHEN $1 THEN db_role ELSE coalesce(purpose, '-') END AS key
             FROM vault.reveal_audit
             WHERE ($2::timestamptz IS NULL OR at >= $2)
               AND action IN ('reveal', 'reveal-refused', 'reveal-request', 'reveal-approve')
         ), users AS (
             SELECT a.key, count(DISTINCT u) AS users
             FROM a CROSS JOIN LATERAL unnest(a.subjects) AS u
             WHERE a.action = 'reveal' GROUP BY a.key
         )
         SELECT a.key,
                count(*) FILTER (WHERE a.action = 'reveal') AS reveals,
                coalesce(sum(a.records) FILTER (WHERE a.action = 'reveal'), 0)::bigint AS records,
                coalesce(max(users.users), 0) AS users,
                count(*) FILTER (WHERE a.action = 'reveal-refused') AS refusals,
                count(*) FILTER (WHERE a.action = 'reveal-request') AS requests,
                count(*) FILTER (WHERE a.action = 'reveal-approve') AS approvals
         FROM a LEFT JOIN users USING (key)
         GROUP BY a.key ORDER BY reveals DESC, refusals DESC, a.key",
    )
    .bind(matches!(by, AccessBy::Login))
    .bind(since)
    .fetch_all(pool)
    .await
    .map_err(StoreError::during("summarising vault.reveal_audit"))
}
