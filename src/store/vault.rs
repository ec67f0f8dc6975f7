//! `vault.login_pii` for reveal (through `vault.reveal()`) and erase. Writes happen in
//! [`super::writer`].

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};

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

/// One row `vault.reveal()` returns: the audit row's id beside each record.
#[derive(sqlx::FromRow)]
struct RevealedRow {
    audit_id: i64,
    #[sqlx(flatten)]
    row: VaultRow,
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

impl Selector<'_> {
    /// The selector's name in `vault.reveal()` and the audit trail.
    pub fn name(&self) -> &'static str {
        match self {
            Selector::User(_) => "user_id",
            Selector::Message(_) => "message_id",
            Selector::Token(_) => "token",
        }
    }

    /// The value selected by.
    pub fn value(&self) -> &str {
        match self {
            Selector::User(v) | Selector::Message(v) | Selector::Token(v) => v,
        }
    }
}

/// Why and by whom a reveal is made; the server records it with its own time and role.
pub struct RevealRequest<'a> {
    /// Which records.
    pub selector: Selector<'a>,
    /// Why, verbatim.
    pub reason: &'a str,
    /// Ticket reference, if given.
    pub ticket: Option<&'a str>,
    /// OS account running the command (informational).
    pub actor: &'a str,
}

/// Reveals through `vault.reveal()`: one statement appends the audit row and returns the
/// selected rows, oldest first, committed before this returns. Returns the audit row's id (none
/// when nothing matched and the server returned no row) and the rows.
pub async fn reveal(
    pool: &PgPool,
    request: &RevealRequest<'_>,
) -> Result<(Option<i64>, Vec<VaultRow>), StoreError> {
    let rows: Vec<RevealedRow> = sqlx::query_as(
        "SELECT audit_id, message_id, user_id, key_version, ip_sealed, device_id_sealed, created_at
         FROM vault.reveal($1, $2, $3, $4, $5)",
    )
    .bind(request.selector.name())
    .bind(request.selector.value())
    .bind(request.reason)
    .bind(request.ticket)
    .bind(request.actor)
    .fetch_all(pool)
    .await
    .map_err(StoreError::during("revealing through vault.reveal()"))?;
    let audit_id = rows.first().map(|r| r.audit_id);
    let rows = rows.into_iter().map(|r| r.row).collect();
    Ok((audit_id, rows))
}

/// Deletes one user's rows from the vault, the token staging table and the analysts' table;
/// returns the message ids of the vault rows and the number of user_logins rows deleted.
pub async fn erase_user(tx: &mut Tx<'_>, user_id: &str) -> Result<(Vec<String>, u64), StoreError> {
    let during = StoreError::during;
    sqlx::query(
        "DELETE FROM etl.token_next WHERE message_id IN (SELECT message_id FROM vault.login_pii WHERE user_id = $1)",
    )
    .bind(user_id)
    .execute(&mut **tx)
    .await
    .map_err(during("erasing from etl.token_next"))?;
    let vault: Vec<String> =
        sqlx::query_scalar("DELETE FROM vault.login_pii WHERE user_id = $1 RETURNING message_id")
            .bind(user_id)
            .fetch_all(&mut **tx)
            .await
            .map_err(during("erasing from vault.login_pii"))?;
    let logins = sqlx::query("DELETE FROM user_logins WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut **tx)
        .await
        .map_err(during("erasing from user_logins"))?;
    Ok((vault, logins.rows_affected()))
}
