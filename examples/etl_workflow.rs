//! An ETL workflow on the durable runner, on the embedded default store (sled).
//!
//! ```text
//! cargo run --example etl_workflow [-- STORE_PATH]
//! ```
//!
//! `extract` produces order rows; `transform` invokes the trigger-less graph `pricing`
//! (it totals the rows); `load` fails once with a transient error and is retried; `cleanup`
//! runs only if `load` failed for good (its trigger rule), so on a normal run it is skipped;
//! `report` needs `load` to have succeeded. Every task's output is recorded before the next
//! starts: kill the process half way and run it again on the same path, and the execution
//! resumes where it stopped.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use cloacina::prelude::*;
use serde_json::{json, Value};

static LOAD_ATTEMPTS: AtomicU32 = AtomicU32::new(0);

/// The graph `transform` invokes: it reads context key `orders` and writes its terminal
/// node's output under `total`.
#[computation_graph(graph = { total(orders) })]
pub mod pricing {
    /// Sum of the order amounts.
    pub fn total(orders: Option<&Vec<f64>>) -> f64 {
        orders.map_or(0.0, |o| o.iter().sum())
    }
}

/// The workflow: registered at startup under its name.
#[workflow(name = "etl", description = "extract orders, price them, load, report")]
pub mod etl {
    use super::*;

    /// Reads the orders.
    #[task(dependencies = [])]
    pub async fn extract(ctx: &mut Context<Value>) -> Result<(), TaskError> {
        ctx.insert("orders", json!([19.5, 5.25, 100.0]))?;
        Ok(())
    }

    /// Prices them through the `pricing` graph.
    #[task(dependencies = ["extract"], invokes = "pricing")]
    pub async fn transform(ctx: &mut Context<Value>) -> Result<(), TaskError> {
        ctx.insert("currency", json!("EUR"))?;
        Ok(())
    }

    /// Loads them; the first attempt fails.
    #[task(dependencies = ["transform"],
           retry_attempts = 3, retry_backoff = "exponential", retry_delay_ms = 50)]
    pub async fn load(ctx: &mut Context<Value>) -> Result<(), TaskError> {
        if LOAD_ATTEMPTS.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(TaskError::failed("connection reset by the warehouse"));
        }
        let total = ctx.get("total").cloned().unwrap_or(Value::Null);
        let rows = ctx
            .get("orders")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        ctx.insert("loaded", json!({"rows": rows, "total": total}))?;
        Ok(())
    }

    /// Only if `load` failed for good.
    #[task(dependencies = ["load"], trigger_rules = task_failed("load"))]
    pub async fn cleanup(ctx: &mut Context<Value>) -> Result<(), TaskError> {
        ctx.insert("cleaned_up", json!(true))?;
        Ok(())
    }

    /// Only if `load` succeeded.
    #[task(dependencies = ["load"], trigger_rules = task_success("load"),
           timeout = Duration::from_secs(5))]
    pub async fn report(ctx: &mut Context<Value>) -> Result<(), TaskError> {
        let total = ctx.get("total").and_then(Value::as_f64).unwrap_or(0.0);
        ctx.insert(
            "report",
            json!(format!("loaded orders worth {total:.2} EUR")),
        )?;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let temp = tempfile::tempdir()?;
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| temp.path().join("etl-store").display().to_string());
    // A plain path is the embedded default: a sled store in that directory.
    let runner = DefaultRunner::new(&path).await?;
    let mut input = Context::new();
    input.insert("batch", json!("2026-11-30"))?;
    let result = runner.execute("etl", input).await?;

    println!(
        "execution {} of `{}`: {:?} in {:?}",
        result.execution_id, result.workflow_name, result.status, result.duration
    );
    for task in &result.task_results {
        println!(
            "  {:<10} {:?} (attempts: {}){}",
            task.task_id,
            task.state,
            task.attempts,
            task.error
                .as_deref()
                .map(|e| format!(", last error: {e}"))
                .unwrap_or_default()
        );
    }
    println!("final context: {}", result.final_context.to_json()?);
    runner.shutdown().await?;
    Ok(())
}
