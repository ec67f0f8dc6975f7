//! `etl.quarantine` reads and removals for `etl quarantine list|replay`. Inserts happen in
//! [`super::writer`].

use chrono::{DateTime, Utc};
use sqlx::{Executor, PgPool, Postgres, Transaction};

use super::StoreError;
use super::jobs::JobId;

/// One quarantined message, without its body.
#[derive(sqlx::FromRow)]
pub struct Entry {
    pub message_id: String,
    pub received_at: DateTime<Utc>,
    pub reason: String,
    pub key_version: i32,
}

/// One quarantined message with its sealed body.
#[derive(sqlx::FromRow)]
pub struct SealedBody {
    pub message_id: String,
    pub received_at: DateTime<Utc>,
    pub key_version: i32,
    pub body_sealed: Vec<u8>,
}

/// Every entry, oldest first.
pub async fn list(pool: &PgPool) -> Result<Vec<Entry>, StoreError> {
    sqlx::query_as("SELECT message_id, received_at, reason, key_version FROM etl.quarantine ORDER BY received_at, message_id")
        .fetch_all(pool)
        .await
        .map_err(StoreError::during("reading etl.quarantine"))
}

/// The next page of sealed bodies after `after`, in `message_id` order (only `only`, when
/// given), for an open key job (`vault.job_quarantine_rows()`). Runs on a pool or inside the
/// caller's transaction.
pub async fn page<'c, E: Executor<'c, Database = Postgres>>(
    executor: E,
    job: JobId,
    only: Option<&str>,
    after: &str,
    limit: i64,
) -> Result<Vec<SealedBody>, StoreError> {
    sqlx::query_as(
        "SELECT message_id, received_at, key_version, body_sealed
         FROM vault.job_quarantine_rows($1, $2, NULL, $3, $4)",
    )
    .bind(job.0)
    .bind(only)
    .bind(after)
    .bind(limit)
    .fetch_all(executor)
    .await
    .map_err(StoreError::during("reading etl.quarantine"))
}

/// Quarantined bodies that carry no user tags yet (quarantined before tags existed).
pub async fn count_untagged(pool: &PgPool) -> Result<i64, StoreError> {
    sqlx::query_scalar("SELECT count(*) FROM etl.quarantine WHERE user_tags IS NULL")
        .fetch_one(pool)
        .await
        .map_err(StoreError::during("counting untagged quarantine rows"))
}

/// The next page of untagged bodies for an open job (`vault.job_untagged_bodies()`).
pub async fn untagged_page<'c, E: Executor<'c, Database = Postgres>>(
    executor: E,
    job: JobId,
    after: &str,
    limit: i64,
) -> Result<Vec<SealedBody>, StoreError> {
    sqlx::query_as(
        "SELECT message_id, received_at, key_version, body_sealed
         FROM vault.job_untagged_bodies($1, $2, $3)",
    )
    .bind(job.0)
    .bind(after)
    .bind(limit)
    .fetch_all(executor)
    .await
    .map_err(StoreError::during("reading untagged quarantine rows"))
}

/// Removes one entry (after its message was loaded in the same transaction).
pub async fn remove(
    tx: &mut Transaction<'_, Postgres>,
    message_id: &str,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM etl.quarantine WHERE message_id = $1")
        .bind(message_id)
        .execute(&mut **tx)
        .await
        .map_err(StoreError::during(
            "removing a replayed message from quarantine",
        ))?;
    Ok(())
}

/// Records today's reason for an entry that still does not pass.
pub async fn set_reason(pool: &PgPool, message_id: &str, reason: &str) -> Result<(), StoreError> {
    sqlx::query("UPDATE etl.quarantine SET reason = $2 WHERE message_id = $1")
        .bind(message_id)
        .bind(reason)
        .execute(pool)
        .await
        .map_err(StoreError::during("updating a quarantine reason"))?;
    Ok(())
}

/// How many messages are quarantined (reads `message_id` only, which the etl role may).
pub async fn count(pool: &PgPool) -> Result<i64, StoreError> {
    sqlx::query_scalar("SELECT count(message_id) FROM etl.quarantine")
        .fetch_one(pool)
        .await
        .map_err(StoreError::during("counting etl.quarantine"))
}
