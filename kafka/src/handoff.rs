//! From the client to the reactor: one polled record decoded into an item (a boundary's
//! value, or a skip: filtered, or a dead letter), then offered to the reactor, waiting for
//! room in its queue and in the in-flight window.

use std::sync::atomic::Ordering;
use std::time::Duration;

use cloacina_accumulators::{AccumulatorContext, AccumulatorError, SourcePosition, TrySendError};
use rdkafka::message::{BorrowedMessage, Message};

use crate::dead_letter::DeadLetters;
use crate::decode::KafkaRecord;
use crate::group::SourceContext;
use crate::source::KafkaSource;

/// A record taken while the reactor's queue was full, waiting for room (in order).
pub(crate) enum Held<T> {
    Value {
        slot: u32,
        generation: u32,
        lane: u64,
        offset: i64,
        value: T,
    },
    Skip {
        slot: u32,
        generation: u32,
        offset: i64,
    },
}

/// Turns one polled record into an item to offer: its decoded value, or a skip (filtered
/// by the decoder, or a dead letter: sent to the dead-letter topic if there is one, logged
/// and counted either way). Returns whether it was a dead letter.
pub(crate) fn take<T: Send + Sync + 'static>(
    src: &KafkaSource<T>,
    shared: &SourceContext,
    dead_letters: Option<&DeadLetters>,
    msg: &BorrowedMessage<'_>,
) -> (Held<T>, bool) {
    shared.brokers_down.store(false, Ordering::Release);
    shared.stats.records.fetch_add(1, Ordering::Relaxed);
    let record = KafkaRecord {
        topic: msg.topic(),
        partition: msg.partition(),
        offset: msg.offset(),
        key: msg.key(),
        payload: msg.payload(),
        timestamp_ms: msg.timestamp().to_millis(),
    };
    let (slot, generation, lane) = {
        let mut tracker = shared.tracker();
        let slot = tracker.slot(record.topic, record.partition);
        (slot, tracker.generation(slot), tracker.lane(slot))
    };
    match src.decoder.decode(&record) {
        Ok(Some(value)) => (
            Held::Value {
                slot,
                generation,
                lane,
                offset: record.offset,
                value,
            },
            false,
        ),
        Ok(None) => {
            shared.stats.filtered.fetch_add(1, Ordering::Relaxed);
            (
                Held::Skip {
                    slot,
                    generation,
                    offset: record.offset,
                },
                false,
            )
        }
        Err(reason) => {
            shared.stats.dead_letters.fetch_add(1, Ordering::Relaxed);
            if let Some(dead) = dead_letters {
                if let Err(e) = dead.send(&record, &reason) {
                    shared
                        .stats
                        .dead_letters_unsent
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::error!(source = %shared.source, error = %e, "dead letter not sent to its topic (logged here only)");
                }
            }
            tracing::error!(
                source = %shared.source,
                topic = record.topic,
                partition = record.partition,
                offset = record.offset,
                key = ?record.key.map(String::from_utf8_lossy),
                %reason,
                "undecodable record: dead letter (skipped, offset committed)"
            );
            (
                Held::Skip {
                    slot,
                    generation,
                    offset: record.offset,
                },
                true,
            )
        }
    }
}

/// [`KafkaSource::max_in_flight`]: a cap on the boundaries sent and not yet done.
pub(crate) struct InFlightWindow {
    pub(crate) max: u64,
}

impl InFlightWindow {
    /// Whether one more boundary may be sent: at once if fewer than `max` are in flight,
    /// else once the watermark moves past enough of them, waiting up to `wait`. A full
    /// window waits for a run of room (an eighth of it, at most 128), not a single place,
    /// so the consumer is woken once per run rather than once per record.
    fn room<T: Send + Sync + 'static>(&self, ctx: &AccumulatorContext<T>, wait: Duration) -> bool {
        let sent = ctx.metrics().boundaries();
        let delivered = ctx.delivered();
        if sent.saturating_sub(delivered.get()) < self.max {
            return true;
        }
        // In flight drops to `max - run` once the watermark is past `sent - max + run - 1`.
        let run = (self.max / 8).clamp(1, 128);
        let past = sent - self.max + run - 1;
        // This is the consumer's own OS thread: it parks (no runtime needed).
        delivered.wait_past_blocking(past, wait).is_some()
    }
}

/// Offers one item to the reactor, waiting up to `wait` for room (in its queue, and in
/// the in-flight window if there is one); hands it back if there is still none.
pub(crate) fn offer<T: Send + Sync + 'static>(
    ctx: &AccumulatorContext<T>,
    shared: &SourceContext,
    item: Held<T>,
    wait: Duration,
    window: Option<&InFlightWindow>,
) -> Result<Option<Held<T>>, AccumulatorError> {
    if let (Some(window), Held::Value { .. }) = (window, &item) {
        if !window.room(ctx, wait) {
            return Ok(Some(item));
        }
    }
    match item {
        Held::Skip { slot, offset, .. } => {
            shared.tracker().took(slot, offset, false);
            Ok(None)
        }
        Held::Value {
            slot,
            generation,
            lane,
            offset,
            value,
        } => match ctx.emit_timeout_at(
            value,
            SourcePosition {
                lane,
                next: offset + 1,
            },
            wait,
        ) {
            Ok(()) => {
                shared.tracker().took(slot, offset, true);
                shared.stats.boundaries.fetch_add(1, Ordering::Relaxed);
                Ok(None)
            }
            Err(TrySendError::Full(value)) => Ok(Some(Held::Value {
                slot,
                generation,
                lane,
                offset,
                value,
            })),
            Err(TrySendError::Closed(_)) => Err(AccumulatorError::ReactorClosed {
                source_name: ctx.source().clone(),
                pending: 1,
            }),
        },
    }
}
