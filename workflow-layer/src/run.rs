//! [`Workflow::run`]: one execution in this process, nothing recorded, driving the sans-IO
//! [`ExecutionState`]; and what an execution returns.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::stream::{FuturesUnordered, StreamExt};
use serde_json::Value;

use crate::{Context, ExecutionState, TaskError, TaskState, Workflow, WorkflowStatus};

/// How one task of an execution ended.
#[derive(Debug, Clone)]
pub struct TaskResult {
    /// The task's id.
    pub task_id: String,
    /// Its final state.
    pub state: TaskState,
    /// Times it was started (0 if skipped).
    pub attempts: u32,
    /// The error of its last attempt, if it failed.
    pub error: Option<String>,
    /// When its first attempt started (`None` if it never ran).
    pub started: Option<SystemTime>,
    /// When its last attempt ended (`None` if it never ran).
    pub ended: Option<SystemTime>,
}

/// What an execution of a workflow ended with.
#[derive(Debug, Clone)]
pub struct WorkflowExecutionResult {
    /// The execution's id.
    pub execution_id: u64,
    /// The workflow's name.
    pub workflow_name: String,
    /// The workflow's content-based version.
    pub workflow_version: String,
    /// Completed, or Failed if a task failed.
    pub status: WorkflowStatus,
    /// When it started.
    pub start_time: SystemTime,
    /// When its last task finished.
    pub end_time: SystemTime,
    /// `end_time - start_time`.
    pub duration: Duration,
    /// The input merged with every completed task's output, in execution order.
    pub final_context: Context<Value>,
    /// Why it ended other than by its tasks' outcomes (cancelled; its workflow changed
    /// under it), if so.
    pub error: Option<String>,
    /// Each task's outcome, in declaration order.
    pub task_results: Vec<TaskResult>,
}

/// A result per task, none started yet.
pub(crate) fn not_started(tasks: &[Arc<dyn crate::Task>]) -> Vec<TaskResult> {
    tasks
        .iter()
        .map(|t| TaskResult {
            task_id: t.id().to_owned(),
            state: TaskState::NotStarted,
            attempts: 0,
            error: None,
            started: None,
            ended: None,
        })
        .collect()
}

/// Ids of in-process executions (the durable runner takes its ids from its store).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Workflow {
    /// Runs the workflow once in this process on `input`, recording nothing: tasks whose
    /// dependencies completed run concurrently (on the calling task), each sees `input`
    /// merged with its dependencies' outputs in their declaration order; a failed task's
    /// dependants are skipped; a panicking task fails that task only. For executions that
    /// survive a crash, [`DefaultRunner`](crate::DefaultRunner) runs the same core over the
    /// ledger.
    ///
    /// Each attempt runs as a tokio task (so a timeout stops even a task that blocks its
    /// thread, on a multi-thread runtime): call it inside a tokio runtime with the timer
    /// enabled.
    pub async fn run(&self, input: Context<Value>) -> WorkflowExecutionResult {
        let start_time = SystemTime::now();
        let tasks = self.tasks();
        let mut state = ExecutionState::new(self, input);
        let mut results = not_started(tasks);
        let mut running = FuturesUnordered::new();
        loop {
            for i in state.start_ready() {
                let task = Arc::clone(&tasks[i]);
                results[i].started = Some(SystemTime::now());
                running.push(run_attempts(task, state.input_for(i), i, None));
            }
            let Some((i, attempts, outcome)) = running.next().await else {
                break;
            };
            results[i].ended = Some(SystemTime::now());
            results[i].attempts = attempts;
            match outcome {
                Ok(output) => state.completed(i, output),
                Err(e) => {
                    tracing::warn!(workflow = self.name(), task = results[i].task_id, attempts, error = %e, "task failed");
                    results[i].error = Some(e.to_string());
                    state.failed(i);
                }
            }
        }
        for (result, s) in results.iter_mut().zip(state.states()) {
            result.state = *s;
        }
        let end_time = SystemTime::now();
        WorkflowExecutionResult {
            execution_id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            workflow_name: self.name().to_owned(),
            workflow_version: self.version().to_owned(),
            status: state.status(),
            start_time,
            end_time,
            duration: end_time.duration_since(start_time).unwrap_or_default(),
            final_context: state.final_context(),
            error: None,
            task_results: results,
        }
    }
}

/// Runs task `i` on `input` until it succeeds or its retry policy gives up. Each attempt is
/// a tokio task of its own: a panic anywhere in it (even before its future exists) fails
/// that attempt only, and a timeout aborts it even if it blocks its worker thread. With
/// `slots`, each attempt holds one slot while it runs (not while it waits for a retry).
/// Dropping the returned future aborts the attempt running. Returns the attempts made and
/// the output or the last error.
pub(crate) async fn run_attempts(
    task: Arc<dyn crate::Task>,
    mut input: Context<Value>,
    i: usize,
    slots: Option<&Arc<tokio::sync::Semaphore>>,
) -> (usize, u32, Result<Context<Value>, TaskError>) {
    let settings = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        (task.retry_policy(), task.timeout())
    }));
    let (policy, timeout) = match settings {
        Ok(settings) => settings,
        Err(payload) => {
            let message = cloacina_graph_core::panic_message(payload);
            return (i, 0, Err(TaskError::Panicked { message }));
        }
    };
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        // The input is kept for a retry; the last possible attempt takes it.
        let ctx = if attempt < policy.max_attempts {
            input.clone()
        } else {
            std::mem::take(&mut input)
        };
        let slot = crate::defer::Slot::acquire(slots).await;
        let outcome = run_one(Arc::clone(&task), ctx, timeout, Arc::clone(&slot)).await;
        slot.release();
        match outcome {
            Ok(output) => return (i, attempt, Ok(output)),
            Err(e) if policy.should_retry(attempt, &e) => {
                let delay = policy.delay_after(attempt, fastrand::f64());
                tracing::info!(task = task.id(), attempt, error = %e, ?delay, "task failed; retrying");
                tokio::time::sleep(delay).await;
            }
            Err(e) => return (i, attempt, Err(e)),
        }
    }
}

/// One attempt, spawned: `Ok(output)`, its error, `Panicked`, or `Timeout` (then aborted).
async fn run_one(
    task: Arc<dyn crate::Task>,
    mut ctx: Context<Value>,
    timeout: Option<Duration>,
    slot: Arc<crate::defer::Slot>,
) -> Result<Context<Value>, TaskError> {
    let mut handle = AbortOnDrop(tokio::spawn(slot.scope(async move {
        let outcome = task.execute(&mut ctx).await;
        outcome.map(|()| ctx)
    })));
    let joined = match timeout {
        Some(after) => match tokio::time::timeout(after, &mut handle.0).await {
            Ok(joined) => joined,
            Err(_) => return Err(TaskError::Timeout { after }),
        },
        None => (&mut handle.0).await,
    };
    match joined {
        Ok(outcome) => outcome,
        Err(e) if e.is_panic() => Err(TaskError::Panicked {
            message: cloacina_graph_core::panic_message(e.into_panic()),
        }),
        Err(e) => Err(TaskError::failed(format!("the task was stopped: {e}"))),
    }
}

/// Aborts the attempt's tokio task when dropped (timed out, cancelled, or the caller went
/// away): an attempt never outlives what waits for it.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FnTask;
    use serde_json::json;

    fn set(id: &'static str, deps: &[&str]) -> FnTask {
        FnTask::new(id, deps.to_vec(), move |mut ctx: Context| async move {
            ctx.insert_or_update(id, json!(true));
            ctx.insert_or_update("last", json!(id));
            Ok(ctx)
        })
    }

    #[tokio::test]
    async fn independent_tasks_run_concurrently() {
        // Both wait for each other: only a concurrent run finishes.
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let waits = |id: &'static str| {
            let barrier = Arc::clone(&barrier);
            FnTask::new(id, [] as [&str; 0], move |ctx: Context| {
                let barrier = Arc::clone(&barrier);
                async move {
                    barrier.wait().await;
                    Ok(ctx)
                }
            })
        };
        let wf = Workflow::builder("par")
            .task(waits("x"))
            .task(waits("y"))
            .build()
            .expect("valid");
        let result = tokio::time::timeout(Duration::from_secs(10), wf.run(Context::new()))
            .await
            .expect("x and y ran together");
        assert_eq!(result.status, WorkflowStatus::Completed);
    }

    #[tokio::test]
    async fn a_panicking_task_fails_alone_and_its_dependants_are_skipped() {
        let boom = FnTask::new("boom", [] as [&str; 0], |_ctx: Context| async move {
            if true {
                panic!("task exploded");
            }
            Ok(Context::new())
        });
        let wf = Workflow::builder("p")
            .task(boom)
            .task(set("after", &["boom"]))
            .task(set("fine", &[]))
            .build()
            .expect("valid");
        let result = wf.run(Context::new()).await;
        assert_eq!(result.status, WorkflowStatus::Failed);
        let states: Vec<(&str, TaskState)> = result
            .task_results
            .iter()
            .map(|r| (r.task_id.as_str(), r.state))
            .collect();
        assert_eq!(
            states,
            [
                ("boom", TaskState::Failed),
                ("after", TaskState::Skipped),
                ("fine", TaskState::Completed)
            ]
        );
        let error = result.task_results[0].error.as_deref().unwrap_or("");
        assert!(error.contains("task exploded"), "{error}");
        assert_eq!(result.task_results[1].attempts, 0);
        assert_eq!(result.final_context.get("fine"), Some(&json!(true)));
    }

    #[tokio::test]
    async fn outputs_flow_to_dependants_and_into_the_final_context() {
        let wf = Workflow::builder("chain")
            .task(set("a", &[]))
            .task(set("b", &["a"]))
            .task(FnTask::new("check", ["b"], |mut ctx: Context| async move {
                // Sees the input and both upstream outputs.
                for key in ["seed", "a", "b"] {
                    if ctx.get(key).is_none() {
                        return Err(TaskError::invalid(format!("missing {key}")));
                    }
                }
                ctx.insert("checked", json!(true))?;
                Ok(ctx)
            }))
            .build()
            .expect("valid");
        let mut input = Context::new();
        input.insert("seed", json!(1)).expect("new key");
        let result = wf.run(input).await;
        assert_eq!(result.status, WorkflowStatus::Completed, "{result:?}");
        assert_eq!(result.workflow_version, wf.version());
        assert_eq!(
            result.final_context.to_json().expect("json"),
            json!({"seed": 1, "a": true, "b": true, "last": "b", "checked": true})
        );
        assert!(result.task_results.iter().all(|r| r.attempts == 1));
    }

    #[tokio::test]
    async fn failures_are_retried_by_policy_and_timeouts_stop_an_attempt() {
        use crate::{RetryCondition, RetryPolicy};
        use std::sync::atomic::AtomicU32;
        let runs = Arc::new(AtomicU32::new(0));
        let counted = Arc::clone(&runs);
        let flaky = FnTask::new("flaky", [] as [&str; 0], move |ctx: Context| {
            let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                if n < 3 {
                    Err(TaskError::failed("connection reset"))
                } else {
                    Ok(ctx)
                }
            }
        })
        .retry_policy(
            RetryPolicy::builder()
                .max_attempts(5)
                .initial_delay(Duration::from_millis(1))
                .retry_condition(RetryCondition::TransientOnly)
                .build(),
        );
        let slow = FnTask::new("slow", [] as [&str; 0], |ctx: Context| async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok(ctx)
        })
        .timeout(Duration::from_millis(20))
        .retry_policy(
            RetryPolicy::builder()
                .max_attempts(2)
                .initial_delay(Duration::from_millis(1))
                .build(),
        );
        let invalid = FnTask::new("invalid", [] as [&str; 0], |_ctx: Context| async move {
            Err(TaskError::invalid("bad input"))
        })
        .retry_policy(
            RetryPolicy::builder()
                .max_attempts(4)
                .retry_condition(RetryCondition::TransientOnly)
                .build(),
        );
        let wf = Workflow::builder("retries")
            .task(flaky)
            .task(slow)
            .task(invalid)
            .build()
            .expect("valid");
        let result = wf.run(Context::new()).await;
        let r = |id: &str| {
            result
                .task_results
                .iter()
                .find(|r| r.task_id == id)
                .expect("task")
        };
        assert_eq!(
            (r("flaky").state, r("flaky").attempts),
            (TaskState::Completed, 3)
        );
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        assert_eq!(
            (r("slow").state, r("slow").attempts),
            (TaskState::Failed, 2)
        );
        assert!(r("slow")
            .error
            .as_deref()
            .unwrap_or("")
            .contains("timed out"));
        assert_eq!(
            (r("invalid").state, r("invalid").attempts),
            (TaskState::Failed, 1),
            "not transient: no retry"
        );
        assert_eq!(result.status, WorkflowStatus::Failed);
    }

    #[tokio::test]
    async fn trigger_rules_decide_what_runs_after_a_failure() {
        use crate::{always, context_value, task_failed, task_success, ValueOperator};
        let fails = FnTask::new("a", [] as [&str; 0], |_ctx: Context| async move {
            Err(TaskError::failed("a broke"))
        });
        let wf = Workflow::builder("rules")
            .task(fails)
            .task(set("default", &["a"]))
            .task(set("on_success", &["a"]).trigger_rule(task_success("a")))
            .task(set("fallback", &["a"]).trigger_rule(task_failed("a")))
            .task(set("cleanup", &["a"]).trigger_rule(always()))
            .task(set("after_skip", &["default"]))
            .task(set("gated", &[]).trigger_rule(context_value(
                "score",
                ValueOperator::GreaterThan,
                json!(80),
            )))
            .build()
            .expect("valid");
        let run = |score: i64| {
            let wf = wf.clone();
            async move {
                let mut input = Context::new();
                input.insert("score", json!(score)).expect("new key");
                let result = wf.run(input).await;
                let states: Vec<(String, TaskState)> = result
                    .task_results
                    .iter()
                    .map(|r| (r.task_id.clone(), r.state))
                    .collect();
                (result.status, states)
            }
        };
        let (status, states) = run(81).await;
        assert_eq!(status, WorkflowStatus::Failed);
        let expect = |gated: TaskState| {
            [
                ("a", TaskState::Failed),
                ("default", TaskState::Skipped),
                ("on_success", TaskState::Skipped),
                ("fallback", TaskState::Completed),
                ("cleanup", TaskState::Completed),
                ("after_skip", TaskState::Skipped),
                ("gated", gated),
            ]
            .map(|(id, s)| (id.to_owned(), s))
        };
        assert_eq!(states, expect(TaskState::Completed));
        let (_, states) = run(80).await;
        assert_eq!(
            states,
            expect(TaskState::Skipped),
            "80 is not greater than 80"
        );
    }

    #[tokio::test]
    async fn skipped_tasks_alone_leave_the_workflow_completed() {
        use crate::{context_value, ValueOperator};
        let wf = Workflow::builder("skips")
            .task(set("only_if_flag", &[]).trigger_rule(context_value(
                "flag",
                ValueOperator::Exists,
                Value::Null,
            )))
            .task(set("then", &["only_if_flag"]))
            .task(set("always_runs", &[]))
            .build()
            .expect("valid");
        let result = wf.run(Context::new()).await;
        assert_eq!(result.status, WorkflowStatus::Completed);
        assert_eq!(result.task_results[1].state, TaskState::Skipped);
    }

    /// A hand-written task that panics before returning its future, and one that blocks its
    /// thread past its timeout: each fails alone, and the run ends.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn panics_outside_the_future_and_blocking_tasks_fail_alone() {
        struct Eager;
        impl crate::Task for Eager {
            fn id(&self) -> &str {
                "eager"
            }
            fn dependencies(&self) -> &[String] {
                &[]
            }
            fn execute<'a>(&'a self, _ctx: &'a mut Context<Value>) -> crate::TaskFuture<'a> {
                panic!("before any future")
            }
        }
        let blocking = FnTask::new("blocking", [] as [&str; 0], |ctx: Context| async move {
            std::thread::sleep(Duration::from_millis(1500));
            Ok(ctx)
        })
        .timeout(Duration::from_millis(50));
        let wf = Workflow::builder("hard")
            .task(Eager)
            .task(blocking)
            .task(set("fine", &[]))
            .build()
            .expect("valid");
        let result = wf.run(Context::new()).await;
        let states: Vec<TaskState> = result.task_results.iter().map(|r| r.state).collect();
        assert_eq!(
            states,
            [TaskState::Failed, TaskState::Failed, TaskState::Completed]
        );
        let errors: Vec<&str> = result
            .task_results
            .iter()
            .map(|r| r.error.as_deref().unwrap_or(""))
            .collect();
        assert!(errors[0].contains("before any future"), "{errors:?}");
        assert!(errors[1].contains("timed out"), "{errors:?}");
    }
}
