//! The audit trail's hash chain: `hash_n = SHA-256(hash_{n-1} || encoding of row n)`.
//! A deleted, edited or reordered row breaks every later link.
//!
//! Three encodings exist. Format 1 (rows written by `etl` before migration 0009) is the row's
//! fields as JSON. Format 2 (migrations 0009–0013) is computed by the server in
//! `vault.audit_row_hash()`: each field length-prefixed, so no two rows encode alike. Format 3
//! (every row since migration 0014, `vault.audit_row_hash_v3()`) hashes the format-2 hash with
//! the governance fields: purpose, request id, note. All are recomputed here, so verification
//! never trusts the database's own arithmetic.

use serde::Serialize;
use sha2::{Digest, Sha256};

/// The audited fields of one row, in the fixed order they are hashed.
#[derive(Debug, Clone, Serialize)]
pub struct AuditFields<'a> {
    pub id: i64,
    /// RFC 3339 with microseconds, UTC.
    pub at: &'a str,
    pub db_role: &'a str,
    pub actor: &'a str,
    pub action: &'a str,
    pub selector: Option<&'a str>,
    pub user_id: Option<&'a str>,
    pub ticket: Option<&'a str>,
    pub reason: &'a str,
    pub records: i32,
}

/// The fields format 2 adds: whose records, and a digest of which.
#[derive(Debug, Clone, Copy, Default)]
pub struct Concerned<'a> {
    /// Distinct user ids the access concerned.
    pub subjects: Option<&'a [String]>,
    /// SHA-256 over the message ids concerned.
    pub records_digest: Option<&'a [u8]>,
}

/// The hash of a format-1 row given the previous row's hash (empty for the first row).
pub fn link(prev: &[u8], fields: &AuditFields<'_>) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(prev);
    hasher.update(serde_json::to_vec(fields).expect("audit fields serialise"));
    hasher.finalize().into()
}

/// Domain tag hashed first in every format-2 row.
const FORMAT_2_TAG: &str = "piivault-audit-2";

/// One length-prefixed field, as `vault.audit_field()` encodes it (NULL is length -1).
fn field(hasher: &mut Sha256, value: Option<&str>) {
    match value {
        None => hasher.update((-1i32).to_be_bytes()),
        Some(v) => {
            hasher.update((v.len() as i32).to_be_bytes());
            hasher.update(v.as_bytes());
        }
    }
}

/// The hash of a format-2 row; `at_micros` is its time in microseconds since the Unix epoch.
pub fn link_v2(
    prev: &[u8],
    fields: &AuditFields<'_>,
    at_micros: i64,
    concerned: Concerned<'_>,
) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    field(&mut h, Some(FORMAT_2_TAG));
    field(&mut h, Some(&fields.id.to_string()));
    field(&mut h, Some(&at_micros.to_string()));
    field(&mut h, Some(fields.db_role));
    field(&mut h, Some(fields.actor));
    field(&mut h, Some(fields.action));
    field(&mut h, fields.selector);
    field(&mut h, fields.user_id);
    field(&mut h, fields.ticket);
    field(&mut h, Some(fields.reason));
    field(&mut h, Some(&fields.records.to_string()));
    match concerned.subjects {
        None => field(&mut h, None),
        Some(subjects) => {
            field(&mut h, Some(&subjects.len().to_string()));
            for s in subjects {
                field(&mut h, Some(s));
            }
        }
    }
    field(&mut h, concerned.records_digest.map(hex::encode).as_deref());
    h.finalize().into()
}

/// The fields format 3 adds: why, under which request, and what the server noted (a refusal).
#[derive(Debug, Clone, Copy, Default)]
pub struct Governance<'a> {
    /// The access purpose of a reveal, request or approval.
    pub purpose: Option<&'a str>,
    /// The two-person request an approval, execution or refusal belongs to.
    pub request_id: Option<i64>,
    /// Why the server refused, or the policy it set.
    pub note: Option<&'a str>,
}

/// Domain tag of the format-3 extension.
const FORMAT_3_TAG: &str = "piivault-audit-3";

/// The hash of a format-3 row: its format-2 hash, extended by the governance fields.
pub fn link_v3(
    prev: &[u8],
    fields: &AuditFields<'_>,
    at_micros: i64,
    concerned: Concerned<'_>,
    governance: Governance<'_>,
) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(link_v2(prev, fields, at_micros, concerned));
    field(&mut h, Some(FORMAT_3_TAG));
    field(&mut h, governance.purpose);
    field(
        &mut h,
        governance.request_id.map(|id| id.to_string()).as_deref(),
    );
    field(&mut h, governance.note);
    h.finalize().into()
}

/// The digest of a set of message ids, as `vault.records_digest()` computes it.
pub fn records_digest<'a>(ids: impl IntoIterator<Item = &'a str>) -> [u8; 32] {
    let mut ids: Vec<&str> = ids.into_iter().collect();
    ids.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    let mut h = Sha256::new();
    for id in ids {
        field(&mut h, Some(id));
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(reason: &str) -> AuditFields<'_> {
        AuditFields {
            id: 1,
            at: "2026-01-01T00:00:00.000000Z",
            db_role: "auditor",
            actor: "alice",
            action: "reveal",
            selector: Some("user_id"),
            user_id: Some("u1"),
            ticket: None,
            reason,
            records: 2,
        }
    }

    #[test]
    fn every_field_and_the_previous_hash_change_the_link() {
        let a = link(&[], &fields("fraud check"));
        assert_eq!(a, link(&[], &fields("fraud check")));
        assert_ne!(a, link(&[], &fields("fraud check!")));
        assert_ne!(a, link(&[1], &fields("fraud check")));
        let b = link(
            &a,
            &AuditFields {
                id: 2,
                ..fields("x")
            },
        );
        assert_ne!(
            b,
            link(
                &[0; 32],
                &AuditFields {
                    id: 2,
                    ..fields("x")
                }
            )
        );
    }

    #[test]
    fn format_2_separates_fields_and_binds_subjects_and_digest() {
        let subjects = vec!["u1".to_owned(), "u2".to_owned()];
        let digest = records_digest(["m2", "m1"]);
        let concerned = Concerned {
            subjects: Some(&subjects),
            records_digest: Some(&digest),
        };
        let base = link_v2(&[], &fields("fraud check"), 7, concerned);
        assert_eq!(base, link_v2(&[], &fields("fraud check"), 7, concerned));
        assert_ne!(base, link_v2(&[], &fields("fraud check"), 8, concerned));
        // Moving text between adjacent fields changes the hash (length prefixes).
        let shifted = AuditFields {
            actor: "alic",
            db_role: "auditore",
            ..fields("fraud check")
        };
        assert_ne!(base, link_v2(&[], &shifted, 7, concerned));
        let one = vec!["u1".to_owned()];
        assert_ne!(
            base,
            link_v2(
                &[],
                &fields("fraud check"),
                7,
                Concerned {
                    subjects: Some(&one),
                    ..concerned
                }
            )
        );
        assert_ne!(
            base,
            link_v2(&[], &fields("fraud check"), 7, Concerned::default())
        );
        assert_eq!(digest, records_digest(["m1", "m2"]), "order-independent");
        assert_ne!(digest, records_digest(["m1"]));
    }

    #[test]
    fn format_3_binds_purpose_request_and_note() {
        let governance = Governance {
            purpose: Some("legal-request"),
            request_id: Some(12),
            note: None,
        };
        let f = fields("court order");
        let base = link_v3(&[], &f, 7, Concerned::default(), governance);
        assert_ne!(base, link_v2(&[], &f, 7, Concerned::default()));
        for other in [
            Governance {
                purpose: Some("other"),
                ..governance
            },
            Governance {
                request_id: Some(13),
                ..governance
            },
            Governance {
                note: Some(""),
                ..governance
            },
            Governance::default(),
        ] {
            assert_ne!(base, link_v3(&[], &f, 7, Concerned::default(), other));
        }
    }
}
