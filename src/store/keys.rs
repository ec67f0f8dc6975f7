//! `vault.data_keys`: wrapped data keys, one row per purpose and version.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};

use super::StoreError;

/// One stored data key: wrapped bytes only.
#[derive(sqlx::FromRow)]
pub struct DataKeyRow {
    pub purpose: String,
    pub version: i32,
    pub kek_uri: String,
    pub wrapped: Vec<u8>,
    pub state: String,
    pub created_at: DateTime<Utc>,
}

/// Every stored key, by purpose then version.
pub async fn list(pool: &PgPool) -> Result<Vec<DataKeyRow>, StoreError> {
    sqlx::query_as(
        "SELECT purpose, version, kek_uri, wrapped, state, created_at
         FROM vault.data_keys ORDER BY purpose, version",
    )
    .fetch_all(pool)
    .await
    .map_err(StoreError::during("reading vault.data_keys"))
}

/// Number of stored keys (under a lock, so two `keys init` cannot both see zero).
pub async fn count_locked(tx: &mut Transaction<'_, Postgres>) -> Result<i64, StoreError> {
    sqlx::query("LOCK TABLE vault.data_keys IN EXCLUSIVE MODE")
        .execute(&mut **tx)
        .await
        .map_err(StoreError::during("locking vault.data_keys"))?;
    sqlx::query_scalar("SELECT count(*) FROM vault.data_keys")
        .fetch_one(&mut **tx)
        .await
        .map_err(StoreError::during("counting vault.data_keys"))
}

/// Stores one wrapped key as active.
pub async fn insert(
    tx: &mut Transaction<'_, Postgres>,
    purpose: &str,
    version: i32,
    kek_uri: &str,
    wrapped: &[u8],
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO vault.data_keys (purpose, version, kek_uri, wrapped) VALUES ($1, $2, $3, $4)",
    )
    .bind(purpose)
    .bind(version)
    .bind(kek_uri)
    .bind(wrapped)
    .execute(&mut **tx)
    .await
    .map_err(StoreError::during("storing a data key"))?;
    Ok(())
}
