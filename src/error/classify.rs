//! Error classification, in one place: which kind each Postgres SQLSTATE and each AWS answer is.
//! Whether a kind is retried and which exit code it ends with is decided beside it, in
//! [`super::Error::is_retryable`] and [`super::Error::exit_code`].

use super::Error;
use crate::kek::KekError;
use crate::source::SourceError;
use crate::store::StoreError;

/// Why an AWS call failed, as far as waiting can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// No answer: connection refused, timeout, DNS.
    Unreachable,
    /// The service throttled the call (a request rate or in-flight limit).
    Throttled,
    /// The service failed on its side (HTTP 5xx, an internal error, a dependency timeout).
    ServerError,
    /// Any other answer: this call is refused (permission, missing resource, bad input).
    Refused,
}

impl Fault {
    /// True when the same call may succeed later unchanged.
    pub fn is_transient(self) -> bool {
        !matches!(self, Fault::Refused)
    }

    /// What happened, after the service's name ("SQS is unreachable").
    pub fn what(self) -> &'static str {
        match self {
            Fault::Unreachable => "is unreachable",
            Fault::Throttled => "is throttling requests",
            Fault::ServerError => "failed on its side",
            Fault::Refused => "refused the call",
        }
    }
}

/// Error codes the services use for throttling: the SDK's own list
/// (`aws_runtime::retries::classifiers::THROTTLING_ERRORS`), plus SQS's `OverLimit` (too many
/// messages in flight) and `KMS.ThrottlingException` (an encrypted queue's KMS key throttled).
const THROTTLED: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "TransactionInProgressException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "LimitExceededException",
    "RequestThrottled",
    "SlowDown",
    "PriorRequestNotComplete",
    "EC2ThrottledException",
    "OverLimit",
    "KMS.ThrottlingException",
];

/// Error codes of failures on the service's side that say "retry": generic AWS ones, and KMS's
/// (`KeyUnavailableException`: "the key is not available; you can retry").
const SERVER_ERRORS: &[&str] = &[
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "RequestTimeout",
    "RequestTimeoutException",
    "KMSInternalException",
    "DependencyTimeoutException",
    "KeyUnavailableException",
];

/// Classifies an answer by its error code and HTTP status; the code decides when it is known.
pub fn classify(code: Option<&str>, status: Option<u16>) -> Fault {
    match (code, status) {
        (Some(code), _) if THROTTLED.contains(&code) => Fault::Throttled,
        (Some(code), _) if SERVER_ERRORS.contains(&code) => Fault::ServerError,
        (_, Some(429)) => Fault::Throttled,
        (_, Some(500..=599)) => Fault::ServerError,
        _ => Fault::Refused,
    }
}

/// The service an error came from, for `piivault_retries_total{dependency}` and the status page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dependency {
    /// The database.
    Postgres,
    /// The queue.
    Sqs,
    /// The key service (wrapping, unwrapping, signing).
    Kms,
    /// None: the input, the configuration or etl itself.
    Local,
}

impl Dependency {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Dependency::Postgres => "postgres",
            Dependency::Sqs => "sqs",
            Dependency::Kms => "kms",
            Dependency::Local => "local",
        }
    }
}

/// An error's place in the classification, as metrics and the status page show it: a fixed
/// vocabulary, never a message (which may name a queue or a key, never a value, but is not a
/// label).
pub trait Classified {
    /// The service it came from.
    fn dependency(&self) -> Dependency;
    /// Its class: `unreachable`, `throttled`, `server_error`, `conflict`, `permission_denied`, …
    fn class(&self) -> &'static str;
}

fn fault_class(fault: Fault) -> &'static str {
    match fault {
        Fault::Unreachable => "unreachable",
        Fault::Throttled => "throttled",
        Fault::ServerError => "server_error",
        Fault::Refused => "refused",
    }
}

impl Classified for SourceError {
    fn dependency(&self) -> Dependency {
        match self {
            SourceError::FileRead { .. } | SourceError::FileFormat { .. } => Dependency::Local,
            _ => Dependency::Sqs,
        }
    }

    fn class(&self) -> &'static str {
        match self {
            SourceError::Unavailable { fault, .. } => fault_class(*fault),
            SourceError::NoQueue { .. } => "no_queue",
            SourceError::Refused { .. } => "refused",
            SourceError::FileRead { .. } | SourceError::FileFormat { .. } => "bad_input",
        }
    }
}

impl Classified for StoreError {
    fn dependency(&self) -> Dependency {
        Dependency::Postgres
    }

    fn class(&self) -> &'static str {
        match self {
            StoreError::Connect { .. } | StoreError::Unavailable { .. } => "unreachable",
            StoreError::Migrate(_) | StoreError::NotMigrated { .. } => "not_migrated",
            StoreError::PermissionDenied { .. } => "permission_denied",
            StoreError::Rejected { .. } => "rejected",
            StoreError::Conflict { .. } => "conflict",
            StoreError::Stale { .. } => "stale",
            StoreError::ReadOnly { .. } => "read_only",
            StoreError::Exhausted { .. } => "exhausted",
            StoreError::Cancelled { .. } => "cancelled",
            StoreError::Query { .. } => "query_failed",
        }
    }
}

impl Classified for KekError {
    fn dependency(&self) -> Dependency {
        match self {
            KekError::KmsUnavailable { .. } | KekError::KmsRefused { .. } => Dependency::Kms,
            _ => Dependency::Local,
        }
    }

    fn class(&self) -> &'static str {
        match self {
            KekError::KmsUnavailable { fault, .. } => fault_class(*fault),
            KekError::KmsRefused { .. } => "refused",
            _ => "key_config",
        }
    }
}

impl Classified for Error {
    fn dependency(&self) -> Dependency {
        match self {
            Error::Source(e) => e.dependency(),
            Error::Store(e) => e.dependency(),
            Error::Kek(e) => e.dependency(),
            _ => Dependency::Local,
        }
    }

    fn class(&self) -> &'static str {
        match self {
            Error::Source(e) => e.class(),
            Error::Store(e) => e.class(),
            Error::Kek(e) => e.class(),
            Error::KeysChanging => "keys_changing",
            Error::Stalled { .. } => "stalled",
            Error::Config(_) | Error::NoKeys(_) | Error::MetricsAddr { .. } => "config",
            Error::BadDataKey { .. } | Error::Integrity { .. } => "integrity",
            _ => "other",
        }
    }
}

impl StoreError {
    /// Classifies a database error by its SQLSTATE (`detail` is the server's message and code).
    /// Whether each class is retried, and its exit code, is decided in [`crate::error::Error`].
    pub fn from_sqlstate(what: &'static str, code: Option<&str>, detail: String) -> StoreError {
        match code {
            Some("42P01" | "3F000") => StoreError::NotMigrated { what, detail },
            Some("42501") => StoreError::PermissionDenied { what, detail },
            // 55P03: a lock not granted within lock_timeout (the audit head, held by another
            // transaction): as temporary as a deadlock.
            Some("40001" | "40P01" | "55P03") => StoreError::Conflict { what, detail },
            Some("25006") => StoreError::ReadOnly { what, detail },
            Some("57014") => StoreError::Cancelled { what, detail },
            // Data exceptions and integrity violations (unique conflicts are handled by
            // ON CONFLICT): the row itself is the problem.
            Some(code) if code.starts_with("22") || (code.starts_with("23") && code != "23505") => {
                StoreError::Rejected {
                    what,
                    code: code.to_owned(),
                }
            }
            Some(code) if code.starts_with("53") => StoreError::Exhausted { what, detail },
            // 08: the connection failed; 57P01–57P05: the server is shutting down, crashed,
            // is starting, dropped the database or closed an idle session: a new connection is
            // the cure, which the pool makes at the next attempt.
            Some(code) if code.starts_with("08") || code.starts_with("57P") => {
                StoreError::Unavailable { what, detail }
            }
            _ => StoreError::Query { what, detail },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqs_throttling_codes_are_throttled() {
        for code in [
            "RequestThrottled",
            "ThrottlingException",
            "OverLimit",
            "KMS.ThrottlingException",
        ] {
            assert_eq!(classify(Some(code), Some(400)), Fault::Throttled, "{code}");
        }
    }

    #[test]
    fn kms_throttling_and_internal_codes_are_transient() {
        assert_eq!(
            classify(Some("ThrottlingException"), Some(400)),
            Fault::Throttled
        );
        assert_eq!(
            classify(Some("LimitExceededException"), Some(400)),
            Fault::Throttled
        );
        for code in [
            "KMSInternalException",
            "DependencyTimeoutException",
            "KeyUnavailableException",
        ] {
            assert_eq!(
                classify(Some(code), Some(500)),
                Fault::ServerError,
                "{code}"
            );
        }
    }

    #[test]
    fn any_5xx_is_a_server_error_and_429_is_throttling() {
        assert_eq!(
            classify(Some("InternalError"), Some(500)),
            Fault::ServerError
        );
        assert_eq!(
            classify(Some("ServiceUnavailable"), Some(503)),
            Fault::ServerError
        );
        for status in [500, 502, 503, 504, 599] {
            assert_eq!(classify(None, Some(status)), Fault::ServerError, "{status}");
            assert_eq!(
                classify(Some("SomethingNew"), Some(status)),
                Fault::ServerError,
                "{status}"
            );
        }
        assert_eq!(classify(None, Some(429)), Fault::Throttled);
    }

    #[test]
    fn refusals_are_not_transient() {
        for code in [
            "AccessDeniedException",
            "AWS.SimpleQueueService.NonExistentQueue",
            "QueueDoesNotExist",
            "DisabledException",
            "NotFoundException",
            "KMSInvalidStateException",
            "InvalidCiphertextException",
        ] {
            let fault = classify(Some(code), Some(400));
            assert_eq!(fault, Fault::Refused, "{code}");
            assert!(!fault.is_transient());
        }
        assert!(!classify(None, Some(403)).is_transient());
        assert!(!classify(None, None).is_transient());
        assert!(Fault::Unreachable.is_transient());
    }
}
