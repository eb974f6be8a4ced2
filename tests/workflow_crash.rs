//! Workflow durability under SIGKILL, per backend (sled, SQLite, PostgreSQL).
//!
//! A child process (this test binary, started with `WF_CRASH_URL`) runs a `DefaultRunner`
//! with `WorkflowDurability::Sync` (and, on SQLite and PostgreSQL, whose `Batched` commits
//! survive a process crash, with `Batched` too: there an execution's first tasks run while
//! its start is written) and keeps submitting 10-task workflows (a DAG with
//! fan-out and fan-in; each task sleeps a few ms and appends `job task` to an effects file, a
//! side effect outside the store). It is killed with SIGKILL at random points, at least 10
//! rounds, each round restarting it on the same store (it resumes what was interrupted).
//! A last round submits nothing and waits for every accepted execution. Then:
//! - every execution whose `schedule` returned is Completed in the store with 10 task records;
//! - every task of every execution ran at least once, and re-runs (a task whose effect is
//!   there more than once) are at most the tasks that were running at the kills: at most
//!   the runner's concurrency (8) per kill. The counts are printed.
//!
//! `WF_CRASH_ROUNDS` changes the number of kills; `WF_CRASH_SEED` replays the kill delays.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cloacina::prelude::*;
use cloacina::workflow::RunnerBuilder;

const URL_ENV: &str = "WF_CRASH_URL";
const DIR_ENV: &str = "WF_CRASH_DIR";
const FINAL_ENV: &str = "WF_CRASH_FINAL";
const ROUND_ENV: &str = "WF_CRASH_ROUND";
const DURABILITY_ENV: &str = "WF_CRASH_BATCHED";
const CONCURRENCY: usize = 8;
const TASKS: usize = 10;

/// t0 -> (t1, t2, t3); t1 -> t4; (t2, t3) -> t5; (t4, t5) -> t6; t6 -> (t7, t8); (t7, t8) -> t9.
const DAG: [(&str, &[&str]); TASKS] = [
    ("t0", &[]),
    ("t1", &["t0"]),
    ("t2", &["t0"]),
    ("t3", &["t0"]),
    ("t4", &["t1"]),
    ("t5", &["t2", "t3"]),
    ("t6", &["t4", "t5"]),
    ("t7", &["t6"]),
    ("t8", &["t6"]),
    ("t9", &["t7", "t8"]),
];

fn workflow(effects: PathBuf) -> Workflow {
    let mut b = Workflow::builder("crash_ten");
    for (i, (id, deps)) in DAG.iter().enumerate() {
        let effects = effects.clone();
        b = b.task(FnTask::new(*id, deps.to_vec(), move |mut ctx: Context| {
            let effects = effects.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(2 + (i as u64 % 4))).await;
                let job = ctx
                    .get("job")
                    .and_then(|v| v.as_str())
                    .unwrap_or("?")
                    .to_owned();
                // The side effect: one line per run of this task, outside the store.
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&effects)
                    .map_err(|e| TaskError::failed(e.to_string()))?;
                // One write call per line: concurrent tasks' lines never interleave.
                f.write_all(format!("{job} {id}\n").as_bytes())
                    .map_err(|e| TaskError::failed(e.to_string()))?;
                ctx.insert_or_update(*id, serde_json::json!(true));
                Ok(ctx)
            }
        }));
    }
    b.build().expect("valid")
}

/// The child: resume, submit (or, in the final round, only wait), until killed.
#[test]
fn workflow_crash_child() {
    let Ok(url) = std::env::var(URL_ENV) else {
        return;
    };
    let dir = PathBuf::from(std::env::var(DIR_ENV).expect("dir"));
    let last = std::env::var(FINAL_ENV).is_ok();
    let round = std::env::var(ROUND_ENV).unwrap_or_default();
    let durability = if std::env::var(DURABILITY_ENV).is_ok() {
        WorkflowDurability::Batched
    } else {
        WorkflowDurability::Sync
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let runner = RunnerBuilder::default()
            .url(url)
            .durability(durability)
            .concurrency(CONCURRENCY)
            .build()
            .await
            .expect("runner");
        runner
            .register_workflow(workflow(dir.join("effects")))
            .expect("register");
        println!("WF ready");
        if last {
            for (_, id) in accepted(&dir) {
                runner.wait(id).await.expect("wait");
            }
            runner.shutdown().await.expect("shutdown");
            println!("WF done");
            return;
        }
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("accepted"))
            .expect("accepted log");
        for n in 0.. {
            let job = format!("r{round}-{n}");
            let mut input = Context::new();
            input
                .insert("job", serde_json::json!(job))
                .expect("new key");
            let id = runner.schedule("crash_ten", input).await.expect("schedule");
            log.write_all(format!("{job} {id}\n").as_bytes())
                .expect("log");
            tokio::time::sleep(Duration::from_millis(8)).await;
        }
    });
}

/// `(job, execution id)` of every execution whose `schedule` returned.
fn accepted(dir: &Path) -> Vec<(String, u64)> {
    let Ok(f) = std::fs::File::open(dir.join("accepted")) else {
        return Vec::new();
    };
    std::io::BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| {
            let (job, id) = l.split_once(' ')?;
            Some((job.to_owned(), id.parse().ok()?))
        })
        .collect()
}

fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

fn spawn_child(
    url: &str,
    dir: &Path,
    round: usize,
    last: bool,
    durability: WorkflowDurability,
) -> std::process::Child {
    let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
    cmd.args([
        "--exact",
        "workflow_crash_child",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(URL_ENV, url)
    .env(DIR_ENV, dir)
    .env(ROUND_ENV, round.to_string())
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    if last {
        cmd.env(FINAL_ENV, "1");
    }
    if durability == WorkflowDurability::Batched {
        cmd.env(DURABILITY_ENV, "1");
    }
    cmd.spawn().expect("child")
}

fn wait_line(
    child: &mut std::process::Child,
    want: &str,
) -> std::io::Lines<std::io::BufReader<std::process::ChildStdout>> {
    let stdout = child.stdout.take().expect("piped");
    let mut lines = std::io::BufReader::new(stdout).lines();
    for line in lines.by_ref().map_while(Result::ok) {
        if line.trim_end().ends_with(want) {
            return lines;
        }
    }
    panic!("the child ended without printing `{want}`");
}

fn kill_rounds(backend: &str, url: &str, dir: &Path, durability: WorkflowDurability) {
    let rounds: usize = std::env::var("WF_CRASH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(10);
    let mut seed: u64 = std::env::var("WF_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(7, |d| d.as_nanos() as u64)
                | 1
        });
    eprintln!("workflow crash ({backend}, {durability:?}): seed {seed}");
    for round in 0..rounds {
        let mut child = spawn_child(url, dir, round, false, durability);
        let lines = wait_line(&mut child, "WF ready");
        let delay = Duration::from_millis(150 + next(&mut seed) % 600);
        std::thread::sleep(delay);
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
        drop(lines);
        eprintln!(
            "round {round}: killed after {delay:?}; {} accepted so far",
            accepted(dir).len()
        );
    }
    let mut child = spawn_child(url, dir, rounds, true, durability);
    let started = Instant::now();
    let mut lines = wait_line(&mut child, "WF ready");
    let done = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.trim_end().ends_with("WF done"));
    let status = child.wait().expect("final child");
    assert!(
        done && status.success(),
        "{backend}: the final round did not finish ({status})"
    );
    eprintln!("final round: {:?}", started.elapsed());

    // Every accepted execution completed, with all its tasks recorded.
    let accepted = accepted(dir);
    assert!(
        accepted.len() >= rounds,
        "{backend}: too little work was submitted"
    );
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let ledger = cloacina::ledger::open(url).await.expect("open");
        let store = ledger.workflow_store().expect("store");
        for (job, id) in &accepted {
            let e = store
                .execution(*id)
                .await
                .expect("read")
                .unwrap_or_else(|| {
                    panic!("{backend}: accepted execution {id} ({job}) is not in the store")
                });
            assert_eq!(
                e.status,
                cloacina::ledger::ExecutionStatus::Completed,
                "{backend}: execution {id} ({job})"
            );
            assert_eq!(e.tasks.len(), TASKS, "{backend}: task records of {id}");
        }
    });

    // Every task ran; re-runs only of what was running at a kill.
    let mut runs: HashMap<(String, String), usize> = HashMap::new();
    let effects = std::fs::read_to_string(dir.join("effects")).unwrap_or_default();
    for line in effects.lines() {
        if let Some((job, task)) = line.split_once(' ') {
            *runs.entry((job.to_owned(), task.to_owned())).or_default() += 1;
        }
    }
    let mut reruns = 0;
    let mut most = 0;
    for (job, _) in &accepted {
        for (task, _) in DAG {
            let n = runs
                .get(&(job.clone(), task.to_owned()))
                .copied()
                .unwrap_or(0);
            assert!(n >= 1, "{backend}: task {task} of {job} never ran");
            reruns += n - 1;
            most = most.max(n);
        }
    }
    eprintln!(
        "workflow crash ({backend}, {durability:?}): {rounds} kills, {} executions x {TASKS} tasks completed, \
         {reruns} task re-runs (at most {} allowed: {CONCURRENCY} running per kill), \
         most runs of one task {most}",
        accepted.len(),
        rounds * CONCURRENCY
    );
    assert!(
        reruns <= rounds * CONCURRENCY,
        "{backend}: {reruns} re-runs exceed what {rounds} kills can interrupt"
    );
}

fn temp_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("wf-crash-{tag}-"))
        .tempdir()
        .expect("temp dir")
}

#[test]
fn sigkill_rounds_on_sled_complete_every_execution() {
    if std::env::var(URL_ENV).is_ok() {
        return;
    }
    let dir = temp_dir("sled");
    let url = format!("sled://{}", dir.path().join("store").display());
    kill_rounds("sled", &url, dir.path(), WorkflowDurability::Sync);
}

#[test]
fn sigkill_rounds_on_sqlite_complete_every_execution() {
    sqlite_rounds(WorkflowDurability::Sync);
}

#[test]
fn sigkill_rounds_on_sqlite_batched_complete_every_execution() {
    sqlite_rounds(WorkflowDurability::Batched);
}

fn sqlite_rounds(durability: WorkflowDurability) {
    if std::env::var(URL_ENV).is_ok() {
        return;
    }
    let dir = temp_dir(&format!("sqlite-{durability:?}"));
    let url = format!("sqlite://{}", dir.path().join("store.db").display());
    kill_rounds("sqlite", &url, dir.path(), durability);
}

#[test]
fn sigkill_rounds_on_postgres_complete_every_execution() {
    postgres_rounds(WorkflowDurability::Sync);
}

#[test]
fn sigkill_rounds_on_postgres_batched_complete_every_execution() {
    postgres_rounds(WorkflowDurability::Batched);
}

fn postgres_rounds(durability: WorkflowDurability) {
    if std::env::var(URL_ENV).is_ok() {
        return;
    }
    let Some(base) = cloacina::ledger::testing::postgres_url() else {
        return;
    };
    // Named per durability too: both tests start at once, maybe in the same microsecond.
    let schema = format!(
        "wf_crash_{}_{}",
        format!("{durability:?}").to_lowercase(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros())
    );
    let url = cloacina::ledger::tenant_url(&base, &schema).expect("schema URL");
    let dir = temp_dir("postgres");
    kill_rounds("postgres", &url, dir.path(), durability);
    let _ = Command::new("psql")
        .args([base.as_str(), "-qc"])
        .arg(format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}
