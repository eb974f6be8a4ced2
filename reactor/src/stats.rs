//! Counters a reactor publishes for operators.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const BUCKETS: usize = 64;

/// A lock-free histogram of durations in power-of-two buckets of nanoseconds: bucket `i`
/// counts durations in `[2^(i-1), 2^i)` ns (bucket 0: zero). Recording is one relaxed atomic
/// add; quantiles are upper bounds, within a factor of two.
#[derive(Debug)]
pub struct DurationHistogram {
    buckets: [AtomicU64; BUCKETS],
}

impl Default for DurationHistogram {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl DurationHistogram {
    /// Counts one duration.
    pub fn record(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let bucket = (u64::BITS - ns.leading_zeros()) as usize;
        self.buckets[bucket.min(BUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
    }

    /// Reads every bucket.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            counts: std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
        }
    }
}

/// A reading of a [`DurationHistogram`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Count per bucket (see [`DurationHistogram`]).
    pub counts: [u64; BUCKETS],
}

impl Default for HistogramSnapshot {
    fn default() -> Self {
        Self {
            counts: [0; BUCKETS],
        }
    }
}

impl HistogramSnapshot {
    /// Durations counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Upper bound of the bucket holding quantile `q` (0.0..=1.0); `None` if empty.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Duration::from_nanos(if i == 0 {
                    0
                } else {
                    1u64 << i.min(63)
                }));
            }
        }
        None
    }
}

/// Live counters of one reactor (written by the reactor task only).
#[derive(Debug, Default)]
pub struct ReactorStats {
    pub(crate) boundaries: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) fires: AtomicU64,
    pub(crate) manual_fires: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) subscriber_missed: AtomicU64,
    pub(crate) subscribers_detached: AtomicU64,
    pub(crate) ledger_errors: AtomicU64,
    pub(crate) ledger_lost: AtomicU64,
    pub(crate) snapshots: AtomicU64,
    pub(crate) recovered_boundaries: AtomicU64,
    pub(crate) retained_removed: AtomicU64,
    pub(crate) firing_duration: DurationHistogram,
}

/// A reading of [`ReactorStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsSnapshot {
    /// Boundaries received.
    pub boundaries: u64,
    /// Boundaries refused (addressed to a source index the graph does not have).
    pub rejected: u64,
    /// Firings, manual ones included.
    pub fires: u64,
    /// Manual firings.
    pub manual_fires: u64,
    /// Firings that ended in `GraphResult::Error` (after any retries).
    pub errors: u64,
    /// Graph re-runs under a retry policy.
    pub retries: u64,
    /// Firings not delivered to some subscriber (counted per subscriber).
    pub subscriber_missed: u64,
    /// Subscribers cut off for being too slow.
    pub subscribers_detached: u64,
    /// Ledger append attempts that failed (each is retried).
    pub ledger_errors: u64,
    /// Ledger records (boundaries, firings, snapshots) that never reached the ledger (every
    /// append attempt failed, the writer had stopped, or a value could not be encoded); the
    /// reactor is `Degraded` while appends fail.
    pub ledger_lost: u64,
    /// State snapshots recorded.
    pub snapshots: u64,
    /// Boundaries restored into the cache or queue from the ledger at start.
    pub recovered_boundaries: u64,
    /// Ledger records removed by the reactor's retention policy.
    pub retained_removed: u64,
    /// How long graphs ran, per firing.
    pub firing_duration: HistogramSnapshot,
}

impl ReactorStats {
    /// Reads every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            boundaries: r(&self.boundaries),
            rejected: r(&self.rejected),
            fires: r(&self.fires),
            manual_fires: r(&self.manual_fires),
            errors: r(&self.errors),
            retries: r(&self.retries),
            subscriber_missed: r(&self.subscriber_missed),
            subscribers_detached: r(&self.subscribers_detached),
            ledger_errors: r(&self.ledger_errors),
            ledger_lost: r(&self.ledger_lost),
            snapshots: r(&self.snapshots),
            recovered_boundaries: r(&self.recovered_boundaries),
            retained_removed: r(&self.retained_removed),
            firing_duration: self.firing_duration.snapshot(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_are_bucket_upper_bounds() {
        let h = DurationHistogram::default();
        assert_eq!(h.snapshot().quantile(0.5), None);
        for _ in 0..90 {
            h.record(Duration::from_nanos(1_000)); // bucket [512, 1024)
        }
        for _ in 0..10 {
            h.record(Duration::from_millis(1));
        }
        let s = h.snapshot();
        assert_eq!(s.count(), 100);
        assert_eq!(s.quantile(0.5), Some(Duration::from_nanos(1024)));
        assert_eq!(s.quantile(0.9), Some(Duration::from_nanos(1024)));
        let p99 = s.quantile(0.99).expect("non-empty");
        assert!(
            p99 >= Duration::from_millis(1) && p99 < Duration::from_millis(2),
            "{p99:?}"
        );
        h.record(Duration::ZERO);
        assert_eq!(h.snapshot().quantile(0.0), Some(Duration::ZERO));
    }
}
