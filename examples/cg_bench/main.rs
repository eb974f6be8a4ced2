//! Benchmark harness for the engine: one passthrough source feeding a 2-node graph through a
//! reactor, bare or recording everything in a ledger; or, with `--soak-secs`, a soak.
//!
//! ```text
//! cargo run --release --example cg_bench -- --duration-secs 5
//! cargo run --release --example cg_bench -- --duration-secs 5 --ledger sled:///tmp/cgb --durability batched
//! cargo run --release --example cg_bench -- --soak-secs 60 --ledger sled:///tmp/soak --durability batched
//! ```
//!
//! With `--ledger URL` every phase's reactor records every boundary, firing and snapshot
//! (`--durability batched`, the default, or `sync`: then each `send` waits until its boundary
//! is durable, so a single producer is bounded by the store's flush latency). Each phase uses
//! its own reactor name, so a store may be reused.
//!
//! The runtime has 2 worker threads. Phases (each `--duration-secs` long), in this order:
//! - **latency** (task producer, subscriber attached): `Sequential`, 1,000 events/s from a
//!   tokio task (`tokio::time::interval`); the producer runs on the reactor's own runtime, so
//!   the reactor is usually woken without a cross-thread wake: the best case. Keys `p50_us`,
//!   `p95_us`, `p99_us`, `max_us`, `mean_us`: send instant -> `Firing::completed` of the
//!   firing that consumed the event; `sub_p50_us`, `sub_p99_us`: send instant -> the
//!   subscriber task received that firing.
//! - **thread**: the same, but the producer is a plain `std::thread` using
//!   `BoundarySender::send_blocking`, paced on an absolute schedule (event `i` due at
//!   start + i ms), as a Kafka consumer thread would be: every event pays a cross-thread wake.
//!   `thread_p50_us`, `thread_p99_us` (to graph done), `thread_sub_p50_us`,
//!   `thread_sub_p99_us` (to subscriber receipt), `thread_cpu_cores` (below).
//! - **thread baseline**: no engine; a bare std::thread -> tokio task relay (tokio mpsc,
//!   `blocking_send` on the thread, a task on the same runtime receives and stamps), same
//!   pacing. `thread_baseline_p50_us`, `thread_baseline_p99_us`, and `thread_vs_baseline_p50`
//!   = `thread_p50_us` / `thread_baseline_p50_us`.
//! - **spin thread**: the thread producer with the reactor in `LowLatency::default()` mode
//!   (its own thread, spinning 2 ms before parking). `spin_thread_p50_us`,
//!   `spin_thread_p99_us` (to graph done), `spin_thread_sub_p50_us`, `spin_thread_sub_p99_us`
//!   (to subscriber receipt: the subscriber is a tokio task, so this includes a task wake),
//!   `spin_cpu_cores`.
//! - **spin baseline**: no engine; a bare std::thread -> spinning std::thread hand-off (tokio
//!   mpsc, the consumer spins on `try_recv`), same pacing: the floor of any cross-thread
//!   hand-off on this machine. `spin_baseline_p50_us`, `spin_baseline_p99_us`,
//!   `spin_vs_baseline_p50` = `spin_thread_p50_us` / `spin_baseline_p50_us`.
//! - **sequential**: `Sequential`, pushed as fast as `send().await` allows, no subscriber;
//!   the graph checks that ids arrive consecutively, the harness that fires == events.
//!   `seq_events_per_s`, `seq_events`, `seq_fires`, `seq_order_violations`, `seq_exactly_once`,
//!   `seq_rss_growth_mb` (RSS at the last whole second minus at the first).
//! - **sequential, subscriber attached**: the same with a task draining a subscription
//!   (blocking overflow, so nothing is dropped; it checks ids too); the rate counts until the
//!   subscriber received the last firing. `seq_sub_events_per_s`, `seq_sub_events`,
//!   `seq_sub_delivered`, `seq_sub_exactly_once`.
//! - **latest**: `Latest`, pushed as fast as possible, no subscriber. `latest_events_in_per_s`
//!   and `latest_fires_per_s`: boundaries the reactor took in (`stats().boundaries` delta) and
//!   firings, while the producer ran; `latest_events`, `latest_fires`: over the reactor's
//!   life (the harness checks events == the producer's successful sends).
//! - **baseline**: no engine; one tokio mpsc hop between two tasks, paced at 1,000 msgs/s
//!   (`baseline_p50_us`, `baseline_p99_us`), then flat out (`baseline_msgs_per_s`).
//!
//! Every latency is recorded per event, into a pre-sized vector, by the subscriber task (no
//! sampling); events never delivered count as `*_missing` and fail the run. `*_cpu_cores` is
//! the process's CPU time (user + system, all threads, from `/proc/self/stat`, 10 ms ticks)
//! while the phase ran, divided by its wall time; it includes the producer and the
//! subscriber, not only the reactor.
//!
//! **Soak** (`--soak-secs N`, N > 10; runs instead of the phases): one engine with three
//! sources into one graph (`Latest`, `when_any`): a polling source every 10 ms, one every
//! 200 ms, and a passthrough fed by a task as fast as `send().await` allows; a subscriber
//! (`DropNewest`) drains it. With `--ledger`, retention keeps the newest 100,000 boundaries and
//! firings (`snapshot_every(65_536)`), and the ledger writer queue is 4,096 records. RSS (`/proc/self/statm`) is sampled at the end of every
//! second; a stderr line every 5 s. `soak_rss_start_mb` is the peak of the first 10 s (RSS
//! saw-tooths, so growth compares peaks; `soak_rss_at_10s_mb` is the single sample at 10 s),
//! `soak_rss_max_mb` the largest sample after it, `soak_rss_end_mb` the last;
//! `soak_rss_growth_pct` is the judged figure: the growth from second 10 to the end along the
//! least-squares line through every per-second sample from second 10 on, in % of the line's
//! value at second 10 (the trend, whatever phase of the saw-tooth a sample falls in). The run
//! fails if it exceeds 10 or nothing fired. Beside it, not judged:
//! `soak_rss_peak_growth_pct` = (max − start) / start × 100 and `soak_rss_end_growth_pct` =
//! (end − start) / start × 100. Also `soak_fires`, `soak_fires_per_s`, `soak_events` (boundaries taken in,
//! all sources), `soak_events_per_s`, `soak_subscriber_lagged` (count of `Lagged` items),
//! `soak_subscriber_missed`, `soak_snapshots`, `soak_retained_removed`.
//!
//! Human-readable lines go to stderr; the last stdout line is one JSON object.

mod common;
mod phases;
mod soak;

use std::sync::atomic::Ordering;
use std::time::Duration;

use cloacina::prelude::*;

use common::*;
use phases::*;

const USAGE: &str = "usage: cg_bench [--duration-secs N] [--soak-secs N] [--ledger URL] [--durability batched|sync]";

struct Args {
    secs: u64,
    soak_secs: Option<u64>,
    ledger: Option<String>,
    durability: Durability,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mut secs = 5;
    let mut soak_secs = None;
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
            "--soak-secs" => {
                soak_secs = Some(
                    args.next()
                        .and_then(|v| v.parse().ok())
                        .filter(|v| *v > soak::SOAK_WARMUP_SECS)
                        .ok_or("--soak-secs takes a whole number of seconds > 10")?,
                );
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
        soak_secs,
        ledger,
        durability: durability.unwrap_or(Durability::Batched),
    })
}

const MB: f64 = 1024.0 * 1024.0;

fn main() -> Result<(), BoxError> {
    let args = match parse_args() {
        Ok(a) => a,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    base();
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
                if r.durability == Durability::Sync {
                    "sync"
                } else {
                    "batched"
                },
            ),
            None => ("none", "none"),
        };
        if let Some(r) = &recording {
            eprintln!(
                "Recording every boundary and firing in a {backend} ledger ({mode}); run {}",
                r.run
            );
        }
        let mut json = Json::default();
        json.s("backend", backend).s("mode", mode);
        let outcome = match args.soak_secs {
            Some(secs) => run_soak(secs, &recording, &mut json).await,
            None => run_phases(args.secs, &recording, &mut json).await,
        };
        let (written, lost) = (
            LEDGER_WRITTEN.load(Ordering::Relaxed),
            LEDGER_LOST.load(Ordering::Relaxed),
        );
        if recording.is_some() {
            eprintln!("Ledger: {written} records written, {lost} lost");
        }
        json.u("ledger_records", written).u("ledger_lost", lost);
        // A failed check still prints the JSON line (with `"checks_failed":true`), so the
        // figures are not lost; a phase that could not run prints none.
        let failed = outcome?;
        println!("{}", json.render());
        if let Some(message) = failed {
            return Err(message.into());
        }
        if lost > 0 {
            return Err(format!("{lost} ledger records lost").into());
        }
        Ok(())
    })
}

/// Sorted ns samples: mean and max in us.
fn mean_max(l: &[u64]) -> (f64, f64) {
    let mean = if l.is_empty() {
        0.0
    } else {
        l.iter().sum::<u64>() as f64 / l.len() as f64 / 1000.0
    };
    (mean, l.last().map_or(0.0, |v| *v as f64 / 1000.0))
}

async fn run_phases(
    secs: u64,
    recording: &Option<Recording>,
    json: &mut Json,
) -> Result<Option<String>, BoxError> {
    let duration = Duration::from_secs(secs);
    json.u("duration_secs", secs);

    let lat = latency_phase(duration, recording, Producer::Task, None, "latency").await?;
    let l = &lat.graph_ns;
    let (mean, max) = mean_max(l);
    let (p50, p95, p99) = (
        percentile(l, 50.0),
        percentile(l, 95.0),
        percentile(l, 99.0),
    );
    let (sub_p50, sub_p99) = (percentile(&lat.sub_ns, 50.0), percentile(&lat.sub_ns, 99.0));
    eprintln!(
        "Latency (task producer, subscriber attached), send -> graph done p50/p95/p99: {p50:.1}/{p95:.1}/{p99:.1} us (mean {mean:.1}, max {max:.1}); send -> subscriber receipt p50/p99: {sub_p50:.1}/{sub_p99:.1} us; {} of {} events, {} missing",
        l.len(), lat.sent, lat.missing
    );
    json.f("p50_us", p50, 2)
        .f("p95_us", p95, 2)
        .f("p99_us", p99, 2)
        .f("max_us", max, 2)
        .f("mean_us", mean, 2)
        .f("sub_p50_us", sub_p50, 2)
        .f("sub_p99_us", sub_p99, 2)
        .u("latency_events", l.len() as u64)
        .u("latency_sent", lat.sent)
        .u("latency_missing", lat.missing);

    let th = latency_phase(duration, recording, Producer::Thread, None, "thread").await?;
    let (t50, t99) = (
        percentile(&th.graph_ns, 50.0),
        percentile(&th.graph_ns, 99.0),
    );
    let (ts50, ts99) = (percentile(&th.sub_ns, 50.0), percentile(&th.sub_ns, 99.0));
    eprintln!(
        "Thread producer (std::thread, send_blocking; default reactor, subscriber attached), send -> graph done p50/p99: {t50:.1}/{t99:.1} us; send -> subscriber receipt p50/p99: {ts50:.1}/{ts99:.1} us; {} of {} events, {} missing; process CPU {:.2} cores",
        th.graph_ns.len(), th.sent, th.missing, th.cpu_cores
    );

    let tb = thread_baseline_phase(duration).await?;
    let (tb50, tb99) = (percentile(&tb, 50.0), percentile(&tb, 99.0));
    let ratio = t50 / tb50;
    eprintln!(
        "Thread baseline (bare std::thread -> tokio task relay, blocking_send, same pacing), send -> receipt p50/p99: {tb50:.1}/{tb99:.1} us; thread/baseline p50 x{ratio:.2} (target <= 1.3)"
    );
    json.f("thread_p50_us", t50, 2)
        .f("thread_p99_us", t99, 2)
        .f("thread_sub_p50_us", ts50, 2)
        .f("thread_sub_p99_us", ts99, 2)
        .u("thread_missing", th.missing)
        .f("thread_cpu_cores", th.cpu_cores, 3)
        .f("thread_baseline_p50_us", tb50, 2)
        .f("thread_baseline_p99_us", tb99, 2)
        .f("thread_vs_baseline_p50", ratio, 3);

    let spin = LowLatency::default();
    let sp = latency_phase(
        duration,
        recording,
        Producer::Thread,
        Some(spin),
        "spin-thread",
    )
    .await?;
    let (s50, s99) = (
        percentile(&sp.graph_ns, 50.0),
        percentile(&sp.graph_ns, 99.0),
    );
    let (ss50, ss99) = (percentile(&sp.sub_ns, 50.0), percentile(&sp.sub_ns, 99.0));
    eprintln!(
        "Spin thread (std::thread, send_blocking; LowLatency reactor, spin {:?}), send -> graph done p50/p99: {s50:.1}/{s99:.1} us (targets <= 3 / <= 30); send -> subscriber receipt (the subscriber is a tokio task: includes a task wake) p50/p99: {ss50:.1}/{ss99:.1} us; {} of {} events, {} missing; process CPU {:.2} cores",
        spin.spin, sp.graph_ns.len(), sp.sent, sp.missing, sp.cpu_cores
    );
    json.f("spin_thread_p50_us", s50, 2)
        .f("spin_thread_p99_us", s99, 2)
        .f("spin_thread_sub_p50_us", ss50, 2)
        .f("spin_thread_sub_p99_us", ss99, 2)
        .u("spin_thread_missing", sp.missing)
        .f("spin_cpu_cores", sp.cpu_cores, 3)
        .u("spin_us", spin.spin.as_micros() as u64);

    let sb = tokio::task::spawn_blocking(move || {
        spin_baseline_phase(duration).map_err(|e| e.to_string())
    })
    .await??;
    let (sb50, sb99) = (percentile(&sb, 50.0), percentile(&sb, 99.0));
    eprintln!(
        "Spin baseline (bare std::thread -> spinning std::thread hand-off, same pacing), send -> receipt p50/p99: {sb50:.1}/{sb99:.1} us; spin thread/baseline p50 x{:.2}",
        s50 / sb50
    );
    json.f("spin_baseline_p50_us", sb50, 2)
        .f("spin_baseline_p99_us", sb99, 2)
        .f("spin_vs_baseline_p50", s50 / sb50, 3);

    let seq = sequential_phase(duration, recording, false).await?;
    let seq_rate = seq.events as f64 / seq.elapsed.as_secs_f64();
    let exactly_once = seq.fires == seq.events && seq.violations == 0;
    eprintln!(
        "Max throughput (Sequential, no subscriber): {seq_rate:.0} events/s; {} events, {} fires, order violations {}, exactly once: {exactly_once}",
        seq.events, seq.fires, seq.violations
    );
    let rss_mb = seq.rss_growth_bytes as f64 / MB;
    eprintln!("RSS growth during the sequential phase (s1 -> last whole s): {rss_mb:.2} MB");
    let sub = sequential_phase(duration, recording, true).await?;
    let sub_rate = sub.events as f64 / sub.elapsed.as_secs_f64();
    let sub_once = sub.fires == sub.events && sub.delivered == sub.events && sub.violations == 0;
    eprintln!(
        "Max throughput (Sequential, subscriber attached, until it received the last firing): {sub_rate:.0} events/s; {} events, {} fires, {} delivered, order violations {}, exactly once: {sub_once}",
        sub.events, sub.fires, sub.delivered, sub.violations
    );
    json.f("seq_events_per_s", seq_rate, 0)
        .u("seq_events", seq.events)
        .u("seq_fires", seq.fires)
        .u("seq_order_violations", seq.violations)
        .b("seq_exactly_once", exactly_once)
        .f("seq_rss_growth_mb", rss_mb, 3)
        .f("seq_sub_events_per_s", sub_rate, 0)
        .u("seq_sub_events", sub.events)
        .u("seq_sub_fires", sub.fires)
        .u("seq_sub_delivered", sub.delivered)
        .u("seq_sub_order_violations", sub.violations)
        .b("seq_sub_exactly_once", sub_once);

    let latest = latest_phase(duration, recording).await?;
    let secs_f = latest.elapsed.as_secs_f64();
    let (in_rate, fire_rate) = (
        latest.events_in as f64 / secs_f,
        latest.fires as f64 / secs_f,
    );
    eprintln!(
        "Latest (no subscriber): {in_rate:.0} events taken in/s, {fire_rate:.0} fires/s while the producer ran; {} events coalesced into {} fires over the reactor's life",
        latest.events_total, latest.fires_total
    );
    json.f("latest_events_in_per_s", in_rate, 0)
        .f("latest_fires_per_s", fire_rate, 0)
        .u("latest_events", latest.events_total)
        .u("latest_fires", latest.fires_total)
        .u("latest_sends", latest.sends);

    let baseline = baseline_phase(duration).await?;
    eprintln!(
        "Baseline (bare one-hop tokio mpsc, task -> task, same run): p50 {:.1} us, p99 {:.1} us, {:.0} msgs/s; engine (task producer)/baseline: p50 x{:.2}, p99 x{:.2}, throughput x{:.2}",
        baseline.p50_us, baseline.p99_us, baseline.msgs_per_s,
        p50 / baseline.p50_us, p99 / baseline.p99_us, seq_rate / baseline.msgs_per_s
    );
    json.f("baseline_p50_us", baseline.p50_us, 2)
        .f("baseline_p99_us", baseline.p99_us, 2)
        .f("baseline_msgs_per_s", baseline.msgs_per_s, 0);

    let missing = lat.missing + th.missing + sp.missing;
    let ok = exactly_once && sub_once && missing == 0;
    json.b("checks_failed", !ok);
    Ok((!ok).then(|| "an event was not fired (or delivered) exactly once".to_string()))
}

async fn run_soak(
    secs: u64,
    recording: &Option<Recording>,
    json: &mut Json,
) -> Result<Option<String>, BoxError> {
    eprintln!("Soak for {secs} s: polling sources every 10 ms and 200 ms, a passthrough flat out, Latest, subscriber attached");
    let r = soak::soak(secs, recording).await?;
    let mb = |b: u64| b as f64 / MB;
    // Judged: the trend (least squares over every sample after the warm-up). RSS saw-tooths
    // by ~20 MB with a sled ledger, so peak or end samples alone say where in a tooth they fell.
    let growth = r.trend_growth_pct;
    let peak_growth = if r.rss_start == 0 {
        f64::NAN
    } else {
        (r.rss_max as f64 - r.rss_start as f64) / r.rss_start as f64 * 100.0
    };
    let end_growth = if r.rss_start == 0 {
        f64::NAN
    } else {
        (r.rss_end as f64 - r.rss_start as f64) / r.rss_start as f64 * 100.0
    };
    let (fires_rate, events_rate) = (r.fires as f64 / secs as f64, r.events as f64 / secs as f64);
    eprintln!(
        "Soak: RSS growth after the first 10 s (trend) {growth:.1} % (limit 10 %); peak over the first 10 s {:.1} MB, max after {:.1} MB (peak growth {peak_growth:.1} %), end {:.1} MB (end vs first-10-s peak {end_growth:.1} %); {} fires ({fires_rate:.0}/s), {} events in ({events_rate:.0}/s); subscriber got {} firings, {} Lagged ({} missed); {} snapshots, {} records removed by retention",
        mb(r.rss_start), mb(r.rss_max), mb(r.rss_end), r.fires, r.events,
        r.delivered, r.lagged, r.missed, r.snapshots, r.retained_removed
    );
    let ok = growth.is_finite() && growth <= 10.0 && r.fires > 0;
    json.u("soak_secs", r.secs)
        .f("soak_rss_start_mb", mb(r.rss_start), 2)
        .f("soak_rss_at_10s_mb", mb(r.rss_at_warm), 2)
        .f("soak_rss_end_mb", mb(r.rss_end), 2)
        .f("soak_rss_max_mb", mb(r.rss_max), 2)
        .f("soak_rss_growth_pct", growth, 2)
        .f("soak_rss_peak_growth_pct", peak_growth, 2)
        .f("soak_rss_end_growth_pct", end_growth, 2)
        .u("soak_fires", r.fires)
        .f("soak_fires_per_s", fires_rate, 0)
        .u("soak_events", r.events)
        .f("soak_events_per_s", events_rate, 0)
        .u("soak_subscriber_delivered", r.delivered)
        .u("soak_subscriber_lagged", r.lagged)
        .u("soak_subscriber_missed", r.missed)
        .u("soak_snapshots", r.snapshots)
        .u("soak_retained_removed", r.retained_removed)
        .b("checks_failed", !ok);
    Ok((!ok).then(|| {
        format!(
            "soak failed: RSS growth {growth:.1} % (limit 10 %), {} fires",
            r.fires
        )
    }))
}
