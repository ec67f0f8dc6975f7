//! Counts of what a run did, and the one-line summary printed at its end.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use serde::Serialize;

use super::health::{LastError, Stage, StageClock};
use super::latency::Latency;
use crate::error::classify::{Classified, Dependency};
use crate::source::Received;
use crate::store::writer::BatchCounts;

/// The one-line JSON summary `etl run` prints on stdout.
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    /// Messages received, redeliveries included.
    pub received: u64,
    /// New `user_logins` rows.
    pub loaded: u64,
    /// New quarantine rows.
    pub quarantined: u64,
    /// Redelivered messages whose `MessageId` was already stored.
    pub duplicates: u64,
    /// Messages deleted from SQS after commit.
    pub deleted: u64,
    /// Wall-clock seconds.
    #[serde(serialize_with = "two_decimals")]
    pub seconds: f64,
}

fn two_decimals<S: serde::Serializer>(value: &f64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((value * 100.0).round() / 100.0)
}

/// What a run has done so far, as Prometheus metrics: shared by every stage, read by the summary
/// and served on `/metrics`. Labels never carry a user id or a value.
pub struct Counters {
    registry: Registry,
    received: Counter,
    loaded: Counter,
    quarantined: Counter,
    duplicates: Counter,
    deleted: Counter,
    in_flight: Gauge,
    batch_seconds: Histogram,
    end_to_end_seconds: Histogram,
    key_versions: Family<KeyLabels, Gauge>,
    /// The queue's approximate message counts by state, sampled in the background.
    queue_messages: Family<QueueLabels, Gauge>,
    retries: Family<DependencyLabels, Counter>,
    errors: Family<ClassLabels, Counter>,
    /// 1 when the last background check of a dependency succeeded.
    dependency_up: Family<DependencyLabels, Gauge>,
    last_commit: Gauge,
    /// End-to-end latency quantiles for the status page.
    latency: Latency,
    /// Each stage's last success and retry, and the last error.
    stages: StageClock,
    /// Progress clock for the stall watchdog and `/healthz` (tokio's, so paused tests drive it).
    clock_base: tokio::time::Instant,
    /// Milliseconds after `clock_base` of the last commit or delete, or of going from idle to busy.
    last_progress_ms: AtomicU64,
    /// Committed messages whose delete has not finished.
    awaiting_delete: AtomicI64,
    /// A stage has failed: the run is stopping.
    failed: AtomicBool,
}

/// Labels of the queue-depth gauge: `visible`, `in_flight` or `delayed`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    state: &'static str,
}

/// Labels of the per-dependency metrics: `postgres`, `sqs` or `kms`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DependencyLabels {
    dependency: &'static str,
}

impl DependencyLabels {
    fn of(dependency: Dependency) -> DependencyLabels {
        DependencyLabels {
            dependency: dependency.as_str(),
        }
    }
}

/// Labels of the error counter: a class from a fixed vocabulary.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    class: &'static str,
}

/// Labels of the key-version info metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyLabels {
    purpose: String,
    version: u32,
    state: String,
}

impl Default for Counters {
    fn default() -> Counters {
        let mut registry = Registry::with_prefix("piivault");
        let [received, loaded, quarantined, duplicates, deleted] =
            std::array::from_fn(|_| Counter::default());
        for (name, help, counter) in [
            (
                "received",
                "Messages received, redeliveries included",
                &received,
            ),
            ("loaded", "New user_logins rows", &loaded),
            ("quarantined", "New quarantine rows", &quarantined),
            (
                "duplicates",
                "Redelivered messages already stored",
                &duplicates,
            ),
            (
                "deleted",
                "Messages deleted from the queue after commit",
                &deleted,
            ),
        ] {
            registry.register(name, help, counter.clone());
        }
        let in_flight = Gauge::default();
        registry.register(
            "in_flight_messages",
            "Messages received and not yet deleted",
            in_flight.clone(),
        );
        // 5 ms … ~80 s: a commit waits for the WAL flush; a stuck batch waits out an outage.
        let batch_seconds = Histogram::new(exponential_buckets(0.005, 2.0, 15));
        registry.register(
            "batch_seconds",
            "Time to protect and commit one transaction",
            batch_seconds.clone(),
        );
        let end_to_end_seconds = Histogram::new(exponential_buckets(0.01, 2.0, 20));
        registry.register(
            "end_to_end_seconds",
            "From the message's SentTimestamp to its commit",
            end_to_end_seconds.clone(),
        );
        let key_versions = Family::<KeyLabels, Gauge>::default();
        registry.register(
            "key_version",
            "Data key versions and their state (1 per version)",
            key_versions.clone(),
        );
        registry.register(
            "build",
            "The etl build serving these metrics",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        let queue_messages = Family::<QueueLabels, Gauge>::default();
        registry.register(
            "queue_messages",
            "Messages in the queue by state (SQS's approximate counts, sampled every 5 s)",
            queue_messages.clone(),
        );
        let retries = Family::<DependencyLabels, Counter>::default();
        registry.register(
            "retries",
            "Failed calls retried, by the service that failed",
            retries.clone(),
        );
        for dependency in [Dependency::Postgres, Dependency::Sqs, Dependency::Kms] {
            // Present from the start, so rate() sees the first retry.
            let _ = retries.get_or_create(&DependencyLabels::of(dependency));
        }
        let errors = Family::<ClassLabels, Counter>::default();
        registry.register(
            "errors",
            "Errors met, retried or final, by class",
            errors.clone(),
        );
        let dependency_up = Family::<DependencyLabels, Gauge>::default();
        registry.register(
            "dependency_up",
            "1 when the last background check of the service succeeded (checked every 5 s)",
            dependency_up.clone(),
        );
        let last_commit = Gauge::default();
        registry.register(
            "last_commit_timestamp_seconds",
            "Unix time of this process's last commit (0: none yet)",
            last_commit.clone(),
        );
        Counters {
            registry,
            queue_messages,
            retries,
            errors,
            dependency_up,
            last_commit,
            latency: Latency::default(),
            stages: StageClock::default(),
            received,
            loaded,
            quarantined,
            duplicates,
            deleted,
            in_flight,
            batch_seconds,
            end_to_end_seconds,
            key_versions,
            clock_base: tokio::time::Instant::now(),
            last_progress_ms: AtomicU64::new(0),
            awaiting_delete: AtomicI64::new(0),
            failed: AtomicBool::new(false),
        }
    }
}

impl Counters {
    /// Messages handed to the writers.
    pub fn received(&self, n: usize) {
        if self.in_flight.inc_by(n as i64) <= 0 {
            self.progressed(); // idle until now: the stall clock starts here
        }
    }

    fn progressed(&self) {
        let now = self.clock_base.elapsed().as_millis() as u64;
        self.last_progress_ms.fetch_max(now, Ordering::Relaxed);
    }

    /// How long messages have been in hand with no commit or delete, if longer than `limit`.
    pub fn stalled(&self, limit: Duration) -> Option<Duration> {
        if self.in_flight.get() <= 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_progress_ms.load(Ordering::Relaxed));
        let idle = self.clock_base.elapsed().saturating_sub(last);
        (idle > limit).then_some(idle)
    }

    /// Records that a stage failed and the run is stopping.
    pub fn stage_failed(&self) {
        self.failed.store(true, Ordering::Relaxed);
    }

    /// What `/healthz` answers: `Err` with a PII-free reason when a stage has failed or
    /// messages in hand have made no progress for longer than `stall_timeout`.
    pub fn health(&self, stall_timeout: Duration) -> Result<(), String> {
        if self.failed.load(Ordering::Relaxed) {
            return Err("a stage failed; the run is stopping".into());
        }
        match self.stalled(stall_timeout) {
            Some(idle) => Err(format!(
                "messages in hand made no progress for {} s (--stall-timeout-secs {})",
                idle.as_secs(),
                stall_timeout.as_secs()
            )),
            None => Ok(()),
        }
    }

    /// Committed messages whose delete is now in flight.
    pub fn awaiting_delete(&self, n: usize) {
        self.awaiting_delete.fetch_add(n as i64, Ordering::Relaxed);
    }

    /// Deletes finished (confirmed or not): their messages are done.
    pub fn deletes_done(&self, n: usize) {
        self.awaiting_delete.fetch_sub(n as i64, Ordering::Relaxed);
        self.done(n);
    }

    /// Messages in hand, and how many of them are committed and only wait for their delete.
    pub fn in_hand(&self) -> (u64, u64) {
        let committed = self.awaiting_delete.load(Ordering::Relaxed).max(0) as u64;
        (self.in_flight.get().max(0) as u64, committed)
    }

    /// Adds one committed chunk: messages, what the write did, in-chunk repeats, how long the
    /// write took and when each message was sent.
    pub fn committed(
        &self,
        messages: &[Received],
        counts: BatchCounts,
        in_batch_duplicates: usize,
        took: Duration,
    ) {
        self.received.inc_by(messages.len() as u64);
        self.loaded.inc_by(counts.loaded);
        self.quarantined.inc_by(counts.quarantined);
        self.duplicates
            .inc_by(counts.duplicates + in_batch_duplicates as u64);
        self.batch_seconds.observe(took.as_secs_f64());
        self.progressed();
        self.stages.ok(Stage::Write);
        let now = Utc::now();
        self.last_commit.set(now.timestamp());
        let ages = messages
            .iter()
            .map(|m| (now - m.sent_at).num_milliseconds().max(0) as f64);
        for ms in ages.clone() {
            self.end_to_end_seconds.observe(ms / 1000.0);
        }
        self.latency.observe_at(Instant::now(), ages);
    }

    /// A failed call in `stage` is retried.
    pub fn retried(&self, stage: Stage, error: &impl Classified) {
        self.retries
            .get_or_create(&DependencyLabels::of(error.dependency()))
            .inc();
        self.error(Some(stage), error, true);
    }

    /// `error` ends the run (`stage`: where, when known).
    pub fn failed(&self, stage: Option<Stage>, error: &impl Classified) {
        self.stage_failed();
        self.error(stage, error, false);
    }

    fn error(&self, stage: Option<Stage>, error: &impl Classified, retried: bool) {
        let class = error.class();
        self.errors.get_or_create(&ClassLabels { class }).inc();
        self.stages.error(LastError {
            stage,
            dependency: error.dependency(),
            class,
            at: Utc::now(),
            retried,
        });
    }

    /// `stage` succeeded just now (a receive, a delete; commits are recorded by `committed`).
    pub fn stage_ok(&self, stage: Stage) {
        self.stages.ok(stage);
    }

    /// Each stage's last success and retry, and the run's last error.
    pub fn stages(&self) -> &StageClock {
        &self.stages
    }

    /// End-to-end latency quantiles.
    pub fn latency(&self) -> &Latency {
        &self.latency
    }

    /// When this process last committed, if it has.
    pub fn last_commit(&self) -> Option<chrono::DateTime<Utc>> {
        chrono::DateTime::from_timestamp(self.last_commit.get(), 0)
            .filter(|_| self.last_commit.get() > 0)
    }

    /// Records the outcome of a background check of `dependency`.
    pub fn set_dependency_up(&self, dependency: Dependency, up: bool) {
        self.dependency_up
            .get_or_create(&DependencyLabels::of(dependency))
            .set(i64::from(up));
    }

    /// Messages whose handling ended: deleted, or (files, older deliveries) nothing to delete.
    pub fn done(&self, n: usize) {
        self.in_flight.dec_by(n as i64);
        self.progressed();
    }

    /// Adds messages the queue confirmed deleted.
    pub fn deleted(&self, n: usize) {
        self.deleted.inc_by(n as u64);
    }

    /// Replaces the key-version info with `(purpose, version, state)` rows.
    pub fn set_key_versions(&self, keys: &[(String, u32, String)]) {
        self.key_versions.clear();
        for (purpose, version, state) in keys {
            self.key_versions
                .get_or_create(&KeyLabels {
                    purpose: purpose.clone(),
                    version: *version,
                    state: state.clone(),
                })
                .set(1);
        }
    }

    /// Records the queue's approximate depth: visible, in flight (received, not deleted, by any
    /// consumer) and delayed.
    pub fn set_queue_depth(&self, visible: i64, in_flight: i64, delayed: i64) {
        for (state, n) in [
            ("visible", visible),
            ("in_flight", in_flight),
            ("delayed", delayed),
        ] {
            self.queue_messages
                .get_or_create(&QueueLabels { state })
                .set(n);
        }
    }

    /// The metrics in the Prometheus/OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }

    /// The summary so far.
    pub fn summary(&self, started: Instant) -> Summary {
        Summary {
            received: self.received.get(),
            loaded: self.loaded.get(),
            quarantined: self.quarantined.get(),
            duplicates: self.duplicates.get(),
            deleted: self.deleted.get(),
            seconds: started.elapsed().as_secs_f64(),
        }
    }
}
