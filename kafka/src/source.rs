//! [`KafkaSource`]: the stream accumulator's configuration, counters and `Accumulator` impl.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cloacina_accumulators::{Accumulator, AccumulatorContext, AccumulatorError, AccumulatorHealth};
use serde::de::DeserializeOwned;

use crate::consumer;
use crate::decode::Decoder;

/// Where a consumer group with no committed offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// The oldest record kept (`auto.offset.reset=earliest`, the default).
    #[default]
    Earliest,
    /// Only records produced from now on (`auto.offset.reset=latest`).
    Latest,
}

/// Counters of one Kafka source (shared: read them while it runs).
#[derive(Debug, Default)]
pub struct KafkaStats {
    pub(crate) records: AtomicU64,
    pub(crate) boundaries: AtomicU64,
    pub(crate) filtered: AtomicU64,
    pub(crate) dead_letters: AtomicU64,
    pub(crate) dead_letters_unsent: AtomicU64,
    pub(crate) commits: AtomicU64,
    pub(crate) commit_failures: AtomicU64,
    pub(crate) pauses: AtomicU64,
    pub(crate) rebalance_holds: AtomicU64,
    pub(crate) rebalances: AtomicU64,
}

impl KafkaStats {
    /// Records consumed.
    pub fn records(&self) -> u64 {
        self.records.load(Ordering::Relaxed)
    }
    /// Records sent to the reactor as boundaries.
    pub fn boundaries(&self) -> u64 {
        self.boundaries.load(Ordering::Relaxed)
    }
    /// Records the decoder filtered out.
    pub fn filtered(&self) -> u64 {
        self.filtered.load(Ordering::Relaxed)
    }
    /// Records that failed to decode (dead letters).
    pub fn dead_letters(&self) -> u64 {
        self.dead_letters.load(Ordering::Relaxed)
    }
    /// Dead letters that could not be produced to the dead-letter topic (logged only).
    pub fn dead_letters_unsent(&self) -> u64 {
        self.dead_letters_unsent.load(Ordering::Relaxed)
    }
    /// Offset commits made.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }
    /// Offset commits that failed (retried with the next commit).
    pub fn commit_failures(&self) -> u64 {
        self.commit_failures.load(Ordering::Relaxed)
    }
    /// Times the source paused its partitions because records had waited 250 ms for room
    /// (in the reactor's queue, or in the [`KafkaSource::max_in_flight`] window).
    pub fn pauses(&self) -> u64 {
        self.pauses.load(Ordering::Relaxed)
    }
    /// Times a commit was refused because the group was rebalancing, and the source held
    /// its records (partitions paused) until the partitions moved.
    pub fn rebalance_holds(&self) -> u64 {
        self.rebalance_holds.load(Ordering::Relaxed)
    }
    /// Partition assignments and revocations seen.
    pub fn rebalances(&self) -> u64 {
        self.rebalances.load(Ordering::Relaxed)
    }
}

/// How a [`KafkaSource`] paces its commits and waits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pacing {
    pub(crate) commit_every: Duration,
    pub(crate) close_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    /// At most this many boundaries sent and not yet done (`None`: no cap of its own).
    pub(crate) max_in_flight: Option<u64>,
}

impl Default for Pacing {
    fn default() -> Self {
        Self {
            commit_every: Duration::from_millis(200),
            close_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            max_in_flight: None,
        }
    }
}

/// A Kafka topic (or several) as the boundaries of one source: an `Accumulator` that
/// consumes on a dedicated OS thread with librdkafka, commits offsets only past records
/// whose boundaries the reactor reports done (commit-after-fire), and pauses its partitions
/// while the reactor's queue is full. See the crate docs for the guarantees.
#[derive(Debug, Clone)]
pub struct KafkaSource<T> {
    pub(crate) brokers: String,
    pub(crate) group_id: String,
    pub(crate) topics: Vec<String>,
    pub(crate) start: StartFrom,
    pub(crate) settings: Vec<(String, String)>,
    pub(crate) decoder: Decoder<T>,
    pub(crate) pacing: Pacing,
    pub(crate) dead_letter_topic: Option<String>,
    pub(crate) exactly_once: Option<crate::ExactlyOnce>,
    pub(crate) stats: Arc<KafkaStats>,
}

impl<T: DeserializeOwned + Send + Sync + 'static> KafkaSource<T> {
    /// Consumes `topics` in group `group_id` from `brokers` (`host:port,...`), decoding each
    /// payload as JSON.
    pub fn json(brokers: impl Into<String>, group_id: impl Into<String>, topics: &[&str]) -> Self {
        Self::new(brokers, group_id, topics, Decoder::json())
    }
}

impl<T: Send + Sync + 'static> KafkaSource<T> {
    /// Consumes `topics` in group `group_id` from `brokers`, with `decoder`. A topic written
    /// `^regex` subscribes to every topic matching it (librdkafka's pattern subscription).
    pub fn new(
        brokers: impl Into<String>,
        group_id: impl Into<String>,
        topics: &[&str],
        decoder: Decoder<T>,
    ) -> Self {
        Self {
            brokers: brokers.into(),
            group_id: group_id.into(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            start: StartFrom::default(),
            settings: Vec::new(),
            decoder,
            pacing: Pacing::default(),
            dead_letter_topic: None,
            exactly_once: None,
            stats: Arc::default(),
        }
    }

    /// Where to start without a committed offset (default `Earliest`).
    pub fn start_from(mut self, start: StartFrom) -> Self {
        self.start = start;
        self
    }

    /// Passes a librdkafka setting through as-is (`security.protocol`, `fetch.min.bytes`,
    /// ...). `enable.auto.commit` and `enable.auto.offset.store` are always `false`: offsets
    /// are committed by commit-after-fire only.
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((key.into(), value.into()));
        self
    }

    /// How often done offsets are committed (default 200 ms; also on revoke and on close).
    pub fn commit_every(mut self, every: Duration) -> Self {
        self.pacing.commit_every = every;
        self
    }

    /// On shutdown, how long to wait for the reactor to finish the records in flight before
    /// the final commit (default 10 s); what is not done by then is read again on restart.
    /// The same bound applies when partitions are revoked in a rebalance, where the
    /// coordinator takes commits meanwhile (the wait ends at the first commit it refuses).
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.pacing.close_timeout = timeout;
        self
    }

    /// Caps the records this consumer has in the reactor's hands (sent, not yet done) at
    /// `records`; past it the consumer waits for the delivery watermark as it waits for room
    /// in a full queue (then pauses its partitions). Unset (the default), the reactor's
    /// queues bound them. A rebalance repeats at most the records in flight at that moment
    /// (plus those done since the last commit), so a small window bounds the duplicates of
    /// at-least-once delivery, and the revoke-time wait for them, at some cost in
    /// throughput (measure it with `kafka_bench --max-in-flight`). A boundary is done only
    /// once a firing consumes it: where firings wait for other sources (`when_all`) or the
    /// reactor is paused, a full window holds this source (its partitions paused) until
    /// they come.
    pub fn max_in_flight(mut self, records: usize) -> Self {
        self.pacing.max_in_flight = Some(records.max(1) as u64);
        self
    }

    /// How long the start-up check (brokers reachable, topics exist) may take (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.pacing.connect_timeout = timeout;
        self
    }

    /// Copies each record the decoder rejects to `topic` on the same brokers (same key and
    /// payload; headers `cloacina-error`, `cloacina-topic`, `cloacina-partition`,
    /// `cloacina-offset`), waiting for the acknowledgement before its offset is committed.
    pub fn dead_letter_topic(mut self, topic: impl Into<String>) -> Self {
        self.dead_letter_topic = Some(topic.into());
        self
    }

    /// Joins this source to a [`crate::KafkaSink`] given the same `link`: the sink commits
    /// this source's offsets in the transaction that carries the outputs of the records
    /// behind them (exactly-once topic to topic; see [`crate::ExactlyOnce`]). The source
    /// then commits nothing itself, and consumes only once the sink is attached.
    pub fn exactly_once(mut self, link: &crate::ExactlyOnce) -> Self {
        self.exactly_once = Some(link.clone());
        self
    }

    /// The source's counters (shared with every clone, and with the running consumer).
    pub fn stats(&self) -> Arc<KafkaStats> {
        Arc::clone(&self.stats)
    }
}

impl<T: Send + Sync + 'static> Accumulator for KafkaSource<T> {
    type Output = T;

    async fn run(self, ctx: AccumulatorContext<T>) -> Result<(), AccumulatorError> {
        ctx.set_health(AccumulatorHealth::Connecting);
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let source = ctx.source().clone();
        let runtime = tokio::runtime::Handle::current();
        let thread = std::thread::Builder::new()
            .name(format!("cloacina-kafka-{source}"))
            .spawn(move || {
                let result = consumer::run(&self, &ctx, runtime);
                if result.is_err() {
                    ctx.set_health(AccumulatorHealth::Disconnected);
                }
                let _ = done_tx.send(result);
            })
            .map_err(|e| AccumulatorError::Failed {
                source_name: source.clone(),
                message: format!("cannot start the consumer thread: {e}"),
            })?;
        let result = done_rx.await.unwrap_or_else(|_| {
            Err(AccumulatorError::Failed {
                source_name: source.clone(),
                message: "the consumer thread panicked".into(),
            })
        });
        // The thread has sent its result: it is ending; reap it off the async thread.
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        result
    }
}
