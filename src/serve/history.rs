//! The last hour of this process's counters, sampled every [`SAMPLE_EVERY`], for the status
//! page: the rate of the last minute (an average since start hides a stall in a long-running
//! consumer) and loaded/quarantined per second in one-minute bins for its chart.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often the counters are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// The window of the "recent" rate.
const RECENT: Duration = Duration::from_secs(60);
/// The chart's bins: one minute each, the last hour.
pub const BIN: Duration = Duration::from_secs(60);
/// Bins in the chart.
pub const BINS: usize = 60;

/// The counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counts {
    /// Messages received.
    pub received: u64,
    /// Rows committed.
    pub loaded: u64,
    /// Messages quarantined.
    pub quarantined: u64,
}

/// Loaded and quarantined per second over one bin.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    /// Rows committed per second.
    pub loaded: f64,
    /// Messages quarantined per second.
    pub quarantined: f64,
}

/// Samples of the counters over the last hour (720 at most).
#[derive(Default)]
pub struct History {
    samples: Mutex<VecDeque<(Instant, Counts)>>,
}

impl History {
    /// Records `counts` as of now.
    pub fn sample(&self, counts: Counts) {
        self.sample_at(Instant::now(), counts);
    }

    fn sample_at(&self, at: Instant, counts: Counts) {
        let mut samples = self.samples.lock().expect("history lock");
        samples.push_back((at, counts));
        let keep = BIN * BINS as u32 + SAMPLE_EVERY;
        while samples
            .front()
            .is_some_and(|(t, _)| at.duration_since(*t) > keep)
        {
            samples.pop_front();
        }
    }

    /// Messages received per second between the oldest sample at most a minute before `now`
    /// and `received` now; `None` until such a sample is at least one second old.
    pub fn recent_rate(&self, now: Instant, received: u64) -> Option<f64> {
        let samples = self.samples.lock().expect("history lock");
        let (t, c) = samples
            .iter()
            .find(|(t, _)| now.duration_since(*t) <= RECENT)?;
        let secs = now.duration_since(*t).as_secs_f64();
        (secs >= 1.0).then(|| received.saturating_sub(c.received) as f64 / secs)
    }

    /// The last hour in [`BINS`] one-minute bins, oldest first, ending at `now`; a bin no two
    /// samples span (before the process started) is `None`.
    pub fn minutes(&self, now: Instant) -> Vec<Option<Rates>> {
        let samples = self.samples.lock().expect("history lock");
        // Per bin: (loaded, quarantined, seconds covered), from each pair of adjacent samples
        // counted in the bin its later sample falls in.
        let mut sums = vec![(0u64, 0u64, 0f64); BINS];
        for ((t0, c0), (t1, c1)) in samples.iter().zip(samples.iter().skip(1)) {
            let Some(age) = now.checked_duration_since(*t1) else {
                continue;
            };
            let bin = (age.as_secs_f64() / BIN.as_secs_f64()) as usize;
            if bin >= BINS {
                continue;
            }
            let sum = &mut sums[BINS - 1 - bin];
            sum.0 += c1.loaded.saturating_sub(c0.loaded);
            sum.1 += c1.quarantined.saturating_sub(c0.quarantined);
            sum.2 += t1.duration_since(*t0).as_secs_f64();
        }
        sums.into_iter()
            .map(|(loaded, quarantined, secs)| {
                (secs > 0.0).then(|| Rates {
                    loaded: loaded as f64 / secs,
                    quarantined: quarantined as f64 / secs,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(received: u64, loaded: u64, quarantined: u64) -> Counts {
        Counts {
            received,
            loaded,
            quarantined,
        }
    }

    #[test]
    fn the_recent_rate_covers_the_last_minute_only() {
        let history = History::default();
        let t0 = Instant::now();
        history.sample_at(t0, counts(0, 0, 0));
        assert_eq!(history.recent_rate(t0, 0), None, "no span yet");
        // 1000 messages in the first 30 s, then a stall: the last minute shows the stall.
        history.sample_at(t0 + Duration::from_secs(30), counts(1000, 0, 0));
        history.sample_at(t0 + Duration::from_secs(95), counts(1000, 0, 0));
        let now = t0 + Duration::from_secs(100);
        assert_eq!(history.recent_rate(now, 1000), Some(0.0));
        history.sample_at(now, counts(1000, 0, 0));
        // Oldest sample left is from 95 s: 500 messages over 15 s.
        assert_eq!(
            history.recent_rate(now + Duration::from_secs(10), 1500),
            Some(500.0 / 15.0)
        );
        // Nothing sampled in the minute before: no recent rate rather than a stale one.
        assert_eq!(
            history.recent_rate(now + Duration::from_secs(70), 1500),
            None
        );
    }

    #[test]
    fn minutes_hold_the_rate_of_each_minute_and_nothing_before_the_start() {
        let history = History::default();
        let t0 = Instant::now();
        // Three minutes sampled every 5 s: 10 rows/s, then 0, then 2 quarantined/s.
        let mut c = counts(0, 0, 0);
        history.sample_at(t0, c);
        for i in 1..=36u64 {
            match (i - 1) / 12 {
                0 => c.loaded += 50,
                1 => {}
                _ => c.quarantined += 10,
            }
            history.sample_at(t0 + SAMPLE_EVERY * i as u32, c);
        }
        let now = t0 + Duration::from_secs(180);
        let bins = history.minutes(now);
        assert_eq!(bins.len(), BINS);
        let rates = |r: Option<Rates>| r.map(|r| (r.loaded, r.quarantined));
        assert_eq!(rates(bins[BINS - 3]), Some((10.0, 0.0)));
        assert_eq!(rates(bins[BINS - 2]), Some((0.0, 0.0)));
        assert_eq!(rates(bins[BINS - 1]), Some((0.0, 2.0)));
        assert!(bins[..BINS - 3].iter().all(Option::is_none), "{bins:?}");
        // Two hours later the samples are gone.
        history.sample_at(now + Duration::from_secs(7200), c);
        assert!(
            history
                .minutes(now + Duration::from_secs(7200))
                .iter()
                .all(Option::is_none)
        );
    }
}
