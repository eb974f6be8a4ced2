//! Execution events: what a [`DefaultRunner::subscribe`](super::DefaultRunner::subscribe)r
//! sees live, and what [`DefaultRunner::history`](super::DefaultRunner::history) reads back
//! from the store.

use std::time::SystemTime;

use cloacina_ledger::{StoredExecution, TaskOutcome};

use super::stored;
use crate::WorkflowStatus;

/// Something that happened to an execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutionEvent {
    /// The execution.
    pub execution_id: u64,
    /// Its workflow.
    pub workflow: String,
    /// What happened.
    pub kind: ExecutionEventKind,
}

/// What happened to an execution.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExecutionEventKind {
    /// Its start was recorded.
    Started,
    /// A runner took it up again after an interruption.
    Resumed,
    /// A [`KeyLimit`](super::KeyLimit) holds it back: as many executions with its key
    /// value as the limit allows are running. Its tasks start when one of them ends.
    WaitingForKey {
        /// The context key.
        key: String,
        /// Its value in this execution's input.
        value: String,
    },
    /// A task's first attempt is about to run.
    TaskStarted {
        /// The task.
        task: String,
    },
    /// A task completed and its output is recorded.
    TaskCompleted {
        /// The task.
        task: String,
        /// Attempts it took.
        attempts: u32,
    },
    /// A task failed (after its retries) and that is recorded.
    TaskFailed {
        /// The task.
        task: String,
        /// Attempts made.
        attempts: u32,
        /// The last attempt's error.
        error: String,
    },
    /// It was paused.
    Paused,
    /// It was let go on after a pause.
    Unpaused,
    /// Its end is recorded.
    Finished {
        /// Completed, Failed or Cancelled.
        status: WorkflowStatus,
    },
}

/// An event of an execution as the store recorded it, with when it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    /// When: the execution's submission, a task's first start or end, the execution's end.
    pub at: SystemTime,
    /// What.
    pub event: ExecutionEvent,
}

/// The events the store's record of an execution holds: `Started` first, then each
/// recorded task's `TaskStarted` and `TaskCompleted` or `TaskFailed` in time order (an
/// outcome never before its own start, whatever the clocks of the runners that recorded
/// them said), then `Finished` if it ended. (Pauses and resumptions are not recorded: they
/// change no outcome.)
pub(super) fn recorded(stored: &StoredExecution) -> Vec<RecordedEvent> {
    let workflow = &stored.execution.workflow;
    let event = |at: i64, kind: ExecutionEventKind| RecordedEvent {
        at: stored::time(at),
        event: ExecutionEvent {
            execution_id: stored.execution.id,
            workflow: workflow.clone(),
            kind,
        },
    };
    let mut tasks = Vec::with_capacity(2 * stored.tasks.len());
    for t in &stored.tasks {
        let task = t.task.clone();
        tasks.push(event(
            t.started_at_unix_us,
            ExecutionEventKind::TaskStarted { task: task.clone() },
        ));
        let kind = match t.outcome {
            TaskOutcome::Completed => ExecutionEventKind::TaskCompleted {
                task,
                attempts: t.attempts,
            },
            TaskOutcome::Failed => ExecutionEventKind::TaskFailed {
                task,
                attempts: t.attempts,
                error: t.error.clone().unwrap_or_default(),
            },
        };
        tasks.push(event(t.finished_at_unix_us.max(t.started_at_unix_us), kind));
    }
    // Stable: at equal times a task's start stays before its outcome.
    tasks.sort_by_key(|e| e.at);
    let mut events = Vec::with_capacity(2 + tasks.len());
    events.push(event(
        stored.execution.created_at_unix_us,
        ExecutionEventKind::Started,
    ));
    events.append(&mut tasks);
    if let Some(end) = &stored.end {
        events.push(event(
            end.finished_at_unix_us,
            ExecutionEventKind::Finished {
                status: stored::status(end.status),
            },
        ));
    }
    events
}
