//! Pipeline benchmarks that need a queue; scripts/bench.sh runs them. Not part of `etl`.
//!
//! `cargo bench --bench pipeline -- MODE --messages N [--concurrency C] [--latency-ms L]`
//! - `modelled`: `etl run`'s own stages (receivers → coalescing writers → deletes) fed by a
//!   queue whose receive and delete each take L ms (default 20) and return up to ten messages:
//!   SQS at real-service speed, which the emulator cannot give.
//! - `seed-style`: the seeds' consumer on the same modelled queue: one receive at a time, one
//!   INSERT + COMMIT per row, then the delete.
//! - `ideal-sqs`: receive 10 + delete 10 with no processing, C at a time, against the real queue
//!   at `SQS_QUEUE_URL`: the most any consumer can get out of that queue.
//!
//! The database ones write to `DATABASE_URL` with the keys under `PIIVAULT_KEK` (migrated, keys
//! initialised). Prints one JSON line.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use piivault::commands::Context;
use piivault::config::Settings;
use piivault::pipeline::{self, FlowOptions, Pipeline, QueueOptions};
use piivault::source::Queue;
use piivault::source::modelled::ModelledQueue;
use piivault::source::sqs::SqsQueue;
use piivault::synth::{self, SynthOptions};

/// The modelled queue holding `messages` synthetic bodies (1 % malformed).
fn modelled_queue(messages: usize, latency: Duration) -> ModelledQueue {
    let bodies = synth::generate(SynthOptions {
        count: messages,
        malformed_ratio: 0.01,
        seed: 9,
    })
    .bodies;
    ModelledQueue::new(bodies, latency)
}

struct Args {
    mode: String,
    messages: usize,
    concurrency: usize,
    latency: Duration,
}

fn args() -> Args {
    let mut args = Args {
        mode: String::new(),
        messages: 20_000,
        concurrency: 16,
        latency: Duration::from_millis(20),
    };
    let mut it = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(arg) = it.next() {
        let mut value = || it.next().expect("a value after the flag");
        match arg.as_str() {
            "--messages" => args.messages = value().parse().unwrap(),
            "--concurrency" => args.concurrency = value().parse().unwrap(),
            "--latency-ms" => args.latency = Duration::from_millis(value().parse().unwrap()),
            mode if args.mode.is_empty() => args.mode = mode.to_owned(),
            other => panic!("unexpected argument {other}"),
        }
    }
    args
}

async fn pipeline(ctx: &Context, connections: u32) -> Arc<Pipeline> {
    let pool = ctx.pool(connections).await.unwrap();
    Arc::new(
        Pipeline::load(pool, ctx.kek().await.unwrap())
            .await
            .unwrap(),
    )
}

/// `etl run`'s stages, with `etl run`'s defaults, on the modelled queue.
async fn modelled(ctx: &Context, args: &Args) -> (u64, f64) {
    let queue = modelled_queue(args.messages, args.latency);
    let flow = FlowOptions {
        writers: 4,
        max_rows: 1000,
        linger: Duration::from_millis(200),
        max_outage: Duration::from_secs(300),
        stall_timeout: Duration::from_secs(600),
        shutdown_timeout: Duration::from_secs(30),
    };
    let options = QueueOptions {
        concurrency: args.concurrency,
        wait_secs: 0,
        drain: true,
        flow,
    };
    let pipeline = pipeline(ctx, flow.writers as u32 + 1).await;
    let started = Instant::now();
    let counters = Default::default();
    let summary = pipeline::run_queue(pipeline, queue, options, ctx.stop.clone(), counters)
        .await
        .unwrap();
    assert_eq!(summary.deleted, args.messages as u64);
    (summary.received, started.elapsed().as_secs_f64())
}

/// The seeds' consumer: one receive at a time, a transaction per row, then the delete.
async fn seed_style(ctx: &Context, args: &Args) -> (u64, f64) {
    let queue = modelled_queue(args.messages, args.latency);
    let pipeline = pipeline(ctx, 1).await;
    let started = Instant::now();
    let mut received = 0;
    loop {
        let batch = queue.receive(0).await.unwrap();
        if batch.is_empty() {
            return (received, started.elapsed().as_secs_f64());
        }
        for message in &batch {
            pipeline.store(std::slice::from_ref(message)).await.unwrap();
        }
        let receipts: Vec<(&str, &str)> = batch
            .iter()
            .map(|m| (m.message_id.as_str(), m.receipt_handle.as_deref().unwrap()))
            .collect();
        queue.delete_batch(&receipts).await.unwrap();
        received += batch.len() as u64;
    }
}

/// Receive 10 + delete 10, no processing, `concurrency` at a time, until a receive is empty.
async fn ideal_sqs(ctx: &Context, args: &Args) -> (u64, f64) {
    let queue = SqsQueue::new(ctx.settings.queue_url().unwrap().to_owned()).await;
    let started = Instant::now();
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        let (queue, seen) = (queue.clone(), seen.clone());
        tasks.spawn(async move {
            loop {
                let batch = queue.receive(1).await.unwrap();
                if batch.is_empty() {
                    return;
                }
                let receipts: Vec<(&str, &str)> = batch
                    .iter()
                    .map(|m| (m.message_id.as_str(), m.receipt_handle.as_deref().unwrap()))
                    .collect();
                queue.delete_batch(&receipts).await.unwrap();
                seen.lock()
                    .unwrap()
                    .extend(batch.into_iter().map(|m| m.message_id));
            }
        });
    }
    tasks.join_all().await;
    let distinct = seen.lock().unwrap().len() as u64;
    (distinct, started.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() {
    let mut args = args();
    if args.mode.is_empty() {
        // `cargo test --all-targets` runs bench binaries without arguments: nothing to measure.
        eprintln!(
            "usage: cargo bench --bench pipeline -- modelled|seed-style|ideal-sqs [--messages N] [--concurrency C] [--latency-ms L]"
        );
        return;
    }
    let ctx = Context {
        settings: Settings::from_env(),
        stop: Default::default(),
    };
    let (messages, seconds) = match args.mode.as_str() {
        "modelled" => modelled(&ctx, &args).await,
        "seed-style" => {
            args.concurrency = 1; // one receive at a time, by definition
            seed_style(&ctx, &args).await
        }
        "ideal-sqs" => ideal_sqs(&ctx, &args).await,
        other => panic!("unknown mode {other:?}: modelled, seed-style or ideal-sqs"),
    };
    println!(
        "{}",
        serde_json::json!({
            "mode": args.mode,
            "messages": messages,
            "concurrency": args.concurrency,
            "latency_ms": args.latency.as_millis() as u64,
            "seconds": (seconds * 100.0).round() / 100.0,
            "msgs_per_s": (messages as f64 / seconds).round(),
        })
    );
}
