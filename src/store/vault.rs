//! `vault.login_pii` for reveal (through `vault.reveal_request()` or `reveal_execute()`, then
//! `reveal_rows()`) and erase. Writes happen in [`super::writer`]; requests, approvals and the
//! policy in [`super::governance`].

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::StoreError;
use crate::governance::AccessPurpose;

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
    /// The access purpose (checked by the database against the deployment's policy).
    pub purpose: AccessPurpose,
    /// Why, verbatim.
    pub reason: &'a str,
    /// Ticket reference, if given.
    pub ticket: Option<&'a str>,
    /// OS account running the command (informational).
    pub actor: &'a str,
}

/// What the database answered a reveal: the rows, or the policy's refusal (audited either way).
pub enum Granted {
    /// The audit row and the records, oldest first.
    Rows { audit_id: i64, rows: Vec<VaultRow> },
    /// The audit row of the refusal, and why.
    Refused { audit_id: i64, why: String },
}

/// Reveals in two statements, each its own transaction: `vault.reveal_request()` commits the
/// audit row and a single-use grant (or a refusal), then `vault.reveal_rows()` returns the
/// selected rows. The database serves no row before the audit row is committed.
pub async fn reveal(pool: &PgPool, request: &RevealRequest<'_>) -> Result<Granted, StoreError> {
    let answer = sqlx::query_as(
        "SELECT audit_id, records, refused FROM vault.reveal_request($1, $2, $3, $4, $5, $6)",
    )
    .bind(request.selector.name())
    .bind(request.selector.value())
    .bind(request.purpose.as_str())
    .bind(request.reason)
    .bind(request.ticket)
    .bind(request.actor)
    .fetch_one(pool)
    .await
    .map_err(StoreError::during(
        "auditing the reveal (vault.reveal_request())",
    ))?;
    rows_for(pool, answer).await
}

/// Executes an approved two-person request (`vault.reveal_execute()`), then reads its rows.
pub async fn execute(pool: &PgPool, request_id: i64, actor: &str) -> Result<Granted, StoreError> {
    let answer =
        sqlx::query_as("SELECT audit_id, records, refused FROM vault.reveal_execute($1, $2)")
            .bind(request_id)
            .bind(actor)
            .fetch_one(pool)
            .await
            .map_err(StoreError::during(
                "executing the reveal request (vault.reveal_execute())",
            ))?;
    rows_for(pool, answer).await
}

async fn rows_for(
    pool: &PgPool,
    (audit_id, _records, refused): (i64, i32, Option<String>),
) -> Result<Granted, StoreError> {
    if let Some(why) = refused {
        return Ok(Granted::Refused { audit_id, why });
    }
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
    Ok(Granted::Rows { audit_id, rows })
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
