//! Stored executions as the runner's types: statuses, contexts and results.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cloacina_ledger::{ExecutionStatus, StoredExecution, TaskOutcome};
use serde_json::Value;

use crate::{
    Context, ContextError, TaskResult, TaskState, Workflow, WorkflowExecutionResult, WorkflowStatus,
};

pub(crate) fn status(s: ExecutionStatus) -> WorkflowStatus {
    match s {
        ExecutionStatus::Running => WorkflowStatus::Running,
        ExecutionStatus::Completed => WorkflowStatus::Completed,
        ExecutionStatus::Failed => WorkflowStatus::Failed,
        ExecutionStatus::Cancelled => WorkflowStatus::Cancelled,
    }
}

pub(crate) fn time(unix_us: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(u64::try_from(unix_us).unwrap_or(0))
}

pub(crate) fn unix_us(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// A context from the JSON bytes the runner stored.
pub(crate) fn context(bytes: &[u8]) -> Result<Context<Value>, ContextError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| ContextError::Json {
        key: "(stored context)".into(),
        message: e.to_string(),
    })?;
    Context::from_json(value)
}

/// A context as the JSON bytes the runner stores.
pub(crate) fn bytes(ctx: &Context<Value>) -> Result<Vec<u8>, ContextError> {
    serde_json::to_vec(&ctx.to_json()?).map_err(|e| ContextError::Json {
        key: "(whole context)".into(),
        message: e.to_string(),
    })
}

/// The result of an ended execution read from the store (`None` while it runs). Tasks of
/// `workflow` (when known here) without a record are reported Skipped.
pub(crate) fn result(
    stored: &StoredExecution,
    workflow: Option<&Workflow>,
) -> Option<WorkflowExecutionResult> {
    let end = stored.end.as_ref()?;
    let mut task_results: Vec<TaskResult> = stored
        .tasks
        .iter()
        .map(|t| TaskResult {
            task_id: t.task.clone(),
            state: match t.outcome {
                TaskOutcome::Completed => TaskState::Completed,
                TaskOutcome::Failed => TaskState::Failed,
            },
            attempts: t.attempts,
            error: t.error.clone(),
            started: Some(time(t.started_at_unix_us)),
            ended: Some(time(t.finished_at_unix_us)),
        })
        .collect();
    if let Some(workflow) = workflow {
        let mut ordered = Vec::with_capacity(workflow.tasks().len());
        for task in workflow.tasks() {
            match task_results.iter().position(|r| r.task_id == task.id()) {
                Some(i) => ordered.push(task_results.swap_remove(i)),
                None => ordered.push(TaskResult {
                    task_id: task.id().to_owned(),
                    state: TaskState::Skipped,
                    attempts: 0,
                    error: None,
                    started: None,
                    ended: None,
                }),
            }
        }
        ordered.append(&mut task_results);
        task_results = ordered;
    }
    let start_time = time(stored.execution.created_at_unix_us);
    let end_time = time(end.finished_at_unix_us);
    Some(WorkflowExecutionResult {
        execution_id: stored.execution.id,
        workflow_name: stored.execution.workflow.clone(),
        workflow_version: stored.execution.version.clone(),
        status: status(end.status),
        start_time,
        end_time,
        duration: end_time.duration_since(start_time).unwrap_or_default(),
        final_context: context(&end.final_context).unwrap_or_default(),
        error: end.error.clone(),
        task_results,
    })
}
