//! Several runner processes on one PostgreSQL: work submitted through the store, a cron
//! schedule, a polling trigger and a reactor-started workflow, and what happens when one
//! runner is killed.
//!
//! ```text
//! # shell 1: a runner that also runs the `prices` reactor
//! cargo run --release --example cluster -- --url postgres://postgres@127.0.0.1:5432/test --name alpha --reactor
//! # shell 2: another runner
//! cargo run --release --example cluster -- --url postgres://postgres@127.0.0.1:5432/test --name beta
//! # shell 3: a client submitting 50 orders (it runs none itself) and waiting for them
//! cargo run --release --example cluster -- --url postgres://postgres@127.0.0.1:5432/test --name client --submit 50
//! ```
//!
//! Every process uses schema `cluster_demo` (`--schema` to change it). Each runner prints
//! what it runs: order tasks (whichever runner claimed the order), the `heartbeat`
//! schedule (every 5 s, once across all runners), the `inbox` trigger's polls (every 2 s,
//! once across all runners) and `price_alert` executions started from the reactor's
//! firings (followed through the store by every runner; each firing runs once). Kill one
//! runner (Ctrl-C, or `kill -9`): the others take its unfinished orders over once its
//! 5 s lease expires, and go on firing the schedule and the trigger.
//!
//! `--seconds S` stops a process after S seconds (gracefully) and prints its claim
//! statistics. The client exits non-zero unless every order it submitted completed. With
//! `--solo` one process does everything (the CI smoke test): it fails unless the orders,
//! a heartbeat, an inbox poll and a price alert all ran.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cloacina::prelude::*;
use cloacina::reactor::ReactorHandle;
use cloacina::workflow::{PollingTrigger, ReactorSubscription, RunnerBuilder, Schedule};
use serde_json::json;

struct Args {
    url: String,
    schema: String,
    name: String,
    reactor: bool,
    submit: u64,
    seconds: Option<u64>,
    solo: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        url: String::new(),
        schema: "cluster_demo".into(),
        name: String::new(),
        reactor: false,
        submit: 0,
        seconds: None,
        solo: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => args.url = value()?,
            "--schema" => args.schema = value()?,
            "--name" => args.name = value()?,
            "--reactor" => args.reactor = true,
            "--solo" => {
                args.solo = true;
                args.reactor = true;
            }
            "--submit" => args.submit = value()?.parse().map_err(|e| format!("--submit: {e}"))?,
            "--seconds" => {
                args.seconds = Some(value()?.parse().map_err(|e| format!("--seconds: {e}"))?)
            }
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    if args.url.is_empty() || args.name.is_empty() {
        return Err("--url postgres://... and --name NAME are required".into());
    }
    Ok(args)
}

/// What this process ran, for `--solo`'s check.
#[derive(Default)]
struct Ran {
    orders: AtomicU64,
    heartbeats: AtomicU64,
    polls: AtomicU64,
    alerts: AtomicU64,
}

fn workflows(name: &str, ran: &Arc<Ran>) -> Result<Vec<Workflow>, WorkflowError> {
    let step = |id: &'static str, deps: &[&'static str], ms: u64| {
        let (name, ran) = (name.to_owned(), Arc::clone(ran));
        FnTask::new(id, deps.to_vec(), move |mut ctx: Context| {
            let (name, ran) = (name.clone(), Arc::clone(&ran));
            async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                let order = ctx.get("order").and_then(|v| v.as_u64()).unwrap_or(0);
                println!("[{name}] order {order}: {id}");
                if id == "ship" {
                    ran.orders.fetch_add(1, Ordering::Relaxed);
                    ctx.insert_or_update("shipped_by", json!(name));
                }
                Ok(ctx)
            }
        })
    };
    let order = Workflow::builder("order")
        .task(step("reserve", &[], 50))
        .task(step("charge", &["reserve"], 300))
        .task(step("ship", &["charge"], 50))
        .build()?;
    let (n, r) = (name.to_owned(), Arc::clone(ran));
    let heartbeat = Workflow::builder("heartbeat")
        .task(FnTask::new("beat", [] as [&str; 0], move |ctx: Context| {
            let at = ctx.get("scheduled_for").cloned().unwrap_or_default();
            println!("[{n}] heartbeat for {at} (fired once across the cluster)");
            r.heartbeats.fetch_add(1, Ordering::Relaxed);
            async move { Ok(ctx) }
        }))
        .build()?;
    let (n, r) = (name.to_owned(), Arc::clone(ran));
    let alert = Workflow::builder("price_alert")
        .task(FnTask::new(
            "alert",
            [] as [&str; 0],
            move |ctx: Context| {
                let firing = ctx.get("reactor_firing_id").cloned().unwrap_or_default();
                let price = ctx.get("price").cloned().unwrap_or_default();
                println!("[{n}] price alert: firing {firing}, price {price}");
                r.alerts.fetch_add(1, Ordering::Relaxed);
                async move { Ok(ctx) }
            },
        ))
        .build()?;
    let n = name.to_owned();
    let inbox = Workflow::builder("inbox")
        .task(FnTask::new("read", [] as [&str; 0], move |ctx: Context| {
            println!("[{n}] inbox: {:?}", ctx.get("message"));
            async move { Ok(ctx) }
        }))
        .build()?;
    Ok(vec![order, heartbeat, alert, inbox])
}

/// The `prices` reactor: a price that moves every 200 ms; its firings go to the ledger.
fn prices(
    ledger: &Arc<dyn cloacina::ledger::Ledger>,
) -> Result<ReactorHandle, Box<dyn std::error::Error>> {
    let graph = GraphBuilder::new("prices")
        .node("price", (source::<u64>("tick"),), |t: Option<&u64>| {
            let t = t.copied().unwrap_or(0);
            100 + (t * 7) % 11
        })
        .build()?;
    let reactor = ReactorHandle::builder(Arc::new(graph))
        .strategy(InputStrategy::Sequential)
        .ledger(Arc::clone(ledger), 1_024)
        .spawn()?;
    let sender = reactor.sender::<u64>("tick")?;
    tokio::spawn(async move {
        for t in 0.. {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if sender.send(t).await.is_err() {
                break;
            }
        }
    });
    Ok(reactor)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("cluster: {e}");
            std::process::exit(2);
        }
    };
    let client = args.submit > 0 && !args.solo;
    let runner = RunnerBuilder::default()
        .url(&args.url)
        .tenant(&args.schema)
        .runner_id(&args.name)
        .lease(Duration::from_secs(5))
        .sweep_interval(Duration::from_secs(1))
        .takes_work(!client)
        .build()
        .await?;
    let ran = Arc::new(Ran::default());
    for wf in workflows(&args.name, &ran)? {
        runner.register_workflow(wf)?;
    }
    println!("[{}] runner started on schema `{}`", args.name, args.schema);

    let mut reactor = None;
    if !client {
        runner
            .register_schedule(Schedule::new("heartbeat", "heartbeat", "*/5 * * * * *"))
            .await?;
        let r = Arc::clone(&ran);
        let trigger = PollingTrigger::new("inbox", "inbox", Duration::from_secs(2), move || {
            let n = r.polls.fetch_add(1, Ordering::Relaxed);
            async move {
                // Every other poll finds a message.
                Ok(if n % 2 == 0 {
                    let mut ctx = Context::new();
                    ctx.insert_or_update("message", json!(format!("message {n}")));
                    TriggerResult::Fire(Some(ctx))
                } else {
                    TriggerResult::Skip
                })
            }
        });
        runner.register_trigger(trigger)?;
        if args.reactor {
            reactor = Some(prices(&runner.ledger())?);
        }
        let alerts = ReactorSubscription::new("alerts", "prices", "price_alert").select(|firing| {
            let price = match &firing.outcome {
                cloacina::ledger::FiringOutcome::Completed { outputs } => outputs
                    .iter()
                    .find(|(node, _)| node == "price")
                    .and_then(|(_, b)| cloacina::graph::codec::decode::<u64>(b).ok()),
                _ => None,
            }?;
            (price >= 109).then(|| {
                let mut ctx = Context::new();
                ctx.insert_or_update("price", json!(price));
                ctx
            })
        });
        runner
            .follow_reactor(alerts, Duration::from_millis(200))
            .await?;
    }

    let mut failed = false;
    if args.submit > 0 {
        let mut ids = Vec::new();
        for order in 0..args.submit {
            let mut ctx = Context::new();
            ctx.insert_or_update("order", json!(order));
            ids.push(runner.submit("order", ctx).await?);
        }
        println!("[{}] submitted {} orders", args.name, ids.len());
        let mut by: std::collections::BTreeMap<String, u64> = Default::default();
        for id in ids {
            let done = runner.wait(id).await?;
            if done.status != WorkflowStatus::Completed {
                failed = true;
                eprintln!(
                    "[{}] order execution {id} ended {:?}",
                    args.name, done.status
                );
            }
            let who = done
                .final_context
                .get("shipped_by")
                .and_then(|v| v.as_str())
                .unwrap_or("?")
                .to_owned();
            *by.entry(who).or_default() += 1;
        }
        println!("[{}] all orders ended; shipped by: {by:?}", args.name);
    }

    let stop = async {
        match args.seconds {
            Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    stop.await;
    let triggers = runner.triggers();
    runner.shutdown().await?;
    if let Some(r) = reactor {
        let _ = r.shutdown().await;
    }
    println!(
        "[{}] stopped; claims: {:?}; triggers: {:?}",
        args.name,
        runner.claim_stats(),
        triggers
    );
    if args.solo {
        let got = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let missing: Vec<&str> = [
            ("orders", got(&ran.orders) < args.submit),
            ("a heartbeat", got(&ran.heartbeats) == 0),
            ("an inbox poll", got(&ran.polls) == 0),
            ("a price alert", got(&ran.alerts) == 0),
        ]
        .into_iter()
        .filter_map(|(what, missing)| missing.then_some(what))
        .collect();
        if !missing.is_empty() {
            eprintln!("cluster: nothing ran for: {}", missing.join(", "));
            failed = true;
        }
    }
    if failed {
        std::process::exit(1);
    }
    Ok(())
}
