//! The reactor's inbound channel and its typed senders.
//!
//! Every accumulator emits through a [`BoundarySender<T>`] straight into its reactor's bounded
//! inbound queue: no intermediate task, no serialization. A full queue makes
//! [`BoundarySender::send`] wait (backpressure); [`BoundarySender::try_send`] hands the value
//! back instead. Nothing is ever dropped by the channel.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use cloacina_graph_core::{BoundaryValue, SourceName};
use tokio::sync::mpsc;

/// One value on its way to a reactor; the reactor stamps its sequence number and receive time.
pub struct Inbound {
    /// Index of the source in the reactor's graph.
    pub source: u32,
    /// The value.
    pub value: BoundaryValue,
    /// Rust type name of the value.
    pub type_name: &'static str,
}

impl fmt::Debug for Inbound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inbound")
            .field("source", &self.source)
            .field("type", &self.type_name)
            .finish()
    }
}

/// Creates a reactor's inbound channel with room for `capacity` boundaries.
pub fn inbound_channel(capacity: usize) -> (InboundSender, mpsc::Receiver<Inbound>) {
    let (tx, rx) = mpsc::channel(crate::clamp_capacity(capacity));
    (InboundSender { tx }, rx)
}

/// Untyped sending half of a reactor's inbound channel; [`InboundSender::typed`] makes a
/// [`BoundarySender`] for one source.
#[derive(Clone, Debug)]
pub struct InboundSender {
    tx: mpsc::Sender<Inbound>,
}

impl InboundSender {
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
            _t: PhantomData,
        }
    }
}

/// The reactor has stopped: the value is handed back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("reactor closed: boundary for source `{source_name}` not accepted")]
pub struct SendError<T> {
    /// The source.
    pub source_name: SourceName,
    /// The value that was not sent.
    pub value: T,
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
    _t: PhantomData<fn(T)>,
}

impl<T> Clone for BoundarySender<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            index: self.index,
            source: self.source.clone(),
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

    fn inbound(&self, value: T) -> Inbound {
        Inbound {
            source: self.index,
            value: Arc::new(value),
            type_name: std::any::type_name::<T>(),
        }
    }

    /// Sends a value, waiting while the reactor's queue is full.
    pub async fn send(&self, value: T) -> Result<(), SendError<T>> {
        match self.tx.reserve().await {
            Ok(permit) => {
                permit.send(self.inbound(value));
                Ok(())
            }
            Err(_) => Err(SendError {
                source_name: self.source.clone(),
                value,
            }),
        }
    }

    /// Sends a value if the queue has room now; otherwise hands it back.
    pub fn try_send(&self, value: T) -> Result<(), TrySendError<T>> {
        match self.tx.try_reserve() {
            Ok(permit) => {
                permit.send(self.inbound(value));
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

#[cfg(test)]
mod tests {
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
        let first = rx.recv().await.expect("first");
        assert_eq!(first.value.downcast_ref::<u32>(), Some(&1));
        waiter.await.expect("join").expect("sent");
        let second = rx.recv().await.expect("second");
        assert_eq!(second.value.downcast_ref::<u32>(), Some(&3));
        drop(rx);
        let err = s.send(9).await.expect_err("closed");
        assert_eq!(err.value, 9);
        assert_eq!(err.source_name.as_str(), "a");
        assert_eq!(s.try_send(4), Err(TrySendError::Closed(4)));
    }
}
