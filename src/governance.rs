//! Reveal governance: the access purposes every reveal names, and the rule a purpose adds to
//! the reason. The database enforces the same rules, and the quotas and the two-person rule,
//! in `vault.reveal_*()` (migration 0014); checking here first gives a usage error (exit 64)
//! before any connection is made.

use clap::ValueEnum;

use crate::error::Error;

/// Why an auditor reveals: one of a fixed list, stored in the audit row beside the reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AccessPurpose {
    /// Investigating fraud or abuse of accounts.
    FraudInvestigation,
    /// A data subject's access, rectification or erasure request.
    DataSubjectRequest,
    /// A court order, subpoena or regulator's request.
    LegalRequest,
    /// A security incident under investigation.
    SecurityIncident,
    /// A support case the user opened.
    CustomerSupport,
    /// Anything else: needs a reason of at least [`OTHER_REASON_MIN`] characters.
    Other,
}

/// The shortest reason accepted with purpose `other`, in characters (whitespace trimmed).
pub const OTHER_REASON_MIN: usize = 40;

impl AccessPurpose {
    /// The purpose's name, as stored and as given on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessPurpose::FraudInvestigation => "fraud-investigation",
            AccessPurpose::DataSubjectRequest => "data-subject-request",
            AccessPurpose::LegalRequest => "legal-request",
            AccessPurpose::SecurityIncident => "security-incident",
            AccessPurpose::CustomerSupport => "customer-support",
            AccessPurpose::Other => "other",
        }
    }

    /// Refuses a reason too short for this purpose (`other` needs a longer one).
    pub fn check_reason(self, reason: &str) -> Result<(), Error> {
        if self == AccessPurpose::Other && reason.trim().chars().count() < OTHER_REASON_MIN {
            return Err(Error::Usage(format!(
                "--purpose other needs a --reason of at least {OTHER_REASON_MIN} characters saying what the access is for; or pick a listed purpose (etl reveal --help)."
            )));
        }
        Ok(())
    }
}

impl std::fmt::Display for AccessPurpose {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_clap_and_the_database_list() {
        for purpose in AccessPurpose::value_variants() {
            let name = purpose.to_possible_value().unwrap().get_name().to_owned();
            assert_eq!(name, purpose.as_str());
        }
        // migrations/0014_reveal_governance.sql, vault.known_purposes()
        let migration = include_str!("../migrations/0014_reveal_governance.sql");
        for purpose in AccessPurpose::value_variants() {
            assert!(
                migration.contains(&format!("'{}'", purpose.as_str())),
                "{purpose}"
            );
        }
    }

    #[test]
    fn other_needs_a_longer_reason() {
        let short = "a reason of 30 characters, ok";
        assert!(
            AccessPurpose::FraudInvestigation
                .check_reason(short)
                .is_ok()
        );
        let err = AccessPurpose::Other.check_reason(short).unwrap_err();
        assert_eq!(err.exit_code(), crate::error::exit::USAGE);
        assert!(AccessPurpose::Other.check_reason(&"x".repeat(40)).is_ok());
        assert!(
            AccessPurpose::Other
                .check_reason(&format!("  {}  ", "x".repeat(39)))
                .is_err()
        );
    }
}
