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
/// lives; at shutdown the sink flushes before it returns. (Tying the upstream commit to the
/// sink's acknowledgements, and a transactional mode, are not built yet.)
pub struct KafkaSink<O> {
    brokers: String,
    topic: String,
    output: String,
    encode: EncodeFn<O>,
    settings: Vec<(String, String)>,
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
        let producer: BaseProducer<SinkContext> = config
            .create_with_context(SinkContext {
                stats: Arc::clone(&stats),
            })
            .map_err(|e| format!("bad Kafka producer configuration: {e}"))?;
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
    loop {
        let received = tokio::select! {
            received = subscription.recv() => received,
            _ = tick.tick() => {
                producer.poll(Duration::ZERO);
                continue;
            }
        };
        let Some(received) = received else { break };
        let firing = match received {
            Ok(f) => f,
            Err(lagged) => {
                tracing::error!(?lagged, "kafka sink: subscription lagged");
                continue;
            }
        };
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
        producer.poll(Duration::ZERO);
    }
    producer
        .flush(Duration::from_secs(30))
        .map_err(|e| format!("kafka sink: final flush failed: {e}"))
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
