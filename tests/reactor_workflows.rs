//! Reactor-started workflows: a reactor's firings start a subscribed workflow, pushed in
//! process; the subscription's filter and input mapping apply; each firing starts one
//! execution carrying its firing id; after a crash the subscription resumes from the
//! ledger and starts what it missed, once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloacina::graph::codec;
use cloacina::ledger::{FiringOutcome, FiringRecord, Ledger};
use cloacina::prelude::*;
use cloacina::reactor::ReactorHandle;
use serde_json::json;

type Seen = Arc<Mutex<HashMap<u64, Vec<u64>>>>;

/// A reactor `doubler` (Sequential): each `n` fires once, output `doubled` = 2n.
fn doubler(ledger: &Arc<dyn Ledger>) -> ReactorHandle {
    let graph = GraphBuilder::new("doubler")
        .node("doubled", (source::<u64>("n"),), |n: Option<&u64>| {
            n.copied().unwrap_or(0) * 2
        })
        .build()
        .expect("graph");
    ReactorHandle::builder(Arc::new(graph))
        .strategy(InputStrategy::Sequential)
        .ledger(Arc::clone(ledger), 1_024)
        .spawn()
        .expect("reactor")
}

/// A workflow `react` noting, per reactor firing id, the `doubled` value it was given.
fn react(seen: &Seen) -> Workflow {
    let seen = Arc::clone(seen);
    let task = FnTask::new(
        "note",
        [] as [&str; 0],
        move |ctx: Context<serde_json::Value>| {
            let firing = ctx
                .get("reactor_firing_id")
                .and_then(|v| v.as_u64())
                .unwrap_or(0);
            let doubled = ctx.get("doubled").and_then(|v| v.as_u64()).unwrap_or(0);
            seen.lock()
                .expect("seen")
                .entry(firing)
                .or_default()
                .push(doubled);
            async move { Ok(ctx) }
        },
    );
    Workflow::builder("react")
        .task(task)
        .build()
        .expect("valid")
}

/// The ledger at `url`, a `doubler` reactor recording into it, and a runner on it with
/// the `react` workflow noting into `seen`.
async fn world(url: &str, seen: &Seen) -> (Arc<dyn Ledger>, ReactorHandle, DefaultRunner) {
    let ledger = cloacina::ledger::open(url).await.expect("ledger");
    let reactor = doubler(&ledger);
    let runner = DefaultRunner::from_ledger(Arc::clone(&ledger), RunnerConfig::default())
        .await
        .expect("runner");
    runner.register_workflow(react(seen)).expect("register");
    (ledger, reactor, runner)
}

/// The `doubled` output of a completed firing.
fn doubled(firing: &FiringRecord) -> Option<u64> {
    match &firing.outcome {
        FiringOutcome::Completed { outputs } => outputs
            .iter()
            .find(|(node, _)| node == "doubled")
            .and_then(|(_, bytes)| codec::decode::<u64>(bytes).ok()),
        FiringOutcome::Failed { .. } => None,
    }
}

/// Firings whose `doubled` is at least `min`, with `doubled` in the input.
fn at_least(name: &str, min: u64) -> ReactorSubscription {
    ReactorSubscription::new(name, "doubler", "react").select(move |firing| {
        let d = doubled(firing).filter(|d| *d >= min)?;
        let mut input = Context::new();
        input.insert_or_update("doubled", json!(d));
        Some(input)
    })
}

async fn eventually(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !ready() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn send(reactor: &ReactorHandle, values: std::ops::RangeInclusive<u64>) {
    let sender = reactor.sender::<u64>("n").expect("sender");
    for n in values {
        sender.send(n).await.expect("send");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_firings_start_one_execution_each_carrying_the_firing_id() {
    let seen: Seen = Arc::default();
    let (ledger, reactor, runner) = world("memory://", &seen).await;
    let task = cloacina::subscribe_workflow(&reactor, &runner, at_least("big", 10))
        .await
        .expect("subscribe");
    let mut firings = reactor.subscribe();
    send(&reactor, 1..=10).await;
    // The reactor's own view: firing id -> doubled.
    let mut expected = HashMap::new();
    while expected.len() < 10 {
        let firing = firings.recv().await.expect("open").expect("no lag");
        let record = firing.to_record();
        expected.insert(record.firing_id, doubled(&record).expect("completed"));
    }
    let accepted: HashMap<u64, u64> = expected
        .iter()
        .filter(|(_, d)| **d >= 10)
        .map(|(id, d)| (*id, *d))
        .collect();
    assert_eq!(accepted.len(), 6, "n = 5..=10");
    eventually("six executions", || seen.lock().expect("seen").len() == 6).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let got = seen.lock().expect("seen").clone();
    let want: HashMap<u64, Vec<u64>> = accepted.iter().map(|(id, d)| (*id, vec![*d])).collect();
    assert_eq!(
        got, want,
        "one execution per accepted firing, with its id and output"
    );
    reactor.shutdown().await.expect("reactor shutdown");
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the subscription ends with its reactor")
        .expect("task");
    // Its position is saved: the last firing handled.
    let saved = ledger
        .checkpoint(cloacina::workflow::SUBSCRIPTIONS_OWNER, "big")
        .await
        .expect("read")
        .expect("saved");
    let saved: serde_json::Value = serde_json::from_slice(&saved.value).expect("json");
    assert_eq!(saved["position"], json!(expected.keys().max().copied()));
    runner.shutdown().await.expect("runner shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_subscription_starts_after_the_last_firing_and_one_sink_per_name() {
    let seen: Seen = Arc::default();
    let (ledger, reactor, runner) = world("memory://", &seen).await;
    send(&reactor, 1..=3).await;
    tokio::time::timeout(Duration::from_secs(10), async {
        while ledger
            .last_firing("doubler")
            .await
            .expect("read")
            .is_none_or(|f| f.firing_id < 3)
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("three firings recorded");
    let task = cloacina::subscribe_workflow(&reactor, &runner, at_least("late", 0))
        .await
        .expect("subscribe");
    let err = cloacina::subscribe_workflow(&reactor, &runner, at_least("late", 0))
        .await
        .expect_err("a second sink of one name");
    assert!(err.to_string().contains("already open"), "{err}");
    send(&reactor, 4..=5).await;
    eventually("two executions", || seen.lock().expect("seen").len() == 2).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut ids: Vec<u64> = seen.lock().expect("seen").keys().copied().collect();
    ids.sort_unstable();
    assert_eq!(
        ids.len(),
        2,
        "no backfill of the firings before it: {ids:?}"
    );
    assert!(ids.iter().all(|id| *id > 3), "{ids:?}");
    // The task ends when the runner shuts down, though the reactor runs on.
    runner.shutdown().await.expect("runner shutdown");
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the subscription ends with its runner")
        .expect("task");
    reactor.shutdown().await.expect("reactor shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_crash_the_subscription_starts_what_it_missed_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sled://{}", dir.path().join("store").display());
    let seen: Seen = Arc::default();
    // First life: five firings handled live, then the subscription task is killed (its
    // position may not be saved) and everything stops.
    {
        let (ledger, reactor, runner) = world(&url, &seen).await;
        let task = cloacina::subscribe_workflow(&reactor, &runner, at_least("all", 0))
            .await
            .expect("subscribe");
        send(&reactor, 1..=5).await;
        eventually("five executions", || seen.lock().expect("seen").len() == 5).await;
        task.abort();
        // Fired while nobody is subscribed: only the ledger has them.
        send(&reactor, 6..=8).await;
        reactor.shutdown().await.expect("reactor shutdown");
        runner.shutdown().await.expect("runner shutdown");
        drop((reactor, runner));
        ledger.flush().await.expect("flush");
    }
    // Second life: the subscription catches up 6..=8 from the ledger (and passes over
    // what already started), then takes 9..=10 live.
    let (_ledger, reactor, runner) = world(&url, &seen).await;
    let _task = cloacina::subscribe_workflow(&reactor, &runner, at_least("all", 0))
        .await
        .expect("subscribe again");
    send(&reactor, 9..=10).await;
    eventually("ten executions", || seen.lock().expect("seen").len() == 10).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let got = seen.lock().expect("seen").clone();
    assert_eq!(got.len(), 10, "{got:?}");
    assert!(
        got.iter()
            .all(|(id, runs)| runs.len() == 1 && runs[0] == 2 * id),
        "each firing started exactly one execution: {got:?}"
    );
    reactor.shutdown().await.expect("reactor shutdown");
    runner.shutdown().await.expect("runner shutdown");
}

#[tokio::test]
async fn a_subscription_naming_another_reactor_is_refused() {
    let seen: Seen = Arc::default();
    let (_ledger, reactor, runner) = world("memory://", &seen).await;
    let err = cloacina::subscribe_workflow(
        &reactor,
        &runner,
        ReactorSubscription::new("s", "other", "react"),
    )
    .await
    .expect_err("wrong reactor");
    assert!(err.to_string().contains("`other`"), "{err}");
    let err = cloacina::subscribe_workflow(
        &reactor,
        &runner,
        ReactorSubscription::new("s", "doubler", "nope"),
    )
    .await
    .expect_err("unknown workflow");
    assert!(err.to_string().contains("nope"), "{err}");
    reactor.shutdown().await.expect("shutdown");
    runner.shutdown().await.expect("runner shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_runner_in_another_process_follows_the_reactor_through_the_store() {
    let Some(base) = cloacina::ledger::testing::postgres_url() else {
        eprintln!(
            "postgres_a_runner_in_another_process_follows_the_reactor_through_the_store: skipped"
        );
        return;
    };
    let schema = format!(
        "follow_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
    );
    // The reactor's process: its own connection pool, recording into the schema.
    let reactor_ledger = cloacina::ledger::open_tenant(&base, &schema)
        .await
        .expect("reactor ledger");
    let reactor = doubler(&reactor_ledger);
    // The runner's process: another pool on the same schema; no reactor here.
    let seen: Seen = Arc::default();
    let follower = |seen: Seen| {
        let (base, schema) = (base.clone(), schema.clone());
        async move {
            let runner = DefaultRunner::builder()
                .url(base)
                .tenant(schema)
                .build()
                .await
                .expect("runner");
            runner.register_workflow(react(&seen)).expect("register");
            let task = runner
                .follow_reactor(at_least("remote", 10), Duration::from_millis(50))
                .await
                .expect("follow");
            (runner, task)
        }
    };
    // Two runner processes follow the same subscription: each firing still runs once.
    let (runner, task) = follower(Arc::clone(&seen)).await;
    let (twin, twin_task) = follower(Arc::clone(&seen)).await;
    send(&reactor, 1..=10).await;
    // n = 5..=10 give doubled >= 10: six firings, each started once.
    eventually("six remote firings started", || {
        seen.lock().expect("seen").len() == 6
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        seen.lock().expect("seen").values().all(|v| v.len() == 1),
        "two followers, each firing once: {:?}",
        seen.lock().expect("seen")
    );
    for (r, t) in [(runner, task), (twin, twin_task)] {
        r.shutdown().await.expect("shutdown");
        t.await.expect("follower ended");
    }

    // Firings made while no follower runs are started by the next one, once.
    send(&reactor, 11..=13).await;
    reactor_ledger.flush().await.expect("flush");
    let (runner, task) = follower(Arc::clone(&seen)).await;
    eventually("the missed firings started", || {
        seen.lock().expect("seen").len() == 9
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = seen.lock().expect("seen").clone();
    assert_eq!(seen.len(), 9, "{seen:?}");
    assert!(
        seen.values().all(|v| v.len() == 1),
        "each firing once: {seen:?}"
    );
    let mut values: Vec<u64> = seen.values().map(|v| v[0]).collect();
    values.sort_unstable();
    assert_eq!(values, [10, 12, 14, 16, 18, 20, 22, 24, 26]);
    runner.shutdown().await.expect("shutdown");
    task.await.expect("follower ended");
    reactor.shutdown().await.expect("reactor shutdown");
}
