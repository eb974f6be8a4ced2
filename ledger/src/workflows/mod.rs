//! The workflow store: what a durable workflow runner records in the same store as the
//! reactors' records, behind one [`WorkflowStore`] trait that every built-in backend
//! implements (reach it with [`Ledger::workflow_store`](crate::Ledger::workflow_store)).
//!
//! The store knows nothing of tasks' meaning: contexts are bytes (the runner writes JSON),
//! tasks are names. It keeps, per execution:
//! - its start ([`ExecutionRecord`]): workflow name and content version, input, and its
//!   **claim**: the runner (`owner`) that drives it and until when (`lease_until_unix_us`);
//! - each task's final outcome ([`TaskRecord`]): completed with its output, or failed with
//!   its error, and the attempts it took;
//! - its end ([`ExecutionEndRecord`]): Completed, Failed or Cancelled, with the final context.
//!
//! Writes are batches of [`WorkflowRecord`]s applied atomically ([`WorkflowStore::write`]),
//! so a runner group-commits the records of many executions at once. The **first record
//! wins** for each execution start, task and end: a record written again (a task re-run
//! after a crash whose record survived, a runner that lost its claim) changes nothing.
//!
//! Claims: an execution belongs to the runner named in its `owner` until its lease
//! expires. [`WorkflowStore::claim_unfinished`] atomically takes unfinished executions that
//! are the caller's own or whose lease expired (what a restarted runner resumes, and what
//! several runners on one PostgreSQL share); [`WorkflowStore::renew_claims`] extends a
//! runner's leases. Execution ids come from the store in blocks
//! ([`WorkflowStore::reserve_execution_ids`]), unique across runners sharing it.

mod memory;
pub(crate) mod signal;
mod sled_store;

pub(crate) use memory::MemoryWorkflows;
pub(crate) use signal::WorkSignal;
pub(crate) use sled_store::SledWorkflowState;

use serde::{Deserialize, Serialize};

use crate::{Commit, LedgerFuture};

/// The owner of an execution submitted for any runner to claim
/// ([`WorkflowStore::claim_expired`] takes it: its lease is 0).
pub const UNCLAIMED: &str = "";

/// An execution's start and its claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutionRecord {
    /// Unique in the store (from [`WorkflowStore::reserve_execution_ids`]).
    pub id: u64,
    /// The workflow's name.
    pub workflow: String,
    /// The workflow's content version when the execution started.
    pub version: String,
    /// The input context (the runner writes JSON).
    #[serde(with = "serde_bytes")]
    pub input: Vec<u8>,
    /// When it was submitted.
    pub created_at_unix_us: i64,
    /// The runner that drives it.
    pub owner: String,
    /// Until when `owner`'s claim holds without renewal.
    pub lease_until_unix_us: i64,
}

/// How a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskOutcome {
    /// It succeeded; its output is recorded.
    Completed,
    /// It failed after its last attempt.
    Failed,
}

/// A task's final outcome in one execution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// The execution.
    pub execution_id: u64,
    /// The task's id.
    pub task: String,
    /// Completed or failed.
    pub outcome: TaskOutcome,
    /// Attempts made.
    pub attempts: u32,
    /// The output context (empty when failed).
    #[serde(with = "serde_bytes")]
    pub output: Vec<u8>,
    /// The last attempt's error, when failed.
    pub error: Option<String>,
    /// When its first attempt started.
    pub started_at_unix_us: i64,
    /// When its last attempt ended.
    pub finished_at_unix_us: i64,
}

/// Where an execution is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExecutionStatus {
    /// Started, not ended.
    Running,
    /// Every task final, none failed.
    Completed,
    /// A task failed (or the execution could not go on: see its error).
    Failed,
    /// Cancelled by a caller.
    Cancelled,
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
impl ExecutionStatus {
    pub(crate) fn code(self) -> i64 {
        match self {
            Self::Running => 0,
            Self::Completed => 1,
            Self::Failed => 2,
            Self::Cancelled => 3,
        }
    }

    pub(crate) fn from_code(code: i64) -> Option<Self> {
        Some(match code {
            0 => Self::Running,
            1 => Self::Completed,
            2 => Self::Failed,
            3 => Self::Cancelled,
            _ => return None,
        })
    }
}

/// An execution's end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutionEndRecord {
    /// The execution.
    pub execution_id: u64,
    /// Completed, Failed or Cancelled (Running is refused).
    pub status: ExecutionStatus,
    /// The final context.
    #[serde(with = "serde_bytes")]
    pub final_context: Vec<u8>,
    /// Why it ended other than by its tasks (cancelled, workflow changed), if so.
    pub error: Option<String>,
    /// When it ended.
    pub finished_at_unix_us: i64,
}

/// One record of a [`WorkflowStore::write`] batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkflowRecord {
    /// An execution started (and is claimed by its owner).
    Started(ExecutionRecord),
    /// A task ended.
    Task(TaskRecord),
    /// An execution ended.
    Ended(ExecutionEndRecord),
}

/// An execution as stored: its start, its tasks' outcomes (in the order they were
/// recorded) and, once ended, its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredExecution {
    /// Its start and claim.
    pub execution: ExecutionRecord,
    /// Running until its end is recorded.
    pub status: ExecutionStatus,
    /// Task outcomes recorded so far.
    pub tasks: Vec<TaskRecord>,
    /// Its end, once recorded.
    pub end: Option<ExecutionEndRecord>,
    /// Times a runner took it over from another whose lease had expired
    /// ([`WorkflowStore::claim_expired`]): what caps re-runs of an execution that kills
    /// its runners. sled counts them in the process that holds the store.
    pub takeovers: u32,
}

/// The durable state of workflow executions. Every method is atomic for each execution it
/// touches.
pub trait WorkflowStore: Send + Sync + 'static {
    /// Backend name, for messages.
    fn workflow_backend(&self) -> &'static str;

    /// Applies `records`: a batch that is refused (a record no backend can store) writes
    /// nothing, and each execution's records in it are applied all or none. The SQL
    /// backends apply the whole batch in one transaction; sled applies it execution by
    /// execution, so an IO error or a crash in the middle of a write can leave some of the
    /// batch's executions written and others not (never part of one). For each execution
    /// start, task outcome and execution end, the first record written wins and later ones
    /// are ignored, so writing a batch again is safe. A task outcome or an end for an
    /// execution the store does not hold is ignored too (the runner never writes one; a
    /// record cannot create half an execution). `commit` says how durable the batch is
    /// when this returns.
    fn write<'a>(&'a self, records: &'a [WorkflowRecord], commit: Commit) -> LedgerFuture<'a, ()>;

    /// [`write`](Self::write) by runner `owner`, fenced: task outcomes and ends of
    /// executions that `owner` does not hold (another runner took them over after its lease
    /// expired) are dropped, so a runner that lost its claim records nothing more of them.
    /// Starts are written as given (first wins, as ever). Returns the executions whose
    /// records were dropped so (held by another runner), so the writer stops them.
    fn write_as<'a>(
        &'a self,
        owner: &'a str,
        records: &'a [WorkflowRecord],
        commit: Commit,
    ) -> LedgerFuture<'a, Vec<u64>>;

    /// Execution `id`, with its task outcomes and end.
    fn execution(&self, id: u64) -> LedgerFuture<'_, Option<StoredExecution>>;

    /// Atomically claims up to `limit` executions that have not ended and are `owner`'s
    /// already or whose lease expired before `now_unix_us`: each becomes `owner`'s until
    /// `lease_until_unix_us`. Returns them, oldest (lowest id) first, with their task outcomes.
    fn claim_unfinished<'a>(
        &'a self,
        owner: &'a str,
        now_unix_us: i64,
        lease_until_unix_us: i64,
        limit: usize,
    ) -> LedgerFuture<'a, Vec<StoredExecution>>;

    /// Atomically claims up to `limit` executions that have not ended and whose lease
    /// expired before `now_unix_us`, whoever held them: what several runners sharing a
    /// store take from each other when one dies, and how work submitted unclaimed
    /// ([`UNCLAIMED`], lease 0) reaches a runner. Each becomes `owner`'s until
    /// `lease_until_unix_us`; one taken from another runner counts a takeover
    /// ([`StoredExecution::takeovers`]). PostgreSQL skips rows another claim holds
    /// (`FOR UPDATE SKIP LOCKED`). Only executions of `workflows` are taken (what the
    /// claiming runner can run; none if it is empty). Returns them, oldest first, with their
    /// task outcomes.
    fn claim_expired<'a>(
        &'a self,
        owner: &'a str,
        now_unix_us: i64,
        lease_until_unix_us: i64,
        limit: usize,
        workflows: &'a [String],
    ) -> LedgerFuture<'a, Vec<StoredExecution>>;

    /// Extends the lease of every unfinished execution `owner` holds; returns their ids
    /// (an execution `owner` drives that is not among them was taken over).
    fn renew_claims<'a>(
        &'a self,
        owner: &'a str,
        lease_until_unix_us: i64,
    ) -> LedgerFuture<'a, Vec<u64>>;

    /// Changes whenever work may be waiting to be claimed: an execution submitted
    /// unclaimed through this store (any process sharing a PostgreSQL database hears it by
    /// `LISTEN`/`NOTIFY`; the other backends, in this process). `None` where the backend
    /// cannot tell. Runners still sweep for expired leases on a timer.
    fn work_signal(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }

    /// Reserves `count` execution ids (at least 1); returns the first. Ids are never handed
    /// out twice by one store, across processes and restarts, and start at 1.
    fn reserve_execution_ids(&self, count: u64) -> LedgerFuture<'_, u64>;

    /// How many executions have started and not ended, whoever holds them.
    fn unfinished_count(&self) -> LedgerFuture<'_, u64>;

    /// How many [`write`](Self::write)s a writer should keep in flight at once: more than
    /// one overlaps a networked store's round trips; 1 where writes serialize anyway.
    /// Concurrent writes never carry records of the same execution (a runner waits for each
    /// of an execution's records before making the next).
    fn concurrent_writes(&self) -> usize {
        1
    }
}

/// The records of `batch` by kind, in batch order: the order every backend applies them
/// (starts before the tasks and ends that may refer to them).
pub(crate) fn by_kind(
    batch: &[WorkflowRecord],
) -> (
    Vec<&ExecutionRecord>,
    Vec<&TaskRecord>,
    Vec<&ExecutionEndRecord>,
) {
    let (mut starts, mut tasks, mut ends) = (Vec::new(), Vec::new(), Vec::new());
    for r in batch {
        match r {
            WorkflowRecord::Started(s) => starts.push(s),
            WorkflowRecord::Task(t) => tasks.push(t),
            WorkflowRecord::Ended(e) => ends.push(e),
        }
    }
    (starts, tasks, ends)
}

/// Checks what no backend can store: an end that says Running, an id beyond `i64` for the
/// SQL backends, a NUL in a name or an error text (PostgreSQL refuses it).
pub(crate) fn check_batch(
    backend: &'static str,
    batch: &[WorkflowRecord],
) -> Result<(), crate::LedgerError> {
    let reject = |message: String| crate::LedgerError::Rejected { backend, message };
    for r in batch {
        let (id, texts): (u64, [&str; 3]) = match r {
            WorkflowRecord::Started(s) => (s.id, [&s.workflow, &s.version, &s.owner]),
            WorkflowRecord::Task(t) => (
                t.execution_id,
                [&t.task, t.error.as_deref().unwrap_or(""), ""],
            ),
            WorkflowRecord::Ended(e) => {
                if e.status == ExecutionStatus::Running {
                    return Err(reject(format!(
                        "the end of execution {} says Running",
                        e.execution_id
                    )));
                }
                (e.execution_id, [e.error.as_deref().unwrap_or(""), "", ""])
            }
        };
        if id == 0 || id > i64::MAX as u64 {
            return Err(reject(format!("execution id {id} is outside 1..=2^63-1")));
        }
        if let Some(text) = texts.iter().find(|n| n.contains('\0')) {
            return Err(reject(format!(
                "text {text:?} of execution {id} contains a NUL byte"
            )));
        }
    }
    Ok(())
}
