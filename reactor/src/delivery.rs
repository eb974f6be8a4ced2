//! Delivery: hands each firing to every subscriber, each through its own bounded queue.
//!
//! Putting a firing in a queue wakes its subscriber if it waits, and a subscriber that keeps
//! up waits for every firing: per firing, a wake-up (a futex call when the subscriber's
//! thread is parked) costs more than a fast graph's whole firing. So firings are held and
//! put in the queues in runs: at the end of each turn of the reactor's loop (a turn fires
//! what one batch of boundaries owes), after [`HOLD_MAX`] firings (or half the smallest
//! subscriber queue), or once the run spans [`HOLD_FOR`] (judged as each firing completes);
//! and before anything that may wait: a firing whose graph is pending on its first poll
//! (sent while the graph runs), a retry's pause, a ledger hand-over, a command's reply. A
//! firing somebody asked for (forced or supplied) goes at once.
//!
//! Each send first gives every subscriber what fits without waiting, then waits for room
//! (`Overflow::Block`) subscriber by subscriber, so one slow subscriber does not hold back
//! the others' runs. A firing leaves a subscriber's held list only once it is in its queue
//! (cancel-safe: what a cancelled reactor still held goes in at drop, or is counted missed).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::firing::Firing;
use crate::metrics::ReactorMetrics;
use crate::stats::ReactorStats;
use crate::subscription::{Sent, Subscriber};

/// Firings held per subscriber at most before they are put in its queue.
pub(crate) const HOLD_MAX: usize = 64;

/// The longest the first held firing waits for later ones (judged when a firing completes,
/// from the firings' own completion times: no clock read).
pub(crate) const HOLD_FOR: Duration = Duration::from_micros(50);

/// A reactor's subscribers.
pub(crate) struct Subscribers {
    list: Vec<Subscriber>,
    /// Firings held (for every subscriber there was when each was fired).
    held: usize,
    /// When the first of them completed.
    held_since: Option<Instant>,
    /// Firings held at most: [`HOLD_MAX`], or less for a subscriber with a small queue.
    limit: usize,
}

impl Default for Subscribers {
    fn default() -> Self {
        Self {
            list: Vec::new(),
            held: 0,
            held_since: None,
            limit: HOLD_MAX,
        }
    }
}

impl Subscribers {
    /// Registers a subscriber: it gets the firings from the next one on.
    pub(crate) fn add(&mut self, subscriber: Subscriber) {
        self.limit = self.limit.min(subscriber.hold_limit());
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
            || self.held >= self.limit
            || firing.completed.saturating_duration_since(since) >= HOLD_FOR
        {
            self.send(reactor, stats, metrics).await;
        }
    }

    /// Puts the held firings in every subscriber's queue as its overflow policy says; drops
    /// the subscribers that are gone or were detached for being too slow, counting what they
    /// missed. First every subscriber gets what fits without waiting; only then does the
    /// reactor wait for room (`Block`), so a slow subscriber does not hold back the others'
    /// runs.
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
        for blocking in [false, true] {
            let mut i = 0;
            while i < self.list.len() {
                let subscriber = &mut self.list[i];
                let sent = if !subscriber.has_held() {
                    Sent::default()
                } else if blocking {
                    subscriber.send_held().await
                } else {
                    subscriber.send_ready()
                };
                if sent.missed > 0 {
                    stats
                        .subscriber_missed
                        .fetch_add(sent.missed, Ordering::Relaxed);
                    metrics.subscriber_missed(sent.missed);
                }
                if !sent.gone {
                    i += 1;
                    continue;
                }
                if subscriber.detached() {
                    stats.subscribers_detached.fetch_add(1, Ordering::Relaxed);
                    metrics.subscriber_detached();
                    tracing::warn!(reactor, missed = sent.missed, "slow subscriber detached");
                }
                self.list.swap_remove(i);
            }
        }
        self.limit = self
            .list
            .iter()
            .map(Subscriber::hold_limit)
            .fold(HOLD_MAX, usize::min);
        let deepest = self.list.iter().map(Subscriber::depth).max().unwrap_or(0);
        metrics.subscribers(self.list.len(), deepest);
    }
}
