//! The workflow authoring surface through the facade: a hand-written `Task` using `?` on
//! context operations and on a graph invocation, `FnTask`, and `Workflow::builder`.

use std::sync::Arc;

use cloacina::prelude::*;
use cloacina::workflow::{InvokeError, TaskFuture};
use serde_json::{json, Value};

/// Sums `prices` with a trigger-less graph and records the total.
struct Price {
    graph: Arc<CompiledGraph>,
    deps: Vec<String>,
}

impl Task for Price {
    fn id(&self) -> &str {
        "price"
    }

    fn dependencies(&self) -> &[String] {
        &self.deps
    }

    fn execute<'a>(&'a self, ctx: &'a mut Context<Value>) -> TaskFuture<'a> {
        Box::pin(async move {
            invoke_graph(&self.graph, ctx).await?;
            let total = ctx.get("total").cloned().unwrap_or(Value::Null);
            ctx.insert("priced", total)?;
            Ok(())
        })
    }

    fn code_fingerprint(&self) -> Option<&str> {
        Some("price-v1")
    }
}

fn total(prices: Option<&Vec<f64>>) -> f64 {
    prices.map_or(0.0, |p| p.iter().sum())
}

fn price() -> Price {
    let graph = GraphBuilder::new("sum")
        .node("total", (source::<Vec<f64>>("prices"),), total)
        .build()
        .expect("graph");
    Price {
        graph: Arc::new(graph),
        deps: vec!["fetch".into()],
    }
}

#[tokio::test]
async fn a_task_uses_question_mark_on_context_and_graph_operations() {
    let task = price();
    let mut ctx = Context::new();
    ctx.insert("prices", json!([1.5, 2.5])).expect("new key");
    task.execute(&mut ctx).await.expect("runs");
    assert_eq!(ctx.get("priced"), Some(&json!(4.0)));

    // Running it again: `insert("priced")` meets the key and the error comes through `?`.
    let err = task.execute(&mut ctx).await.expect_err("key exists");
    assert!(
        matches!(err, TaskError::Context(ContextError::KeyExists(ref k)) if k == "priced"),
        "{err}"
    );

    // A context value the graph cannot read: the graph error comes through `?`.
    let mut bad = Context::new();
    bad.insert("prices", json!("not a list")).expect("new key");
    let err = task.execute(&mut bad).await.expect_err("bad input");
    assert!(
        matches!(err, TaskError::Graph(InvokeError::Input { ref key, .. }) if key == "prices"),
        "{err}"
    );
}

#[tokio::test]
async fn workflows_mix_hand_written_and_closure_tasks() {
    let fetch = FnTask::new("fetch", [] as [&str; 0], |mut ctx: Context| async move {
        ctx.insert("prices", json!([1.0, 2.0]))?;
        Ok(ctx)
    });
    let wf = Workflow::builder("pricing")
        .task(price())
        .task(fetch)
        .build()
        .expect("valid");
    assert_eq!(
        wf.order().map(|t| t.id()).collect::<Vec<_>>(),
        ["fetch", "price"]
    );
    assert_eq!(wf.dependents("fetch"), ["price"]);

    // Run in order by hand (the runner will do this, merging dependency outputs).
    let mut ctx = Context::new();
    for task in wf.order() {
        task.execute(&mut ctx).await.expect("task");
    }
    assert_eq!(ctx.get("priced"), Some(&json!(3.0)));

    let err = Workflow::builder("pricing")
        .task(price())
        .build()
        .expect_err("fetch is missing");
    assert_eq!(
        err,
        WorkflowError::UnknownDependency {
            workflow: "pricing".into(),
            task: "price".into(),
            dependency: "fetch".into(),
        }
    );
}
