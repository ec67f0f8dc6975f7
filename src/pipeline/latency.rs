//! End-to-end latency quantiles (SentTimestamp to commit) for the status page: since start and
//! over the last minute. Prometheus gets the same observations as a histogram
//! (`piivault_end_to_end_seconds`); this keeps its own log-spaced buckets because the page must
//! answer without a Prometheus server, and a histogram cannot be read back per window.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Bucket `i` holds latencies below `GROWTH^(i+1)` ms: 10 % steps, so a quantile is within
/// 10 % of the truth, from 1 ms to about two days.
const GROWTH: f64 = 1.1;
const BUCKETS: usize = 200;
/// The recent window is this many slots of `SLOT` each.
const SLOTS: usize = 12;
const SLOT: Duration = Duration::from_secs(5);

/// Counts per bucket, and the largest value seen (so the top quantile is never above it).
#[derive(Clone)]
struct Buckets {
    counts: Vec<u64>,
    total: u64,
    max_ms: f64,
}

impl Default for Buckets {
    fn default() -> Buckets {
        Buckets {
            counts: vec![0; BUCKETS],
            total: 0,
            max_ms: 0.0,
        }
    }
}

impl Buckets {
    fn add(&mut self, ms: f64) {
        let i = if ms < 1.0 {
            0
        } else {
            ((ms.ln() / GROWTH.ln()) as usize).min(BUCKETS - 1)
        };
        self.counts[i] += 1;
        self.total += 1;
        self.max_ms = self.max_ms.max(ms);
    }

    fn merge(&mut self, other: &Buckets) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max_ms = self.max_ms.max(other.max_ms);
    }

    /// The `q` quantile in seconds (the upper bound of its bucket), `None` when empty.
    fn quantile(&self, q: f64) -> Option<f64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let upper = GROWTH.powi(i as i32 + 1);
                return Some(upper.min(self.max_ms.max(1.0)) / 1000.0);
            }
        }
        Some(self.max_ms / 1000.0)
    }
}

/// p50, p95 and p99 in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quantiles {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
}

impl Buckets {
    fn quantiles(&self) -> Option<Quantiles> {
        Some(Quantiles {
            p50: self.quantile(0.50)?,
            p95: self.quantile(0.95)?,
            p99: self.quantile(0.99)?,
        })
    }
}

struct Inner {
    since_start: Buckets,
    /// Slot `n % SLOTS` holds the observations of the `n`th `SLOT` after `base`.
    recent: Vec<(u64, Buckets)>,
}

/// Latency observations, since start and per 5-second slot over the last minute.
pub struct Latency {
    base: Instant,
    inner: Mutex<Inner>,
}

impl Default for Latency {
    fn default() -> Latency {
        Latency {
            base: Instant::now(),
            inner: Mutex::new(Inner {
                since_start: Buckets::default(),
                recent: vec![(u64::MAX, Buckets::default()); SLOTS],
            }),
        }
    }
}

impl Latency {
    fn slot(&self, at: Instant) -> u64 {
        (at.duration_since(self.base).as_secs_f64() / SLOT.as_secs_f64()) as u64
    }

    /// Records latencies (in milliseconds) observed at `at`; one lock per committed chunk.
    pub fn observe_at(&self, at: Instant, latencies_ms: impl IntoIterator<Item = f64>) {
        let slot = self.slot(at);
        let mut inner = self.inner.lock().expect("latency lock");
        let Inner {
            since_start,
            recent,
        } = &mut *inner;
        let (held, buckets) = &mut recent[(slot % SLOTS as u64) as usize];
        if *held != slot {
            *held = slot;
            *buckets = Buckets::default();
        }
        for ms in latencies_ms {
            since_start.add(ms);
            buckets.add(ms);
        }
    }

    /// Quantiles since start, and over the last minute as of `now` (`None` when nothing landed).
    pub fn quantiles_at(&self, now: Instant) -> (Option<Quantiles>, Option<Quantiles>) {
        let current = self.slot(now);
        let inner = self.inner.lock().expect("latency lock");
        let mut minute = Buckets::default();
        for (slot, buckets) in &inner.recent {
            if *slot != u64::MAX && *slot <= current && current - slot < SLOTS as u64 {
                minute.merge(buckets);
            }
        }
        (inner.since_start.quantiles(), minute.quantiles())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_ten_percent_and_never_above_the_largest_value() {
        let latency = Latency::default();
        let t0 = latency.base;
        // 1..=1000 ms, once each.
        latency.observe_at(t0, (1..=1000).map(f64::from));
        let (all, minute) = latency.quantiles_at(t0);
        let all = all.unwrap();
        for (got, want) in [(all.p50, 0.5), (all.p95, 0.95), (all.p99, 0.99)] {
            assert!(
                got >= want && got <= want * 1.1,
                "{got} s for a true {want} s"
            );
        }
        assert_eq!(minute, Some(all));
        let single = Latency::default();
        single.observe_at(single.base, [42.0]);
        let (one, _) = single.quantiles_at(single.base);
        assert!(one.unwrap().p99 <= 0.042, "{one:?}");
    }

    #[test]
    fn the_last_minute_forgets_older_slots_but_since_start_keeps_them() {
        let latency = Latency::default();
        let t0 = latency.base;
        latency.observe_at(t0, [60_000.0; 100]); // a minute late, at the start
        let later = t0 + Duration::from_secs(90);
        latency.observe_at(later, [100.0; 10]);
        let (all, minute) = latency.quantiles_at(later);
        let (all, minute) = (all.unwrap(), minute.unwrap());
        assert!(minute.p99 <= 0.1, "only the recent 100 ms ones: {minute:?}");
        assert!(all.p50 > 54.0, "since start the old ones dominate: {all:?}");
        // Two minutes of nothing: no recent figure rather than a stale one.
        let (_, minute) = latency.quantiles_at(later + Duration::from_secs(120));
        assert_eq!(minute, None);
    }
}
