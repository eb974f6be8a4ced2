//! Kafka benchmark: the stream accumulator against a raw rdkafka consumer, in one run.
//!
//! ```text
//! cargo run --release --example kafka_bench -- --messages 400000 --partitions 8
//! cargo run --release --example kafka_bench -- --ledger sled:///tmp/kb --brokers 127.0.0.1:9092
//! ```
//!
//! Options: `--messages N` (400,000), `--partitions P` (8), `--brokers HOST:PORT` (default: an
//! in-process librdkafka mock cluster), `--ledger URL` (adds the ledger phase; durability
//! Batched), `--latency-secs S` (5), `--batch-records B` (producer batch size, librdkafka's
//! default when absent; `--batch-records 1` for `tansu` 0.6, which skips the rest of a record
//! batch when a fetch starts inside it, as a consumer resuming a paused partition does),
//! `--max-in-flight W` (`KafkaSource::max_in_flight` for the pipeline phases; unset by default),
//! `--repeat R` (1: run the raw, pipeline and ledger phases R times, in rounds, and report
//! medians; `raw_runs`, `pipeline_runs`, `ledger_runs` list every round's rate: on a shared
//! 2-core machine one phase swings by ±30%, so quote medians).
//!
//! Produces N records (64-byte payloads, unique keys "0".."N-1") into a fresh topic, then
//! reads them all from the beginning, each phase with its own consumer group:
//! - `raw_consume_per_s`: a bare `BaseConsumer` polling on this thread, no processing;
//! - `pipeline_per_s`: `KafkaSource` (its consumer thread, key decoded as the value) into a
//!   2-node `Sequential` graph with commit-after-fire, a subscriber counting firings;
//! - `ledger_pipeline_per_s` (with `--ledger`): the same, recording into the ledger.
//!
//! Rates run from the first record (or firing) to the last. `*_cpu_us_per_record` is the
//! process's CPU time (all threads, the mock cluster's included; `/proc/self/stat`, 10 ms
//! ticks) over each whole phase (group join and shutdown included) divided by N: on a
//! 2-core machine shared by the broker, the consumer and the engine, rates swing with
//! scheduling by ±20% from run to run, while CPU per record says what each path costs.
//! `lost` and `duplicated` count keys the graph saw zero times or more than once, over every
//! pipeline phase.
//! Latency phase: records produced at 1,000/s to a second topic read by the pipeline and by a
//! raw consumer at once; `lat_*` is produce call to graph done, `sub_lat_*` to subscriber
//! receipt, `raw_lat_*` produce call to the raw consumer's receipt (the first second is
//! warm-up, not measured; both consumers set `fetch.wait.max.ms=5`, since the mock cluster
//! answers a fetch only when its wait expires). The raw consumers also get
//! `fetch.queue.backoff.ms=10`, as `KafkaSource` sets by default (librdkafka's 1 s default
//! stalls any consumer that falls behind its fetcher). Human-readable lines go to stderr; the last stdout line is JSON.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloacina::kafka::rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use cloacina::kafka::rdkafka::client::DefaultClientContext;
use cloacina::kafka::rdkafka::config::ClientConfig;
use cloacina::kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use cloacina::kafka::rdkafka::message::Message;
use cloacina::kafka::rdkafka::mocking::MockCluster;
use cloacina::kafka::rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use cloacina::kafka::{Decoder, KafkaRecord, KafkaSource};
use cloacina::prelude::*;

const USAGE: &str = "usage: kafka_bench [--messages N] [--partitions P] [--brokers HOST:PORT] \
[--ledger URL] [--latency-secs S] [--batch-records B] [--max-in-flight W] [--repeat R]";

/// Every consumer here (raw and pipeline alike) long-polls at most this long: the mock
/// cluster answers a fetch only when its wait expires, so the default 500 ms would be the
/// latency of both.
const FETCH_WAIT_MS: &str = "5";

struct Args {
    messages: u64,
    partitions: i32,
    brokers: Option<String>,
    ledger: Option<String>,
    latency_secs: u64,
    batch_records: Option<u32>,
    max_in_flight: Option<usize>,
    repeat: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        messages: 400_000,
        partitions: 8,
        brokers: None,
        ledger: None,
        latency_secs: 5,
        batch_records: None,
        max_in_flight: None,
        repeat: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| format!("{flag} needs a value; {USAGE}"))
        };
        match flag.as_str() {
            "--messages" => {
                args.messages = value()?.parse().map_err(|e| format!("--messages: {e}"))?
            }
            "--partitions" => {
                args.partitions = value()?.parse().map_err(|e| format!("--partitions: {e}"))?
            }
            "--brokers" => args.brokers = Some(value()?),
            "--ledger" => args.ledger = Some(value()?),
            "--batch-records" => {
                args.batch_records = Some(
                    value()?
                        .parse()
                        .map_err(|e| format!("--batch-records: {e}"))?,
                )
            }
            "--max-in-flight" => {
                args.max_in_flight = Some(
                    value()?
                        .parse()
                        .map_err(|e| format!("--max-in-flight: {e}"))?,
                )
            }
            "--repeat" => {
                args.repeat = value()?
                    .parse::<usize>()
                    .map_err(|e| format!("--repeat: {e}"))?
                    .max(1)
            }
            "--latency-secs" => {
                args.latency_secs = value()?
                    .parse()
                    .map_err(|e| format!("--latency-secs: {e}"))?
            }
            other => return Err(format!("unknown option {other}; {USAGE}")),
        }
    }
    Ok(args)
}

/// Creates `topic` on real brokers (the mock cluster creates its own).
async fn create_topic(brokers: &str, topic: &str, partitions: i32) -> Result<(), String> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .map_err(|e| e.to_string())?;
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .map_err(|e| e.to_string())?;
    for r in results {
        r.map_err(|(t, e)| format!("create topic {t}: {e}"))?;
    }
    Ok(())
}

/// Producer batch size (`--batch-records`), if set: read once by every producer here.
static BATCH_RECORDS: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
/// `--max-in-flight`, for every pipeline phase.
static MAX_IN_FLIGHT: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();

fn producer(brokers: &str) -> BaseProducer {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000");
    if let Some(Some(n)) = BATCH_RECORDS.get() {
        config.set("batch.num.messages", n.to_string());
    }
    config.create().expect("producer")
}

/// Sends one record, waiting for room in the producer's queue.
fn send(producer: &BaseProducer, topic: &str, key: &str, payload: &[u8], partition: i32) {
    loop {
        let record = BaseRecord::<str, [u8]>::to(topic)
            .key(key)
            .payload(payload)
            .partition(partition);
        match producer.send(record) {
            Ok(()) => return,
            Err(_) => {
                producer.poll(Duration::from_millis(5));
            }
        }
    }
}

fn produce_all(brokers: &str, topic: &str, n: u64, partitions: i32) -> f64 {
    let p = producer(brokers);
    let payload = [b'x'; 64];
    let start = Instant::now();
    for i in 0..n {
        send(
            &p,
            topic,
            &i.to_string(),
            &payload,
            (i % partitions as u64) as i32,
        );
    }
    p.flush(Duration::from_secs(120)).expect("flush");
    n as f64 / start.elapsed().as_secs_f64()
}

fn key_id(record: &KafkaRecord<'_>) -> Result<Option<u64>, String> {
    let key = record.key.ok_or("record without a key")?;
    std::str::from_utf8(key)
        .ok()
        .and_then(|k| k.parse().ok())
        .map(Some)
        .ok_or_else(|| "key is not a number".into())
}

/// A bare consumer of `topic` in `group`, from the beginning.
fn raw_consumer(brokers: &str, group: &str, topic: &str) -> BaseConsumer {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", FETCH_WAIT_MS)
        .set("fetch.queue.backoff.ms", "10")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    consumer
}

/// Reads `n` records with a bare consumer; records per second from the first to the last.
fn raw_consume(brokers: &str, topic: &str, group: &str, n: u64) -> f64 {
    let consumer = raw_consumer(brokers, group, topic);
    let (mut got, mut first) = (0u64, None);
    let deadline = Instant::now() + Duration::from_secs(300);
    while got < n && Instant::now() < deadline {
        if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100)) {
            first.get_or_insert_with(Instant::now);
            got += 1;
        }
    }
    let secs = first.map_or(f64::NAN, |f| f.elapsed().as_secs_f64());
    got as f64 / secs
}

/// Per key: how many times the graph saw it; and when (ns since `base`) things happened.
struct Seen {
    count: Vec<AtomicU8>,
    /// Per key, when its firing's graph finished (only in the latency phase: the throughput
    /// phases read no clock per record, as the raw consumer reads none).
    done_ns: Option<Vec<AtomicU64>>,
}

impl Seen {
    fn new(n: u64) -> Arc<Self> {
        Arc::new(Self {
            count: (0..n).map(|_| AtomicU8::new(0)).collect(),
            done_ns: None,
        })
    }

    fn timed(n: u64) -> Arc<Self> {
        Arc::new(Self {
            count: (0..n).map(|_| AtomicU8::new(0)).collect(),
            done_ns: Some((0..n).map(|_| AtomicU64::new(0)).collect()),
        })
    }
}

fn graph(seen: Arc<Seen>, base: Instant) -> CompiledGraph {
    GraphBuilder::new("kafka_bench")
        .node("id", (source::<u64>("n"),), |n: Option<&u64>| {
            n.copied().unwrap_or(0)
        })
        .node("check", (upstream::<u64>("id"),), move |id: &u64| {
            if let Some(c) = seen.count.get(*id as usize) {
                c.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(at) = seen.done_ns.as_ref().and_then(|d| d.get(*id as usize)) {
                at.store(base.elapsed().as_nanos() as u64, Ordering::Relaxed);
            }
            *id
        })
        .build()
        .expect("graph")
}

/// Runs the pipeline over the first `n` keys of `topic`; returns firings per second (first to
/// last firing) and fills `seen`. `sub_ns` (if given) gets each key's subscriber receipt time.
/// One pipeline run's parameters.
struct Phase<'a> {
    brokers: &'a str,
    topic: &'a str,
    group: String,
    n: u64,
    ledger: Option<Arc<dyn cloacina::ledger::Ledger>>,
    seen: Arc<Seen>,
    base: Instant,
    /// Each key's subscriber receipt time, if wanted.
    sub_ns: Option<Arc<Vec<AtomicU64>>>,
    /// Told once the consumer has its partitions.
    ready: Option<tokio::sync::oneshot::Sender<()>>,
}

async fn pipeline(phase: Phase<'_>) -> f64 {
    let Phase {
        brokers,
        topic,
        group,
        n,
        ledger,
        seen,
        base,
        sub_ns,
        ready,
    } = phase;
    let group = group.as_str();
    let mut kafka = KafkaSource::new(brokers, group, &[topic], Decoder::from_fn(key_id))
        .set("fetch.wait.max.ms", FETCH_WAIT_MS)
        .set("fetch.queue.backoff.ms", "10");
    if let Some(Some(window)) = MAX_IN_FLIGHT.get() {
        kafka = kafka.max_in_flight(*window);
    }
    let stats = kafka.stats();
    // A reactor of its own per phase (its ledger records and source positions apart).
    let mut builder = EmbeddedGraph::builder(graph(seen, base))
        .name(format!("kafka_bench-{group}"))
        .strategy(InputStrategy::Sequential)
        .accumulator_factory("n", move || kafka.clone());
    if let Some(ledger) = ledger {
        builder = builder.ledger(ledger);
    }
    if std::env::var("KB_SPIN").is_ok() {
        builder = builder.low_latency(cloacina::reactor::LowLatency::default());
    }
    let engine = builder.start().expect("start");
    let mut sub = engine.subscribe();
    if let Some(ready) = ready {
        // Ready once the group has assigned the partitions (joining takes seconds).
        while stats.rebalances() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = ready.send(());
    }
    let (mut got, mut first) = (0u64, None);
    let trace = std::env::var("KB_TRACE").is_ok();
    // One timer for the whole phase (a timeout per receive would cost more than the receive).
    let _ = tokio::time::timeout(Duration::from_secs(300), async {
        while got < n {
            match sub.recv().await {
                Some(Ok(f)) => {
                    first.get_or_insert_with(Instant::now);
                    got += 1;
                    if trace && got % 50_000 == 0 {
                        eprintln!("  {got} at {:?}", first.map(|f| f.elapsed()));
                    }
                    if let (Some(sub_ns), GraphResult::Completed { outputs }) = (&sub_ns, &f.result)
                    {
                        if let Some(id) = outputs.get::<u64>("check") {
                            if let Some(slot) = sub_ns.get(*id as usize) {
                                slot.store(base.elapsed().as_nanos() as u64, Ordering::Relaxed);
                            }
                        }
                    }
                }
                Some(Err(lagged)) => eprintln!("subscriber lagged: {lagged:?}"),
                None => break,
            }
        }
    })
    .await;
    let secs = first.map_or(f64::NAN, |f| f.elapsed().as_secs_f64());
    engine.shutdown().await.expect("shutdown");
    eprintln!(
        "  source: {} records, {} pauses, {} commits",
        stats.records(),
        stats.pauses(),
        stats.commits()
    );
    got as f64 / secs
}

/// CPU time this process (every thread: the mock cluster's too) has used, in seconds, from
/// `/proc/self/stat` (10 ms ticks); NaN where that is not readable.
fn cpu_secs() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    // Fields after the command name: state is field 3, utime 14, stime 15 (USER_HZ = 100).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => (user + system) / 100.0,
        _ => f64::NAN,
    }
}

/// Process CPU microseconds per record since `since` (a [`cpu_secs`] reading).
fn cpu_us_per_record(since: f64, n: u64) -> f64 {
    (cpu_secs() - since) * 1e6 / n as f64
}

/// The median of `runs` (NaN if empty).
fn median(runs: &[f64]) -> f64 {
    let mut sorted = runs.to_vec();
    sorted.sort_by(f64::total_cmp);
    percentile(&sorted, 0.5)
}

/// `[a,b,...]` (rounded) for the JSON line.
fn json_list(runs: &[f64]) -> String {
    let items: Vec<String> = runs.iter().map(|r| format!("{r:.0}")).collect();
    format!("[{}]", items.join(","))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn lat_us(produced: &[AtomicU64], at: &[AtomicU64], from: usize) -> Vec<f64> {
    let mut v: Vec<f64> = produced
        .iter()
        .zip(at)
        .skip(from)
        .filter_map(|(p, a)| {
            let (p, a) = (p.load(Ordering::Relaxed), a.load(Ordering::Relaxed));
            (p > 0 && a >= p).then(|| (a - p) as f64 / 1000.0)
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

fn count_seen(seen: &Seen) -> (u64, u64) {
    let (mut lost, mut dup) = (0, 0);
    for c in &seen.count {
        match c.load(Ordering::Relaxed) {
            0 => lost += 1,
            k => dup += u64::from(k - 1),
        }
    }
    (lost, dup)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let _ = BATCH_RECORDS.set(args.batch_records);
    let _ = MAX_IN_FLIGHT.set(args.max_in_flight);
    let run = std::process::id();
    let mock = match &args.brokers {
        Some(_) => None,
        None => Some(MockCluster::new(1).expect("mock cluster")),
    };
    let brokers = match (&args.brokers, &mock) {
        (Some(b), _) => b.clone(),
        (None, Some(m)) => m.bootstrap_servers(),
        (None, None) => unreachable!("a mock cluster when no brokers are given"),
    };
    let topic = format!("bench-{run}");
    let lat_topic = format!("latency-{run}");
    for t in [&topic, &lat_topic] {
        match &mock {
            Some(m) => m.create_topic(t, args.partitions, 1).expect("topic"),
            None => create_topic(&brokers, t, args.partitions)
                .await
                .expect("topic"),
        }
    }
    let n = args.messages;
    let (b, t) = (brokers.clone(), topic.clone());
    let produce_per_s =
        tokio::task::spawn_blocking(move || produce_all(&b, &t, n, args.partitions))
            .await
            .expect("produce");
    eprintln!("produced {n} records at {produce_per_s:.0}/s");

    // Each round reads the topic from the beginning three ways (raw, pipeline, ledger), each
    // with a group of its own; with --repeat R the figures are medians over the R rounds.
    let base = Instant::now();
    let (mut raw_runs, mut raw_cpus) = (Vec::new(), Vec::new());
    let (mut pipe_runs, mut pipe_cpus) = (Vec::new(), Vec::new());
    let (mut ledger_runs, mut ledger_cpus) = (Vec::new(), Vec::new());
    let (mut lost, mut duplicated) = (0, 0);
    for round in 0..args.repeat {
        let (b, t) = (brokers.clone(), topic.clone());
        let cpu = cpu_secs();
        let raw = tokio::task::spawn_blocking(move || {
            raw_consume(&b, &t, &format!("raw-{run}-{round}"), n)
        })
        .await
        .expect("raw");
        raw_cpus.push(cpu_us_per_record(cpu, n));
        raw_runs.push(raw);
        eprintln!("raw consumer: {raw:.0} records/s");

        let seen = Seen::new(n);
        let cpu = cpu_secs();
        let piped = pipeline(Phase {
            brokers: &brokers,
            topic: &topic,
            group: format!("pipe-{run}-{round}"),
            n,
            ledger: None,
            seen: Arc::clone(&seen),
            base,
            sub_ns: None,
            ready: None,
        })
        .await;
        pipe_cpus.push(cpu_us_per_record(cpu, n));
        pipe_runs.push(piped);
        let (l, d) = count_seen(&seen);
        lost += l;
        duplicated += d;
        eprintln!(
            "pipeline: {piped:.0} firings/s (ratio {:.2}), lost {l}, duplicated {d}",
            piped / raw
        );

        if let Some(url) = &args.ledger {
            let ledger = cloacina::ledger::open(url).await.expect("ledger");
            let seen = Seen::new(n);
            let cpu = cpu_secs();
            let rate = pipeline(Phase {
                brokers: &brokers,
                topic: &topic,
                group: format!("ledger-{run}-{round}"),
                n,
                ledger: Some(ledger),
                seen: Arc::clone(&seen),
                base,
                sub_ns: None,
                ready: None,
            })
            .await;
            ledger_cpus.push(cpu_us_per_record(cpu, n));
            ledger_runs.push(rate);
            let (l, d) = count_seen(&seen);
            lost += l;
            duplicated += d;
            eprintln!("pipeline with ledger {url}: {rate:.0} firings/s (ratio {:.2}), lost {l}, duplicated {d}", rate / raw);
        }
    }
    let raw = median(&raw_runs);
    let raw_cpu = median(&raw_cpus);
    let piped = median(&pipe_runs);
    let piped_cpu = median(&pipe_cpus);
    let ledger_rate = (!ledger_runs.is_empty()).then(|| median(&ledger_runs));
    let ledger_cpu = (!ledger_cpus.is_empty()).then(|| median(&ledger_cpus));

    // Latency: 1,000 records/s for latency_secs (+1 s warm-up), read by both at once.
    let total = (args.latency_secs + 1) * 1000;
    let produced: Arc<Vec<AtomicU64>> = Arc::new((0..total).map(|_| AtomicU64::new(0)).collect());
    let raw_at: Arc<Vec<AtomicU64>> = Arc::new((0..total).map(|_| AtomicU64::new(0)).collect());
    let sub_at: Arc<Vec<AtomicU64>> = Arc::new((0..total).map(|_| AtomicU64::new(0)).collect());
    let lat_seen = Seen::timed(total);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let pipe = {
        let (b, t, s, sub) = (
            brokers.clone(),
            lat_topic.clone(),
            Arc::clone(&lat_seen),
            Arc::clone(&sub_at),
        );
        tokio::spawn(async move {
            pipeline(Phase {
                brokers: &b,
                topic: &t,
                group: format!("lat-pipe-{run}"),
                n: total,
                ledger: None,
                seen: s,
                base,
                sub_ns: Some(sub),
                ready: Some(ready_tx),
            })
            .await
        })
    };
    let _ = ready_rx.await;
    let (raw_ready_tx, raw_ready_rx) = std::sync::mpsc::channel::<()>();
    let raw_thread = {
        let (b, t, at) = (brokers.clone(), lat_topic.clone(), Arc::clone(&raw_at));
        std::thread::spawn(move || {
            let consumer = raw_consumer(&b, &format!("lat-raw-{run}"), &t);
            let mut ready = Some(raw_ready_tx);
            let (mut got, deadline) = (0u64, Instant::now() + Duration::from_secs(120));
            while got < total && Instant::now() < deadline {
                let polled = consumer.poll(Duration::from_millis(10));
                if ready.is_some() && consumer.assignment().is_ok_and(|a| a.count() > 0) {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                if let Some(Ok(m)) = polled {
                    let now = base.elapsed().as_nanos() as u64;
                    if let Some(id) = m
                        .key()
                        .and_then(|k| std::str::from_utf8(k).ok())
                        .and_then(|k| k.parse::<usize>().ok())
                    {
                        if let Some(slot) = at.get(id) {
                            slot.store(now, Ordering::Relaxed);
                        }
                    }
                    got += 1;
                }
            }
        })
    };
    let _ = tokio::task::spawn_blocking(move || raw_ready_rx.recv_timeout(Duration::from_secs(60)))
        .await;
    {
        let (b, t, p) = (brokers.clone(), lat_topic.clone(), Arc::clone(&produced));
        let partitions = args.partitions;
        tokio::task::spawn_blocking(move || {
            let producer: BaseProducer = ClientConfig::new()
                .set("bootstrap.servers", &b)
                .set("linger.ms", "0")
                .create()
                .expect("producer");
            let payload = [b'x'; 64];
            let start = Instant::now();
            for i in 0..total {
                let due = start + Duration::from_millis(i);
                while Instant::now() < due {
                    producer.poll(Duration::from_micros(100));
                }
                p[i as usize].store(base.elapsed().as_nanos() as u64, Ordering::Relaxed);
                send(
                    &producer,
                    &t,
                    &i.to_string(),
                    &payload,
                    (i % partitions as u64) as i32,
                );
                producer.poll(Duration::ZERO);
            }
            producer.flush(Duration::from_secs(30)).expect("flush");
        })
        .await
        .expect("latency producer");
    }
    let _ = pipe.await;
    let _ = raw_thread.join();
    let warm = 1000usize;
    let done = lat_us(&produced, lat_seen.done_ns.as_deref().unwrap_or(&[]), warm);
    let sub = lat_us(&produced, &sub_at, warm);
    let raw_lat = lat_us(&produced, &raw_at, warm);
    eprintln!(
        "latency (produce call ->): graph done p50 {:.0} us p99 {:.0} us; subscriber p50 {:.0} p99 {:.0}; raw consumer p50 {:.0} p99 {:.0} ({} / {} / {} samples)",
        percentile(&done, 0.5), percentile(&done, 0.99), percentile(&sub, 0.5), percentile(&sub, 0.99),
        percentile(&raw_lat, 0.5), percentile(&raw_lat, 0.99), done.len(), sub.len(), raw_lat.len()
    );
    let json = format!(
        "{{\"broker\":\"{}\",\"messages\":{n},\"partitions\":{},\"produce_per_s\":{produce_per_s:.0},\"raw_consume_per_s\":{raw:.0},\"pipeline_per_s\":{piped:.0},\"ratio\":{:.3},\"ledger_pipeline_per_s\":{},\"ledger_ratio\":{},\"lat_p50_us\":{:.0},\"lat_p99_us\":{:.0},\"sub_lat_p50_us\":{:.0},\"sub_lat_p99_us\":{:.0},\"raw_lat_p50_us\":{:.0},\"raw_lat_p99_us\":{:.0},\"lat_samples\":{},\"lost\":{lost},\"duplicated\":{duplicated},\"raw_cpu_us_per_record\":{raw_cpu:.3},\"pipeline_cpu_us_per_record\":{piped_cpu:.3},\"ledger_cpu_us_per_record\":{},\"repeat\":{},\"raw_runs\":{},\"pipeline_runs\":{},\"ledger_runs\":{}}}",
        if mock.is_some() { "mock" } else { brokers.as_str() },
        args.partitions,
        piped / raw,
        ledger_rate.map_or("null".into(), |r| format!("{r:.0}")),
        ledger_rate.map_or("null".into(), |r| format!("{:.3}", r / raw)),
        percentile(&done, 0.5), percentile(&done, 0.99), percentile(&sub, 0.5), percentile(&sub, 0.99),
        percentile(&raw_lat, 0.5), percentile(&raw_lat, 0.99), done.len(),
        ledger_cpu.map_or("null".into(), |c| format!("{c:.3}")),
        args.repeat,
        json_list(&raw_runs),
        json_list(&pipe_runs),
        json_list(&ledger_runs),
    );
    println!("{json}");
    if lost > 0 || duplicated > 0 {
        std::process::exit(1);
    }
}
