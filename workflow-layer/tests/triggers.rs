//! Polling triggers on real runners sharing one store: each interval is polled by one
//! runner (not one per runner), fires start the workflow with the fired context, same-
//! context fires are de-duplicated while the last one runs (unless allowed), failing,
//! panicking and hanging polls are counted and the trigger goes on, and bad definitions
//! are refused.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloacina_ledger::Ledger;
use cloacina_workflow_layer::{
    Context, DefaultRunner, FnTask, PollingTrigger, RunnerConfig, RunnerError, TriggerError,
    TriggerResult, Workflow,
};
use serde_json::json;

/// Executions started, by the `file` of their input.
type Started = Arc<Mutex<HashMap<String, u32>>>;

/// Workflow `ingest`: notes its `file`, then holds for `ms`.
fn ingest(started: &Started, ms: u64) -> Workflow {
    let started = Arc::clone(started);
    let task = FnTask::new("load", [] as [&str; 0], move |ctx: Context| {
        let file = ctx
            .get("file")
            .and_then(|v| v.as_str())
            .unwrap_or("none")
            .to_owned();
        assert_eq!(ctx.get("trigger").and_then(|v| v.as_str()), Some("files"));
        *started.lock().expect("started").entry(file).or_default() += 1;
        async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(ctx)
        }
    });
    Workflow::builder("ingest")
        .task(task)
        .build()
        .expect("valid")
}

async fn runner(ledger: &Arc<dyn Ledger>, id: &str, started: &Started, ms: u64) -> DefaultRunner {
    let runner = DefaultRunner::from_ledger(
        Arc::clone(ledger),
        RunnerConfig {
            runner_id: id.into(),
            ..RunnerConfig::default()
        },
    )
    .await
    .expect("runner");
    runner
        .register_workflow(ingest(started, ms))
        .expect("register");
    runner
}

fn fire(file: &str) -> Result<TriggerResult, TriggerError> {
    let mut ctx = Context::new();
    ctx.insert("file", json!(file)).expect("new key");
    Ok(TriggerResult::Fire(Some(ctx)))
}

/// Three runners with the same trigger, polling every 100 ms for about 1.5 s.
async fn polled_once_per_interval(ledger: Arc<dyn Ledger>, others: Vec<Arc<dyn Ledger>>) {
    let started = Started::default();
    let polls = Arc::new(AtomicU64::new(0));
    let mut runners = vec![runner(&ledger, "r0", &started, 1).await];
    for (i, l) in others.iter().enumerate() {
        runners.push(runner(l, &format!("r{}", i + 1), &started, 1).await);
    }
    for r in &runners {
        let polls = Arc::clone(&polls);
        let trigger =
            PollingTrigger::new("files", "ingest", Duration::from_millis(100), move || {
                let n = polls.fetch_add(1, Ordering::Relaxed);
                async move {
                    // Every third poll finds a new file.
                    if n % 3 == 0 {
                        fire(&format!("f{n}.csv"))
                    } else {
                        Ok(TriggerResult::Skip)
                    }
                }
            });
        r.register_trigger(trigger).expect("register trigger");
    }
    let began = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(1_550)).await;
    let elapsed = began.elapsed();
    for r in &runners {
        r.unregister_trigger("files").await;
    }
    let total = polls.load(Ordering::Relaxed);
    let infos: Vec<_> = runners.iter().map(|r| r.triggers()).collect();
    assert!(infos.iter().all(Vec::is_empty), "unregistered");
    // At most one poll per 100 ms slot (three runners polling each would be three times
    // that); a loaded machine may pass slots over, never poll one twice.
    let slots = elapsed.as_millis() as u64 / 100 + 2;
    assert!(
        (5..=slots).contains(&total),
        "{total} polls in {elapsed:?} at 100 ms with three runners"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = started.lock().expect("started").clone();
    let fires = total.div_ceil(3);
    assert!(
        (started.len() as u64).abs_diff(fires) <= 1,
        "{} executions for {total} polls firing every third",
        started.len()
    );
    assert!(started.values().all(|&n| n == 1), "{started:?}");
    for r in runners {
        r.shutdown().await.expect("shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_runners_poll_each_interval_once() {
    let ledger = cloacina_ledger::open("memory://").await.expect("ledger");
    polled_once_per_interval(Arc::clone(&ledger), vec![Arc::clone(&ledger), ledger]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_three_runners_poll_each_interval_once() {
    let Some(url) = cloacina_ledger::testing::postgres_url() else {
        eprintln!("postgres_three_runners_poll_each_interval_once: skipped");
        return;
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tenant = format!("triggers_{}_{nanos}", std::process::id());
    // Each opens the store itself, as separate processes would.
    let mut ledgers = Vec::new();
    for _ in 0..3 {
        ledgers.push(
            cloacina_ledger::open_tenant(&url, &tenant)
                .await
                .expect("ledger"),
        );
    }
    let first = ledgers.remove(0);
    polled_once_per_interval(first, ledgers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_context_fires_wait_for_the_running_one_unless_allowed() {
    for (allow, file_per_poll) in [(false, false), (true, false), (false, true)] {
        let ledger = cloacina_ledger::open("memory://").await.expect("ledger");
        let started = Started::default();
        // Each execution runs 400 ms; the trigger fires every 50 ms for 1 s.
        let r = runner(&ledger, "r", &started, 400).await;
        let n = Arc::new(AtomicU64::new(0));
        let trigger =
            PollingTrigger::new("files", "ingest", Duration::from_millis(50), move || {
                let i = n.fetch_add(1, Ordering::Relaxed);
                async move {
                    if file_per_poll {
                        fire(&format!("f{i}.csv"))
                    } else {
                        fire("a.csv")
                    }
                }
            })
            .allow_concurrent(allow);
        r.register_trigger(trigger).expect("register");
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        let info = r.triggers().pop().expect("info");
        r.unregister_trigger("files").await;
        let started = started.lock().expect("started").clone();
        let runs: u32 = started.values().sum();
        match (allow, file_per_poll) {
            (false, false) => {
                // One at a time: at most 1 s / 400 ms, rounded up, plus one.
                assert!(
                    (1..=4).contains(&runs),
                    "deduplicated: {runs} runs ({info:?})"
                );
                assert!(info.deduplicated >= 1, "{info:?}");
            }
            _ => {
                // More than one at a time (one at a time allows at most 4).
                assert!(runs > 4, "parallel fires: {runs} runs ({info:?})");
                assert_eq!(info.deduplicated, 0, "{info:?}");
            }
        }
        assert_eq!(u64::from(runs), info.fires, "{info:?}");
        r.shutdown().await.expect("shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_panicking_and_hanging_polls_are_counted_and_polling_goes_on() {
    let ledger = cloacina_ledger::open("memory://").await.expect("ledger");
    let started = Started::default();
    let r = runner(&ledger, "r", &started, 1).await;
    let n = Arc::new(AtomicU64::new(0));
    let trigger = PollingTrigger::new("files", "ingest", Duration::from_millis(50), move || {
        let i = n.fetch_add(1, Ordering::Relaxed);
        async move {
            match i % 4 {
                0 => Err(TriggerError::new("the bucket is unreachable")),
                1 => panic!("a bug in the poll"),
                2 => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Ok(TriggerResult::Skip)
                }
                _ => fire(&format!("f{i}.csv")),
            }
        }
    })
    .poll_timeout(Duration::from_millis(60));
    r.register_trigger(trigger).expect("register");
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let info = r.triggers().pop().expect("info");
    assert!(info.errors >= 3, "{info:?}");
    assert!(info.fires >= 1, "polling went on after failures: {info:?}");
    r.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn bad_triggers_are_refused_saying_why() {
    let ledger = cloacina_ledger::open("memory://").await.expect("ledger");
    let r = runner(&ledger, "r", &Started::default(), 1).await;
    let skip = || async { Ok(TriggerResult::Skip) };
    let cases = [
        PollingTrigger::new("", "ingest", Duration::from_secs(1), skip),
        PollingTrigger::new("t", "ingest", Duration::from_millis(1), skip),
        PollingTrigger::new("t", "ingest", Duration::from_secs(1), skip)
            .poll_timeout(Duration::ZERO),
    ];
    for trigger in cases {
        let refused = r.register_trigger(trigger.clone());
        assert!(
            matches!(refused, Err(RunnerError::InvalidTrigger { .. })),
            "{trigger:?}: {refused:?}"
        );
    }
    let unknown = r.register_trigger(PollingTrigger::new(
        "t",
        "no_such_workflow",
        Duration::from_secs(1),
        skip,
    ));
    assert!(
        matches!(unknown, Err(RunnerError::UnknownWorkflow { .. })),
        "{unknown:?}"
    );
    r.register_trigger(PollingTrigger::new(
        "t",
        "ingest",
        Duration::from_secs(1),
        skip,
    ))
    .expect("valid");
    let twice = r.register_trigger(PollingTrigger::new(
        "t",
        "ingest",
        Duration::from_secs(1),
        skip,
    ));
    assert!(matches!(twice, Err(RunnerError::InvalidTrigger { .. })));
    assert_eq!(r.triggers().len(), 1);
    r.shutdown().await.expect("shutdown");
}
