//! Latency from a reactor's firing to the first task of the workflow it starts, in process.
//!
//! `cargo run --release --example reactor_workflow_latency -- [--firings N] [--every-us U]
//! [--ledger URL]` (defaults: 2,000 firings, one every 1,000 µs, a `memory://` ledger that
//! the reactor records into and the runner keeps its workflows in). A one-node reactor fires
//! on each value sent; `cloacina::subscribe_workflow` starts a one-task workflow per firing;
//! the task notes the wall clock against the firing's `reactor_fired_at` (when the firing
//! started, µs). Last line JSON: `{"firings","every_us","ledger","p50_us","p99_us","max_us",
//! "started"}` (`started`: executions whose task ran; equal to `firings`, or the example
//! exits with an error).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloacina::prelude::*;
use cloacina::reactor::ReactorHandle;

struct Args {
    firings: u64,
    every_us: u64,
    ledger: String,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        firings: 2_000,
        every_us: 1_000,
        ledger: "memory://".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--firings" => args.firings = value()?.parse().map_err(|e| format!("--firings: {e}"))?,
            "--every-us" => {
                args.every_us = value()?.parse().map_err(|e| format!("--every-us: {e}"))?
            }
            "--ledger" => args.ledger = value()?,
            other => {
                return Err(format!(
                    "unknown argument `{other}`; usage: reactor_workflow_latency [--firings N] [--every-us U] [--ledger URL]"
                ))
            }
        }
    }
    Ok(args)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let ledger = cloacina::ledger::open(&args.ledger).await?;
    let graph = GraphBuilder::new("ticks")
        .node("tick", (source::<u64>("n"),), |n: Option<&u64>| {
            n.copied().unwrap_or(0)
        })
        .build()?;
    let reactor = ReactorHandle::builder(Arc::new(graph))
        .strategy(InputStrategy::Sequential)
        .ledger(Arc::clone(&ledger), 4_096)
        .spawn()?;
    let runner = DefaultRunner::from_ledger(Arc::clone(&ledger), RunnerConfig::default()).await?;
    let latencies: Arc<Mutex<Vec<f64>>> = Arc::default();
    let seen = Arc::clone(&latencies);
    let task = FnTask::new(
        "first",
        [] as [&str; 0],
        move |ctx: Context<serde_json::Value>| {
            let now = chrono::Utc::now();
            if let Some(fired) = ctx
                .get("reactor_fired_at")
                .and_then(|v| v.as_str())
                .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            {
                let us = (now - fired.with_timezone(&chrono::Utc))
                    .num_microseconds()
                    .unwrap_or(i64::MAX) as f64;
                seen.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(us);
            }
            async move { Ok(ctx) }
        },
    );
    runner.register_workflow(Workflow::builder("on_tick").task(task).build()?)?;
    let subscription = ReactorSubscription::new("latency", "ticks", "on_tick");
    let _sub = cloacina::subscribe_workflow(&reactor, &runner, subscription).await?;
    let sender = reactor.sender::<u64>("n")?;
    let mut tick = tokio::time::interval(Duration::from_micros(args.every_us.max(1)));
    for n in 0..args.firings {
        tick.tick().await;
        sender.send(n).await?;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let done = latencies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len() as u64;
        if done >= args.firings || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    reactor.shutdown().await?;
    runner.shutdown().await?;
    let mut sorted = latencies
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    sorted.sort_by(f64::total_cmp);
    let scheme = args.ledger.split("://").next().unwrap_or("path");
    println!(
        "{{\"firings\":{},\"every_us\":{},\"ledger\":\"{scheme}\",\"p50_us\":{:.0},\"p99_us\":{:.0},\"max_us\":{:.0},\"started\":{}}}",
        args.firings,
        args.every_us,
        percentile(&sorted, 0.5),
        percentile(&sorted, 0.99),
        sorted.last().copied().unwrap_or(0.0),
        sorted.len()
    );
    if sorted.len() as u64 != args.firings {
        return Err(format!(
            "{} of {} firings started their workflow",
            sorted.len(),
            args.firings
        )
        .into());
    }
    Ok(())
}
