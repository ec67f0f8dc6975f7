//! The flow's own behaviour on a modelled queue and a modelled write stage, under tokio's paused
//! clock: deadlines, retries and stalls take no real time, and every outcome is exact.

use std::collections::HashSet;
use std::sync::Mutex as SyncMutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::Utc;

use super::*;
use crate::error::exit;
use crate::source::modelled::ModelledQueue;
use crate::store::StoreError;
use health::StageHealth;

/// What the modelled write stage does with the n-th chunk it is given (0-based).
#[derive(Clone, Copy)]
enum Behaviour {
    /// Commits every chunk after `took`.
    Commit { took: Duration },
    /// Commits the first `good` chunks, then refuses every chunk for good (no permission).
    FailFrom { good: usize },
    /// Commits the first `good` chunks, then never returns.
    HangFrom { good: usize },
    /// Fails the first `conflicts` attempts with a conflict, then commits.
    ConflictFirst { conflicts: usize },
    /// Postgres unreachable on every attempt.
    Unreachable,
}

/// A write stage that keeps the message ids it "committed".
struct ModelledStore {
    behaviour: Behaviour,
    calls: AtomicUsize,
    committed: SyncMutex<Vec<String>>,
    /// Live heartbeats of the queue seen during each call.
    heartbeats_seen: SyncMutex<Vec<usize>>,
    /// Messages in each chunk, in call order.
    chunk_sizes: SyncMutex<Vec<usize>>,
    queue: ModelledQueue,
}

impl ModelledStore {
    fn new(behaviour: Behaviour, queue: &ModelledQueue) -> Arc<ModelledStore> {
        Arc::new(ModelledStore {
            behaviour,
            calls: AtomicUsize::new(0),
            committed: SyncMutex::default(),
            heartbeats_seen: SyncMutex::default(),
            chunk_sizes: SyncMutex::default(),
            queue: queue.clone(),
        })
    }

    fn committed(&self) -> Vec<String> {
        self.committed.lock().unwrap().clone()
    }
}

impl WriteStage for ModelledStore {
    async fn store(&self, chunk: &[Received]) -> Result<Stored, Error> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        self.heartbeats_seen
            .lock()
            .unwrap()
            .push(self.queue.live_heartbeats());
        self.chunk_sizes.lock().unwrap().push(chunk.len());
        let denied = || {
            Error::Store(StoreError::PermissionDenied {
                what: "writing a batch",
                detail: "permission denied for table user_logins".into(),
            })
        };
        match self.behaviour {
            Behaviour::Commit { took } => tokio::time::sleep(took).await,
            Behaviour::FailFrom { good } if call >= good => return Err(denied()),
            Behaviour::HangFrom { good } if call >= good => std::future::pending().await,
            Behaviour::ConflictFirst { conflicts } if call < conflicts => {
                return Err(Error::Store(StoreError::Conflict {
                    what: "writing a batch",
                    detail: "deadlock detected".into(),
                }));
            }
            Behaviour::Unreachable => {
                return Err(Error::Store(StoreError::Unavailable {
                    what: "writing a batch",
                    detail: "connection refused".into(),
                }));
            }
            _ => {}
        }
        let newest = write::newest_deliveries(chunk);
        let mut committed = self.committed.lock().unwrap();
        committed.extend(newest.iter().map(|&i| chunk[i].message_id.clone()));
        Ok(Stored {
            counts: BatchCounts {
                loaded: newest.len() as u64,
                ..Default::default()
            },
            newest,
        })
    }
}

fn bodies(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("{{\"user_id\":\"u-{i}\"}}"))
        .collect()
}

fn flow() -> FlowOptions {
    FlowOptions {
        writers: 2,
        max_rows: 100,
        linger: Duration::from_millis(50),
        max_outage: Duration::from_secs(30),
        stall_timeout: Duration::from_secs(120),
        shutdown_timeout: Duration::from_secs(25),
    }
}

fn options(drain: bool) -> QueueOptions {
    QueueOptions {
        concurrency: 4,
        wait_secs: 20,
        drain,
        flow: flow(),
    }
}

/// Runs the flow to its end; returns its result and how long it took on the paused clock.
async fn run(
    store: &Arc<ModelledStore>,
    queue: &ModelledQueue,
    options: QueueOptions,
    stop: CancellationToken,
) -> (Result<Summary, Error>, Duration, Arc<Counters>) {
    let counters = Arc::new(Counters::default());
    let started = Instant::now();
    let result = run_queue(
        store.clone(),
        queue.clone(),
        options,
        stop,
        counters.clone(),
    )
    .await;
    (result, started.elapsed(), counters)
}

fn deleted_ids(queue: &ModelledQueue) -> Vec<String> {
    queue.deleted().into_iter().map(|(id, _)| id).collect()
}

/// Every committed message was deleted, and nothing else.
fn assert_deletes_match_commits(store: &ModelledStore, queue: &ModelledQueue) {
    let mut committed = store.committed();
    let mut deleted = deleted_ids(queue);
    committed.sort();
    deleted.sort();
    assert_eq!(deleted, committed, "deleted exactly what was committed");
}

/// No message is kept invisible any more (aborted heartbeat tasks get a moment to be dropped).
async fn assert_no_heartbeat(queue: &ModelledQueue) {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(queue.live_heartbeats(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_drain_commits_and_deletes_every_message_once() {
    let queue = ModelledQueue::new(bodies(995), Duration::from_millis(20));
    let store = ModelledStore::new(
        Behaviour::Commit {
            took: Duration::from_millis(30),
        },
        &queue,
    );
    let (result, _, counters) = run(&store, &queue, options(true), CancellationToken::new()).await;
    let summary = result.unwrap();
    assert_eq!((summary.loaded, summary.deleted), (995, 995));
    let deleted = deleted_ids(&queue);
    assert_eq!(deleted.len(), 995);
    assert_eq!(deleted.iter().collect::<HashSet<_>>().len(), 995);
    assert_eq!(counters.in_hand(), (0, 0));
    assert_no_heartbeat(&queue).await;
}

#[tokio::test(start_paused = true)]
async fn a_redelivered_message_is_deleted_with_its_newest_receipt_handle() {
    let message = |handle: &str| Received {
        message_id: "m-1".into(),
        receipt_handle: Some(handle.into()),
        sent_at: Utc::now(),
        body: "{}".into(),
    };
    let queue = ModelledQueue::from_messages(
        vec![message("old"), message("new")],
        Duration::from_millis(1),
    );
    let store = ModelledStore::new(
        Behaviour::Commit {
            took: Duration::ZERO,
        },
        &queue,
    );
    let mut options = options(true);
    options.concurrency = 1;
    let (result, _, _) = run(&store, &queue, options, CancellationToken::new()).await;
    let summary = result.unwrap();
    assert_eq!(summary.duplicates, 1);
    assert_eq!(queue.deleted(), vec![("m-1".into(), "new".into())]);
}

#[tokio::test(start_paused = true)]
async fn heartbeats_live_while_a_chunk_is_written_and_end_with_the_run() {
    let queue = ModelledQueue::new(bodies(40), Duration::from_millis(5));
    let store = ModelledStore::new(
        Behaviour::Commit {
            took: Duration::from_secs(40),
        },
        &queue,
    );
    let (result, _, _) = run(&store, &queue, options(true), CancellationToken::new()).await;
    assert_eq!(result.unwrap().deleted, 40);
    let seen = store.heartbeats_seen.lock().unwrap().clone();
    assert!(
        seen.iter().all(|&live| live > 0),
        "a chunk was written without its heartbeat: {seen:?}"
    );
    assert_no_heartbeat(&queue).await;
}

/// A write stage that dies for good under a queue much deeper than the channel: the run ends
/// with the write's exit code, with and without `--drain`, deletes exactly what it committed,
/// and leaves the rest in the queue with no heartbeat.
async fn writer_dies_for_good(drain: bool) {
    let queue = ModelledQueue::new(bodies(5_000), Duration::from_millis(10));
    let store = ModelledStore::new(Behaviour::FailFrom { good: 3 }, &queue);
    let (result, took, counters) =
        run(&store, &queue, options(drain), CancellationToken::new()).await;
    let error = result.expect_err("the run must fail");
    assert_eq!(error.exit_code(), exit::NO_PERMISSION);
    assert!(took < flow().shutdown_timeout, "took {took:?}");
    assert!(!store.committed().is_empty());
    assert_deletes_match_commits(&store, &queue);
    assert!(queue.pending() > 4_000, "{} left", queue.pending());
    assert!(counters.health(flow().stall_timeout).is_err());
    assert_no_heartbeat(&queue).await;
}

#[tokio::test(start_paused = true)]
async fn a_dead_writer_ends_a_drain() {
    writer_dies_for_good(true).await;
}

#[tokio::test(start_paused = true)]
async fn a_dead_writer_ends_a_run_that_polls_forever() {
    writer_dies_for_good(false).await;
}

#[tokio::test(start_paused = true)]
async fn a_stuck_writer_trips_the_stall_watchdog() {
    let queue = ModelledQueue::new(bodies(3_000), Duration::from_millis(10));
    let store = ModelledStore::new(Behaviour::HangFrom { good: 2 }, &queue);
    let flow = flow();
    let (result, took, counters) =
        run(&store, &queue, options(false), CancellationToken::new()).await;
    let error = result.expect_err("a stall must end the run");
    assert!(matches!(error, Error::Stalled { .. }), "{error}");
    assert_eq!(error.exit_code(), exit::TEMP_FAIL);
    // The watchdog looks once a second; the stuck writer is then cancelled at once.
    assert!(took > flow.stall_timeout, "took {took:?}");
    assert!(
        took <= flow.stall_timeout + WATCHDOG_PERIOD * 2,
        "took {took:?}"
    );
    assert!(counters.health(flow.stall_timeout).is_err());
    assert_deletes_match_commits(&store, &queue);
    assert_no_heartbeat(&queue).await;
}

#[tokio::test(start_paused = true)]
async fn health_fails_while_stalled_before_the_run_ends() {
    let queue = ModelledQueue::new(bodies(50), Duration::from_millis(10));
    let store = ModelledStore::new(Behaviour::HangFrom { good: 0 }, &queue);
    let counters = Arc::new(Counters::default());
    let mut options = options(false);
    options.flow.stall_timeout = Duration::from_secs(100);
    let run = tokio::spawn(run_queue(
        store.clone(),
        queue.clone(),
        options,
        CancellationToken::new(),
        counters.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(50)).await;
    assert_eq!(counters.health(Duration::from_secs(100)), Ok(()));
    // A probe with a shorter bound than the run's already sees the stall.
    let unhealthy = counters.health(Duration::from_secs(30)).unwrap_err();
    assert!(unhealthy.contains("no progress"), "{unhealthy}");
    assert!(matches!(run.await.unwrap(), Err(Error::Stalled { .. })));
}

#[tokio::test(start_paused = true)]
async fn a_stop_signal_abandons_a_stuck_write_at_the_shutdown_deadline() {
    let queue = ModelledQueue::new(bodies(500), Duration::from_millis(10));
    let store = ModelledStore::new(Behaviour::HangFrom { good: 0 }, &queue);
    let stop = CancellationToken::new();
    let signal = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        signal.cancel();
    });
    let (result, took, counters) = run(&store, &queue, options(false), stop).await;
    let summary = result.expect("a stop signal is not an error");
    assert_eq!(summary.deleted, 0);
    let flow = flow();
    assert!(
        took >= Duration::from_secs(5) + flow.shutdown_timeout,
        "took {took:?}"
    );
    assert!(
        took < Duration::from_secs(5) + flow.shutdown_timeout + Duration::from_secs(1),
        "took {took:?}"
    );
    assert!(queue.deleted().is_empty());
    assert!(
        counters.in_hand().0 > 0,
        "the abandoned messages are reported"
    );
    assert_no_heartbeat(&queue).await;
}

#[tokio::test(start_paused = true)]
async fn conflicts_are_retried_by_the_one_retry_layer() {
    let queue = ModelledQueue::new(bodies(30), Duration::from_millis(1));
    let store = ModelledStore::new(Behaviour::ConflictFirst { conflicts: 3 }, &queue);
    let mut options = options(true);
    options.flow.writers = 1;
    options.concurrency = 1;
    options.flow.max_rows = 1_000;
    options.flow.linger = Duration::from_secs(1);
    let (result, _, counters) = run(&store, &queue, options, CancellationToken::new()).await;
    assert_eq!(result.unwrap().deleted, 30);
    // One chunk: three refused attempts, then the one that committed; nothing else retried.
    assert_eq!(store.calls.load(Ordering::SeqCst), 4);
    let metrics = counters.encode();
    for line in [
        "piivault_retries_total{dependency=\"postgres\"} 3",
        "piivault_retries_total{dependency=\"sqs\"} 0",
        "piivault_errors_total{class=\"conflict\"} 3",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    }
    let health = counters.stages().health();
    assert!(
        health.iter().all(|(_, h)| matches!(h, StageHealth::Ok(_))),
        "{health:?}"
    );
    let last = counters.stages().last_error().unwrap();
    assert_eq!(
        (last.stage, last.class, last.retried),
        (Some(Stage::Write), "conflict", true)
    );
}

#[tokio::test(start_paused = true)]
async fn an_outage_is_waited_out_for_max_outage_then_ends_the_run_with_69() {
    let queue = ModelledQueue::new(bodies(30), Duration::from_millis(1));
    let store = ModelledStore::new(Behaviour::Unreachable, &queue);
    let (result, took, counters) =
        run(&store, &queue, options(true), CancellationToken::new()).await;
    let error = result.expect_err("an outage longer than --max-outage-secs ends the run");
    let last = counters.stages().last_error().unwrap();
    assert_eq!(
        (last.stage, last.class, last.retried),
        (Some(Stage::Write), "unreachable", false)
    );
    assert!(matches!(
        counters.stages().health()[1].1,
        StageHealth::Failed(_)
    ));
    assert_eq!(error.exit_code(), exit::UNAVAILABLE);
    let max_outage = flow().max_outage;
    assert!(took >= max_outage.mul_f64(0.5), "gave up after {took:?}");
    // The last wait may overshoot by at most one backoff step (10 s).
    assert!(
        took <= max_outage + Duration::from_secs(11),
        "gave up after {took:?}"
    );
    assert!(queue.deleted().is_empty());
}

#[tokio::test(start_paused = true)]
async fn receives_are_coalesced_into_chunks_of_max_rows() {
    // Eight receivers fill the channel faster than one writer empties it; the writer lingers
    // long enough to gather full chunks.
    let queue = ModelledQueue::new(bodies(400), Duration::from_millis(10));
    let store = ModelledStore::new(
        Behaviour::Commit {
            took: Duration::from_millis(100),
        },
        &queue,
    );
    let mut options = options(true);
    options.concurrency = 8;
    options.flow.writers = 1;
    options.flow.max_rows = 100;
    options.flow.linger = Duration::from_secs(2);
    let (result, _, _) = run(&store, &queue, options, CancellationToken::new()).await;
    assert_eq!(result.unwrap().loaded, 400);
    let sizes = store.chunk_sizes.lock().unwrap().clone();
    assert_eq!(
        sizes,
        vec![100, 100, 100, 100],
        "ten-message receives coalesced"
    );
}

#[tokio::test(start_paused = true)]
async fn a_short_linger_commits_what_it_has() {
    let queue = ModelledQueue::new(bodies(25), Duration::from_millis(500));
    let store = ModelledStore::new(
        Behaviour::Commit {
            took: Duration::ZERO,
        },
        &queue,
    );
    let mut options = options(true);
    options.concurrency = 1;
    options.flow.writers = 1;
    options.flow.linger = Duration::from_millis(100);
    let (result, _, _) = run(&store, &queue, options, CancellationToken::new()).await;
    assert_eq!(result.unwrap().loaded, 25);
    // One receive every 500 ms, a linger of 100 ms: each receive is committed on its own.
    assert_eq!(*store.chunk_sizes.lock().unwrap(), vec![10, 10, 5]);
}
