//! The audit trail: appending a chained row in the caller's transaction, and checking the chain.
//! Rows come from [`store::audit`], links from [`crypto::chain`]; this module only joins them.

use chrono::{DateTime, SecondsFormat, Timelike, Utc};
use sqlx::{Postgres, Transaction};

use crate::crypto::chain::{self, AuditFields};
use crate::store::{self, StoreError, audit::AuditRow};

/// What one audited access did.
pub struct Entry<'a> {
    /// OS account running the command.
    pub actor: &'a str,
    /// `reveal` or `erase`.
    pub action: &'a str,
    /// How the records were chosen and the value used, e.g. `user_id=…`, `token=v1:…` (never a
    /// revealed value).
    pub selector: &'a str,
    /// The user, when the selector names one.
    pub user_id: Option<&'a str>,
    /// Ticket reference, if given.
    pub ticket: Option<&'a str>,
    /// Why, verbatim.
    pub reason: &'a str,
    /// Records revealed or erased.
    pub records: i32,
}

fn timestamp(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn fields<'a>(row: &'a AuditRow, at: &'a str) -> AuditFields<'a> {
    AuditFields {
        id: row.id,
        at,
        db_role: &row.db_role,
        actor: &row.actor,
        action: &row.action,
        selector: row.selector.as_deref(),
        user_id: row.user_id.as_deref(),
        ticket: row.ticket.as_deref(),
        reason: &row.reason,
        records: row.records,
    }
}

/// Appends one chained row in `tx`; returns its id. Appends are serialised by a lock held until
/// the transaction ends, so the chain has a single order.
pub async fn append(
    tx: &mut Transaction<'_, Postgres>,
    entry: &Entry<'_>,
) -> Result<i64, StoreError> {
    let head = store::audit::head(tx).await?;
    // Postgres keeps microseconds: hash exactly what is stored.
    let now = Utc::now();
    let at = now
        .with_nanosecond(now.nanosecond() / 1000 * 1000)
        .unwrap_or(now);
    let mut row = AuditRow {
        id: head.id,
        at,
        db_role: head.db_role,
        actor: entry.actor.to_owned(),
        action: entry.action.to_owned(),
        selector: Some(entry.selector.to_owned()),
        user_id: entry.user_id.map(str::to_owned),
        ticket: entry.ticket.map(str::to_owned),
        reason: entry.reason.to_owned(),
        records: entry.records,
        prev_hash: Some(head.prev_hash),
        hash: None,
    };
    let at_text = timestamp(&row.at);
    let hash = chain::link(
        row.prev_hash.as_deref().unwrap_or_default(),
        &fields(&row, &at_text),
    );
    row.hash = Some(hash.to_vec());
    store::audit::append(tx, &row).await?;
    Ok(row.id)
}

/// What `etl audit verify` found.
#[derive(Debug, Default, serde::Serialize)]
pub struct ChainReport {
    /// Rows read.
    pub rows: usize,
    /// Rows written before the chain existed (no hash), all at the start.
    pub unchained: usize,
    /// Ids where the chain breaks, with why.
    pub broken: Vec<(i64, &'static str)>,
    /// Hash of the last row: record it elsewhere to detect a later deletion of the tail.
    pub head: Option<String>,
}

/// Recomputes every link in id order.
pub fn verify(rows: &[AuditRow]) -> ChainReport {
    let mut report = ChainReport {
        rows: rows.len(),
        ..ChainReport::default()
    };
    let mut prev: Option<&[u8]> = None;
    for row in rows {
        let Some(hash) = row.hash.as_deref() else {
            if prev.is_some() {
                report
                    .broken
                    .push((row.id, "row without a hash after the chain started"));
            } else {
                report.unchained += 1;
            }
            continue;
        };
        let claimed_prev = row.prev_hash.as_deref().unwrap_or_default();
        if claimed_prev != prev.unwrap_or_default() {
            report.broken.push((
                row.id,
                "the previous row was deleted, replaced or reordered",
            ));
        }
        let at = timestamp(&row.at);
        if chain::link(claimed_prev, &fields(row, &at)) != hash {
            report.broken.push((row.id, "the row was edited"));
        }
        prev = Some(hash);
    }
    report.head = prev.map(hex::encode);
    report
}
