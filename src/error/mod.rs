//! The error a command returns, and the exit code each kind maps to (sysexits; see README);
//! [`classify`] sorts service failures into kinds.

pub mod classify;

use crate::config::ConfigError;
use crate::crypto::{KeyVersion, Purpose};
use crate::kek::KekError;
use crate::source::SourceError;
use crate::store::StoreError;

/// Exit codes, sysexits style. Documented in README, section "Exit codes".
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// Bad command line (unknown flag, missing `--reason`, …).
    pub const USAGE: u8 = 64;
    /// Bad data: an input file that is not JSON, a sealed value failing its integrity check.
    pub const DATA: u8 = 65;
    /// An input file does not exist or cannot be read.
    pub const NO_INPUT: u8 = 66;
    /// A service (Postgres, SQS, KMS) is unreachable, throttling, failing, read-only or out of
    /// resources (for `etl run`: for longer than `--max-outage-secs`).
    pub const UNAVAILABLE: u8 = 69;
    /// An internal error (a bug): please report it.
    pub const SOFTWARE: u8 = 70;
    /// Refused in the current state: `keys init` with keys present, `keys retire` of a key in use,
    /// `keys rotate` while a token rotation is pending.
    pub const CANT_CREATE: u8 = 73;
    /// Writing the output failed.
    pub const IO: u8 = 74;
    /// A temporary failure (transaction conflicts, cancelled statements or key rotations that
    /// persisted, a stall): retry later.
    pub const TEMP_FAIL: u8 = 75;
    /// A service refused for lack of permission.
    pub const NO_PERMISSION: u8 = 77;
    /// Configuration: a missing variable, a bad or wrong key-encryption key, keys or schema missing.
    pub const CONFIG: u8 = 78;
}

/// Everything a command can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is missing.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The key-encryption key failed.
    #[error(transparent)]
    Kek(#[from] KekError),
    /// SQS or the input file failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// Postgres failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The command line is valid for clap but not for us.
    #[error("{0}")]
    Usage(String),
    /// `etl keys init` has not run.
    #[error("no {0} key exists in vault.data_keys.\nRun `etl keys init` first.")]
    NoKeys(Purpose),
    /// `etl keys init` found keys.
    #[error(
        "vault.data_keys already holds {0} key(s); `etl keys init` never overwrites keys.\nSee them with `etl keys status`."
    )]
    KeysExist(i64),
    /// An unwrapped data key is not 32 bytes.
    #[error(
        "the {purpose} key v{version} unwrapped to the wrong length; the stored key is damaged."
    )]
    BadDataKey {
        purpose: Purpose,
        version: KeyVersion,
    },
    /// Some revealed records failed their integrity check.
    #[error(
        "{failed} of {total} records failed their integrity check and were not printed (details above)."
    )]
    Integrity { failed: usize, total: usize },
    /// The active keys changed while a batch was written (it was rolled back; retried while
    /// running, this ends the run only if rotations kept it from committing for the whole
    /// `--max-outage-secs`).
    #[error(
        "the active data keys changed while a batch was written; nothing of it was committed.\nRetry once the key rotation has finished."
    )]
    KeysChanging,
    /// Messages in hand made no progress for `--stall-timeout-secs`.
    #[error(
        "messages in hand were neither committed nor deleted for {secs} s (--stall-timeout-secs): a stage is stuck (a statement waiting on a lock, a hung connection).\nThe messages are redelivered; look for long-held locks in pg_stat_activity, then restart."
    )]
    Stalled { secs: u64 },
    /// A key operation is refused in the current state (key in use, rotation pending, ...).
    #[error("{0}")]
    Refused(String),
    /// `keys verify`, `reencrypt` or `retokenize` found values that do not open or tokens that differ.
    #[error(
        "{failed} value(s) failed to open and {mismatched} token(s) differ from their recomputation (message ids above)."
    )]
    Verify { failed: u64, mismatched: u64 },
    /// `etl audit verify` found a broken chain.
    #[error(
        "the audit chain is broken at {0} row(s) (listed above): rows were deleted, edited or reordered."
    )]
    AuditBroken(usize),
    /// `etl audit verify --checkpoint` found checkpoints that do not hold.
    #[error(
        "{failed} of {total} checkpoint(s) do not hold (listed above): the trail lost or rewrote rows it had when they were signed, or a checkpoint was edited."
    )]
    CheckpointFailed { failed: usize, total: usize },
    /// A file named by a flag cannot be read.
    #[error("cannot read {flag} {path}: {source}.\nCheck the path and its permissions.")]
    ReadFile {
        flag: &'static str,
        path: String,
        source: std::io::Error,
    },
    /// A file named by a flag cannot be written; the previous file, if any, is unchanged.
    #[error(
        "cannot write {flag} {path}: {source}.\nCheck that the directory exists and is writable; the previous file, if any, is unchanged."
    )]
    WriteFile {
        flag: &'static str,
        path: String,
        source: std::io::Error,
    },
    /// The vault's policy refused a reveal, a request or an approval; the refusal is audited.
    #[error(
        "the vault refused: {why} (audit row {audit_id}).\nSee the policy with `etl policy show`; a purpose under the two-person rule needs `etl reveal request`, approved by another login."
    )]
    RevealRefused { audit_id: i64, why: String },
    /// Stdout could not be written.
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
    /// The metrics server cannot listen.
    #[error(
        "cannot listen on --metrics-addr {addr}: {detail}.\nPick a free address and port, or leave --metrics-addr out."
    )]
    MetricsAddr { addr: String, detail: String },
}

impl Error {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        use exit::*;
        match self {
            Error::Config(_) | Error::NoKeys(_) | Error::MetricsAddr { .. } => CONFIG,
            Error::Kek(e) => match e {
                KekError::KmsUnavailable { .. } => UNAVAILABLE,
                KekError::KmsRefused { .. } => NO_PERMISSION,
                _ => CONFIG,
            },
            Error::Source(e) => match e {
                SourceError::Unavailable { .. } => UNAVAILABLE,
                SourceError::NoQueue { .. } => CONFIG,
                SourceError::Refused { .. } => NO_PERMISSION,
                SourceError::FileRead { .. } => NO_INPUT,
                SourceError::FileFormat { .. } => DATA,
            },
            Error::Store(e) => match e {
                StoreError::Connect { .. }
                | StoreError::Unavailable { .. }
                | StoreError::ReadOnly { .. }
                | StoreError::Exhausted { .. } => UNAVAILABLE,
                StoreError::Conflict { .. }
                | StoreError::Cancelled { .. }
                | StoreError::Stale { .. } => TEMP_FAIL,
                StoreError::NotMigrated { .. } => CONFIG,
                StoreError::PermissionDenied { .. } => NO_PERMISSION,
                StoreError::Rejected { .. } => DATA,
                StoreError::Migrate(_) | StoreError::Query { .. } => SOFTWARE,
            },
            Error::Usage(_) => USAGE,
            Error::KeysExist(_) | Error::Refused(_) => CANT_CREATE,
            Error::KeysChanging | Error::Stalled { .. } => TEMP_FAIL,
            Error::Verify { .. } | Error::AuditBroken(_) | Error::CheckpointFailed { .. } => DATA,
            Error::ReadFile { .. } => NO_INPUT,
            Error::WriteFile { .. } => CANT_CREATE,
            Error::BadDataKey { .. } | Error::Integrity { .. } => DATA,
            Error::Output(_) => IO,
            Error::RevealRefused { .. } => NO_PERMISSION,
        }
    }
}

impl Error {
    /// True for failures a running `etl run` retries ([`crate::pipeline::retry`]): a service
    /// unreachable, throttling, failing on its side or failing over (read-only), out of
    /// resources, a cancelled statement, a transaction conflict, a key change mid-batch. Each
    /// may pass without anyone changing piivault's configuration; the rest cannot.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Store(e) => matches!(
                e,
                StoreError::Unavailable { .. }
                    | StoreError::Connect { .. }
                    | StoreError::Conflict { .. }
                    | StoreError::ReadOnly { .. }
                    | StoreError::Exhausted { .. }
                    | StoreError::Cancelled { .. }
            ),
            Error::Source(e) => e.may_pass_while_running(),
            Error::Kek(e) => matches!(e, KekError::KmsUnavailable { .. }),
            Error::KeysChanging => true,
            _ => false,
        }
    }
}

impl SourceError {
    /// True for failures a running consumer waits out: SQS unreachable, throttling or failing on
    /// its side ([`SourceError::Unavailable`]), or the queue gone after
    /// it was found at start (being recreated, or an emulator restarting). A queue missing at
    /// start is a configuration error instead ([`crate::source::sqs::SqsQueue::check`]).
    pub fn may_pass_while_running(&self) -> bool {
        matches!(
            self,
            SourceError::Unavailable { .. } | SourceError::NoQueue { .. }
        )
    }
}

impl From<crate::key_lifecycle::Refusal> for Error {
    fn from(refusal: crate::key_lifecycle::Refusal) -> Error {
        match refusal {
            // Keys never created is a set-up problem, like any other missing key.
            crate::key_lifecycle::Refusal::NoActive(purpose) => Error::NoKeys(purpose),
            other => Error::Refused(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::classify::Fault;
    use super::*;

    fn store(code: &str) -> Error {
        Error::Store(StoreError::from_sqlstate("a test", Some(code), "d".into()))
    }

    /// SQLSTATE → (retried while running, exit code once the run ends with it).
    #[test]
    fn every_postgres_class_is_deliberate() {
        let cases = [
            ("08000", true, exit::UNAVAILABLE),
            ("08003", true, exit::UNAVAILABLE),
            ("08006", true, exit::UNAVAILABLE),
            ("08001", true, exit::UNAVAILABLE),
            ("57P01", true, exit::UNAVAILABLE), // admin_shutdown
            ("57P02", true, exit::UNAVAILABLE), // crash_shutdown
            ("57P03", true, exit::UNAVAILABLE), // cannot_connect_now
            ("57014", true, exit::TEMP_FAIL),   // query_canceled
            ("53000", true, exit::UNAVAILABLE), // insufficient_resources
            ("53100", true, exit::UNAVAILABLE), // disk_full
            ("53200", true, exit::UNAVAILABLE), // out_of_memory
            ("53300", true, exit::UNAVAILABLE), // too_many_connections
            ("25006", true, exit::UNAVAILABLE), // read_only_sql_transaction
            ("40001", true, exit::TEMP_FAIL),   // serialization_failure
            ("40P01", true, exit::TEMP_FAIL),   // deadlock_detected
            ("55P03", true, exit::TEMP_FAIL),   // lock_not_available
            ("42501", false, exit::NO_PERMISSION),
            ("42P01", false, exit::CONFIG),
            ("3F000", false, exit::CONFIG),
            ("22001", false, exit::DATA),
            ("23502", false, exit::DATA),
            ("42601", false, exit::SOFTWARE), // a syntax error is a bug
            ("XX000", false, exit::SOFTWARE),
        ];
        for (code, retried, exit_code) in cases {
            let e = store(code);
            assert_eq!(e.is_retryable(), retried, "{code} retried: {e}");
            assert_eq!(e.exit_code(), exit_code, "{code} exit code: {e}");
        }
    }

    #[test]
    fn postgres_classes_land_in_their_variants() {
        let variant = |code| match store(code) {
            Error::Store(e) => e,
            _ => unreachable!(),
        };
        assert!(matches!(variant("25006"), StoreError::ReadOnly { .. }));
        assert!(matches!(variant("57014"), StoreError::Cancelled { .. }));
        assert!(matches!(variant("53100"), StoreError::Exhausted { .. }));
        assert!(matches!(variant("57P01"), StoreError::Unavailable { .. }));
        assert!(matches!(variant("08006"), StoreError::Unavailable { .. }));
        assert!(matches!(variant("40P01"), StoreError::Conflict { .. }));
        assert!(matches!(variant("55P03"), StoreError::Conflict { .. }));
        assert!(matches!(
            StoreError::from_sqlstate("a test", None, "d".into()),
            StoreError::Query { .. }
        ));
    }

    #[test]
    fn postgres_messages_say_what_failed_and_what_to_do() {
        let read_only = store("25006").to_string();
        assert!(read_only.contains("read-only") && read_only.contains("primary"));
        let exhausted = store("53100").to_string();
        assert!(exhausted.contains("out of resources") && exhausted.contains("Free disk"));
        let cancelled = store("57014").to_string();
        assert!(cancelled.contains("statement_timeout") && cancelled.contains("--batch-size"));
    }

    fn sqs(fault: Fault) -> Error {
        Error::Source(SourceError::Unavailable {
            operation: "ReceiveMessage",
            queue: "q".into(),
            fault,
            detail: "d".into(),
        })
    }

    fn kms(fault: Fault) -> Error {
        Error::Kek(KekError::KmsUnavailable {
            operation: "Decrypt",
            key: "k".into(),
            fault,
            detail: "d".into(),
        })
    }

    #[test]
    fn aws_outages_throttling_and_5xx_are_retried_and_end_with_69() {
        for fault in [Fault::Unreachable, Fault::Throttled, Fault::ServerError] {
            for e in [sqs(fault), kms(fault)] {
                assert!(e.is_retryable(), "{e}");
                assert_eq!(e.exit_code(), exit::UNAVAILABLE, "{e}");
            }
        }
        assert!(sqs(Fault::Throttled).to_string().contains("throttling"));
        assert!(
            kms(Fault::ServerError)
                .to_string()
                .contains("on KMS's side")
        );
    }

    #[test]
    fn aws_refusals_are_fatal_at_once() {
        let sqs_refused = Error::Source(SourceError::Refused {
            operation: "ReceiveMessage",
            queue: "q".into(),
            detail: "d".into(),
        });
        let kms_refused = Error::Kek(KekError::KmsRefused {
            operation: "Decrypt",
            key: "k".into(),
            detail: "d".into(),
        });
        for e in [sqs_refused, kms_refused] {
            assert!(!e.is_retryable(), "{e}");
            assert_eq!(e.exit_code(), exit::NO_PERMISSION, "{e}");
        }
    }
}
