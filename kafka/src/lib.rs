//! # cloacina-kafka
//!
//! Kafka topics as the boundaries of a reactor's source, and firings' outputs back to a
//! topic ([`KafkaSink`]), through librdkafka (`rdkafka`).
//!
//! [`KafkaSource`] is an [`Accumulator`](cloacina_accumulators::Accumulator): register it with
//! `EmbeddedGraphBuilder::accumulator_factory(source, move || kafka.clone())` so that a failed
//! consumer is restarted alone. It consumes on a dedicated OS thread (a `BaseConsumer` polled
//! in a loop: the case librdkafka is fastest at), decodes each record with a [`Decoder`]
//! (serde JSON, the engine codec, or a function that may also filter), and sends the value
//! into the reactor's queue without blocking the poll loop. While records keep coming, the
//! loop reads the clock (for the commit interval) and adds to the accumulator's event
//! counters once per 64 records rather than per record (an idle poll does both at once), so
//! `AccumulatorMetrics::events` may trail [`KafkaStats::records`] by up to 63 records.
//!
//! **Commit-after-fire.** Auto-commit is off. A record's offset is committed only once the
//! reactor's delivery watermark (`cloacina_accumulators::Delivered`) reports its boundary
//! done: consumed by a firing that completed (or was dead-lettered by the failure policy)
//! and, with a ledger, durably recorded. Filtered and undecodable records are committed once
//! everything before them is. Commits are made every `commit_every` (200 ms), on revoke (for
//! the revoked partitions, before they go) and on close (after waiting up to
//! `close_timeout` for the records in flight).
//!
//! **Guarantee**: at-least-once to the graph and its subscribers. A crash, or a rebalance
//! while records are in flight, re-delivers the records after the last commit: at most what
//! was consumed in the last `commit_every` plus what was in flight. Nothing is lost: a record
//! is never committed before its firing is done. Once a commit is refused because the group
//! is rebalancing, the source takes no more records (partitions paused) until its partitions
//! have moved ([`KafkaStats::rebalance_holds`]): a coordinator that refuses commits until the
//! new generation forms would otherwise see all of that work repeated by the new owner.
//! [`KafkaSource::max_in_flight`] caps the records in the reactor's hands, and with them
//! what a rebalance can repeat.
//!
//! **Effectively-once into a ledger.** Each boundary is sent with its partition's position
//! (`cloacina_accumulators::SourcePosition`); the reactor records the partition's next
//! offset in the same atomic append as the boundaries. On every assignment the source lets
//! records of an earlier assignment finish, reads the ledger's position of each partition
//! and starts there when it is past the group's committed offset: nothing reaches the
//! ledger twice, whatever the group's commits say (a new group included).
//!
//! **Exactly-once topic to topic**: [`ExactlyOnce`] joins a source and a [`KafkaSink`]; the
//! sink commits the source's offsets in the Kafka transaction that carries the outputs of
//! the records behind them.
//!
//! **Backpressure**: when the reactor's queue is full the consumer thread parks until there is
//! room (`BoundarySender::send_timeout`: woken by the reactor, no polling), serving the client
//! every 20 ms; if records wait for room for 250 ms it pauses its partitions (`pause`) and
//! resumes them once the held records are in: bounded memory, nothing dropped, no busy
//! loop. (Not at the first brief stall: a pause drops librdkafka's prefetched records.)
//!
//! **Bad input**: a record the decoder rejects is a dead letter: counted
//! ([`KafkaStats::dead_letters`]), logged at `error` with topic, partition, offset, key and
//! reason, copied to the dead-letter topic if one is set ([`KafkaSource::dead_letter_topic`]:
//! same key and payload, headers `cloacina-error`, `-topic`, `-partition`, `-offset`,
//! acknowledged before its offset is committed), and committed past; it never stops the
//! stream. An unknown topic or
//! unreachable brokers at start is an error naming them (the supervisor restarts the source
//! with backoff, then marks it Failed). While every broker is down the source reports
//! `Disconnected` (the reactor is Degraded) and `Live` again once records flow.

mod consumer;
mod dead_letter;
mod decode;
mod exactly_once;
mod group;
mod handoff;
mod offsets;
mod sink;
mod source;

pub use decode::{DecodeResult, Decoder, KafkaRecord};
pub use exactly_once::ExactlyOnce;
pub use sink::{KafkaSink, SinkHandle, SinkStats};
pub use source::{KafkaSource, KafkaStats, StartFrom};

/// librdkafka through `rdkafka`, re-exported for tests and tools (the mock cluster, producers).
pub use rdkafka;
