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

/// Checks the chain one row at a time, in id order, so a trail of any length is verified in
/// constant memory.
#[derive(Debug, Default)]
pub struct ChainCheck {
    report: ChainReport,
    /// The last chained row's hash.
    prev: Option<Vec<u8>>,
    /// The last row's id and hash (empty when it has none).
    last: Option<(i64, Vec<u8>)>,
}

impl ChainCheck {
    /// Checks the next row.
    pub fn push(&mut self, row: &AuditRow) {
        let report = &mut self.report;
        report.rows += 1;
        self.last = Some((row.id, row.hash.clone().unwrap_or_default()));
        let Some(hash) = row.hash.as_deref() else {
            if self.prev.is_some() {
                report
                    .broken
                    .push((row.id, "row without a hash after the chain started"));
            } else {
                report.unchained += 1;
            }
            return;
        };
        let claimed_prev = row.prev_hash.as_deref().unwrap_or_default();
        if claimed_prev != self.prev.as_deref().unwrap_or_default() {
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
        self.prev = Some(hash.to_vec());
    }

    /// The id of the last row pushed.
    pub fn last_id(&self) -> Option<i64> {
        self.last.as_ref().map(|(id, _)| *id)
    }

    /// Ends the check; `head` is the server's record of the last row appended
    /// (`vault.audit_head`), which shows a deletion of the newest rows.
    pub fn finish(mut self, head: Option<(i64, &[u8])>) -> ChainReport {
        if let Some((head_id, head_hash)) = head {
            let matches = match &self.last {
                Some((id, hash)) => *id == head_id && hash == head_hash,
                None => head_id == 0,
            };
            if !matches {
                self.report.broken.push((
                    head_id,
                    "the newest rows were deleted or added outside vault.audit_append()",
                ));
            }
        }
        self.report.head = self.prev.as_deref().map(hex::encode);
        self.report
    }
}

/// Whether the trail still holds a checkpoint's head: `found` is the hash now stored in row
/// `head_id` (`None`: no such row), `last_id` the trail's last id.
pub fn holds(
    found: Option<&[u8]>,
    last_id: Option<i64>,
    head_id: i64,
    head_hash: &[u8],
) -> Result<(), String> {
    if head_id == 0 {
        return Ok(()); // checkpointed before the first row: nothing to lose
    }
    match (found, last_id) {
        (Some(hash), _) if hash == head_hash => Ok(()),
        (Some(_), _) => Err(format!(
            "row {head_id} now has another hash: the trail was rewritten after the checkpoint"
        )),
        (None, Some(last)) if last < head_id => Err(format!(
            "row {head_id} is gone: the trail now ends at row {last}, so the newest rows were deleted"
        )),
        (None, Some(_)) => Err(format!("row {head_id} is gone: rows were deleted")),
        (None, None) => Err(format!("row {head_id} is gone: the trail is empty")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verify(rows: &[AuditRow], head: Option<(i64, &[u8])>) -> ChainReport {
        let mut check = ChainCheck::default();
        for row in rows {
            check.push(row);
        }
        check.finish(head)
    }

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
        assert_eq!(holds(Some(&[2; 32]), Some(3), 2, &[2; 32]), Ok(()));
        assert_eq!(holds(None, None, 0, &[]), Ok(()));
        assert!(
            holds(Some(&[9; 32]), Some(3), 2, &[2; 32])
                .unwrap_err()
                .contains("another hash")
        );
        let why = holds(None, Some(2), 3, &[3; 32]).unwrap_err();
        assert!(why.contains("now ends at row 2"), "{why}");
        assert!(
            holds(None, Some(3), 2, &[2; 32])
                .unwrap_err()
                .contains("rows were deleted")
        );
        assert!(
            holds(None, None, 1, &[1; 32])
                .unwrap_err()
                .contains("empty")
        );
    }

    #[test]
    fn unchained_rows_are_counted_and_a_cut_tail_shows_at_the_head() {
        // Unchained rows (hash None) count as such, then the head check alone sees a cut tail.
        let mut rows = vec![row(1, 1), row(2, 2)];
        for r in &mut rows {
            r.hash = None;
        }
        let report = verify(&rows, Some((2, &[])));
        assert_eq!(
            (report.rows, report.unchained, report.broken.len()),
            (2, 2, 0)
        );
        let cut = verify(&rows[..1], Some((2, &[])));
        assert_eq!(cut.broken.len(), 1, "{:?}", cut.broken);
        assert!(cut.broken[0].1.contains("newest rows were deleted"));
    }
}
