//! Criterion benches of compiled graph firing and of the `InputCache`, without a reactor.
//!
//! ```text
//! cargo bench --bench graph -- --warm-up-time 1 --measurement-time 2
//! ```
//!
//! **Firing** (group `fire`): each graph is compiled once and fired through one reused
//! [`Executor`] on a current-thread tokio runtime. A single `block_on` wraps every timed batch
//! of firings (`iter_custom`), so the runtime's entry cost is not part of the figure.
//! - `1_node/execute` and `1_node/fire`: one entry node; `execute(&cache, Collect::Nothing)`
//!   drops the output, `fire(&cache)` moves it into a `GraphResult` (one box per terminal).
//! - `chain_5/execute`: entry -> s1 -> s2 -> s3 -> s4, plain nodes.
//! - `diamond/execute`: entry -> a, entry -> b, (a, b) -> m.
//! - `router/execute`: a router with two routes; successive firings alternate between two
//!   pre-filled caches so the taken branch alternates (the other branch is skipped).
//! - `chain_5_async/execute`: the 5-node chain with async nodes, each firing boxing one future
//!   per node: the difference with `chain_5/execute` is the cost of async nodes.
//!
//! **Declared graphs** (group `fire_macro`): the 1-node, chain, diamond and router graphs
//! declared with `#[computation_graph]`, fired the same way; they must cost the same as the
//! hand-built ones.
//!
//! **InputCache** (group `cache`, an aligned cache of a 4-source graph, all slots filled):
//! - `update+snapshot`: `update(name, v)` then `snapshot()`, the snapshot dropped before the
//!   next update (the reactor's pattern: no copy-on-write copy).
//! - `set_at+snapshot`: the same with `set_at(index, boundary)` (a pre-built boundary cloned:
//!   one `Arc` increment), the reactor's hot path.
//! - `update+snapshot/older_alive` and `set_at+snapshot/older_alive`: the previous snapshot
//!   is still held when the cache is updated, so every update copies the slot table
//!   (copy-on-write cost).
#![allow(missing_docs)] // criterion_group! generates an undocumented `pub fn`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloacina::graph::{Boundary, Collect, Executor};
use cloacina::prelude::*;
use criterion::{criterion_group, criterion_main, Criterion};
use tokio::runtime::Runtime;

fn entry(x: Option<&u64>) -> u64 {
    x.copied().unwrap_or(0).wrapping_add(1)
}

fn step(x: &u64) -> u64 {
    x.wrapping_mul(3).wrapping_add(1)
}

fn other(x: &u64) -> u64 {
    x.rotate_left(7) ^ 0x5555
}

fn merge(a: &u64, b: &u64) -> u64 {
    a.wrapping_add(*b)
}

async fn entry_async(x: Option<&u64>) -> u64 {
    entry(x)
}

async fn step_async(x: &u64) -> u64 {
    step(x)
}

/// Router output: which branch runs.
enum Parity {
    Even(u64),
    Odd(u64),
}

fn parity(x: Option<&u64>) -> Parity {
    match x.copied().unwrap_or(0) {
        v if v % 2 == 0 => Parity::Even(v),
        v => Parity::Odd(v),
    }
}

fn one_node() -> Arc<CompiledGraph> {
    Arc::new(
        GraphBuilder::new("one_node")
            .node("entry", (source::<u64>("x"),), entry)
            .build()
            .expect("valid graph"),
    )
}

fn chain_5() -> Arc<CompiledGraph> {
    Arc::new(
        GraphBuilder::new("chain_5")
            .node("entry", (source::<u64>("x"),), entry)
            .node("s1", (upstream::<u64>("entry"),), step)
            .node("s2", (upstream::<u64>("s1"),), step)
            .node("s3", (upstream::<u64>("s2"),), step)
            .node("s4", (upstream::<u64>("s3"),), step)
            .build()
            .expect("valid graph"),
    )
}

fn chain_5_async() -> Arc<CompiledGraph> {
    Arc::new(
        GraphBuilder::new("chain_5_async")
            .async_node("entry", (source::<u64>("x"),), entry_async)
            .async_node("s1", (upstream::<u64>("entry"),), step_async)
            .async_node("s2", (upstream::<u64>("s1"),), step_async)
            .async_node("s3", (upstream::<u64>("s2"),), step_async)
            .async_node("s4", (upstream::<u64>("s3"),), step_async)
            .build()
            .expect("valid graph"),
    )
}

fn diamond() -> Arc<CompiledGraph> {
    Arc::new(
        GraphBuilder::new("diamond")
            .node("entry", (source::<u64>("x"),), entry)
            .node("a", (upstream::<u64>("entry"),), step)
            .node("b", (upstream::<u64>("entry"),), other)
            .node("m", (upstream::<u64>("a"), upstream::<u64>("b")), merge)
            .build()
            .expect("valid graph"),
    )
}

fn router() -> Arc<CompiledGraph> {
    Arc::new(
        GraphBuilder::new("router")
            .router(
                "parity",
                (source::<u64>("x"),),
                parity,
                [
                    Route::new("Even", "even", |p: &Parity| match p {
                        Parity::Even(v) => Some(v),
                        Parity::Odd(_) => None,
                    }),
                    Route::new("Odd", "odd", |p: &Parity| match p {
                        Parity::Odd(v) => Some(v),
                        Parity::Even(_) => None,
                    }),
                ],
            )
            .node("even", (upstream::<u64>("parity"),), step)
            .node("odd", (upstream::<u64>("parity"),), other)
            .build()
            .expect("valid graph"),
    )
}

// The same graphs declared with #[computation_graph]: the macro expands to the builder calls
// above, so firing costs must match (group `fire_macro`).

#[cloacina::computation_graph(graph = { entry(x) })]
mod one_node_decl {
    pub fn entry(x: Option<&u64>) -> u64 {
        super::entry(x)
    }
}

#[cloacina::computation_graph(graph = { entry(x) -> s1 -> s2 -> s3 -> s4 })]
mod chain_5_decl {
    pub fn entry(x: Option<&u64>) -> u64 {
        super::entry(x)
    }
    pub fn s1(x: &u64) -> u64 {
        super::step(x)
    }
    pub fn s2(x: &u64) -> u64 {
        super::step(x)
    }
    pub fn s3(x: &u64) -> u64 {
        super::step(x)
    }
    pub fn s4(x: &u64) -> u64 {
        super::step(x)
    }
}

#[cloacina::computation_graph(graph = { entry(x) -> a -> m, entry -> b -> m })]
mod diamond_decl {
    pub fn entry(x: Option<&u64>) -> u64 {
        super::entry(x)
    }
    pub fn a(x: &u64) -> u64 {
        super::step(x)
    }
    pub fn b(x: &u64) -> u64 {
        super::other(x)
    }
    pub fn m(a: &u64, b: &u64) -> u64 {
        super::merge(a, b)
    }
}

#[cloacina::computation_graph(graph = { parity(x) => { Even -> even, Odd -> odd } })]
mod router_decl {
    pub fn parity(x: Option<&u64>) -> super::Parity {
        super::parity(x)
    }
    pub fn even(x: &u64) -> u64 {
        super::step(x)
    }
    pub fn odd(x: &u64) -> u64 {
        super::other(x)
    }
}

fn cache_with(graph: &CompiledGraph, x: u64) -> InputCache {
    let mut cache = graph.new_cache();
    cache.update("x", x);
    cache
}

fn current_thread() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Times `iters` firings of `executor`, cycling through `caches`, inside one `block_on`.
fn time_execute(
    rt: &Runtime,
    executor: &mut Executor,
    caches: &[InputCache],
    collect: Collect,
    iters: u64,
) -> Duration {
    rt.block_on(async {
        let start = Instant::now();
        for (_, cache) in (0..iters).zip(caches.iter().cycle()) {
            let outputs = executor
                .execute(black_box(cache), collect)
                .await
                .expect("firing succeeds");
            black_box(outputs);
        }
        start.elapsed()
    })
}

fn bench_execute(
    c: &mut Criterion,
    rt: &Runtime,
    name: &str,
    graph: Arc<CompiledGraph>,
    caches: &[InputCache],
) {
    let mut executor = Executor::new(graph);
    // Sanity check outside the measurement: every cache fires cleanly.
    for cache in caches {
        rt.block_on(executor.execute(cache, Collect::Outputs))
            .expect("firing succeeds");
    }
    c.bench_function(name, |b| {
        b.iter_custom(|iters| time_execute(rt, &mut executor, caches, Collect::Nothing, iters));
    });
}

fn fire_benches(c: &mut Criterion) {
    let rt = current_thread();

    let g = one_node();
    let caches = [cache_with(&g, 41)];
    bench_execute(c, &rt, "fire/1_node/execute", Arc::clone(&g), &caches);
    let mut executor = Executor::new(g);
    let check = rt.block_on(executor.fire(&caches[0]));
    assert_eq!(check.output::<u64>("entry"), Some(&42));
    c.bench_function("fire/1_node/fire", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(executor.fire(black_box(&caches[0])).await);
                }
                start.elapsed()
            })
        });
    });

    let g = chain_5();
    let caches = [cache_with(&g, 7)];
    bench_execute(c, &rt, "fire/chain_5/execute", g, &caches);

    let g = diamond();
    let caches = [cache_with(&g, 7)];
    bench_execute(c, &rt, "fire/diamond/execute", g, &caches);

    let g = router();
    let caches = [cache_with(&g, 2), cache_with(&g, 3)];
    // Both branches must actually be taken in turn.
    let mut executor = Executor::new(Arc::clone(&g));
    let even = rt.block_on(executor.fire(&caches[0]));
    let odd = rt.block_on(executor.fire(&caches[1]));
    assert!(even.output::<u64>("even").is_some() && even.output::<u64>("odd").is_none());
    assert!(odd.output::<u64>("odd").is_some() && odd.output::<u64>("even").is_none());
    bench_execute(c, &rt, "fire/router/execute", g, &caches);

    let g = chain_5_async();
    let caches = [cache_with(&g, 7)];
    bench_execute(c, &rt, "fire/chain_5_async/execute", g, &caches);

    // The macro-declared twins, fired the same way.
    let declared = [
        (
            "fire_macro/1_node/execute",
            one_node_decl::graph(),
            vec![41],
        ),
        ("fire_macro/chain_5/execute", chain_5_decl::graph(), vec![7]),
        ("fire_macro/diamond/execute", diamond_decl::graph(), vec![7]),
        (
            "fire_macro/router/execute",
            router_decl::graph(),
            vec![2, 3],
        ),
    ];
    for (name, graph, inputs) in declared {
        let g = graph.expect("declared graph is valid");
        let caches: Vec<InputCache> = inputs.iter().map(|x| cache_with(&g, *x)).collect();
        bench_execute(c, &rt, name, g, &caches);
    }
}

const CACHE_SOURCES: [&str; 4] = ["a", "b", "c", "d"];

fn filled_cache() -> InputCache {
    let graph = GraphBuilder::new("cache")
        .node(
            "sum",
            (
                source::<u64>(CACHE_SOURCES[0]),
                source::<u64>(CACHE_SOURCES[1]),
                source::<u64>(CACHE_SOURCES[2]),
                source::<u64>(CACHE_SOURCES[3]),
            ),
            |a: Option<&u64>, b: Option<&u64>, c: Option<&u64>, d: Option<&u64>| {
                [a, b, c, d].iter().flatten().copied().sum::<u64>()
            },
        )
        .build()
        .expect("valid graph");
    let mut cache = graph.new_cache();
    for (i, name) in CACHE_SOURCES.iter().enumerate() {
        cache.update(*name, i as u64);
    }
    cache
}

fn cache_benches(c: &mut Criterion) {
    let mut cache = filled_cache();
    let index = 1;
    assert!(
        cache.at(index).is_some(),
        "slot {index} exists and is filled"
    );
    let boundary = Boundary::new(1, 5u64);

    c.bench_function("cache/update+snapshot", |b| {
        let mut v = 0u64;
        b.iter(|| {
            v += 1;
            cache.update(CACHE_SOURCES[index], v);
            let snap = cache.snapshot();
            black_box(&snap);
        });
    });

    c.bench_function("cache/set_at+snapshot", |b| {
        b.iter(|| {
            cache.set_at(black_box(index), boundary.clone());
            let snap = cache.snapshot();
            black_box(&snap);
        });
    });

    c.bench_function("cache/update+snapshot/older_alive", |b| {
        let mut v = 0u64;
        let mut held = cache.snapshot();
        b.iter(|| {
            v += 1;
            cache.update(CACHE_SOURCES[index], v);
            // The new snapshot replaces `held` only after the update: the update copied.
            held = cache.snapshot();
            black_box(&held);
        });
    });

    c.bench_function("cache/set_at+snapshot/older_alive", |b| {
        let mut held = cache.snapshot();
        b.iter(|| {
            cache.set_at(black_box(index), boundary.clone());
            held = cache.snapshot();
            black_box(&held);
        });
    });
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = fire_benches, cache_benches
}
criterion_main!(benches);
