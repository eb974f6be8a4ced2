//! Delivery: hands each firing to every subscriber, each through its own bounded queue.
//!
//! Putting a firing in a queue wakes its subscriber if it waits, and a subscriber that keeps
//! up waits for every firing: per firing, a wake-up (a futex call when the subscriber's
//! thread is parked) costs more than a fast graph's whole firing. So firings are held and
//! put in the queues in runs: at the end of each turn of the reactor's loop (a turn fires
//! what one batch of boundaries owes), after [`HOLD_MAX`] firings, or once the first held
//! firing has waited [`HOLD_FOR`]; a firing somebody asked for (forced or supplied) goes at
//! once, and whatever is held goes before a firing whose graph waits (an async node that is
//! not ready at once) or before a retry's pause. A subscriber thus sees a firing at most one
//! run of a graph that computes without waiting, plus `HOLD_FOR`, later than it would one by
//! one, and is woken once per run of firings.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::firing::Firing;
use crate::metrics::ReactorMetrics;
use crate::stats::ReactorStats;
use crate::subscription::Subscriber;

/// Firings held per subscriber at most before they are put in its queue.
pub(crate) const HOLD_MAX: usize = 64;

/// The longest the first held firing waits for later ones (judged when a firing completes,
/// from the firings' own completion times: no clock read).
pub(crate) const HOLD_FOR: Duration = Duration::from_micros(50);

/// A reactor's subscribers.
#[derive(Default)]
pub(crate) struct Subscribers {
    list: Vec<Subscriber>,
    /// Firings held (for every subscriber there was when each was fired).
    held: usize,
    /// When the first of them completed.
    held_since: Option<Instant>,
}

impl Subscribers {
    /// Registers a subscriber: it gets the firings from the next one on.
    pub(crate) fn add(&mut self, subscriber: Subscriber) {
        self.list.push(subscriber);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Ends every subscription (their streams end once drained). Call [`Subscribers::send`]
    /// first: held firings are put in without waiting, and missed if there is no room.
    pub(crate) fn clear(&mut self) {
        self.list.clear();
        self.held = 0;
        self.held_since = None;
    }

    /// Takes `firing` for every subscriber: held, or sent with what is held at once if
    /// `now` (somebody is waiting for it) or the run is long enough (see the module docs).
    pub(crate) async fn deliver(
        &mut self,
        reactor: &str,
        firing: &Arc<Firing>,
        now: bool,
        stats: &ReactorStats,
        metrics: &ReactorMetrics,
    ) {
        if self.list.is_empty() {
            return;
        }
        for subscriber in &mut self.list {
            subscriber.hold(firing);
        }
        self.held += 1;
        let since = *self.held_since.get_or_insert(firing.completed);
        if now
            || self.held >= HOLD_MAX
            || firing.completed.saturating_duration_since(since) >= HOLD_FOR
        {
            self.send(reactor, stats, metrics).await;
        }
    }

    /// Puts the held firings in every subscriber's queue as its overflow policy says; drops
    /// the subscribers that are gone or were detached for being too slow, counting what they
    /// missed.
    pub(crate) async fn send(
        &mut self,
        reactor: &str,
        stats: &ReactorStats,
        metrics: &ReactorMetrics,
    ) {
        if self.held == 0 {
            return;
        }
        self.held = 0;
        self.held_since = None;
        let mut i = 0;
        let mut deepest = 0;
        while i < self.list.len() {
            let sent = self.list[i].send_held().await;
            if sent.missed > 0 {
                stats
                    .subscriber_missed
                    .fetch_add(sent.missed, Ordering::Relaxed);
                metrics.subscriber_missed(sent.missed);
            }
            if !sent.gone {
                deepest = deepest.max(self.list[i].depth());
                i += 1;
                continue;
            }
            if self.list[i].detached() {
                stats.subscribers_detached.fetch_add(1, Ordering::Relaxed);
                metrics.subscriber_detached();
                tracing::warn!(reactor, missed = sent.missed, "slow subscriber detached");
            }
            self.list.swap_remove(i);
        }
        metrics.subscribers(self.list.len(), deepest);
    }
}
