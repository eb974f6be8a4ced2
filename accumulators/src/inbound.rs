//! The reactor's inbound channel and its typed senders.
//!
//! Every accumulator emits through a [`BoundarySender<T>`] straight into its reactor's bounded
//! inbound queue: no intermediate task, no serialization. A full queue makes
//! [`BoundarySender::send`] wait (backpressure); [`BoundarySender::send_blocking`] blocks a
//! plain OS thread the same way; [`BoundarySender::try_send`] hands the value back instead.
//! Nothing is ever dropped by the channel.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use cloacina_graph_core::{BoundaryValue, SourceName};
use cloacina_ledger::{AckSender, CheckpointRecord, LedgerError};
use tokio::sync::mpsc;

use crate::delivered::Delivered;
use crate::position::SourcePosition;

/// What travels on a reactor's inbound channel, in order.
pub enum Inbound {
    /// One value on its way to a reactor; the reactor stamps its sequence number and receive
    /// time.
    Boundary {
        /// Index of the source in the reactor's graph.
        source: u32,
        /// The value.
        value: BoundaryValue,
        /// Rust type name of the value.
        type_name: &'static str,
        /// Told once the boundary is durably recorded (senders of `Sync` reactors wait on it).
        ack: Option<AckSender>,
        /// Where in an external stream it came from, recorded with it (see
        /// [`SourcePosition`]).
        position: Option<SourcePosition>,
    },
    /// An accumulator checkpoint: recorded after every boundary sent before it, so a stored
    /// checkpoint is never ahead of the boundaries it covers.
    Checkpoint {
        /// The checkpoint.
        record: CheckpointRecord,
        /// Told once it is appended (with the reactor's commit level).
        ack: AckSender,
    },
}

impl Inbound {
    /// A boundary's value (`None` for a checkpoint).
    pub fn value(&self) -> Option<&BoundaryValue> {
        match self {
            Inbound::Boundary { value, .. } => Some(value),
            Inbound::Checkpoint { .. } => None,
        }
    }

    /// A boundary's source index (`None` for a checkpoint).
    pub fn source_index(&self) -> Option<u32> {
        match self {
            Inbound::Boundary { source, .. } => Some(*source),
            Inbound::Checkpoint { .. } => None,
        }
    }

    /// A boundary's Rust type name (`None` for a checkpoint).
    pub fn type_name(&self) -> Option<&'static str> {
        match self {
            Inbound::Boundary { type_name, .. } => Some(type_name),
            Inbound::Checkpoint { .. } => None,
        }
    }
}

impl fmt::Debug for Inbound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Inbound::Boundary {
                source, type_name, ..
            } => f
                .debug_struct("Boundary")
                .field("source", source)
                .field("type", type_name)
                .finish(),
            Inbound::Checkpoint { record, .. } => f
                .debug_struct("Checkpoint")
                .field("owner", &record.owner)
                .field("key", &record.key)
                .finish(),
        }
    }
}

/// Creates a reactor's inbound channel with room for `capacity` boundaries.
pub fn inbound_channel(capacity: usize) -> (InboundSender, mpsc::Receiver<Inbound>) {
    let (tx, rx) = mpsc::channel(crate::clamp_capacity(capacity));
    (
        InboundSender {
            tx,
            durable: false,
            delivered: Arc::from(Vec::new()),
        },
        rx,
    )
}

/// Untyped sending half of a reactor's inbound channel; [`InboundSender::typed`] makes a
/// [`BoundarySender`] for one source.
#[derive(Clone, Debug)]
pub struct InboundSender {
    tx: mpsc::Sender<Inbound>,
    durable: bool,
    /// One delivery watermark per source index (set by the reactor).
    delivered: Arc<[Arc<Delivered>]>,
}

impl InboundSender {
    /// Makes every sender made from this one wait, in [`BoundarySender::send`], until the
    /// reactor has recorded the boundary durably (for `Sync` reactors).
    pub fn durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }

    /// Gives senders made from this one the reactor's delivery watermarks, one per source
    /// index (see [`Delivered`]).
    pub fn with_delivery(mut self, delivered: Arc<[Arc<Delivered>]>) -> Self {
        self.delivered = delivered;
        self
    }

    /// A typed sender for the source at `index` named `source`. The caller (the reactor's
    /// builder) checks that `T` is the type the graph reads from that source.
    pub fn typed<T: Send + Sync + 'static>(
        &self,
        index: u32,
        source: SourceName,
    ) -> BoundarySender<T> {
        BoundarySender {
            tx: self.tx.clone(),
            index,
            source,
            durable: self.durable,
            // A sender of a channel no reactor watermarks gets one that never moves.
            delivered: self
                .delivered
                .get(index as usize)
                .map_or_else(Delivered::new, Arc::clone),
            _t: PhantomData,
        }
    }
}

/// A [`BoundarySender::send`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError<T> {
    /// The reactor has stopped: the value was not accepted and is handed back.
    #[error("reactor closed: boundary for source `{source_name}` not accepted")]
    Closed {
        /// The source.
        source_name: SourceName,
        /// The value that was not sent.
        value: T,
    },
    /// A durable (`Sync`) reactor accepted the value but could not record it durably (the
    /// ledger failed, or the reactor stopped first). It may or may not have fired; send it
    /// again to be sure (firings are at least once across failures).
    #[error("boundary for source `{source_name}` not recorded durably: {reason}")]
    NotDurable {
        /// The source.
        source_name: SourceName,
        /// Why.
        reason: String,
    },
    /// [`BoundarySender::send_blocking`] was called on a thread that runs a tokio runtime,
    /// where blocking could stall the reactor it waits for; the value is handed back. Use
    /// `send().await` there.
    #[error("send_blocking for source `{source_name}` called from inside a tokio runtime; use send().await")]
    InsideRuntime {
        /// The source.
        source_name: SourceName,
        /// The value that was not sent.
        value: T,
    },
}

impl<T> SendError<T> {
    /// The value handed back, if it was not accepted.
    pub fn into_value(self) -> Option<T> {
        match self {
            Self::Closed { value, .. } | Self::InsideRuntime { value, .. } => Some(value),
            Self::NotDurable { .. } => None,
        }
    }

    /// The source it was for.
    pub fn source_name(&self) -> &SourceName {
        match self {
            Self::Closed { source_name, .. }
            | Self::NotDurable { source_name, .. }
            | Self::InsideRuntime { source_name, .. } => source_name,
        }
    }
}

/// A [`BoundarySender::try_send`] failed; the value is handed back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrySendError<T> {
    /// The reactor's queue is full (backpressure).
    #[error("reactor queue full")]
    Full(T),
    /// The reactor has stopped.
    #[error("reactor closed")]
    Closed(T),
}

impl<T> TrySendError<T> {
    /// The value that was not sent.
    pub fn into_inner(self) -> T {
        match self {
            TrySendError::Full(v) | TrySendError::Closed(v) => v,
        }
    }
}

/// Typed, cloneable sender of boundaries for one source.
pub struct BoundarySender<T> {
    tx: mpsc::Sender<Inbound>,
    index: u32,
    source: SourceName,
    durable: bool,
    delivered: Arc<Delivered>,
    _t: PhantomData<fn(T)>,
}

impl<T> Clone for BoundarySender<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            index: self.index,
            source: self.source.clone(),
            durable: self.durable,
            delivered: Arc::clone(&self.delivered),
            _t: PhantomData,
        }
    }
}

impl<T> fmt::Debug for BoundarySender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoundarySender")
            .field("source", &self.source)
            .finish()
    }
}

impl<T: Send + Sync + 'static> BoundarySender<T> {
    /// The source this sender feeds.
    pub fn source(&self) -> &SourceName {
        &self.source
    }

    /// The source's delivery watermark: how many of its boundaries are done (see
    /// [`Delivered`]). Shared by every clone of this sender.
    pub fn delivered(&self) -> &Arc<Delivered> {
        &self.delivered
    }

    fn inbound(&self, value: T, ack: Option<AckSender>) -> Inbound {
        self.positioned(value, ack, None)
    }

    fn positioned(
        &self,
        value: T,
        ack: Option<AckSender>,
        position: Option<SourcePosition>,
    ) -> Inbound {
        Inbound::Boundary {
            source: self.index,
            value: Arc::new(value),
            type_name: std::any::type_name::<T>(),
            ack,
            position,
        }
    }

    /// Has the reactor record `record` after every boundary sent before it, and waits until
    /// it is appended (durably, for a `Sync` reactor).
    pub(crate) async fn checkpoint(&self, record: CheckpointRecord) -> Result<(), LedgerError> {
        let permit = self
            .tx
            .reserve()
            .await
            .map_err(|_| LedgerError::Closed { pending: 1 })?;
        let (ack, recorded) = tokio::sync::oneshot::channel();
        permit.send(Inbound::Checkpoint { record, ack });
        recorded
            .await
            .unwrap_or(Err(LedgerError::Closed { pending: 1 }))
    }

    /// Sends a value from a plain OS thread (a Kafka consumer thread, a socket thread, FFI),
    /// blocking the thread while the reactor's queue is full: the same no-drop semantics as
    /// [`BoundarySender::send`], including, for a `Sync` reactor, waiting until the boundary
    /// is durably recorded. When there is room it costs what `try_send` costs (no allocation,
    /// no system call on this side).
    ///
    /// Refuses (handing the value back as [`SendError::InsideRuntime`]) when called on a
    /// thread that runs a tokio runtime, where blocking could stall the reactor itself.
    pub fn send_blocking(&self, value: T) -> Result<(), SendError<T>> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(SendError::InsideRuntime {
                source_name: self.source.clone(),
                value,
            });
        }
        if !self.durable {
            // Fast path: room now.
            match self.tx.try_reserve() {
                Ok(permit) => {
                    permit.send(self.inbound(value, None));
                    return Ok(());
                }
                Err(mpsc::error::TrySendError::Closed(())) => {
                    return Err(SendError::Closed {
                        source_name: self.source.clone(),
                        value,
                    })
                }
                Err(mpsc::error::TrySendError::Full(())) => {
                    // Wait for room for a run of sends, not one (see `refill`).
                    return match block_on(self.tx.reserve_many(self.refill())) {
                        Ok(mut permits) => match permits.next() {
                            Some(permit) => {
                                permit.send(self.inbound(value, None));
                                Ok(())
                            }
                            None => block_on(self.send(value)),
                        },
                        Err(_) => Err(SendError::Closed {
                            source_name: self.source.clone(),
                            value,
                        }),
                    };
                }
            }
        }
        block_on(self.send(value))
    }

    /// Sends a value from a plain OS thread, blocking it at most `timeout` while the
    /// reactor's queue is full; then hands the value back as [`TrySendError::Full`]. For a
    /// consumer thread that must also serve its client between waits: with room it sends at
    /// once; on a full queue it wakes (no polling) as soon as there is room for a run of
    /// sends (an eighth of the queue, at most 128 places), so it may hand the value back
    /// although fewer places than that freed up meanwhile. Like `try_send`, it does not wait for a `Sync` reactor's
    /// durable recording. On a thread that runs a tokio runtime it does not block: it is
    /// `try_send`.
    pub fn send_timeout(
        &self,
        value: T,
        timeout: std::time::Duration,
    ) -> Result<(), TrySendError<T>> {
        self.send_timeout_from(value, None, timeout)
    }

    /// [`BoundarySender::send_timeout`] for a value that came from `position` of an external
    /// stream: the reactor records the position in the same ledger append as the boundary
    /// (see [`SourcePosition`]), so a restart can resume exactly past what the ledger holds.
    pub fn send_timeout_at(
        &self,
        value: T,
        position: SourcePosition,
        timeout: std::time::Duration,
    ) -> Result<(), TrySendError<T>> {
        self.send_timeout_from(value, Some(position), timeout)
    }

    fn send_timeout_from(
        &self,
        value: T,
        position: Option<SourcePosition>,
        timeout: std::time::Duration,
    ) -> Result<(), TrySendError<T>> {
        match self.tx.try_reserve() {
            Ok(permit) => {
                permit.send(self.positioned(value, None, position));
                return Ok(());
            }
            Err(mpsc::error::TrySendError::Closed(())) => return Err(TrySendError::Closed(value)),
            Err(mpsc::error::TrySendError::Full(())) => {}
        }
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(TrySendError::Full(value));
        }
        let deadline = std::time::Instant::now() + timeout;
        match block_on_until(self.tx.reserve_many(self.refill()), deadline) {
            Some(Ok(mut permits)) => match permits.next() {
                Some(permit) => {
                    permit.send(self.positioned(value, None, position));
                    Ok(())
                }
                None => Err(TrySendError::Full(value)),
            },
            Some(Err(_)) => Err(TrySendError::Closed(value)),
            None => Err(TrySendError::Full(value)),
        }
    }

    /// How many free places a blocked thread waits for before it is woken (hysteresis):
    /// woken at the first free place, a producer faster than the reactor would sleep and
    /// wake (a futex call and a context switch on each side) once per boundary. The places
    /// it does not use go straight back to the queue, so its next sends find room.
    fn refill(&self) -> usize {
        (self.tx.max_capacity() / 8).clamp(1, 128)
    }

    /// Sends a value, waiting while the reactor's queue is full. For a reactor with `Sync`
    /// durability it then waits until the boundary is durably recorded (group commit: many
    /// senders share one flush).
    pub async fn send(&self, value: T) -> Result<(), SendError<T>> {
        let permit = match self.tx.reserve().await {
            Ok(permit) => permit,
            Err(_) => {
                return Err(SendError::Closed {
                    source_name: self.source.clone(),
                    value,
                })
            }
        };
        if !self.durable {
            permit.send(self.inbound(value, None));
            return Ok(());
        }
        let (ack, recorded) = tokio::sync::oneshot::channel();
        permit.send(self.inbound(value, Some(ack)));
        let not_durable = |reason: String| SendError::NotDurable {
            source_name: self.source.clone(),
            reason,
        };
        match recorded.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(not_durable(e.to_string())),
            Err(_) => Err(not_durable(
                "the reactor stopped before recording it".into(),
            )),
        }
    }

    /// Sends a value if the queue has room now; otherwise hands it back. Never waits, so on a
    /// `Sync` reactor it returns before the boundary is durable (use [`BoundarySender::send`]
    /// for an acknowledgement).
    pub fn try_send(&self, value: T) -> Result<(), TrySendError<T>> {
        match self.tx.try_reserve() {
            Ok(permit) => {
                permit.send(self.inbound(value, None));
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(())) => Err(TrySendError::Full(value)),
            Err(mpsc::error::TrySendError::Closed(())) => Err(TrySendError::Closed(value)),
        }
    }

    /// Whether the reactor has stopped accepting boundaries.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Free places in the reactor's queue now.
    pub fn capacity(&self) -> usize {
        self.tx.capacity()
    }
}

/// Runs `fut` to completion on this thread, parking it while the future is pending. For
/// senders on plain OS threads; the futures it runs (a queue place, an acknowledgement) need
/// no runtime.
struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

fn block_on<F: Future>(fut: F) -> F::Output {
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(out) => return out,
            // A wake before the park makes the park return at once: no lost wake-up.
            Poll::Pending => std::thread::park(),
        }
    }
}

/// [`block_on`] until `deadline`: `None` if the future was not ready by then (it is dropped,
/// which withdraws its wait).
fn block_on_until<F: Future>(fut: F, deadline: std::time::Instant) -> Option<F::Output> {
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return Some(out);
        }
        let now = std::time::Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::park_timeout(deadline - now);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn full_queue_hands_value_back_and_send_waits() {
        let (tx, mut rx) = inbound_channel(1);
        let s = tx.typed::<u32>(0, "a".into());
        s.try_send(1).expect("room");
        assert_eq!(s.try_send(2), Err(TrySendError::Full(2)));
        let s2 = s.clone();
        let waiter = tokio::spawn(async move { s2.send(3).await });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "send must wait while full");
        let value = |inb: Inbound| match inb {
            Inbound::Boundary { value, .. } => value.downcast_ref::<u32>().copied(),
            Inbound::Checkpoint { .. } => None,
        };
        let first = rx.recv().await.expect("first");
        assert_eq!(value(first), Some(1));
        waiter.await.expect("join").expect("sent");
        let second = rx.recv().await.expect("second");
        assert_eq!(value(second), Some(3));
        drop(rx);
        let err = s.send(9).await.expect_err("closed");
        assert_eq!(err.source_name().as_str(), "a");
        assert_eq!(err.into_value(), Some(9));
        assert_eq!(s.try_send(4), Err(TrySendError::Closed(4)));
    }

    #[test]
    fn send_blocking_waits_for_room_and_drops_nothing() {
        let (tx, mut rx) = inbound_channel(2);
        let s = tx.typed::<u64>(0, "t".into());
        let producer = std::thread::spawn(move || {
            for i in 0..1000u64 {
                s.send_blocking(i).expect("sent");
            }
            s
        });
        let mut got = Vec::new();
        while got.len() < 1000 {
            match rx.blocking_recv() {
                Some(Inbound::Boundary { value, .. }) => {
                    got.push(*value.downcast_ref::<u64>().expect("u64"));
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(got, (0..1000).collect::<Vec<_>>());
        let s = producer.join().expect("producer");
        drop(rx);
        let err = s.send_blocking(7).expect_err("closed");
        assert_eq!(err.into_value(), Some(7));
    }

    #[test]
    fn send_timeout_hands_the_value_back_when_full_and_wakes_on_room() {
        let (tx, mut rx) = inbound_channel(1);
        let s = tx.typed::<u64>(0, "t".into());
        s.send_timeout(1, Duration::from_millis(10)).expect("room");
        let started = std::time::Instant::now();
        assert_eq!(
            s.send_timeout(2, Duration::from_millis(30)),
            Err(TrySendError::Full(2))
        );
        assert!(started.elapsed() >= Duration::from_millis(30), "it waited");
        // Room appears while it waits: it goes through well before the timeout.
        let taker = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            let first = rx.blocking_recv();
            let second = rx.blocking_recv();
            (first.is_some(), second.is_some())
        });
        let started = std::time::Instant::now();
        s.send_timeout(3, Duration::from_secs(10))
            .expect("sent once there was room");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(taker.join().expect("taker"), (true, true));
    }

    /// A blocked thread waits for room for a run of sends (a fraction of the queue), not for
    /// one place: nothing is lost or reordered, and a value refused after the timeout is
    /// handed back whole.
    #[test]
    fn blocked_senders_wait_for_a_run_of_room_and_lose_nothing() {
        let (tx, mut rx) = inbound_channel(64);
        let s = tx.typed::<u64>(0, "t".into());
        let producer = std::thread::spawn(move || {
            let mut refused = 0u64;
            for i in 0..5_000u64 {
                if i % 2 == 0 {
                    s.send_blocking(i).expect("sent");
                    continue;
                }
                let mut value = i;
                loop {
                    match s.send_timeout(value, Duration::from_millis(1)) {
                        Ok(()) => break,
                        Err(TrySendError::Full(back)) => {
                            refused += 1;
                            value = back;
                        }
                        Err(TrySendError::Closed(_)) => panic!("closed"),
                    }
                }
            }
            refused
        });
        let mut got = Vec::new();
        while got.len() < 5_000 {
            // A slow reactor: one boundary at a time.
            match rx.blocking_recv() {
                Some(Inbound::Boundary { value, .. }) => {
                    got.push(*value.downcast_ref::<u64>().expect("u64"));
                }
                other => panic!("unexpected {other:?}"),
            }
            if got.len() % 100 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        assert_eq!(got, (0..5_000).collect::<Vec<_>>());
        producer.join().expect("producer");
    }

    #[tokio::test]
    async fn send_blocking_refuses_inside_a_runtime() {
        let (tx, _rx) = inbound_channel(2);
        let s = tx.typed::<u64>(0, "t".into());
        match s.send_blocking(3) {
            Err(SendError::InsideRuntime { source_name, value }) => {
                assert_eq!(source_name.as_str(), "t");
                assert_eq!(value, 3);
            }
            other => panic!("expected InsideRuntime, got {other:?}"),
        }
    }
}
