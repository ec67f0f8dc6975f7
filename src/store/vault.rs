//! `vault.login_pii` for reveal (through `vault.reveal_request()` and `reveal_rows()`) and erase. Writes happen in
//! [`super::writer`].

use chrono::{DateTime, Utc};
use sqlx::PgPool;

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
    /// The selector's name in `vault.reveal_request()` and the audit trail.
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

/// Reveals in two statements, each its own transaction: `vault.reveal_request()` commits the
/// audit row and a single-use grant, then `vault.reveal_rows()` returns the selected rows, oldest
/// first. The database serves no row before the audit row is committed. Returns the audit row's
/// id and the rows.
pub async fn reveal(
    pool: &PgPool,
    request: &RevealRequest<'_>,
) -> Result<(i64, Vec<VaultRow>), StoreError> {
    let (audit_id, _records): (i64, i32) =
        sqlx::query_as("SELECT audit_id, records FROM vault.reveal_request($1, $2, $3, $4, $5)")
            .bind(request.selector.name())
            .bind(request.selector.value())
            .bind(request.reason)
            .bind(request.ticket)
            .bind(request.actor)
            .fetch_one(pool)
            .await
            .map_err(StoreError::during(
                "auditing the reveal (vault.reveal_request())",
            ))?;
    let rows = sqlx::query_as(
        "SELECT message_id, user_id, key_version, ip_sealed, device_id_sealed, created_at
         FROM vault.reveal_rows($1)",
    )
    .bind(audit_id)
    .fetch_all(pool)
    .await
    .map_err(StoreError::during(
        "reading the revealed rows (vault.reveal_rows())",
    ))?;
    Ok((audit_id, rows))
}

/// What `etl erase` asks the database to erase.
pub struct EraseRequest<'a> {
    /// Whose data.
    pub user_id: &'a str,
    /// The user's body tags under every seal key held: quarantined bodies carrying one go.
    pub tags: &'a [String],
    /// Untagged quarantined bodies the caller's audited scan found naming the user.
    pub found: &'a [String],
    /// A remark for the audit row's selector (bodies that could not be opened), if any.
    pub note: Option<&'a str>,
    /// Why, verbatim.
    pub reason: &'a str,
    /// Ticket reference, if given.
    pub ticket: Option<&'a str>,
    /// OS account running the command (informational).
    pub actor: &'a str,
}

/// What one erasure removed, and its audit row.
#[derive(Debug, sqlx::FromRow)]
pub struct Erased {
    pub audit_id: i64,
    pub vault_rows: i64,
    pub login_rows: i64,
    pub quarantine_rows: i64,
}

/// Erases one user through `vault.erase_user()`: vault rows, staged tokens, analysts' rows and
/// matching quarantined bodies go, with the audit row, in one statement.
pub async fn erase_user(pool: &PgPool, request: &EraseRequest<'_>) -> Result<Erased, StoreError> {
    sqlx::query_as(
        "SELECT audit_id, vault_rows, login_rows, quarantine_rows
         FROM vault.erase_user($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(request.user_id)
    .bind(request.tags)
    .bind(request.found)
    .bind(request.note)
    .bind(request.reason)
    .bind(request.ticket)
    .bind(request.actor)
    .fetch_one(pool)
    .await
    .map_err(StoreError::during("erasing through vault.erase_user()"))
}
