//! Independent async branches of one firing run concurrently (in the firing's own task), with
//! routing, fan-in, the per-firing timeout and panics exactly as in a straight run.
//!
//! Concurrency is observed directly: every async node counts itself as running while it
//! sleeps, and the tests assert how many were running at once, never how long a firing took.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloacina_graph_core::{
    source, upstream, CompiledGraph, Executor, GraphBuilder, GraphError, GraphResult, Route,
};

/// Counts node runs and how many async nodes were running at once.
#[derive(Default)]
struct Probe {
    runs: AtomicUsize,
    running: AtomicUsize,
    max_running: AtomicUsize,
    /// Node futures dropped before they finished.
    abandoned: AtomicUsize,
}

/// Decrements `running` when the node's future ends, finished or dropped.
struct Running<'p> {
    probe: &'p Probe,
    finished: bool,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.probe.running.fetch_sub(1, Ordering::SeqCst);
        if !self.finished {
            self.probe.abandoned.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Probe {
    /// An async node's body: counted as running while it sleeps `ms`, then `value`.
    async fn sleep(&self, ms: u64, value: u64) -> u64 {
        self.runs.fetch_add(1, Ordering::SeqCst);
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_running.fetch_max(now, Ordering::SeqCst);
        let mut guard = Running {
            probe: self,
            finished: false,
        };
        tokio::time::sleep(Duration::from_millis(ms)).await;
        guard.finished = true;
        value
    }

    fn max_running(&self) -> usize {
        self.max_running.load(Ordering::SeqCst)
    }

    fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }
}

/// An async node reading one `u64` upstream: sleeps `ms`, returns upstream + `add`.
macro_rules! sleepy {
    ($probe:expr, $ms:expr, $add:expr) => {{
        let probe = Arc::clone(&$probe);
        move |x: &u64| {
            let (x, probe) = (*x, Arc::clone(&probe));
            async move { probe.sleep($ms, x + $add).await }
        }
    }};
}

fn entry(x: Option<&u64>) -> u64 {
    x.copied().unwrap_or(0)
}

fn completed(result: &GraphResult) {
    if let GraphResult::Error(e) = result {
        panic!("expected a completed firing, got {e}");
    }
}

fn fire_graph(graph: &Arc<CompiledGraph>, x: u64) -> (Executor, cloacina_graph_core::InputCache) {
    let executor = Executor::new(Arc::clone(graph));
    let mut cache = graph.new_cache();
    cache.update("x", x);
    (executor, cache)
}

// Two independent async nodes sleeping 50 ms each: both run at once (about 50 ms, not 100).
#[tokio::test]
async fn independent_async_nodes_overlap() {
    let probe = Arc::new(Probe::default());
    let graph = Arc::new(
        GraphBuilder::new("overlap")
            .node("entry", (source::<u64>("x"),), entry)
            .async_node("left", (upstream::<u64>("entry"),), sleepy!(probe, 50, 1))
            .async_node("right", (upstream::<u64>("entry"),), sleepy!(probe, 50, 2))
            .build()
            .expect("valid"),
    );
    let (mut executor, cache) = fire_graph(&graph, 10);
    let result = executor.fire(&cache).await;
    completed(&result);
    assert_eq!(result.output::<u64>("left"), Some(&11));
    assert_eq!(result.output::<u64>("right"), Some(&12));
    assert_eq!(probe.runs(), 2);
    assert_eq!(
        probe.max_running(),
        2,
        "both nodes must have been running at once"
    );
}

// Diamond with async middles: entry -> a, entry -> b (both async, concurrent), (a, b) -> m
// (plain): every node runs once and m sees both results.
#[tokio::test]
async fn diamond_with_async_middles_runs_each_node_once() {
    let probe = Arc::new(Probe::default());
    let merges = Arc::new(AtomicUsize::new(0));
    let m = Arc::clone(&merges);
    let graph = Arc::new(
        GraphBuilder::new("diamond")
            .node("entry", (source::<u64>("x"),), entry)
            .async_node("a", (upstream::<u64>("entry"),), sleepy!(probe, 40, 100))
            .async_node("b", (upstream::<u64>("entry"),), sleepy!(probe, 20, 1_000))
            .node(
                "m",
                (upstream::<u64>("a"), upstream::<u64>("b")),
                move |a: &u64, b: &u64| {
                    m.fetch_add(1, Ordering::SeqCst);
                    a * 10_000 + b
                },
            )
            .build()
            .expect("valid"),
    );
    let (mut executor, mut cache) = fire_graph(&graph, 1);
    for round in 1..=3u64 {
        cache.update("x", round);
        let result = executor.fire(&cache).await;
        completed(&result);
        assert_eq!(
            result.output::<u64>("m"),
            Some(&((round + 100) * 10_000 + round + 1_000))
        );
        assert!(!result.outputs().expect("completed").contains("a"));
    }
    assert_eq!(merges.load(Ordering::SeqCst), 3, "m runs once per firing");
    assert_eq!(probe.runs(), 6, "a and b run once per firing");
    assert_eq!(probe.max_running(), 2);
}

#[derive(Debug)]
enum Side {
    Left(u64),
    Right(u64),
}

// Routing with async arms beside an independent async branch: only the taken arm (and its
// descendants) runs, concurrently with the other branch.
#[tokio::test]
async fn routing_with_async_arms() {
    let arms = Arc::new(Probe::default());
    let side = Arc::new(Probe::default());
    let graph = Arc::new(
        GraphBuilder::new("routes")
            .router(
                "decide",
                (source::<u64>("x"),),
                |x: Option<&u64>| match x.copied().unwrap_or(0) {
                    v if v % 2 == 0 => Side::Left(v),
                    v => Side::Right(v),
                },
                [
                    Route::new("Left", "left", |s: &Side| match s {
                        Side::Left(v) => Some(v),
                        Side::Right(_) => None,
                    }),
                    Route::new("Right", "right", |s: &Side| match s {
                        Side::Right(v) => Some(v),
                        Side::Left(_) => None,
                    }),
                ],
            )
            .async_node("left", (upstream::<u64>("decide"),), sleepy!(arms, 30, 1))
            .async_node("right", (upstream::<u64>("decide"),), sleepy!(arms, 30, 2))
            .node("left_tail", (upstream::<u64>("left"),), |v: &u64| v * 10)
            .node("right_tail", (upstream::<u64>("right"),), |v: &u64| v * 100)
            .node("other", (source::<u64>("x"),), entry)
            .async_node("side", (upstream::<u64>("other"),), sleepy!(side, 30, 5))
            .build()
            .expect("valid"),
    );
    let (mut executor, mut cache) = fire_graph(&graph, 4);
    let result = executor.fire(&cache).await;
    completed(&result);
    let outputs = result.outputs().expect("completed");
    assert_eq!(result.output::<u64>("left_tail"), Some(&50));
    assert_eq!(result.output::<u64>("side"), Some(&9));
    assert!(!outputs.contains("right_tail") && !outputs.contains("right"));

    cache.update("x", 7u64);
    let result = executor.fire(&cache).await;
    completed(&result);
    let outputs = result.outputs().expect("completed");
    assert_eq!(result.output::<u64>("right_tail"), Some(&900));
    assert!(!outputs.contains("left_tail"));

    assert_eq!(arms.runs(), 2, "one arm per firing");
    assert_eq!(side.runs(), 2);

    // The taken arm and the side branch overlap: one probe shared by all async nodes.
    let shared = Arc::new(Probe::default());
    let graph = Arc::new(
        GraphBuilder::new("routes_shared")
            .router(
                "decide",
                (source::<u64>("x"),),
                |x: Option<&u64>| Side::Left(x.copied().unwrap_or(0)),
                [
                    Route::new("Left", "left", |s: &Side| match s {
                        Side::Left(v) => Some(v),
                        Side::Right(_) => None,
                    }),
                    Route::new("Right", "right", |s: &Side| match s {
                        Side::Right(v) => Some(v),
                        Side::Left(_) => None,
                    }),
                ],
            )
            .async_node("left", (upstream::<u64>("decide"),), sleepy!(shared, 30, 1))
            .async_node(
                "right",
                (upstream::<u64>("decide"),),
                sleepy!(shared, 30, 2),
            )
            .node("other", (source::<u64>("x"),), entry)
            .async_node("side", (upstream::<u64>("other"),), sleepy!(shared, 30, 5))
            .build()
            .expect("valid"),
    );
    let (mut executor, cache) = fire_graph(&graph, 2);
    let result = executor.fire(&cache).await;
    completed(&result);
    assert_eq!(result.output::<u64>("left"), Some(&3));
    assert_eq!(result.output::<u64>("side"), Some(&7));
    assert!(!result.outputs().expect("completed").contains("right"));
    assert_eq!(shared.runs(), 2);
    assert_eq!(
        shared.max_running(),
        2,
        "taken arm and side branch overlapped"
    );
}

// The per-firing timeout covers the whole firing: with a quick and a slow branch running
// concurrently, the error names the slow one, still running at the deadline; the executor then
// fires normally.
#[tokio::test]
async fn timeout_during_concurrent_branches_names_a_running_node() {
    let probe = Arc::new(Probe::default());
    let timeout = Duration::from_millis(200);
    let graph = Arc::new(
        GraphBuilder::new("deadline")
            .node("entry", (source::<u64>("x"),), entry)
            .async_node("quick", (upstream::<u64>("entry"),), sleepy!(probe, 10, 1))
            .async_node("slow", (upstream::<u64>("entry"),), {
                let probe = Arc::clone(&probe);
                move |x: &u64| {
                    let (x, probe) = (*x, Arc::clone(&probe));
                    async move { probe.sleep(x, x).await }
                }
            })
            .build()
            .expect("valid"),
    );
    let mut executor = Executor::new(Arc::clone(&graph)).with_timeout(Some(timeout));
    let mut cache = graph.new_cache();
    cache.update("x", 5_000u64);
    let started = Instant::now();
    let result = executor.fire(&cache).await;
    match &result {
        GraphResult::Error(GraphError::NodeTimedOut { node, timeout: t }) => {
            assert_eq!(&**node, "slow");
            assert_eq!(*t, timeout);
        }
        other => panic!("expected NodeTimedOut naming `slow`, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the slow branch must be abandoned at the deadline, not awaited"
    );
    assert_eq!(
        probe.abandoned.load(Ordering::SeqCst),
        1,
        "slow was dropped"
    );
    assert_eq!(probe.running.load(Ordering::SeqCst), 0);

    cache.update("x", 1u64);
    let result = executor.fire(&cache).await;
    completed(&result);
    assert_eq!(result.output::<u64>("slow"), Some(&1));
    assert_eq!(result.output::<u64>("quick"), Some(&2));
}

// A panic in one concurrent branch (async, after an await) yields NodePanicked naming it, and
// the other in-flight branch is dropped rather than awaited.
#[tokio::test]
async fn async_panic_in_a_concurrent_branch_drops_the_others() {
    let probe = Arc::new(Probe::default());
    let graph = Arc::new(
        GraphBuilder::new("boom")
            .node("entry", (source::<u64>("x"),), entry)
            .async_node(
                "slow",
                (upstream::<u64>("entry"),),
                sleepy!(probe, 5_000, 0),
            )
            .async_node("boom", (upstream::<u64>("entry"),), |x: &u64| {
                let x = *x;
                async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    if x > 0 {
                        panic!("boom refuses {x}");
                    }
                    x
                }
            })
            .build()
            .expect("valid"),
    );
    let (mut executor, cache) = fire_graph(&graph, 3);
    let started = Instant::now();
    let result = executor.fire(&cache).await;
    match &result {
        GraphResult::Error(GraphError::NodePanicked { node, message }) => {
            assert_eq!(&**node, "boom");
            assert!(message.contains("boom refuses 3"), "{message}");
        }
        other => panic!("expected NodePanicked naming `boom`, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_eq!(
        probe.abandoned.load(Ordering::SeqCst),
        1,
        "slow was dropped"
    );
}

// A plain node panicking while an async branch is in flight: same outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_panic_beside_a_running_branch() {
    let probe = Arc::new(Probe::default());
    let graph = Arc::new(
        GraphBuilder::new("crash")
            .node("entry", (source::<u64>("x"),), entry)
            .async_node(
                "slow",
                (upstream::<u64>("entry"),),
                sleepy!(probe, 5_000, 0),
            )
            .node("crash", (upstream::<u64>("entry"),), |x: &u64| -> u64 {
                panic!("crash refuses {x}")
            })
            .build()
            .expect("valid"),
    );
    let (mut executor, cache) = fire_graph(&graph, 4);
    let result = executor.fire(&cache).await;
    match &result {
        GraphResult::Error(GraphError::NodePanicked { node, message }) => {
            assert_eq!(&**node, "crash");
            assert!(message.contains("crash refuses 4"), "{message}");
        }
        other => panic!("expected NodePanicked naming `crash`, got {other:?}"),
    }
    assert_eq!(probe.runs(), 1, "slow had started before crash ran");
    assert_eq!(
        probe.abandoned.load(Ordering::SeqCst),
        1,
        "slow was dropped"
    );
}

// A node downstream of a pending async node waits for it, while a plain branch beside it runs
// at once: chains keep their order and each node runs once.
#[tokio::test]
async fn dependent_nodes_wait_for_their_async_upstream() {
    let probe = Arc::new(Probe::default());
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (o1, o2) = (Arc::clone(&order), Arc::clone(&order));
    let graph = Arc::new(
        GraphBuilder::new("chain")
            .node("entry", (source::<u64>("x"),), entry)
            .async_node("fetch", (upstream::<u64>("entry"),), sleepy!(probe, 30, 1))
            .node(
                "after_fetch",
                (upstream::<u64>("fetch"),),
                move |v: &u64| {
                    o1.lock().expect("lock").push("after_fetch");
                    v * 2
                },
            )
            .node("beside", (upstream::<u64>("entry"),), move |v: &u64| {
                o2.lock().expect("lock").push("beside");
                v * 3
            })
            .build()
            .expect("valid"),
    );
    let (mut executor, cache) = fire_graph(&graph, 5);
    let result = executor.fire(&cache).await;
    completed(&result);
    assert_eq!(result.output::<u64>("after_fetch"), Some(&12));
    assert_eq!(result.output::<u64>("beside"), Some(&15));
    assert_eq!(
        *order.lock().expect("lock"),
        ["beside", "after_fetch"],
        "the plain branch ran while fetch was pending"
    );
}
