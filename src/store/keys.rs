//! `vault.data_keys`: wrapped data keys, one row per purpose and version, and their states.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};

use super::StoreError;

type Tx<'a> = Transaction<'a, Postgres>;

/// One stored data key: wrapped bytes only (none once retired).
#[derive(sqlx::FromRow)]
pub struct DataKeyRow {
    pub purpose: String,
    pub version: i32,
    pub kek_uri: String,
    pub wrapped: Option<Vec<u8>>,
    pub state: String,
    pub created_at: DateTime<Utc>,
    pub retired_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "purpose, version, kek_uri, wrapped, state, created_at, retired_at";

/// Every stored key, by purpose then version.
pub async fn list(pool: &PgPool) -> Result<Vec<DataKeyRow>, StoreError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM vault.data_keys ORDER BY purpose, version"
    )))
    .fetch_all(pool)
    .await
    .map_err(StoreError::during("reading vault.data_keys"))
}

/// Locks the key table against concurrent key changes for the rest of the transaction.
pub async fn lock(tx: &mut Tx<'_>) -> Result<(), StoreError> {
    sqlx::query("LOCK TABLE vault.data_keys IN EXCLUSIVE MODE")
        .execute(&mut **tx)
        .await
        .map_err(StoreError::during("locking vault.data_keys"))?;
    Ok(())
}

/// Starts a transaction holding the key-table lock; returns it with every stored key.
pub async fn begin_locked(pool: &PgPool) -> Result<(Tx<'static>, Vec<DataKeyRow>), StoreError> {
    let mut tx = pool
        .begin()
        .await
        .map_err(StoreError::during("starting a transaction"))?;
    lock(&mut tx).await?;
    let rows = list_in(&mut tx).await?;
    Ok((tx, rows))
}

/// Every stored key, read inside a transaction (after [`lock`]).
pub async fn list_in(tx: &mut Tx<'_>) -> Result<Vec<DataKeyRow>, StoreError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM vault.data_keys ORDER BY purpose, version"
    )))
    .fetch_all(&mut **tx)
    .await
    .map_err(StoreError::during("reading vault.data_keys"))
}

/// Stores one wrapped key in a state.
pub async fn insert(
    tx: &mut Tx<'_>,
    purpose: &str,
    version: i32,
    state: &str,
    kek_uri: &str,
    wrapped: &[u8],
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO vault.data_keys (purpose, version, state, kek_uri, wrapped) VALUES ($1, $2, $3, $4, $5)")
        .bind(purpose)
        .bind(version)
        .bind(state)
        .bind(kek_uri)
        .bind(wrapped)
        .execute(&mut **tx)
        .await
        .map_err(StoreError::during("storing a data key"))?;
    Ok(())
}

/// Sets the state of one key.
pub async fn set_state(
    tx: &mut Tx<'_>,
    purpose: &str,
    version: i32,
    state: &str,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE vault.data_keys SET state = $3 WHERE purpose = $1 AND version = $2")
        .bind(purpose)
        .bind(version)
        .bind(state)
        .execute(&mut **tx)
        .await
        .map_err(StoreError::during("updating a key state"))?;
    Ok(())
}

/// Replaces one key's wrapped bytes (re-wrapped under another KEK).
pub async fn rewrap(
    tx: &mut Tx<'_>,
    purpose: &str,
    version: i32,
    kek_uri: &str,
    wrapped: &[u8],
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE vault.data_keys SET kek_uri = $3, wrapped = $4, rewrapped_at = now() WHERE purpose = $1 AND version = $2",
    )
    .bind(purpose)
    .bind(version)
    .bind(kek_uri)
    .bind(wrapped)
    .execute(&mut **tx)
    .await
    .map_err(StoreError::during("re-wrapping a data key"))?;
    Ok(())
}

/// Destroys one key's wrapped bytes and records it as retired (crypto-shredding).
pub async fn shred(tx: &mut Tx<'_>, purpose: &str, version: i32) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE vault.data_keys SET wrapped = NULL, state = 'retired', retired_at = now()
         WHERE purpose = $1 AND version = $2",
    )
    .bind(purpose)
    .bind(version)
    .execute(&mut **tx)
    .await
    .map_err(StoreError::during("retiring a data key"))?;
    Ok(())
}

/// The active (seal, token) versions as committed now; writers compare them with the versions
/// they hold before committing a batch.
pub async fn active_versions(tx: &mut Tx<'_>) -> Result<(Option<i32>, Option<i32>), StoreError> {
    let rows: Vec<(String, i32)> =
        sqlx::query_as("SELECT purpose, version FROM vault.data_keys WHERE state = 'active'")
            .fetch_all(&mut **tx)
            .await
            .map_err(StoreError::during("reading the active key versions"))?;
    let find = |p: &str| {
        rows.iter()
            .find(|(purpose, _)| purpose == p)
            .map(|(_, v)| *v)
    };
    Ok((find("seal"), find("token")))
}
