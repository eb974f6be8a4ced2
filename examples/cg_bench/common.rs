//! What every phase shares: the event types, the clock, the engine builder, the probes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use cloacina::prelude::*;
use cloacina::EmbeddedGraphBuilder;
use serde::{Deserialize, Serialize};

pub type BoxError = Box<dyn std::error::Error>;

/// One benchmark event: its id and send time (ns since the process's base instant).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Event {
    pub id: u64,
    pub sent_ns: u64,
}

/// What the terminal node emits.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Done {
    pub id: u64,
    pub sent_ns: u64,
    pub checksum: u64,
}

static BASE: OnceLock<Instant> = OnceLock::new();

pub fn base() -> Instant {
    *BASE.get_or_init(Instant::now)
}

pub fn now_ns() -> u64 {
    ns_of(Instant::now())
}

/// `at` in ns since the base instant.
pub fn ns_of(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(base()).as_nanos()).unwrap_or(u64::MAX)
}

/// The ledger every phase records into, if any.
#[derive(Clone)]
pub struct Recording {
    pub ledger: Arc<dyn Ledger>,
    pub durability: Durability,
    pub run: String,
}

/// Ledger totals over the phases: records written and lost.
pub static LEDGER_WRITTEN: AtomicU64 = AtomicU64::new(0);
pub static LEDGER_LOST: AtomicU64 = AtomicU64::new(0);

/// An engine builder for `graph` with `strategy`, recording into the ledger if any; the
/// caller adds the accumulators. Each phase has its own reactor name, so a store may be reused.
pub fn builder(
    graph: CompiledGraph,
    strategy: InputStrategy,
    recording: &Option<Recording>,
    phase: &str,
) -> EmbeddedGraphBuilder {
    let mut builder = EmbeddedGraph::builder(graph).strategy(strategy);
    if let Some(r) = recording {
        builder = builder
            .ledger(Arc::clone(&r.ledger))
            .durability(r.durability)
            .name(format!("cg_bench-{phase}-{}", r.run));
    }
    builder
}

/// The usual engine: one passthrough source `events`.
pub fn engine(
    graph: CompiledGraph,
    strategy: InputStrategy,
    recording: &Option<Recording>,
    phase: &str,
    low_latency: Option<LowLatency>,
) -> Result<EmbeddedGraph, BoxError> {
    let mut b = builder(graph, strategy, recording, phase).passthrough::<Event>("events");
    if let Some(l) = low_latency {
        b = b.low_latency(l);
    }
    Ok(b.start()?)
}

/// Fires and boundaries over a reactor's life, from its shutdown report.
pub struct Finished {
    pub fires: u64,
    pub boundaries: u64,
}

/// Shuts the engine down and adds its ledger counts to the totals; a ledger error fails the
/// run.
pub async fn finish_engine(engine: EmbeddedGraph) -> Result<Finished, BoxError> {
    let report = engine.shutdown().await?;
    LEDGER_WRITTEN.fetch_add(report.reactor.ledger_records, Ordering::Relaxed);
    LEDGER_LOST.fetch_add(report.reactor.ledger_lost, Ordering::Relaxed);
    if let Some(e) = report.reactor.ledger_error {
        return Err(format!("ledger error: {e}").into());
    }
    if let Some((source, message)) = report.accumulator_errors.first() {
        return Err(format!("accumulator `{source}` failed: {message}").into());
    }
    Ok(Finished {
        fires: report.reactor.fires,
        boundaries: report.reactor.boundaries,
    })
}

/// Order checker used by the sequential phases: ids must arrive 0, 1, 2, ...
pub static NEXT_ID: AtomicU64 = AtomicU64::new(0);
pub static ORDER_VIOLATIONS: AtomicU64 = AtomicU64::new(0);

fn ingest(event: Option<&Event>) -> Event {
    match event {
        Some(e) => *e,
        None => Event {
            id: u64::MAX,
            sent_ns: 0,
        },
    }
}

fn finish(event: &Event) -> Done {
    Done {
        id: event.id,
        sent_ns: event.sent_ns,
        checksum: event.id.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17),
    }
}

fn finish_checked(event: &Event) -> Done {
    let expected = NEXT_ID.load(Ordering::Relaxed);
    if event.id != expected {
        ORDER_VIOLATIONS.fetch_add(1, Ordering::Relaxed);
    }
    NEXT_ID.store(event.id.wrapping_add(1), Ordering::Relaxed);
    finish(event)
}

/// The 2-node graph: `ingest` reads source `events`, `finish` emits a [`Done`]; `checked`
/// makes `finish` check that ids arrive consecutively.
pub fn graph(checked: bool) -> Result<CompiledGraph, cloacina::graph::BuildError> {
    let b = GraphBuilder::new("cg_bench").node("ingest", (source::<Event>("events"),), ingest);
    if checked {
        b.node("finish", (upstream::<Event>("ingest"),), finish_checked)
    } else {
        b.node("finish", (upstream::<Event>("ingest"),), finish)
    }
    .build()
}

/// Resident set size, from `/proc/self/statm` (assumes 4 KiB pages; 0 if unreadable).
pub fn rss_bytes() -> u64 {
    let page = 4096;
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * page)
}

/// CPU time the whole process has used (user + system, every thread, exited ones included),
/// from `/proc/self/stat` fields 14 and 15, in clock ticks of 1/100 s (Linux's `USER_HZ`).
pub fn process_cpu_secs() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the command name, which is in parentheses and may hold spaces.
            let rest = &s[s.rfind(')')? + 1..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            // `rest` starts at field 3 (state): utime is field 14, stime field 15.
            let utime: u64 = f.get(11)?.parse().ok()?;
            let stime: u64 = f.get(12)?.parse().ok()?;
            Some((utime + stime) as f64 / 100.0)
        })
        .unwrap_or(0.0)
}

/// Value at percentile `p` of ns samples, in us.
pub fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)] as f64 / 1000.0
}

/// Paces `send(id, sent_ns)` at 1,000 calls/s on the calling OS thread for `duration`, on an
/// absolute schedule (call `i` is due at start + i ms; a late call does not shift later
/// ones). Stops early if `send` returns false; returns the calls that succeeded.
pub fn paced_thread(duration: Duration, mut send: impl FnMut(u64, u64) -> bool) -> u64 {
    let n = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    let start = Instant::now();
    for id in 0..n {
        let due = start + Duration::from_millis(id);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        if !send(id, now_ns()) {
            return id;
        }
    }
    n
}

/// Ordered `"key":value` pairs for the JSON line.
#[derive(Default)]
pub struct Json(Vec<(String, String)>);

impl Json {
    pub fn f(&mut self, key: &str, v: f64, decimals: usize) -> &mut Self {
        let v = if v.is_finite() {
            format!("{v:.decimals$}")
        } else {
            "null".into()
        };
        self.0.push((key.into(), v));
        self
    }
    pub fn u(&mut self, key: &str, v: u64) -> &mut Self {
        self.0.push((key.into(), v.to_string()));
        self
    }
    pub fn b(&mut self, key: &str, v: bool) -> &mut Self {
        self.0.push((key.into(), v.to_string()));
        self
    }
    pub fn s(&mut self, key: &str, v: &str) -> &mut Self {
        self.0.push((key.into(), format!("{v:?}")));
        self
    }
    pub fn render(&self) -> String {
        let body: Vec<String> = self.0.iter().map(|(k, v)| format!("{k:?}:{v}")).collect();
        format!("{{{}}}", body.join(","))
    }
}
