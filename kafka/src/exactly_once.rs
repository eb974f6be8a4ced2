//! [`ExactlyOnce`]: a [`KafkaSource`](crate::KafkaSource) and a [`KafkaSink`](crate::KafkaSink)
//! joined into one consume-transform-produce pipeline whose output records and input offsets
//! commit in one Kafka transaction.
//!
//! The source stops committing offsets itself. The sink counts the firings its subscription
//! delivers (one per boundary: a `Sequential` reactor whose only source is the Kafka source),
//! produces their outputs inside an open transaction and, every `commit_every`, adds the
//! offsets of exactly the records those firings consumed (`send_offsets_to_transaction`, with
//! the consumer's group metadata, so a member fenced by a rebalance cannot commit) and
//! commits. A crash aborts the open transaction: a `read_committed` reader never sees its
//! outputs, and the records behind them are read again from the committed offsets. Any
//! transaction error (or a subscription that lagged) aborts, stops the sink with the error
//! and stops the source: the process must restart the pipeline; nothing committed is lost
//! or repeated.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rdkafka::consumer::ConsumerGroupMetadata;

use crate::offsets::OffsetTracker;

/// The link between one source and one sink of an exactly-once pipeline (clone it into
/// both: [`crate::KafkaSource::exactly_once`], [`crate::KafkaSink::exactly_once`]).
#[derive(Clone, Default)]
pub struct ExactlyOnce {
    inner: Arc<Link>,
}

impl std::fmt::Debug for ExactlyOnce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExactlyOnce")
            .field("sink_attached", &self.sink_attached())
            .field("failed", &self.failed())
            .finish()
    }
}

#[derive(Default)]
struct Link {
    /// The running source's offsets and group metadata.
    source: Mutex<Option<Arc<dyn TransactionalOffsets>>>,
    sink_attached: AtomicBool,
    failed: AtomicBool,
}

/// Offsets that may be committed (topic, partition, next offset), with the consumer's group
/// metadata to commit them under.
pub(crate) type DueOffsets = (Vec<(String, i32, i64)>, Option<Arc<ConsumerGroupMetadata>>);

/// What the sink needs from the running source.
pub(crate) trait TransactionalOffsets: Send + Sync {
    /// Retires the records the first `boundaries` boundaries cover; returns what may be
    /// committed now, with the consumer's current group metadata.
    fn due_after(&self, boundaries: u64) -> DueOffsets;
    /// Those offsets were committed (in a transaction).
    fn committed(&self, offsets: &[(String, i32, i64)]);
    /// Partition revocations seen so far.
    fn revocations(&self) -> u64;
}

impl ExactlyOnce {
    /// A new link, to give to one source and one sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a sink is attached (the source consumes only then: the sink must see every
    /// firing from the first).
    pub fn sink_attached(&self) -> bool {
        self.inner.sink_attached.load(Ordering::Acquire)
    }

    /// Whether a transaction failed and the pipeline stopped.
    pub fn failed(&self) -> bool {
        self.inner.failed.load(Ordering::Acquire)
    }

    pub(crate) fn attach_sink(&self) {
        self.inner.sink_attached.store(true, Ordering::Release);
    }

    pub(crate) fn fail(&self) {
        self.inner.failed.store(true, Ordering::Release);
    }

    pub(crate) fn register_source(&self, source: Arc<dyn TransactionalOffsets>) {
        *self.inner.source.lock().unwrap_or_else(|p| p.into_inner()) = Some(source);
    }

    pub(crate) fn source(&self) -> Option<Arc<dyn TransactionalOffsets>> {
        self.inner
            .source
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The due offsets of a tracker once `boundaries` boundaries are done.
pub(crate) fn due_after(tracker: &mut OffsetTracker, boundaries: u64) -> Vec<(String, i32, i64)> {
    tracker.delivered(boundaries);
    tracker.due()
}
