//! The run's one retry policy, for every retryable failure ([`Error::is_retryable`]): exponential
//! backoff with jitter from 200 ms, at most 10 s between attempts, giving up once the waits of one
//! operation add up to `--max-outage-secs`. Messages in hand stay invisible meanwhile (heartbeat)
//! and are never deleted before their rows commit. The AWS SDK's own retries are off
//! ([`crate::aws::sdk_config`]), so this is the only layer.
//!
//! [`Error::is_retryable`]: crate::error::Error::is_retryable

use std::time::Duration;

use backon::ExponentialBuilder;

use super::Counters;
use super::health::Stage;
use crate::error::classify::Classified;

/// The retry policy for an outage of at most `max_outage`.
pub fn policy(max_outage: Duration) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_jitter()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(10))
        .with_max_times(usize::MAX)
        .with_total_delay(Some(max_outage))
}

/// Logs and counts one retry in `stage` (error text is PII-free by construction).
pub fn notify<E: std::fmt::Display + Classified>(
    counters: &Counters,
    stage: Stage,
    error: &E,
    delay: Duration,
) {
    counters.retried(stage, error);
    tracing::warn!(
        retry_in_ms = delay.as_millis() as u64,
        stage = stage.as_str(),
        dependency = error.dependency().as_str(),
        class = error.class(),
        "{}",
        error.to_string().replace('\n', " ")
    );
}
