//! Execution events: what a [`DefaultRunner::subscribe`](super::DefaultRunner::subscribe)r sees.

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
