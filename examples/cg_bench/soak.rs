//! The soak (CG-B-02): three sources into one graph for `--soak-secs`, RSS sampled every
//! second.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloacina::prelude::*;

use crate::common::*;

/// The warm-up: RSS growth is measured against the peak of its first seconds.
pub const SOAK_WARMUP_SECS: u64 = 10;

pub struct SoakResult {
    pub secs: u64,
    /// Peak RSS over the first [`SOAK_WARMUP_SECS`] seconds. RSS saw-tooths (by ~20 MB with a
    /// sled ledger, as the writer's queue and sled's buffers fill and drain), so growth is
    /// peak against peak, not wherever in a tooth one sample fell.
    pub rss_start: u64,
    /// RSS sampled at second [`SOAK_WARMUP_SECS`].
    pub rss_at_warm: u64,
    /// RSS at the last sample.
    pub rss_end: u64,
    /// Largest RSS sampled after second [`SOAK_WARMUP_SECS`].
    pub rss_max: u64,
    /// RSS growth from second [`SOAK_WARMUP_SECS`] to the end along the least-squares line
    /// through every per-second sample from then on, in % of the line's value at the start:
    /// the trend, whatever phase of the saw-tooth a single sample falls in.
    pub trend_growth_pct: f64,
    /// Firings and boundaries taken in (all three sources) while the soak ran.
    pub fires: u64,
    pub events: u64,
    /// `Lagged` items the subscriber received, and the firings they said it missed.
    pub lagged: u64,
    pub missed: u64,
    pub delivered: u64,
    pub snapshots: u64,
    pub retained_removed: u64,
}

fn combine(fast: Option<&u64>, slow: Option<&u64>, events: Option<&Event>) -> u64 {
    fast.copied().unwrap_or(0)
        ^ slow.copied().unwrap_or(0).rotate_left(21)
        ^ events.map_or(0, |e| e.id.rotate_left(42))
}

fn mix(x: &u64) -> u64 {
    x.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// One engine, three sources into one graph (`Latest`, `when_any`): `fast` polled every 10 ms,
/// `slow` every 200 ms, `events` a passthrough fed by a task as fast as `send().await` allows;
/// a subscriber (queue of 1,024, `DropNewest`: lag is counted, never blocks the reactor)
/// drains the firings. With a ledger: retention keeps the newest 100,000 boundaries and
/// firings, applied after each snapshot (every 65,536 boundaries), and the ledger writer's
/// queue holds 4,096 records.
pub async fn soak(secs: u64, recording: &Option<Recording>) -> Result<SoakResult, BoxError> {
    let graph = GraphBuilder::new("cg_soak")
        .node(
            "combine",
            (
                source::<u64>("fast"),
                source::<u64>("slow"),
                source::<Event>("events"),
            ),
            combine,
        )
        .node("finish", (upstream::<u64>("combine"),), mix)
        .build()?;
    let fast = Arc::new(AtomicU64::new(0));
    let slow = Arc::new(AtomicU64::new(0));
    let mut b = builder(graph, InputStrategy::Latest, recording, "soak")
        .criteria(ReactionCriteria::when_any())
        .polling("fast", Duration::from_millis(10), move || {
            let n = fast.fetch_add(1, Ordering::Relaxed);
            async move { Some(n) }
        })
        .polling("slow", Duration::from_millis(200), move || {
            let n = slow.fetch_add(1, Ordering::Relaxed);
            async move { Some(n) }
        })
        .passthrough::<Event>("events");
    if recording.is_some() {
        b = b
            .retention(RetentionPolicy {
                keep_last: Some(100_000),
                max_age: None,
            })
            .snapshot_every(65_536)
            // Memory in flight to the ledger is bounded by the writer's queue: a service that
            // runs for weeks sizes it (and with it the Batched loss window) explicitly.
            .ledger_queue(4_096);
    }
    let engine = b.start()?;
    let reactor = engine.reactor().clone();
    let mut results = engine.subscribe_with(SubscribeOptions {
        capacity: 1024,
        overflow: Overflow::DropNewest,
    });
    let subscriber = tokio::spawn(async move {
        let (mut delivered, mut lagged, mut missed) = (0u64, 0u64, 0u64);
        while let Some(item) = results.recv().await {
            match item {
                Ok(_) => delivered += 1,
                Err(lag) => {
                    lagged += 1;
                    missed += lag.missed;
                }
            }
        }
        (delivered, lagged, missed)
    });
    let stop = Arc::new(AtomicBool::new(false));
    let sender = engine.sender::<Event>("events")?;
    let stopping = Arc::clone(&stop);
    let producer = tokio::spawn(async move {
        let mut id = 0u64;
        while !stopping.load(Ordering::Relaxed) {
            for _ in 0..1024 {
                if sender.send(Event { id, sent_ns: 0 }).await.is_err() {
                    return id;
                }
                id += 1;
            }
        }
        id
    });

    let before = reactor.stats();
    let start = Instant::now();
    let mut ticks = tokio::time::interval_at(
        tokio::time::Instant::from_std(start + Duration::from_secs(1)),
        Duration::from_secs(1),
    );
    let mut rss = Vec::with_capacity(secs as usize);
    let mut last = (before.fires, before.boundaries, start);
    for t in 1..=secs {
        ticks.tick().await;
        rss.push(rss_bytes());
        if t % 5 == 0 || t == secs {
            let s = reactor.stats();
            let now = Instant::now();
            let dt = now.duration_since(last.2).as_secs_f64();
            let window = rss[rss.len().saturating_sub(5)..].iter().copied().max();
            eprintln!(
                "soak t={t:>4}s rss {:.1} MB (max {:.1} over the last 5 samples), {:.0} fires/s, {:.0} events in/s (last {dt:.0} s), subscriber missed {} so far",
                rss.last().copied().unwrap_or(0) as f64 / 1048576.0,
                window.unwrap_or(0) as f64 / 1048576.0,
                (s.fires - last.0) as f64 / dt,
                (s.boundaries - last.1) as f64 / dt,
                s.subscriber_missed,
            );
            last = (s.fires, s.boundaries, now);
        }
    }
    let after = reactor.stats();
    stop.store(true, Ordering::Relaxed);
    producer.await?;
    finish_engine(engine).await?;
    let (delivered, lagged, missed) = subscriber.await?;
    let warm = SOAK_WARMUP_SECS as usize;
    let rss_start = rss.iter().take(warm).copied().max().unwrap_or(0);
    Ok(SoakResult {
        secs,
        rss_start,
        rss_at_warm: rss.get(warm - 1).copied().unwrap_or(0),
        rss_end: rss.last().copied().unwrap_or(0),
        rss_max: rss.iter().skip(warm).copied().max().unwrap_or(rss_start),
        trend_growth_pct: trend_growth_pct(&rss, warm),
        fires: after.fires - before.fires,
        events: after.boundaries - before.boundaries,
        lagged,
        missed,
        delivered,
        snapshots: after.snapshots,
        retained_removed: after.retained_removed,
    })
}

/// See [`SoakResult::trend_growth_pct`]; `rss[i]` was sampled at the end of second `i + 1`.
fn trend_growth_pct(rss: &[u64], warm: usize) -> f64 {
    let points: Vec<(f64, f64)> = rss
        .iter()
        .enumerate()
        .skip(warm.saturating_sub(1))
        .map(|(i, v)| ((i + 1) as f64, *v as f64))
        .collect();
    let n = points.len() as f64;
    if points.len() < 2 {
        return f64::NAN;
    }
    let (mx, my) = (
        points.iter().map(|p| p.0).sum::<f64>() / n,
        points.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let slope = sxy / sxx;
    let at = |t: f64| my + slope * (t - mx);
    let (t0, t1) = (warm as f64, rss.len() as f64);
    (at(t1) - at(t0)) / at(t0) * 100.0
}
