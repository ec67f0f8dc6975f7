//! Counts of what a run did, and the one-line summary printed at its end.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::Serialize;

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

/// Shared by every stage while a run is in progress.
#[derive(Default)]
pub struct Counters {
    received: AtomicU64,
    loaded: AtomicU64,
    quarantined: AtomicU64,
    duplicates: AtomicU64,
    deleted: AtomicU64,
}

impl Counters {
    /// Adds one committed chunk: messages received, what the write did, in-chunk repeats.
    pub fn add(&self, received: usize, counts: BatchCounts, in_batch_duplicates: usize) {
        self.received.fetch_add(received as u64, Ordering::Relaxed);
        self.loaded.fetch_add(counts.loaded, Ordering::Relaxed);
        self.quarantined
            .fetch_add(counts.quarantined, Ordering::Relaxed);
        self.duplicates.fetch_add(
            counts.duplicates + in_batch_duplicates as u64,
            Ordering::Relaxed,
        );
    }

    /// The summary so far.
    pub fn summary(&self, started: Instant) -> Summary {
        Summary {
            received: self.received.load(Ordering::Relaxed),
            loaded: self.loaded.load(Ordering::Relaxed),
            quarantined: self.quarantined.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            deleted: self.deleted.load(Ordering::Relaxed),
            seconds: started.elapsed().as_secs_f64(),
        }
    }
}

impl Counters {
    /// Adds messages the queue confirmed deleted.
    pub fn deleted(&self, n: usize) {
        self.deleted.fetch_add(n as u64, Ordering::Relaxed);
    }
}
