//! The stages of a run, joined by bounded channels so memory stays flat:
//! receivers (or a file reader) → writers, each coalescing deliveries into one transaction of up
//! to `max_rows` rows or `linger` ([`write`]) → deletes, issued as soon as their rows commit.
//!
//! Receivers never touch the database and writers never wait on a receive, so a slow stage holds
//! back the others through the channel (its messages stay invisible meanwhile: heartbeat) instead
//! of piling messages up in memory.
//!
//! The stages are supervised together ([`Supervisor`]): the first fatal error — a failure the
//! retry layer ([`retry`]) gave up on, or no progress for `stall_timeout` — cancels every stage.
//! Receivers stop even when blocked on a full channel, messages not yet committed are dropped
//! with their heartbeats (the queue redelivers them), and deletes of committed messages get what
//! is left of `shutdown_timeout`; then the run returns the error. A stop signal ends the run the
//! same way, without an error. Whatever is still in hand at the deadline is abandoned and logged
//! with its count.

pub mod health;
pub mod latency;
pub mod retry;
pub mod summary;
mod write;

pub use summary::{Counters, Summary};
pub use write::Pipeline;

use std::future::Future;
use std::sync::{Arc, Mutex as SyncMutex};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::source::file::InputFile;
use crate::source::{Heartbeat, Queue, Received, SourceError};
use crate::store::writer::BatchCounts;
use health::Stage;

/// Messages of one file read sent down the channel at once.
const FILE_DELIVERY: usize = 100;

/// Deletes in flight per writer before it waits for one to finish.
const DELETES_IN_FLIGHT: usize = 64;

/// How often the supervisor looks for a stall.
const WATCHDOG_PERIOD: Duration = Duration::from_secs(1);

/// What one committed chunk did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stored {
    /// Rows loaded, quarantined, and redeliveries already stored.
    pub counts: BatchCounts,
    /// Index of the newest delivery of each distinct message: the ones to delete.
    pub newest: Vec<usize>,
}

/// The write stage as the flow sees it: [`Pipeline`] in `etl run`, a model in the flow's tests.
pub trait WriteStage: Send + Sync + 'static {
    /// Commits one chunk in one transaction, or nothing. One attempt: the flow retries.
    fn store(&self, chunk: &[Received]) -> impl Future<Output = Result<Stored, Error>> + Send;
}

/// How the write stage batches, and the run's time bounds.
#[derive(Debug, Clone, Copy)]
pub struct FlowOptions {
    /// Transactions in progress at once (each holds one connection).
    pub writers: usize,
    /// Rows per transaction, at most (a delivery is never split, so up to 9 more).
    pub max_rows: usize,
    /// How long a writer waits for more deliveries before committing what it has.
    pub linger: Duration,
    /// How long a retryable failure is retried before it ends the run ([`retry::policy`]).
    pub max_outage: Duration,
    /// Messages in hand with no commit or delete for this long end the run (exit 75).
    pub stall_timeout: Duration,
    /// After a stop signal or a fatal error: how long messages in hand may take to commit and
    /// be deleted before they are abandoned to redelivery.
    pub shutdown_timeout: Duration,
}

impl FlowOptions {
    /// The one retry policy of this run.
    fn retry_policy(&self) -> ExponentialBuilder {
        retry::policy(self.max_outage)
    }
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
    /// The write stage and time bounds.
    pub flow: FlowOptions,
}

/// One receive's (or one file read's) messages on their way through the stages.
struct Delivery {
    messages: Vec<Received>,
    /// Keeps the messages invisible until their delete has been issued.
    heartbeat: Option<Heartbeat>,
}

type Inbox = Arc<Mutex<mpsc::Receiver<Delivery>>>;

/// Consumes the queue until `stop` is cancelled (or, with `drain`, until it is empty), or until
/// the first fatal error, which it returns.
pub async fn run_queue<Q: Queue, W: WriteStage>(
    store: Arc<W>,
    queue: Q,
    options: QueueOptions,
    stop: CancellationToken,
    counters: Arc<Counters>,
) -> Result<Summary, Error> {
    let started = std::time::Instant::now();
    let flow = options.flow;
    // A missing queue is a configuration error at start; only an unreachable SQS is waited out.
    let checked = (|| queue.check())
        .retry(flow.retry_policy())
        .when(|e| matches!(e, SourceError::Unavailable { .. }))
        .notify(|e, d| retry::notify(&counters, Stage::Receive, e, d));
    tokio::select! {
        checked = checked => checked?,
        _ = stop.cancelled() => return Ok(counters.summary(started)),
    }
    let supervisor = Arc::new(Supervisor::new(counters.clone()));
    let (sender, inbox) = mpsc::channel(options.concurrency.max(1) * 2);
    let mut tasks = JoinSet::new();
    for _ in 0..options.concurrency.max(1) {
        let (queue, stop, sender, supervisor) = (
            queue.clone(),
            stop.clone(),
            sender.clone(),
            supervisor.clone(),
        );
        tasks.spawn(async move {
            if let Err(e) = receive_loop(&queue, options, &stop, &supervisor, sender).await {
                supervisor.fail(Some(Stage::Receive), e);
            }
        });
    }
    drop(sender); // the channel closes once every receiver has returned
    spawn_writers(&mut tasks, &store, Some(queue), inbox, flow, &supervisor);
    supervisor.wait(tasks, &stop, flow).await?;
    Ok(counters.summary(started))
}

/// Loads a backfill file: one reader streams it into the same write stage as the queue.
pub async fn run_file<W: WriteStage>(
    store: Arc<W>,
    input: InputFile,
    flow: FlowOptions,
    stop: CancellationToken,
    counters: Arc<Counters>,
) -> Result<Summary, Error> {
    let started = std::time::Instant::now();
    let supervisor = Arc::new(Supervisor::new(counters.clone()));
    let (sender, inbox) = mpsc::channel(flow.writers.max(1) * 4);
    let delivery = FILE_DELIVERY.min(flow.max_rows.max(1)); // a delivery is never split
    let mut tasks = JoinSet::new();
    let (reading, reader_supervisor) = (counters.clone(), supervisor.clone());
    let reader_stop = stop.clone();
    // A blocking thread cannot be cancelled: it stops at its next send, which fails once the
    // writers are gone (they own the only receiving end), or at a stop signal.
    tasks.spawn_blocking(move || {
        let mut chunk = Vec::with_capacity(delivery);
        let send = |messages: Vec<Received>| {
            let count = messages.len();
            reading.received(count);
            let sent = !reader_stop.is_cancelled()
                && sender
                    .blocking_send(Delivery {
                        messages,
                        heartbeat: None,
                    })
                    .is_ok();
            if !sent {
                reading.done(count); // never handed over: nothing to abandon
            }
            sent
        };
        let read = input.for_each(|message| {
            chunk.push(message);
            chunk.len() < delivery || send(std::mem::take(&mut chunk))
        });
        match read {
            Ok(_) if !chunk.is_empty() => {
                send(chunk);
            }
            Ok(_) => {}
            Err(e) => reader_supervisor.fail(Some(Stage::Receive), e.into()),
        }
    });
    spawn_writers::<NoQueue, W>(&mut tasks, &store, None, inbox, flow, &supervisor);
    supervisor.wait(tasks, &stop, flow).await?;
    Ok(counters.summary(started))
}

/// Watches the stages of one run: holds its first fatal error and the signal that stops the
/// other stages when it is raised.
struct Supervisor {
    abort: CancellationToken,
    first_error: SyncMutex<Option<Error>>,
    counters: Arc<Counters>,
}

impl Supervisor {
    fn new(counters: Arc<Counters>) -> Supervisor {
        Supervisor {
            abort: CancellationToken::new(),
            first_error: SyncMutex::new(None),
            counters,
        }
    }

    /// A stage cannot go on: keep the first error and stop every stage.
    fn fail(&self, stage: Option<Stage>, error: Error) {
        let mut first = self.first_error.lock().expect("supervisor lock poisoned");
        if first.is_none() {
            tracing::error!(
                exit_code = error.exit_code(),
                "a stage failed; stopping the run: {}",
                error.to_string().replace('\n', " ")
            );
            self.counters.failed(stage, &error);
            *first = Some(error);
        } else {
            tracing::debug!("a further stage failed: {error}");
        }
        self.abort.cancel();
    }

    /// Joins the stages. Once `stop` is cancelled or a stage has failed, they get
    /// `shutdown_timeout` to wind down; then whatever is still running is cancelled and the
    /// messages it held are abandoned to redelivery.
    async fn wait(
        &self,
        mut tasks: JoinSet<()>,
        stop: &CancellationToken,
        flow: FlowOptions,
    ) -> Result<(), Error> {
        let mut deadline: Option<Instant> = None;
        let mut watchdog = tokio::time::interval(WATCHDOG_PERIOD);
        watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let until = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400));
            tokio::select! {
                joined = tasks.join_next() => match joined {
                    None => break,
                    Some(Ok(())) => {}
                    Some(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                    Some(Err(_)) => {} // cancelled at the deadline
                },
                _ = stop.cancelled(), if deadline.is_none() => {
                    deadline = Some(Instant::now() + flow.shutdown_timeout);
                }
                _ = self.abort.cancelled(), if deadline.is_none() => {
                    deadline = Some(Instant::now() + flow.shutdown_timeout);
                }
                _ = tokio::time::sleep_until(until), if deadline.is_some() => {
                    tracing::warn!(
                        timeout_secs = flow.shutdown_timeout.as_secs(),
                        "shutdown timeout: cancelling the stages still running"
                    );
                    tasks.shutdown().await;
                    break;
                }
                _ = watchdog.tick(), if !self.abort.is_cancelled() => {
                    if let Some(idle) = self.counters.stalled(flow.stall_timeout) {
                        self.fail(None, Error::Stalled { secs: idle.as_secs() });
                    }
                }
            }
        }
        self.report_abandoned();
        self.first_error
            .lock()
            .expect("supervisor lock poisoned")
            .take()
            .map_or(Ok(()), Err)
    }

    /// Logs what the run leaves behind: nothing is lost, but an operator sees the redeliveries.
    fn report_abandoned(&self) {
        let (in_hand, committed) = self.counters.in_hand();
        if in_hand > 0 {
            tracing::warn!(
                messages = in_hand,
                committed_not_deleted = committed,
                "abandoning messages in hand: the queue will redeliver them (those already committed are then counted as duplicates)"
            );
        }
    }
}

async fn receive_loop<Q: Queue>(
    queue: &Q,
    options: QueueOptions,
    stop: &CancellationToken,
    supervisor: &Supervisor,
    sender: mpsc::Sender<Delivery>,
) -> Result<(), Error> {
    let policy = options.flow.retry_policy();
    let abort = &supervisor.abort;
    loop {
        let receive = (|| queue.receive(options.wait_secs))
            .retry(policy)
            .when(SourceError::may_pass_while_running)
            .notify(|e, d| retry::notify(&supervisor.counters, Stage::Receive, e, d));
        let messages = tokio::select! {
            biased;
            _ = abort.cancelled() => return Ok(()),
            _ = stop.cancelled() => return Ok(()),
            messages = receive => messages?,
        };
        supervisor.counters.stage_ok(Stage::Receive);
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
        let count = messages.len();
        supervisor.counters.received(count);
        let delivery = Delivery {
            messages,
            heartbeat,
        };
        // Messages in hand go on to the writers after a stop signal, but not after a failure:
        // then they are dropped with their heartbeat and reappear for another consumer.
        tokio::select! {
            biased;
            _ = abort.cancelled() => {
                supervisor.counters.done(count);
                return Ok(());
            }
            sent = sender.send(delivery) => {
                if sent.is_err() {
                    supervisor.counters.done(count);
                    return Ok(());
                }
            }
        }
    }
}

fn spawn_writers<Q: Queue, W: WriteStage>(
    tasks: &mut JoinSet<()>,
    store: &Arc<W>,
    queue: Option<Q>,
    inbox: mpsc::Receiver<Delivery>,
    flow: FlowOptions,
    supervisor: &Arc<Supervisor>,
) {
    // The writers own the only receiving end: once they are gone, senders fail at once.
    let inbox: Inbox = Arc::new(Mutex::new(inbox));
    for _ in 0..flow.writers.max(1) {
        let (store, queue, inbox, supervisor) = (
            store.clone(),
            queue.clone(),
            inbox.clone(),
            supervisor.clone(),
        );
        tasks.spawn(async move {
            let mut deletes = JoinSet::new();
            let written = write_loop(&*store, queue, &inbox, flow, &supervisor, &mut deletes).await;
            if let Err(e) = written {
                // The writer also reaps its deletes: an SQS error there is the delete stage's.
                let stage = match e {
                    Error::Source(_) => Stage::Delete,
                    _ => Stage::Write,
                };
                supervisor.fail(Some(stage), e);
            }
            if supervisor.abort.is_cancelled() {
                discard(&inbox, &supervisor.counters).await;
            }
            drop(inbox);
            // Committed messages are deleted even after a failure, within the shutdown timeout.
            while let Some(done) = deletes.join_next().await {
                if let Err(e) = reap(done) {
                    supervisor.fail(Some(Stage::Delete), e);
                }
            }
        });
    }
}

/// Drops the deliveries waiting in the channel after a failure, with their heartbeats.
async fn discard(inbox: &Inbox, counters: &Counters) {
    let mut inbox = inbox.lock().await;
    inbox.close();
    while let Ok(delivery) = inbox.try_recv() {
        counters.done(delivery.messages.len());
    }
}

async fn write_loop<Q: Queue, W: WriteStage>(
    store: &W,
    queue: Option<Q>,
    inbox: &Inbox,
    flow: FlowOptions,
    supervisor: &Supervisor,
    deletes: &mut JoinSet<Result<(), Error>>,
) -> Result<(), Error> {
    let (abort, counters) = (&supervisor.abort, &supervisor.counters);
    let policy = flow.retry_policy();
    loop {
        let deliveries = tokio::select! {
            biased;
            _ = abort.cancelled() => return Ok(()),
            deliveries = collect(inbox, flow) => deliveries,
        };
        if deliveries.is_empty() {
            return Ok(());
        }
        let mut messages = Vec::with_capacity(flow.max_rows + 10);
        let mut heartbeats = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            messages.extend(delivery.messages);
            heartbeats.extend(delivery.heartbeat);
        }
        let started = std::time::Instant::now();
        let stored = (|| store.store(&messages))
            .retry(policy)
            .when(Error::is_retryable)
            .notify(|e, d| retry::notify(counters, Stage::Write, e, d));
        let stored = tokio::select! {
            biased;
            _ = abort.cancelled() => {
                counters.done(messages.len()); // rolled back: the queue redelivers them
                return Ok(());
            }
            stored = stored => match stored {
                Ok(stored) => stored,
                Err(e) => {
                    counters.done(messages.len());
                    return Err(e);
                }
            },
        };
        let Stored { counts, newest } = stored;
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
        counters.awaiting_delete(receipts.len());
        for group in receipts.chunks(10) {
            while deletes.len() >= DELETES_IN_FLIGHT {
                if let Some(done) = deletes.join_next().await {
                    reap(done)?;
                }
            }
            let (queue, group, heartbeats, counters) = (
                queue.clone(),
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
                    .notify(|e, d| retry::notify(&counters, Stage::Delete, e, d))
                    .await;
                drop(heartbeats);
                counters.deletes_done(group.len());
                counters.deleted(deleted?); // counted now, not when the writer next looks
                counters.stage_ok(Stage::Delete);
                Ok(())
            });
        }
        while let Some(done) = deletes.try_join_next() {
            reap(done)?;
        }
    }
}

fn reap(done: Result<Result<(), Error>, tokio::task::JoinError>) -> Result<(), Error> {
    match done {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Ok(()),
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
    let deadline = Instant::now() + flow.linger;
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

#[cfg(test)]
mod tests;
