//! Helpers shared by the Kafka tests: a mock cluster, a producer, committed offsets.

#![allow(dead_code)]

use std::time::Duration;

use cloacina::kafka::rdkafka::config::ClientConfig;
use cloacina::kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use cloacina::kafka::rdkafka::mocking::MockCluster;
use cloacina::kafka::rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use cloacina::kafka::rdkafka::{Offset, TopicPartitionList};
use cloacina::prelude::*;

pub const PATIENCE: Duration = Duration::from_secs(30);

pub struct Cluster {
    // Kept alive for the test; dropped last.
    pub mock: MockCluster<'static, cloacina::kafka::rdkafka::producer::DefaultProducerContext>,
    pub brokers: String,
}

pub fn cluster(topic: &str, partitions: i32) -> Cluster {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic(topic, partitions, 1).expect("topic");
    let brokers = mock.bootstrap_servers();
    Cluster { mock, brokers }
}

/// Produces `payloads` to `topic` (keys "0", "1", ... from `first_key`), round-robin over
/// partitions, and waits until all are acknowledged.
pub fn produce(brokers: &str, topic: &str, partitions: i32, first_key: u64, payloads: &[String]) {
    produce_with(
        brokers,
        topic,
        partitions,
        first_key,
        payloads,
        &[("linger.ms", "5")],
    );
}

/// [`produce`] one record per batch. `tansu` 0.6 skips the rest of a record batch when a
/// fetch starts inside it (a consumer resuming a paused partition, or restarting from a
/// committed offset): the tests against it produce unbatched so that such a fetch always
/// starts on a batch of its own.
pub fn produce_unbatched(
    brokers: &str,
    topic: &str,
    partitions: i32,
    first_key: u64,
    payloads: &[String],
) {
    produce_with(
        brokers,
        topic,
        partitions,
        first_key,
        payloads,
        &[("linger.ms", "0"), ("batch.num.messages", "1")],
    );
}

/// [`produce`] with producer `settings`.
pub fn produce_with(
    brokers: &str,
    topic: &str,
    partitions: i32,
    first_key: u64,
    payloads: &[String],
    settings: &[(&str, &str)],
) {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    for (key, value) in settings {
        config.set(*key, *value);
    }
    let producer: BaseProducer = config.create().expect("producer");
    for (i, payload) in payloads.iter().enumerate() {
        let key = (first_key + i as u64).to_string();
        let partition = (i as i32) % partitions;
        loop {
            let record = BaseRecord::<String, String>::to(topic)
                .key(&key)
                .payload(payload)
                .partition(partition);
            match producer.send(record) {
                Ok(()) => break,
                Err((_, _)) => {
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
}

pub fn numbers(range: std::ops::Range<u64>) -> Vec<String> {
    range.map(|n| n.to_string()).collect()
}

/// Committed offsets of `group` on `topic`, per partition (0 where none).
pub fn committed(brokers: &str, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    (0..partitions)
        .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => 0,
        })
        .collect()
}

pub fn echo_graph() -> CompiledGraph {
    GraphBuilder::new("kafka")
        .node("echo", (source::<u64>("n"),), |n: Option<&u64>| {
            n.copied().unwrap_or(0)
        })
        .build()
        .expect("graph")
}

/// Set to `1` (as `.ci/run` does) to make the tests against `tansu` fail instead of skipping
/// when its binary is missing.
pub const REQUIRE_TANSU_VAR: &str = "CLOACINA_REQUIRE_TANSU";

/// A real Kafka-compatible broker (`tansu`, in-memory storage) on a loopback port, started
/// for one test and killed when dropped.
pub struct Tansu {
    child: std::process::Child,
    bin: std::path::PathBuf,
    pub brokers: String,
}

/// The `tansu` binary: `CLOACINA_TANSU_BIN`, else `tansu` on the `PATH`, else cargo's bin
/// directory.
pub fn tansu_bin() -> Option<std::path::PathBuf> {
    if let Ok(bin) = std::env::var("CLOACINA_TANSU_BIN") {
        return Some(bin.into());
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("tansu"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let home = std::env::var_os("CARGO_HOME")
            .map(std::path::PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cargo"))
            })?;
        let bin = home.join("bin").join("tansu");
        bin.is_file().then_some(bin)
    })
}

impl Tansu {
    /// Starts a broker, or returns `None` (saying why) when the binary is absent; panics
    /// instead when [`REQUIRE_TANSU_VAR`] is `1`.
    pub fn start() -> Option<Self> {
        let Some(bin) = tansu_bin() else {
            if std::env::var(REQUIRE_TANSU_VAR).is_ok_and(|v| v.trim() == "1") {
                panic!("{REQUIRE_TANSU_VAR}=1 but no `tansu` binary (cargo install tansu --locked --features dynostore)");
            }
            eprintln!("skipped: no `tansu` binary on PATH or in ~/.cargo/bin (cargo install tansu --locked --features dynostore)");
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = std::process::Command::new(&bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start tansu");
        let tansu = Self {
            child,
            bin,
            brokers: format!("127.0.0.1:{port}"),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "tansu did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(tansu)
    }

    /// Creates `topic` with `partitions` partitions.
    pub fn create_topic(&self, topic: &str, partitions: i32) {
        let status = std::process::Command::new(&self.bin)
            .args([
                "topic",
                "create",
                "--broker",
                &format!("tcp://{}", self.brokers),
                "--partitions",
                &partitions.to_string(),
                topic,
            ])
            .status()
            .expect("tansu topic create");
        assert!(status.success(), "tansu topic create {topic}: {status:?}");
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// This test binary run again as a child process, for one test (`--exact name`): stdin and
/// stdout piped, its stdout lines read on a thread of their own.
pub struct Child {
    pub process: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Child {
    /// Starts the test `name` of this binary with `envs` set.
    pub fn spawn(name: &str, envs: &[(&str, &str)]) -> Self {
        use std::io::BufRead;
        let mut cmd = std::process::Command::new(std::env::current_exe().expect("test binary"));
        cmd.args(["--exact", name, "--nocapture", "--test-threads=1"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit());
        for (key, value) in envs {
            cmd.env(key, value);
        }
        let mut process = cmd.spawn().expect("child");
        let stdout = process.stdout.take().expect("piped stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        // Reads to the end, so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        Self { process, lines }
    }

    /// Waits (up to `patience`) for a line of the child's stdout ending with `want`.
    pub fn wait_for(&self, want: &str, patience: Duration) -> bool {
        let deadline = std::time::Instant::now() + patience;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if line.trim_end().ends_with(want) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        false
    }
}

/// Values of the firings seen until `want` distinct ones, then half a second more.
pub async fn fired(sub: &mut Subscription, want: usize) -> std::collections::HashMap<u64, u32> {
    let mut seen: std::collections::HashMap<u64, u32> = std::collections::HashMap::new();
    let note = |f: &Firing, seen: &mut std::collections::HashMap<u64, u32>| {
        if let GraphResult::Completed { outputs } = &f.result {
            *seen
                .entry(*outputs.get::<u64>("echo").expect("echo"))
                .or_default() += 1;
        }
    };
    tokio::time::timeout(PATIENCE, async {
        while seen.len() < want {
            let f = sub.recv().await.expect("open").expect("not lagged");
            note(&f, &mut seen);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {} of {want} values fired", seen.len()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    while let Ok(f) = sub.try_recv() {
        note(&f, &mut seen);
    }
    seen
}

/// Waits until the source got its first partitions, then prints `line` (a child's signal to
/// its parent).
pub async fn announce_assigned(stats: &cloacina::kafka::KafkaStats, line: &str) {
    while stats.rebalances() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!("{line}");
}

/// How often each value was recorded as a boundary of `reactor` in `ledger`.
pub async fn recorded_values(
    ledger: &dyn cloacina::ledger::Ledger,
    reactor: &str,
) -> std::collections::HashMap<u64, u32> {
    let mut counts = std::collections::HashMap::new();
    for b in ledger
        .boundaries(&cloacina::ledger::BoundaryQuery::reactor(reactor))
        .await
        .expect("read boundaries")
    {
        let v: u64 = cloacina::graph::codec::decode(&b.value).expect("a u64");
        *counts.entry(v).or_default() += 1;
    }
    counts
}
