//! Integration tests of the reactor through its public API.
//!
//! Each test names the acceptance id it covers (CG-R-xx) in a comment. Tests synchronise on the
//! reactor itself (subscriptions, `stats()`, `state()`, health) rather than on sleeps; timeouts
//! only keep a broken implementation from hanging the suite.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloacina_accumulators::{
    Accumulator, AccumulatorContext, AccumulatorHealth, Batch, BatchConfig, HealthBoard,
    TrySendError,
};
use cloacina_graph_core::{
    codec, source, CompiledGraph, GraphBuilder, GraphError, GraphResult, InputCache, SourceName,
};
use cloacina_ledger::{
    conformance::FaultyLedger, FiringOutcome, FiringQuery, Ledger, MemoryLedger,
};
use cloacina_reactor::{
    Durability, FailurePolicy, Firing, InputStrategy, Lagged, Overflow, ReactionCriteria,
    ReactorError, ReactorHandle, ReactorHealth, ReactorState, SubscribeOptions, Subscription,
};
use tokio::sync::{Notify, Semaphore};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Upper bound on any wait: only there so a broken implementation fails instead of hanging.
const PATIENCE: Duration = Duration::from_secs(10);

/// What the two-source probe graph returns: the values of sources `a` and `b` it saw.
type Pair = (Option<u64>, Option<u64>);

async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(PATIENCE, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {PATIENCE:?} waiting for {what}"),
    }
}

/// Polls `cond` until it holds (or panics after [`PATIENCE`]).
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    within(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
}

fn build(builder: GraphBuilder) -> Arc<CompiledGraph> {
    Arc::new(builder.build().expect("graph should build"))
}

fn probe(a: Option<&u64>, b: Option<&u64>) -> Pair {
    (a.copied(), b.copied())
}

/// One node `probe` reading sources `a` and `b` (u64), echoing what it saw.
fn probe_graph() -> Arc<CompiledGraph> {
    build(GraphBuilder::new("probe").node("probe", (source::<u64>("a"), source::<u64>("b")), probe))
}

fn echo(x: Option<&u64>) -> u64 {
    x.copied().unwrap_or(0)
}

/// One node `echo` reading source `x` (u64).
fn echo_graph() -> Arc<CompiledGraph> {
    build(GraphBuilder::new("echo").node("echo", (source::<u64>("x"),), echo))
}

/// One node `echo` reading source `x` (u64) that records every value it is called with.
fn logging_graph(log: &Arc<Mutex<Vec<u64>>>) -> Arc<CompiledGraph> {
    let log = Arc::clone(log);
    build(GraphBuilder::new("logging").node(
        "echo",
        (source::<u64>("x"),),
        move |x: Option<&u64>| {
            let v = x.copied().unwrap_or(u64::MAX);
            log.lock().expect("log lock").push(v);
            v
        },
    ))
}

/// One async node `echo` reading source `x` (u64) that waits for a permit of `gate` on every
/// firing (after counting the call in `started`) and records the value in `log`.
fn gated_graph(
    gate: &Arc<Semaphore>,
    started: &Arc<AtomicU64>,
    log: &Arc<Mutex<Vec<u64>>>,
) -> Arc<CompiledGraph> {
    let (gate, started, log) = (Arc::clone(gate), Arc::clone(started), Arc::clone(log));
    build(GraphBuilder::new("gated").async_node(
        "echo",
        (source::<u64>("x"),),
        move |x: Option<&u64>| {
            let v = x.copied().unwrap_or(u64::MAX);
            let (gate, started, log) = (Arc::clone(&gate), Arc::clone(&started), Arc::clone(&log));
            async move {
                started.fetch_add(1, Ordering::SeqCst);
                gate.acquire().await.expect("gate open").forget();
                log.lock().expect("log lock").push(v);
                v
            }
        },
    ))
}

fn logged(log: &Arc<Mutex<Vec<u64>>>) -> Vec<u64> {
    log.lock().expect("log lock").clone()
}

async fn next_firing(sub: &mut Subscription) -> Arc<Firing> {
    match within("a firing", sub.recv()).await {
        Some(Ok(firing)) => firing,
        Some(Err(lagged)) => panic!("subscriber lagged: {lagged}"),
        None => panic!("subscription ended"),
    }
}

/// The output of `node` in a completed firing.
fn output<T: Clone + 'static>(firing: &Arc<Firing>, node: &str) -> T {
    match &firing.result {
        GraphResult::Completed { outputs } => outputs
            .get::<T>(node)
            .cloned()
            .unwrap_or_else(|| panic!("firing {} has no output of `{node}`", firing.id)),
        GraphResult::Error(e) => panic!("firing {} failed: {e}", firing.id),
    }
}

fn graph_error(firing: &Firing) -> &GraphError {
    firing
        .result
        .err()
        .unwrap_or_else(|| panic!("firing {} should have failed", firing.id))
}

/// Waits until the reactor has taken in `boundaries` boundaries, then reads its state: the
/// state command is handled after the loop iteration that took them in, so whatever firing
/// they triggered has finished.
async fn settle(reactor: &ReactorHandle, boundaries: u64) -> ReactorState {
    wait_until(&format!("{boundaries} boundaries taken in"), || {
        reactor.stats().boundaries >= boundaries
    })
    .await;
    within("state", reactor.state())
        .await
        .expect("reactor running")
}

async fn wait_health(
    reactor: &ReactorHandle,
    what: &str,
    pred: impl FnMut(&ReactorHealth) -> bool,
) -> ReactorHealth {
    let mut watch = reactor.health_watch();
    let health = within(what, watch.wait_for(pred))
        .await
        .expect("health channel open")
        .clone();
    health
}

fn names(list: &[&str]) -> Vec<SourceName> {
    list.iter().map(|s| SourceName::from(*s)).collect()
}

fn dirty(list: &[(&str, bool)]) -> Vec<(SourceName, bool)> {
    list.iter()
        .map(|(s, d)| (SourceName::from(*s), *d))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Criteria (CG-R-05, CG-R-06)
// ---------------------------------------------------------------------------------------------

// CG-R-05: one event on a 2-source when_any reactor fires exactly once; the graph sees the other
// source as None.
#[tokio::test]
async fn when_any_fires_once_and_sees_missing_source_as_none() {
    let reactor = ReactorHandle::builder(probe_graph())
        .criteria(ReactionCriteria::when_any())
        .spawn()
        .expect("spawn");
    let mut sub = reactor.subscribe();
    reactor
        .sender::<u64>("a")
        .expect("sender")
        .send(7)
        .await
        .expect("send");

    let firing = next_firing(&mut sub).await;
    let (a, b) = output::<Pair>(&firing, "probe");
    assert_eq!(a, Some(7));
    assert!(b.is_none(), "the graph must see source `b` as None");
    assert!(!firing.manual);
    assert_eq!(firing.id, 1);
    assert_eq!(firing.input_seq("a"), Some(1));
    assert_eq!(firing.input_seq("b"), None);

    let state = settle(&reactor, 1).await;
    assert_eq!(state.fires, 1, "exactly one firing");
    assert_eq!(reactor.stats().fires, 1);
    assert_eq!(state.dirty, dirty(&[("a", false), ("b", false)]));
    reactor.shutdown().await.expect("shutdown");
}

// CG-R-06: when_all fires only once every source has a new boundary since the last firing.
#[tokio::test]
async fn when_all_needs_a_new_boundary_from_every_source() {
    let reactor = ReactorHandle::builder(probe_graph())
        .criteria(ReactionCriteria::when_all())
        .spawn()
        .expect("spawn");
    let mut sub = reactor.subscribe();
    let a = reactor.sender::<u64>("a").expect("sender a");
    let b = reactor.sender::<u64>("b").expect("sender b");

    a.send(1).await.expect("send");
    b.send(1).await.expect("send");
    let first = next_firing(&mut sub).await;
    assert_eq!(output::<Pair>(&first, "probe"), (Some(1), Some(1)));
    assert_eq!(settle(&reactor, 2).await.fires, 1);

    a.send(2).await.expect("send");
    let state = settle(&reactor, 3).await;
    assert_eq!(state.fires, 1, "a new `a` alone must not fire");
    assert_eq!(state.dirty, dirty(&[("a", true), ("b", false)]));

    b.send(2).await.expect("send");
    let second = next_firing(&mut sub).await;
    assert_eq!(output::<Pair>(&second, "probe"), (Some(2), Some(2)));
    assert_eq!(settle(&reactor, 4).await.fires, 2);
    reactor.shutdown().await.expect("shutdown");
}

// CG-R-06: 10 pushes on A and 1 on B give one firing, using A's latest value.
#[tokio::test]
async fn when_all_fires_once_with_latest_of_many() {
    let reactor = ReactorHandle::builder(probe_graph())
        .criteria(ReactionCriteria::when_all_of(["a", "b"]))
        .spawn()
        .expect("spawn");
    let mut sub = reactor.subscribe();
    let a = reactor.sender::<u64>("a").expect("sender a");
    for v in 1..=10u64 {
        a.send(v).await.expect("send");
    }
    reactor
        .sender::<u64>("b")
        .expect("sender b")
        .send(100)
        .await
        .expect("send");

    let firing = next_firing(&mut sub).await;
    assert_eq!(output::<Pair>(&firing, "probe"), (Some(10), Some(100)));
    assert_eq!(firing.input_seq("a"), Some(10));
    assert_eq!(settle(&reactor, 11).await.fires, 1);
    reactor.shutdown().await.expect("shutdown");
}

// ---------------------------------------------------------------------------------------------
// Strategies (CG-R-07, CG-R-08)
// ---------------------------------------------------------------------------------------------

// CG-R-07: with a graph sleeping 100 ms per firing, 10 quick events coalesce: fewer than 10
// firings, the last of which observes event #10.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_coalesces_events_arriving_during_a_firing() {
    let graph = build(GraphBuilder::new("slow").async_node(
        "slow",
        (source::<u64>("x"),),
        |x: Option<&u64>| {
            let v = x.copied().unwrap_or(0);
            async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                v
            }
        },
    ));
    let reactor = ReactorHandle::builder(graph)
        .strategy(InputStrategy::Latest)
        .spawn()
        .expect("spawn");
    let mut sub = reactor.subscribe();
    let x = reactor.sender::<u64>("x").expect("sender");
    for v in 1..=10u64 {
        x.send(v).await.expect("send");
    }
    let mut seen = Vec::new();
    loop {
        let firing = next_firing(&mut sub).await;
        let v = output::<u64>(&firing, "slow");
        assert_eq!(
            firing.input_seq("x"),
            Some(v),
            "value #n carries sequence n"
        );
        seen.push(v);
        if v == 10 {
            break;
        }
    }
    let state = settle(&reactor, 10).await;
    assert!(
        state.fires < 10,
        "expected coalescing, got {} firings",
        state.fires
    );
    assert_eq!(
        state.fires,
        seen.len() as u64,
        "no firing after the one seeing #10"
    );
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "firings see newer values: {seen:?}"
    );
    reactor.shutdown().await.expect("shutdown");
}

// CG-R-08: Sequential fires once per boundary, in arrival order.
#[tokio::test]
async fn sequential_fires_each_action_in_order() {
    let graph = build(GraphBuilder::new("actions").node(
        "echo",
        (source::<String>("action"),),
        |a: Option<&String>| a.cloned().unwrap_or_default(),
    ));
    let reactor = ReactorHandle::builder(graph)
        .strategy(InputStrategy::Sequential)
        .spawn()
        .expect("spawn");
    let mut sub = reactor.subscribe();
    let action = reactor.sender::<String>("action").expect("sender");
    for a in ["login", "view", "export"] {
        action.send(a.to_owned()).await.expect("send");
    }
    for (i, expected) in ["login", "view", "export"].into_iter().enumerate() {
        let firing = next_firing(&mut sub).await;
        assert_eq!(output::<String>(&firing, "echo"), expected);
        assert_eq!(firing.input_seq("action"), Some(i as u64 + 1));
    }
    assert_eq!(settle(&reactor, 3).await.fires, 3, "exactly three firings");
    reactor.shutdown().await.expect("shutdown");
}

// CG-R-08: 10,000 Sequential events each fire exactly once, in order.
#[tokio::test]
async fn sequential_ten_thousand_events_fire_once_each_in_order() {
    const N: u64 = 10_000;
    let log = Arc::new(Mutex::new(Vec::new()));
    let reactor = ReactorHandle::builder(logging_graph(&log))
        .strategy(InputStrategy::Sequential)
        .spawn()
        .expect("spawn");
    let x = reactor.sender::<u64>("x").expect("sender");
    for v in 0..N {
        x.send(v).await.expect("send");
    }
    wait_until("every event fired", || reactor.stats().fires >= N).await;
    assert_eq!(logged(&log), (0..N).collect::<Vec<_>>());
    let stats = reactor.stats();
    assert_eq!(stats.firing_duration.count(), N, "every firing is timed");
    assert!(stats.firing_duration.quantile(0.5).is_some());
    let report = reactor.shutdown().await.expect("shutdown");
    assert_eq!(report.fires, N);
    assert_eq!(report.boundaries, N);
    assert_eq!(report.unfired_queued, 0);
}

// CG-R-08: Sequential also works with when_all: each queued boundary is applied in turn, and a
// firing happens whenever every source has a new one.
#[tokio::test]
async fn sequential_when_all_applies_boundaries_in_turn() {
    let reactor = ReactorHandle::builder(probe_graph())
        .strategy(InputStrategy::Sequential)
        .criteria(ReactionCriteria::when_all())
        .spawn()
        .expect("spawn");
    let mut sub = reactor.subscribe();
    let a = reactor.sender::<u64>("a").expect("sender a");
    let b = reactor.sender::<u64>("b").expect("sender b");
    a.send(1).await.expect("send");
    a.send(2).await.expect("send");
    b.send(10).await.expect("send");
    b.send(20).await.expect("send");
    a.send(3).await.expect("send");
    assert_eq!(
        output::<Pair>(&next_firing(&mut sub).await, "probe"),
        (Some(2), Some(10))
    );
    assert_eq!(
        output::<Pair>(&next_firing(&mut sub).await, "probe"),
        (Some(3), Some(20))
    );
    assert_eq!(settle(&reactor, 5).await.fires, 2);
    reactor.shutdown().await.expect("shutdown");
}

// ---------------------------------------------------------------------------------------------
// Failures (CG-R-09) and timeouts
// ---------------------------------------------------------------------------------------------

// CG-R-09: a graph panicking on its first firing yields one Error naming the node; the failed
// firing consumed its inputs (no re-fire on its own); the next boundary fires successfully.
#[tokio::test]
async fn failed_firing_is_reported_once_and_not_retried() {
    let calls = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&calls);
    let graph = build(GraphBuilder::new("fragile").node(
        "fragile",
        (source::<u64>("x"),),
        move |x: Option<&u64>| {
            if counted.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("first firing fails");
            }
            x.copied().unwrap_or(0)
        },
    ));
    let reactor = ReactorHandle::builder(graph).spawn().expect("spawn");
    let mut sub = reactor.subscribe();
    let x = reactor.sender::<u64>("x").expect("sender");

    x.send(1).await.expect("send");
    let failed = next_firing(&mut sub).await;
    match graph_error(&failed) {
        GraphError::NodePanicked { node, message } => {
            assert_eq!(&**node, "fragile");
            assert!(message.contains("first firing fails"), "{message}");
        }
        other => panic!("expected NodePanicked, got {other:?}"),
    }
    assert_eq!(graph_error(&failed).node(), "fragile");

    let state = settle(&reactor, 1).await;
    assert_eq!(
        state.dirty,
        dirty(&[("x", false)]),
        "inputs consumed by the failed firing"
    );
    // Nothing may fire until a new boundary arrives.
    assert!(
        tokio::time::timeout(Duration::from_millis(100), sub.recv())
            .await
            .is_err(),
        "no automatic re-fire after a failed firing"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let stats = reactor.stats();
    assert_eq!((stats.fires, stats.errors), (1, 1));
    assert_eq!(
        reactor.health(),
        ReactorHealth::Live,
        "the reactor keeps running"
    );

    x.send(2).await.expect("send");
    let ok = next_firing(&mut sub).await;
    assert_eq!(output::<u64>(&ok, "fragile"), 2);
    let stats = reactor.stats();
    assert_eq!((stats.fires, stats.errors), (2, 1));
    reactor.shutdown().await.expect("shutdown");
}

// CG-R-09 (firing failure, timeout flavour).
// A node running past the per-firing timeout yields NodeTimedOut naming it; the reactor keeps
// firing afterwards.
#[tokio::test]
async fn firing_timeout_reports_node_timed_out_and_reactor_continues() {
    let timeout = Duration::from_millis(50);
    let graph = build(GraphBuilder::new("sleepy").async_node(
        "sleeper",
        (source::<u64>("ms"),),
        |ms: Option<&u64>| {
            let ms = ms.copied().unwrap_or(0);
            async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                ms
            }
        },
    ));
    let reactor = ReactorHandle::builder(graph)
        .strategy(InputStrategy::Sequential)
        .firing_timeout(Some(timeout))
        .spawn()
        .expect("spawn");
    let mut sub = reactor.subscribe();
    let ms = reactor.sender::<u64>("ms").expect("sender");

    ms.send(60_000).await.expect("send");
    let slow = next_firing(&mut sub).await;
    match graph_error(&slow) {
        GraphError::NodeTimedOut { node, timeout: t } => {
            assert_eq!(&**node, "sleeper");
            assert_eq!(*t, timeout);
        }
        other => panic!("expected NodeTimedOut, got {other:?}"),
    }

    ms.send(1).await.expect("send");
    let quick = next_firing(&mut sub).await;
    assert_eq!(output::<u64>(&quick, "sleeper"), 1);
    let stats = reactor.stats();
    assert_eq!((stats.fires, stats.errors), (2, 1));
    reactor.shutdown().await.expect("shutdown");
}

// ---------------------------------------------------------------------------------------------
// Pause / resume (CG-R-10)
// ---------------------------------------------------------------------------------------------

// CG-R-10 (Latest): paused, 5 events update the cache but do not fire; resume alone does not
// fire retroactively; the next event fires once, seeing the latest values.
#[tokio::test]
async fn pause_resume_latest() {
    let reactor = ReactorHandle::builder(probe_graph())
        .spawn()
        .expect("spawn");
    let mut sub = reactor.subscribe();
    let a = reactor.sender::<u64>("a").expect("sender a");

    reactor.pause().await.expect("pause");
    for v in 1..=5u64 {
        a.send(v).await.expect("send");
    }
    let state = settle(&reactor, 5).await;
    assert!(state.paused);
    assert_eq!(state.fires, 0, "no firing while paused");
    assert_eq!(
        state.cache.get::<u64>("a"),
        Some(Ok(&5)),
        "cache still updated"
    );
    assert_eq!(state.dirty, dirty(&[("a", true), ("b", false)]));

    reactor.resume().await.expect("resume");
    let state = within("state", reactor.state()).await.expect("running");
    assert!(!state.paused);
    assert_eq!(
        state.fires, 0,
        "resume does not fire retroactively under Latest"
    );

    reactor
        .sender::<u64>("b")
        .expect("sender b")
        .send(9)
        .await
        .expect("send");
    let firing = next_firing(&mut sub).await;
    assert_eq!(output::<Pair>(&firing, "probe"), (Some(5), Some(9)));
    assert_eq!(settle(&reactor, 6).await.fires, 1);
    reactor.shutdown().await.expect("shutdown");
}

// CG-R-10 (Sequential): paused, 5 events are queued, not fired; resume fires all 5 in order.
#[tokio::test]
async fn pause_resume_sequential() {
    let reactor = ReactorHandle::builder(echo_graph())
        .strategy(InputStrategy::Sequential)
        .spawn()
        .expect("spawn");
    let mut sub = reactor.subscribe();
    let x = reactor.sender::<u64>("x").expect("sender");

    reactor.pause().await.expect("pause");
    for v in 1..=5u64 {
        x.send(v).await.expect("send");
    }
    let state = settle(&reactor, 5).await;
    assert!(state.paused);
    assert_eq!(state.fires, 0);
    let queued: Vec<(String, u64, u64)> = state
        .queued
        .iter()
        .map(|(s, b)| {
            (
                s.as_str().to_owned(),
                b.seq(),
                *b.get::<u64>().expect("u64 boundary"),
            )
        })
        .collect();
    assert_eq!(
        queued,
        (1..=5u64)
            .map(|v| ("x".to_owned(), v, v))
            .collect::<Vec<_>>()
    );

    reactor.resume().await.expect("resume");
    for v in 1..=5u64 {
        assert_eq!(output::<u64>(&next_firing(&mut sub).await, "echo"), v);
    }
    let state = within("state", reactor.state()).await.expect("running");
    assert_eq!(state.fires, 5);
    assert!(state.queued.is_empty());
    reactor.shutdown().await.expect("shutdown");
}

// ---------------------------------------------------------------------------------------------
// Manual commands (CG-R-11)
// ---------------------------------------------------------------------------------------------

// CG-R-11: force_fire ignores criteria; fire_with replaces the whole cache (no merge) and
// rejects unknown sources; state() returns the cache and dirty flags.
#[tokio::test]
async fn manual_commands_force_fire_fire_with_and_state() {
    let reactor = ReactorHandle::builder(probe_graph())
        .criteria(ReactionCriteria::when_all())
        .spawn()
        .expect("spawn");
    let mut sub = reactor.subscribe();
    let a = reactor.sender::<u64>("a").expect("sender a");
    let b = reactor.sender::<u64>("b").expect("sender b");

    a.send(3).await.expect("send");
    let state = settle(&reactor, 1).await;
    assert_eq!(state.fires, 0, "when_all waits for b");
    assert_eq!(state.dirty, dirty(&[("a", true), ("b", false)]));
    assert_eq!(state.cache.get::<u64>("a"), Some(Ok(&3)));
    assert!(!state.cache.has("b"));
    assert_eq!(state.reactor, "probe");

    // force_fire with only `a` populated.
    let forced = within("force_fire", reactor.force_fire())
        .await
        .expect("fired");
    assert!(forced.manual);
    assert_eq!(output::<Pair>(&forced, "probe"), (Some(3), None));
    let delivered = next_firing(&mut sub).await;
    assert!(
        Arc::ptr_eq(&forced, &delivered),
        "subscribers get manual firings too"
    );
    let state = within("state", reactor.state()).await.expect("running");
    assert_eq!(state.dirty, dirty(&[("a", false), ("b", false)]));

    // Populate `b` too, then fire_with a cache holding only `a`: `b` must be gone.
    b.send(5).await.expect("send");
    let state = settle(&reactor, 2).await;
    assert_eq!(state.cache.get::<u64>("b"), Some(Ok(&5)));
    assert_eq!(state.fires, 1, "b alone does not satisfy when_all");
    let mut only_a = InputCache::new();
    only_a.update("a", 42u64);
    let with = within("fire_with", reactor.fire_with(only_a))
        .await
        .expect("fire_with");
    assert!(with.manual);
    assert_eq!(output::<Pair>(&with, "probe"), (Some(42), None));
    let state = within("state", reactor.state()).await.expect("running");
    assert_eq!(
        state.cache.get::<u64>("a"),
        Some(Ok(&3)),
        "fire_with leaves the live cache alone"
    );
    assert_eq!(state.cache.get::<u64>("b"), Some(Ok(&5)));
    assert_eq!(
        state.dirty,
        dirty(&[("a", false), ("b", true)]),
        "and its dirty flags"
    );

    // A value of another type than the graph reads is rejected before anything fires.
    let mut wrong = InputCache::new();
    wrong.update("a", 5i32);
    match within("fire_with", reactor.fire_with(wrong)).await {
        Err(ReactorError::SourceType { source_name, .. }) => assert_eq!(source_name.as_str(), "a"),
        other => panic!("expected SourceType, got {other:?}"),
    }

    // A cache naming a source the graph does not read is rejected, and nothing fires.
    let mut unknown = InputCache::new();
    unknown.update("a", 1u64);
    unknown.update("zzz", 1u64);
    match within("fire_with", reactor.fire_with(unknown)).await {
        Err(ReactorError::UnknownSource { source_name, .. }) => {
            assert_eq!(source_name.as_str(), "zzz");
        }
        other => panic!("expected UnknownSource, got {other:?}"),
    }
    let stats = reactor.stats();
    assert_eq!((stats.fires, stats.manual_fires), (2, 2));
    let state = within("state", reactor.state()).await.expect("running");
    assert_eq!(
        state.cache.get::<u64>("a"),
        Some(Ok(&3)),
        "rejected cache not applied"
    );

    // force_fire works while paused, on the live cache.
    reactor.pause().await.expect("pause");
    let forced = within("force_fire", reactor.force_fire())
        .await
        .expect("fired");
    assert_eq!(output::<Pair>(&forced, "probe"), (Some(3), Some(5)));
    reactor.shutdown().await.expect("shutdown");
}

// ---------------------------------------------------------------------------------------------
// Health (CG-R-12)
// ---------------------------------------------------------------------------------------------

// CG-R-12: Warming until every accumulator is Live/SocketOnly (boundaries are kept and, under
// Sequential, fired once Live); a Disconnected accumulator makes the reactor Degraded, and it
// keeps firing; reconnecting makes it Live again.
#[tokio::test]
async fn health_gates_firing_until_accumulators_are_live() {
    let board = HealthBoard::new();
    let acc_a = board.register("a".into());
    let acc_b = board.register("b".into());
    let reactor = ReactorHandle::builder(probe_graph())
        .strategy(InputStrategy::Sequential)
        .accumulator_health(Arc::clone(&board))
        .spawn()
        .expect("spawn");
    let mut sub = reactor.subscribe();

    let both = ReactorHealth::Warming {
        waiting: names(&["a", "b"]),
    };
    wait_health(&reactor, "Warming on a and b", |h| *h == both).await;

    let a = reactor.sender::<u64>("a").expect("sender a");
    for v in 1..=3u64 {
        a.send(v).await.expect("send");
    }
    let state = settle(&reactor, 3).await;
    assert_eq!(state.fires, 0, "no firing while Warming");
    assert_eq!(state.queued.len(), 3, "boundaries are kept while Warming");

    acc_a.set(AccumulatorHealth::Live);
    let only_b = ReactorHealth::Warming {
        waiting: names(&["b"]),
    };
    wait_health(&reactor, "Warming on b", |h| *h == only_b).await;
    assert_eq!(
        within("state", reactor.state())
            .await
            .expect("running")
            .fires,
        0
    );

    acc_b.set(AccumulatorHealth::SocketOnly);
    wait_health(&reactor, "Live", |h| *h == ReactorHealth::Live).await;
    for v in 1..=3u64 {
        let firing = next_firing(&mut sub).await;
        assert_eq!(output::<Pair>(&firing, "probe"), (Some(v), None));
    }

    acc_a.set(AccumulatorHealth::Disconnected);
    let degraded = wait_health(&reactor, "Degraded", |h| {
        matches!(h, ReactorHealth::Degraded { .. })
    })
    .await;
    match degraded {
        ReactorHealth::Degraded { reasons } => {
            assert_eq!(reasons.len(), 1, "{reasons:?}");
            assert!(reasons[0].contains('a'), "{reasons:?}");
        }
        other => panic!("expected Degraded, got {other:?}"),
    }
    reactor
        .sender::<u64>("b")
        .expect("sender b")
        .send(7)
        .await
        .expect("send");
    let firing = next_firing(&mut sub).await;
    assert_eq!(
        output::<Pair>(&firing, "probe"),
        (Some(3), Some(7)),
        "fires on stale a"
    );

    acc_a.set(AccumulatorHealth::Live);
    wait_health(&reactor, "Live again", |h| *h == ReactorHealth::Live).await;
    reactor.shutdown().await.expect("shutdown");
    assert_eq!(reactor.health(), ReactorHealth::Stopped);
}

// CG-R-12 (Latest): boundaries taken in while Warming update the cache; going Live fires once
// on the newest values.
#[tokio::test]
async fn health_warming_latest_fires_once_when_live() {
    let board = HealthBoard::new();
    let acc = board.register("x".into());
    let reactor = ReactorHandle::builder(echo_graph())
        .accumulator_health(Arc::clone(&board))
        .spawn()
        .expect("spawn");
    let mut sub = reactor.subscribe();
    wait_health(&reactor, "Warming", |h| {
        matches!(h, ReactorHealth::Warming { .. })
    })
    .await;
    let x = reactor.sender::<u64>("x").expect("sender");
    for v in 1..=4u64 {
        x.send(v).await.expect("send");
    }
    assert_eq!(settle(&reactor, 4).await.fires, 0);
    acc.set(AccumulatorHealth::Live);
    let firing = next_firing(&mut sub).await;
    assert_eq!(output::<u64>(&firing, "echo"), 4);
    let state = within("state", reactor.state()).await.expect("running");
    assert_eq!(state.fires, 1);
    assert_eq!(state.health, ReactorHealth::Live);
    reactor.shutdown().await.expect("shutdown");
}

// ---------------------------------------------------------------------------------------------
// After-fire signal (CG-R-13)
// ---------------------------------------------------------------------------------------------

// CG-R-13: the after-fire signal is sent after each successful firing, not after a failed one.
#[tokio::test]
async fn after_fire_signal_follows_successful_firings_only() {
    let graph = build(GraphBuilder::new("picky").node(
        "picky",
        (source::<u64>("x"),),
        |x: Option<&u64>| {
            let v = x.copied().unwrap_or(0);
            if v == 0 {
                panic!("zero refused");
            }
            v
        },
    ));
    let signal = Arc::new(Notify::new());
    let reactor = ReactorHandle::builder(graph)
        .strategy(InputStrategy::Sequential)
        .after_fire(Arc::clone(&signal))
        .spawn()
        .expect("spawn");
    let mut sub = reactor.subscribe();
    let x = reactor.sender::<u64>("x").expect("sender");

    x.send(0).await.expect("send");
    assert!(next_firing(&mut sub).await.result.is_error());
    settle(&reactor, 1).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(50), signal.notified())
            .await
            .is_err(),
        "a failed firing must not signal"
    );

    x.send(1).await.expect("send");
    assert!(next_firing(&mut sub).await.result.is_completed());
    within("after-fire signal", signal.notified()).await;
    reactor.shutdown().await.expect("shutdown");
}

// CG-R-13: a batch accumulator with no timer flushes right after each firing: its buffered
// events arrive as one boundary that fires the graph again.
#[tokio::test]
async fn batch_accumulator_flushes_after_each_firing() {
    type Seen = (Option<Vec<u64>>, Option<u64>);
    let graph = build(GraphBuilder::new("orders").node(
        "seen",
        (source::<Vec<u64>>("orders"), source::<u64>("tick")),
        |orders: Option<&Vec<u64>>, tick: Option<&u64>| -> Seen {
            (orders.cloned(), tick.copied())
        },
    ));
    let signal = Arc::new(Notify::new());
    let board = HealthBoard::new();
    let reactor = ReactorHandle::builder(graph)
        .strategy(InputStrategy::Sequential)
        .after_fire(Arc::clone(&signal))
        .accumulator_health(Arc::clone(&board))
        .spawn()
        .expect("spawn");
    let mut sub = reactor.subscribe();

    let (batch, orders) = Batch::<u64>::new(BatchConfig {
        max_size: 100,
        flush_interval: None,
        capacity: 16,
    });
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let ctx = AccumulatorContext::new(
        reactor.sender::<Vec<u64>>("orders").expect("sender orders"),
        stop_rx,
        Some(signal),
        board.register("orders".into()),
    );
    let task = tokio::spawn(batch.run(ctx));
    wait_health(&reactor, "Live", |h| *h == ReactorHealth::Live).await;

    for v in [1u64, 2, 3] {
        orders.send(v).await.expect("batch open");
    }
    reactor
        .sender::<u64>("tick")
        .expect("sender tick")
        .send(1)
        .await
        .expect("send");
    let first = next_firing(&mut sub).await;
    assert_eq!(
        output::<Seen>(&first, "seen"),
        (None, Some(1)),
        "nothing flushed before"
    );
    let second = next_firing(&mut sub).await;
    assert_eq!(
        output::<Seen>(&second, "seen"),
        (Some(vec![1, 2, 3]), Some(1)),
        "the buffered events arrive as one boundary after the first firing"
    );

    stop.send(true).expect("batch running");
    within("batch to stop", task)
        .await
        .expect("batch task")
        .expect("batch result");
    let report = reactor.shutdown().await.expect("shutdown");
    assert_eq!(report.fires, 2, "an empty buffer is not flushed");
    assert_eq!(report.boundaries, 2);
}

// ---------------------------------------------------------------------------------------------
// Subscribers
// ---------------------------------------------------------------------------------------------

// Subscriber contract (no CG-R-05..13 row; result fan-out feeding CG-R-15/1.5).
// Every subscriber receives every firing, in order.
#[tokio::test]
async fn two_subscribers_each_receive_every_firing() {
    let reactor = ReactorHandle::builder(echo_graph())
        .strategy(InputStrategy::Sequential)
        .spawn()
        .expect("spawn");
    let mut first = reactor.subscribe();
    let mut second = reactor.subscribe();
    let x = reactor.sender::<u64>("x").expect("sender");
    for v in 1..=5u64 {
        x.send(v).await.expect("send");
    }
    for sub in [&mut first, &mut second] {
        for v in 1..=5u64 {
            let firing = next_firing(sub).await;
            assert_eq!(firing.id, v);
            assert_eq!(output::<u64>(&firing, "echo"), v);
        }
    }
    reactor.shutdown().await.expect("shutdown");
    assert!(first.recv().await.is_none());
    assert!(second.recv().await.is_none());
}

// Subscriber contract (no CG-R-05..13 row; `Overflow::DropNewest`).
// A DropNewest subscriber that does not read misses firings and is told so (Lagged), counted in
// stats; the other subscriber receives all 20.
#[tokio::test]
async fn drop_newest_subscriber_reports_lag_others_unaffected() {
    let reactor = ReactorHandle::builder(echo_graph())
        .strategy(InputStrategy::Sequential)
        .spawn()
        .expect("spawn");
    let mut lagging = reactor.subscribe_with(SubscribeOptions {
        capacity: 1,
        overflow: Overflow::DropNewest,
    });
    let mut normal = reactor.subscribe();
    let x = reactor.sender::<u64>("x").expect("sender");
    for v in 1..=20u64 {
        x.send(v).await.expect("send");
    }
    for v in 1..=20u64 {
        assert_eq!(output::<u64>(&next_firing(&mut normal).await, "echo"), v);
    }
    settle(&reactor, 20).await;
    let stats = reactor.stats();
    assert_eq!(stats.fires, 20);
    assert!(stats.subscriber_missed > 0);
    assert_eq!(
        stats.subscriber_missed, 19,
        "capacity 1: all but the first missed"
    );
    assert_eq!(stats.subscribers_detached, 0);

    match within("lag report", lagging.recv()).await {
        Some(Err(Lagged { missed, detached })) => {
            assert!(missed > 0);
            assert_eq!(missed, 19);
            assert!(!detached);
        }
        other => panic!("expected Lagged, got {other:?}"),
    }
    let kept = next_firing(&mut lagging).await;
    assert_eq!(kept.id, 1, "the firing that fit is still delivered");

    // The lagging subscriber keeps receiving once it reads again.
    x.send(21).await.expect("send");
    assert_eq!(output::<u64>(&next_firing(&mut lagging).await, "echo"), 21);
    reactor.shutdown().await.expect("shutdown");
    assert!(lagging.recv().await.is_none());
}

// Subscriber contract (no CG-R-05..13 row; `Overflow::Block`).
// A Block subscriber still full after max_wait is detached: its stream yields what it holds,
// then Lagged { detached: true }, then ends; the reactor keeps firing for the others.
#[tokio::test]
async fn blocking_subscriber_is_detached_after_max_wait() {
    let reactor = ReactorHandle::builder(echo_graph())
        .strategy(InputStrategy::Sequential)
        .spawn()
        .expect("spawn");
    let mut stuck = reactor.subscribe_with(SubscribeOptions {
        capacity: 1,
        overflow: Overflow::Block {
            max_wait: Duration::from_millis(50),
        },
    });
    let mut normal = reactor.subscribe();
    let x = reactor.sender::<u64>("x").expect("sender");
    for v in 1..=5u64 {
        x.send(v).await.expect("send");
    }
    for v in 1..=5u64 {
        assert_eq!(output::<u64>(&next_firing(&mut normal).await, "echo"), v);
    }
    settle(&reactor, 5).await;
    let stats = reactor.stats();
    assert_eq!(stats.subscribers_detached, 1);
    assert!(stats.subscriber_missed >= 1);

    let held = next_firing(&mut stuck).await;
    assert_eq!(held.id, 1);
    match within("detach report", stuck.recv()).await {
        Some(Err(Lagged { missed, detached })) => {
            assert!(detached);
            assert!(missed >= 1);
        }
        other => panic!("expected Lagged {{ detached: true }}, got {other:?}"),
    }
    assert!(
        stuck.recv().await.is_none(),
        "the stream ends after detaching"
    );

    x.send(6).await.expect("send");
    assert_eq!(output::<u64>(&next_firing(&mut normal).await, "echo"), 6);
    reactor.shutdown().await.expect("shutdown");
}

// ---------------------------------------------------------------------------------------------
// Backpressure
// ---------------------------------------------------------------------------------------------

// CG-A-02 (bounded inbound channel) / CG-R-08 (nothing lost).
// A full inbound queue hands try_send's value back and makes send() wait; nothing is lost.
#[tokio::test]
async fn inbound_backpressure_hands_value_back_and_loses_nothing() {
    let gate = Arc::new(Semaphore::new(0));
    let started = Arc::new(AtomicU64::new(0));
    let log = Arc::new(Mutex::new(Vec::new()));
    let reactor = ReactorHandle::builder(gated_graph(&gate, &started, &log))
        .strategy(InputStrategy::Sequential)
        .inbound_capacity(1)
        .spawn()
        .expect("spawn");
    let x = reactor.sender::<u64>("x").expect("sender");

    // The first event starts a firing that waits at the gate.
    x.send(0).await.expect("send");
    wait_until("the first firing to start", || {
        started.load(Ordering::SeqCst) == 1
    })
    .await;

    // With the reactor busy, the queue fills up: try_send eventually hands the value back.
    let mut next = 1u64;
    let refused = loop {
        assert!(
            next < 100,
            "the inbound queue of capacity 1 never filled up"
        );
        match x.try_send(next) {
            Ok(()) => next += 1,
            Err(TrySendError::Full(v)) => break v,
            Err(TrySendError::Closed(_)) => panic!("reactor closed"),
        }
    };
    assert_eq!(refused, next, "try_send returns the value it was given");

    // send() waits while the queue is full.
    let waiting_sender = x.clone();
    let waiting = tokio::spawn(async move { waiting_sender.send(refused).await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        !waiting.is_finished(),
        "send must wait while the queue is full"
    );

    gate.add_permits(1_000_000);
    within("the waiting send", waiting)
        .await
        .expect("send task")
        .expect("sent");
    let total = refused + 5;
    for v in refused + 1..total {
        x.send(v).await.expect("send");
    }
    wait_until("every event fired", || reactor.stats().fires >= total).await;
    assert_eq!(logged(&log), (0..total).collect::<Vec<_>>(), "nothing lost");
    let report = reactor.shutdown().await.expect("shutdown");
    assert_eq!(report.fires, total);
    assert_eq!(report.boundaries, total);
}

// CG-R-10 / CG-R-08 (paused Sequential queue is bounded, nothing lost).
// Sequential boundaries held while paused are bounded by queue_limit; beyond it the reactor stops
// taking from the inbound queue, so senders wait; nothing is dropped, and resume fires all.
#[tokio::test]
async fn queue_limit_backpressures_senders_while_paused() {
    let reactor = ReactorHandle::builder(echo_graph())
        .strategy(InputStrategy::Sequential)
        .queue_limit(2)
        .inbound_capacity(1)
        .spawn()
        .expect("spawn");
    let mut sub = reactor.subscribe();
    reactor.pause().await.expect("pause");
    let x = reactor.sender::<u64>("x").expect("sender");
    // 1 and 2 fill the reactor's queue, 3 waits in the inbound queue, 4 finds no room.
    for v in 1..=3u64 {
        within("send", x.send(v)).await.expect("send");
    }
    let state = settle(&reactor, 2).await;
    assert_eq!(state.queued.len(), 2);
    assert_eq!(state.fires, 0);
    assert_eq!(x.try_send(4), Err(TrySendError::Full(4)));
    assert_eq!(
        reactor.stats().boundaries,
        2,
        "the reactor stopped taking boundaries"
    );

    reactor.resume().await.expect("resume");
    within("send", x.send(4)).await.expect("send");
    for v in 1..=4u64 {
        assert_eq!(output::<u64>(&next_firing(&mut sub).await, "echo"), v);
    }
    let report = reactor.shutdown().await.expect("shutdown");
    assert_eq!((report.fires, report.boundaries), (4, 4));
}

// ---------------------------------------------------------------------------------------------
// Ledger
// ---------------------------------------------------------------------------------------------

// CG-R-15 analog (N firings -> N records) / CG-R-11 (manual firings tagged).
// Every firing is recorded with its inputs' sequence numbers and its outcome (encoded outputs,
// or the failing node).
#[tokio::test]
async fn ledger_records_every_firing() {
    let ledger = Arc::new(MemoryLedger::new());
    let graph =
        build(
            GraphBuilder::new("tens").node("tens", (source::<u64>("x"),), |x: Option<&u64>| {
                let v = x.copied().unwrap_or(0);
                if v == 2 {
                    panic!("two is refused");
                }
                v * 10
            }),
        );
    let reactor = ReactorHandle::builder(graph)
        .name("ledgered")
        .strategy(InputStrategy::Sequential)
        .ledger(ledger.clone(), 16)
        .durability(Durability::None)
        .spawn()
        .expect("spawn");
    assert_eq!(reactor.name(), "ledgered");
    let x = reactor.sender::<u64>("x").expect("sender");
    for v in 1..=3u64 {
        x.send(v).await.expect("send");
    }
    settle(&reactor, 3).await;
    let forced = within("force_fire", reactor.force_fire())
        .await
        .expect("fired");
    assert_eq!(&*forced.reactor, "ledgered");

    let report = reactor.shutdown().await.expect("shutdown");
    assert_eq!(report.fires, 4);
    assert_eq!(report.ledger_records, 4);
    assert_eq!(report.ledger_error, None);

    let records = ledger
        .firings(&FiringQuery::reactor("ledgered"))
        .await
        .expect("ledger readable");
    assert_eq!(records.len(), 4, "one record per firing");
    let expected_seq = [1u64, 2, 3, 3];
    for (i, record) in records.iter().enumerate() {
        assert_eq!(record.reactor, "ledgered");
        assert_eq!(record.firing_id, i as u64 + 1);
        assert_eq!(record.trigger.manual(), i == 3);
        assert_eq!(record.inputs, vec![("x".to_owned(), expected_seq[i])]);
        match (&record.outcome, expected_seq[i]) {
            (FiringOutcome::Failed { node, error }, 2) => {
                assert_eq!(node, "tens");
                assert!(error.contains("tens"), "{error}");
            }
            (FiringOutcome::Completed { outputs }, seq) if seq != 2 => {
                assert_eq!(outputs.len(), 1);
                assert_eq!(outputs[0].0, "tens");
                let value: u64 = codec::decode(&outputs[0].1).expect("decodable output");
                assert_eq!(value, seq * 10);
            }
            (outcome, seq) => panic!("unexpected outcome {outcome:?} for seq {seq}"),
        }
    }
}

// CG-R-15 analog (ledger failure is reported, firing continues).
// A failing ledger does not stop the reactor: it keeps firing and delivering, and shutdown
// reports the ledger error.
#[tokio::test]
async fn failing_ledger_does_not_stop_firing_and_is_reported_at_shutdown() {
    let reactor = ReactorHandle::builder(echo_graph())
        .strategy(InputStrategy::Sequential)
        .ledger(Arc::new(FaultyLedger::failing_first(u64::MAX)), 4)
        .spawn()
        .expect("spawn");
    let mut sub = reactor.subscribe();
    let x = reactor.sender::<u64>("x").expect("sender");
    for v in 1..=10u64 {
        x.send(v).await.expect("send");
    }
    for v in 1..=10u64 {
        assert_eq!(output::<u64>(&next_firing(&mut sub).await, "echo"), v);
    }
    // While appends keep failing the reactor reports itself Degraded, with counters, and keeps
    // firing (the writer notices after its retries; the reactor on its next record).
    let mut fires = 10u64;
    let degraded = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            fires += 1;
            x.send(fires).await.expect("send");
            assert_eq!(output::<u64>(&next_firing(&mut sub).await, "echo"), fires);
            let stats = reactor.stats();
            if let ReactorHealth::Degraded { reasons } = reactor.health() {
                if stats.ledger_lost > 0 {
                    assert!(stats.ledger_errors >= 3, "{stats:?}");
                    break reasons;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("degraded within 10 s");
    assert!(
        degraded.iter().any(|r| r.contains("ledger")),
        "{degraded:?}"
    );
    let report = reactor.shutdown().await.expect("shutdown");
    assert_eq!(report.fires, fires);
    assert_eq!(report.ledger_records, 0);
    let error = report.ledger_error.expect("the ledger error is reported");
    assert!(error.contains("injected outage"), "{error}");
}

// ---------------------------------------------------------------------------------------------
// Shutdown
// ---------------------------------------------------------------------------------------------

// CG-R-08 (every Sequential boundary fires, also across shutdown).
// Sequential events still queued at shutdown all fire before shutdown returns; afterwards
// senders get their value back, subscriptions end and commands report Stopped.
#[tokio::test]
async fn shutdown_fires_queued_events_then_closes_everything() {
    let gate = Arc::new(Semaphore::new(0));
    let started = Arc::new(AtomicU64::new(0));
    let log = Arc::new(Mutex::new(Vec::new()));
    let reactor = ReactorHandle::builder(gated_graph(&gate, &started, &log))
        .strategy(InputStrategy::Sequential)
        .spawn()
        .expect("spawn");
    let mut sub = reactor.subscribe();
    let x = reactor.sender::<u64>("x").expect("sender");

    x.send(1).await.expect("send");
    wait_until("the first firing to start", || {
        started.load(Ordering::SeqCst) == 1
    })
    .await;
    // The reactor is stuck in the first firing: these wait in the inbound queue.
    for v in 2..=5u64 {
        x.send(v).await.expect("send");
    }
    let stopping = reactor.clone();
    let shutdown = tokio::spawn(async move { stopping.shutdown().await });
    tokio::time::sleep(Duration::from_millis(10)).await;
    gate.add_permits(1_000_000);
    let report = within("shutdown", shutdown)
        .await
        .expect("shutdown task")
        .expect("shutdown");
    assert_eq!(
        report.fires, 5,
        "every queued event fired before shutdown returned"
    );
    assert_eq!(report.boundaries, 5);
    assert_eq!(report.unfired_queued, 0);
    assert_eq!(logged(&log), vec![1, 2, 3, 4, 5]);
    assert_eq!(reactor.health(), ReactorHealth::Stopped);

    for v in 1..=5u64 {
        assert_eq!(output::<u64>(&next_firing(&mut sub).await, "echo"), v);
    }
    assert!(
        sub.recv().await.is_none(),
        "subscription ends after shutdown"
    );

    let err = x.send(9).await.expect_err("reactor stopped");
    assert_eq!(err.source_name().as_str(), "x");
    assert_eq!(err.into_value(), Some(9));
    assert_eq!(x.try_send(10), Err(TrySendError::Closed(10)));
    assert!(x.is_closed());
    assert!(matches!(
        reactor.state().await,
        Err(ReactorError::Stopped { .. })
    ));
    assert!(matches!(
        reactor.force_fire().await,
        Err(ReactorError::Stopped { .. })
    ));
    let mut late = reactor.subscribe();
    assert!(
        late.recv().await.is_none(),
        "subscribing to a stopped reactor ends at once"
    );
}

// CG-R-07 (Latest coalescing, also across shutdown).
// Latest: what arrived during the last firing is coalesced and fired once before shutdown
// returns.
#[tokio::test]
async fn shutdown_fires_pending_latest_once() {
    let gate = Arc::new(Semaphore::new(0));
    let started = Arc::new(AtomicU64::new(0));
    let log = Arc::new(Mutex::new(Vec::new()));
    let reactor = ReactorHandle::builder(gated_graph(&gate, &started, &log))
        .strategy(InputStrategy::Latest)
        .spawn()
        .expect("spawn");
    let x = reactor.sender::<u64>("x").expect("sender");
    x.send(1).await.expect("send");
    wait_until("the first firing to start", || {
        started.load(Ordering::SeqCst) == 1
    })
    .await;
    for v in 2..=5u64 {
        x.send(v).await.expect("send");
    }
    let stopping = reactor.clone();
    let shutdown = tokio::spawn(async move { stopping.shutdown().await });
    tokio::time::sleep(Duration::from_millis(10)).await;
    gate.add_permits(1_000_000);
    let report = within("shutdown", shutdown)
        .await
        .expect("shutdown task")
        .expect("shutdown");
    assert_eq!(report.boundaries, 5);
    assert_eq!(
        report.fires, 2,
        "events 2..=5 coalesce into one last firing"
    );
    assert_eq!(logged(&log), vec![1, 5]);
}

// CG-R-10 (paused Sequential queue at shutdown).
// A reactor stopped while paused reports the Sequential boundaries it never fired.
#[tokio::test]
async fn shutdown_while_paused_reports_unfired_queue() {
    let reactor = ReactorHandle::builder(echo_graph())
        .strategy(InputStrategy::Sequential)
        .spawn()
        .expect("spawn");
    reactor.pause().await.expect("pause");
    let x = reactor.sender::<u64>("x").expect("sender");
    for v in 1..=3u64 {
        x.send(v).await.expect("send");
    }
    settle(&reactor, 3).await;
    let report = reactor.shutdown().await.expect("shutdown");
    assert_eq!(report.fires, 0);
    assert_eq!(report.unfired_queued, 3);
}

// ---------------------------------------------------------------------------------------------
// Configuration errors
// ---------------------------------------------------------------------------------------------

// CG-A-03 (named source contract: wrong name or type rejected up front).
// Senders are checked against the graph's sources: wrong type and unknown source are errors.
#[tokio::test]
async fn sender_checks_source_name_and_type() {
    let reactor = ReactorHandle::builder(echo_graph()).spawn().expect("spawn");
    match reactor.sender::<String>("x") {
        Err(ReactorError::SourceType {
            source_name,
            expected,
            requested,
            ..
        }) => {
            assert_eq!(source_name.as_str(), "x");
            assert_eq!(expected, std::any::type_name::<u64>());
            assert_eq!(requested, std::any::type_name::<String>());
        }
        other => panic!("expected SourceType, got {other:?}"),
    }
    match reactor.sender::<u64>("nope") {
        Err(ReactorError::UnknownSource { source_name, .. }) => {
            assert_eq!(source_name.as_str(), "nope");
        }
        other => panic!("expected UnknownSource, got {other:?}"),
    }
    reactor.shutdown().await.expect("shutdown");
}

// CG-R-02: criteria must name sources of the graph, and at least one.
#[tokio::test]
async fn spawn_rejects_bad_criteria() {
    match ReactorHandle::builder(probe_graph())
        .criteria(ReactionCriteria::when_any_of(["a", "nope"]))
        .spawn()
    {
        Err(ReactorError::UnknownSource { source_name, .. }) => {
            assert_eq!(source_name.as_str(), "nope");
        }
        other => panic!("expected UnknownSource, got {other:?}"),
    }
    match ReactorHandle::builder(probe_graph())
        .criteria(ReactionCriteria::when_all_of(["nope"]))
        .spawn()
    {
        Err(ReactorError::UnknownSource { .. }) => {}
        other => panic!("expected UnknownSource, got {other:?}"),
    }
    match ReactorHandle::builder(probe_graph())
        .criteria(ReactionCriteria::when_all_of(Vec::<String>::new()))
        .spawn()
    {
        Err(ReactorError::EmptyCriteria { .. }) => {}
        other => panic!("expected EmptyCriteria, got {other:?}"),
    }
}

// Builder contract (no spec row).
// Spawning needs a tokio runtime; without one it is an error, not a panic.
#[test]
fn spawn_outside_a_runtime_is_an_error() {
    match ReactorHandle::builder(echo_graph()).spawn() {
        Err(ReactorError::NoRuntime { reactor }) => assert_eq!(reactor, "echo"),
        other => panic!("expected NoRuntime, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Review regressions: command ordering, ledger recovery.
// ---------------------------------------------------------------------------------------------

// A command its caller awaits sees every boundary sent before it: send(x); force_fire() fires
// on x, and send(x); pause() fires x before pausing. Deterministic on a current-thread runtime.
#[tokio::test(flavor = "current_thread")]
async fn awaited_commands_see_boundaries_sent_before_them() {
    let reactor = ReactorHandle::builder(echo_graph())
        .strategy(InputStrategy::Latest)
        .spawn()
        .expect("spawn");
    let x = reactor.sender::<u64>("x").expect("sender");
    x.send(42).await.expect("send");
    let forced = within("force_fire", reactor.force_fire())
        .await
        .expect("fired");
    assert_eq!(output::<u64>(&forced, "echo"), 42);

    x.send(7).await.expect("send");
    reactor.pause().await.expect("pause");
    reactor.resume().await.expect("resume");
    // 42 fired automatically (when_any) and once more by force_fire; 7 fired before the pause
    // took effect, so resuming owes nothing.
    let stats = reactor.stats();
    assert_eq!(
        (stats.fires, stats.manual_fires),
        (3, 1),
        "7 fired before the pause: {stats:?}"
    );
    let state = within("state", reactor.state()).await.expect("running");
    assert_eq!(state.cache.get::<u64>("x"), Some(Ok(&7)));
    reactor.shutdown().await.expect("shutdown");
}

// A ledger outage makes the reactor Degraded; once appends succeed again it is Live again, and
// the shutdown report counts both what was written and what was lost.
#[tokio::test]
async fn ledger_outage_degrades_then_recovers_and_is_counted() {
    let ledger = Arc::new(FaultyLedger::failing_first(u64::from(
        cloacina_ledger::APPEND_ATTEMPTS,
    )));
    let reactor = ReactorHandle::builder(echo_graph())
        .name("outage")
        .strategy(InputStrategy::Sequential)
        .ledger(ledger.clone(), 1)
        .durability(Durability::None)
        .spawn()
        .expect("spawn");
    let mut sub = reactor.subscribe();
    let x = reactor.sender::<u64>("x").expect("sender");
    let mut sent = 0u64;
    let mut saw_degraded = false;
    let recovered = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            sent += 1;
            x.send(sent).await.expect("send");
            next_firing(&mut sub).await;
            match reactor.health() {
                ReactorHealth::Degraded { .. } => saw_degraded = true,
                ReactorHealth::Live if saw_degraded => break,
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(recovered.is_ok(), "degraded then live again within 10 s");
    let report = reactor.shutdown().await.expect("shutdown");
    assert_eq!(report.fires, sent);
    assert!(report.ledger_lost >= 1, "{report:?}");
    assert_eq!(
        report.ledger_records + report.ledger_lost,
        sent,
        "{report:?}"
    );
    assert_eq!(
        ledger
            .firings(&FiringQuery::reactor("outage"))
            .await
            .expect("read")
            .len() as u64,
        report.ledger_records
    );
}

// Absurd capacities are clamped, not a panic.
#[tokio::test]
async fn huge_capacities_are_clamped() {
    let reactor = ReactorHandle::builder(echo_graph())
        .inbound_capacity(usize::MAX)
        .firing_timeout(Some(Duration::MAX))
        .spawn()
        .expect("spawn");
    let mut sub = reactor.subscribe_with(SubscribeOptions {
        capacity: usize::MAX,
        overflow: Overflow::DropNewest,
    });
    reactor
        .sender::<u64>("x")
        .expect("sender")
        .send(9)
        .await
        .expect("send");
    assert_eq!(output::<u64>(&next_firing(&mut sub).await, "echo"), 9);
    reactor.shutdown().await.expect("shutdown");
}

/// Panics on its first `fail` calls, then echoes.
fn flaky_graph(fail: Arc<AtomicU64>) -> Arc<CompiledGraph> {
    build(
        GraphBuilder::new("flaky").node("echo", (source::<u64>("x"),), move |x: Option<&u64>| {
            if fail
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                panic!("transient failure");
            }
            x.copied().unwrap_or(0)
        }),
    )
}

// SPEC robustness: a failed firing's inputs can be retried per policy instead of consumed.
#[tokio::test]
async fn retry_policy_reruns_a_failed_firing_on_the_same_inputs() {
    let reactor = ReactorHandle::builder(flaky_graph(Arc::new(AtomicU64::new(2))))
        .strategy(InputStrategy::Sequential)
        .on_failure(FailurePolicy::Retry {
            attempts: 3,
            backoff: Duration::from_millis(1),
        })
        .spawn()
        .expect("spawn");
    let mut sub = reactor.subscribe();
    reactor
        .sender::<u64>("x")
        .expect("sender")
        .send(5)
        .await
        .expect("send");
    let firing = next_firing(&mut sub).await;
    assert_eq!(output::<u64>(&firing, "echo"), 5, "third run succeeded");
    assert_eq!(firing.attempts, 3);
    let stats = reactor.stats();
    assert_eq!(
        (stats.fires, stats.retries, stats.errors),
        (1, 2, 0),
        "{stats:?}"
    );
    reactor.shutdown().await.expect("shutdown");

    // Out of attempts: reported as an error, once, after the last run.
    let reactor = ReactorHandle::builder(flaky_graph(Arc::new(AtomicU64::new(5))))
        .strategy(InputStrategy::Sequential)
        .on_failure(FailurePolicy::Retry {
            attempts: 2,
            backoff: Duration::from_millis(1),
        })
        .spawn()
        .expect("spawn");
    let mut sub = reactor.subscribe();
    reactor
        .sender::<u64>("x")
        .expect("sender")
        .send(5)
        .await
        .expect("send");
    let firing = next_firing(&mut sub).await;
    assert!(firing.result.is_error());
    assert_eq!(firing.attempts, 2);
    let stats = reactor.stats();
    assert_eq!(
        (stats.fires, stats.retries, stats.errors),
        (1, 1, 1),
        "{stats:?}"
    );
    reactor.shutdown().await.expect("shutdown");
}
