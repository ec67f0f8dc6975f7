//! The run loop: receive → decode/protect → one transaction per batch → delete after commit.
//!
//! A message is deleted only after the transaction holding its row (or quarantine entry) has
//! committed; on any error nothing of that batch is deleted, so SQS redelivers it. Redeliveries
//! are absorbed by `ON CONFLICT (message_id) DO NOTHING` and counted as `duplicates`.
//! TODO(issue 7): visibility heartbeat, retries with backoff, poison isolation.
//! TODO(issue 8): pipelined stages with bounded channels and coalesced writes.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use chrono::Utc;
use serde::Serialize;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::crypto::{Keyring, Purpose};
use crate::error::Error;
use crate::protect::{self, Record, WriteKeys};
use crate::source::Received;
use crate::source::sqs::SqsQueue;
use crate::store::StoreError;
use crate::store::writer::{self, BatchCounts};

/// Attempts for a batch transaction that deadlocks or fails to serialise (nothing was committed).
const CONFLICT_ATTEMPTS: u32 = 3;

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

#[derive(Default)]
struct Counters {
    received: AtomicU64,
    loaded: AtomicU64,
    quarantined: AtomicU64,
    duplicates: AtomicU64,
    deleted: AtomicU64,
}

impl Counters {
    fn add(&self, received: usize, counts: BatchCounts, in_batch_duplicates: usize) {
        self.received.fetch_add(received as u64, Ordering::Relaxed);
        self.loaded.fetch_add(counts.loaded, Ordering::Relaxed);
        self.quarantined
            .fetch_add(counts.quarantined, Ordering::Relaxed);
        self.duplicates.fetch_add(
            counts.duplicates + in_batch_duplicates as u64,
            Ordering::Relaxed,
        );
    }

    fn summary(&self, started: Instant) -> Summary {
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

/// Decodes, protects and stores batches; shared by every receiver.
pub struct Pipeline {
    pool: PgPool,
    keys: Keyring,
}

impl Pipeline {
    /// A pipeline writing with the newest seal and token keys of `keys`.
    pub fn new(pool: PgPool, keys: Keyring) -> Result<Pipeline, Error> {
        keys.active_seal().ok_or(Error::NoKeys(Purpose::Seal))?;
        keys.active_token().ok_or(Error::NoKeys(Purpose::Token))?;
        Ok(Pipeline { pool, keys })
    }

    fn write_keys(&self) -> WriteKeys<'_> {
        WriteKeys {
            seal: self.keys.active_seal().expect("checked in Pipeline::new"),
            token: self.keys.active_token().expect("checked in Pipeline::new"),
        }
    }

    /// Stores one batch in one transaction and commits; the caller acks afterwards. Returns the
    /// counts and the index of the newest delivery of each distinct message (the ones to delete).
    pub async fn store(&self, batch: &[Received]) -> Result<(BatchCounts, Vec<usize>), Error> {
        let newest = newest_deliveries(batch);
        let keys = self.write_keys();
        let now = Utc::now();
        let records: Vec<Record> = newest
            .iter()
            .map(|&i| protect::protect(keys, &batch[i], now))
            .collect();
        let mut attempt = 1;
        loop {
            match self.write(&records).await {
                Err(StoreError::Conflict { .. }) if attempt < CONFLICT_ATTEMPTS => {
                    tracing::debug!(attempt, "batch transaction conflicted; retrying");
                    attempt += 1;
                }
                result => return Ok((result?, newest)),
            }
        }
    }

    async fn write(&self, records: &[Record]) -> Result<BatchCounts, StoreError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(StoreError::during("starting a transaction"))?;
        let counts = writer::write_batch(&mut tx, records).await?;
        tx.commit()
            .await
            .map_err(StoreError::during("committing a batch"))?;
        Ok(counts)
    }
}

/// Index of the last delivery of each distinct message id, in first-seen order. The last
/// delivery carries the newest receipt handle, the only one real SQS honours for the delete.
fn newest_deliveries(batch: &[Received]) -> Vec<usize> {
    let mut position: HashMap<&str, usize> = HashMap::with_capacity(batch.len());
    let mut order = Vec::with_capacity(batch.len());
    for (i, message) in batch.iter().enumerate() {
        match position.get(message.message_id.as_str()) {
            Some(&slot) => order[slot] = i,
            None => {
                position.insert(&message.message_id, order.len());
                order.push(i);
            }
        }
    }
    order
}

/// How `etl run` consumes a queue.
#[derive(Debug, Clone, Copy)]
pub struct QueueOptions {
    /// Receivers polling at once.
    pub concurrency: usize,
    /// Long-poll wait per receive (`WaitTimeSeconds`, 0–20).
    pub wait_secs: i32,
    /// Stop once a receive comes back empty, instead of polling forever.
    pub drain: bool,
}

/// Consumes the queue until `stop` is cancelled (or, with `drain`, until it is empty).
pub async fn run_queue(
    pipeline: Arc<Pipeline>,
    queue: SqsQueue,
    options: QueueOptions,
    stop: CancellationToken,
) -> Result<Summary, Error> {
    let started = Instant::now();
    let counters = Arc::new(Counters::default());
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..options.concurrency.max(1) {
        let (pipeline, queue, stop, counters) = (
            pipeline.clone(),
            queue.clone(),
            stop.clone(),
            counters.clone(),
        );
        workers.spawn(async move {
            let result = receive_loop(&pipeline, &queue, options, &stop, &counters).await;
            if result.is_err() {
                stop.cancel(); // the others finish their batch and stop
            }
            result
        });
    }
    let mut first_error = None;
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(panic) => std::panic::resume_unwind(panic.into_panic()),
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(counters.summary(started)),
    }
}

async fn receive_loop(
    pipeline: &Pipeline,
    queue: &SqsQueue,
    options: QueueOptions,
    stop: &CancellationToken,
    counters: &Counters,
) -> Result<(), Error> {
    loop {
        // Only the receive races the stop signal: a batch in progress always commits and acks.
        let batch = tokio::select! {
            biased;
            _ = stop.cancelled() => return Ok(()),
            batch = queue.receive(options.wait_secs) => batch?,
        };
        if batch.is_empty() {
            if options.drain {
                return Ok(());
            }
            continue;
        }
        let (counts, newest) = pipeline.store(&batch).await?;
        counters.add(batch.len(), counts, batch.len() - newest.len());
        let receipts: Vec<(&str, &str)> = newest
            .iter()
            .filter_map(|&i| {
                Some((
                    batch[i].message_id.as_str(),
                    batch[i].receipt_handle.as_deref()?,
                ))
            })
            .collect();
        let deleted = queue.delete_batch(&receipts).await?;
        counters
            .deleted
            .fetch_add(deleted as u64, Ordering::Relaxed);
        tracing::debug!(
            received = batch.len(),
            loaded = counts.loaded,
            quarantined = counts.quarantined,
            duplicates = counts.duplicates,
            deleted,
            "batch committed"
        );
    }
}

/// Loads already-read messages (a backfill file) in transactions of `batch_size`.
pub async fn run_messages(
    pipeline: &Pipeline,
    messages: Vec<Received>,
    batch_size: usize,
) -> Result<Summary, Error> {
    let started = Instant::now();
    let counters = Counters::default();
    for batch in messages.chunks(batch_size.max(1)) {
        let (counts, newest) = pipeline.store(batch).await?;
        counters.add(batch.len(), counts, batch.len() - newest.len());
    }
    Ok(counters.summary(started))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: &str, handle: &str) -> Received {
        Received {
            message_id: id.into(),
            receipt_handle: Some(handle.into()),
            sent_at: Utc::now(),
            body: String::new(),
        }
    }

    #[test]
    fn repeated_deliveries_keep_the_newest_handle() {
        let batch = [message("a", "h1"), message("b", "h2"), message("a", "h3")];
        let newest = newest_deliveries(&batch);
        assert_eq!(newest, vec![2, 1]);
        assert_eq!(batch[newest[0]].receipt_handle.as_deref(), Some("h3"));
    }
}
