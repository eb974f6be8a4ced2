//! DefaultRunner against real stores (memory and sled files): execution, durability and
//! resume, cancel, pause, events, bad input.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cloacina_ledger::{ExecutionRecord, TaskOutcome, TaskRecord, WorkflowRecord};
use cloacina_workflow_layer::{
    Context, DefaultRunner, ExecutionEventKind, FnTask, RunnerError, TaskError, TaskState,
    Workflow, WorkflowStatus,
};
use serde_json::json;

/// A task that counts its runs and writes `id: true`.
fn counted(id: &'static str, deps: &[&'static str], runs: &Arc<AtomicU32>) -> FnTask {
    let runs = Arc::clone(runs);
    FnTask::new(id, deps.to_vec(), move |mut ctx: Context| {
        runs.fetch_add(1, Ordering::SeqCst);
        async move {
            ctx.insert_or_update(id, json!(true));
            Ok(ctx)
        }
    })
}

fn pipeline(runs: &Arc<AtomicU32>) -> Workflow {
    Workflow::builder("pipeline")
        .task(counted("extract", &[], runs))
        .task(counted("transform", &["extract"], runs))
        .task(counted("load", &["transform"], runs))
        .build()
        .expect("valid")
}

fn input(n: i64) -> Context {
    let mut ctx = Context::new();
    ctx.insert("n", json!(n)).expect("new key");
    ctx
}

#[tokio::test]
async fn executes_and_reports_from_memory_and_from_the_store() {
    let runs = Arc::new(AtomicU32::new(0));
    let runner = DefaultRunner::new("memory://").await.expect("runner");
    runner.register_workflow(pipeline(&runs)).expect("register");
    let result = runner.execute("pipeline", input(7)).await.expect("execute");
    assert_eq!(result.status, WorkflowStatus::Completed, "{result:?}");
    assert_eq!(
        result.final_context.to_json().expect("json"),
        json!({"n": 7, "extract": true, "transform": true, "load": true})
    );
    assert!(result
        .task_results
        .iter()
        .all(|t| t.state == TaskState::Completed));
    // After its end the store answers.
    assert_eq!(
        runner.status(result.execution_id).await.expect("status"),
        WorkflowStatus::Completed
    );
    let again = runner.wait(result.execution_id).await.expect("wait");
    assert_eq!(
        again.final_context.to_json().ok(),
        result.final_context.to_json().ok()
    );
    assert_eq!(again.workflow_version, result.workflow_version);
    assert_eq!(runs.load(Ordering::SeqCst), 3);

    // Many at once, bounded by the runner's slots; each awaited by id.
    let mut ids = Vec::new();
    for n in 0..200 {
        ids.push(
            runner
                .schedule("pipeline", input(n))
                .await
                .expect("schedule"),
        );
    }
    for (n, id) in ids.into_iter().enumerate() {
        let r = runner.wait(id).await.expect("wait");
        assert_eq!(r.status, WorkflowStatus::Completed);
        assert_eq!(r.final_context.get("n"), Some(&json!(n)));
    }
    assert_eq!(runs.load(Ordering::SeqCst), 3 + 600);
    runner.shutdown().await.expect("shutdown");
    assert!(matches!(
        runner.schedule("pipeline", input(0)).await,
        Err(RunnerError::ShuttingDown)
    ));
}

#[tokio::test]
async fn bad_names_and_versions_are_refused_with_what_was_wrong() {
    let runs = Arc::new(AtomicU32::new(0));
    let runner = DefaultRunner::new("memory://").await.expect("runner");
    runner.register_workflow(pipeline(&runs)).expect("register");
    runner
        .register_workflow(pipeline(&runs))
        .expect("the same workflow again is fine");
    let err = runner
        .execute("nope", Context::new())
        .await
        .expect_err("unknown");
    let text = err.to_string();
    assert!(text.contains("nope") && text.contains("pipeline"), "{text}");
    let changed = Workflow::builder("pipeline")
        .task(counted("extract", &[], &runs))
        .build()
        .expect("valid");
    assert!(matches!(
        runner.register_workflow(changed),
        Err(RunnerError::AlreadyRegistered { .. })
    ));
    assert!(matches!(
        runner.wait(999_999).await,
        Err(RunnerError::UnknownExecution(999_999))
    ));
}

/// What a crash leaves: an execution started with `extract` recorded, nothing else.
async fn crashed_after_extract(url: &str, version: &str) -> u64 {
    let ledger = cloacina_ledger::open(url).await.expect("open");
    let store = ledger.workflow_store().expect("store");
    let id = store.reserve_execution_ids(1).await.expect("id");
    store
        .write(
            &[
                WorkflowRecord::Started(ExecutionRecord {
                    id,
                    workflow: "pipeline".into(),
                    version: version.into(),
                    input: br#"{"n":41}"#.to_vec(),
                    created_at_unix_us: cloacina_ledger::now_unix_us(),
                    owner: "local".into(),
                    lease_until_unix_us: cloacina_ledger::now_unix_us() + 60_000_000,
                }),
                WorkflowRecord::Task(TaskRecord {
                    execution_id: id,
                    task: "extract".into(),
                    outcome: TaskOutcome::Completed,
                    attempts: 1,
                    output: br#"{"n":41,"extract":"from before the crash"}"#.to_vec(),
                    error: None,
                    started_at_unix_us: 1,
                    finished_at_unix_us: 2,
                }),
            ],
            cloacina_ledger::Commit::Durable,
        )
        .await
        .expect("write");
    id
}

#[tokio::test]
async fn a_restarted_runner_resumes_without_rerunning_completed_tasks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sled://{}", dir.path().join("wf").display());
    let runs = Arc::new(AtomicU32::new(0));
    let version = pipeline(&runs).version().to_owned();
    let id = crashed_after_extract(&url, &version).await;

    let runner = DefaultRunner::new(&url).await.expect("runner");
    let mut events = runner.subscribe();
    // Its workflow is registered after start: the execution resumes then.
    runner.register_workflow(pipeline(&runs)).expect("register");
    let result = runner.wait(id).await.expect("resumed");
    assert_eq!(result.status, WorkflowStatus::Completed, "{result:?}");
    assert_eq!(runs.load(Ordering::SeqCst), 2, "extract was not run again");
    assert_eq!(
        result.final_context.get("extract"),
        Some(&json!("from before the crash")),
        "the recorded output is what dependants saw"
    );
    let mut seen = Vec::new();
    while let Ok(e) = events.try_recv() {
        assert_eq!(e.execution_id, id);
        seen.push(e.kind);
    }
    assert_eq!(
        seen,
        [
            ExecutionEventKind::Resumed,
            ExecutionEventKind::TaskStarted {
                task: "transform".into()
            },
            ExecutionEventKind::TaskCompleted {
                task: "transform".into(),
                attempts: 1
            },
            ExecutionEventKind::TaskStarted {
                task: "load".into()
            },
            ExecutionEventKind::TaskCompleted {
                task: "load".into(),
                attempts: 1
            },
            ExecutionEventKind::Finished {
                status: WorkflowStatus::Completed
            },
        ]
    );
    runner.shutdown().await.expect("shutdown");
    drop(runner);
    // Reopened: the end is in the store.
    let ledger = cloacina_ledger::open(&url).await.expect("reopen");
    let stored = ledger
        .workflow_store()
        .expect("store")
        .execution(id)
        .await
        .expect("read");
    assert_eq!(
        stored.map(|e| e.status),
        Some(cloacina_ledger::ExecutionStatus::Completed)
    );
}

#[tokio::test]
async fn an_execution_whose_workflow_changed_ends_failed_saying_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sled://{}", dir.path().join("wf").display());
    let id = crashed_after_extract(&url, "an-older-version").await;
    let runs = Arc::new(AtomicU32::new(0));
    let runner = DefaultRunner::new(&url).await.expect("runner");
    runner.register_workflow(pipeline(&runs)).expect("register");
    let result = runner.wait(id).await.expect("ended");
    assert_eq!(result.status, WorkflowStatus::Failed);
    let error = result.error.unwrap_or_default();
    assert!(
        error.contains("changed") && error.contains("an-older-version"),
        "{error}"
    );
    assert_eq!(
        runs.load(Ordering::SeqCst),
        0,
        "nothing of the new version ran"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_running_tasks_and_pause_holds_the_next() {
    let finished = Arc::new(AtomicU32::new(0));
    let done = Arc::clone(&finished);
    let slow = FnTask::new("slow", [] as [&str; 0], move |ctx: Context| {
        let done = Arc::clone(&done);
        async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            done.fetch_add(1, Ordering::SeqCst);
            Ok(ctx)
        }
    });
    let runs = Arc::new(AtomicU32::new(0));
    let gate = Arc::new(tokio::sync::Notify::new());
    let opened = Arc::clone(&gate);
    let first = FnTask::new("first", [] as [&str; 0], move |ctx: Context| {
        let opened = Arc::clone(&opened);
        async move {
            opened.notified().await;
            Ok(ctx)
        }
    });
    let runner = DefaultRunner::new("memory://").await.expect("runner");
    runner
        .register_workflow(Workflow::builder("slow").task(slow).build().expect("valid"))
        .expect("register");
    runner
        .register_workflow(
            Workflow::builder("gated")
                .task(first)
                .task(counted("second", &["first"], &runs))
                .build()
                .expect("valid"),
        )
        .expect("register");

    let id = runner
        .schedule("slow", Context::new())
        .await
        .expect("schedule");
    tokio::time::sleep(Duration::from_millis(50)).await;
    runner.cancel(id).expect("cancel");
    let result = runner.wait(id).await.expect("cancelled");
    assert_eq!(result.status, WorkflowStatus::Cancelled);
    assert_eq!(
        runner.status(id).await.expect("status"),
        WorkflowStatus::Cancelled
    );
    assert_eq!(finished.load(Ordering::SeqCst), 0);

    let id = runner
        .schedule("gated", Context::new())
        .await
        .expect("schedule");
    tokio::time::sleep(Duration::from_millis(50)).await;
    runner.pause(id).expect("pause");
    assert_eq!(
        runner.status(id).await.expect("status"),
        WorkflowStatus::Paused
    );
    gate.notify_one();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        runs.load(Ordering::SeqCst),
        0,
        "paused: `second` did not start"
    );
    runner.resume(id).expect("resume");
    let result = runner.wait(id).await.expect("ended");
    assert_eq!(result.status, WorkflowStatus::Completed);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_failing_task_is_recorded_and_its_dependants_skipped() {
    let runs = Arc::new(AtomicU32::new(0));
    let broken = FnTask::new("broken", [] as [&str; 0], |_ctx: Context| async move {
        Err(TaskError::invalid("bad row 17"))
    });
    let wf = Workflow::builder("fails")
        .task(broken)
        .task(counted("after", &["broken"], &runs))
        .build()
        .expect("valid");
    let runner = DefaultRunner::new("memory://").await.expect("runner");
    runner.register_workflow(wf).expect("register");
    let result = runner
        .execute("fails", Context::new())
        .await
        .expect("ended");
    assert_eq!(result.status, WorkflowStatus::Failed);
    let stored = runner.wait(result.execution_id).await.expect("stored");
    let states: Vec<(String, TaskState)> = stored
        .task_results
        .iter()
        .map(|t| (t.task_id.clone(), t.state))
        .collect();
    assert_eq!(
        states,
        [
            ("broken".to_owned(), TaskState::Failed),
            ("after".to_owned(), TaskState::Skipped)
        ]
    );
    assert!(stored.task_results[0]
        .error
        .as_deref()
        .unwrap_or("")
        .contains("bad row 17"));
}

/// With one slot, a task deferring until another workflow's task has run lets that task
/// take the slot; holding it would deadlock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deferred_task_frees_its_slot() {
    use cloacina_workflow_layer::{RunnerConfig, TaskHandle};
    let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = Arc::clone(&flag);
    let waiter = FnTask::new("waiter", [] as [&str; 0], move |mut ctx: Context| {
        let seen = Arc::clone(&seen);
        async move {
            let mut handle = TaskHandle::current();
            handle
                .defer_until(
                    || {
                        let seen = Arc::clone(&seen);
                        async move { seen.load(Ordering::SeqCst) }
                    },
                    Duration::from_millis(5),
                )
                .await;
            ctx.insert_or_update("waited", json!(true));
            Ok(ctx)
        }
    });
    let set = Arc::clone(&flag);
    let setter = FnTask::new("setter", [] as [&str; 0], move |ctx: Context| {
        set.store(true, Ordering::SeqCst);
        async move { Ok(ctx) }
    });
    let config = RunnerConfig {
        concurrency: 1,
        ..RunnerConfig::default()
    };
    let ledger = cloacina_ledger::open("memory://").await.expect("ledger");
    let runner = DefaultRunner::from_ledger(ledger, config)
        .await
        .expect("runner");
    runner
        .register_workflow(
            Workflow::builder("waits")
                .task(waiter)
                .build()
                .expect("valid"),
        )
        .expect("register");
    runner
        .register_workflow(
            Workflow::builder("sets")
                .task(setter)
                .build()
                .expect("valid"),
        )
        .expect("register");
    let waiting = runner
        .schedule("waits", Context::new())
        .await
        .expect("schedule");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let setting = runner
        .schedule("sets", Context::new())
        .await
        .expect("schedule");
    let both = async {
        let a = runner.wait(waiting).await.expect("waits");
        let b = runner.wait(setting).await.expect("sets");
        (a, b)
    };
    let (a, b) = tokio::time::timeout(Duration::from_secs(10), both)
        .await
        .expect("the deferred task let the other run");
    assert_eq!(
        (a.status, b.status),
        (WorkflowStatus::Completed, WorkflowStatus::Completed)
    );
    assert_eq!(a.final_context.get("waited"), Some(&json!(true)));
}

/// Shutdown with a paused execution returns (the execution stays unfinished in the store),
/// and a restarted runner finishes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_leaves_a_paused_execution_for_the_next_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sled://{}", dir.path().join("wf").display());
    let runs = Arc::new(AtomicU32::new(0));
    let gate = Arc::new(tokio::sync::Notify::new());
    let opened = Arc::clone(&gate);
    let first = FnTask::new("first", [] as [&str; 0], move |ctx: Context| {
        let opened = Arc::clone(&opened);
        async move {
            opened.notified().await;
            Ok(ctx)
        }
    });
    let workflow = |first: FnTask| {
        Workflow::builder("gated")
            .task(first)
            .task(counted("second", &["first"], &runs))
            .build()
            .expect("valid")
    };
    let runner = DefaultRunner::new(&url).await.expect("runner");
    runner.register_workflow(workflow(first)).expect("register");
    let id = runner
        .schedule("gated", Context::new())
        .await
        .expect("schedule");
    tokio::time::sleep(Duration::from_millis(50)).await;
    runner.pause(id).expect("pause");
    let stopping = {
        let runner = runner.clone();
        tokio::spawn(async move { runner.shutdown().await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    gate.notify_one(); // `first` ends while paused: `second` must not start
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("shutdown returned")
        .expect("joined")
        .expect("shutdown");
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    drop(runner);

    let runner = DefaultRunner::new(&url).await.expect("restart");
    let never = FnTask::new("first", [] as [&str; 0], |_ctx: Context| async move {
        Err(TaskError::failed("first ran again"))
    });
    runner.register_workflow(workflow(never)).expect("register");
    let result = runner.wait(id).await.expect("resumed");
    assert_eq!(result.status, WorkflowStatus::Completed, "{result:?}");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn history_reads_an_executions_events_back_from_the_store_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sled://{}", dir.path().join("store").display());
    let tries = Arc::new(AtomicU32::new(0));
    let flaky = {
        let tries = Arc::clone(&tries);
        FnTask::new("flaky", Vec::<String>::new(), move |mut ctx: Context| {
            let n = tries.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    return Err(TaskError::failed("first try fails"));
                }
                ctx.insert_or_update("flaky", json!(true));
                Ok(ctx)
            }
        })
        .retry_policy(
            cloacina_workflow_layer::RetryPolicy::builder()
                .max_attempts(2)
                .initial_delay(Duration::from_millis(1))
                .build(),
        )
    };
    let runs = Arc::new(AtomicU32::new(0));
    let workflow = Workflow::builder("history")
        .task(flaky)
        .task(counted("after", &["flaky"], &runs))
        .build()
        .expect("valid");
    let id = {
        let runner = DefaultRunner::new(&url).await.expect("runner");
        runner.register_workflow(workflow).expect("register");
        let result = runner.execute("history", input(1)).await.expect("execute");
        assert_eq!(result.status, WorkflowStatus::Completed, "{result:?}");
        runner.shutdown().await.expect("shutdown");
        result.execution_id
    };
    let runner = DefaultRunner::new(&url).await.expect("reopened");
    let history = runner.history(id).await.expect("history");
    let kinds: Vec<ExecutionEventKind> = history.iter().map(|e| e.event.kind.clone()).collect();
    assert_eq!(
        kinds,
        vec![
            ExecutionEventKind::Started,
            ExecutionEventKind::TaskStarted {
                task: "flaky".into()
            },
            ExecutionEventKind::TaskCompleted {
                task: "flaky".into(),
                attempts: 2
            },
            ExecutionEventKind::TaskStarted {
                task: "after".into()
            },
            ExecutionEventKind::TaskCompleted {
                task: "after".into(),
                attempts: 1
            },
            ExecutionEventKind::Finished {
                status: WorkflowStatus::Completed
            },
        ]
    );
    assert!(history
        .iter()
        .all(|e| e.event.execution_id == id && e.event.workflow == "history"));
    assert!(history.windows(2).all(|w| w[0].at <= w[1].at));
    assert!(matches!(
        runner.history(id + 1_000_000).await,
        Err(RunnerError::UnknownExecution(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependant_starts_only_after_every_dependency_is_recorded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sled://{}", dir.path().join("store").display());
    let runner = DefaultRunner::new(&url).await.expect("runner");
    let store = runner.ledger().workflow_store().expect("store");
    // `late` ends while `early`'s outcome may still be being written; `check` reads what
    // the store holds when it starts.
    let slow = |id: &'static str, ms: u64| {
        FnTask::new(
            id,
            Vec::<String>::new(),
            move |mut ctx: Context| async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                ctx.insert_or_update(id, json!(true));
                Ok(ctx)
            },
        )
    };
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let check = {
        let (store, seen) = (Arc::clone(&store), Arc::clone(&seen));
        FnTask::new("check", ["a", "b", "c"], move |ctx: Context| {
            let (store, seen) = (Arc::clone(&store), Arc::clone(&seen));
            async move {
                let id = ctx
                    .get("id")
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or_default();
                let stored = store
                    .execution(id)
                    .await
                    .map_err(|e| TaskError::failed(e.to_string()))?;
                let recorded: Vec<String> = stored
                    .map(|s| s.tasks.into_iter().map(|t| t.task).collect())
                    .unwrap_or_default();
                seen.lock().expect("lock").push(recorded);
                Ok(ctx)
            }
        })
    };
    runner
        .register_workflow(
            Workflow::builder("fan_in")
                .task(slow("a", 0))
                .task(slow("b", 0))
                .task(slow("c", 15))
                .task(check)
                .build()
                .expect("valid"),
        )
        .expect("register");
    for id in 1..=20u64 {
        // A fresh store hands this runner ids 1, 2, ... in order; the task reads its
        // execution's id from the context.
        let mut ctx = Context::new();
        ctx.insert("id", json!(id)).expect("new key");
        let result = runner.execute("fan_in", ctx).await.expect("execute");
        assert_eq!(result.status, WorkflowStatus::Completed, "{result:?}");
        assert_eq!(result.execution_id, id, "ids are handed out in order");
    }
    let seen = seen.lock().expect("lock");
    assert_eq!(seen.len(), 20);
    for recorded in seen.iter() {
        assert_eq!(
            recorded,
            &["a", "b", "c"],
            "dependencies recorded before the dependant"
        );
    }
}

#[tokio::test]
async fn a_start_that_cannot_be_recorded_stops_the_tasks_already_running() {
    let ledger = Arc::new(cloacina_ledger::conformance::FaultyLedger::refusing_workflow_starts());
    let runner = DefaultRunner::from_ledger(ledger, Default::default())
        .await
        .expect("runner");
    let effects = Arc::new(AtomicU32::new(0));
    let seen = Arc::clone(&effects);
    let wf = Workflow::builder("slow_effect")
        .task(FnTask::new(
            "effect",
            Vec::<&str>::new(),
            move |ctx: Context| {
                let seen = Arc::clone(&seen);
                async move {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    seen.fetch_add(1, Ordering::SeqCst);
                    Ok(ctx)
                }
            },
        ))
        .build()
        .expect("valid");
    runner.register_workflow(wf).expect("register");
    let refused = runner.schedule("slow_effect", Context::new()).await;
    assert!(
        matches!(refused, Err(RunnerError::Store(_))),
        "the start was refused: {refused:?}"
    );
    // Long past the task's sleep: it was stopped, so its side effect never happened.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(effects.load(Ordering::SeqCst), 0, "the task ran on");
    tokio::time::timeout(Duration::from_secs(5), runner.shutdown())
        .await
        .expect("shutdown does not wait for a stopped driver")
        .expect("shutdown");
}
