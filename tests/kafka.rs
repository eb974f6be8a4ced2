//! The Kafka stream accumulator against librdkafka's mock cluster (in this process): every
//! record fires, offsets are committed only past fired records, a restart resumes after the
//! last commit, undecodable records are dead letters that never stop the stream, a full
//! reactor queue pauses the partitions, an unknown topic is a clear error, and two consumers
//! of one group share the partitions through a rebalance.

mod kafka_common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloacina::kafka::rdkafka::config::ClientConfig;
use cloacina::kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use cloacina::kafka::{Decoder, KafkaRecord, KafkaSource, KafkaStats};
use cloacina::prelude::*;
use kafka_common::{cluster, committed, echo_graph, numbers, produce, PATIENCE};

/// Counts each value the subscriber receives, until `want` distinct values are seen.
async fn collect(sub: &mut Subscription, want: usize, seen: &mut HashMap<u64, u32>) {
    tokio::time::timeout(PATIENCE, async {
        while seen.len() < want {
            let f = sub.recv().await.expect("open").expect("not lagged");
            if let GraphResult::Completed { outputs } = &f.result {
                *seen
                    .entry(*outputs.get::<u64>("echo").expect("echo"))
                    .or_default() += 1;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {} of {want} values fired", seen.len()));
}

fn start(source: KafkaSource<u64>) -> EmbeddedGraph {
    EmbeddedGraph::builder(echo_graph())
        .strategy(InputStrategy::Sequential)
        .accumulator_factory("n", move || source.clone())
        .start()
        .expect("start")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_fires_once_and_a_restart_resumes_after_the_last_commit() {
    let c = cluster("numbers", 4);
    produce(&c.brokers, "numbers", 4, 0, &numbers(0..2000));
    let source = KafkaSource::<u64>::json(&c.brokers, "g1", &["numbers"])
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500");
    let stats = source.stats();
    let engine = start(source.clone());
    let mut sub = engine.subscribe();
    let mut seen = HashMap::new();
    collect(&mut sub, 2000, &mut seen).await;
    engine.shutdown().await.expect("shutdown");
    assert!(seen.values().all(|n| *n == 1), "no value fired twice");
    assert_eq!(stats.records(), 2000);
    assert_eq!(stats.boundaries(), 2000);
    // Graceful close: everything fired was committed.
    let offsets = committed(&c.brokers, "g1", "numbers", 4);
    assert_eq!(offsets.iter().sum::<i64>(), 2000, "{offsets:?}");

    // A second life of the same group reads only what came after.
    produce(&c.brokers, "numbers", 4, 2000, &numbers(2000..2500));
    let engine = start(source);
    let mut sub = engine.subscribe();
    let mut later = HashMap::new();
    collect(&mut sub, 500, &mut later).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Ok(f) = sub.try_recv() {
        if let GraphResult::Completed { outputs } = &f.result {
            *later
                .entry(*outputs.get::<u64>("echo").expect("echo"))
                .or_default() += 1;
        }
    }
    engine.shutdown().await.expect("shutdown");
    let mut values: Vec<u64> = later.keys().copied().collect();
    values.sort_unstable();
    assert_eq!(
        values,
        (2000..2500).collect::<Vec<_>>(),
        "resumed after the commit"
    );
    assert!(later.values().all(|n| *n == 1));
    drop(c.mock);
}

/// Offsets are committed only past records whose firings completed: with the graph held, the
/// group's committed offsets never pass what fired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_are_committed_only_past_fired_records() {
    let c = cluster("held", 1);
    produce(&c.brokers, "held", 1, 0, &numbers(0..100));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let g = Arc::clone(&gate);
    let graph = GraphBuilder::new("kafka")
        .async_node("echo", (source::<u64>("n"),), move |n: Option<&u64>| {
            let (v, g) = (n.copied().unwrap_or(0), Arc::clone(&g));
            async move {
                g.acquire().await.expect("gate").forget();
                v
            }
        })
        .build()
        .expect("graph");
    let source = KafkaSource::<u64>::json(&c.brokers, "g2", &["held"])
        .commit_every(Duration::from_millis(20))
        .close_timeout(Duration::from_millis(200));
    let engine = EmbeddedGraph::builder(graph)
        .strategy(InputStrategy::Sequential)
        .accumulator_factory("n", move || source.clone())
        .start()
        .expect("start");
    gate.add_permits(10);
    tokio::time::timeout(PATIENCE, async {
        while engine.reactor().stats().fires < 10 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("10 firings");
    // Several commit intervals pass; the graph is stuck on the 11th record.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(committed(&c.brokers, "g2", "held", 1), [10]);
    gate.add_permits(1000);
    engine.shutdown().await.expect("shutdown");
    assert_eq!(committed(&c.brokers, "g2", "held", 1), [100]);
    drop(c.mock);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_records_are_dead_letters_and_the_stream_goes_on() {
    let c = cluster("mixed", 2);
    let payloads: Vec<String> = (0..300u64)
        .map(|n| {
            if n % 10 == 3 {
                format!("not json {n}")
            } else {
                n.to_string()
            }
        })
        .collect();
    produce(&c.brokers, "mixed", 2, 0, &payloads);
    c.mock
        .create_topic("dead", 1, 1)
        .expect("dead-letter topic");
    let source = KafkaSource::<u64>::json(&c.brokers, "g3", &["mixed"]).dead_letter_topic("dead");
    let stats: Arc<KafkaStats> = source.stats();
    let engine = start(source);
    let mut sub = engine.subscribe();
    let mut seen = HashMap::new();
    collect(&mut sub, 270, &mut seen).await;
    engine.shutdown().await.expect("shutdown");
    assert_eq!(stats.dead_letters(), 30);
    assert!(seen.keys().all(|n| n % 10 != 3));
    assert_eq!(
        committed(&c.brokers, "g3", "mixed", 2).iter().sum::<i64>(),
        300,
        "dead letters are committed past"
    );
    assert_eq!(stats.dead_letters_unsent(), 0);
    // Every dead letter is in the dead-letter topic, with its payload and why.
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &c.brokers)
        .set("group.id", "dead-reader")
        .set("session.timeout.ms", "6000")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    reader.subscribe(&["dead"]).expect("subscribe");
    let mut dead = Vec::new();
    let deadline = std::time::Instant::now() + PATIENCE;
    while dead.len() < 30 && std::time::Instant::now() < deadline {
        use cloacina::kafka::rdkafka::message::{Headers, Message};
        if let Some(Ok(m)) = reader.poll(Duration::from_millis(100)) {
            let payload = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
            let error = m
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == "cloacina-error"))
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned());
            assert!(payload.starts_with("not json"), "{payload}");
            assert!(
                error.is_some_and(|e| e.contains("not JSON")),
                "a reason header"
            );
            dead.push(payload);
        }
    }
    assert_eq!(dead.len(), 30);
    drop(c.mock);
}

/// A reactor queue of 8 behind a slower graph: the source waits for room, pauses its
/// partitions when the reactor stays full (not at a brief stall), and every record still
/// fires exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_reactor_queue_pauses_the_partitions_and_nothing_is_lost() {
    let c = cluster("flood", 4);
    produce(&c.brokers, "flood", 4, 0, &numbers(0..10_000));
    let graph = GraphBuilder::new("kafka")
        .async_node("echo", (source::<u64>("n"),), |n: Option<&u64>| {
            let v = n.copied().unwrap_or(0);
            async move {
                // Stalls longer than records wait for room (250 ms) before the source
                // pauses; shorter stalls do not pause (what was prefetched is kept).
                if v % 2500 == 0 {
                    tokio::time::sleep(Duration::from_millis(400)).await;
                } else if v % 500 == 0 {
                    tokio::time::sleep(Duration::from_millis(40)).await;
                }
                v
            }
        })
        .build()
        .expect("graph");
    let source = KafkaSource::<u64>::json(&c.brokers, "g4", &["flood"]);
    let stats = source.stats();
    let engine = EmbeddedGraph::builder(graph)
        .strategy(InputStrategy::Sequential)
        .inbound_capacity(8)
        .queue_limit(8)
        .accumulator_factory("n", move || source.clone())
        .start()
        .expect("start");
    let mut sub = engine.subscribe();
    let mut seen = HashMap::new();
    collect(&mut sub, 10_000, &mut seen).await;
    engine.shutdown().await.expect("shutdown");
    assert!(seen.values().all(|n| *n == 1));
    eprintln!("backpressure: {} pauses", stats.pauses());
    assert!(stats.pauses() > 0, "the queue filled up: partitions paused");
    // Four long stalls (one per 2,500 records) pause; the sixteen short ones should not
    // (4 pauses here): a loaded machine may stretch a few, but not all of them.
    assert!(
        stats.pauses() < 20,
        "a brief stall does not pause: {} pauses for 20 stalls",
        stats.pauses()
    );
    drop(c.mock);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_topic_is_a_clear_error() {
    let c = cluster("exists", 1);
    let source = KafkaSource::<u64>::json(&c.brokers, "g5", &["nope"])
        .connect_timeout(Duration::from_secs(5));
    let engine = EmbeddedGraph::builder(echo_graph())
        .restart_policy(RestartPolicy::never())
        .accumulator_factory("n", move || source.clone())
        .start()
        .expect("start");
    tokio::time::timeout(PATIENCE, async {
        while engine.accumulator_health()[0].1 != AccumulatorHealth::Failed {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the source fails");
    let report = engine.shutdown().await.expect("shutdown");
    let message = &report.accumulator_errors[0].1;
    assert!(message.contains("topic `nope` does not exist"), "{message}");
    drop(c.mock);
}

/// A source restarted after a panic (its decoder's, here) commits only past records that
/// fired: the reactor's delivery watermark also counts the boundaries the failed instance
/// sent, and they must not retire the new instance's records early (a crash then would lose
/// them). The graph holds from record 1,200 on; while it holds, the group's committed
/// offset stays at or below 1,200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_source_commits_only_past_records_that_fired() {
    const RECORDS: u64 = 2000;
    const HOLD_FROM: u64 = 1200;
    let c = cluster("restart", 1);
    produce(&c.brokers, "restart", 1, 0, &numbers(0..RECORDS));
    let panicked = Arc::new(AtomicBool::new(false));
    let decoder = {
        let panicked = Arc::clone(&panicked);
        Decoder::from_fn(move |r: &KafkaRecord<'_>| {
            let v: u64 =
                serde_json::from_slice(r.payload.unwrap_or_default()).map_err(|e| e.to_string())?;
            if v == 500 && !panicked.swap(true, Ordering::SeqCst) {
                panic!("a decoder bug at record {v}");
            }
            Ok(Some(v))
        })
    };
    let kafka = KafkaSource::new(&c.brokers, "g-restart", &["restart"], decoder)
        .commit_every(Duration::from_millis(20))
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500");
    let stats = kafka.stats();
    let open = Arc::new(AtomicBool::new(false));
    let fired: Arc<Mutex<HashMap<u64, u32>>> = Arc::default();
    let graph = {
        let (open, fired) = (Arc::clone(&open), Arc::clone(&fired));
        GraphBuilder::new("restart")
            .async_node("echo", (source::<u64>("n"),), move |n: Option<&u64>| {
                let v = n.copied().unwrap_or(0);
                let (open, fired) = (Arc::clone(&open), Arc::clone(&fired));
                async move {
                    while v >= HOLD_FROM && !open.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    *fired.lock().expect("fired").entry(v).or_default() += 1;
                    v
                }
            })
            .build()
            .expect("graph")
    };
    let engine = EmbeddedGraph::builder(graph)
        .strategy(InputStrategy::Sequential)
        .restart_policy(RestartPolicy {
            initial_backoff: Duration::from_millis(50),
            ..RestartPolicy::default()
        })
        .accumulator_factory("n", move || kafka.clone())
        .start()
        .expect("start");
    let fired_below = |limit: u64| {
        let fired = fired.lock().expect("fired");
        (0..limit).filter(|v| fired.contains_key(v)).count() as u64
    };
    tokio::time::timeout(PATIENCE, async {
        while fired_below(HOLD_FROM) < HOLD_FROM {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the records before the hold fire");
    assert!(panicked.load(Ordering::SeqCst), "the first instance failed");
    // Several commit intervals while the graph holds.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let brokers = c.brokers.clone();
    let held_at =
        tokio::task::spawn_blocking(move || committed(&brokers, "g-restart", "restart", 1))
            .await
            .expect("committed")[0];
    assert!(
        held_at <= HOLD_FROM as i64,
        "committed to {held_at} while record {HOLD_FROM} had not fired"
    );
    open.store(true, Ordering::SeqCst);
    tokio::time::timeout(PATIENCE, async {
        while fired_below(RECORDS) < RECORDS {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("every record fires");
    engine.shutdown().await.expect("shutdown");
    assert!(
        stats.records() > RECORDS,
        "the restart read some records again"
    );
    assert_eq!(
        committed(&c.brokers, "g-restart", "restart", 1),
        [RECORDS as i64],
        "shutdown commits everything that fired"
    );
    drop(c.mock);
}

/// `max_in_flight(W)`: the consumer never has more than W records in the reactor's hands.
/// A record is done only after its firing completes, so at each firing the boundaries the
/// consumer has sent, less the firings already completed, bound what it has in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_flight_window_caps_the_records_in_the_reactors_hands() {
    const RECORDS: usize = 1500;
    const WINDOW: u64 = 16;
    let c = cluster("window", 2);
    produce(&c.brokers, "window", 2, 0, &numbers(0..RECORDS as u64));
    let kafka = KafkaSource::<u64>::json(&c.brokers, "g-window", &["window"])
        .max_in_flight(WINDOW as usize);
    let stats = kafka.stats();
    let completed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let widest = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let graph = {
        let (stats, completed, widest) = (stats.clone(), completed.clone(), widest.clone());
        GraphBuilder::new("window")
            .node("echo", (source::<u64>("n"),), move |n: Option<&u64>| {
                let in_flight = stats.boundaries() - completed.load(Ordering::SeqCst);
                widest.fetch_max(in_flight, Ordering::SeqCst);
                std::thread::sleep(Duration::from_micros(100));
                completed.fetch_add(1, Ordering::SeqCst);
                n.copied().unwrap_or(0)
            })
            .build()
            .expect("graph")
    };
    let engine = EmbeddedGraph::builder(graph)
        .strategy(InputStrategy::Sequential)
        .accumulator_factory("n", move || kafka.clone())
        .start()
        .expect("start");
    let mut sub = engine.subscribe();
    let mut seen = HashMap::new();
    collect(&mut sub, RECORDS, &mut seen).await;
    engine.shutdown().await.expect("shutdown");
    assert!(seen.values().all(|n| *n == 1), "no value fired twice");
    let widest = widest.load(Ordering::SeqCst);
    assert!(
        (1..=WINDOW).contains(&widest),
        "at most {WINDOW} records in flight, saw {widest}"
    );
    drop(c.mock);
}

/// Two consumers of one group: the second joins once the first is well into the topic (a
/// rebalance mid-stream); every record fires, duplicates (records whose commit the coordinator
/// refused while the group rebalanced: the mock cluster refuses every commit until the new
/// generation forms) stay within what each member's in-flight window allows per rebalance,
/// and the group ends committed to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_consumers_share_a_group_through_a_rebalance() {
    const RECORDS: usize = 4000;
    const WINDOW: usize = 64;
    let c = cluster("shared", 4);
    produce(&c.brokers, "shared", 4, 0, &numbers(0..RECORDS as u64));
    let seen: Arc<Mutex<HashMap<u64, u32>>> = Arc::default();
    let fired = |seen: &Arc<Mutex<HashMap<u64, u32>>>| seen.lock().expect("seen").len();
    // Each member's name and counters.
    type Members = Arc<Mutex<Vec<(String, Arc<KafkaStats>)>>>;
    let stats: Members = Arc::default();
    let make = |name: &str| {
        let kafka = KafkaSource::<u64>::json(&c.brokers, "g6", &["shared"])
            .commit_every(Duration::from_millis(20))
            // A member the coordinator is waiting for is given up on quickly.
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "500")
            .max_in_flight(WINDOW);
        stats
            .lock()
            .expect("stats")
            .push((name.to_owned(), kafka.stats()));
        let seen = Arc::clone(&seen);
        let graph = GraphBuilder::new(name)
            .async_node("echo", (source::<u64>("n"),), move |n: Option<&u64>| {
                let (v, seen) = (n.copied().unwrap_or(0), Arc::clone(&seen));
                async move {
                    *seen.lock().expect("seen").entry(v).or_default() += 1;
                    tokio::time::sleep(Duration::from_micros(200)).await;
                    v
                }
            })
            .build()
            .expect("graph");
        EmbeddedGraph::builder(graph)
            .strategy(InputStrategy::Sequential)
            .accumulator_factory("n", move || kafka.clone())
            .start()
            .expect("start")
    };
    let first = make("first");
    tokio::time::timeout(PATIENCE, async {
        while fired(&seen) < RECORDS / 8 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the first consumer fires");
    let second = make("second");
    let at_join = fired(&seen);
    // Every record fires, and the group commits up to the end (a record whose commit was
    // refused during the rebalance is read again by its new owner, fired, and committed).
    let brokers = c.brokers.clone();
    let mut group_at = Vec::new();
    let settled = tokio::time::timeout(2 * PATIENCE, async {
        loop {
            if fired(&seen) == RECORDS {
                let brokers = brokers.clone();
                group_at =
                    tokio::task::spawn_blocking(move || committed(&brokers, "g6", "shared", 4))
                        .await
                        .expect("committed");
                if group_at.iter().sum::<i64>() == RECORDS as i64 {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    if settled.is_err() {
        let stats: Vec<String> = stats
            .lock()
            .expect("stats")
            .iter()
            .map(|(name, s)| {
                format!(
                    "{name}: records {} commits {} failed {} holds {} rebalances {}",
                    s.records(),
                    s.commits(),
                    s.commit_failures(),
                    s.rebalance_holds(),
                    s.rebalances()
                )
            })
            .collect();
        panic!(
            "every record fires and is committed: fired {} of {RECORDS}, committed {group_at:?}; {stats:?}",
            fired(&seen)
        );
    }
    first.shutdown().await.expect("shutdown");
    second.shutdown().await.expect("shutdown");
    let seen = seen.lock().expect("seen");
    let duplicated: u32 = seen.values().map(|n| n - 1).sum();
    // Assignments and revocations, of both members: more than the revocations.
    let rebalances: u64 = stats
        .lock()
        .expect("stats")
        .iter()
        .map(|(_, s)| s.rebalances())
        .sum();
    eprintln!(
        "rebalance: {RECORDS} records, second joined after {at_join}, {duplicated} fired twice, \
         {rebalances} assignments and revocations"
    );
    assert!(at_join < RECORDS, "the rebalance happened mid-stream");
    // A revocation repeats the records in flight (at most the window) and those done since
    // the last commit that went through (commits are every 20 ms): twice the window is ample.
    assert!(
        u64::from(duplicated) <= rebalances * 2 * WINDOW as u64,
        "at-least-once: only records in flight at a rebalance repeat ({duplicated} repeated, \
         {rebalances} assignments and revocations)"
    );
    assert_eq!(
        committed(&c.brokers, "g6", "shared", 4).iter().sum::<i64>(),
        RECORDS as i64,
        "shutdown commits nothing less"
    );
    drop(c.mock);
}

/// Broker loss: the source reports Disconnected (the reactor turns Degraded) while the only
/// broker is down, and Live again once records flow after it returns; nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_loss_is_disconnected_and_recovers() {
    let c = cluster("flaky", 1);
    produce(&c.brokers, "flaky", 1, 0, &numbers(0..100));
    let source = KafkaSource::<u64>::json(&c.brokers, "g7", &["flaky"]);
    let engine = start(source);
    let mut sub = engine.subscribe();
    let mut seen = HashMap::new();
    collect(&mut sub, 100, &mut seen).await;
    c.mock.broker_down(1).expect("broker down");
    let health_is = |want: AccumulatorHealth| {
        let engine = &engine;
        async move {
            tokio::time::timeout(PATIENCE, async {
                while engine.accumulator_health()[0].1 != want {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("never {want:?}: {:?}", engine.accumulator_health()))
        }
    };
    health_is(AccumulatorHealth::Disconnected).await;
    // The reactor takes the change in on its own loop: wait for it rather than race it.
    tokio::time::timeout(PATIENCE, async {
        while !matches!(
            engine.reactor().health(),
            cloacina::reactor::ReactorHealth::Degraded { .. }
        ) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("reactor never Degraded: {:?}", engine.reactor().health()));
    c.mock.broker_up(1).expect("broker up");
    produce(&c.brokers, "flaky", 1, 100, &numbers(100..200));
    collect(&mut sub, 200, &mut seen).await;
    health_is(AccumulatorHealth::Live).await;
    engine.shutdown().await.expect("shutdown");
    assert!(seen.values().all(|n| *n == 1));
    drop(c.mock);
}

/// Kafka in, Kafka out: every firing's output is produced to the output topic, once (an
/// idempotent producer, a graceful shutdown that flushes), keyed as asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_produces_every_output_once() {
    let c = cluster("in", 2);
    c.mock.create_topic("out", 2, 1).expect("out topic");
    produce(&c.brokers, "in", 2, 0, &numbers(0..500));
    let engine = start(KafkaSource::<u64>::json(&c.brokers, "g8", &["in"]));
    let sink = cloacina::kafka::KafkaSink::<u64>::json(&c.brokers, "out", "echo")
        .key_with(|n| (n % 7).to_string())
        .spawn(engine.subscribe())
        .expect("sink");
    tokio::time::timeout(PATIENCE, async {
        while sink.stats().delivered() < 500 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("every output delivered");
    engine.shutdown().await.expect("shutdown");
    let stats = Arc::clone(sink.stats());
    sink.finish().await.expect("sink flushed");
    assert_eq!((stats.produced(), stats.failed()), (500, 0));
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &c.brokers)
        .set("group.id", "reader")
        // Closing a group member waits out its session on the mock cluster (45 s default).
        .set("session.timeout.ms", "6000")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer.subscribe(&["out"]).expect("subscribe");
    let mut seen: HashMap<u64, u32> = HashMap::new();
    let deadline = std::time::Instant::now() + PATIENCE;
    while seen.values().sum::<u32>() < 500 && std::time::Instant::now() < deadline {
        use cloacina::kafka::rdkafka::message::Message;
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let n: u64 = serde_json::from_slice(m.payload().expect("payload")).expect("json");
            assert_eq!(m.key(), Some((n % 7).to_string().as_bytes()), "keyed");
            *seen.entry(n).or_default() += 1;
        }
    }
    assert_eq!(seen.len(), 500);
    assert!(seen.values().all(|n| *n == 1), "each output once");
    drop(c.mock);
}
