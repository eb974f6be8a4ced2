//! Three runner processes on one PostgreSQL, one killed with SIGKILL mid-load in each of
//! at least 5 rounds (`WF_CLUSTER_ROUNDS`; `WF_CLUSTER_SEED` replays the choices).
//!
//! The parent is a client (`takes_work(false)`): it submits 5-task workflows through the
//! store (`DefaultRunner::submit`) and registers a cron schedule firing every second. Three
//! children (this test binary, started with `WF_CLUSTER_URL`) are runners with a 1 s lease
//! and a 200 ms sweep; each task sleeps a few ms and appends `job task runner` to an effects
//! file, a side effect outside the store. Each round kills one child at random and starts a
//! new one under a new name: the killed runner's executions are taken over by the others
//! once its lease expires. Then:
//! - every submitted execution is Completed in the store with 5 task records;
//! - every task ran; re-runs (a task whose effect is there more than once) are at most
//!   what the killed runners were running (8 per kill) — the documented guarantee is
//!   at-least-once task runs, each outcome recorded once;
//! - each scheduled instant started one execution (its id is derived from the instant),
//!   and its task ran more than once only if a kill interrupted it.
//!
//! The counts are printed.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cloacina::prelude::*;
use cloacina::workflow::{RunnerBuilder, Schedule};

const URL_ENV: &str = "WF_CLUSTER_URL";
const SCHEMA_ENV: &str = "WF_CLUSTER_SCHEMA";
const DIR_ENV: &str = "WF_CLUSTER_DIR";
const NAME_ENV: &str = "WF_CLUSTER_NAME";
const CONCURRENCY: usize = 8;
const TASKS: usize = 5;
const RUNNERS: usize = 3;

/// a -> (b, c) -> d -> e
const DAG: [(&str, &[&str]); TASKS] = [
    ("a", &[]),
    ("b", &["a"]),
    ("c", &["a"]),
    ("d", &["b", "c"]),
    ("e", &["d"]),
];

/// Appends one line to `file` (one write call: lines of concurrent writers never mix).
fn effect(file: &Path, line: &str) -> Result<(), TaskError> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()))
        .map_err(|e| TaskError::failed(e.to_string()))
}

fn five(dir: &Path, runner: &str) -> Workflow {
    let mut b = Workflow::builder("five");
    for (i, (id, deps)) in DAG.iter().enumerate() {
        let (file, runner) = (dir.join("effects"), runner.to_owned());
        b = b.task(FnTask::new(*id, deps.to_vec(), move |mut ctx: Context| {
            let (file, runner) = (file.clone(), runner.clone());
            async move {
                tokio::time::sleep(Duration::from_millis(20 + (i as u64 * 13) % 40)).await;
                let job = ctx
                    .get("job")
                    .and_then(|v| v.as_str())
                    .unwrap_or("?")
                    .to_owned();
                effect(&file, &format!("{job} {id} {runner}"))?;
                ctx.insert_or_update(*id, serde_json::json!(true));
                Ok(ctx)
            }
        }));
    }
    b.build().expect("valid")
}

fn tick(dir: &Path, runner: &str) -> Workflow {
    let (file, runner) = (dir.join("ticks"), runner.to_owned());
    let task = FnTask::new("tick", [] as [&str; 0], move |ctx: Context| {
        let (file, runner) = (file.clone(), runner.clone());
        async move {
            let at = ctx
                .get("scheduled_for")
                .and_then(|v| v.as_str())
                .unwrap_or("?")
                .to_owned();
            effect(&file, &format!("{at} {runner}"))?;
            Ok(ctx)
        }
    });
    Workflow::builder("tick").task(task).build().expect("valid")
}

async fn runner(url: &str, schema: &str, name: &str, takes_work: bool) -> DefaultRunner {
    RunnerBuilder::default()
        .url(url)
        .tenant(schema)
        .runner_id(name)
        .concurrency(CONCURRENCY)
        .lease(Duration::from_secs(1))
        .sweep_interval(Duration::from_millis(200))
        // Kills may hit one execution's successive holders; this test is about completion.
        .max_takeovers(100)
        .takes_work(takes_work)
        .build()
        .await
        .expect("runner")
}

/// A child: a runner that takes work until it is killed.
#[test]
fn workflow_cluster_child() {
    let Ok(url) = std::env::var(URL_ENV) else {
        return;
    };
    let schema = std::env::var(SCHEMA_ENV).expect("schema");
    let dir = PathBuf::from(std::env::var(DIR_ENV).expect("dir"));
    let name = std::env::var(NAME_ENV).expect("name");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let runner = runner(&url, &schema, &name, true).await;
        runner
            .register_workflow(five(&dir, &name))
            .expect("register");
        runner
            .register_workflow(tick(&dir, &name))
            .expect("register");
        println!("CLUSTER ready");
        std::future::pending::<()>().await;
    });
}

fn spawn_child(url: &str, schema: &str, dir: &Path, name: &str) -> Child {
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "workflow_cluster_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(URL_ENV, url)
        .env(SCHEMA_ENV, schema)
        .env(DIR_ENV, dir)
        .env(NAME_ENV, name)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("child");
    let stdout = child.stdout.take().expect("piped");
    let ready = std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.trim_end().ends_with("CLUSTER ready"));
    assert!(ready, "runner {name} ended before it was ready");
    child
}

fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// Lines of `file` counted by their first `fields` words.
fn counts(file: &Path, fields: usize) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for line in std::fs::read_to_string(file).unwrap_or_default().lines() {
        let key: Vec<&str> = line.split(' ').take(fields).collect();
        *out.entry(key.join(" ")).or_default() += 1;
    }
    out
}

#[test]
fn three_runner_processes_survive_sigkill_rounds() {
    if std::env::var(URL_ENV).is_ok() {
        return;
    }
    let Some(base) = cloacina::ledger::testing::postgres_url() else {
        eprintln!("three_runner_processes_survive_sigkill_rounds: skipped (no PostgreSQL)");
        return;
    };
    let rounds: usize = std::env::var("WF_CLUSTER_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(6)
        .max(5);
    let mut seed: u64 = std::env::var("WF_CLUSTER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(7, |d| d.as_nanos() as u64)
                | 1
        });
    eprintln!("workflow cluster: seed {seed}");
    let schema = format!(
        "wf_cluster_{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros())
    );
    let dir = tempfile::Builder::new()
        .prefix("wf-cluster-")
        .tempdir()
        .expect("temp dir");
    let dir = dir.path();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // The client creates the schema before the children race to.
    let client = runtime.block_on(async {
        let client = runner(&base, &schema, "client", false).await;
        client
            .register_workflow(five(dir, "client"))
            .expect("register");
        client
            .register_workflow(tick(dir, "client"))
            .expect("register");
        client
    });
    let mut children: Vec<Child> = (0..RUNNERS)
        .map(|i| spawn_child(&base, &schema, dir, &format!("r{i}-0")))
        .collect();
    runtime
        .block_on(client.register_schedule(Schedule::new("every_second", "tick", "* * * * * *")))
        .expect("schedule");

    // Submit all along; kill one runner per round.
    let stop = Arc::new(AtomicBool::new(false));
    let submitted: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let submitting = {
        let (client, stop, submitted) = (client.clone(), Arc::clone(&stop), Arc::clone(&submitted));
        runtime.spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let job = format!("j{n}");
                let mut input = Context::new();
                input
                    .insert("job", serde_json::json!(job))
                    .expect("new key");
                let id = client.submit("five", input).await.expect("submit");
                submitted.lock().expect("ids").push((job, id));
                n += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    for round in 0..rounds {
        let delay = Duration::from_millis(700 + next(&mut seed) % 1_300);
        std::thread::sleep(delay);
        let victim = (next(&mut seed) % RUNNERS as u64) as usize;
        children[victim].kill().expect("SIGKILL");
        children[victim].wait().expect("reaped");
        let name = format!("r{victim}-{}", round + 1);
        children[victim] = spawn_child(&base, &schema, dir, &name);
        eprintln!("round {round}: killed runner {victim} after {delay:?}; {name} started");
    }
    stop.store(true, Ordering::Relaxed);
    runtime.block_on(submitting).expect("submitter");
    let accepted = submitted.lock().expect("ids").clone();
    assert!(accepted.len() > 100, "too little work was submitted");

    // Every accepted execution completes (the survivors take over the killed runners').
    let started = Instant::now();
    runtime.block_on(async {
        for (job, id) in &accepted {
            let ended = tokio::time::timeout(Duration::from_secs(120), client.wait(*id))
                .await
                .unwrap_or_else(|_| panic!("execution {id} ({job}) did not end within 120 s"))
                .expect("wait");
            assert_eq!(
                ended.status,
                WorkflowStatus::Completed,
                "execution {id} ({job}): {:?}",
                ended.error
            );
            assert_eq!(ended.task_results.len(), TASKS);
        }
        client
            .delete_schedule("every_second")
            .await
            .expect("delete schedule");
    });
    eprintln!(
        "all {} executions ended {:?} after the last kill",
        accepted.len(),
        started.elapsed()
    );
    // Let a tick under way finish before counting.
    std::thread::sleep(Duration::from_millis(1_500));
    runtime.block_on(client.shutdown()).expect("shutdown");
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }

    // Every task ran; re-runs only of what the killed runners were running.
    let runs = counts(&dir.join("effects"), 2);
    let (mut reruns, mut most) = (0, 0);
    for (job, _) in &accepted {
        for (task, _) in DAG {
            let n = runs.get(&format!("{job} {task}")).copied().unwrap_or(0);
            assert!(n >= 1, "task {task} of {job} never ran");
            reruns += n - 1;
            most = most.max(n);
        }
    }
    // Executions whose tasks ran on more than one runner: taken over mid-way.
    let mut holders: HashMap<&str, std::collections::HashSet<&str>> = HashMap::new();
    let effects = std::fs::read_to_string(dir.join("effects")).unwrap_or_default();
    for line in effects.lines() {
        let mut words = line.split(' ');
        if let (Some(job), Some(_), Some(runner)) = (words.next(), words.next(), words.next()) {
            holders.entry(job).or_default().insert(runner);
        }
    }
    let moved = holders.values().filter(|r| r.len() > 1).count();
    let ticks = counts(&dir.join("ticks"), 1);
    let ticks_twice = ticks.values().filter(|&&n| n > 1).count();
    eprintln!(
        "workflow cluster: {rounds} kills of {RUNNERS} runner processes; {} executions x {TASKS} \
         tasks completed; {reruns} task re-runs (at most {} allowed: {CONCURRENCY} running per \
         kill), most runs of one task {most}; {moved} executions taken over mid-way by another \
         runner; {} schedule instants fired, {ticks_twice} ran their task more than once",
        accepted.len(),
        rounds * CONCURRENCY,
        ticks.len()
    );
    assert!(
        moved >= 1,
        "no execution was taken over: the kills hit nothing in flight"
    );
    assert!(
        reruns <= rounds * CONCURRENCY,
        "{reruns} re-runs exceed what {rounds} kills can interrupt"
    );
    assert!(
        ticks.len() >= 3,
        "the schedule fired ({} instants)",
        ticks.len()
    );
    assert!(
        ticks_twice <= rounds,
        "{ticks_twice} instants ran their task twice: more than {rounds} kills can explain"
    );
    let _ = Command::new("psql")
        .args([base.as_str(), "-qc"])
        .arg(format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}
