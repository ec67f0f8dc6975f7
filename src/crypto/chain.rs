//! The audit trail's hash chain: `hash_n = SHA-256(hash_{n-1} || canonical JSON of row n)`.
//! A deleted, edited or reordered row breaks every later link.

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

/// The hash of a row given the previous row's hash (empty for the first row).
pub fn link(prev: &[u8], fields: &AuditFields<'_>) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(prev);
    hasher.update(serde_json::to_vec(fields).expect("audit fields serialise"));
    hasher.finalize().into()
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
}
