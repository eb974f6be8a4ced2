//! Runs a schedule that fires every second for S seconds on K runners sharing one store,
//! and counts the executions each instant got: each instant must fire exactly once.
//!
//! `cargo run --release --example cron_check -- [--seconds S] [--runners K] [--url URL]`
//! (defaults: 60 s, 3 runners, a fresh SQLite file; `--url postgres://...` for
//! PostgreSQL, in a fresh schema). Each runner opens the store itself, as a separate
//! process would, and registers the schedule (`* * * * * *`). The instants counted are the
//! S whole seconds of a window starting two seconds after registration; the schedule is
//! disabled just after it. Last line JSON:
//! `{"seconds","runners","url","instants","fired","twice","missed"}`: `instants` distinct
//! instants of the window fired (S expected), `fired` executions run for them (S
//! expected), `twice` instants run more than once, `missed` instants never fired. Exits
//! with an error if any instant fired twice or was missed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloacina::workflow::{Context, DefaultRunner, FnTask, Schedule, Workflow};

struct Args {
    seconds: u64,
    runners: usize,
    url: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        seconds: 60,
        runners: 3,
        url: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--seconds" => {
                args.seconds = value()?.parse().map_err(|e| format!("--seconds: {e}"))?;
            }
            "--runners" => {
                args.runners = value()?.parse().map_err(|e| format!("--runners: {e}"))?;
            }
            "--url" => args.url = Some(value()?),
            other => {
                return Err(format!(
                    "unknown argument `{other}`; usage: cron_check [--seconds S] [--runners K] [--url URL]"
                ))
            }
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let dir = tempfile::tempdir()?;
    let url = args
        .url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("cron.db").display()));
    let fired: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let tenant = format!(
        "cron_check_{}_{}",
        std::process::id(),
        chrono::Utc::now().timestamp()
    );
    let mut runners = Vec::new();
    for k in 0..args.runners {
        let mut builder = DefaultRunner::builder()
            .url(url.clone())
            .runner_id(format!("runner-{k}"));
        if url.starts_with("postgres") {
            builder = builder.tenant(tenant.clone());
        }
        let runner = builder.build().await?;
        let seen = Arc::clone(&fired);
        let task = FnTask::new("count", [] as [&str; 0], move |ctx: Context| {
            let at = ctx
                .get("scheduled_for")
                .and_then(|v| v.as_str())
                .unwrap_or("none")
                .to_owned();
            *seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .entry(at)
                .or_default() += 1;
            async move { Ok(ctx) }
        });
        runner.register_workflow(Workflow::builder("tick").task(task).build()?)?;
        runner
            .register_schedule(Schedule::new("every-second", "tick", "* * * * * *"))
            .await?;
        runners.push(runner);
    }
    // The window counted: S whole seconds from the next-but-one second on.
    let window_start = chrono::Utc::now().timestamp() + 2;
    let window_end = window_start + args.seconds as i64;
    let until_end = (window_end * 1_000_000 + 500_000) - chrono::Utc::now().timestamp_micros();
    tokio::time::sleep(Duration::from_micros(until_end.max(0) as u64)).await;
    runners[0].disable_schedule("every-second").await?;
    // Every runner sees the disable within a second; in-flight executions end.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for runner in &runners {
        runner.shutdown().await?;
    }
    let fired = fired
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let in_window: HashMap<i64, u32> = fired
        .iter()
        .filter_map(|(k, n)| {
            Some((
                chrono::DateTime::parse_from_rfc3339(k).ok()?.timestamp(),
                *n,
            ))
        })
        .filter(|(t, _)| (window_start..window_end).contains(t))
        .collect();
    let missed = args.seconds as usize - in_window.len();
    let total: u32 = in_window.values().sum();
    let twice = in_window.values().filter(|n| **n > 1).count();
    let shown = if url.starts_with("postgres") {
        "postgres"
    } else if url.starts_with("sqlite") {
        "sqlite"
    } else {
        url.as_str()
    };
    println!(
        "{{\"seconds\":{},\"runners\":{},\"url\":\"{shown}\",\"instants\":{},\"fired\":{total},\"twice\":{twice},\"missed\":{missed}}}",
        args.seconds,
        args.runners,
        in_window.len()
    );
    if twice > 0 || missed > 0 {
        return Err(format!("{twice} instants fired twice, {missed} missed").into());
    }
    Ok(())
}
