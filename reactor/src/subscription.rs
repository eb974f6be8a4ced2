//! Result subscribers: one bounded queue each.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::mpsc;

use crate::config::{Overflow, SubscribeOptions};
use crate::firing::Firing;

/// Firings a subscriber did not receive because it fell behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("subscriber fell behind: {missed} firing(s) not delivered{}", if *.detached { "; detached" } else { "" })]
pub struct Lagged {
    /// Firings not delivered since the last report.
    pub missed: u64,
    /// Whether the subscriber was cut off (the stream ends after this).
    pub detached: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Shared {
    missed: AtomicU64,
    detached: AtomicBool,
}

pub(crate) struct Subscriber {
    tx: mpsc::Sender<Arc<Firing>>,
    shared: Arc<Shared>,
    overflow: Overflow,
    /// Firings for this subscriber not yet put in its queue (see [`crate::delivery`]).
    held: Vec<Arc<Firing>>,
}

/// Outcome of putting the held firings in one subscriber's queue.
#[derive(Default)]
pub(crate) struct Sent {
    /// Firings not delivered (its queue was full, or it was detached meanwhile).
    pub(crate) missed: u64,
    /// Whether the subscriber is gone (its stream was dropped, or it was detached).
    pub(crate) gone: bool,
}

impl Subscriber {
    pub(crate) fn new(options: SubscribeOptions) -> (Self, Subscription) {
        let (tx, rx) = mpsc::channel(cloacina_accumulators::clamp_capacity(options.capacity));
        let shared = Arc::new(Shared::default());
        (
            Self {
                tx,
                shared: Arc::clone(&shared),
                overflow: options.overflow,
                held: Vec::new(),
            },
            Subscription {
                rx,
                shared,
                finished: false,
            },
        )
    }

    /// Holds `firing` for this subscriber until [`Subscriber::send_held`].
    pub(crate) fn hold(&mut self, firing: &Arc<Firing>) {
        self.held.push(Arc::clone(firing));
    }

    /// Whether firings are held for this subscriber.
    pub(crate) fn has_held(&self) -> bool {
        !self.held.is_empty()
    }

    /// The most firings worth holding for this subscriber: half its queue (a run that
    /// fills the queue at once would make a `DropNewest` subscriber that keeps up drop).
    pub(crate) fn hold_limit(&self) -> usize {
        (self.tx.max_capacity() / 2).max(1)
    }

    /// Puts the held firings in the subscriber's queue, in order, as far as there is room,
    /// without waiting. The first one wakes the subscriber, which then finds the rest
    /// waiting: one wake-up for the lot rather than one per firing. With `DropNewest`,
    /// a firing that finds no room is missed (counted); with `Block` it stays held, and
    /// so do the ones after it (see [`Subscriber::send_held`]).
    pub(crate) fn send_ready(&mut self) -> Sent {
        let mut sent = Sent::default();
        let mut taken = 0;
        for firing in &self.held {
            match self.tx.try_send(Arc::clone(firing)) {
                Ok(()) => taken += 1,
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    sent.gone = true;
                    taken = self.held.len();
                    break;
                }
                Err(mpsc::error::TrySendError::Full(_)) => match self.overflow {
                    Overflow::DropNewest => {
                        self.shared.missed.fetch_add(1, Ordering::Relaxed);
                        sent.missed += 1;
                        taken += 1;
                    }
                    Overflow::Block { .. } => break,
                },
            }
        }
        self.held.drain(..taken);
        sent
    }

    /// Puts every held firing in the subscriber's queue, in order, waiting for room as
    /// its overflow policy says (`Block`: up to `max_wait` per firing, then the subscriber
    /// is detached and what it was still owed is missed). Cancel-safe: a firing leaves
    /// the held list only once it is in the queue, so a cancelled send leaves the rest
    /// for [`Drop`].
    pub(crate) async fn send_held(&mut self) -> Sent {
        let mut sent = self.send_ready();
        if sent.gone || self.held.is_empty() {
            return sent;
        }
        let Overflow::Block { max_wait } = self.overflow else {
            return sent;
        };
        while !self.held.is_empty() {
            let placed = match tokio::time::timeout(max_wait, self.tx.reserve()).await {
                Ok(Ok(permit)) => {
                    permit.send(self.held.remove(0));
                    true
                }
                Ok(Err(_)) => false,
                Err(_) => {
                    self.shared.detached.store(true, Ordering::Release);
                    false
                }
            };
            if !placed {
                sent.gone = true;
                break;
            }
            // Whatever else fits goes without waiting.
            let more = self.send_ready();
            sent.missed += more.missed;
            if more.gone {
                sent.gone = true;
                break;
            }
        }
        if self.detached() {
            // Cut off: the firings it was still owed are missed (and reported as such).
            let rest = self.held.len() as u64;
            self.shared.missed.fetch_add(rest, Ordering::Relaxed);
            sent.missed += rest;
        }
        self.held.clear();
        sent
    }

    /// Firings waiting in this subscriber's queue.
    pub(crate) fn depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    pub(crate) fn detached(&self) -> bool {
        self.shared.detached.load(Ordering::Acquire)
    }
}

impl Drop for Subscriber {
    /// Firings still held (the reactor stopped without sending them: its task was
    /// cancelled) go in without waiting; any that find no room are reported as missed.
    fn drop(&mut self) {
        for firing in self.held.drain(..) {
            if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(firing) {
                self.shared.missed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A stream of a reactor's firings.
///
/// Items are `Ok(firing)`, or `Err(Lagged)` when firings were not delivered (see
/// [`crate::Overflow`]); nothing is skipped silently. The stream ends when the reactor stops,
/// or after a `Lagged { detached: true }`.
#[derive(Debug)]
pub struct Subscription {
    rx: mpsc::Receiver<Arc<Firing>>,
    shared: Arc<Shared>,
    finished: bool,
}

/// Why [`Subscription::try_recv`] returned no firing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TryRecvError {
    /// No firing is waiting now.
    #[error("no firing waiting")]
    Empty,
    /// Firings were not delivered (see [`Lagged`]); later calls go on with the next firing,
    /// unless `detached`, after which the stream has ended.
    #[error(transparent)]
    Lagged(Lagged),
    /// The stream has ended (the reactor stopped, or the subscriber was detached).
    #[error("subscription ended")]
    Closed,
}

impl Subscription {
    /// The next firing if one is waiting, without waiting: for polling loops and threads
    /// that are not async. Reports lag and the end of the stream as [`Subscription::recv`]
    /// does.
    pub fn try_recv(&mut self) -> Result<Arc<Firing>, TryRecvError> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.poll_recv(&mut cx) {
            Poll::Ready(Some(Ok(firing))) => Ok(firing),
            Poll::Ready(Some(Err(lagged))) => Err(TryRecvError::Lagged(lagged)),
            Poll::Ready(None) => Err(TryRecvError::Closed),
            Poll::Pending => Err(TryRecvError::Empty),
        }
    }

    /// The next firing; `None` once the stream has ended.
    pub async fn recv(&mut self) -> Option<Result<Arc<Firing>, Lagged>> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Polls for the next item.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Arc<Firing>, Lagged>>> {
        if self.finished {
            return Poll::Ready(None);
        }
        let missed = self.shared.missed.swap(0, Ordering::AcqRel);
        let detached = self.shared.detached.load(Ordering::Acquire);
        if missed > 0 && !detached {
            return Poll::Ready(Some(Err(Lagged {
                missed,
                detached: false,
            })));
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(firing)) => {
                if missed > 0 {
                    self.shared.missed.fetch_add(missed, Ordering::AcqRel);
                }
                Poll::Ready(Some(Ok(firing)))
            }
            Poll::Ready(None) => {
                self.finished = true;
                // The reactor marks a subscriber detached before dropping its sender, so a
                // fresh read here cannot miss it.
                let detached = self.shared.detached.load(Ordering::Acquire);
                let missed = missed + self.shared.missed.swap(0, Ordering::AcqRel);
                if detached {
                    Poll::Ready(Some(Err(Lagged {
                        missed,
                        detached: true,
                    })))
                } else {
                    Poll::Ready(None)
                }
            }
            Poll::Pending => {
                if missed > 0 {
                    self.shared.missed.fetch_add(missed, Ordering::AcqRel);
                }
                Poll::Pending
            }
        }
    }
}

impl futures_core::Stream for Subscription {
    type Item = Result<Arc<Firing>, Lagged>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_recv(cx)
    }
}
