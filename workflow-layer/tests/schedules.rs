//! Cron schedules on real runners sharing one store (memory; PostgreSQL and a SQLite file
//! with each runner opening the store itself, as separate processes would): each instant
//! fires exactly once across runners, schedules are listed, disabled, enabled and deleted
//! through any runner, missed instants follow the catch-up policy, tenants are isolated,
//! and bad definitions are refused.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloacina_ledger::Ledger;
use cloacina_workflow_layer::{
    CatchUp, Context, DefaultRunner, FnTask, RunnerConfig, RunnerError, Schedule, Workflow,
};
use serde_json::json;

type Fired = Arc<Mutex<HashMap<String, u32>>>;

/// A workflow `tick` counting its executions per `scheduled_for`.
fn tick(fired: &Fired) -> Workflow {
    let fired = Arc::clone(fired);
    let task = FnTask::new("count", [] as [&str; 0], move |ctx: Context| {
        let at = ctx
            .get("scheduled_for")
            .and_then(|v| v.as_str())
            .unwrap_or("none")
            .to_owned();
        *fired.lock().expect("fired").entry(at).or_default() += 1;
        async move { Ok(ctx) }
    });
    Workflow::builder("tick").task(task).build().expect("valid")
}

async fn runner(ledger: &Arc<dyn Ledger>, id: &str, fired: &Fired) -> DefaultRunner {
    let config = RunnerConfig {
        runner_id: id.into(),
        ..RunnerConfig::default()
    };
    let runner = DefaultRunner::from_ledger(Arc::clone(ledger), config)
        .await
        .expect("runner");
    runner.register_workflow(tick(fired)).expect("register");
    runner
}

fn snapshot(fired: &Fired) -> HashMap<String, u32> {
    fired.lock().expect("fired").clone()
}

/// The instants fired, in order, as whole seconds since the epoch.
fn seconds(fired: &HashMap<String, u32>) -> Vec<i64> {
    let mut s: Vec<i64> = fired
        .keys()
        .map(|k| {
            chrono::DateTime::parse_from_rfc3339(k)
                .expect("rfc3339")
                .timestamp()
        })
        .collect();
    s.sort_unstable();
    s
}

/// Each of `runners` registers an every-second schedule (as each runner of a deployment
/// does at its start: the same definition again changes nothing); after about 4 s one
/// disables it through the last runner: every instant fired exactly once, none missed,
/// and nothing fires once the disable is seen.
async fn fire_each_instant_once(runners: &[DefaultRunner], fired: &Fired) {
    for r in runners {
        r.register_schedule(Schedule::new("every-second", "tick", "* * * * * *"))
            .await
            .expect("register");
    }
    tokio::time::sleep(Duration::from_millis(4_200)).await;
    let last = runners.last().expect("runners");
    last.disable_schedule("every-second")
        .await
        .expect("disable");
    // Every runner sees the disable within its refresh (1 s); in-flight fires end.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let settled = snapshot(fired);
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let got = snapshot(fired);
    assert_eq!(got, settled, "nothing fires once disabled");
    assert!(
        got.values().all(|n| *n == 1),
        "fired more than once: {got:?}"
    );
    let instants = seconds(&got);
    assert!(instants.len() >= 3, "{instants:?}");
    assert!(
        instants.windows(2).all(|w| w[1] == w[0] + 1),
        "every second fired, none missed: {instants:?}"
    );
    for r in runners {
        r.shutdown().await.expect("shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_instant_fires_exactly_once_across_three_runners() {
    let ledger = cloacina_ledger::open("memory://").await.expect("ledger");
    let fired: Fired = Arc::default();
    let mut runners = Vec::new();
    for id in ["a", "b", "c"] {
        runners.push(runner(&ledger, id, &fired).await);
    }
    fire_each_instant_once(&runners, &fired).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_are_listed_disabled_enabled_and_deleted_from_any_runner() {
    let ledger = cloacina_ledger::open("memory://").await.expect("ledger");
    let fired: Fired = Arc::default();
    let a = runner(&ledger, "a", &fired).await;
    let b = runner(&ledger, "b", &fired).await;
    let mut input = Context::new();
    input.insert("region", json!("eu")).expect("new key");
    a.register_schedule(
        Schedule::new("nightly", "tick", "0 30 2 * * *")
            .time_zone("Europe/Paris")
            .catch_up(CatchUp::RunMissed { max: 2 })
            .input(input.clone()),
    )
    .await
    .expect("register");
    let listed = b.schedules().await.expect("list");
    assert_eq!(listed.len(), 1);
    let info = &listed[0];
    assert_eq!(
        (
            info.schedule.name.as_str(),
            info.schedule.expression.as_str(),
            info.schedule.time_zone.as_str(),
            info.schedule.catch_up,
            info.enabled
        ),
        (
            "nightly",
            "0 30 2 * * *",
            "Europe/Paris",
            CatchUp::RunMissed { max: 2 },
            true
        )
    );
    assert_eq!(info.schedule.input, input);
    assert!(info.next.is_some());
    b.disable_schedule("nightly").await.expect("disable");
    let listed = a.schedules().await.expect("list");
    assert!(!listed[0].enabled && listed[0].next.is_none());
    a.enable_schedule("nightly").await.expect("enable");
    assert!(b.schedules().await.expect("list")[0].enabled);
    b.delete_schedule("nightly").await.expect("delete");
    assert!(a.schedules().await.expect("list").is_empty());
    assert!(matches!(
        a.enable_schedule("nightly").await,
        Err(RunnerError::UnknownSchedule(name)) if name == "nightly"
    ));
}

#[tokio::test]
async fn bad_expressions_zones_and_workflows_are_refused_saying_which() {
    let ledger = cloacina_ledger::open("memory://").await.expect("ledger");
    let fired: Fired = Arc::default();
    let a = runner(&ledger, "a", &fired).await;
    let err = a
        .register_schedule(Schedule::new("s", "tick", "0 99 * * *"))
        .await
        .expect_err("minute 99");
    assert!(
        matches!(&err, RunnerError::InvalidSchedule { name, reason } if name == "s" && reason.contains("`0 99 * * *`")),
        "{err}"
    );
    let err = a
        .register_schedule(Schedule::new("s", "tick", "* * * * *").time_zone("Nowhere/Land"))
        .await
        .expect_err("zone");
    assert!(err.to_string().contains("`Nowhere/Land`"), "{err}");
    let err = a
        .register_schedule(Schedule::new("s", "nope", "* * * * *"))
        .await
        .expect_err("unknown workflow");
    assert!(matches!(err, RunnerError::UnknownWorkflow { .. }), "{err}");
    assert!(
        a.schedules().await.expect("list").is_empty(),
        "nothing stored"
    );
}

/// Registers an every-second schedule with `catch_up` on one runner, stops it, leaves the
/// store without a runner for about 3.5 s, starts another (half-way through a second):
/// returns the instants fired (whole seconds), when the first stopped and when the second
/// started (microseconds).
async fn gap_with(catch_up: CatchUp) -> (Vec<i64>, i64, i64) {
    let ledger = cloacina_ledger::open("memory://").await.expect("ledger");
    let fired: Fired = Arc::default();
    let first = runner(&ledger, "first", &fired).await;
    first
        .register_schedule(
            Schedule::new("every-second", "tick", "*/1 * * * * *").catch_up(catch_up),
        )
        .await
        .expect("register");
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    first.shutdown().await.expect("shutdown");
    let stopped = chrono::Utc::now().timestamp_micros();
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    // Start the second runner mid-second, far from any instant.
    let into_second = chrono::Utc::now().timestamp_subsec_millis();
    tokio::time::sleep(Duration::from_millis(u64::from(
        (1_500 - into_second) % 1_000,
    )))
    .await;
    let started = chrono::Utc::now().timestamp_micros();
    let second = runner(&ledger, "second", &fired).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    second.shutdown().await.expect("shutdown");
    let got = snapshot(&fired);
    assert!(got.values().all(|n| *n == 1), "{got:?}");
    (seconds(&got), stopped, started)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_instants_are_skipped_by_default_and_run_up_to_max_when_asked() {
    // The instants fired after the first runner stopped: with Skip, only the second
    // runner's own (from its start on); with RunMissed { max: 2 }, the 2 latest missed
    // instants before them as well, with no hole between.
    let after = |fired: &[i64], stopped: i64| -> Vec<i64> {
        fired
            .iter()
            .copied()
            .filter(|t| t * 1_000_000 > stopped)
            .collect()
    };
    let contiguous = |s: &[i64]| s.windows(2).all(|w| w[1] == w[0] + 1);
    let (skipped, stopped, started) = gap_with(CatchUp::Skip).await;
    let tail = after(&skipped, stopped);
    assert!(
        tail.first().is_some_and(|t| t * 1_000_000 > started) && contiguous(&tail),
        "Skip: nothing of the gap fires ({skipped:?}, started {started})"
    );
    let (caught_up, stopped, started) = gap_with(CatchUp::RunMissed { max: 2 }).await;
    let tail = after(&caught_up, stopped);
    let in_gap = tail.iter().filter(|t| **t * 1_000_000 < started).count();
    assert!(
        contiguous(&tail) && (1..=2).contains(&in_gap) && tail.len() >= 3,
        "RunMissed {{ max: 2 }}: the latest missed instants, joined to the next ones \
         ({caught_up:?}, started {started})"
    );
    // Exactly two were caught up: the block starts two instants before the second
    // runner's first own instant, which is at or after its start.
    let first = tail[0];
    assert!(
        (first + 2) * 1_000_000 > started,
        "at most 2 caught up ({caught_up:?}, started {started})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_without_the_workflow_leaves_the_instants_to_one_with_it() {
    let ledger = cloacina_ledger::open("memory://").await.expect("ledger");
    let fired: Fired = Arc::default();
    let without = DefaultRunner::from_ledger(
        Arc::clone(&ledger),
        RunnerConfig {
            runner_id: "without".into(),
            ..RunnerConfig::default()
        },
    )
    .await
    .expect("runner");
    let with = runner(&ledger, "with", &fired).await;
    with.register_schedule(Schedule::new("every-second", "tick", "* * * * * *"))
        .await
        .expect("register");
    tokio::time::sleep(Duration::from_millis(3_200)).await;
    without.shutdown().await.expect("shutdown");
    with.shutdown().await.expect("shutdown");
    let got = snapshot(&fired);
    let instants = seconds(&got);
    assert!(instants.len() >= 2, "{instants:?}");
    assert!(
        instants.windows(2).all(|w| w[1] == w[0] + 1) && got.values().all(|n| *n == 1),
        "every instant once, none taken by the runner without the workflow: {got:?}"
    );
}

/// Three runners each opening `url` (tenant `tenant`) themselves.
async fn three_runners_fire_each_instant_once(url: &str, tenant: Option<&str>) {
    let fired: Fired = Arc::default();
    let mut runners = Vec::new();
    for id in ["a", "b", "c"] {
        let mut builder = DefaultRunner::builder().url(url).runner_id(id);
        if let Some(t) = tenant {
            builder = builder.tenant(t);
        }
        let runner = builder.build().await.expect("runner");
        runner.register_workflow(tick(&fired)).expect("register");
        runners.push(runner);
    }
    fire_each_instant_once(&runners, &fired).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_three_runners_fire_each_instant_exactly_once() {
    let Some(url) = cloacina_ledger::testing::postgres_url() else {
        eprintln!("postgres_three_runners_fire_each_instant_exactly_once: skipped");
        return;
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tenant = format!("cron_{}_{nanos}", std::process::id());
    three_runners_fire_each_instant_once(&url, Some(&tenant)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_three_runners_fire_each_instant_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("wf.db").display());
    three_runners_fire_each_instant_once(&url, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_never_sees_or_fires_another_tenants_schedules() {
    let Some(url) = cloacina_ledger::testing::postgres_url() else {
        eprintln!("a_tenant_never_sees_or_fires_another_tenants_schedules: skipped");
        return;
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let (fired_a, fired_b): (Fired, Fired) = (Arc::default(), Arc::default());
    let mut runners = Vec::new();
    for (tenant, fired) in [("a", &fired_a), ("b", &fired_b)] {
        let runner = DefaultRunner::builder()
            .url(url.clone())
            .tenant(format!(
                "cron_tenant_{tenant}_{}_{nanos}",
                std::process::id()
            ))
            .build()
            .await
            .expect("runner");
        runner.register_workflow(tick(fired)).expect("register");
        runners.push(runner);
    }
    runners[0]
        .register_schedule(Schedule::new("every-second", "tick", "* * * * * *"))
        .await
        .expect("register");
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert!(runners[1].schedules().await.expect("list").is_empty());
    assert!(snapshot(&fired_b).is_empty(), "tenant b fired nothing");
    assert!(!snapshot(&fired_a).is_empty(), "tenant a fired its own");
    for r in &runners {
        r.shutdown().await.expect("shutdown");
    }
}
