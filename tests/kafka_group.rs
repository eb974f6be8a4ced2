//! Two consumer processes in one group, with forced rebalances: every record fires, and the
//! records fired twice (at-least-once: those in flight when their partition moved) are
//! counted and bounded.
//!
//! The mock cluster lives in this (parent) process; 20,000 records wait in a 4-partition
//! topic. Child A (this test binary, started with `KAFKA_GROUP_CHILD`) consumes; child B
//! joins mid-stream (a rebalance: partitions revoked from A, shared out again); then A is
//! stopped gracefully (another rebalance: A commits what it finished and hands its
//! partitions to B); B runs until the group has committed every record. Each child writes
//! the values its graph fired to a file of its own.

mod kafka_common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cloacina::kafka::rdkafka::mocking::MockCluster;
use cloacina::kafka::KafkaSource;
use cloacina::prelude::*;
use kafka_common::{committed, numbers, produce};

const CHILD_ENV: &str = "KAFKA_GROUP_CHILD";
const OUT_ENV: &str = "KAFKA_GROUP_OUT";
const TOPIC: &str = "shared";
const GROUP: &str = "pair";
const PARTITIONS: i32 = 4;
const RECORDS: u64 = 20_000;
/// Reactor queue sizes of each child: what can be in flight when partitions move.
const INBOUND: usize = 256;
const QUEUE: usize = 256;
/// How often a child commits.
const COMMIT_EVERY: Duration = Duration::from_millis(50);
/// Records a child can fire between its last accepted commit and the first commit the
/// coordinator refuses (one commit interval: at least 1 ms per record, so at most 50),
/// with slack for the commit's own round trip.
const FIRED_PER_COMMIT: usize = 128;

/// A child: consume, write each fired value to its file; print `assigned` once it has
/// partitions; stop gracefully when its stdin closes or the group committed everything.
#[test]
fn kafka_group_child() {
    let Ok(brokers) = std::env::var(CHILD_ENV) else {
        return;
    };
    let out_path = std::env::var(OUT_ENV).expect("output path");
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            stop.store(true, Ordering::Relaxed);
        });
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let fired: Arc<Mutex<Vec<u64>>> = Arc::default();
        let node_fired = Arc::clone(&fired);
        let graph = GraphBuilder::new("pair")
            .async_node("echo", (source::<u64>("n"),), move |n: Option<&u64>| {
                let v = n.copied().unwrap_or(0);
                node_fired.lock().expect("fired").push(v);
                async move {
                    // At least 1 ms per record (over 20 s for the whole topic): the
                    // rebalances land mid-stream, and one commit interval holds few records.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    v
                }
            })
            .build()
            .expect("graph");
        let kafka = KafkaSource::<u64>::json(&brokers, GROUP, &[TOPIC])
            .commit_every(COMMIT_EVERY)
            // No member is killed here: a long session keeps a member starved of CPU (a
            // loaded CI machine) in the group, so only the forced rebalances move
            // partitions. The mock coordinator waits the session less one second before it
            // forms each new generation.
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "3000")
            .set("fetch.wait.max.ms", "10");
        let stats = kafka.stats();
        let engine = EmbeddedGraph::builder(graph)
            .strategy(InputStrategy::Sequential)
            .inbound_capacity(INBOUND)
            .queue_limit(QUEUE)
            .accumulator_factory("n", move || kafka.clone())
            .start()
            .expect("start");
        kafka_common::announce_assigned(&stats, "GROUP assigned").await;
        let deadline = Instant::now() + Duration::from_secs(120);
        while !stop.load(Ordering::Relaxed)
            && Instant::now() < deadline
            && committed(&brokers, GROUP, TOPIC, PARTITIONS)
                .iter()
                .sum::<i64>()
                < RECORDS as i64
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        engine.shutdown().await.expect("shutdown");
        let mut out = std::fs::File::create(&out_path).expect("output file");
        for v in fired.lock().expect("fired").iter() {
            writeln!(out, "{v}").expect("write");
        }
        eprintln!(
            "child: {} records, {} commits, {} commit failures, {} rebalance holds",
            stats.records(),
            stats.commits(),
            stats.commit_failures(),
            stats.rebalance_holds()
        );
        println!("GROUP done {} rebalances", stats.rebalances());
    });
}

fn spawn_child(brokers: &str, out: &std::path::Path) -> kafka_common::Child {
    let out = out.to_string_lossy();
    kafka_common::Child::spawn(
        "kafka_group_child",
        &[(CHILD_ENV, brokers), (OUT_ENV, out.as_ref())],
    )
}

#[test]
fn two_processes_share_a_group_through_forced_rebalances() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic(TOPIC, PARTITIONS, 1).expect("topic");
    let brokers = mock.bootstrap_servers();
    produce(&brokers, TOPIC, PARTITIONS, 0, &numbers(0..RECORDS));
    let dir = tempfile::tempdir().expect("temp dir");
    let (out_a, out_b) = (dir.path().join("a"), dir.path().join("b"));

    let mut a = spawn_child(&brokers, &out_a);
    assert!(
        a.wait_for("GROUP assigned", Duration::from_secs(60)),
        "A never got partitions"
    );
    std::thread::sleep(Duration::from_millis(500));
    let before_b = committed(&brokers, GROUP, TOPIC, PARTITIONS)
        .iter()
        .sum::<i64>();
    // B joins mid-stream: the first rebalance.
    let mut b = spawn_child(&brokers, &out_b);
    assert!(
        b.wait_for("GROUP assigned", Duration::from_secs(60)),
        "B never got partitions"
    );
    std::thread::sleep(Duration::from_millis(1000));
    // A leaves gracefully: the second rebalance.
    let before_a_left = committed(&brokers, GROUP, TOPIC, PARTITIONS)
        .iter()
        .sum::<i64>();
    drop(a.process.stdin.take());
    assert!(
        a.wait_for("rebalances", Duration::from_secs(60)),
        "A did not stop"
    );
    assert!(a.process.wait().expect("wait A").success());
    assert!(
        b.wait_for("rebalances", Duration::from_secs(120)),
        "B did not finish"
    );
    assert!(b.process.wait().expect("wait B").success());

    let mut seen: HashMap<u64, u32> = HashMap::new();
    let mut by_child = [0usize; 2];
    for (i, path) in [&out_a, &out_b].iter().enumerate() {
        for line in std::fs::read_to_string(path).expect("child output").lines() {
            *seen.entry(line.parse().expect("a value")).or_default() += 1;
            by_child[i] += 1;
        }
    }
    let missing: Vec<u64> = (0..RECORDS).filter(|v| !seen.contains_key(v)).collect();
    let repeated: u32 = seen.values().map(|n| n - 1).sum();
    eprintln!(
        "group of two processes: {RECORDS} records, A fired {} and B {}, {repeated} fired twice; committed {before_b} when B joined, {before_a_left} when A left",
        by_child[0], by_child[1]
    );
    assert!(
        missing.is_empty(),
        "records never fired: {:?}",
        &missing[..missing.len().min(20)]
    );
    assert!(
        before_b > 0 && before_a_left < RECORDS as i64,
        "both rebalances landed mid-stream"
    );
    // At-least-once: only records not committed when partitions moved repeat. The mock
    // coordinator refuses every commit from the moment the group starts rebalancing (Apache
    // Kafka accepts them until the new generation forms), so at each of the two rebalances
    // the member losing partitions repeats what it fired in the commit interval before the
    // first refusal, plus what its queues held then; after that refusal it takes no more
    // records until its partitions have moved.
    let bound = 2 * (INBOUND + QUEUE + FIRED_PER_COMMIT) as u32;
    assert!(repeated <= bound, "{repeated} repeats, more than {bound}");
    assert_eq!(
        committed(&brokers, GROUP, TOPIC, PARTITIONS)
            .iter()
            .sum::<i64>(),
        RECORDS as i64
    );
    drop(mock);
}
