//! `vault.login_pii` reads for reveal. Writes happen in [`super::writer`].

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};

use super::StoreError;

/// One vault row: sealed originals of one message.
#[derive(sqlx::FromRow)]
pub struct VaultRow {
    pub message_id: String,
    pub user_id: String,
    pub key_version: i32,
    pub ip_sealed: Option<Vec<u8>>,
    pub device_id_sealed: Option<Vec<u8>>,
    pub created_at: DateTime<Utc>,
}

/// Every vault row of one user, oldest first.
pub async fn find_by_user(
    tx: &mut Transaction<'_, Postgres>,
    user_id: &str,
) -> Result<Vec<VaultRow>, StoreError> {
    sqlx::query_as(
        "SELECT message_id, user_id, key_version, ip_sealed, device_id_sealed, created_at
         FROM vault.login_pii WHERE user_id = $1 ORDER BY created_at, message_id",
    )
    .bind(user_id)
    .fetch_all(&mut **tx)
    .await
    .map_err(StoreError::during("reading vault.login_pii"))
}
