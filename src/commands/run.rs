//! `etl run`: consume the queue (or backfill a file) into `user_logins` + vault + quarantine.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tokio_util::sync::CancellationToken;

use super::progress::Progress;
use super::{Context, print_line};
use crate::error::Error;
use crate::pipeline::{self, Counters, FlowOptions, Pipeline, QueueOptions};
use crate::serve::{self, Served};
use crate::source::{file::InputFile, sqs::SqsQueue};

/// `etl run [--drain] [--input FILE] [--concurrency N] [--wait-time-secs S]`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Exit once a receive comes back empty (after one full long poll) and print the summary.
    #[arg(long)]
    drain: bool,
    /// Load a JSON array or JSON-lines file of message bodies instead of reading SQS.
    #[arg(long, value_name = "FILE", conflicts_with = "drain")]
    input: Option<PathBuf>,
    /// Receivers polling the queue at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    concurrency: u16,
    /// Long-poll wait per receive (SQS WaitTimeSeconds, 0–20). Lower it to make --drain end sooner.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(i32).range(0..=20))]
    wait_time_secs: i32,
    /// Visibility timeout requested on receive; a batch still in progress at half of it has
    /// its messages' visibility renewed (heartbeat) until it is committed and deleted.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(i32).range(1..=43_200))]
    visibility_timeout_secs: i32,
    /// How long a transient failure (an outage, throttling or 5xx of Postgres, SQS or KMS, a
    /// read-only or full database, a conflict) is retried with exponential backoff and jitter
    /// before `etl run` gives up: exit 69, or 75 for conflicts and cancelled statements.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    max_outage_secs: u64,
    /// After SIGTERM/SIGINT or a fatal error: how long batches in flight may take to commit and
    /// be deleted before the process exits anyway (they are then redelivered, never lost). Keep
    /// it below the orchestrator's grace period (terminationGracePeriodSeconds).
    #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    shutdown_timeout_secs: u64,
    /// Rows per transaction, at most: receives (or file reads) are coalesced up to this.
    /// Default 1000 from the queue (deletes wait for the commit), 2000 with --input.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    batch_size: Option<u32>,
    /// How long a writer waits for more messages before committing a smaller transaction.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    linger_ms: u64,
    /// Serve a status page (/), /metrics (Prometheus), /healthz and /readyz on this address while running,
    /// e.g. 0.0.0.0:9090 in a container. Off by default.
    #[arg(long, env = "PIIVAULT_METRICS_ADDR", value_name = "HOST:PORT")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// How long the status page's database reads (scans of user_logins for its duplicate
    /// groups) may run before Postgres cancels them. Views never wait for them.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=600))]
    status_timeout_secs: u64,
    /// Messages in hand with no commit or delete for this long end the run (exit 75) and fail
    /// /healthz meanwhile: a stage is stuck. Keep it above --max-outage-secs, which bounds the
    /// waits of a retried failure.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    stall_timeout_secs: u64,
    /// Transactions in progress at once (each holds one database connection). Commits wait for
    /// the WAL flush; several in flight share it (group commit), which is what makes a load fast.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    writers: u16,
}

/// Where a run reads from.
enum Source {
    File(InputFile),
    Queue(SqsQueue),
}

/// Runs until the queue is drained (`--drain`), the file is loaded, or SIGINT/SIGTERM.
pub async fn run(args: RunArgs, ctx: &Context) -> Result<(), Error> {
    // The source first: a missing file or queue setting fails before any connection is made.
    let source = match &args.input {
        Some(path) => Source::File(InputFile::open(path)?),
        None => Source::Queue(
            SqsQueue::new(ctx.settings.queue_url()?.to_owned())
                .await
                .with_visibility(args.visibility_timeout_secs),
        ),
    };
    // One connection per writer and one for key reloads; the endpoints have their own pools.
    let pool = ctx.pool(u32::from(args.writers) + 1).await?;
    let pipeline = Arc::new(Pipeline::load(pool.clone(), ctx.kek().await?).await?);
    let flow = FlowOptions {
        writers: usize::from(args.writers),
        max_rows: args.batch_size.unwrap_or(match source {
            Source::File(_) => 2000,
            Source::Queue(_) => 1000,
        }) as usize,
        linger: Duration::from_millis(args.linger_ms),
        max_outage: Duration::from_secs(args.max_outage_secs),
        stall_timeout: Duration::from_secs(args.stall_timeout_secs),
        shutdown_timeout: Duration::from_secs(args.shutdown_timeout_secs),
    };
    let counters = Arc::new(Counters::default());
    let server_stop = CancellationToken::new();
    let server = match args.metrics_addr {
        Some(addr) => {
            let queue = match &source {
                Source::Queue(queue) => Some(queue.clone()),
                Source::File(_) => None,
            };
            // Connections of their own: the status page's scans and the observer's checks never
            // take a writer's, and each is named so `pg_stat_activity` tells them apart.
            let page_timeout = Duration::from_secs(args.status_timeout_secs);
            let page_pool = ctx.bounded_pool("piivault-status", 1, page_timeout).await?;
            let observer_pool = ctx
                .bounded_pool("piivault-observer", 1, serve::CHECK_TIMEOUT)
                .await?;
            let served = Served::new(
                counters.clone(),
                observer_pool,
                page_pool,
                page_timeout,
                queue,
            )
            .with_stall_timeout(flow.stall_timeout);
            Some(serve::start(addr, served, server_stop.clone()).await?)
        }
        None => None,
    };
    let result = match source {
        Source::File(input) => {
            let read_all = CancellationToken::new();
            let progress = Progress::bytes("loading", input.size())
                .follow(input.bytes_read(), read_all.clone());
            // A backfill goes on after a first SIGINT/SIGTERM (a second one exits at once):
            // stopping half-way would look like success.
            let keep_going = CancellationToken::new();
            let loaded = pipeline::run_file(pipeline, input, flow, keep_going, counters).await;
            read_all.cancel();
            let _ = progress.await;
            loaded
        }
        Source::Queue(queue) => {
            let options = QueueOptions {
                concurrency: usize::from(args.concurrency),
                wait_secs: args.wait_time_secs,
                drain: args.drain,
                flow,
            };
            tracing::info!(
                queue = queue.url(),
                concurrency = options.concurrency,
                writers = flow.writers,
                drain = options.drain,
                "consuming"
            );
            pipeline::run_queue(pipeline, queue, options, ctx.stop.clone(), counters).await
        }
    };
    server_stop.cancel();
    if let Some(server) = server {
        let _ = server.await;
    }
    let summary = result?;
    print_line(&serde_json::to_string(&summary).expect("a summary serialises"))
}
