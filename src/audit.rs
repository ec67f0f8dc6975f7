//! The audit trail: the reason and actor every audited command records (the server writes and
//! chains the rows), and checking the chain. Rows come from [`crate::store::audit`], links from
//! [`crate::crypto::chain`]; this module only joins them.

use chrono::{DateTime, SecondsFormat, Utc};

use crate::crypto::chain::{self, AuditFields, Concerned, Governance};
use crate::store::audit::AuditRow;

use crate::error::Error;

/// Shortest accepted `--reason`: a word or two is not a reason an auditor can act on (the
/// server checks the same bound).
pub const MIN_REASON_CHARS: usize = 8;

/// Checks a `--reason`: non-blank and long enough to mean something.
pub fn check_reason(reason: &str) -> Result<(), Error> {
    if reason.trim().chars().count() < MIN_REASON_CHARS {
        return Err(Error::Usage(format!(
            "--reason must say why, in at least {MIN_REASON_CHARS} characters (it is audited verbatim)."
        )));
    }
    Ok(())
}

/// The OS account running the command, for the audit row (from the system, not `$USER`,
/// which the caller controls). Informational: the server records the database login.
pub fn os_user() -> String {
    whoami::account().unwrap_or_else(|_| "unknown".into())
}

/// A time as the chain and checkpoints write it: RFC 3339, microseconds, `Z`.
pub fn timestamp(at: &DateTime<Utc>) -> String {
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

fn concerned(row: &AuditRow) -> Concerned<'_> {
    Concerned {
        subjects: row.subjects.as_deref(),
        records_digest: row.records_digest.as_deref(),
    }
}

/// The hash a row should carry, in the format it was written in.
fn expected_hash(row: &AuditRow, prev: &[u8]) -> Option<[u8; 32]> {
    let at = timestamp(&row.at);
    let fields = fields(row, &at);
    match row.chain_format {
        1 => Some(chain::link(prev, &fields)),
        2 => Some(chain::link_v2(
            prev,
            &fields,
            row.at.timestamp_micros(),
            concerned(row),
        )),
        3 => Some(chain::link_v3(
            prev,
            &fields,
            row.at.timestamp_micros(),
            concerned(row),
            Governance {
                purpose: row.purpose.as_deref(),
                request_id: row.request_id,
                note: row.note.as_deref(),
            },
        )),
        _ => None,
    }
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

/// Recomputes every link in id order; `head` is the server's record of the last row appended
/// (`vault.audit_head`), which shows a deletion of the newest rows.
pub fn verify(rows: &[AuditRow], head: Option<(i64, &[u8])>) -> ChainReport {
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
        match expected_hash(row, claimed_prev) {
            Some(expected) if expected == hash => {}
            Some(_) => report.broken.push((row.id, "the row was edited")),
            None => report.broken.push((row.id, "unknown chain format")),
        }
        prev = Some(hash);
    }
    if let Some((head_id, head_hash)) = head {
        let last = rows
            .last()
            .map(|r| (r.id, r.hash.as_deref().unwrap_or_default()));
        let matches = match last {
            Some((id, hash)) => id == head_id && hash == head_hash,
            None => head_id == 0,
        };
        if !matches {
            report.broken.push((
                head_id,
                "the newest rows were deleted or added outside vault.audit_append()",
            ));
        }
    }
    report.head = prev.map(hex::encode);
    report
}

/// Whether the trail still holds a checkpoint's head: the row with that id, with that hash.
/// Rows are in id order (as [`crate::store::audit::chain`] reads them).
pub fn holds(rows: &[AuditRow], head_id: i64, head_hash: &[u8]) -> Result<(), String> {
    if head_id == 0 {
        return Ok(()); // checkpointed before the first row: nothing to lose
    }
    match rows.binary_search_by_key(&head_id, |r| r.id) {
        Ok(i) if rows[i].hash.as_deref() == Some(head_hash) => Ok(()),
        Ok(_) => Err(format!(
            "row {head_id} now has another hash: the trail was rewritten after the checkpoint"
        )),
        Err(_) => Err(match rows.last() {
            Some(last) if last.id < head_id => format!(
                "row {head_id} is gone: the trail now ends at row {}, so the newest rows were deleted",
                last.id
            ),
            Some(_) => format!("row {head_id} is gone: rows were deleted"),
            None => format!("row {head_id} is gone: the trail is empty"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, hash: u8) -> AuditRow {
        AuditRow {
            id,
            at: Utc::now(),
            db_role: "auditor".into(),
            actor: "a".into(),
            action: "reveal".into(),
            selector: None,
            user_id: None,
            ticket: None,
            reason: "a reason given".into(),
            records: 0,
            subjects: None,
            records_digest: None,
            prev_hash: None,
            hash: Some(vec![hash; 32]),
            chain_format: 3,
            purpose: None,
            request_id: None,
            note: None,
        }
    }

    #[test]
    fn a_checkpoint_holds_only_while_its_row_and_hash_remain() {
        let rows = vec![row(1, 1), row(2, 2), row(3, 3)];
        assert_eq!(holds(&rows, 2, &[2; 32]), Ok(()));
        assert_eq!(holds(&rows, 0, &[]), Ok(()));
        assert!(
            holds(&rows, 2, &[9; 32])
                .unwrap_err()
                .contains("another hash")
        );
        let tail_cut = &rows[..2];
        let why = holds(tail_cut, 3, &[3; 32]).unwrap_err();
        assert!(why.contains("now ends at row 2"), "{why}");
        let gap = [row(1, 1), row(3, 3)];
        assert!(holds(&gap, 2, &[2; 32]).unwrap_err().contains("is gone"));
        assert!(holds(&[], 1, &[1; 32]).unwrap_err().contains("empty"));
    }
}
