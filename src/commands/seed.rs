//! `etl seed`: send synthetic login events to the queue (demo and benchmarks).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use clap::Args;
use serde_json::json;

use tokio_util::sync::CancellationToken;

use super::progress::Progress;
use super::{Context, print_line};
use crate::error::Error;
use crate::source::sqs::{MAX_BATCH, SqsQueue};
use crate::synth::{self, SynthOptions};

/// Sends in parallel: the emulator and SQS both reward a few calls in flight.
const SENDERS: usize = 4;

/// `etl seed --count N [--malformed-ratio R] [--seed S] [--output FILE]`.
#[derive(Debug, Args)]
pub struct SeedArgs {
    /// Number of messages to send.
    #[arg(long)]
    count: usize,
    /// Share of malformed messages, 0–1 (exactly round(count × ratio) of them).
    #[arg(long, default_value_t = 0.0)]
    malformed_ratio: f64,
    /// Random seed; the same seed sends the same bodies.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the bodies to FILE (JSON lines, for `etl run --input`) instead of sending them.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
}

/// Generates and sends; prints `{"sent":N,"malformed":M,"seconds":S}`.
pub async fn run(args: SeedArgs, ctx: &Context) -> Result<(), Error> {
    if !(0.0..=1.0).contains(&args.malformed_ratio) {
        return Err(Error::Usage(
            "--malformed-ratio must be between 0 and 1".into(),
        ));
    }
    let started = Instant::now();
    let synth = synth::generate(SynthOptions {
        count: args.count,
        malformed_ratio: args.malformed_ratio,
        seed: args.seed,
    });
    if let Some(path) = &args.output {
        write_lines(path, &synth.bodies)?;
        let seconds = (started.elapsed().as_secs_f64() * 100.0).round() / 100.0;
        return print_line(
            &json!({"written": synth.bodies.len(), "malformed": synth.malformed, "file": path, "seconds": seconds})
                .to_string(),
        );
    }
    let queue = SqsQueue::new(ctx.settings.queue_url()?.to_owned()).await;
    let chunks: Arc<Vec<Vec<String>>> = Arc::new(
        synth
            .bodies
            .chunks(MAX_BATCH)
            .map(<[String]>::to_vec)
            .collect(),
    );
    let so_far = Arc::new(AtomicU64::new(0));
    let all_sent = CancellationToken::new();
    let progress = Progress::new("seeding", synth.bodies.len() as u64)
        .follow(so_far.clone(), all_sent.clone());
    let mut senders = tokio::task::JoinSet::new();
    for sender in 0..SENDERS {
        let (queue, chunks, so_far) = (queue.clone(), chunks.clone(), so_far.clone());
        senders.spawn(async move {
            let mut sent = 0;
            for chunk in chunks.iter().skip(sender).step_by(SENDERS) {
                let n = queue.send_batch(chunk).await?;
                so_far.fetch_add(n as u64, Ordering::Relaxed);
                sent += n;
            }
            Ok::<usize, Error>(sent)
        });
    }
    let mut sent = 0;
    let mut failed = None;
    while let Some(joined) = senders.join_next().await {
        match joined.expect("sender task panicked") {
            Ok(n) => sent += n,
            Err(e) => {
                failed.get_or_insert(e);
            }
        }
    }
    all_sent.cancel();
    let _ = progress.await;
    if let Some(e) = failed {
        return Err(e);
    }
    let seconds = (started.elapsed().as_secs_f64() * 100.0).round() / 100.0;
    print_line(&json!({"sent": sent, "malformed": synth.malformed, "seconds": seconds}).to_string())
}

/// Writes one body per line to a temporary file beside `path`, then renames it over `path`: an
/// interrupted or failed run leaves the old file (or none), never a truncated one that a later
/// `etl run --input` would load without warning.
fn write_lines(path: &std::path::Path, bodies: &[String]) -> Result<(), Error> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::Usage(format!("--output {} names no file", path.display())))?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".partial-{}", std::process::id()));
    let temp = path.with_file_name(temp_name);
    let written = (|| {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&temp)?);
        for body in bodies {
            writeln!(out, "{body}")?;
        }
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    written.map_err(|source| {
        let _ = std::fs::remove_file(&temp);
        Error::WriteFile {
            flag: "--output",
            path: path.display().to_string(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leftovers(dir: &std::path::Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".partial-"))
            .collect()
    }

    #[test]
    fn output_is_replaced_whole_or_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        std::fs::write(&path, "old\n").unwrap();
        write_lines(&path, &["{\"a\":1}".into(), "{\"a\":2}".into()]).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"a\":1}\n{\"a\":2}\n"
        );
        assert!(leftovers(dir.path()).is_empty());
        // A target that cannot be replaced (a directory): the error is reported, nothing is
        // left behind, and the directory is untouched.
        let taken = dir.path().join("taken");
        std::fs::create_dir(&taken).unwrap();
        std::fs::write(taken.join("inside"), "keep").unwrap();
        assert!(write_lines(&taken, &["{}".into()]).is_err());
        assert!(leftovers(dir.path()).is_empty());
        assert_eq!(
            std::fs::read_to_string(taken.join("inside")).unwrap(),
            "keep"
        );
    }
}
