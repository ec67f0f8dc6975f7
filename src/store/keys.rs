//! `vault.data_keys`: wrapped data keys, one row per purpose and version, and their states.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};

use super::StoreError;
use crate::crypto::{KeyState, KeyVersion, Purpose};
use crate::key_lifecycle::KeyStatus;

type Tx<'a> = Transaction<'a, Postgres>;

/// One of the two token slots of `etl.logins` (migration 0015). The active and the pending
/// token key always write different slots; analysts' `user_logins` shows the active one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSlot {
    A,
    B,
}

impl TokenSlot {
    fn parse(name: &str) -> Result<TokenSlot, StoreError> {
        match name {
            "a" => Ok(TokenSlot::A),
            "b" => Ok(TokenSlot::B),
            other => Err(StoreError::Query {
                what: "reading a token key's slot",
                detail: format!("unknown slot {other:?}"),
            }),
        }
    }

    /// The slot's name in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenSlot::A => "a",
            TokenSlot::B => "b",
        }
    }

    /// The slot the other key (active or pending) uses.
    pub fn other(self) -> TokenSlot {
        match self {
            TokenSlot::A => TokenSlot::B,
            TokenSlot::B => TokenSlot::A,
        }
    }
}

/// The slot of the active token key (what writers put the active tokens in).
pub async fn active_token_slot<'c, E: sqlx::Executor<'c, Database = Postgres>>(
    executor: E,
) -> Result<TokenSlot, StoreError> {
    let slot: Option<String> = sqlx::query_scalar(
        "SELECT slot FROM vault.data_keys WHERE purpose = 'token' AND state = 'active'",
    )
    .fetch_optional(executor)
    .await
    .map_err(StoreError::during("reading the active token key's slot"))?;
    TokenSlot::parse(slot.as_deref().unwrap_or_default())
}

/// The slot a token key version wrote (it keeps it after leaving the active state), if any.
pub async fn slot_of(pool: &PgPool, version: KeyVersion) -> Result<Option<TokenSlot>, StoreError> {
    let slot: Option<Option<String>> = sqlx::query_scalar(
        "SELECT slot FROM vault.data_keys WHERE purpose = 'token' AND version = $1",
    )
    .bind(column(version))
    .fetch_optional(pool)
    .await
    .map_err(StoreError::during("reading a token key's slot"))?;
    slot.flatten().as_deref().map(TokenSlot::parse).transpose()
}

/// One stored data key: wrapped bytes only (none once retired).
pub struct DataKeyRow {
    pub purpose: Purpose,
    pub version: KeyVersion,
    pub kek_uri: String,
    pub wrapped: Option<Vec<u8>>,
    pub state: KeyState,
    pub created_at: DateTime<Utc>,
    pub retired_at: Option<DateTime<Utc>>,
    /// The deployment the key is wrapped for (part of the wrap context); `None` for a key
    /// wrapped before deployments were bound (migration 0012), under the legacy context.
    pub deployment: Option<String>,
    /// The database the row was read from (`current_database()`): the deployment a process
    /// serves when `PIIVAULT_DEPLOYMENT` is unset.
    pub database: String,
}

impl DataKeyRow {
    /// The key's place in its lifecycle.
    pub fn status(&self) -> KeyStatus {
        KeyStatus {
            purpose: self.purpose,
            version: self.version,
            state: self.state,
        }
    }
}

/// The lifecycle of every row.
pub fn statuses(rows: &[DataKeyRow]) -> Vec<KeyStatus> {
    rows.iter().map(DataKeyRow::status).collect()
}

/// A row as stored; the table's CHECK constraints keep purpose and state to known names.
#[derive(sqlx::FromRow)]
struct StoredRow {
    purpose: String,
    version: i32,
    kek_uri: String,
    wrapped: Option<Vec<u8>>,
    state: String,
    created_at: DateTime<Utc>,
    retired_at: Option<DateTime<Utc>>,
    deployment: Option<String>,
    database: String,
}

impl TryFrom<StoredRow> for DataKeyRow {
    type Error = StoreError;
    fn try_from(row: StoredRow) -> Result<DataKeyRow, StoreError> {
        let bad = |detail: String| StoreError::Query {
            what: "reading vault.data_keys",
            detail,
        };
        Ok(DataKeyRow {
            purpose: row.purpose.parse().map_err(|e| bad(format!("{e}")))?,
            version: u32::try_from(row.version)
                .map(KeyVersion)
                .map_err(|_| bad(format!("key version {} is not positive", row.version)))?,
            state: row.state.parse().map_err(|e| bad(format!("{e}")))?,
            kek_uri: row.kek_uri,
            wrapped: row.wrapped,
            created_at: row.created_at,
            retired_at: row.retired_at,
            deployment: row.deployment,
            database: row.database,
        })
    }
}

fn typed(rows: Vec<StoredRow>) -> Result<Vec<DataKeyRow>, StoreError> {
    rows.into_iter().map(DataKeyRow::try_from).collect()
}

/// A version as the `integer` column holds it.
fn column(version: KeyVersion) -> i32 {
    version.0 as i32
}

const COLUMNS: &str = "purpose, version, kek_uri, wrapped, state, created_at, retired_at, deployment, \
                       current_database()::text AS database";

/// Every stored key, by purpose then version.
pub async fn list(pool: &PgPool) -> Result<Vec<DataKeyRow>, StoreError> {
    typed(
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM vault.data_keys ORDER BY purpose, version"
        )))
        .fetch_all(pool)
        .await
        .map_err(StoreError::during("reading vault.data_keys"))?,
    )
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
    typed(
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM vault.data_keys ORDER BY purpose, version"
        )))
        .fetch_all(&mut **tx)
        .await
        .map_err(StoreError::during("reading vault.data_keys"))?,
    )
}

/// The name of the database the transaction runs in: the default deployment.
pub async fn database_name(tx: &mut Tx<'_>) -> Result<String, StoreError> {
    sqlx::query_scalar("SELECT current_database()::text")
        .fetch_one(&mut **tx)
        .await
        .map_err(StoreError::during("reading the database name"))
}

/// Stores one key, wrapped under `kek_uri` for `deployment`, in a state.
pub async fn insert(
    tx: &mut Tx<'_>,
    purpose: Purpose,
    version: KeyVersion,
    state: KeyState,
    kek_uri: &str,
    deployment: &str,
    wrapped: &[u8],
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO vault.data_keys (purpose, version, state, kek_uri, deployment, wrapped) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(purpose.as_str())
        .bind(column(version))
        .bind(state.as_str())
        .bind(kek_uri)
        .bind(deployment)
        .bind(wrapped)
        .execute(&mut **tx)
        .await
        .map_err(StoreError::during("storing a data key"))?;
    Ok(())
}

/// Sets the state of one key.
pub async fn set_state(
    tx: &mut Tx<'_>,
    purpose: Purpose,
    version: KeyVersion,
    state: KeyState,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE vault.data_keys SET state = $3 WHERE purpose = $1 AND version = $2")
        .bind(purpose.as_str())
        .bind(column(version))
        .bind(state.as_str())
        .execute(&mut **tx)
        .await
        .map_err(StoreError::during("updating a key state"))?;
    Ok(())
}

/// Replaces one key's wrapped bytes (re-wrapped under another KEK, or for a deployment).
pub async fn rewrap(
    tx: &mut Tx<'_>,
    purpose: Purpose,
    version: KeyVersion,
    kek_uri: &str,
    deployment: &str,
    wrapped: &[u8],
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE vault.data_keys SET kek_uri = $3, deployment = $4, wrapped = $5, rewrapped_at = now()
         WHERE purpose = $1 AND version = $2",
    )
    .bind(purpose.as_str())
    .bind(column(version))
    .bind(kek_uri)
    .bind(deployment)
    .bind(wrapped)
    .execute(&mut **tx)
    .await
    .map_err(StoreError::during("re-wrapping a data key"))?;
    Ok(())
}

/// Destroys one key's wrapped bytes and records it as retired (crypto-shredding).
pub async fn shred(
    tx: &mut Tx<'_>,
    purpose: Purpose,
    version: KeyVersion,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE vault.data_keys SET wrapped = NULL, state = 'retired', retired_at = now()
         WHERE purpose = $1 AND version = $2",
    )
    .bind(purpose.as_str())
    .bind(column(version))
    .execute(&mut **tx)
    .await
    .map_err(StoreError::during("retiring a data key"))?;
    Ok(())
}

/// A summary of every key's purpose, version and state: writers compare it before committing a
/// batch and reload their keyring when it changed (rotation, token swap, retirement).
pub async fn fingerprint<'c, E: sqlx::Executor<'c, Database = Postgres>>(
    executor: E,
) -> Result<String, StoreError> {
    sqlx::query_scalar(
        "SELECT coalesce(string_agg(purpose || ':' || version || ':' || state, ',' ORDER BY purpose, version), '')
         FROM vault.data_keys",
    )
    .fetch_one(executor)
    .await
    .map_err(StoreError::during("reading the key states"))
}

/// The state of one key, read in the caller's transaction.
pub async fn state(
    tx: &mut Tx<'_>,
    purpose: Purpose,
    version: KeyVersion,
) -> Result<Option<KeyState>, StoreError> {
    let state: Option<String> =
        sqlx::query_scalar("SELECT state FROM vault.data_keys WHERE purpose = $1 AND version = $2")
            .bind(purpose.as_str())
            .bind(column(version))
            .fetch_optional(&mut **tx)
            .await
            .map_err(StoreError::during("reading a key state"))?;
    state
        .map(|s| {
            s.parse().map_err(|e| StoreError::Query {
                what: "reading a key state",
                detail: format!("{e}"),
            })
        })
        .transpose()
}

/// Advisory lock key shared by every `etl keys` job ("piivault" in ASCII).
const JOB_LOCK: i64 = 0x7069_6976_6175_6c74;

/// Held while one `etl keys` job runs; released when dropped (its connection closes).
pub struct JobLock(#[allow(dead_code)] sqlx::PgConnection);

/// Takes the key-job lock, or `None` when another key job holds it.
pub async fn try_job_lock(pool: &PgPool) -> Result<Option<JobLock>, StoreError> {
    let mut conn = pool
        .acquire()
        .await
        .map_err(StoreError::during("connecting for the key-job lock"))?
        .detach();
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(JOB_LOCK)
        .fetch_one(&mut conn)
        .await
        .map_err(StoreError::during("taking the key-job lock"))?;
    Ok(locked.then_some(JobLock(conn)))
}

/// Rewrites the key table into a fresh file in `tx` (`vault.rewrite_data_keys()`), so that no
/// destroyed or superseded wrapped key stays in its pages once `tx` commits; returns the rows
/// kept.
pub async fn rewrite(tx: &mut Tx<'_>) -> Result<i32, StoreError> {
    sqlx::query_scalar("SELECT vault.rewrite_data_keys()")
        .fetch_one(&mut **tx)
        .await
        .map_err(StoreError::during("rewriting vault.data_keys"))
}
