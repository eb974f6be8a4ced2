//! Workflow throughput and latency through the durable runner.
//!
//! ```text
//! cargo run --release --example wf_bench -- --shape simple|pipeline|parallel \
//!     --iterations N --concurrency C [--url URL] [--durability batched|sync]
//! ```
//!
//! Submits N workflows with at most C in flight (C callers, each `schedule` then `wait`):
//! `simple` is 1 task, `pipeline` 3 in sequence, `parallel` setup, 3 parallel, merge; each
//! task writes one context key. Latency is submit to Completed as the caller sees it.
//! `succeeded` is counted afterwards from the final states recorded in the store. The URL
//! defaults to a fresh sled directory. The last line printed is JSON.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use cloacina::ledger::ExecutionStatus;
use cloacina::workflow::{
    Context, DefaultRunner, FnTask, RunnerConfig, Workflow, WorkflowDurability,
};
use serde_json::json;

struct Args {
    shape: String,
    iterations: usize,
    concurrency: usize,
    url: Option<String>,
    durability: WorkflowDurability,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        shape: "simple".into(),
        iterations: 20_000,
        concurrency: 64,
        url: None,
        durability: WorkflowDurability::Batched,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--shape" => args.shape = value()?,
            "--iterations" => {
                args.iterations = value()?.parse().map_err(|e| format!("--iterations: {e}"))?
            }
            "--concurrency" => {
                args.concurrency = value()?
                    .parse()
                    .map_err(|e| format!("--concurrency: {e}"))?
            }
            "--url" => args.url = Some(value()?),
            "--durability" => {
                args.durability = match value()?.as_str() {
                    "batched" => WorkflowDurability::Batched,
                    "sync" => WorkflowDurability::Sync,
                    other => return Err(format!("--durability: `{other}` is not batched or sync")),
                }
            }
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    if !matches!(args.shape.as_str(), "simple" | "pipeline" | "parallel") {
        return Err(format!(
            "--shape: `{}` is not simple, pipeline or parallel",
            args.shape
        ));
    }
    if args.iterations == 0 || args.concurrency == 0 {
        return Err("--iterations and --concurrency must be at least 1".into());
    }
    Ok(args)
}

fn write_key(id: &'static str, deps: &[&'static str]) -> FnTask {
    FnTask::new(id, deps.to_vec(), move |mut ctx: Context| async move {
        ctx.insert_or_update(id, json!(1));
        Ok(ctx)
    })
}

/// The workflow and its task count.
fn workflow(shape: &str) -> (Workflow, usize) {
    let b = Workflow::builder(shape);
    let (b, tasks) = match shape {
        "pipeline" => (
            b.task(write_key("a", &[]))
                .task(write_key("b", &["a"]))
                .task(write_key("c", &["b"])),
            3,
        ),
        "parallel" => (
            b.task(write_key("setup", &[]))
                .task(write_key("p1", &["setup"]))
                .task(write_key("p2", &["setup"]))
                .task(write_key("p3", &["setup"]))
                .task(write_key("merge", &["p1", "p2", "p3"])),
            5,
        ),
        _ => (b.task(write_key("only", &[])), 1),
    };
    (b.build().expect("bench workflows are valid"), tasks)
}

fn percentile_us(sorted_ns: &[u64], p: f64) -> f64 {
    if sorted_ns.is_empty() {
        return 0.0;
    }
    let i = ((sorted_ns.len() - 1) as f64 * p).round() as usize;
    sorted_ns[i.min(sorted_ns.len() - 1)] as f64 / 1_000.0
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("wf_bench: {e}");
            std::process::exit(2);
        }
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let url = args
        .url
        .clone()
        .unwrap_or_else(|| format!("sled://{}", dir.path().join("wf").display()));
    let config = RunnerConfig {
        concurrency: args.concurrency * 4,
        durability: args.durability,
        ..RunnerConfig::default()
    };
    let runner = DefaultRunner::with_config(&url, config)
        .await
        .unwrap_or_else(|e| panic!("runner on {url}: {e}"));
    let (wf, tasks_per) = workflow(&args.shape);
    let name = wf.name().to_owned();
    runner.register_workflow(wf).expect("register");

    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut callers = Vec::new();
    for _ in 0..args.concurrency {
        let runner = runner.clone();
        let next = Arc::clone(&next);
        let name = name.clone();
        let n = args.iterations;
        callers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut ids = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let t0 = Instant::now();
                let mut input = Context::new();
                input.insert_or_update("i", json!(ids.len()));
                let id = runner.schedule(&name, input).await.expect("schedule");
                runner.wait(id).await.expect("wait");
                lat.push(t0.elapsed().as_nanos() as u64);
                ids.push(id);
            }
            (lat, ids)
        }));
    }
    let mut lat = Vec::with_capacity(args.iterations);
    let mut ids = Vec::with_capacity(args.iterations);
    for c in callers {
        let (l, i) = c.await.expect("caller");
        lat.extend(l);
        ids.extend(i);
    }
    let secs = started.elapsed().as_secs_f64();
    runner.shutdown().await.expect("shutdown");

    // Count successes from what the store recorded.
    let store = runner.ledger().workflow_store().expect("store");
    let mut succeeded = 0usize;
    for id in &ids {
        if let Ok(Some(e)) = store.execution(*id).await {
            if e.status == ExecutionStatus::Completed {
                succeeded += 1;
            }
        }
    }
    lat.sort_unstable();
    let workflows = ids.len();
    let tasks = workflows * tasks_per;
    let durability = match args.durability {
        WorkflowDurability::Batched => "batched",
        WorkflowDurability::Sync => "sync",
    };
    println!(
        "{}",
        json!({
            "shape": args.shape,
            "url": url.split('?').next().unwrap_or(""),
            "durability": durability,
            "concurrency": args.concurrency,
            "workflows": workflows,
            "tasks": tasks,
            "secs": (secs * 1000.0).round() / 1000.0,
            "workflows_per_s": (workflows as f64 / secs).round(),
            "tasks_per_s": (tasks as f64 / secs).round(),
            "succeeded": succeeded,
            "lat_p50_us": percentile_us(&lat, 0.50).round(),
            "lat_p99_us": percentile_us(&lat, 0.99).round(),
        })
    );
    if succeeded != workflows {
        eprintln!(
            "wf_bench: {} of {workflows} workflows did not end Completed",
            workflows - succeeded
        );
        std::process::exit(1);
    }
}
