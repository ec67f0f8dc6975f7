//! `etl run`: consume the queue (or backfill a file) into `user_logins` + vault + quarantine.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use super::{Context, print_line};
use crate::error::Error;
use crate::pipeline::{self, Pipeline, QueueOptions};
use crate::source::{file, sqs::SqsQueue};

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
    /// How long an outage of Postgres, SQS or KMS is waited out (retries with exponential
    /// backoff and jitter) before `etl run` gives up with exit 69.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    max_outage_secs: u64,
    /// After SIGTERM/SIGINT: how long batches in flight may take to commit and be deleted before
    /// the process exits anyway (they are then redelivered, never lost). Keep it below the
    /// orchestrator's grace period (terminationGracePeriodSeconds).
    #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    shutdown_timeout_secs: u64,
    /// Rows per transaction for --input.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    batch_size: u32,
}

/// Runs until the queue is drained (`--drain`), the file is loaded, or SIGINT/SIGTERM.
pub async fn run(args: RunArgs, ctx: &Context) -> Result<(), Error> {
    let source = match &args.input {
        Some(path) => Some(file::read(path)?),
        None => None,
    };
    let queue = match source {
        None => Some(
            SqsQueue::new(ctx.settings.queue_url()?.to_owned())
                .await
                .with_visibility(args.visibility_timeout_secs),
        ),
        Some(_) => None,
    };
    let pool = ctx.pool(u32::from(args.concurrency) + 1).await?;
    let pipeline = Pipeline::load(pool, ctx.kek().await?)
        .await?
        .with_max_outage(std::time::Duration::from_secs(args.max_outage_secs));
    let summary = match (source, queue) {
        (Some(messages), _) => {
            pipeline::run_messages(&pipeline, messages, args.batch_size as usize).await?
        }
        (None, Some(queue)) => {
            let options = QueueOptions {
                concurrency: usize::from(args.concurrency),
                wait_secs: args.wait_time_secs,
                drain: args.drain,
                shutdown_timeout: std::time::Duration::from_secs(args.shutdown_timeout_secs),
            };
            tracing::info!(
                queue = queue.url(),
                concurrency = options.concurrency,
                drain = options.drain,
                "consuming"
            );
            pipeline::run_queue(Arc::new(pipeline), queue, options, ctx.stop.clone()).await?
        }
        (None, None) => unreachable!("either a file or a queue"),
    };
    print_line(&serde_json::to_string(&summary).expect("a summary serialises"))
}
