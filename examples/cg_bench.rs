//! Benchmark harness for the engine: one passthrough source feeding a 2-node graph through a
//! reactor, bare or recording everything in a ledger.
//!
//! ```text
//! cargo run --release --example cg_bench -- --duration-secs 5
//! cargo run --release --example cg_bench -- --duration-secs 5 --ledger sled:///tmp/cgb --durability batched
//! ```
//!
//! With `--ledger URL` every phase's reactor records every boundary, firing and snapshot
//! (`--durability batched`, the default, or `sync`: then each `send` waits until its boundary
//! is durable, so a single producer is bounded by the store's flush latency). Each phase uses
//! its own reactor name, so a store may be reused.
//!
//! Phases (each `--duration-secs` long):
//! - **latency**: `Sequential`, 1,000 events/s; every event carries its send instant and its
//!   latency is measured to the completion of the firing that consumed it (no sampling).
//! - **sequential**: `Sequential`, pushed as fast as `send().await` allows; the graph checks
//!   that event ids arrive consecutively, and the harness that fires == events.
//! - **latest**: `Latest`, pushed as fast as possible; reports pushes/s and fires.
//! - **soak**: RSS growth between the end of the first and of the last second of the
//!   sequential phase.
//! - **baseline**, measured in the same run for ratios: a bare one-hop tokio mpsc relay (no
//!   engine), paced at 1,000 msgs/s for latency (send instant to receipt), then flat out for
//!   throughput.
//!
//! Human-readable lines go to stderr; the last stdout line is one JSON object.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use cloacina::prelude::*;
use serde::{Deserialize, Serialize};

/// One benchmark event: its id and send time (ns since the process's base instant).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Event {
    id: u64,
    sent_ns: u64,
}

/// What the terminal node emits.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Done {
    id: u64,
    sent_ns: u64,
    checksum: u64,
}

static BASE: OnceLock<Instant> = OnceLock::new();

/// The ledger every phase records into, if any.
#[derive(Clone)]
struct Recording {
    ledger: Arc<dyn Ledger>,
    durability: Durability,
    run: String,
}

/// Ledger totals over the phases: records written and lost.
static LEDGER_WRITTEN: AtomicU64 = AtomicU64::new(0);
static LEDGER_LOST: AtomicU64 = AtomicU64::new(0);

fn engine(
    graph: CompiledGraph,
    strategy: InputStrategy,
    recording: &Option<Recording>,
    phase: &str,
) -> Result<EmbeddedGraph, Box<dyn std::error::Error>> {
    let mut builder = EmbeddedGraph::builder(graph)
        .strategy(strategy)
        .passthrough::<Event>("events");
    if let Some(r) = recording {
        builder = builder
            .ledger(Arc::clone(&r.ledger))
            .durability(r.durability)
            .name(format!("cg_bench-{phase}-{}", r.run));
    }
    Ok(builder.start()?)
}

/// Shuts the engine down and adds its ledger counts to the totals; a lost record fails the run.
async fn finish_engine(engine: EmbeddedGraph) -> Result<u64, Box<dyn std::error::Error>> {
    let report = engine.shutdown().await?;
    LEDGER_WRITTEN.fetch_add(report.reactor.ledger_records, Ordering::Relaxed);
    LEDGER_LOST.fetch_add(report.reactor.ledger_lost, Ordering::Relaxed);
    if let Some(e) = report.reactor.ledger_error {
        return Err(format!("ledger error: {e}").into());
    }
    Ok(report.reactor.fires)
}

fn base() -> Instant {
    *BASE.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    u64::try_from(base().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Order checker used by the sequential phase: ids must arrive 0, 1, 2, ...
static NEXT_ID: AtomicU64 = AtomicU64::new(0);
static ORDER_VIOLATIONS: AtomicU64 = AtomicU64::new(0);

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

fn graph(checked: bool) -> Result<CompiledGraph, cloacina::graph::BuildError> {
    let b = GraphBuilder::new("cg_bench").node("ingest", (source::<Event>("events"),), ingest);
    if checked {
        b.node("finish", (upstream::<Event>("ingest"),), finish_checked)
    } else {
        b.node("finish", (upstream::<Event>("ingest"),), finish)
    }
    .build()
}

fn rss_bytes() -> u64 {
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

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)] as f64 / 1000.0
}

struct LatencyResult {
    sorted_ns: Vec<u64>,
    sent: u64,
    missing: u64,
}

async fn latency_phase(
    duration: Duration,
    recording: &Option<Recording>,
) -> Result<LatencyResult, Box<dyn std::error::Error>> {
    let engine = engine(
        graph(false)?,
        InputStrategy::Sequential,
        recording,
        "latency",
    )?;
    let sender = engine.sender::<Event>("events")?;
    let mut results = engine.subscribe_with(SubscribeOptions {
        capacity: 65_536,
        overflow: Overflow::Block {
            max_wait: Duration::from_secs(60),
        },
    });
    let producer = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_millis(1));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let end = Instant::now() + duration;
        let mut id = 0u64;
        while Instant::now() < end {
            ticks.tick().await;
            let event = Event {
                id,
                sent_ns: now_ns(),
            };
            if sender.send(event).await.is_err() {
                break;
            }
            id += 1;
        }
        id
    });
    let mut latencies = Vec::with_capacity(duration.as_secs() as usize * 1000 + 16);
    let mut seen = vec![false; duration.as_secs() as usize * 1000 + 1024];
    let mut producer = producer;
    // The producer may finish after the last firing arrived (a `Sync` send returns once its
    // boundary is durable, which can be after its firing), so wait on both.
    let sent = loop {
        tokio::select! {
            item = results.recv() => match item {
                Some(Ok(firing)) => record(&firing, &mut latencies, &mut seen),
                Some(Err(lag)) => return Err(format!("latency subscriber lagged: {lag}").into()),
                None => return Err("reactor stopped early".into()),
            },
            done = &mut producer => break done?,
        }
    };
    while (latencies.len() as u64) < sent {
        match tokio::time::timeout(Duration::from_secs(10), results.recv()).await {
            Ok(Some(Ok(firing))) => record(&firing, &mut latencies, &mut seen),
            _ => break,
        }
    }
    finish_engine(engine).await?;
    let missing = (0..sent as usize)
        .filter(|&i| !seen.get(i).copied().unwrap_or(false))
        .count() as u64;
    latencies.sort_unstable();
    Ok(LatencyResult {
        sorted_ns: latencies,
        sent,
        missing,
    })
}

fn record(firing: &Firing, latencies: &mut Vec<u64>, seen: &mut Vec<bool>) {
    if let Some(done) = firing.result.output::<Done>("finish") {
        let completed_ns =
            u64::try_from(firing.completed.duration_since(base()).as_nanos()).unwrap_or(u64::MAX);
        latencies.push(completed_ns.saturating_sub(done.sent_ns));
        let i = done.id as usize;
        if i >= seen.len() {
            seen.resize(i + 1, false);
        }
        seen[i] = true;
    }
}

struct SeqResult {
    events: u64,
    fires: u64,
    elapsed: Duration,
    violations: u64,
    rss_growth_bytes: i64,
}

async fn sequential_phase(
    duration: Duration,
    recording: &Option<Recording>,
) -> Result<SeqResult, Box<dyn std::error::Error>> {
    NEXT_ID.store(0, Ordering::Relaxed);
    ORDER_VIOLATIONS.store(0, Ordering::Relaxed);
    let engine = engine(
        graph(true)?,
        InputStrategy::Sequential,
        recording,
        "sequential",
    )?;
    let sender = engine.sender::<Event>("events")?;
    let reactor = engine.reactor().clone();
    let fires_before = reactor.stats().fires;
    let rss_marks = Arc::new(std::sync::Mutex::new(Vec::<(u64, u64)>::new()));
    let marks = Arc::clone(&rss_marks);
    let start = Instant::now();
    let producer = tokio::spawn(async move {
        let end = start + duration;
        let mut id = 0u64;
        let mut next_mark = start + Duration::from_secs(1);
        loop {
            // Check the clock every 1024 events, not every event.
            for _ in 0..1024 {
                if sender.send(Event { id, sent_ns: 0 }).await.is_err() {
                    return id;
                }
                id += 1;
            }
            let now = Instant::now();
            if now >= next_mark {
                if let Ok(mut m) = marks.lock() {
                    m.push((id, rss_bytes()));
                }
                next_mark += Duration::from_secs(1);
            }
            if now >= end {
                return id;
            }
        }
    });
    let events = producer.await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while reactor.stats().fires - fires_before < events && Instant::now() < deadline {
        tokio::task::yield_now().await;
    }
    let elapsed = start.elapsed();
    let fires = reactor.stats().fires - fires_before;
    let written_before = LEDGER_WRITTEN.load(Ordering::Relaxed);
    finish_engine(engine).await?;
    if recording.is_some() {
        // Every boundary and every firing (plus snapshots) must have reached the ledger.
        let written = LEDGER_WRITTEN.load(Ordering::Relaxed) - written_before;
        if written < events + fires {
            return Err(format!(
                "ledger holds {written} records for {events} boundaries and {fires} firings"
            )
            .into());
        }
    }
    let marks = rss_marks.lock().map(|m| m.clone()).unwrap_or_default();
    let rss_growth_bytes = match (marks.first(), marks.last()) {
        (Some(first), Some(last)) => last.1 as i64 - first.1 as i64,
        _ => 0,
    };
    Ok(SeqResult {
        events,
        fires,
        elapsed,
        violations: ORDER_VIOLATIONS.load(Ordering::Relaxed)
            + u64::from(NEXT_ID.load(Ordering::Relaxed) != events),
        rss_growth_bytes,
    })
}

struct LatestResult {
    pushes: u64,
    fires: u64,
    elapsed: Duration,
}

async fn latest_phase(
    duration: Duration,
    recording: &Option<Recording>,
) -> Result<LatestResult, Box<dyn std::error::Error>> {
    let engine = engine(graph(false)?, InputStrategy::Latest, recording, "latest")?;
    let sender = engine.sender::<Event>("events")?;
    let reactor = engine.reactor().clone();
    let start = Instant::now();
    let producer = tokio::spawn(async move {
        let end = start + duration;
        let mut id = 0u64;
        loop {
            for _ in 0..1024 {
                if sender.send(Event { id, sent_ns: 0 }).await.is_err() {
                    return id;
                }
                id += 1;
            }
            if Instant::now() >= end {
                return id;
            }
        }
    });
    let pushes = producer.await?;
    let elapsed = start.elapsed();
    let fires = finish_engine(engine).await?;
    let _ = reactor;
    Ok(LatestResult {
        pushes,
        fires,
        elapsed,
    })
}

struct Baseline {
    p50_us: f64,
    p99_us: f64,
    msgs_per_s: f64,
}

/// The floor the engine is compared with: one tokio mpsc hop between two tasks, same pacing.
async fn baseline_phase(duration: Duration) -> Result<Baseline, Box<dyn std::error::Error>> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<u64>(1024);
    let consumer = tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(duration.as_secs() as usize * 1000 + 16);
        while let Some(sent_ns) = rx.recv().await {
            latencies.push(now_ns().saturating_sub(sent_ns));
        }
        latencies
    });
    // The producer is a spawned task, as in the engine phases.
    let producer = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_millis(1));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let end = Instant::now() + duration;
        while Instant::now() < end {
            ticks.tick().await;
            if tx.send(now_ns()).await.is_err() {
                break;
            }
        }
    });
    producer.await?;
    let mut latencies = consumer.await?;
    latencies.sort_unstable();

    let (tx, mut rx) = tokio::sync::mpsc::channel::<u64>(1024);
    let counter = tokio::spawn(async move {
        let mut buf = Vec::with_capacity(256);
        let mut n = 0u64;
        loop {
            let got = rx.recv_many(&mut buf, 256).await;
            if got == 0 {
                return n;
            }
            n += got as u64;
            buf.clear();
        }
    });
    let start = Instant::now();
    let producer = tokio::spawn(async move {
        let end = start + duration;
        let mut sent = 0u64;
        while Instant::now() < end {
            for _ in 0..1024 {
                if tx.send(sent).await.is_err() {
                    return sent;
                }
                sent += 1;
            }
        }
        sent
    });
    let sent = producer.await?;
    let received = counter.await?;
    let elapsed = start.elapsed();
    if received != sent {
        return Err(format!("baseline lost messages: {sent} sent, {received} received").into());
    }
    Ok(Baseline {
        p50_us: percentile(&latencies, 50.0),
        p99_us: percentile(&latencies, 99.0),
        msgs_per_s: received as f64 / elapsed.as_secs_f64(),
    })
}

const USAGE: &str =
    "usage: cg_bench [--duration-secs N] [--ledger URL] [--durability batched|sync]";

struct Args {
    secs: u64,
    ledger: Option<String>,
    durability: Durability,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mut secs = 5;
    let mut ledger = None;
    let mut durability = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--ledger" => {
                ledger = Some(args.next().ok_or("--ledger takes a URL")?);
            }
            "--durability" => {
                durability = Some(match args.next().as_deref() {
                    Some("batched") => Durability::Batched,
                    Some("sync") => Durability::Sync,
                    _ => return Err("--durability takes `batched` or `sync`".into()),
                });
            }
            "--duration-secs" => {
                secs = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|v| *v > 0)
                    .ok_or("--duration-secs takes a whole number of seconds > 0")?;
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument `{other}` ({USAGE})")),
        }
    }
    if durability.is_some() && ledger.is_none() {
        return Err(format!("--durability needs --ledger ({USAGE})"));
    }
    Ok(Args {
        secs,
        ledger,
        durability: durability.unwrap_or(Durability::Batched),
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = match parse_args() {
        Ok(a) => a,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    let secs = args.secs;
    base();
    let duration = Duration::from_secs(secs);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let recording = match &args.ledger {
            None => None,
            Some(url) => Some(Recording {
                ledger: cloacina::ledger::open(url).await?,
                durability: args.durability,
                run: format!(
                    "{}-{}",
                    std::process::id(),
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis())
                ),
            }),
        };
        let (backend, mode) = match &recording {
            Some(r) => (
                r.ledger.backend(),
                if r.durability == Durability::Sync { "sync" } else { "batched" },
            ),
            None => ("none", "none"),
        };
        if let Some(r) = &recording {
            eprintln!("Recording every boundary and firing in a {backend} ledger ({mode}); run {}", r.run);
        }
        let lat = latency_phase(duration, &recording).await?;
        let l = &lat.sorted_ns;
        let mean = if l.is_empty() { 0.0 } else { l.iter().sum::<u64>() as f64 / l.len() as f64 / 1000.0 };
        let (p50, p95, p99) = (percentile(l, 50.0), percentile(l, 95.0), percentile(l, 99.0));
        let max = l.last().map_or(0.0, |v| *v as f64 / 1000.0);
        eprintln!(
            "Latency p50/p95/p99: {p50:.1}/{p95:.1}/{p99:.1} us (mean {mean:.1}, max {max:.1}) over {} of {} events, {} missing",
            l.len(), lat.sent, lat.missing
        );

        let seq = sequential_phase(duration, &recording).await?;
        let seq_rate = seq.events as f64 / seq.elapsed.as_secs_f64();
        let exactly_once = seq.fires == seq.events && seq.violations == 0;
        eprintln!(
            "Max throughput (Sequential): {seq_rate:.0} events/s; {} events, {} fires, order violations {}, exactly once: {exactly_once}",
            seq.events, seq.fires, seq.violations
        );
        let rss_mb = seq.rss_growth_bytes as f64 / (1024.0 * 1024.0);
        eprintln!("Soak RSS growth (sequential phase, s1 -> last s): {rss_mb:.2} MB");

        let latest = latest_phase(duration, &recording).await?;
        let latest_rate = latest.pushes as f64 / latest.elapsed.as_secs_f64();
        eprintln!(
            "Latest: {latest_rate:.0} pushes/s; {} pushes coalesced into {} fires",
            latest.pushes, latest.fires
        );

        let baseline = baseline_phase(duration).await?;
        eprintln!(
            "Baseline (bare one-hop tokio mpsc, same run): p50 {:.1} us, p99 {:.1} us, {:.0} msgs/s; engine/baseline: p50 x{:.2}, p99 x{:.2}, throughput x{:.2}",
            baseline.p50_us, baseline.p99_us, baseline.msgs_per_s,
            p50 / baseline.p50_us, p99 / baseline.p99_us, seq_rate / baseline.msgs_per_s
        );

        let (ledger_records, ledger_lost) = (LEDGER_WRITTEN.load(Ordering::Relaxed), LEDGER_LOST.load(Ordering::Relaxed));
        if recording.is_some() {
            eprintln!("Ledger: {ledger_records} records written, {ledger_lost} lost");
        }
        println!(
            "{{\"backend\":\"{backend}\",\"mode\":\"{mode}\",\"ledger_records\":{ledger_records},\"ledger_lost\":{ledger_lost},\"duration_secs\":{secs},\"p50_us\":{p50:.2},\"p95_us\":{p95:.2},\"p99_us\":{p99:.2},\"max_us\":{max:.2},\"mean_us\":{mean:.2},\"latency_events\":{},\"latency_sent\":{},\"latency_missing\":{},\"seq_events_per_s\":{seq_rate:.0},\"seq_events\":{},\"seq_fires\":{},\"seq_order_violations\":{},\"seq_exactly_once\":{exactly_once},\"latest_pushes_per_s\":{latest_rate:.0},\"latest_pushes\":{},\"latest_fires\":{},\"soak_rss_growth_mb\":{rss_mb:.3},\"baseline_p50_us\":{:.2},\"baseline_p99_us\":{:.2},\"baseline_msgs_per_s\":{:.0}}}",
            l.len(), lat.sent, lat.missing, seq.events, seq.fires, seq.violations, latest.pushes, latest.fires,
            baseline.p50_us, baseline.p99_us, baseline.msgs_per_s
        );
        if !exactly_once || lat.missing > 0 {
            return Err("an event was not fired exactly once".into());
        }
        if ledger_lost > 0 {
            return Err(format!("{ledger_lost} ledger records lost").into());
        }
        Ok(())
    })
}
