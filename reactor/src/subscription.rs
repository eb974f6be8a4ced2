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
}

/// Outcome of offering a firing to one subscriber.
pub(crate) enum Delivery {
    Delivered,
    Missed,
    Gone,
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
            },
            Subscription {
                rx,
                shared,
                finished: false,
            },
        )
    }

    pub(crate) async fn offer(&self, firing: &Arc<Firing>) -> Delivery {
        match self.tx.try_send(Arc::clone(firing)) {
            Ok(()) => Delivery::Delivered,
            Err(mpsc::error::TrySendError::Closed(_)) => Delivery::Gone,
            Err(mpsc::error::TrySendError::Full(f)) => match self.overflow {
                Overflow::DropNewest => {
                    self.shared.missed.fetch_add(1, Ordering::Relaxed);
                    Delivery::Missed
                }
                Overflow::Block { max_wait } => {
                    match tokio::time::timeout(max_wait, self.tx.send(f)).await {
                        Ok(Ok(())) => Delivery::Delivered,
                        Ok(Err(_)) => Delivery::Gone,
                        Err(_) => {
                            self.shared.missed.fetch_add(1, Ordering::Relaxed);
                            self.shared.detached.store(true, Ordering::Release);
                            Delivery::Gone
                        }
                    }
                }
            },
        }
    }

    /// Firings waiting in this subscriber's queue.
    pub(crate) fn depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    pub(crate) fn detached(&self) -> bool {
        self.shared.detached.load(Ordering::Acquire)
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
