//! The background observer: every [`OBSERVE_EVERY`] it checks Postgres (by reading the data key
//! versions) and SQS (by reading the queue's depth) on connections of its own, and keeps the
//! answers. `/readyz`, `/metrics` and the status page read what it kept, so probes and scrapes,
//! however many, cost the database and the queue nothing and never take a writer's connection.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::error::classify::{Classified, Dependency};
use crate::pipeline::Counters;
use crate::source::SourceError;
use crate::source::sqs::SqsQueue;
use crate::store;

/// How often the dependencies are checked.
pub const OBSERVE_EVERY: Duration = Duration::from_secs(5);
/// How long one check may take before it counts as a failure.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// A readiness answer older than this is not trusted (the observer itself is stuck).
pub const STALE_AFTER: Duration = Duration::from_secs(15);

/// One round of checks.
#[derive(Debug, Clone)]
pub struct Checked {
    /// When the round ended (monotonic, for staleness).
    pub at: Instant,
    /// `ok`, or what failed (an error class; never a value).
    pub postgres: String,
    /// `ok`, `not used`, or what failed.
    pub sqs: String,
}

impl Checked {
    /// Both dependencies answered.
    pub fn ready(&self) -> bool {
        self.postgres == "ok" && (self.sqs == "ok" || self.sqs == "not used")
    }
}

/// The queue's approximate message counts, and when SQS gave them.
#[derive(Debug, Clone, Copy)]
pub struct QueueDepth {
    /// Waiting to be received.
    pub visible: i64,
    /// Received and not yet deleted or returned (by any consumer).
    pub in_flight: i64,
    /// Sent with a delay that has not passed.
    pub delayed: i64,
    /// When read.
    pub at: DateTime<Utc>,
}

/// What the observer last saw.
#[derive(Default)]
pub struct Observed {
    checked: Mutex<Option<Checked>>,
    depth: Mutex<Option<QueueDepth>>,
}

impl Observed {
    /// The last round of checks, if one has ended.
    pub fn checked(&self) -> Option<Checked> {
        self.checked.lock().expect("observed lock").clone()
    }

    /// Keeps a round's answers.
    pub fn record(&self, checked: Checked) {
        *self.checked.lock().expect("observed lock") = Some(checked);
    }

    /// The queue's last depth read, if any succeeded.
    pub fn depth(&self) -> Option<QueueDepth> {
        *self.depth.lock().expect("observed lock")
    }
}

/// What the observer checks with; its pool is its own (one connection, short statement timeout).
pub struct Observer {
    /// The observer's own pool.
    pub pool: PgPool,
    /// The queue, when consuming one.
    pub queue: Option<SqsQueue>,
    /// Where the gauges go.
    pub counters: Arc<Counters>,
    /// Where the answers go.
    pub observed: Arc<Observed>,
}

impl Observer {
    /// Checks at once, then every [`OBSERVE_EVERY`], until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(OBSERVE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => self.round().await,
            }
        }
    }

    /// One round: both checks at once, so it ends within one [`CHECK_TIMEOUT`].
    async fn round(&self) {
        let (postgres, sqs) = tokio::join!(self.check_postgres(), self.check_sqs());
        self.counters
            .set_dependency_up(Dependency::Postgres, postgres == "ok");
        if self.queue.is_some() {
            self.counters
                .set_dependency_up(Dependency::Sqs, sqs == "ok");
        }
        self.observed.record(Checked {
            at: Instant::now(),
            postgres,
            sqs,
        });
    }

    /// Reads the key versions: proves the database answers and this login may read the vault's
    /// key table, and feeds `piivault_key_version` (a rotation by another process shows up).
    async fn check_postgres(&self) -> String {
        match tokio::time::timeout(CHECK_TIMEOUT, store::keys::list(&self.pool)).await {
            Ok(Ok(keys)) => {
                let keys: Vec<(String, u32, String)> = keys
                    .into_iter()
                    .map(|k| {
                        (
                            k.purpose.as_str().to_owned(),
                            k.version.0,
                            k.state.as_str().to_owned(),
                        )
                    })
                    .collect();
                self.counters.set_key_versions(&keys);
                "ok".to_owned()
            }
            Ok(Err(e)) => e.class().to_owned(),
            Err(_) => no_answer(),
        }
    }

    /// Reads the queue's depth: proves SQS answers and the queue exists.
    async fn check_sqs(&self) -> String {
        let Some(queue) = &self.queue else {
            return "not used".to_owned();
        };
        match tokio::time::timeout(CHECK_TIMEOUT, queue.depth()).await {
            Ok(Ok((visible, in_flight, delayed))) => {
                self.counters.set_queue_depth(visible, in_flight, delayed);
                *self.observed.depth.lock().expect("observed lock") = Some(QueueDepth {
                    visible,
                    in_flight,
                    delayed,
                    at: Utc::now(),
                });
                "ok".to_owned()
            }
            Ok(Err(SourceError::NoQueue { .. })) => "the queue does not exist".to_owned(),
            Ok(Err(SourceError::Refused { .. })) => "refused (permissions)".to_owned(),
            Ok(Err(_)) => "unreachable".to_owned(),
            Err(_) => no_answer(),
        }
    }
}

fn no_answer() -> String {
    format!(
        "unreachable: no answer within {} s",
        CHECK_TIMEOUT.as_secs()
    )
}
