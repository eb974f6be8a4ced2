//! `#[workflow]` / `#[task]` as SPEC.md writes them: the module registers itself, tasks use
//! `?`, retries / trigger rules / timeouts come from the attribute keys.

#![allow(missing_docs)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use cloacina::prelude::*;
use serde_json::{json, Value};

static FLAKY_RUNS: AtomicU32 = AtomicU32::new(0);

#[workflow(name = "etl", description = "demo")]
pub mod etl {
    use super::*;

    #[task(dependencies = [])] // id defaults to the function name
    pub async fn extract(ctx: &mut Context<Value>) -> Result<(), TaskError> {
        ctx.insert("raw", json!([1, 2, 3]))?;
        Ok(())
    }

    #[task(dependencies = ["extract"],
           retry_policy = RetryPolicy::builder().max_attempts(3).initial_delay(Duration::from_millis(1)).build())]
    pub async fn load(ctx: &mut Context<Value>) -> Result<(), TaskError> {
        if FLAKY_RUNS.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(TaskError::failed("connection reset"));
        }
        let n = ctx.get("raw").and_then(Value::as_array).map_or(0, Vec::len);
        ctx.insert("loaded", json!(n))?;
        Ok(())
    }

    #[task(id = "report", dependencies = ["load"],
           trigger_rules = all(task_success("load"), context_value("loaded", greater_than, 2),
                               context_value("loaded", greater_than, -5)),
           timeout = Duration::from_secs(5))]
    pub async fn summarize(ctx: &mut Context<Value>) -> Result<(), TaskError> {
        ctx.insert("report", json!("done"))?;
        Ok(())
    }

    #[task(dependencies = ["load"], trigger_rules = task_failed("load"),
           retry_attempts = 2, retry_backoff = "fixed", retry_delay_ms = 1)]
    pub async fn alert(ctx: &mut Context<Value>) -> Result<(), TaskError> {
        ctx.insert("alerted", json!(true))?;
        Ok(())
    }
}

#[tokio::test]
async fn a_declared_workflow_is_found_by_name_and_runs() {
    assert!(cloacina::registry::declared_workflows().contains(&"etl"));
    let wf = cloacina::registry::declared_workflow("etl")
        .expect("registered at startup")
        .expect("valid");
    assert_eq!(wf.name(), etl::NAME);
    assert_eq!(wf.description(), "demo");
    assert_eq!(
        wf.order().map(|t| t.id()).collect::<Vec<_>>(),
        ["extract", "load", "report", "alert"]
    );
    assert_eq!(
        wf.task("load").expect("load").retry_policy().max_attempts,
        3
    );
    assert_eq!(
        wf.task("report").expect("report").timeout(),
        Some(Duration::from_secs(5))
    );

    let result = wf.run(Context::new()).await;
    assert_eq!(result.status, WorkflowStatus::Completed, "{result:?}");
    let by_id = |id: &str| {
        result
            .task_results
            .iter()
            .find(|r| r.task_id == id)
            .map(|r| (r.state, r.attempts))
    };
    assert_eq!(
        by_id("load"),
        Some((TaskState::Completed, 2)),
        "retried once"
    );
    assert_eq!(by_id("report"), Some((TaskState::Completed, 1)));
    assert_eq!(by_id("alert"), Some((TaskState::Skipped, 0)));
    assert_eq!(result.final_context.get("report"), Some(&json!("done")));
    assert_eq!(result.final_context.get("loaded"), Some(&json!(3)));
}

#[test]
fn the_version_follows_the_code() {
    let a = etl::workflow().expect("valid");
    let b = etl::workflow().expect("valid");
    assert_eq!(a.version(), b.version());
    assert!(etl::load_task.code_fingerprint().is_some());
    assert_ne!(
        etl::load_task.code_fingerprint(),
        etl::extract_task.code_fingerprint()
    );
}

#[test]
fn unknown_workflows_are_none() {
    assert!(cloacina::registry::declared_workflow("nope").is_none());
}

// A trigger-less graph a task invokes (CG-T-02): the doc's ×1.5 graph.
#[computation_graph(graph = { scale(input_value) })]
pub mod scaling {
    pub fn scale(input_value: Option<&f64>) -> f64 {
        input_value.copied().unwrap_or(0.0) * 1.5
    }
}

#[workflow(name = "scoring")]
pub mod scoring {
    use super::*;

    #[task(dependencies = [])]
    pub async fn fetch(ctx: &mut Context<Value>) -> Result<(), TaskError> {
        ctx.insert("input_value", json!(2.0))?;
        Ok(())
    }

    #[task(dependencies = ["fetch"], invokes = computation_graph("scaling"))]
    pub async fn score(ctx: &mut Context<Value>) -> Result<(), TaskError> {
        ctx.insert("pre_work", json!(true))?; // runs before the graph
        Ok(())
    }

    #[task(dependencies = ["score"])]
    pub async fn publish(ctx: &mut Context<Value>) -> Result<(), TaskError> {
        let value = ctx.get("scale").cloned().unwrap_or(Value::Null);
        ctx.insert("output", json!({"published": true, "value": value}))?;
        Ok(())
    }

    #[task(dependencies = [], invokes = "no_such_graph")]
    pub async fn broken(ctx: &mut Context<Value>) -> Result<(), TaskError> {
        let _ = ctx;
        Ok(())
    }
}

#[tokio::test]
async fn a_task_invokes_a_trigger_less_graph_after_its_body() {
    let wf = scoring::workflow().expect("valid");
    let result = wf.run(Context::new()).await;
    assert_eq!(
        result.final_context.get("output"),
        Some(&json!({"published": true, "value": 3.0}))
    );
    assert_eq!(result.final_context.get("pre_work"), Some(&json!(true)));
    let broken = result
        .task_results
        .iter()
        .find(|r| r.task_id == "broken")
        .expect("broken");
    assert_eq!(broken.state, TaskState::Failed);
    let error = broken.error.as_deref().unwrap_or("");
    assert!(
        error.contains("no computation graph `no_such_graph`"),
        "{error}"
    );
    assert_eq!(result.status, WorkflowStatus::Failed);
}

// `#[task]` outside a `#[workflow]` module: the generated `<fn>_task` goes into a builder.
#[task(id = "double", dependencies = ["seed"], retry_attempts = 2, retry_backoff = "linear", retry_delay_ms = 1)]
pub async fn double_it(ctx: &mut Context<Value>) -> Result<(), TaskError> {
    let n = ctx.get("n").and_then(Value::as_i64).unwrap_or(0);
    ctx.insert_or_update("n", json!(n * 2));
    Ok(())
}

#[task]
pub async fn seed(ctx: &mut Context<Value>) -> Result<(), TaskError> {
    ctx.insert("n", json!(21))?;
    Ok(())
}

#[tokio::test]
async fn standalone_tasks_go_into_a_builder() {
    let wf = Workflow::builder("standalone")
        .task(double_it_task)
        .task(seed_task)
        .build()
        .expect("valid");
    assert_eq!(seed_task.id(), "seed", "id defaults to the function name");
    assert_eq!(double_it_task.retry_policy().max_attempts, 2);
    let result = wf.run(Context::new()).await;
    assert_eq!(result.final_context.get("n"), Some(&json!(42)));
}

/// SPEC.md's form end to end: the declared module is found by name by the durable runner,
/// with no registration call, and its graph-invoking task's output is recorded.
#[tokio::test]
async fn the_runner_executes_declared_workflows_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runner = DefaultRunner::new(dir.path().join("store").to_str().expect("utf-8 path"))
        .await
        .expect("runner on the embedded default");
    let result = runner
        .execute("scoring", Context::new())
        .await
        .expect("declared, so found");
    // Its `broken` task invokes a graph that does not exist: that task fails alone.
    assert_eq!(result.status, WorkflowStatus::Failed, "{result:?}");
    let broken = result.task_results.iter().find(|t| t.task_id == "broken");
    assert!(broken
        .and_then(|t| t.error.as_deref())
        .is_some_and(|e| e.contains("no_such_graph")));
    assert_eq!(
        result.final_context.get("output"),
        Some(&json!({"published": true, "value": 3.0}))
    );
    // From the store, as another process would see it.
    let stored = runner.wait(result.execution_id).await.expect("stored");
    assert_eq!(stored.final_context.get("scale"), Some(&json!(3.0)));
    let err = runner
        .execute("no_such_workflow", Context::new())
        .await
        .expect_err("unknown");
    assert!(
        err.to_string().contains("scoring"),
        "lists what is known: {err}"
    );
    runner.shutdown().await.expect("shutdown");
}

#[workflow(name = "deferring")]
pub mod deferring {
    use super::*;

    /// The optional second argument: the attempt's TaskHandle.
    #[task(dependencies = [])]
    pub async fn wait_then_write(
        ctx: &mut Context<Value>,
        handle: &mut TaskHandle,
    ) -> Result<(), TaskError> {
        let mut polls = 0;
        handle
            .defer_until(
                || {
                    polls += 1;
                    let done = polls >= 3;
                    async move { done }
                },
                Duration::from_millis(1),
            )
            .await;
        ctx.insert("polls", json!(polls))?;
        Ok(())
    }
}

#[tokio::test]
async fn a_task_can_take_its_handle_and_defer() {
    let runner = DefaultRunner::new("memory://").await.expect("runner");
    let result = runner
        .execute("deferring", Context::new())
        .await
        .expect("runs");
    assert_eq!(result.status, WorkflowStatus::Completed, "{result:?}");
    assert_eq!(result.final_context.get("polls"), Some(&json!(3)));
}

#[workflow(
    name = "new_year",
    schedule = "0 0 0 1 1 *",
    time_zone = "Europe/Paris"
)]
pub mod new_year {
    use super::*;

    #[task]
    pub async fn greet(ctx: &mut Context<Value>) -> Result<(), TaskError> {
        ctx.insert("greeted", json!(true))?;
        Ok(())
    }
}

#[tokio::test]
async fn a_declared_schedule_is_registered_by_every_runner_at_start() {
    let ledger = cloacina::ledger::open("memory://").await.expect("ledger");
    for id in ["a", "b"] {
        let runner = DefaultRunner::from_ledger(
            std::sync::Arc::clone(&ledger),
            RunnerConfig {
                runner_id: id.into(),
                ..RunnerConfig::default()
            },
        )
        .await
        .expect("runner");
        let schedules = runner.schedules().await.expect("schedules");
        let declared: Vec<_> = schedules
            .iter()
            .map(|s| {
                let s = &s.schedule;
                (
                    s.name.as_str(),
                    s.workflow.as_str(),
                    s.expression.as_str(),
                    s.time_zone.as_str(),
                )
            })
            .collect();
        assert_eq!(
            declared,
            [("new_year", "new_year", "0 0 0 1 1 *", "Europe/Paris")],
            "runner {id}"
        );
        runner.shutdown().await.expect("shutdown");
    }
}
