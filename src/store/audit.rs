//! `vault.reveal_audit`: one row per reveal, written in the reveal's own transaction.
//! TODO(issue 6): hash chain, ticket, selector kinds, `etl audit list|verify`.

use sqlx::{Postgres, Transaction};

use super::StoreError;

/// What one reveal did. The database records `session_user` and the time itself.
pub struct AuditEntry<'a> {
    /// OS user who ran the command.
    pub actor: &'a str,
    /// The user whose originals were revealed.
    pub user_id: &'a str,
    /// Why, verbatim.
    pub reason: &'a str,
    /// How many records were found.
    pub records: i32,
}

/// Appends one audit row; returns its id.
pub async fn append(
    tx: &mut Transaction<'_, Postgres>,
    entry: &AuditEntry<'_>,
) -> Result<i64, StoreError> {
    sqlx::query_scalar(
        "INSERT INTO vault.reveal_audit (actor, user_id, reason, records) VALUES ($1, $2, $3, $4) RETURNING id",
    )
    .bind(entry.actor)
    .bind(entry.user_id)
    .bind(entry.reason)
    .bind(entry.records)
    .fetch_one(&mut **tx)
    .await
    .map_err(StoreError::during("writing the reveal audit row"))
}
