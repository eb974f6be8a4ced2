//! SIGKILL crash test of the Kafka source into a sled ledger: every record is recorded
//! exactly once.
//!
//! The mock cluster lives in this (parent) process; 20,000 records wait in a 4-partition
//! topic. A child process (this test binary, started with `KAFKA_CRASH_CHILD`) consumes them
//! into a `Sequential` graph recording into a sled ledger (`Batched`), and is killed with
//! SIGKILL at a random point after it got its partitions, 10 times (`KAFKA_CRASH_ROUNDS`); a
//! last child runs until the group has committed every record, then stops gracefully. The
//! ledger must then hold every record exactly once: offsets are committed only past records
//! whose firings are durably recorded (nothing lost), and each partition's position is
//! recorded in the same append as its boundaries and resumed from on restart (nothing
//! recorded twice). `KAFKA_CRASH_SEED` replays the kill delays of a run (the seed is
//! printed).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloacina::kafka::rdkafka::config::ClientConfig;
use cloacina::kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use cloacina::kafka::rdkafka::mocking::MockCluster;
use cloacina::kafka::rdkafka::{Offset, TopicPartitionList};
use cloacina::kafka::KafkaSource;
use cloacina::ledger::{BoundaryQuery, Ledger, SledLedger};
use cloacina::prelude::*;

mod kafka_common;

const CHILD_ENV: &str = "KAFKA_CRASH_CHILD";
const LEDGER_ENV: &str = "KAFKA_CRASH_LEDGER";
const FINAL_ENV: &str = "KAFKA_CRASH_FINAL";
const SEED_ENV: &str = "KAFKA_CRASH_SEED";
const ROUNDS_ENV: &str = "KAFKA_CRASH_ROUNDS";
const TOPIC: &str = "crash";
const GROUP: &str = "crash";
const PARTITIONS: i32 = 4;
const RECORDS: u64 = 20_000;

fn kafka_source(brokers: &str) -> KafkaSource<u64> {
    KafkaSource::<u64>::json(brokers, GROUP, &[TOPIC])
        .commit_every(Duration::from_millis(50))
        // A killed member holds its partitions until its session times out.
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .set("fetch.wait.max.ms", "10")
}

fn committed_total(brokers: &str) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", GROUP)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(TOPIC, p);
    }
    match consumer.committed_offsets(tpl, Duration::from_secs(5)) {
        Ok(got) => got
            .elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(o) => o,
                _ => 0,
            })
            .sum(),
        Err(_) => 0,
    }
}

/// The child: consume into the ledger; print `assigned` once it has partitions; in the
/// final round, stop gracefully once everything is committed and print `done`.
#[test]
fn kafka_crash_child() {
    let Ok(brokers) = std::env::var(CHILD_ENV) else {
        return;
    };
    let ledger_path = std::env::var(LEDGER_ENV).expect("ledger path");
    let last = std::env::var(FINAL_ENV).is_ok();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let ledger: Arc<dyn Ledger> = Arc::new(SledLedger::open(&ledger_path).expect("sled"));
        let graph = GraphBuilder::new("crash")
            .async_node("echo", (source::<u64>("n"),), |n: Option<&u64>| {
                let v = n.copied().unwrap_or(0);
                async move {
                    // About 5 s of work for the whole topic: kills land mid-stream.
                    if v % 4 == 0 {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    v
                }
            })
            .build()
            .expect("graph");
        let kafka = kafka_source(&brokers);
        let stats = kafka.stats();
        let engine = EmbeddedGraph::builder(graph)
            .strategy(InputStrategy::Sequential)
            .ledger(ledger)
            .accumulator_factory("n", move || kafka.clone())
            .start()
            .expect("start");
        kafka_common::announce_assigned(&stats, "CRASH assigned").await;
        if !last {
            std::future::pending::<()>().await;
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        while committed_total(&brokers) < RECORDS as i64 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        engine.shutdown().await.expect("shutdown");
        println!("CRASH done");
    });
}

/// A small xorshift: kill delays replayable from the printed seed.
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

fn spawn_child(brokers: &str, ledger: &std::path::Path, last: bool) -> kafka_common::Child {
    let ledger = ledger.to_string_lossy();
    let mut envs = vec![(CHILD_ENV, brokers), (LEDGER_ENV, ledger.as_ref())];
    if last {
        envs.push((FINAL_ENV, "1"));
    }
    kafka_common::Child::spawn("kafka_crash_child", &envs)
}

#[test]
fn sigkill_mid_stream_records_every_record_once() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic(TOPIC, PARTITIONS, 1).expect("topic");
    let brokers = mock.bootstrap_servers();
    kafka_common::produce(
        &brokers,
        TOPIC,
        PARTITIONS,
        0,
        &kafka_common::numbers(0..RECORDS),
    );
    kill_rounds(&brokers, "mock cluster");
    drop(mock);
}

/// The same against a real broker (`tansu` on a loopback port; skipped where it is absent).
#[test]
fn sigkill_mid_stream_records_every_record_once_on_tansu() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let Some(tansu) = kafka_common::Tansu::start() else {
        return;
    };
    tansu.create_topic(TOPIC, PARTITIONS);
    // One record per batch: tansu 0.6 skips the rest of a batch when a fetch starts inside it.
    kafka_common::produce_unbatched(
        &tansu.brokers,
        TOPIC,
        PARTITIONS,
        0,
        &kafka_common::numbers(0..RECORDS),
    );
    kill_rounds(&tansu.brokers, "tansu");
}

/// Kills a consuming child at random points, runs a last one to the end, and checks the
/// ledger holds every record exactly once.
fn kill_rounds(brokers: &str, broker_kind: &str) {
    let brokers = brokers.to_owned();
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger_path = dir.path().join("ledger");
    let mut seed: u64 = std::env::var(SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| (u64::from(std::process::id()) * 0x9E37_79B9) | 1);
    eprintln!("kafka crash seed {seed} (replay with {SEED_ENV}={seed})");
    let rounds: usize = std::env::var(ROUNDS_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let mut killed_after_progress = 0;
    for round in 0..rounds {
        let mut child = spawn_child(&brokers, &ledger_path, false);
        assert!(
            child.wait_for("CRASH assigned", Duration::from_secs(60)),
            "round {round}: the child never got its partitions"
        );
        let delay = Duration::from_millis(50 + next(&mut seed) % 450);
        std::thread::sleep(delay);
        child.process.kill().expect("SIGKILL");
        let _ = child.process.wait();
        let committed = committed_total(&brokers);
        if committed > 0 && committed < RECORDS as i64 {
            killed_after_progress += 1;
        }
        eprintln!("round {round}: killed after {delay:?}; group committed {committed}");
    }
    let mut child = spawn_child(&brokers, &ledger_path, true);
    assert!(
        child.wait_for("CRASH done", Duration::from_secs(180)),
        "the last child did not finish"
    );
    let status = child.process.wait().expect("wait");
    assert!(status.success(), "last child: {status:?}");

    let ledger = SledLedger::open(&ledger_path).expect("reopen the ledger");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let boundaries = runtime
        .block_on(ledger.boundaries(&BoundaryQuery::reactor("crash").allow_gaps()))
        .expect("read boundaries");
    let mut seen: HashMap<u64, u32> = HashMap::new();
    for b in &boundaries {
        let v: u64 = cloacina::graph::codec::decode(&b.value).expect("a u64");
        *seen.entry(v).or_default() += 1;
    }
    let missing: Vec<u64> = (0..RECORDS).filter(|v| !seen.contains_key(v)).collect();
    let repeated: u32 = seen.values().map(|n| n - 1).sum();
    eprintln!(
        "kafka crash ({broker_kind}): {rounds} kills ({killed_after_progress} mid-stream), {} records in the ledger, {} missing, {repeated} repeated",
        boundaries.len(),
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "lost records: {:?}...",
        &missing[..missing.len().min(20)]
    );
    assert_eq!(repeated, 0, "records recorded more than once");
    assert_eq!(committed_total(&brokers), RECORDS as i64);
}
