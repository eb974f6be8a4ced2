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
//!
//! ```text
//! cargo run --release --example wf_bench -- --runners 1,2,3 --url postgres://... \
//!     [--shape S] [--iterations N] [--concurrency C]
//! ```
//!
//! Several runners on one PostgreSQL: for each K listed, K runner processes (this binary,
//! `--worker`) share a fresh schema, and a client in this process submits N workflows
//! through the store (`DefaultRunner::submit`: unclaimed, announced by NOTIFY). Each
//! runner claims while it drives fewer than C executions. The clock runs from the first
//! submit until the store holds no unfinished execution (`unfinished_executions`, polled
//! every 50 ms while more than 500 are left, then every 2 ms); each execution's end is then
//! read and checked. Every task notes its run; `completed_twice` counts
//! tasks that ran to completion more than once (across all runners), `claims`,
//! `empty_claims` (claim statements that found nothing: idle sweeps, or rows other runners
//! held, `SKIP LOCKED`), `takeovers` and `lost` sum the runners' `claim_stats`. One JSON line
//! per K, then one with the throughput ratios to K = 1.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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
    /// Runner processes to measure with, one run each (several-runner mode).
    runners: Vec<usize>,
    /// Set in a runner process: its schema and name.
    worker: Option<(String, String)>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        shape: "simple".into(),
        iterations: 20_000,
        concurrency: 64,
        url: None,
        durability: WorkflowDurability::Batched,
        runners: Vec::new(),
        worker: None,
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
            "--runners" => {
                args.runners = value()?
                    .split(',')
                    .map(|k| k.trim().parse::<usize>())
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("--runners: {e}"))?;
                if args.runners.contains(&0) {
                    return Err("--runners: each K must be at least 1".into());
                }
            }
            "--worker" => {
                let schema = value()?;
                let name = it.next().ok_or("--worker needs a schema and a name")?;
                args.worker = Some((schema, name));
            }
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
    let on_postgres = args
        .url
        .as_deref()
        .is_some_and(|u| u.starts_with("postgres://") || u.starts_with("postgresql://"));
    if (!args.runners.is_empty() || args.worker.is_some()) && !on_postgres {
        return Err(
            "--runners needs --url postgres://...: runner processes share a database".into(),
        );
    }
    Ok(args)
}

/// In a runner process: every task run that completed, as (input `i`, task).
static RUNS: Mutex<Vec<(u64, &'static str)>> = Mutex::new(Vec::new());
static NOTE_RUNS: AtomicBool = AtomicBool::new(false);

fn write_key(id: &'static str, deps: &[&'static str]) -> FnTask {
    FnTask::new(id, deps.to_vec(), move |mut ctx: Context| async move {
        ctx.insert_or_update(id, json!(1));
        if NOTE_RUNS.load(Ordering::Relaxed) {
            let i = ctx.get("i").and_then(|v| v.as_u64()).unwrap_or(u64::MAX);
            RUNS.lock().unwrap_or_else(|p| p.into_inner()).push((i, id));
        }
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
    if let Some((schema, name)) = args.worker.clone() {
        worker(&args, &schema, &name).await;
        return;
    }
    if !args.runners.is_empty() {
        several_runners(&args).await;
        return;
    }
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

/// A runner process: takes work from the store until its stdin closes, then prints its
/// task runs and claim statistics (one JSON line) and exits.
async fn worker(args: &Args, schema: &str, name: &str) {
    NOTE_RUNS.store(true, Ordering::Relaxed);
    let url = args.url.clone().unwrap_or_default();
    let runner = DefaultRunner::builder()
        .url(url)
        .tenant(schema)
        .runner_id(name)
        .concurrency(args.concurrency)
        .durability(args.durability)
        .build()
        .await
        .unwrap_or_else(|e| panic!("runner {name}: {e}"));
    let (wf, _) = workflow(&args.shape);
    runner.register_workflow(wf).expect("register");
    println!("ready");
    // Until the parent closes stdin.
    tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin()
            .read_line(&mut sink)
            .map(|n| n > 0)
            .unwrap_or(false)
        {}
    })
    .await
    .expect("stdin");
    runner.shutdown().await.expect("shutdown");
    let stats = runner.claim_stats();
    let runs: Vec<(u64, &str)> = RUNS.lock().unwrap_or_else(|p| p.into_inner()).clone();
    println!(
        "{}",
        json!({
            "runner": name,
            "runs": runs,
            "claims": stats.claim_queries,
            "claimed": stats.claimed,
            "empty_claims": stats.empty_claims,
            "takeovers": stats.takeovers,
            "lost": stats.lost,
        })
    );
}

/// What one K measured.
struct Measured {
    workflows_per_s: f64,
    tasks_per_s: f64,
}

async fn several_runners(args: &Args) {
    let mut measured: Vec<(usize, Measured)> = Vec::new();
    let mut failed = false;
    for &k in &args.runners {
        let (m, ok) = run_with(args, k).await;
        failed |= !ok;
        measured.push((k, m));
    }
    if let Some((_, base)) = measured.iter().find(|(k, _)| *k == 1) {
        let ratios: HashMap<String, f64> = measured
            .iter()
            .map(|(k, m)| {
                (
                    format!("k{k}_vs_k1"),
                    (m.workflows_per_s / base.workflows_per_s * 1000.0).round() / 1000.0,
                )
            })
            .collect();
        println!("{}", json!({ "shape": args.shape, "ratios": ratios }));
    }
    if failed {
        std::process::exit(1);
    }
}

/// One run with `k` runner processes on a fresh schema.
async fn run_with(args: &Args, k: usize) -> (Measured, bool) {
    let url = args.url.clone().unwrap_or_default();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let schema = format!("wf_bench_{}_{k}_{nanos}", std::process::id());
    // The schema and its tables exist before the runners race to create them.
    let client = DefaultRunner::builder()
        .url(url.clone())
        .tenant(schema.clone())
        .runner_id("client")
        .takes_work(false)
        .durability(args.durability)
        .build()
        .await
        .unwrap_or_else(|e| panic!("client on {url}: {e}"));
    let (wf, tasks_per) = workflow(&args.shape);
    let name = wf.name().to_owned();
    client.register_workflow(wf).expect("register");

    let exe = std::env::current_exe().expect("this binary");
    let mut children = Vec::new();
    for r in 0..k {
        let mut child = Command::new(&exe)
            .args([
                "--url",
                &url,
                "--shape",
                &args.shape,
                "--concurrency",
                &args.concurrency.to_string(),
                "--durability",
                match args.durability {
                    WorkflowDurability::Batched => "batched",
                    WorkflowDurability::Sync => "sync",
                },
                "--worker",
                &schema,
                &format!("runner-{r}"),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("runner process");
        let stdout = child.stdout.take().expect("piped");
        let mut lines = std::io::BufReader::new(stdout).lines();
        let ready = lines.by_ref().map_while(Result::ok).any(|l| l == "ready");
        assert!(ready, "runner-{r} ended before it was ready");
        children.push((child, lines));
    }

    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut submitters = Vec::new();
    for _ in 0..args.concurrency {
        let (client, next, name) = (client.clone(), Arc::clone(&next), name.clone());
        let n = args.iterations;
        submitters.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let mut input = Context::new();
                input.insert_or_update("i", json!(i));
                ids.push(client.submit(&name, input).await.expect("submit"));
            }
            ids
        }));
    }
    let mut ids = Vec::with_capacity(args.iterations);
    for s in submitters {
        ids.extend(s.await.expect("submitter"));
    }
    let submit_secs = started.elapsed().as_secs_f64();
    // The clock stops when the store holds no unfinished execution (one count query, not
    // a read per execution; every 50 ms while hundreds are left, then every 2 ms, so the
    // count costs the server little and the end is seen within 2 ms).
    loop {
        let left = client.unfinished_executions().await.expect("count");
        if left == 0 {
            break;
        }
        let pause = if left > 500 { 50 } else { 2 };
        tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let mut succeeded = 0usize;
    for id in &ids {
        let ended = client.wait(*id).await.expect("wait");
        if ended.status == cloacina::workflow::WorkflowStatus::Completed {
            succeeded += 1;
        }
    }

    // Stop the runners; gather their task runs and claim statistics.
    let mut runs: HashMap<(u64, String), u32> = HashMap::new();
    let mut totals: HashMap<&str, u64> = HashMap::new();
    for (mut child, mut lines) in children {
        drop(child.stdin.take());
        let report = lines
            .by_ref()
            .map_while(Result::ok)
            .find(|l| l.starts_with('{'))
            .unwrap_or_default();
        let _ = child.wait();
        let report: serde_json::Value = serde_json::from_str(&report).unwrap_or_default();
        for key in ["claims", "claimed", "empty_claims", "takeovers", "lost"] {
            *totals.entry(key).or_default() += report[key].as_u64().unwrap_or(0);
        }
        for run in report["runs"].as_array().into_iter().flatten() {
            let i = run[0].as_u64().unwrap_or(u64::MAX);
            let task = run[1].as_str().unwrap_or("?").to_owned();
            *runs.entry((i, task)).or_default() += 1;
        }
    }
    client.shutdown().await.expect("shutdown");
    let workflows = ids.len();
    let tasks = workflows * tasks_per;
    let completed_twice = runs.values().filter(|&&n| n > 1).count();
    let never = tasks.saturating_sub(runs.len());
    let m = Measured {
        workflows_per_s: workflows as f64 / secs,
        tasks_per_s: tasks as f64 / secs,
    };
    println!(
        "{}",
        json!({
            "shape": args.shape,
            "runners": k,
            "concurrency": args.concurrency,
            "workflows": workflows,
            "tasks": tasks,
            "secs": (secs * 1000.0).round() / 1000.0,
            "submit_secs": (submit_secs * 1000.0).round() / 1000.0,
            "workflows_per_s": m.workflows_per_s.round(),
            "tasks_per_s": m.tasks_per_s.round(),
            "succeeded": succeeded,
            "completed_twice": completed_twice,
            "tasks_never_run": never,
            "claims": totals.get("claims"),
            "claimed": totals.get("claimed"),
            "empty_claims": totals.get("empty_claims"),
            "takeovers": totals.get("takeovers"),
            "lost": totals.get("lost"),
        })
    );
    let ok = succeeded == workflows && never == 0;
    if !ok {
        eprintln!(
            "wf_bench: K={k}: {} of {workflows} workflows did not end Completed, {never} tasks never ran",
            workflows - succeeded
        );
    }
    let _ = std::io::stdout().flush();
    (m, ok)
}
