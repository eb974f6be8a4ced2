//! What the SQL backends' workflow stores share: row shapes, their conversion into
//! records, and the first-wins staging of a batch.

use std::collections::HashSet;

use crate::workflows::{by_kind, check_batch};
use crate::{
    ExecutionEndRecord, ExecutionRecord, ExecutionStatus, LedgerError, StoredExecution,
    TaskOutcome, TaskRecord, WorkflowRecord,
};

/// The columns of `wf_executions`, in [`ExecRow`] order.
pub(crate) const EXEC_COLUMNS: &str = "id, workflow, version, input, created_at_us, owner, \
     lease_until_us, status, final_context, error, finished_at_us, takeovers";
/// The columns of `wf_tasks`, in [`TaskRow`] order.
pub(crate) const TASK_COLUMNS: &str =
    "execution_id, task, outcome, attempts, output, error, started_at_us, finished_at_us";

/// A `wf_executions` row.
pub(crate) type ExecRow = (
    i64,
    String,
    String,
    Vec<u8>,
    i64,
    String,
    i64,
    i64,
    Option<Vec<u8>>,
    Option<String>,
    Option<i64>,
    i64,
);
/// A `wf_tasks` row.
pub(crate) type TaskRow = (i64, String, i64, i64, Vec<u8>, Option<String>, i64, i64);

fn corrupt(backend: &'static str, location: &str, reason: String) -> LedgerError {
    LedgerError::Corrupt {
        backend,
        location: location.to_owned(),
        reason,
    }
}

/// An id read back from a column (stored from a `u64` below 2^63).
pub(crate) fn id_of(backend: &'static str, location: &str, id: i64) -> Result<u64, LedgerError> {
    u64::try_from(id)
        .map_err(|_| corrupt(backend, location, format!("execution id {id} is negative")))
}

/// Rows of one execution as a [`StoredExecution`].
pub(crate) fn stored(
    backend: &'static str,
    location: &str,
    row: ExecRow,
    tasks: Vec<TaskRow>,
) -> Result<StoredExecution, LedgerError> {
    let (
        id,
        workflow,
        version,
        input,
        created,
        owner,
        lease,
        status,
        final_context,
        error,
        finished,
        takeovers,
    ) = row;
    let id = id_of(backend, location, id)?;
    let status = ExecutionStatus::from_code(status).ok_or_else(|| {
        corrupt(
            backend,
            location,
            format!("execution {id} has status code {status}"),
        )
    })?;
    let end = match (status, final_context, finished) {
        (ExecutionStatus::Running, _, _) => None,
        (status, Some(final_context), Some(finished_at_unix_us)) => Some(ExecutionEndRecord {
            execution_id: id,
            status,
            final_context,
            error,
            finished_at_unix_us,
        }),
        _ => {
            return Err(corrupt(
                backend,
                location,
                format!("execution {id} ended without its final context or time"),
            ))
        }
    };
    let tasks = tasks
        .into_iter()
        .map(
            |(_, task, outcome, attempts, output, error, started, finished)| {
                let outcome = match outcome {
                    0 => TaskOutcome::Completed,
                    1 => TaskOutcome::Failed,
                    other => {
                        return Err(corrupt(
                            backend,
                            location,
                            format!("task `{task}` of execution {id} has outcome code {other}"),
                        ))
                    }
                };
                Ok(TaskRecord {
                    execution_id: id,
                    task,
                    outcome,
                    attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                    output,
                    error,
                    started_at_unix_us: started,
                    finished_at_unix_us: finished,
                })
            },
        )
        .collect::<Result<Vec<_>, _>>()?;
    Ok(StoredExecution {
        execution: ExecutionRecord {
            id,
            workflow,
            version,
            input,
            created_at_unix_us: created,
            owner,
            lease_until_unix_us: lease,
        },
        status,
        tasks,
        end,
        takeovers: u32::try_from(takeovers).unwrap_or(u32::MAX),
    })
}

/// Groups task rows (sorted by execution id) under their executions.
pub(crate) fn assemble(
    backend: &'static str,
    location: &str,
    rows: Vec<ExecRow>,
    tasks: Vec<TaskRow>,
) -> Result<Vec<StoredExecution>, LedgerError> {
    let mut tasks = tasks.into_iter().peekable();
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let id = row.0;
        let mut mine = Vec::new();
        while let Some(t) = tasks.next_if(|t| t.0 <= id) {
            if t.0 == id {
                mine.push(t);
            }
        }
        out.push(stored(backend, location, row, mine)?);
    }
    Ok(out)
}

pub(crate) fn outcome_code(outcome: TaskOutcome) -> i64 {
    match outcome {
        TaskOutcome::Completed => 0,
        TaskOutcome::Failed => 1,
    }
}

/// A checked batch by kind, each execution start, task and end once (the first in the
/// batch wins, as against the store).
pub(crate) struct Staged<'a> {
    pub(crate) starts: Vec<&'a ExecutionRecord>,
    pub(crate) tasks: Vec<&'a TaskRecord>,
    pub(crate) ends: Vec<&'a ExecutionEndRecord>,
}

pub(crate) fn stage<'a>(
    backend: &'static str,
    batch: &'a [WorkflowRecord],
) -> Result<Staged<'a>, LedgerError> {
    check_batch(backend, batch)?;
    let (starts, tasks, ends) = by_kind(batch);
    let mut seen = HashSet::new();
    let mut starts: Vec<&ExecutionRecord> =
        starts.into_iter().filter(|s| seen.insert(s.id)).collect();
    // A start can update its row (an end written with it): locked in id order too.
    starts.sort_by_key(|s| s.id);
    let mut seen = HashSet::new();
    let tasks = tasks
        .into_iter()
        .filter(|t| seen.insert((t.execution_id, t.task.as_str())))
        .collect();
    let mut seen = HashSet::new();
    let mut ends: Vec<&ExecutionEndRecord> = ends
        .into_iter()
        .filter(|e| seen.insert(e.execution_id))
        .collect();
    // Rows are updated (locked) in id order, as lease renewal locks them.
    ends.sort_by_key(|e| e.execution_id);
    Ok(Staged {
        starts,
        tasks,
        ends,
    })
}
