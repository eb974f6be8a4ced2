//! Criterion benches of push-to-result through a reactor (no ledger, no accumulator task).
//!
//! ```text
//! cargo bench --bench reactor -- --warm-up-time 1 --measurement-time 2
//! ```
//!
//! The graph has two plain nodes (`ingest` reads source `events`, `finish` reads `ingest`); the
//! reactor fires `when_any` with `InputStrategy::Sequential` (one firing per event). Everything
//! runs on one multi-thread tokio runtime with 2 worker threads, created once; the bench thread
//! drives it with `block_on` (the producer and waiter), the reactor task runs on the workers.
//!
//! - `reactor/round_trip`: per-event latency. `send(v).await`, then await the firing of that
//!   event on a subscription; each iteration is timed on its own (`iter_custom`) and the
//!   timings summed, so only one event is ever in flight.
//! - `reactor/throughput_10k`: push 10,000 events with `send().await` (the inbound queue holds
//!   1,024, so the producer waits when it is full), then wait until `stats().fires` has grown by
//!   10,000. Reported as elements per second. This reactor has no subscriber.
#![allow(missing_docs)] // criterion_group! generates an undocumented `pub fn`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloacina::prelude::*;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tokio::runtime::Runtime;

const BATCH: u64 = 10_000;

fn ingest(event: Option<&u64>) -> u64 {
    event.copied().unwrap_or(u64::MAX)
}

fn finish(event: &u64) -> u64 {
    event.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17)
}

fn graph() -> Arc<CompiledGraph> {
    Arc::new(
        GraphBuilder::new("reactor_bench")
            .node("ingest", (source::<u64>("events"),), ingest)
            .node("finish", (upstream::<u64>("ingest"),), finish)
            .build()
            .expect("valid graph"),
    )
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn spawn_reactor(rt: &Runtime) -> ReactorHandle {
    let _guard = rt.enter();
    ReactorHandle::builder(graph())
        .strategy(InputStrategy::Sequential)
        .spawn()
        .expect("reactor spawns")
}

fn round_trip(c: &mut Criterion, rt: &Runtime) {
    let reactor = spawn_reactor(rt);
    let mut results = reactor.subscribe();
    let sender = reactor.sender::<u64>("events").expect("source `events`");
    let mut next = 0u64;
    c.bench_function("reactor/round_trip", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let v = next;
                    next += 1;
                    let start = Instant::now();
                    sender.send(v).await.expect("reactor running");
                    let firing = results
                        .recv()
                        .await
                        .expect("reactor running")
                        .expect("subscriber keeps up");
                    total += start.elapsed();
                    assert_eq!(
                        firing.result.output::<u64>("finish"),
                        Some(&finish(&v)),
                        "firing {} is for event {v}",
                        firing.id
                    );
                    black_box(firing);
                }
                total
            })
        });
    });
    rt.block_on(reactor.shutdown()).expect("clean shutdown");
}

fn throughput(c: &mut Criterion, rt: &Runtime) {
    let reactor = spawn_reactor(rt);
    let sender = reactor.sender::<u64>("events").expect("source `events`");
    let mut group = c.benchmark_group("reactor");
    group.throughput(Throughput::Elements(BATCH));
    group.sample_size(10);
    group.bench_function("throughput_10k", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let target = reactor.stats().fires + BATCH;
                    for v in 0..BATCH {
                        sender.send(v).await.expect("reactor running");
                    }
                    // The tail still queued in the reactor (at most the inbound capacity).
                    let deadline = Instant::now() + Duration::from_secs(60);
                    while reactor.stats().fires < target {
                        assert!(Instant::now() < deadline, "reactor stalled");
                        std::thread::yield_now();
                    }
                }
                start.elapsed()
            })
        });
    });
    group.finish();
    let report = rt.block_on(reactor.shutdown()).expect("clean shutdown");
    assert_eq!(report.fires, report.boundaries, "one firing per event");
}

fn reactor_benches(c: &mut Criterion) {
    let rt = runtime();
    round_trip(c, &rt);
    throughput(c, &rt);
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = reactor_benches
}
criterion_main!(benches);
