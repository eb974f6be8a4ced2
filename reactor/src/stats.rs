//! Counters a reactor publishes for operators.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters of one reactor (written by the reactor task only).
#[derive(Debug, Default)]
pub struct ReactorStats {
    pub(crate) boundaries: AtomicU64,
    pub(crate) fires: AtomicU64,
    pub(crate) manual_fires: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) subscriber_missed: AtomicU64,
    pub(crate) subscribers_detached: AtomicU64,
    pub(crate) ledger_errors: AtomicU64,
    pub(crate) ledger_lost: AtomicU64,
}

/// A reading of [`ReactorStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsSnapshot {
    /// Boundaries received.
    pub boundaries: u64,
    /// Firings, manual ones included.
    pub fires: u64,
    /// Manual firings.
    pub manual_fires: u64,
    /// Firings that ended in `GraphResult::Error`.
    pub errors: u64,
    /// Firings not delivered to some subscriber (counted per subscriber).
    pub subscriber_missed: u64,
    /// Subscribers cut off for being too slow.
    pub subscribers_detached: u64,
    /// Ledger append attempts that failed (each is retried).
    pub ledger_errors: u64,
    /// Firing records that never reached the ledger (every attempt failed); the reactor is
    /// `Degraded` while appends fail.
    pub ledger_lost: u64,
}

impl ReactorStats {
    /// Reads every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            boundaries: r(&self.boundaries),
            fires: r(&self.fires),
            manual_fires: r(&self.manual_fires),
            errors: r(&self.errors),
            subscriber_missed: r(&self.subscriber_missed),
            subscribers_detached: r(&self.subscribers_detached),
            ledger_errors: r(&self.ledger_errors),
            ledger_lost: r(&self.ledger_lost),
        }
    }
}
