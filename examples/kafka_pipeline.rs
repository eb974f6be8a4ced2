//! Kafka in, Kafka out: book updates from a topic into a market-making graph, its decisions
//! produced to another topic.
//!
//! ```text
//! cargo run --release --example kafka_pipeline                          # in-process mock cluster
//! cargo run --release --example kafka_pipeline -- --brokers 127.0.0.1:9092 --books 50000
//! ```
//!
//! - `books` topic (4 partitions): `{"bid":..,"ask":..,"seq":..}` updates, produced here.
//! - `KafkaSource<Book>` (group `maker`, JSON) feeds the `book` source of a `Sequential`
//!   reactor; offsets are committed only past fired books (commit-after-fire).
//! - The graph: `decide(book)` quotes around a fair value when the spread is tight and there
//!   is edge, else stands aside.
//! - `KafkaSink<Decision>` produces every decision to the `decisions` topic, keyed by action,
//!   with an idempotent producer.
//!
//! It prints progress, then reads the `decisions` topic back and exits 0 when every book
//! produced exactly one decision record (and 1 otherwise).

use std::time::{Duration, Instant};

use cloacina::kafka::rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use cloacina::kafka::rdkafka::client::DefaultClientContext;
use cloacina::kafka::rdkafka::config::ClientConfig;
use cloacina::kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use cloacina::kafka::rdkafka::message::Message;
use cloacina::kafka::rdkafka::mocking::MockCluster;
use cloacina::kafka::rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use cloacina::kafka::{KafkaSink, KafkaSource};
use cloacina::prelude::*;
use serde::{Deserialize, Serialize};

/// A top-of-book update.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Book {
    bid: f64,
    ask: f64,
    seq: u64,
}

/// What the market maker decided for one book.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Decision {
    seq: u64,
    action: String,
    price: f64,
}

const FAIR_VALUE: f64 = 100.0;
const MIN_EDGE: f64 = 0.02;
const MAX_SPREAD: f64 = 0.20;

fn decide(book: Option<&Book>) -> Decision {
    let Some(book) = book else {
        return Decision {
            seq: 0,
            action: "wait".into(),
            price: 0.0,
        };
    };
    let (action, price) = if book.ask - book.bid >= MAX_SPREAD {
        ("stand-aside", 0.0)
    } else if FAIR_VALUE - book.ask >= MIN_EDGE {
        ("buy", book.ask)
    } else if book.bid - FAIR_VALUE >= MIN_EDGE {
        ("sell", book.bid)
    } else {
        ("no-edge", 0.0)
    };
    Decision {
        seq: book.seq,
        action: action.into(),
        price,
    }
}

fn args() -> Result<(Option<String>, u64), String> {
    let (mut brokers, mut books) = (None, 10_000);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--brokers" => brokers = Some(it.next().ok_or("--brokers needs HOST:PORT")?),
            "--books" => {
                books = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--books needs a number")?
            }
            other => {
                return Err(format!(
                    "unknown argument `{other}` (usage: kafka_pipeline [--brokers HOST:PORT] [--books N])"
                ))
            }
        }
    }
    Ok((brokers, books))
}

fn produce_books(brokers: &str, n: u64) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    for seq in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mid = FAIR_VALUE + ((x % 200) as f64 - 100.0) / 1000.0;
        let spread = 0.01 + (x % 30) as f64 / 100.0;
        let book = Book {
            bid: mid - spread / 2.0,
            ask: mid + spread / 2.0,
            seq,
        };
        let payload = serde_json::to_vec(&book).expect("json");
        let key = seq.to_string();
        loop {
            let record = BaseRecord::<str, [u8]>::to("books")
                .key(&key)
                .payload(&payload);
            match producer.send(record) {
                Ok(()) => break,
                Err(_) => {
                    producer.poll(Duration::from_millis(5));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(60)).expect("flush");
}

fn count_decisions(brokers: &str, n: u64) -> (u64, u64) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("check-{}", std::process::id()))
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "10")
        .create()
        .expect("consumer");
    consumer.subscribe(&["decisions"]).expect("subscribe");
    let mut seen = vec![0u8; n as usize];
    let (mut records, deadline) = (0u64, Instant::now() + Duration::from_secs(60));
    while records < n && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            records += 1;
            if let Some(d) = m
                .payload()
                .and_then(|p| serde_json::from_slice::<Decision>(p).ok())
            {
                if let Some(s) = seen.get_mut(d.seq as usize) {
                    *s = s.saturating_add(1);
                }
            }
        }
    }
    let distinct = seen.iter().filter(|s| **s > 0).count() as u64;
    (records, distinct)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (brokers, n) = args()?;
    let mock = match &brokers {
        Some(_) => None,
        None => Some(MockCluster::new(1)?),
    };
    let brokers = match (&brokers, &mock) {
        (Some(b), _) => b.clone(),
        (None, Some(m)) => m.bootstrap_servers(),
        (None, None) => return Err("no brokers".into()),
    };
    match &mock {
        Some(m) => {
            m.create_topic("books", 4, 1)?;
            m.create_topic("decisions", 4, 1)?;
        }
        None => {
            let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .create()?;
            let topics = [
                NewTopic::new("books", 4, TopicReplication::Fixed(1)),
                NewTopic::new("decisions", 4, TopicReplication::Fixed(1)),
            ];
            // Topics that already exist are fine.
            let _ = admin.create_topics(&topics, &AdminOptions::new()).await?;
        }
    }
    eprintln!(
        "brokers {brokers}{}",
        if mock.is_some() {
            " (in-process mock cluster)"
        } else {
            ""
        }
    );
    let b = brokers.clone();
    tokio::task::spawn_blocking(move || produce_books(&b, n)).await?;
    eprintln!("produced {n} book updates to `books`");

    let graph = GraphBuilder::new("maker")
        .node("decide", (source::<Book>("book"),), decide)
        .build()?;
    let books = KafkaSource::<Book>::json(&brokers, "maker", &["books"]);
    let source_stats = books.stats();
    let engine = EmbeddedGraph::builder(graph)
        .strategy(InputStrategy::Sequential)
        .accumulator_factory("book", move || books.clone())
        .start()?;
    let sink = KafkaSink::<Decision>::json(&brokers, "decisions", "decide")
        .key_with(|d| d.action.clone())
        .spawn(engine.subscribe())?;
    let started = Instant::now();
    while sink.stats().delivered() < n && started.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        eprintln!(
            "{:>5.1} s: {} books consumed, {} fired, {} decisions delivered",
            started.elapsed().as_secs_f64(),
            source_stats.records(),
            engine.reactor().stats().fires,
            sink.stats().delivered()
        );
    }
    engine.shutdown().await?;
    let stats = std::sync::Arc::clone(sink.stats());
    sink.finish().await?;
    let b = brokers.clone();
    let (records, distinct) = tokio::task::spawn_blocking(move || count_decisions(&b, n)).await?;
    println!(
        "{{\"books\":{n},\"decisions_produced\":{},\"decisions_delivered\":{},\"decision_records_read_back\":{records},\"distinct_books_decided\":{distinct},\"sink_failed\":{}}}",
        stats.produced(),
        stats.delivered(),
        stats.failed()
    );
    if records != n || distinct != n {
        std::process::exit(1);
    }
    Ok(())
}
