//! Several runners on one store: work submitted through the store reaches whichever runner
//! claims it (each execution runs once, the load spreads), a runner that lost its claim
//! stops the task and records nothing, an execution taken over too often is abandoned, and
//! on PostgreSQL an idle runner in another "process" (its own connection pool) hears new
//! work by NOTIFY long before its sweep would find it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloacina_ledger::{
    Commit, ExecutionRecord, ExecutionStatus, Ledger, WorkflowRecord, WorkflowStore,
};
use cloacina_workflow_layer::{
    Context, DefaultRunner, FnTask, RunnerConfig, Workflow, WorkflowStatus,
};
use serde_json::json;

/// `(execution job, runner)` for every run of the task.
type Runs = Arc<Mutex<Vec<(u64, String)>>>;

/// Workflow `job`: one task that sleeps `ms` and notes which runner ran it.
fn job(runs: &Runs, runner: &str, ms: u64) -> Workflow {
    let (runs, runner) = (Arc::clone(runs), runner.to_owned());
    let task = FnTask::new("work", [] as [&str; 0], move |ctx: Context| {
        let (runs, runner) = (Arc::clone(&runs), runner.clone());
        async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            let n = ctx.get("n").and_then(|v| v.as_u64()).unwrap_or(u64::MAX);
            runs.lock().expect("runs").push((n, runner));
            Ok(ctx)
        }
    });
    Workflow::builder("job").task(task).build().expect("valid")
}

fn config(id: &str) -> RunnerConfig {
    RunnerConfig {
        runner_id: id.into(),
        concurrency: 8,
        ..RunnerConfig::default()
    }
}

async fn worker(ledger: &Arc<dyn Ledger>, config: RunnerConfig, runs: &Runs) -> DefaultRunner {
    let id = config.runner_id.clone();
    let runner = DefaultRunner::from_ledger(Arc::clone(ledger), config)
        .await
        .expect("runner");
    runner
        .register_workflow(job(runs, &id, 5))
        .expect("register");
    runner
}

fn input(n: u64) -> Context {
    let mut ctx = Context::new();
    ctx.insert("n", json!(n)).expect("new key");
    ctx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submitted_work_runs_once_on_whichever_runner_claims_it() {
    let ledger = cloacina_ledger::open("memory://").await.expect("ledger");
    let runs = Runs::default();
    let a = worker(&ledger, config("a"), &runs).await;
    let b = worker(&ledger, config("b"), &runs).await;
    let client = DefaultRunner::from_ledger(
        Arc::clone(&ledger),
        RunnerConfig {
            takes_work: false,
            ..config("client")
        },
    )
    .await
    .expect("client");
    client
        .register_workflow(job(&runs, "client", 5))
        .expect("register");

    const N: u64 = 200;
    let mut ids = Vec::new();
    for n in 0..N {
        ids.push(client.submit("job", input(n)).await.expect("submit"));
    }
    for id in &ids {
        let done = tokio::time::timeout(Duration::from_secs(30), client.wait(*id))
            .await
            .expect("every submitted execution ends within 30 s")
            .expect("wait");
        assert_eq!(done.status, WorkflowStatus::Completed);
    }
    let runs = runs.lock().expect("runs").clone();
    let mut per_job: HashMap<u64, u32> = HashMap::new();
    let mut per_runner: HashMap<String, u32> = HashMap::new();
    for (n, runner) in &runs {
        *per_job.entry(*n).or_default() += 1;
        *per_runner.entry(runner.clone()).or_default() += 1;
    }
    assert_eq!(per_job.len() as u64, N, "every job ran");
    assert!(
        per_job.values().all(|&c| c == 1),
        "no job ran twice without a failure"
    );
    assert_eq!(per_runner.get("client"), None, "the client takes no work");
    assert!(
        per_runner.get("a").copied().unwrap_or(0) > 0
            && per_runner.get("b").copied().unwrap_or(0) > 0,
        "both runners took work: {per_runner:?}"
    );
    let (sa, sb) = (a.claim_stats(), b.claim_stats());
    assert_eq!(sa.claimed + sb.claimed, N, "{sa:?} {sb:?}");
    assert_eq!(sa.takeovers + sb.takeovers, 0);
    for r in [a, b, client] {
        r.shutdown().await.expect("shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_that_lost_its_claim_stops_the_task_and_records_nothing() {
    let ledger = cloacina_ledger::open("memory://").await.expect("ledger");
    let store = Arc::clone(&ledger).workflow_store().expect("store");
    let runs = Runs::default();
    let runner = DefaultRunner::from_ledger(
        Arc::clone(&ledger),
        RunnerConfig {
            lease: Duration::from_millis(300),
            ..config("slow")
        },
    )
    .await
    .expect("runner");
    runner
        .register_workflow(job(&runs, "slow", 2_000))
        .expect("register");
    let id = runner.schedule("job", input(7)).await.expect("schedule");
    tokio::time::sleep(Duration::from_millis(250)).await;
    // Another runner takes it over, as if this one's lease had expired (a stalled process).
    let far = cloacina_ledger::now_unix_us() + 3_600_000_000;
    let taken = store
        .claim_expired("thief", far, far + 3_600_000_000, 10, &["job".to_owned()])
        .await
        .expect("take over");
    assert_eq!(
        taken.iter().map(|e| e.execution.id).collect::<Vec<_>>(),
        [id]
    );

    // The heartbeat (every 100 ms) finds it lost and stops the task.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while runner.claim_stats().lost == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lost claim was not noticed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The task would have ended 2 s after it started: it was stopped, and nothing of the
    // execution was recorded by the runner that lost it.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert!(
        runs.lock().expect("runs").is_empty(),
        "the task was stopped"
    );
    let stored = store.execution(id).await.expect("read").expect("stored");
    assert_eq!(stored.execution.owner, "thief");
    assert!(
        stored.tasks.is_empty() && stored.end.is_none(),
        "{stored:?}"
    );
    assert_eq!(runner.claim_stats().lost, 1);
    runner.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execution_taken_over_too_often_is_abandoned() {
    let ledger = cloacina_ledger::open("memory://").await.expect("ledger");
    let store = Arc::clone(&ledger).workflow_store().expect("store");
    let runs = Runs::default();
    // An execution whose runners died three times (each lease expired and was taken).
    let id = store.reserve_execution_ids(1).await.expect("id");
    let wf = job(&runs, "x", 1);
    let record = ExecutionRecord {
        id,
        workflow: "job".into(),
        version: wf.version().to_owned(),
        input: serde_json::to_vec(&json!({"n": 1})).expect("json"),
        created_at_unix_us: 1,
        owner: "dead-0".into(),
        lease_until_unix_us: 1,
    };
    store
        .write(&[WorkflowRecord::Started(record)], Commit::Durable)
        .await
        .expect("start");
    for i in 1..=3 {
        let taken = take(&*store, &format!("dead-{i}")).await;
        assert_eq!(taken, [(id, i)]);
    }
    let runner = DefaultRunner::from_ledger(
        Arc::clone(&ledger),
        RunnerConfig {
            max_takeovers: 3,
            sweep_interval: Duration::from_millis(50),
            ..config("last")
        },
    )
    .await
    .expect("runner");
    runner
        .register_workflow(job(&runs, "last", 1))
        .expect("register");
    let ended = tokio::time::timeout(Duration::from_secs(10), runner.wait(id))
        .await
        .expect("abandoned within 10 s")
        .expect("wait");
    assert_eq!(ended.status, WorkflowStatus::Failed);
    let error = ended.error.unwrap_or_default();
    assert!(
        error.starts_with("ABANDONED:") && error.contains("taken over 4 times"),
        "{error}"
    );
    assert!(
        runs.lock().expect("runs").is_empty(),
        "it did not run again"
    );
    assert_eq!(runner.claim_stats().abandoned, 1);
    let stored = store.execution(id).await.expect("read").expect("stored");
    assert_eq!(
        (stored.status, stored.takeovers),
        (ExecutionStatus::Failed, 4)
    );
    runner.shutdown().await.expect("shutdown");
}

/// Takes over every expired execution as `owner` with a lease that has expired already.
async fn take(store: &dyn WorkflowStore, owner: &str) -> Vec<(u64, u32)> {
    store
        .claim_expired(
            owner,
            cloacina_ledger::now_unix_us(),
            2,
            10,
            &["job".to_owned()],
        )
        .await
        .expect("claim")
        .iter()
        .map(|e| (e.execution.id, e.takeovers))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_an_idle_runner_hears_new_work_by_notify() {
    let Some(url) = cloacina_ledger::testing::postgres_url() else {
        eprintln!("postgres_an_idle_runner_hears_new_work_by_notify: skipped");
        return;
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tenant = format!("cluster_{}_{nanos}", std::process::id());
    let runs = Runs::default();
    // Each opens the store itself (its own pool), as another process would.
    let worker_ledger = cloacina_ledger::open_tenant(&url, &tenant)
        .await
        .expect("worker ledger");
    let idle = worker(
        &worker_ledger,
        RunnerConfig {
            // Its sweep never comes during the test: only NOTIFY can wake it.
            sweep_interval: Duration::from_secs(600),
            ..config("idle")
        },
        &runs,
    )
    .await;
    // Let the first sweep (at start) pass and LISTEN begin.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let client = DefaultRunner::builder()
        .url(url.clone())
        .tenant(tenant.clone())
        .runner_id("client")
        .takes_work(false)
        .build()
        .await
        .expect("client");
    client
        .register_workflow(job(&runs, "client", 5))
        .expect("register");
    for n in 0..20 {
        let id = client.submit("job", input(n)).await.expect("submit");
        let done = tokio::time::timeout(Duration::from_secs(10), client.wait(id))
            .await
            .expect("the idle runner heard of the work by NOTIFY")
            .expect("wait");
        assert_eq!(done.status, WorkflowStatus::Completed);
    }
    let runs = runs.lock().expect("runs").clone();
    assert_eq!(runs.len(), 20);
    assert!(runs.iter().all(|(_, r)| r == "idle"), "{runs:?}");
    assert!(idle.claim_stats().claimed >= 20);
    client.shutdown().await.expect("shutdown");
    idle.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_refused_by_the_fence_stop_the_execution_before_its_heartbeat_notices() {
    let ledger = cloacina_ledger::open("memory://").await.expect("ledger");
    let store = Arc::clone(&ledger).workflow_store().expect("store");
    let runs = Runs::default();
    // A 30 s lease: the heartbeat (every 10 s) does not look during this test.
    let runner = worker(&ledger, config("stalled"), &runs).await;
    runner
        .register_workflow(job(&runs, "stalled", 1))
        .expect("same workflow");
    let slow = Workflow::builder("slow")
        .task(FnTask::new(
            "first",
            [] as [&str; 0],
            |ctx: Context| async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                Ok(ctx)
            },
        ))
        .task(FnTask::new(
            "second",
            ["first"],
            |ctx: Context| async move { Ok(ctx) },
        ))
        .build()
        .expect("valid");
    runner.register_workflow(slow).expect("register");
    let id = runner.schedule("slow", input(1)).await.expect("schedule");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let far = cloacina_ledger::now_unix_us() + 3_600_000_000;
    store
        .claim_expired("thief", far, far + 3_600_000_000, 10, &["slow".to_owned()])
        .await
        .expect("take over");
    // `first` ends at 300 ms; its record is refused, and the execution stops here.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while runner.claim_stats().lost == 0 {
        assert!(tokio::time::Instant::now() < deadline, "never stopped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stored = store.execution(id).await.expect("read").expect("stored");
    assert_eq!(stored.execution.owner, "thief");
    assert!(
        stored.tasks.is_empty() && stored.end.is_none(),
        "{stored:?}"
    );
    // Its waiter follows the execution to its new holder instead of hearing of an end.
    let waited = tokio::time::timeout(Duration::from_millis(500), runner.wait(id)).await;
    assert!(
        waited.is_err(),
        "wait returned {waited:?} for an execution it no longer holds"
    );
    assert_eq!(runner.claim_stats().lost, 1);
    runner.shutdown().await.expect("shutdown");
}
