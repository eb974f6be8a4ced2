//! Delivery: hands each firing to every subscriber, each through its own bounded queue.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::firing::Firing;
use crate::metrics::ReactorMetrics;
use crate::stats::ReactorStats;
use crate::subscription::{Delivery, Subscriber};

/// A reactor's subscribers.
#[derive(Default)]
pub(crate) struct Subscribers {
    list: Vec<Subscriber>,
}

impl Subscribers {
    pub(crate) fn add(&mut self, subscriber: Subscriber) {
        self.list.push(subscriber);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Ends every subscription (their streams end once drained).
    pub(crate) fn clear(&mut self) {
        self.list.clear();
    }

    /// Offers `firing` to every subscriber as its overflow policy says; drops the ones that
    /// are gone or were detached for being too slow, counting what they missed.
    pub(crate) async fn deliver(
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
