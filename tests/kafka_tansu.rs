//! End-to-end against a real Kafka-compatible broker: `tansu`, started on a loopback port
//! (skipped with a printed reason where the binary is absent; `.ci/run` installs it and sets
//! `CLOACINA_REQUIRE_TANSU=1`). A topic through the source, the graph and the sink, with a
//! restart of the same group; and the source into a ledger, restarted under a new group,
//! recording nothing twice. Records are produced one per batch: `tansu` 0.6 skips the rest of
//! a batch when a fetch starts inside it (see `kafka_common::produce_unbatched`).

mod kafka_common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cloacina::kafka::rdkafka::config::ClientConfig;
use cloacina::kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use cloacina::kafka::rdkafka::message::Message;
use cloacina::kafka::{KafkaSink, KafkaSource};
use cloacina::ledger::{Ledger, SledLedger};
use cloacina::prelude::*;
use kafka_common::{
    committed, echo_graph, fired, numbers, produce_unbatched as produce, Tansu, PATIENCE,
};

fn start(source: KafkaSource<u64>, ledger: Option<Arc<dyn Ledger>>) -> EmbeddedGraph {
    let mut builder = EmbeddedGraph::builder(echo_graph())
        .strategy(InputStrategy::Sequential)
        .accumulator_factory("n", move || source.clone());
    if let Some(ledger) = ledger {
        builder = builder.ledger(ledger);
    }
    builder.start().expect("start")
}

/// Every value of `topic`, read from the start by a fresh group.
fn read_all(brokers: &str, topic: &str, want: usize) -> HashMap<u64, u32> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut seen: HashMap<u64, u32> = HashMap::new();
    let deadline = std::time::Instant::now() + PATIENCE;
    while seen.values().sum::<u32>() < want as u32 && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let n: u64 = serde_json::from_slice(m.payload().expect("payload")).expect("json");
            assert_eq!(m.key(), Some((n % 7).to_string().as_bytes()), "keyed");
            *seen.entry(n).or_default() += 1;
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_through_the_graph_to_a_topic_on_tansu() {
    let Some(tansu) = Tansu::start() else { return };
    tansu.create_topic("in", 4);
    tansu.create_topic("out", 4);
    produce(&tansu.brokers, "in", 4, 0, &numbers(0..2000));
    let source = KafkaSource::<u64>::json(&tansu.brokers, "e2e", &["in"]);
    let stats = source.stats();
    let engine = start(source.clone(), None);
    let mut sub = engine.subscribe();
    let sink = KafkaSink::<u64>::json(&tansu.brokers, "out", "echo")
        .key_with(|n| (n % 7).to_string())
        .spawn(engine.subscribe())
        .expect("sink");
    let seen = fired(&mut sub, 2000).await;
    assert!(seen.values().all(|n| *n == 1), "no value fired twice");
    engine.shutdown().await.expect("shutdown");
    let sink_stats = Arc::clone(sink.stats());
    sink.finish().await.expect("sink flushed");
    assert_eq!((sink_stats.produced(), sink_stats.failed()), (2000, 0));
    assert_eq!(stats.boundaries(), 2000);
    assert_eq!(
        committed(&tansu.brokers, "e2e", "in", 4)
            .iter()
            .sum::<i64>(),
        2000,
        "graceful close commits everything that fired"
    );

    // The same group's second life reads only what came after.
    produce(&tansu.brokers, "in", 4, 2000, &numbers(2000..2500));
    let engine = start(source, None);
    let mut sub = engine.subscribe();
    let later = fired(&mut sub, 500).await;
    engine.shutdown().await.expect("shutdown");
    let mut values: Vec<u64> = later.keys().copied().collect();
    values.sort_unstable();
    assert_eq!(
        values,
        (2000..2500).collect::<Vec<_>>(),
        "resumed after the commit"
    );

    let out = read_all(&tansu.brokers, "out", 2000);
    assert_eq!(out.len(), 2000);
    assert!(out.values().all(|n| *n == 1), "each output once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_records_each_record_once_across_groups_on_tansu() {
    let Some(tansu) = Tansu::start() else { return };
    tansu.create_topic("ledgered", 4);
    produce(&tansu.brokers, "ledgered", 4, 0, &numbers(0..1000));
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger: Arc<dyn Ledger> =
        Arc::new(SledLedger::open(dir.path().join("ledger")).expect("sled"));
    let engine = start(
        KafkaSource::json(&tansu.brokers, "l1", &["ledgered"]),
        Some(Arc::clone(&ledger)),
    );
    let reactor = engine.reactor().name().to_owned();
    let mut sub = engine.subscribe();
    fired(&mut sub, 1000).await;
    engine.shutdown().await.expect("shutdown");

    produce(&tansu.brokers, "ledgered", 4, 1000, &numbers(1000..1300));
    let engine = start(
        KafkaSource::json(&tansu.brokers, "l2", &["ledgered"]),
        Some(Arc::clone(&ledger)),
    );
    let mut sub = engine.subscribe();
    let later = fired(&mut sub, 300).await;
    engine.shutdown().await.expect("shutdown");
    assert_eq!(later.len(), 300, "only the new records were read");

    let counts = kafka_common::recorded_values(&*ledger, &reactor).await;
    assert_eq!(counts.len(), 1300);
    assert!(counts.values().all(|n| *n == 1), "a record recorded twice");
}
