//! Executor pools and per-key limits on a real runner (memory store): tasks run in the pool
//! their name is routed to, within its limit, without holding back other pools; executions
//! sharing a key value run at most `max` at once, in arrival order, and can be cancelled
//! while they wait.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloacina_ledger::{ExecutionRecord, WorkflowRecord};
use cloacina_workflow_layer::{
    Context, DefaultRunner, ExecutionEventKind, FnTask, RunnerError, Workflow, WorkflowStatus,
};
use serde_json::json;

/// Counts attempts running at once and remembers the most seen.
#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    max: AtomicUsize,
}

impl Gauge {
    fn enter(&self) {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
    }
    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
    fn max(&self) -> usize {
        self.max.load(Ordering::SeqCst)
    }
}

/// Held tasks wait until the test lets them go.
#[derive(Default)]
struct Hold(AtomicBool);

impl Hold {
    async fn until_released(&self) {
        while !self.0.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    fn release(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Waits (up to 10 s) until `ready` holds.
async fn eventually(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !ready() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A task that holds `gauge` until `hold` is released.
fn held(id: String, gauge: &Arc<Gauge>, hold: &Arc<Hold>) -> FnTask {
    let (gauge, hold) = (Arc::clone(gauge), Arc::clone(hold));
    FnTask::new(id, [] as [&str; 0], move |ctx: Context| {
        let (gauge, hold) = (Arc::clone(&gauge), Arc::clone(&hold));
        async move {
            gauge.enter();
            hold.until_released().await;
            gauge.leave();
            Ok(ctx)
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_run_in_their_pool_within_its_limit_and_other_pools_go_on() {
    let runner = DefaultRunner::builder()
        .url("memory://")
        .concurrency(8)
        .pool("slow", 2, ["*::slow_*"])
        .build()
        .await
        .expect("runner");
    let (slow, fast) = (Arc::new(Gauge::default()), Arc::new(Gauge::default()));
    let hold = Arc::new(Hold::default());
    let mut workflow = Workflow::builder("mixed");
    for i in 0..6 {
        workflow = workflow.task(held(format!("slow_{i}"), &slow, &hold));
    }
    for i in 0..4 {
        workflow = workflow.task(held(format!("fast_{i}"), &fast, &hold));
    }
    runner
        .register_workflow(workflow.build().expect("valid"))
        .expect("register");
    assert_eq!(runner.pool_for("mixed", "slow_3"), "slow");
    assert_eq!(runner.pool_for("mixed", "fast_0"), "default");

    let id = runner
        .schedule("mixed", Context::new())
        .await
        .expect("schedule");
    let usage = || -> HashMap<String, (usize, usize)> {
        runner
            .pools()
            .into_iter()
            .map(|p| (p.name, (p.running, p.concurrency)))
            .collect()
    };
    // Every default-pool task runs while four slow ones wait for the slow pool.
    eventually("4 fast tasks running", || {
        fast.now.load(Ordering::SeqCst) == 4
    })
    .await;
    eventually("2 slow tasks running", || {
        slow.now.load(Ordering::SeqCst) == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        slow.now.load(Ordering::SeqCst),
        2,
        "no third slow task starts"
    );
    let during = usage();
    assert_eq!(during["slow"], (2, 2), "{during:?}");
    assert_eq!(during["default"], (4, 8), "{during:?}");
    hold.release();
    let result = runner.wait(id).await.expect("wait");
    assert_eq!(result.status, WorkflowStatus::Completed, "{result:?}");
    assert_eq!(slow.max(), 2, "the slow pool's limit held to the end");
    assert!(usage().values().all(|(running, _)| *running == 0));
}

/// What the `orders` workflow's executions did: a gauge per customer, the `n` of each
/// execution that started (in order), and the hold every task waits on.
#[derive(Default)]
struct Orders {
    gauges: Arc<Mutex<HashMap<String, Arc<Gauge>>>>,
    started: Arc<Mutex<Vec<i64>>>,
    hold: Arc<Hold>,
}

impl Orders {
    /// A workflow whose one task notes the execution's `n` and holds its customer's gauge
    /// until the hold is released.
    fn workflow(&self) -> Workflow {
        let (gauges, started, hold) = (
            Arc::clone(&self.gauges),
            Arc::clone(&self.started),
            Arc::clone(&self.hold),
        );
        let task = FnTask::new("handle", [] as [&str; 0], move |ctx: Context| {
            let customer = ctx
                .get("customer")
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_owned();
            let gauge = Arc::clone(
                gauges
                    .lock()
                    .expect("gauges")
                    .entry(customer.clone())
                    .or_default(),
            );
            started
                .lock()
                .expect("started")
                .push(ctx.get("n").and_then(|v| v.as_i64()).unwrap_or(-1));
            let hold = Arc::clone(&hold);
            async move {
                gauge.enter();
                hold.until_released().await;
                gauge.leave();
                Ok(ctx)
            }
        });
        Workflow::builder("orders")
            .task(task)
            .build()
            .expect("valid")
    }

    fn started(&self) -> Vec<i64> {
        self.started.lock().expect("started").clone()
    }

    fn max_running(&self, customer: &str) -> usize {
        self.gauges.lock().expect("gauges")[customer].max()
    }
}

/// A memory-store runner with one `orders` execution per customer at a time.
async fn one_per_customer(orders: &Orders) -> DefaultRunner {
    let runner = DefaultRunner::builder()
        .url("memory://")
        .limit_per_key("orders", "customer", 1)
        .build()
        .await
        .expect("runner");
    runner
        .register_workflow(orders.workflow())
        .expect("register");
    runner
}

fn order(customer: &str, n: i64) -> Context {
    let mut ctx = Context::new();
    ctx.insert("customer", json!(customer)).expect("new key");
    ctx.insert("n", json!(n)).expect("new key");
    ctx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executions_sharing_a_key_value_run_one_at_a_time_in_arrival_order() {
    let orders = Orders::default();
    let runner = one_per_customer(&orders).await;
    let mut events = runner.subscribe();
    let mut ids = Vec::new();
    for n in 1..=3 {
        ids.push(
            runner
                .schedule("orders", order("acme", n))
                .await
                .expect("schedule"),
        );
    }
    ids.push(
        runner
            .schedule("orders", order("globex", 4))
            .await
            .expect("schedule"),
    );
    eventually("acme 1 running 2 waiting, globex running", || {
        let usage = runner.key_usage();
        let of = |v: &str| {
            usage
                .iter()
                .find(|u| u.value == v)
                .map(|u| (u.running, u.waiting))
        };
        of("acme") == Some((1, 2)) && of("globex") == Some((1, 0)) && orders.started().len() == 2
    })
    .await;
    assert_eq!(runner.key_usage()[0].key, "customer");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(orders.started().len(), 2, "only acme 1 and globex run");
    orders.hold.release();
    for id in &ids {
        let result = runner.wait(*id).await.expect("wait");
        assert_eq!(result.status, WorkflowStatus::Completed, "{result:?}");
    }
    assert_eq!(
        orders.max_running("acme"),
        1,
        "one `acme` execution at a time"
    );
    let acme: Vec<i64> = orders.started().into_iter().filter(|n| *n <= 3).collect();
    assert_eq!(acme, [1, 2, 3], "first come, first served");
    assert!(
        runner.key_usage().is_empty(),
        "values are forgotten once idle"
    );

    // Each waiting execution says why (the drivers emit it as they start, in any order).
    let mut waited = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let ExecutionEventKind::WaitingForKey { key, value } = event.kind {
            waited.push((event.execution_id, key, value));
        }
    }
    waited.sort();
    assert_eq!(
        waited,
        [
            (ids[1], "customer".to_owned(), "acme".to_owned()),
            (ids[2], "customer".to_owned(), "acme".to_owned())
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execution_waiting_for_its_key_can_be_cancelled_and_never_runs() {
    let orders = Orders::default();
    let runner = one_per_customer(&orders).await;
    let first = runner
        .schedule("orders", order("blocked", 1))
        .await
        .expect("schedule");
    let second = runner
        .schedule("orders", order("blocked", 2))
        .await
        .expect("schedule");
    eventually("the second waits", || {
        runner.key_usage().first().map(|u| u.waiting) == Some(1)
    })
    .await;
    runner.cancel(second).expect("cancel");
    let cancelled = tokio::time::timeout(Duration::from_secs(5), runner.wait(second))
        .await
        .expect("a waiting execution ends at once when cancelled")
        .expect("wait");
    assert_eq!(cancelled.status, WorkflowStatus::Cancelled);
    orders.hold.release();
    let done = runner.wait(first).await.expect("wait");
    assert_eq!(done.status, WorkflowStatus::Completed);
    assert_eq!(orders.started(), [1], "the cancelled one never ran");
    assert!(runner.key_usage().is_empty());
}

#[tokio::test]
async fn bad_pools_and_key_limits_are_refused_at_build() {
    let err = DefaultRunner::builder()
        .url("memory://")
        .pool("gpu", 1, ["train_[x"])
        .build()
        .await
        .expect_err("an invalid pattern");
    assert!(
        matches!(&err, RunnerError::InvalidConfig { reason } if reason.contains("`train_[x`")),
        "{err}"
    );
    let err = DefaultRunner::builder()
        .url("memory://")
        .limit_per_key("orders", "customer", 0)
        .build()
        .await
        .expect_err("a limit of 0");
    assert!(err.to_string().contains("at least 1"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumed_executions_keep_to_their_key_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sled://{}", dir.path().join("wf").display());
    let orders = Orders::default();
    let workflow = orders.workflow();
    // What a crash leaves: two `acme` executions started, nothing else recorded.
    let ids = {
        let ledger = cloacina_ledger::open(&url).await.expect("open");
        let store = ledger.workflow_store().expect("store");
        let first = store.reserve_execution_ids(2).await.expect("ids");
        let now = cloacina_ledger::now_unix_us();
        let records: Vec<WorkflowRecord> = (0..2)
            .map(|i| {
                WorkflowRecord::Started(ExecutionRecord {
                    id: first + i,
                    workflow: "orders".into(),
                    version: workflow.version().into(),
                    input: serde_json::to_vec(&json!({"customer": "acme", "n": i + 1}))
                        .expect("json"),
                    created_at_unix_us: now,
                    owner: "local".into(),
                    lease_until_unix_us: now + 60_000_000,
                })
            })
            .collect();
        store
            .write(&records, cloacina_ledger::Commit::Durable)
            .await
            .expect("write");
        [first, first + 1]
    };
    let runner = DefaultRunner::builder()
        .url(url)
        .limit_per_key("orders", "customer", 1)
        .build()
        .await
        .expect("runner");
    runner.register_workflow(workflow).expect("register");
    eventually("one resumed execution runs", || orders.started().len() == 1).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(orders.started().len(), 1, "the other waits");
    let usage = runner.key_usage();
    assert_eq!((usage[0].running, usage[0].waiting), (1, 1), "{usage:?}");
    orders.hold.release();
    for id in ids {
        let result = runner.wait(id).await.expect("wait");
        assert_eq!(result.status, WorkflowStatus::Completed, "{result:?}");
    }
    assert_eq!(orders.max_running("acme"), 1);
}
