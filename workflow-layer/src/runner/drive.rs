//! One execution's driver: replays what the store recorded, runs the remaining tasks as
//! their dependencies complete, records each outcome (and waits for the record) before
//! releasing dependants, and records the end.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use cloacina_ledger::{
    now_unix_us, ExecutionEndRecord, ExecutionStatus, LedgerError, StoredExecution, TaskOutcome,
    TaskRecord, WorkflowRecord,
};
use futures_util::future::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};
use serde_json::Value;
use tokio::sync::watch;

use super::events::ExecutionEventKind as Ev;
use super::recorder::PendingStart;
use super::routing::KeyTicket;
use super::{stored, Inner};
use crate::run::run_attempts;
use crate::{
    Context, ExecutionState, TaskError, TaskResult, Workflow, WorkflowExecutionResult,
    WorkflowStatus,
};

/// What a caller asked of a running execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Control {
    Running,
    Paused,
    Cancelled,
    /// Shutdown: a paused execution's driver leaves it unfinished in the store.
    Detached,
    /// Another runner took the execution over: its attempts are stopped at once and
    /// nothing more of it is recorded here.
    Lost,
}

/// An execution to drive.
pub(super) struct Run {
    pub(super) id: u64,
    workflow: Arc<Workflow>,
    input: Option<Context<Value>>,
    /// For a resumed execution: what the store holds.
    stored: Option<StoredExecution>,
    created_at_unix_us: i64,
    /// For a fresh execution started before its start was written: the start, which the
    /// first records join if no batch has taken it yet.
    start: Option<Arc<PendingStart>>,
    /// Its place under its workflow's key limit, taken when it was scheduled (a resumed
    /// execution takes one when its driver starts).
    ticket: Option<KeyTicket>,
}

impl Run {
    pub(super) fn fresh(id: u64, workflow: Arc<Workflow>, input: Context<Value>, at: i64) -> Self {
        Self {
            id,
            workflow,
            input: Some(input),
            stored: None,
            created_at_unix_us: at,
            start: None,
            ticket: None,
        }
    }

    /// Its place under a key limit.
    pub(super) fn with_ticket(mut self, ticket: Option<KeyTicket>) -> Self {
        self.ticket = ticket;
        self
    }

    /// The execution runs while `start` is on its way to the store: its first records go
    /// with the start (or after it, never before), and fail if the start could not be
    /// written.
    pub(super) fn after(mut self, start: Arc<PendingStart>) -> Self {
        self.start = Some(start);
        self
    }

    pub(super) fn resumed(workflow: Arc<Workflow>, stored: StoredExecution) -> Self {
        Self {
            id: stored.execution.id,
            workflow,
            input: None,
            created_at_unix_us: stored.execution.created_at_unix_us,
            stored: Some(stored),
            start: None,
            ticket: None,
        }
    }
}

type Outcome = Result<Arc<WorkflowExecutionResult>, Arc<LedgerError>>;

/// Drives `run` to its end; `Err` if a record could not be written (the execution then
/// stays unfinished in the store).
pub(super) async fn drive(
    inner: &Arc<Inner>,
    run: Run,
    mut control: watch::Receiver<Control>,
) -> Outcome {
    let Run {
        id,
        workflow,
        input,
        stored,
        created_at_unix_us,
        mut start,
        ticket,
    } = run;
    let name = workflow.name().to_owned();
    let start_time = stored::time(created_at_unix_us);
    let tasks = workflow.tasks();
    let mut results = crate::run::not_started(tasks);
    let end = |state: &ExecutionState,
               results: &mut Vec<TaskResult>,
               status: WorkflowStatus,
               error: Option<String>| {
        for (r, s) in results.iter_mut().zip(state.states()) {
            r.state = *s;
        }
        let end_time = SystemTime::now();
        WorkflowExecutionResult {
            execution_id: id,
            workflow_name: workflow.name().to_owned(),
            workflow_version: workflow.version().to_owned(),
            status,
            start_time,
            end_time,
            duration: end_time.duration_since(start_time).unwrap_or_default(),
            final_context: state.final_context(),
            error,
            task_results: std::mem::take(results),
        }
    };

    // Its place under a key limit: taken at `schedule`, or now from the stored input.
    let mut ticket = ticket.or_else(|| {
        key_of(inner, &workflow, input.as_ref(), stored.as_ref())
            .and_then(|value| inner.keys.ticket(&name, value))
    });
    // The starting state: fresh, or the store's record replayed.
    let (mut state, mut ready) = match (input, stored) {
        (Some(input), _) => {
            inner.emit(id, &name, || Ev::Started);
            let mut state = ExecutionState::new(&workflow, input);
            let ready = state.start_ready();
            (state, ready)
        }
        (None, Some(stored)) => {
            inner.emit(id, &name, || Ev::Resumed);
            match replay(&workflow, &stored, &mut results) {
                Ok(replayed) => replayed,
                Err(reason) => {
                    // Nothing can run: end it Failed, saying why (the completed tasks'
                    // outputs stay in the store).
                    tracing::error!(execution = id, workflow = %name, %reason, "cannot resume");
                    let state = ExecutionState::new(&workflow, Context::new());
                    let result = end(&state, &mut results, WorkflowStatus::Failed, Some(reason));
                    return finish(inner, &mut start, result, ExecutionStatus::Failed).await;
                }
            }
        }
        (None, None) => {
            let state = ExecutionState::new(&workflow, Context::new());
            let reason = Some("nothing to run: no input and no stored execution".to_owned());
            let result = end(&state, &mut results, WorkflowStatus::Failed, reason);
            return finish(inner, &mut start, result, ExecutionStatus::Failed).await;
        }
    };

    // Under a key limit, its tasks wait for a place (held until the execution ends).
    if let Some(ticket) = ticket.as_mut() {
        if !ticket.try_take() {
            let (key, value) = (inner.keys.key_name(&name), ticket.value().to_owned());
            inner.emit(id, &name, || Ev::WaitingForKey { key, value });
            loop {
                tokio::select! {
                    () = ticket.wait() => break,
                    written = start_written(&start), if start.is_some() => match written {
                        Ok(()) => start = None,
                        Err(e) => return Err(e),
                    },
                    changed = control.changed() => {
                        let now = if changed.is_ok() { *control.borrow() } else { Control::Detached };
                        match now {
                            Control::Cancelled => {
                                let result = end(&state, &mut results, WorkflowStatus::Cancelled,
                                    Some("cancelled".into()));
                                return finish(inner, &mut start, result, ExecutionStatus::Cancelled)
                                    .await;
                            }
                            Control::Detached | Control::Lost => {
                                // Shutdown: left unfinished; the next runner start resumes it.
                                // Lost: its new holder drives it.
                                let result = end(&state, &mut results, WorkflowStatus::Paused, None);
                                return Ok(Arc::new(result));
                            }
                            Control::Paused => inner.emit(id, &name, || Ev::Paused),
                            Control::Running => inner.emit(id, &name, || Ev::Unpaused),
                        }
                    }
                }
            }
        }
    }
    let mut running = FuturesUnordered::new();
    loop {
        let mode = *control.borrow();
        if (mode == Control::Detached && running.is_empty()) || mode == Control::Lost {
            // Paused at shutdown: left unfinished; the next runner start resumes it.
            let result = end(&state, &mut results, WorkflowStatus::Paused, None);
            return Ok(Arc::new(result));
        }
        if mode == Control::Running {
            for i in ready.drain(..) {
                let task = Arc::clone(&tasks[i]);
                let input = state.input_for(i);
                let slots = Arc::clone(inner.pools.slots_for(&name, task.id()));
                results[i].started = Some(SystemTime::now());
                inner.emit(id, &name, || Ev::TaskStarted {
                    task: task.id().to_owned(),
                });
                running.push(async move {
                    let (i, attempts, outcome) = run_attempts(task, input, i, Some(&slots)).await;
                    (i, attempts, outcome, SystemTime::now())
                });
            }
        }
        if running.is_empty() && ready.is_empty() {
            break;
        }
        tokio::select! {
            written = start_written(&start), if start.is_some() => {
                match written {
                    // Written: later records go straight to the recorder.
                    Ok(()) => start = None,
                    // Nothing of this execution can be recorded: stop its running tasks
                    // (dropping the attempts aborts them) rather than let them go on.
                    Err(e) => {
                        drop(running);
                        tracing::error!(execution = id, workflow = %name, error = %e,
                            "execution start not recorded; its tasks are stopped");
                        return Err(e);
                    }
                }
            }
            changed = control.changed() => {
                let now = if changed.is_ok() { *control.borrow() } else { Control::Detached };
                match now {
                    Control::Cancelled => {
                        // Dropping the attempts aborts their tokio tasks.
                        drop(running);
                        let result = end(&state, &mut results, WorkflowStatus::Cancelled,
                            Some("cancelled".into()));
                        return finish(inner, &mut start, result, ExecutionStatus::Cancelled)
                            .await;
                    }
                    Control::Lost => {
                        // Taken over: stop its attempts (dropping them aborts them) and
                        // record nothing; the new holder runs what is unrecorded.
                        drop(running);
                        let result = end(&state, &mut results, WorkflowStatus::Paused,
                            Some("claim lost: another runner took this execution over".into()));
                        return Ok(Arc::new(result));
                    }
                    Control::Paused => inner.emit(id, &name, || Ev::Paused),
                    Control::Running => inner.emit(id, &name, || Ev::Unpaused),
                    // Handled at the top of the loop once nothing runs.
                    Control::Detached => {}
                }
            }
            Some(first) = running.next() => {
                // Its outcome, with every other that has ended by now, goes in one record
                // batch; tasks that end while it is written go in the next. Dependants start
                // once every outcome applied so far is recorded.
                let mut done = vec![first];
                done.extend(std::iter::from_fn(|| running.next().now_or_never().flatten()));
                while !done.is_empty() {
                    let mut records = Vec::with_capacity(done.len());
                    let mut events = Vec::with_capacity(done.len());
                    for d in done.drain(..) {
                        let i = d.0;
                        let (record, event) =
                            outcome_record(id, &name, &tasks[i], &mut results[i], &mut state, d);
                        records.push(WorkflowRecord::Task(record));
                        events.push(event);
                    }
                    if state.is_finished() {
                        // The last outcomes and the end go in one record batch.
                        let status = state.status();
                        let result = end(&state, &mut results, status, None);
                        let status = stored_status(status);
                        return finish_with(inner, &mut start, result, status, records, events)
                            .await;
                    }
                    let recorded = record(inner, &mut start, records);
                    tokio::pin!(recorded);
                    loop {
                        tokio::select! {
                            written = &mut recorded => {
                                written?;
                                break;
                            }
                            Some(d) = running.next() => done.push(d),
                        }
                    }
                    for event in events {
                        inner.emit(id, &name, || event);
                    }
                }
                ready.extend(state.start_ready());
            }
        }
    }
    // Every task final (all were replayed, or skipped).
    let status = state.status();
    let result = end(&state, &mut results, status, None);
    finish(inner, &mut start, result, stored_status(status)).await
}

/// The value of `workflow`'s key limit in the execution's input, if it has one.
pub(super) fn key_of(
    inner: &Inner,
    workflow: &Workflow,
    input: Option<&Context<Value>>,
    stored: Option<&StoredExecution>,
) -> Option<String> {
    if !inner.keys.limits(workflow.name()) {
        return None;
    }
    match (input, stored) {
        (Some(input), _) => inner.keys.key_of(workflow.name(), input),
        (None, Some(stored)) => stored::context(&stored.execution.input)
            .ok()
            .and_then(|input| inner.keys.key_of(workflow.name(), &input)),
        (None, None) => None,
    }
}

/// Waits until the execution's start (if it is still on its way) is written.
async fn start_written(start: &Option<Arc<PendingStart>>) -> Result<(), Arc<LedgerError>> {
    match start {
        Some(pending) => pending.written().await,
        None => Ok(()),
    }
}

/// Records `records` and returns once they are written: with the execution's start while
/// that waits for a batch (one commit for both), otherwise once the start is written.
async fn record(
    inner: &Inner,
    start: &mut Option<Arc<PendingStart>>,
    records: Vec<WorkflowRecord>,
) -> Result<(), Arc<LedgerError>> {
    let records = match start.take() {
        None => records,
        Some(pending) => match pending.join(records) {
            Ok(()) => return pending.written().await,
            Err(records) => {
                pending.written().await?;
                records
            }
        },
    };
    inner.recorder.record(records).await
}

/// What one task's run ended with: its index, the attempts made, its output or error, and
/// when it ended.
type Done = (usize, u32, Result<Context<Value>, TaskError>, SystemTime);

/// A task's end (`done`) applied to `state` and to its `result`: its record and its event.
fn outcome_record(
    id: u64,
    workflow: &str,
    task: &Arc<dyn crate::Task>,
    result: &mut TaskResult,
    state: &mut ExecutionState,
    (i, attempts, outcome, ended): Done,
) -> (TaskRecord, Ev) {
    result.ended = Some(ended);
    result.attempts = attempts;
    let started = result.started.map_or(0, stored::unix_us);
    let task_id = task.id().to_owned();
    let encoded = outcome.and_then(|out| {
        stored::bytes(&out)
            .map(|b| (out, b))
            .map_err(TaskError::from)
    });
    let (kind, output, error) = match encoded {
        Ok((output, bytes)) => {
            state.completed(i, output);
            (TaskOutcome::Completed, bytes, None)
        }
        Err(e) => {
            // No store keeps NUL in text (PostgreSQL refuses it).
            let error = e.to_string().replace('\0', "\\0");
            tracing::warn!(execution = id, %workflow, task = %task_id, attempts, %error,
                "task failed");
            result.error = Some(error.clone());
            state.failed(i);
            (TaskOutcome::Failed, Vec::new(), Some(error))
        }
    };
    let event = match &error {
        None => Ev::TaskCompleted {
            task: task_id.clone(),
            attempts,
        },
        Some(error) => Ev::TaskFailed {
            task: task_id.clone(),
            attempts,
            error: error.clone(),
        },
    };
    let record = TaskRecord {
        execution_id: id,
        task: task_id,
        outcome: kind,
        attempts,
        output,
        error,
        started_at_unix_us: started,
        finished_at_unix_us: stored::unix_us(ended),
    };
    (record, event)
}

fn stored_status(status: WorkflowStatus) -> ExecutionStatus {
    match status {
        WorkflowStatus::Completed => ExecutionStatus::Completed,
        WorkflowStatus::Cancelled => ExecutionStatus::Cancelled,
        _ => ExecutionStatus::Failed,
    }
}

/// Replays the store's record of an execution: the input, then each recorded task outcome
/// wave by wave as the DAG releases it. Returns the state and the tasks left to run, or why
/// the execution cannot go on (workflow changed, unreadable record).
fn replay(
    workflow: &Workflow,
    stored: &StoredExecution,
    results: &mut [TaskResult],
) -> Result<(ExecutionState, Vec<usize>), String> {
    if stored.execution.version != workflow.version() {
        return Err(format!(
            "workflow `{}` changed while execution {} was running (recorded version {}, \
             this runner has {}); it is ended Failed rather than mixing two versions",
            workflow.name(),
            stored.execution.id,
            stored.execution.version,
            workflow.version()
        ));
    }
    let input = stored::context(&stored.execution.input)
        .map_err(|e| format!("stored input of execution {}: {e}", stored.execution.id))?;
    let mut recorded: HashMap<&str, &TaskRecord> =
        stored.tasks.iter().map(|t| (t.task.as_str(), t)).collect();
    let tasks = workflow.tasks();
    let mut state = ExecutionState::new(workflow, input);
    let mut to_run = Vec::new();
    loop {
        let ready = state.start_ready();
        let mut replayed = false;
        for i in ready {
            match recorded.remove(tasks[i].id()) {
                Some(r) => {
                    replayed = true;
                    results[i].attempts = r.attempts;
                    results[i].error = r.error.clone();
                    results[i].started = Some(stored::time(r.started_at_unix_us));
                    results[i].ended = Some(stored::time(r.finished_at_unix_us));
                    match r.outcome {
                        TaskOutcome::Completed => {
                            let output = stored::context(&r.output)
                                .map_err(|e| format!("stored output of task `{}`: {e}", r.task))?;
                            state.completed(i, output);
                        }
                        TaskOutcome::Failed => state.failed(i),
                    }
                }
                None => to_run.push(i),
            }
        }
        if !replayed {
            break;
        }
    }
    Ok((state, to_run))
}

/// Records the end of an execution.
async fn finish(
    inner: &Arc<Inner>,
    start: &mut Option<Arc<PendingStart>>,
    result: WorkflowExecutionResult,
    status: ExecutionStatus,
) -> Outcome {
    finish_with(inner, start, result, status, Vec::new(), Vec::new()).await
}

/// Records `last` (the outcomes of the tasks that ended last, if any) with the end of the
/// execution in one batch, then emits `last_events` and the end.
async fn finish_with(
    inner: &Arc<Inner>,
    start: &mut Option<Arc<PendingStart>>,
    result: WorkflowExecutionResult,
    status: ExecutionStatus,
    mut records: Vec<WorkflowRecord>,
    last_events: Vec<Ev>,
) -> Outcome {
    let final_context = stored::bytes(&result.final_context).unwrap_or_else(|_| b"{}".to_vec());
    let size = final_context.len();
    records.push(WorkflowRecord::Ended(ExecutionEndRecord {
        execution_id: result.execution_id,
        status,
        final_context,
        error: result.error.clone(),
        finished_at_unix_us: now_unix_us(),
    }));
    record(inner, start, records).await?;
    let (id, name) = (result.execution_id, result.workflow_name.as_str());
    for event in last_events {
        inner.emit(id, name, || event);
    }
    inner.emit(id, name, || Ev::Finished {
        status: result.status,
    });
    let result = Arc::new(result);
    // Kept while the driver is still in the live map: a `wait` finds one or the other.
    super::lock(&inner.ended).insert(Arc::clone(&result), size);
    Ok(result)
}
