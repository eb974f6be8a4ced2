//! # cloacina-accumulators
//!
//! Accumulators turn events into typed boundaries for one named source and push them into a
//! reactor's bounded inbound queue.
//!
//! Flow: events -> **accumulator** -> boundary -> cache -> firing -> result.
//!
//! - [`Accumulator`] is the one trait: a long-running task given an [`AccumulatorContext`]
//!   (typed sender, shutdown signal, the reactor's after-fire signal, health reporter and
//!   counters). A stream source (Kafka) fits it unchanged: connect, loop on records, emit,
//!   report health, stop on shutdown.
//! - [`Delivered`]: a source's delivery watermark, advanced by the reactor as the boundaries
//!   it took in are consumed by completed (and, with a ledger, recorded) firings; an
//!   accumulator commits external positions (offsets) only up to it.
//! - [`Passthrough`]: no task of its own; the typed, cloneable [`BoundarySender`] sends
//!   straight into the reactor's queue. A full queue makes `send().await` wait and
//!   `try_send` hand the value back: nothing is dropped.
//! - [`Polling`]: calls an async function every interval; `None` emits nothing.
//! - [`Batch`]: buffers events and emits them as one `Vec<T>` boundary on size, on interval,
//!   on the reactor's after-fire signal and on shutdown (nothing buffered is lost).
//!
//! ```
//! use std::time::Duration;
//! use cloacina_accumulators::{inbound_channel, Accumulator, AccumulatorContext, HealthBoard, Polling};
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let (inbound, mut rx) = inbound_channel(16);
//! let (stop, stop_rx) = tokio::sync::watch::channel(false);
//! let ctx = AccumulatorContext::new(
//!     inbound.typed::<u64>(0, "ticks".into()), stop_rx, None, HealthBoard::new().register("ticks".into()));
//! let mut n = 0;
//! let poll = Polling::new(Duration::from_millis(5), move || { n += 1; async move { Some(n) } });
//! let task = tokio::spawn(poll.run(ctx));
//! let first = rx.recv().await.unwrap();
//! assert_eq!(first.value().and_then(|v| v.downcast_ref::<u64>()), Some(&1));
//! stop.send(true).unwrap();
//! task.await.unwrap().unwrap();
//! # });
//! ```

/// Largest queue any channel of the engine is given; larger requests are clamped (tokio's
/// semaphores cap permits, and a queue this deep is already 16M values in memory).
pub const MAX_CAPACITY: usize = 1 << 24;

/// Clamps a requested queue size to `1..=MAX_CAPACITY`.
pub fn clamp_capacity(capacity: usize) -> usize {
    capacity.clamp(1, MAX_CAPACITY)
}

mod batch;
mod context;
mod delivered;
mod health;
mod inbound;
mod polling;
mod position;
pub mod supervise;

pub use batch::{Batch, BatchConfig, BatchSender};
pub use context::{
    Accumulator, AccumulatorContext, AccumulatorError, AccumulatorMetrics, Passthrough,
    PositionReader,
};
pub use delivered::Delivered;
pub use health::{AccumulatorHealth, HealthBoard, HealthReporter};
pub use inbound::{
    inbound_channel, BoundarySender, Inbound, InboundSender, SendError, TrySendError,
};
pub use polling::Polling;
pub use position::{checkpoint_owner, lane_id, position_key, SourcePosition};
pub use supervise::{supervise, AccumulatorFactory, Once, RestartPolicy};
