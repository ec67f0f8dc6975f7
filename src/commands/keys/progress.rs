//! Progress of long key jobs: a bar on a terminal, a log line every few seconds otherwise.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Counts processed rows against a total.
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
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:40}] {pos}/{len} rows, {per_sec}, eta {eta}",
                )
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

    /// Ends the bar.
    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}
