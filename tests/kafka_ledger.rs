//! The Kafka source into a ledger: each partition's position is recorded with its
//! boundaries, and a restart resumes from the ledger, so nothing reaches the ledger twice,
//! even when Kafka's committed offsets are behind (or gone: a new group).

mod kafka_common;

use std::sync::Arc;

use cloacina::accumulators::{checkpoint_owner, lane_id, position_key};
use cloacina::kafka::KafkaSource;
use cloacina::ledger::{Ledger, SledLedger};
use cloacina::prelude::*;
use kafka_common::{cluster, committed, echo_graph, fired, numbers, produce};

fn start(source: KafkaSource<u64>, ledger: Arc<dyn Ledger>) -> EmbeddedGraph {
    EmbeddedGraph::builder(echo_graph())
        .strategy(InputStrategy::Sequential)
        .ledger(ledger)
        .accumulator_factory("n", move || source.clone())
        .start()
        .expect("start")
}

fn source(brokers: &str, group: &str) -> KafkaSource<u64> {
    KafkaSource::<u64>::json(brokers, group, &["ledgered"])
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_from_the_ledger_and_records_nothing_twice() {
    let c = cluster("ledgered", 4);
    produce(&c.brokers, "ledgered", 4, 0, &numbers(0..1000));
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger: Arc<dyn Ledger> =
        Arc::new(SledLedger::open(dir.path().join("ledger")).expect("sled"));

    let engine = start(source(&c.brokers, "g1"), Arc::clone(&ledger));
    let reactor = engine.reactor().name().to_owned();
    let mut sub = engine.subscribe();
    let seen = fired(&mut sub, 1000).await;
    engine.shutdown().await.expect("shutdown");
    assert!(seen.values().all(|n| *n == 1));

    // Each partition's position is in the ledger: one past its last record (250 each).
    let owner = checkpoint_owner(&reactor, "n");
    for p in 0..4 {
        let record = ledger
            .checkpoint(&owner, &position_key(lane_id("ledgered", p)))
            .await
            .expect("read")
            .unwrap_or_else(|| panic!("no position for partition {p}"));
        let next: i64 = cloacina::graph::codec::decode(&record.value).expect("an offset");
        assert_eq!(next, 250, "partition {p}");
    }

    // A new group has no committed offsets and starts from the earliest record; the ledger
    // says where its records end, so only the 500 new ones are read.
    produce(&c.brokers, "ledgered", 4, 1000, &numbers(1000..1500));
    let engine = start(source(&c.brokers, "g2"), Arc::clone(&ledger));
    let mut sub = engine.subscribe();
    let later = fired(&mut sub, 500).await;
    engine.shutdown().await.expect("shutdown");
    let mut values: Vec<u64> = later.keys().copied().collect();
    values.sort_unstable();
    assert_eq!(
        values,
        (1000..1500).collect::<Vec<_>>(),
        "resumed from the ledger"
    );
    assert!(later.values().all(|n| *n == 1));
    // The new group committed past everything (the ledger's positions count as done).
    assert_eq!(
        committed(&c.brokers, "g2", "ledgered", 4)
            .iter()
            .sum::<i64>(),
        1500
    );

    let counts = kafka_common::recorded_values(&*ledger, &reactor).await;
    assert_eq!(counts.len(), 1500);
    assert!(counts.values().all(|n| *n == 1), "a record recorded twice");
    drop(c.mock);
}
