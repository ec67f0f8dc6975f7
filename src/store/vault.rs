//! `vault.login_pii` reads for reveal and erase. Writes happen in [`super::writer`].

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};

use super::StoreError;

type Tx<'a> = Transaction<'a, Postgres>;

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

/// Which vault rows a reveal or erase concerns.
pub enum Selector<'a> {
    /// Every row of one user.
    User(&'a str),
    /// One message.
    Message(&'a str),
    /// Every row whose `masked_ip` or `masked_device_id` is this token (a duplicate group).
    Token(&'a str),
}

const COLUMNS: &str =
    "p.message_id, p.user_id, p.key_version, p.ip_sealed, p.device_id_sealed, p.created_at";

/// The selected rows, oldest first.
pub async fn find(tx: &mut Tx<'_>, selector: &Selector<'_>) -> Result<Vec<VaultRow>, StoreError> {
    let (sql, value) = match selector {
        Selector::User(v) => (
            format!("SELECT {COLUMNS} FROM vault.login_pii p WHERE p.user_id = $1"),
            v,
        ),
        Selector::Message(v) => (
            format!("SELECT {COLUMNS} FROM vault.login_pii p WHERE p.message_id = $1"),
            v,
        ),
        Selector::Token(v) => (
            format!(
                "SELECT {COLUMNS} FROM vault.login_pii p JOIN user_logins u USING (message_id)
                 WHERE u.masked_ip = $1 OR u.masked_device_id = $1"
            ),
            v,
        ),
    };
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{sql} ORDER BY p.created_at, p.message_id"
    )))
    .bind(*value)
    .fetch_all(&mut **tx)
    .await
    .map_err(StoreError::during("reading vault.login_pii"))
}

/// Deletes one user's rows from the vault, the token staging table and the analysts' table;
/// returns (vault rows, user_logins rows) deleted.
pub async fn erase_user(tx: &mut Tx<'_>, user_id: &str) -> Result<(u64, u64), StoreError> {
    let during = StoreError::during;
    sqlx::query(
        "DELETE FROM etl.token_next WHERE message_id IN (SELECT message_id FROM vault.login_pii WHERE user_id = $1)",
    )
    .bind(user_id)
    .execute(&mut **tx)
    .await
    .map_err(during("erasing from etl.token_next"))?;
    let vault = sqlx::query("DELETE FROM vault.login_pii WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut **tx)
        .await
        .map_err(during("erasing from vault.login_pii"))?;
    let logins = sqlx::query("DELETE FROM user_logins WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut **tx)
        .await
        .map_err(during("erasing from user_logins"))?;
    Ok((vault.rows_affected(), logins.rows_affected()))
}
