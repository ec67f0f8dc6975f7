//! Progress of long jobs (key jobs, `run --input`): a bar on a terminal, a log line every few
//! seconds otherwise.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;

/// Counts processed rows (or bytes) against a total.
pub struct Progress {
    bar: Option<ProgressBar>,
    job: &'static str,
    done: u64,
    total: u64,
    logged: Instant,
}

impl Progress {
    /// Starts reporting `job` over `total` rows.
    pub fn new(job: &'static str, total: u64) -> Progress {
        Self::with_template(
            job,
            total,
            "{msg} [{bar:40}] {pos}/{len} rows, {per_sec}, eta {eta}",
        )
    }

    /// Starts reporting `job` over `total` bytes of input.
    pub fn bytes(job: &'static str, total: u64) -> Progress {
        Self::with_template(
            job,
            total,
            "{msg} [{bar:40}] {bytes}/{total_bytes}, {binary_bytes_per_sec}, eta {eta}",
        )
    }

    fn with_template(job: &'static str, total: u64, template: &str) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(template)
                    .expect("a valid template")
                    .progress_chars("=> "),
            );
            bar.set_message(job);
            bar
        });
        Progress {
            bar,
            job,
            done: 0,
            total,
            logged: Instant::now(),
        }
    }

    /// Adds processed rows.
    pub fn add(&mut self, rows: u64) {
        self.done += rows;
        match &self.bar {
            Some(bar) => bar.inc(rows),
            None if self.logged.elapsed() >= Duration::from_secs(5) => {
                self.logged = Instant::now();
                tracing::info!(
                    job = self.job,
                    done = self.done,
                    total = self.total,
                    "progress"
                );
            }
            None => {}
        }
    }

    /// Moves to `done` in all (for a count kept elsewhere).
    pub fn set(&mut self, done: u64) {
        self.add(done.saturating_sub(self.done));
    }

    /// Follows a count kept elsewhere (by other tasks) until `done` is cancelled, then ends.
    pub fn follow(
        mut self,
        count: Arc<AtomicU64>,
        done: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                self.set(count.load(Ordering::Relaxed));
                tokio::select! {
                    _ = done.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
            self.set(count.load(Ordering::Relaxed));
            self.finish();
        })
    }

    /// Ends the bar.
    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}
