//! [`KafkaSink`]: produces each firing's chosen output to a topic.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cloacina_graph_core::GraphResult;
use cloacina_reactor::Subscription;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::ClientContext;
use serde::Serialize;

/// Turns an output into a record's key (optional) and payload.
type EncodeFn<O> = Arc<dyn Fn(&O) -> Result<(Option<String>, Vec<u8>), String> + Send + Sync>;

/// Counters of a running sink.
#[derive(Debug, Default)]
pub struct SinkStats {
    produced: AtomicU64,
    delivered: AtomicU64,
    failed: AtomicU64,
    skipped: AtomicU64,
    transactions: AtomicU64,
    aborted: AtomicU64,
}

impl SinkStats {
    /// Records handed to the producer.
    pub fn produced(&self) -> u64 {
        self.produced.load(Ordering::Relaxed)
    }
    /// Records the brokers acknowledged.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }
    /// Records that could not be encoded or delivered (logged at `error`).
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
    /// Firings without the chosen output (failed firings, routes not taken).
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }
    /// Exactly-once: transactions committed (outputs with their input offsets).
    pub fn transactions(&self) -> u64 {
        self.transactions.load(Ordering::Relaxed)
    }
    /// Exactly-once: transactions aborted (the pipeline stopped).
    pub fn aborted(&self) -> u64 {
        self.aborted.load(Ordering::Relaxed)
    }
}

struct SinkContext {
    stats: Arc<SinkStats>,
}

impl ClientContext for SinkContext {}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.stats.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "kafka sink: record not delivered");
            }
        }
    }
}

/// Produces the output `output` of every completed firing a [`Subscription`] receives to a
/// topic, with an idempotent producer (`enable.idempotence=true`: retries never duplicate a
/// record on the broker). A full producer queue makes the sink wait (the subscription then
/// fills and the reactor applies its subscriber policy): nothing is dropped. Guarantee:
/// every firing the subscription delivers is produced at least once while the process
/// lives; at shutdown the sink flushes before it returns. For exactly-once topic to topic,
/// see [`KafkaSink::exactly_once`] and [`crate::ExactlyOnce`].
pub struct KafkaSink<O> {
    brokers: String,
    topic: String,
    output: String,
    encode: EncodeFn<O>,
    settings: Vec<(String, String)>,
    /// Exactly-once: the link to the source, the transactional id, how often to commit.
    transactional: Option<(crate::ExactlyOnce, String, Duration)>,
}

impl<O: Serialize + Send + Sync + 'static> KafkaSink<O> {
    /// Produces the terminal output `output` (a node name) as JSON, without a key.
    pub fn json(
        brokers: impl Into<String>,
        topic: impl Into<String>,
        output: impl Into<String>,
    ) -> Self {
        Self {
            brokers: brokers.into(),
            topic: topic.into(),
            output: output.into(),
            encode: Arc::new(|o: &O| {
                serde_json::to_vec(o)
                    .map(|payload| (None, payload))
                    .map_err(|e| e.to_string())
            }),
            settings: Vec::new(),
            transactional: None,
        }
    }

    /// Keys each record with `key(output)` (JSON payload as before).
    pub fn key_with(mut self, key: impl Fn(&O) -> String + Send + Sync + 'static) -> Self {
        self.encode = Arc::new(move |o: &O| {
            serde_json::to_vec(o)
                .map(|payload| (Some(key(o)), payload))
                .map_err(|e| e.to_string())
        });
        self
    }
}

impl<O: Send + Sync + 'static> KafkaSink<O> {
    /// Passes a librdkafka producer setting through as-is.
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((key.into(), value.into()));
        self
    }

    /// Exactly-once (consume-transform-produce): outputs are produced inside Kafka
    /// transactions (`transactional.id` = `transactional_id`, one per pipeline instance),
    /// each committing, with them, the offsets of exactly the records their firings
    /// consumed, every `commit_every`, on the source given the same `link`
    /// ([`crate::KafkaSource::exactly_once`]). Needs a `Sequential` reactor whose only source
    /// is that Kafka source (one firing per record) and a subscription that never lags.
    /// A failed transaction, a lagged subscription, or a partition revoked while a
    /// transaction holds outputs aborts it and stops the pipeline (restart the process: a
    /// `read_committed` reader never sees aborted outputs, and their records are read again).
    pub fn exactly_once(
        mut self,
        link: &crate::ExactlyOnce,
        transactional_id: impl Into<String>,
        commit_every: Duration,
    ) -> Self {
        self.transactional = Some((link.clone(), transactional_id.into(), commit_every));
        self
    }

    /// Starts producing what `subscription` receives, on a thread of its own; it ends when
    /// the subscription closes (the engine shut down), after flushing.
    pub fn spawn(self, subscription: Subscription) -> Result<SinkHandle, String> {
        let stats = Arc::new(SinkStats::default());
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("enable.idempotence", "true")
            .set("linger.ms", "5");
        for (k, v) in &self.settings {
            config.set(k, v);
        }
        if let Some((_, id, _)) = &self.transactional {
            config.set("transactional.id", id);
        }
        let producer: BaseProducer<SinkContext> = config
            .create_with_context(SinkContext {
                stats: Arc::clone(&stats),
            })
            .map_err(|e| format!("bad Kafka producer configuration: {e}"))?;
        if let Some((link, id, _)) = &self.transactional {
            // Fences an earlier instance with the same id and aborts its open transaction.
            producer
                .init_transactions(Duration::from_secs(30))
                .and_then(|()| producer.begin_transaction())
                .map_err(|e| format!("kafka sink: cannot start transactions as `{id}`: {e}"))?;
            link.attach_sink();
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot build the sink's runtime: {e}"))?;
        let counters = Arc::clone(&stats);
        let thread = std::thread::Builder::new()
            .name(format!("cloacina-kafka-sink-{}", self.topic))
            .spawn(move || runtime.block_on(run(self, producer, subscription, counters)))
            .map_err(|e| format!("cannot start the sink thread: {e}"))?;
        Ok(SinkHandle { stats, thread })
    }
}

async fn run<O: Send + Sync + 'static>(
    sink: KafkaSink<O>,
    producer: BaseProducer<SinkContext>,
    mut subscription: Subscription,
    stats: Arc<SinkStats>,
) -> Result<(), String> {
    // Delivery reports are served by `poll`: also while no firing arrives.
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut txn = sink
        .transactional
        .as_ref()
        .map(|(link, _, every)| Transaction::new(link.clone(), *every, Arc::clone(&stats)));
    loop {
        let received = tokio::select! {
            received = subscription.recv() => received,
            _ = tick.tick() => {
                producer.poll(Duration::ZERO);
                if let Some(t) = &mut txn {
                    t.commit_if_due(&producer)?;
                }
                continue;
            }
        };
        let Some(received) = received else { break };
        let firing = match received {
            Ok(f) => f,
            Err(lagged) => {
                tracing::error!(?lagged, "kafka sink: subscription lagged");
                if let Some(t) = &mut txn {
                    return Err(t.abort(&producer, "the subscription lagged: firings were missed"));
                }
                continue;
            }
        };
        if let Some(t) = &mut txn {
            t.firings += 1;
        }
        let output = match &firing.result {
            GraphResult::Completed { outputs } => outputs.get::<O>(&sink.output),
            GraphResult::Error(_) => None,
        };
        let Some(output) = output else {
            stats.skipped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let (key, payload) = match (sink.encode)(output) {
            Ok(parts) => parts,
            Err(e) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(firing = firing.id, error = %e, "kafka sink: output not encodable");
                continue;
            }
        };
        loop {
            let mut record = BaseRecord::<str, [u8]>::to(&sink.topic).payload(&payload);
            if let Some(key) = &key {
                record = record.key(key.as_str());
            }
            match producer.send(record) {
                Ok(()) => break,
                Err((
                    KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    _,
                )) => {
                    // Wait for deliveries to make room: never drop.
                    producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(firing = firing.id, error = %e, "kafka sink: produce failed");
                    break;
                }
            }
        }
        stats.produced.fetch_add(1, Ordering::Relaxed);
        if let Some(t) = &mut txn {
            t.outputs += 1;
        }
        producer.poll(Duration::ZERO);
    }
    if let Some(t) = &mut txn {
        return t.commit(&producer);
    }
    producer
        .flush(Duration::from_secs(30))
        .map_err(|e| format!("kafka sink: final flush failed: {e}"))
}

/// The open transaction of an exactly-once sink.
struct Transaction {
    link: crate::ExactlyOnce,
    stats: Arc<SinkStats>,
    every: Duration,
    last: std::time::Instant,
    /// Firings received since the sink started (one per boundary of the source).
    firings: u64,
    /// Outputs produced in the open transaction.
    outputs: u64,
    /// The source's revocations when the open transaction began.
    revocations: Option<u64>,
}

impl Transaction {
    fn new(link: crate::ExactlyOnce, every: Duration, stats: Arc<SinkStats>) -> Self {
        Self {
            link,
            stats,
            every,
            last: std::time::Instant::now(),
            firings: 0,
            outputs: 0,
            revocations: None,
        }
    }

    fn commit_if_due(&mut self, producer: &BaseProducer<SinkContext>) -> Result<(), String> {
        if self.last.elapsed() >= self.every {
            self.commit(producer)?;
        }
        Ok(())
    }

    /// Commits the outputs produced so far with the offsets of the records behind them, and
    /// opens the next transaction.
    fn commit(&mut self, producer: &BaseProducer<SinkContext>) -> Result<(), String> {
        self.last = std::time::Instant::now();
        let Some(source) = self.link.source() else {
            return Ok(());
        };
        let revocations = source.revocations();
        if self.outputs > 0 && self.revocations.is_some_and(|r| r != revocations) {
            return Err(self.abort(
                producer,
                "partitions were revoked while the transaction held outputs",
            ));
        }
        let (due, group) = source.due_after(self.firings);
        if due.is_empty() && self.outputs == 0 {
            self.revocations = Some(revocations);
            return Ok(());
        }
        let Some(group) = group else {
            return Err(self.abort(producer, "no consumer group metadata"));
        };
        let mut tpl = rdkafka::TopicPartitionList::new();
        for (topic, partition, offset) in &due {
            if let Err(e) =
                tpl.add_partition_offset(topic, *partition, rdkafka::Offset::Offset(*offset))
            {
                return Err(self.abort(producer, &format!("bad offset: {e}")));
            }
        }
        let committed = producer
            .send_offsets_to_transaction(&tpl, &group, Duration::from_secs(30))
            .and_then(|()| producer.commit_transaction(Duration::from_secs(60)));
        if let Err(e) = committed {
            return Err(self.abort(producer, &format!("transaction not committed: {e}")));
        }
        source.committed(&due);
        self.stats.transactions.fetch_add(1, Ordering::Relaxed);
        self.outputs = 0;
        self.revocations = Some(revocations);
        producer
            .begin_transaction()
            .map_err(|e| self.abort(producer, &format!("cannot begin a transaction: {e}")))
    }

    /// Aborts the open transaction and stops the pipeline; returns the error to end with.
    fn abort(&self, producer: &BaseProducer<SinkContext>, why: &str) -> String {
        self.link.fail();
        self.stats.aborted.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = producer.abort_transaction(Duration::from_secs(30)) {
            tracing::error!(error = %e, "kafka sink: abort failed");
        }
        tracing::error!(
            why,
            "kafka sink: transaction aborted; the exactly-once pipeline stops"
        );
        format!("kafka sink: transaction aborted: {why}")
    }
}

/// A running [`KafkaSink`].
#[derive(Debug)]
pub struct SinkHandle {
    stats: Arc<SinkStats>,
    thread: std::thread::JoinHandle<Result<(), String>>,
}

impl SinkHandle {
    /// The sink's counters.
    pub fn stats(&self) -> &Arc<SinkStats> {
        &self.stats
    }

    /// Waits (on a blocking thread) until the sink has flushed and ended; call after the
    /// engine's shutdown closed its subscription.
    pub async fn finish(self) -> Result<(), String> {
        tokio::task::spawn_blocking(move || {
            self.thread
                .join()
                .unwrap_or_else(|_| Err("the sink thread panicked".into()))
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()))
    }
}
