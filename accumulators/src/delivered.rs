//! The delivery contract: how an accumulator learns that the boundaries it sent are done.
//!
//! A reactor keeps one [`Delivered`] watermark per source: the number of that source's
//! boundaries, counted in the order the reactor took them in, that were consumed by a firing
//! which completed and, with a ledger, whose record is durable (`Sync`: its append returned;
//! `Batched`: the writer's next flush, at most 100 ms later, covered it; so a process killed
//! at any point never has the watermark ahead of its store). An accumulator that is the
//! only sender of its source counts its own sends; `delivered() == k` then means its first `k`
//! sends are done, and it may commit whatever external position (a Kafka offset) covers them.
//!
//! What "consumed" means: a firing on the live cache consumes every boundary applied to the
//! cache before it, of every source (Latest: every boundary taken in, the ones it coalesced
//! included; Sequential: every boundary stepped from the queue, its own and any applied
//! before it without a firing of their own). A `fire_with` consumes nothing. A failed firing
//! consumes its inputs like a completed one: both failure policies
//! (`Report`, and `Retry` once its attempts are spent) dead-letter them, i.e. the failure is
//! recorded with the inputs' sequence numbers. Boundaries restored from the ledger at start
//! are not counted: they were sent in an earlier life.
//!
//! The watermark never moves back and is published once per turn of the reactor's loop (not
//! per firing), with no allocation. If the ledger writer gives a batch up, the watermark stops
//! for the rest of the reactor's life (health turns Degraded): what follows was not recorded,
//! so it must not be committed; a restart resumes from the last committed position.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// One source's delivery watermark (see the module docs). Shared between the reactor, which
/// advances it, and the source's senders, which read it.
#[derive(Debug, Default)]
pub struct Delivered {
    done: AtomicU64,
    changed: Notify,
    /// Tasks inside `wait_past`: without any, advancing skips the notify (and its lock).
    waiters: AtomicUsize,
    /// Threads inside `wait_past_blocking`, parked on `parked`; without any, advancing
    /// skips the lock.
    blocked: AtomicUsize,
    parking: Mutex<()>,
    parked: Condvar,
}

impl Delivered {
    /// A watermark at 0.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Boundaries of this source that are done (consumed by a completed firing and, with a
    /// ledger, recorded), counted in the order the reactor took them in.
    pub fn get(&self) -> u64 {
        self.done.load(Ordering::Acquire)
    }

    /// Waits until the watermark is past `seen` and returns it. Completes at once if it
    /// already is; never, if the reactor stops advancing it (pair it with a timeout or a
    /// shutdown signal).
    pub async fn wait_past(&self, seen: u64) -> u64 {
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.waiters);
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = self.done.load(Ordering::SeqCst);
            if now > seen {
                return now;
            }
            notified.await;
        }
    }

    /// [`Delivered::wait_past`] for a thread outside any async runtime (a consumer's own OS
    /// thread): parks it until the watermark is past `seen` or `timeout` passes. Returns the
    /// watermark if it got past `seen`, `None` on timeout.
    pub fn wait_past_blocking(&self, seen: u64, timeout: Duration) -> Option<u64> {
        let deadline = Instant::now() + timeout;
        let mut guard = self.parking.lock().unwrap_or_else(|p| p.into_inner());
        self.blocked.fetch_add(1, Ordering::SeqCst);
        let result = loop {
            // Under the lock, after counting this thread: an `advance` that this load
            // misses sees the count and notifies once this thread waits.
            let now = self.done.load(Ordering::SeqCst);
            if now > seen {
                break Some(now);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break None;
            }
            guard = match self.parked.wait_timeout(guard, left) {
                Ok((guard, _)) => guard,
                Err(p) => p.into_inner().0,
            };
        };
        self.blocked.fetch_sub(1, Ordering::SeqCst);
        result
    }

    /// Moves the watermark up to `to` (never down) and wakes waiters. Called by the reactor.
    pub fn advance(&self, to: u64) {
        // SeqCst on both sides: either the waiter sees the new value, or this sees the waiter.
        if self.done.fetch_max(to, Ordering::SeqCst) < to {
            if self.waiters.load(Ordering::SeqCst) > 0 {
                self.changed.notify_waiters();
            }
            if self.blocked.load(Ordering::SeqCst) > 0 {
                // Taking the lock orders this after a parked thread's check.
                drop(self.parking.lock().unwrap_or_else(|p| p.into_inner()));
                self.parked.notify_all();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn advances_only_forward_and_wakes_waiters() {
        let d = Delivered::new();
        assert_eq!(d.get(), 0);
        let waiter = {
            let d = Arc::clone(&d);
            tokio::spawn(async move { d.wait_past(2).await })
        };
        d.advance(2);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "2 is not past 2");
        d.advance(5);
        assert_eq!(waiter.await.expect("join"), 5);
        d.advance(3);
        assert_eq!(d.get(), 5, "never moves back");
        assert_eq!(d.wait_past(4).await, 5, "already past: at once");
    }

    #[test]
    fn a_blocked_thread_is_woken_past_its_mark_or_times_out() {
        let d = Delivered::new();
        assert_eq!(d.wait_past_blocking(0, Duration::from_millis(20)), None);
        d.advance(1);
        assert_eq!(
            d.wait_past_blocking(0, Duration::ZERO),
            Some(1),
            "already past: at once"
        );
        let waiter = {
            let d = Arc::clone(&d);
            std::thread::spawn(move || d.wait_past_blocking(3, Duration::from_secs(30)))
        };
        // Advances below the mark wake nothing it returns on; past it, it returns.
        d.advance(3);
        std::thread::sleep(Duration::from_millis(20));
        assert!(!waiter.is_finished(), "3 is not past 3");
        d.advance(7);
        assert_eq!(waiter.join().expect("join"), Some(7));
    }
}
