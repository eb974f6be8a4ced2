//! The measured phases: latency (task and OS-thread producers, default and low-latency
//! reactors), throughput (Sequential bare and with a subscriber, Latest) and the bare tokio
//! baselines they are compared with.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloacina::prelude::*;
use tokio::sync::oneshot;

use crate::common::*;

/// Per-event latencies of one paced phase (ns, sorted).
pub struct LatencyResult {
    /// Send instant -> completion of the firing that consumed the event (`Firing::completed`).
    pub graph_ns: Vec<u64>,
    /// Send instant -> the subscriber task received that firing.
    pub sub_ns: Vec<u64>,
    pub sent: u64,
    pub missing: u64,
    /// Process CPU time over wall time while the producer ran.
    pub cpu_cores: f64,
}

/// What [`stamp_firings`] collected.
struct Stamps {
    graph_ns: Vec<u64>,
    sub_ns: Vec<u64>,
    seen: Vec<bool>,
    /// Events the producer reported sent.
    sent: u64,
}

/// A subscriber task: for every firing, stamps its receipt and records both latencies (into
/// pre-sized vectors, no sampling), until it holds as many as the producer reports it sent
/// (or nothing arrives for 10 s after that report).
async fn stamp_firings(
    mut results: Subscription,
    mut sent_rx: oneshot::Receiver<u64>,
    capacity: usize,
) -> Result<Stamps, String> {
    let mut s = Stamps {
        graph_ns: Vec::with_capacity(capacity),
        sub_ns: Vec::with_capacity(capacity),
        seen: vec![false; capacity],
        sent: 0,
    };
    let mut sent: Option<u64> = None;
    loop {
        if let Some(n) = sent {
            s.sent = n;
            if s.graph_ns.len() as u64 >= n {
                return Ok(s);
            }
        }
        tokio::select! {
            item = results.recv() => match item {
                Some(Ok(firing)) => {
                    let received_ns = now_ns();
                    if let Some(done) = firing.result.output::<Done>("finish") {
                        s.graph_ns.push(ns_of(firing.completed).saturating_sub(done.sent_ns));
                        s.sub_ns.push(received_ns.saturating_sub(done.sent_ns));
                        let i = done.id as usize;
                        if i >= s.seen.len() {
                            s.seen.resize(i + 1, false);
                        }
                        s.seen[i] = true;
                    }
                }
                Some(Err(lag)) => return Err(format!("latency subscriber lagged: {lag}")),
                None => return Err("reactor stopped early".into()),
            },
            n = &mut sent_rx, if sent.is_none() => {
                sent = Some(n.map_err(|_| "the producer stopped without a count".to_string())?);
            }
            () = tokio::time::sleep(Duration::from_secs(10)), if sent.is_some() => return Ok(s),
        }
    }
}

/// Which producer a latency phase uses.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Producer {
    /// A tokio task on the engine's runtime, paced by `tokio::time::interval`.
    Task,
    /// A plain OS thread using `send_blocking`, paced on an absolute schedule.
    Thread,
}

/// A Sequential engine fed 1,000 events/s by `producer`; a subscriber task attached (queue of
/// 65,536, blocking overflow) measures every event. `low_latency` runs the reactor on its own
/// spinning thread.
pub async fn latency_phase(
    duration: Duration,
    recording: &Option<Recording>,
    producer: Producer,
    low_latency: Option<LowLatency>,
    phase: &str,
) -> Result<LatencyResult, BoxError> {
    let engine = engine(
        graph(false)?,
        InputStrategy::Sequential,
        recording,
        phase,
        low_latency,
    )?;
    let sender = engine.sender::<Event>("events")?;
    let results = engine.subscribe_with(SubscribeOptions {
        capacity: 65_536,
        overflow: Overflow::Block {
            max_wait: Duration::from_secs(60),
        },
    });
    let capacity = duration.as_millis() as usize + 1024;
    let (sent_tx, sent_rx) = oneshot::channel();
    let subscriber = tokio::spawn(stamp_firings(results, sent_rx, capacity));
    let cpu0 = process_cpu_secs();
    let t0 = Instant::now();
    let thread = match producer {
        Producer::Task => {
            tokio::spawn(async move {
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
                let _ = sent_tx.send(id);
            });
            None
        }
        Producer::Thread => Some(
            std::thread::Builder::new()
                .name("cg_bench-producer".into())
                .spawn(move || {
                    let sent = paced_thread(duration, |id, sent_ns| {
                        sender.send_blocking(Event { id, sent_ns }).is_ok()
                    });
                    let _ = sent_tx.send(sent);
                })?,
        ),
    };
    let stamps = subscriber.await??;
    let cpu_cores = (process_cpu_secs() - cpu0) / t0.elapsed().as_secs_f64();
    if let Some(t) = thread {
        tokio::task::spawn_blocking(move || t.join())
            .await?
            .map_err(|_| "producer thread panicked")?;
    }
    finish_engine(engine).await?;
    let sent = stamps.sent;
    let missing = (0..sent as usize)
        .filter(|&i| !stamps.seen.get(i).copied().unwrap_or(false))
        .count() as u64;
    let (mut graph_ns, mut sub_ns) = (stamps.graph_ns, stamps.sub_ns);
    graph_ns.sort_unstable();
    sub_ns.sort_unstable();
    Ok(LatencyResult {
        sent,
        graph_ns,
        sub_ns,
        missing,
        cpu_cores,
    })
}

pub struct SeqResult {
    pub events: u64,
    pub fires: u64,
    /// Firings the subscriber received (equal to `fires` without one).
    pub delivered: u64,
    pub elapsed: Duration,
    pub violations: u64,
    pub rss_growth_bytes: i64,
}

/// Sequential, pushed as fast as `send().await` allows for `duration`; the graph checks ids
/// arrive consecutively. With `subscribe`, a task drains a subscription (queue of 4,096,
/// blocking overflow, so nothing is dropped) and checks ids too; the rate then counts until
/// the subscriber received the last firing.
pub async fn sequential_phase(
    duration: Duration,
    recording: &Option<Recording>,
    subscribe: bool,
) -> Result<SeqResult, BoxError> {
    NEXT_ID.store(0, Ordering::Relaxed);
    ORDER_VIOLATIONS.store(0, Ordering::Relaxed);
    let phase = if subscribe {
        "sequential-sub"
    } else {
        "sequential"
    };
    let engine = engine(
        graph(true)?,
        InputStrategy::Sequential,
        recording,
        phase,
        None,
    )?;
    let sender = engine.sender::<Event>("events")?;
    let reactor = engine.reactor().clone();
    let fires_before = reactor.stats().fires;
    let received = Arc::new(AtomicU64::new(0));
    let drain = subscribe.then(|| {
        let mut results = engine.subscribe_with(SubscribeOptions {
            capacity: 4096,
            overflow: Overflow::Block {
                max_wait: Duration::from_secs(60),
            },
        });
        let received = Arc::clone(&received);
        tokio::spawn(async move {
            let (mut violations, mut lagged) = (0u64, 0u64);
            while let Some(item) = results.recv().await {
                match item {
                    Ok(firing) => {
                        if let Some(done) = firing.result.output::<Done>("finish") {
                            let n = received.load(Ordering::Relaxed);
                            violations += u64::from(done.id != n);
                            received.store(n + 1, Ordering::Relaxed);
                        }
                    }
                    Err(_) => lagged += 1,
                }
            }
            (violations, lagged)
        })
    });
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
    while (reactor.stats().fires - fires_before < events
        || (subscribe && received.load(Ordering::Relaxed) < events))
        && Instant::now() < deadline
    {
        tokio::task::yield_now().await;
    }
    let elapsed = start.elapsed();
    let fires = reactor.stats().fires - fires_before;
    let written_before = LEDGER_WRITTEN.load(Ordering::Relaxed);
    finish_engine(engine).await?;
    let (sub_violations, sub_lagged) = match drain {
        Some(task) => task.await?,
        None => (0, 0),
    };
    let delivered = if subscribe {
        received.load(Ordering::Relaxed)
    } else {
        fires
    };
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
        delivered,
        elapsed,
        violations: ORDER_VIOLATIONS.load(Ordering::Relaxed)
            + u64::from(NEXT_ID.load(Ordering::Relaxed) != events)
            + sub_violations
            + sub_lagged,
        rss_growth_bytes,
    })
}

pub struct LatestResult {
    /// Boundaries the reactor accepted while the producer ran (`stats().boundaries` delta).
    pub events_in: u64,
    /// Firings while the producer ran.
    pub fires: u64,
    /// Over the reactor's life (after shutdown took in what was queued).
    pub events_total: u64,
    pub fires_total: u64,
    /// Producer-side `send`s that returned Ok.
    pub sends: u64,
    pub elapsed: Duration,
}

/// Latest, pushed as fast as `send().await` allows for `duration`, no subscriber.
pub async fn latest_phase(
    duration: Duration,
    recording: &Option<Recording>,
) -> Result<LatestResult, BoxError> {
    let engine = engine(
        graph(false)?,
        InputStrategy::Latest,
        recording,
        "latest",
        None,
    )?;
    let sender = engine.sender::<Event>("events")?;
    let reactor = engine.reactor().clone();
    let before = reactor.stats();
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
    let sends = producer.await?;
    let elapsed = start.elapsed();
    let after = reactor.stats();
    let total = finish_engine(engine).await?;
    if total.boundaries != sends {
        return Err(format!(
            "latest: {sends} sends but the reactor took in {} boundaries",
            total.boundaries
        )
        .into());
    }
    Ok(LatestResult {
        events_in: after.boundaries - before.boundaries,
        fires: after.fires - before.fires,
        events_total: total.boundaries,
        fires_total: total.fires,
        sends,
        elapsed,
    })
}

pub struct Baseline {
    pub p50_us: f64,
    pub p99_us: f64,
    pub msgs_per_s: f64,
}

/// The floor the task-producer phases are compared with: one tokio mpsc hop between two
/// tasks, same pacing; then flat out for throughput.
pub async fn baseline_phase(duration: Duration) -> Result<Baseline, BoxError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<u64>(1024);
    let consumer = tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(duration.as_millis() as usize + 16);
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

/// The floor the OS-thread phases are compared with: a bare std::thread -> tokio task relay
/// (tokio mpsc of 1024, `blocking_send` on the thread, a task on the same runtime receives and
/// stamps), same pacing as [`latency_phase`] with [`Producer::Thread`]. Sorted ns.
pub async fn thread_baseline_phase(duration: Duration) -> Result<Vec<u64>, BoxError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<u64>(1024);
    let consumer = tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(duration.as_millis() as usize + 16);
        while let Some(sent_ns) = rx.recv().await {
            latencies.push(now_ns().saturating_sub(sent_ns));
        }
        latencies
    });
    let producer = std::thread::Builder::new()
        .name("cg_bench-baseline-producer".into())
        .spawn(move || paced_thread(duration, |_, sent_ns| tx.blocking_send(sent_ns).is_ok()))?;
    let mut latencies = consumer.await?;
    let sent = tokio::task::spawn_blocking(move || producer.join())
        .await?
        .map_err(|_| "baseline producer thread panicked")?;
    if latencies.len() as u64 != sent {
        return Err(format!(
            "thread baseline lost messages: {sent} sent, {} received",
            latencies.len()
        )
        .into());
    }
    latencies.sort_unstable();
    Ok(latencies)
}

/// The floor the low-latency phase is compared with: a bare std::thread -> spinning
/// std::thread hand-off (tokio mpsc of 1024, `blocking_send` on the producer, the consumer
/// spins on `try_recv` and stamps), same pacing. No engine, no graph. Sorted ns.
pub fn spin_baseline_phase(duration: Duration) -> Result<Vec<u64>, BoxError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<u64>(1024);
    let consumer = std::thread::Builder::new()
        .name("cg_bench-spin-baseline".into())
        .spawn(move || {
            let mut latencies = Vec::with_capacity(duration.as_millis() as usize + 16);
            loop {
                match rx.try_recv() {
                    Ok(sent_ns) => latencies.push(now_ns().saturating_sub(sent_ns)),
                    Err(tokio::sync::mpsc::error::TryRecvError::Empty) => std::hint::spin_loop(),
                    Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => break,
                }
            }
            latencies
        })?;
    let sent = paced_thread(duration, |_, sent_ns| tx.blocking_send(sent_ns).is_ok());
    drop(tx);
    let mut latencies = consumer
        .join()
        .map_err(|_| "spin baseline consumer thread panicked")?;
    if latencies.len() as u64 != sent {
        return Err(format!(
            "spin baseline lost messages: {sent} sent, {} received",
            latencies.len()
        )
        .into());
    }
    latencies.sort_unstable();
    Ok(latencies)
}
