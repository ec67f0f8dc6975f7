//! Backoff for transient failures — Postgres, SQS or KMS unreachable or restarting: exponential
//! with jitter, at most 10 s between attempts, giving up once the outage has lasted
//! `--max-outage-secs`. Messages in hand stay invisible meanwhile (heartbeat) and are never
//! deleted before their rows commit.

use std::time::Duration;

use backon::ExponentialBuilder;

use crate::error::Error;
use crate::kek::KekError;
use crate::source::SourceError;
use crate::store::StoreError;

/// The retry policy for an outage of at most `max_outage`.
pub fn policy(max_outage: Duration) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_jitter()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(10))
        .with_max_times(usize::MAX)
        .with_total_delay(Some(max_outage))
}

impl Error {
    /// True for failures that may pass: a service unreachable or a transaction conflict.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Store(
                StoreError::Unavailable { .. }
                    | StoreError::Connect { .. }
                    | StoreError::Conflict { .. }
            ) | Error::Source(SourceError::Unavailable { .. })
                | Error::Kek(KekError::KmsUnavailable { .. })
        )
    }
}

impl SourceError {
    /// True for failures a running consumer waits out: SQS unreachable, or the queue gone after
    /// it was found at start (being recreated, or an emulator restarting). A queue missing at
    /// start is a configuration error instead ([`crate::source::sqs::SqsQueue::check`]).
    pub fn may_pass_while_running(&self) -> bool {
        matches!(
            self,
            SourceError::Unavailable { .. } | SourceError::NoQueue { .. }
        )
    }
}

/// Logs one retry (error text is PII-free by construction).
pub fn notify<E: std::fmt::Display>(error: &E, delay: Duration) {
    tracing::warn!(
        retry_in_ms = delay.as_millis() as u64,
        "{}",
        error.to_string().replace('\n', " ")
    );
}
