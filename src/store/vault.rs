//! `vault.login_pii` for reveal (through `vault.reveal()`) and erase. Writes happen in
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
