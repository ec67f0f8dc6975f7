//! The stages of a run, joined by bounded channels so memory stays flat:
//! receivers (or a file reader) → writers, each coalescing deliveries into one transaction of up
//! to `max_rows` rows or `linger` → deletes, issued as soon as their rows commit.
//!
//! Receivers never touch the database and writers never wait on a receive, so a slow stage holds
//! back the others through the channel (its messages stay invisible meanwhile: heartbeat) instead
//! of piling messages up in memory.

use std::sync::Arc;
use std::time::Duration;

use backon::Retryable;
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::Pipeline;
use super::summary::{Counters, Summary};
use crate::error::Error;
use crate::retry;
use crate::source::file::InputFile;
use crate::source::{Heartbeat, Queue, Received, SourceError};

/// Messages of one file read sent down the channel at once.
const FILE_DELIVERY: usize = 100;

/// Deletes in flight per writer before it waits for one to finish.
const DELETES_IN_FLIGHT: usize = 64;

/// How the write stage batches.
#[derive(Debug, Clone, Copy)]
pub struct FlowOptions {
    /// Transactions in progress at once (each holds one connection).
    pub writers: usize,
    /// Rows per transaction, at most (a delivery is never split, so up to 9 more).
    pub max_rows: usize,
    /// How long a writer waits for more deliveries before committing what it has.
    pub linger: Duration,
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
    /// After SIGTERM/SIGINT, how long messages in hand may take to commit and delete.
    pub shutdown_timeout: Duration,
    /// The write stage.
    pub flow: FlowOptions,
}

/// One receive's (or one file read's) messages on their way through the stages.
struct Delivery {
    messages: Vec<Received>,
    /// Keeps the messages invisible until their delete has been issued.
    heartbeat: Option<Heartbeat>,
}

type Inbox = Arc<Mutex<mpsc::Receiver<Delivery>>>;

/// Consumes the queue until `stop` is cancelled (or, with `drain`, until it is empty).
pub async fn run_queue<Q: Queue>(
    pipeline: Arc<Pipeline>,
    queue: Q,
    options: QueueOptions,
    stop: CancellationToken,
    counters: Arc<Counters>,
) -> Result<Summary, Error> {
    let started = std::time::Instant::now();
    // A missing queue is a configuration error at start; only an unreachable SQS is waited out.
    (|| queue.check())
        .retry(pipeline.retry_policy())
        .when(|e| matches!(e, SourceError::Unavailable { .. }))
        .notify(retry::notify)
        .await?;
    let (sender, inbox) = mpsc::channel(options.concurrency.max(1) * 2);
    let inbox: Inbox = Arc::new(Mutex::new(inbox));
    let mut receivers = JoinSet::new();
    for _ in 0..options.concurrency.max(1) {
        let (pipeline, queue, stop, sender, counters) = (
            pipeline.clone(),
            queue.clone(),
            stop.clone(),
            sender.clone(),
            counters.clone(),
        );
        receivers.spawn(async move {
            receive_loop(&pipeline, &queue, options, &stop, sender, &counters).await
        });
    }
    drop(sender); // the writers end once every receiver has
    let writers = spawn_writers(&pipeline, Some(queue), &inbox, options.flow, &counters);
    let stages = finish(receivers, writers, &stop);
    // After a stop signal, messages in hand get `shutdown_timeout` to commit and delete; then
    // the rest are abandoned — not deleted, so the queue redelivers them.
    let deadline = async {
        stop.cancelled().await;
        tokio::time::sleep(options.shutdown_timeout).await;
    };
    tokio::select! {
        result = stages => result?,
        _ = deadline => {
            tracing::warn!("shutdown timeout: abandoning messages in hand; the queue will redeliver them");
        }
    }
    Ok(counters.summary(started))
}

/// Loads a backfill file: one reader streams it into the same write stage as the queue.
pub async fn run_file(
    pipeline: Arc<Pipeline>,
    input: InputFile,
    flow: FlowOptions,
    counters: Arc<Counters>,
) -> Result<Summary, Error> {
    let started = std::time::Instant::now();
    let (sender, inbox) = mpsc::channel(flow.writers.max(1) * 4);
    let inbox: Inbox = Arc::new(Mutex::new(inbox));
    let delivery = FILE_DELIVERY.min(flow.max_rows.max(1)); // a delivery is never split
    let mut reader = JoinSet::new();
    let reading = counters.clone();
    reader.spawn_blocking(move || {
        let mut chunk = Vec::with_capacity(delivery);
        let send = |messages: Vec<Received>| {
            reading.received(messages.len());
            sender
                .blocking_send(Delivery {
                    messages,
                    heartbeat: None,
                })
                .is_ok() // false once the writers stopped on an error
        };
        input.for_each(|message| {
            chunk.push(message);
            chunk.len() < delivery || send(std::mem::take(&mut chunk))
        })?;
        if !chunk.is_empty() {
            send(chunk);
        }
        Ok::<(), Error>(())
    });
    let writers = spawn_writers::<NoQueue>(&pipeline, None, &inbox, flow, &counters);
    finish(reader, writers, &CancellationToken::new()).await?;
    Ok(counters.summary(started))
}

/// Waits for the producers, then the writers; the first error cancels `stop` so the others wind
/// down (messages not committed stay in the queue).
async fn finish(
    mut producers: JoinSet<Result<(), Error>>,
    mut writers: JoinSet<Result<(), Error>>,
    stop: &CancellationToken,
) -> Result<(), Error> {
    let mut first_error = None;
    for set in [&mut producers, &mut writers] {
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    stop.cancel();
                    first_error.get_or_insert(e);
                }
                Err(panic) => std::panic::resume_unwind(panic.into_panic()),
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

async fn receive_loop<Q: Queue>(
    pipeline: &Pipeline,
    queue: &Q,
    options: QueueOptions,
    stop: &CancellationToken,
    sender: mpsc::Sender<Delivery>,
    counters: &Counters,
) -> Result<(), Error> {
    loop {
        // Only the receive races the stop signal: messages in hand always go on to the writers.
        let receive = (|| queue.receive(options.wait_secs))
            .retry(pipeline.retry_policy())
            .when(SourceError::may_pass_while_running)
            .notify(retry::notify);
        let messages = tokio::select! {
            biased;
            _ = stop.cancelled() => return Ok(()),
            messages = receive => messages?,
        };
        if messages.is_empty() {
            if options.drain {
                return Ok(());
            }
            continue;
        }
        let handles = messages
            .iter()
            .filter_map(|m| m.receipt_handle.clone())
            .collect();
        let heartbeat = queue.keep_invisible(handles);
        counters.received(messages.len());
        if sender
            .send(Delivery {
                messages,
                heartbeat,
            })
            .await
            .is_err()
        {
            return Ok(()); // the writers stopped on an error; these messages reappear
        }
    }
}

fn spawn_writers<Q: Queue>(
    pipeline: &Arc<Pipeline>,
    queue: Option<Q>,
    inbox: &Inbox,
    flow: FlowOptions,
    counters: &Arc<Counters>,
) -> JoinSet<Result<(), Error>> {
    let mut writers = JoinSet::new();
    for _ in 0..flow.writers.max(1) {
        let (pipeline, queue, inbox, counters) = (
            pipeline.clone(),
            queue.clone(),
            inbox.clone(),
            counters.clone(),
        );
        writers.spawn(async move { write_loop(&pipeline, queue, &inbox, flow, &counters).await });
    }
    writers
}

async fn write_loop<Q: Queue>(
    pipeline: &Arc<Pipeline>,
    queue: Option<Q>,
    inbox: &Inbox,
    flow: FlowOptions,
    counters: &Arc<Counters>,
) -> Result<(), Error> {
    let mut deletes = JoinSet::new();
    loop {
        let deliveries = collect(inbox, flow).await;
        if deliveries.is_empty() {
            break;
        }
        let mut messages = Vec::with_capacity(flow.max_rows + 10);
        let mut heartbeats = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            messages.extend(delivery.messages);
            heartbeats.extend(delivery.heartbeat);
        }
        let started = std::time::Instant::now();
        let (counts, newest) = pipeline.store(&messages).await?;
        let repeats = messages.len() - newest.len();
        counters.committed(&messages, counts, repeats, started.elapsed());
        tracing::debug!(
            received = messages.len(),
            loaded = counts.loaded,
            quarantined = counts.quarantined,
            duplicates = counts.duplicates,
            "batch committed"
        );
        let Some(queue) = &queue else {
            counters.done(messages.len());
            continue;
        };
        // Committed: delete now, ten per call, while the next chunk is written. The heartbeats
        // live until the last delete of their chunk is issued.
        let heartbeats = Arc::new(heartbeats);
        let receipts: Vec<(String, String)> = newest
            .into_iter()
            .filter_map(|i| {
                let m = &messages[i];
                Some((m.message_id.clone(), m.receipt_handle.clone()?))
            })
            .collect();
        counters.done(messages.len() - receipts.len()); // older deliveries of a repeated message
        for group in receipts.chunks(10) {
            while deletes.len() >= DELETES_IN_FLIGHT {
                reap(deletes.join_next().await)?;
            }
            let (queue, policy, group, heartbeats, counters) = (
                queue.clone(),
                pipeline.retry_policy(),
                group.to_vec(),
                heartbeats.clone(),
                counters.clone(),
            );
            deletes.spawn(async move {
                let pairs: Vec<(&str, &str)> = group
                    .iter()
                    .map(|(id, h)| (id.as_str(), h.as_str()))
                    .collect();
                let deleted = (|| queue.delete_batch(&pairs))
                    .retry(policy)
                    .when(SourceError::may_pass_while_running)
                    .notify(retry::notify)
                    .await;
                drop(heartbeats);
                counters.done(group.len());
                counters.deleted(deleted?); // counted now, not when the writer next looks
                Ok(())
            });
        }
        while let Some(done) = deletes.try_join_next() {
            reap(Some(done))?;
        }
    }
    while let Some(done) = deletes.join_next().await {
        reap(Some(done))?;
    }
    Ok(())
}

fn reap(done: Option<Result<Result<(), Error>, tokio::task::JoinError>>) -> Result<(), Error> {
    match done {
        None | Some(Ok(Ok(()))) => Ok(()),
        Some(Ok(Err(e))) => Err(e),
        Some(Err(panic)) => std::panic::resume_unwind(panic.into_panic()),
    }
}

/// The next chunk: one delivery, then more until `max_rows` or `linger` has passed. Empty once
/// every producer has finished and the channel is drained.
async fn collect(inbox: &Inbox, flow: FlowOptions) -> Vec<Delivery> {
    let mut inbox = inbox.lock().await;
    let Some(first) = inbox.recv().await else {
        return Vec::new();
    };
    let mut rows = first.messages.len();
    let mut chunk = vec![first];
    let deadline = tokio::time::Instant::now() + flow.linger;
    while rows < flow.max_rows {
        let next = tokio::select! {
            next = inbox.recv() => next,
            _ = tokio::time::sleep_until(deadline) => None,
        };
        let Some(delivery) = next else { break };
        rows += delivery.messages.len();
        chunk.push(delivery);
    }
    chunk
}

/// The queue type of a file run, which has nothing to delete.
#[derive(Clone)]
enum NoQueue {}

impl Queue for NoQueue {
    async fn check(&self) -> Result<(), SourceError> {
        match *self {}
    }
    async fn receive(&self, _: i32) -> Result<Vec<Received>, SourceError> {
        match *self {}
    }
    async fn delete_batch(&self, _: &[(&str, &str)]) -> Result<usize, SourceError> {
        match *self {}
    }
    fn keep_invisible(&self, _: Vec<String>) -> Option<Heartbeat> {
        match *self {}
    }
}
