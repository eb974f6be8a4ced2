//! Delivery: hands each firing to every subscriber, each through its own bounded queue.
//!
//! While a Sequential backlog is being worked through, firings are handed over in small runs
//! rather than one at a time: a subscriber that keeps up would otherwise be woken (a futex
//! wake and a context switch, several microseconds on both sides) for every firing of a
//! microsecond-long graph. A run ends, and is handed over, when no further firing is
//! certain to follow at once, after [`RUN_MAX`] firings, or once its first firing completed
//! [`RUN_SPAN`] before the latest; the loop hands over what is left before it waits or
//! serves a command. A firing that ends a backlog (the low-rate case) goes out at once.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::firing::Firing;
use crate::metrics::ReactorMetrics;
use crate::stats::ReactorStats;
use crate::subscription::{Delivery, Subscriber};

/// Firings handed over together at most.
pub(crate) const RUN_MAX: usize = 256;

/// The longest a firing waits for later ones of its run (judged by the firings' own
/// completion times: no clock read).
pub(crate) const RUN_SPAN: Duration = Duration::from_micros(200);

/// A reactor's subscribers.
#[derive(Default)]
pub(crate) struct Subscribers {
    list: Vec<Subscriber>,
    /// Firings of the current run, not yet handed over (in order).
    run: Vec<Arc<Firing>>,
}

impl Subscribers {
    /// Adds a subscriber. The loop hands every run over before it takes commands or
    /// subscriptions in, so a new subscriber never receives a firing from before it came.
    pub(crate) fn add(&mut self, subscriber: Subscriber) {
        debug_assert!(
            self.run.is_empty(),
            "a run is handed over before a subscription"
        );
        self.list.push(subscriber);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Ends every subscription (their streams end once drained). Call [`Subscribers::flush`]
    /// first: a run not handed over is dropped with them.
    pub(crate) fn clear(&mut self) {
        self.run.clear();
        self.list.clear();
    }

    /// Queues `firing` in the current run; hands the run over unless `more` (another
    /// firing follows at once) and the run is still short in count and time.
    pub(crate) async fn deliver(
        &mut self,
        reactor: &str,
        firing: &Arc<Firing>,
        more: bool,
        stats: &ReactorStats,
        metrics: &ReactorMetrics,
    ) {
        if self.list.is_empty() {
            return;
        }
        let span = self.run.first().map_or(Duration::ZERO, |first| {
            firing.completed.saturating_duration_since(first.completed)
        });
        self.run.push(Arc::clone(firing));
        if !more || self.run.len() >= RUN_MAX || span >= RUN_SPAN {
            self.flush(reactor, stats, metrics).await;
        }
    }

    /// Hands the current run over: offers each firing, in order, to every subscriber as its
    /// overflow policy says; drops the ones that are gone or were detached for being too
    /// slow, counting what they missed.
    pub(crate) async fn flush(
        &mut self,
        reactor: &str,
        stats: &ReactorStats,
        metrics: &ReactorMetrics,
    ) {
        if self.run.is_empty() {
            return;
        }
        let mut run = std::mem::take(&mut self.run);
        for firing in run.drain(..) {
            self.offer(reactor, &firing, stats, metrics).await;
        }
        // The buffer is kept: steady state allocates nothing here.
        self.run = run;
    }

    async fn offer(
        &mut self,
        reactor: &str,
        firing: &Arc<Firing>,
        stats: &ReactorStats,
        metrics: &ReactorMetrics,
    ) {
        let mut i = 0;
        let mut deepest = 0;
        while i < self.list.len() {
            let keep = match self.list[i].offer(firing).await {
                Delivery::Delivered => true,
                Delivery::Missed => {
                    stats.subscriber_missed.fetch_add(1, Ordering::Relaxed);
                    metrics.subscriber_missed();
                    true
                }
                Delivery::Gone => {
                    if self.list[i].detached() {
                        stats.subscriber_missed.fetch_add(1, Ordering::Relaxed);
                        stats.subscribers_detached.fetch_add(1, Ordering::Relaxed);
                        metrics.subscriber_missed();
                        metrics.subscriber_detached();
                        tracing::warn!(reactor, firing = firing.id, "slow subscriber detached");
                    }
                    false
                }
            };
            if keep {
                deepest = deepest.max(self.list[i].depth());
                i += 1;
            } else {
                self.list.swap_remove(i);
            }
        }
        metrics.subscribers(self.list.len(), deepest);
    }
}
