//! [`WorkflowStore`] for [`SledLedger`]: tree `workflows` of the ledger's sled database.
//!
//! Keys (ids big-endian, so scans run in id order), one row per execution holding its
//! start and claim, its task outcomes (by task id) and its end:
//! - `U id`: the row of an execution that has not ended, sealed: what claims scan;
//! - `E id`: the row of an ended execution (moved from `U id` by its end), sealed;
//! - `N`: the last execution id handed out.
//!
//! One key per execution rather than one per task outcome: sled's cost is per key written
//! (a simple execution is 3 key writes: its start, then its end moving the row).
//!
//! A write is applied under the store's lock (first-wins checks read what they then
//! write), one key write per execution it touches (two for an end: `E id` written, then
//! `U id` removed; an open that finds both removes the `U` row); [`Commit::Durable`] ends
//! with the ledger's flush.
//!
//! Under that lock the store also keeps every unfinished execution's row in memory
//! ([`SledWorkflowState`], read from the `U` rows at first use): sled lets one process open
//! a store, so that copy is authoritative, and writes, claims and lease renewals never read
//! back or decode what this process wrote. It holds the unfinished executions (what a
//! runner drives anyway); ended rows are read from sled when asked for. A failed sled write
//! drops the copy, and the next call reads it again from sled. An unfinished row that does
//! not decode is logged and left in the store: the calls that touch that execution fail
//! with [`LedgerError::Corrupt`], claims pass it by, and every other execution goes on.

use std::collections::{BTreeMap, HashMap};
use std::sync::MutexGuard;

use serde::{Deserialize, Serialize};

use super::signal::submits_work;
use super::{
    by_kind, check_batch, ExecutionEndRecord, ExecutionRecord, ExecutionStatus, StoredExecution,
    TaskRecord, WorkSignal, WorkflowRecord, WorkflowStore, UNCLAIMED,
};
use crate::frame::{decode_sealed, encode_sealed, frame_error};
use crate::sled_backend::sled_error;
use crate::{Commit, LedgerError, LedgerFuture, SledLedger};

const BACKEND: &str = "sled";
const LAST_ID_KEY: &[u8] = b"N";

/// What `U id` and `E id` hold.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ExecutionRow {
    execution: ExecutionRecord,
    status: ExecutionStatus,
    /// Task outcomes, sorted by task id (one each: the first recorded).
    tasks: Vec<TaskRecord>,
    end: Option<ExecutionEndRecord>,
}

/// The workflow store's state under its lock: the unfinished executions' rows by id (what
/// the `U` keys hold), once read from sled.
#[derive(Debug, Default)]
pub(crate) struct SledWorkflowState {
    unfinished: Option<BTreeMap<u64, ExecutionRow>>,
    /// Unfinished executions whose rows do not decode, with why: only the calls that
    /// touch them fail.
    corrupt: BTreeMap<u64, String>,
    /// Takeovers of unfinished executions in this process (not stored: one process holds
    /// a sled store, so only runners sharing it take over from each other).
    takeovers: HashMap<u64, u32>,
    /// Bumped when work is submitted unclaimed.
    signal: WorkSignal,
}

/// Where a row a write works on came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// Started by this write.
    New,
    /// An unfinished execution (`U id`).
    Unfinished,
    /// An ended execution (`E id`).
    Ended,
}

/// A row a write works on: where it came from and whether the write changed it.
struct Staged {
    row: ExecutionRow,
    origin: Origin,
    changed: bool,
}

fn key(kind: u8, id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(kind);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

impl SledLedger {
    /// Takes the store's lock; returns it with the unfinished rows (read from sled if this
    /// is the first use, or the last write failed).
    fn wf_state(&self) -> Result<MutexGuard<'_, SledWorkflowState>, LedgerError> {
        let mut state = match self.workflow_state.lock() {
            Ok(state) => state,
            Err(poisoned) => {
                // A panic under the lock may have left rows moved out: read them again.
                let mut state = poisoned.into_inner();
                state.unfinished = None;
                self.workflow_state.clear_poison();
                state
            }
        };
        if state.unfinished.is_none() {
            let mut rows = BTreeMap::new();
            state.corrupt.clear();
            for entry in self.workflows.scan_prefix([b'U']) {
                let (k, bytes) = entry.map_err(|e| self.wf_read_error(e))?;
                let id = k
                    .get(1..)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(u64::from_be_bytes);
                if let Some(id) = id {
                    if self.settle_ended(id)? {
                        continue;
                    }
                }
                let decoded: Result<ExecutionRow, _> =
                    self.wf_decode(&bytes, || format!("unfinished execution {id:?}"));
                match (decoded, id) {
                    (Ok(row), _) => {
                        rows.insert(row.execution.id, row);
                    }
                    (Err(e), Some(id)) => {
                        tracing::error!(execution = id, error = %e,
                            "an unfinished execution's row does not decode; it is left in the store");
                        state.corrupt.insert(id, e.to_string());
                    }
                    (Err(e), None) => return Err(e),
                }
            }
            state.unfinished = Some(rows);
        }
        Ok(state)
    }

    /// Whether execution `id` has ended although its `U` row is still there (a crash came
    /// between an end's two key writes); if so, removes the stale `U` row.
    fn settle_ended(&self, id: u64) -> Result<bool, LedgerError> {
        let ended = self
            .workflows
            .contains_key(key(b'E', id))
            .map_err(|e| self.wf_read_error(e))?;
        if ended {
            tracing::info!(
                execution = id,
                "removing the unfinished row of an execution whose end was recorded"
            );
            self.workflows
                .remove(key(b'U', id))
                .map_err(|e| sled_error(self.path(), "workflow store write failed", e))?;
        }
        Ok(ended)
    }

    fn wf_read_error(&self, e: sled::Error) -> LedgerError {
        sled_error(self.path(), "workflow store read failed", e)
    }

    fn wf_decode<T: serde::de::DeserializeOwned, W: std::fmt::Display>(
        &self,
        bytes: &[u8],
        what: impl FnOnce() -> W,
    ) -> Result<T, LedgerError> {
        let location = self.path().display().to_string();
        decode_sealed(bytes).map_err(frame_error(BACKEND, &location, || what().to_string()))
    }

    fn wf_encode<T: Serialize>(&self, id: u64, value: &T) -> Result<Vec<u8>, LedgerError> {
        encode_sealed(value).map_err(|source| LedgerError::Codec {
            backend: BACKEND,
            context: format!("execution {id}"),
            source,
        })
    }

    /// The ended execution `id`'s row, if there is one.
    fn ended_row(&self, id: u64) -> Result<Option<ExecutionRow>, LedgerError> {
        match self
            .workflows
            .get(key(b'E', id))
            .map_err(|e| self.wf_read_error(e))?
        {
            None => Ok(None),
            Some(bytes) => self
                .wf_decode(&bytes, || format!("execution {id}"))
                .map(Some),
        }
    }

    fn stored(row: ExecutionRow, takeovers: &HashMap<u64, u32>) -> StoredExecution {
        StoredExecution {
            takeovers: takeovers.get(&row.execution.id).copied().unwrap_or(0),
            execution: row.execution,
            status: row.status,
            tasks: row.tasks,
            end: row.end,
        }
    }

    /// Applies `records`; with `fence`, task outcomes and ends only to executions that
    /// runner holds. Returns the executions whose records the fence dropped.
    fn apply_workflow_batch(
        &self,
        records: &[WorkflowRecord],
        fence: Option<&str>,
    ) -> Result<Vec<u64>, LedgerError> {
        check_batch(BACKEND, records)?;
        let mut state = self.wf_state()?;
        let SledWorkflowState {
            unfinished,
            corrupt,
            signal,
            takeovers,
        } = &mut *state;
        if submits_work(records) {
            signal.bump();
        }
        let mut dropped: Vec<u64> = Vec::new();
        let mut held = |row: &ExecutionRow| {
            let held = fence.is_none_or(|owner| row.execution.owner == owner);
            if !held && !dropped.contains(&row.execution.id) {
                dropped.push(row.execution.id);
            }
            held
        };
        let unfinished = unfinished.get_or_insert_with(BTreeMap::new);
        let corrupt = &*corrupt;
        let (starts, tasks, ends) = by_kind(records);
        // Rows this batch read or changed, by id (`None`: no such execution): later records
        // of the batch see earlier ones. Unfinished rows are moved out of the state and put
        // back once written.
        let mut rows: HashMap<u64, Option<Staged>> = HashMap::new();
        let outcome = (|| {
            for s in starts {
                self.stage_row(unfinished, corrupt, &mut rows, s.id)?;
                let slot = rows.entry(s.id).or_default();
                if slot.is_none() {
                    let row = ExecutionRow {
                        execution: s.clone(),
                        status: ExecutionStatus::Running,
                        tasks: Vec::new(),
                        end: None,
                    };
                    *slot = Some(Staged {
                        row,
                        origin: Origin::New,
                        changed: true,
                    });
                }
            }
            for t in tasks {
                self.stage_row(unfinished, corrupt, &mut rows, t.execution_id)?;
                let Some(Some(staged)) = rows.get_mut(&t.execution_id) else {
                    continue;
                };
                if !held(&staged.row) {
                    continue;
                }
                let row = &mut staged.row;
                if let Err(i) = row.tasks.binary_search_by(|r| r.task.as_str().cmp(&t.task)) {
                    row.tasks.insert(i, t.clone());
                    staged.changed = true;
                }
            }
            for end in ends {
                self.stage_row(unfinished, corrupt, &mut rows, end.execution_id)?;
                let Some(Some(staged)) = rows.get_mut(&end.execution_id) else {
                    continue;
                };
                if staged.row.end.is_none() && held(&staged.row) {
                    staged.row.status = end.status;
                    staged.row.end = Some(end.clone());
                    staged.changed = true;
                }
            }
            // Every row encoded before any is written: a row that cannot be encoded
            // writes nothing.
            let mut writes = Vec::with_capacity(rows.len());
            for (id, staged) in &rows {
                let Some(staged) = staged else { continue };
                if staged.changed {
                    writes.push((*id, staged, self.wf_encode(*id, &staged.row)?));
                }
            }
            // Single-key writes, not one sled batch: sled writes its whole IO buffer out
            // twice per batch, which cost more than the rows themselves. Each execution's
            // records are one row, so each is still atomic; an end writes `E id` before
            // removing `U id`, and sled recovers its log in order, so a crash between the
            // two leaves both, which the next open settles (the `E` row wins).
            let failed = |e| sled_error(self.path(), "workflow store write failed", e);
            for (id, staged, value) in writes {
                if staged.row.end.is_some() {
                    self.workflows
                        .insert(key(b'E', id), value)
                        .map_err(failed)?;
                    if staged.origin == Origin::Unfinished {
                        self.workflows.remove(key(b'U', id)).map_err(failed)?;
                    }
                } else {
                    self.workflows
                        .insert(key(b'U', id), value)
                        .map_err(failed)?;
                }
            }
            Ok(())
        })();
        match outcome {
            Ok(()) => {
                for (id, staged) in rows {
                    match staged {
                        Some(staged) if staged.row.end.is_none() => {
                            unfinished.insert(id, staged.row);
                        }
                        // Ended: its takeover count is no longer needed.
                        Some(_) => {
                            takeovers.remove(&id);
                        }
                        None => {}
                    }
                }
                Ok(dropped)
            }
            Err(e) => {
                // Rows were moved out: read them all again at the next call.
                state.unfinished = None;
                Err(e)
            }
        }
    }

    /// Puts execution `id`'s row into `rows` unless there: moved out of `unfinished`, or
    /// read from its `E` key, or `None`.
    fn stage_row(
        &self,
        unfinished: &mut BTreeMap<u64, ExecutionRow>,
        corrupt: &BTreeMap<u64, String>,
        rows: &mut HashMap<u64, Option<Staged>>,
        id: u64,
    ) -> Result<(), LedgerError> {
        if let Some(reason) = corrupt.get(&id) {
            return Err(self.corrupt_row(reason));
        }
        if let std::collections::hash_map::Entry::Vacant(slot) = rows.entry(id) {
            let staged = match unfinished.remove(&id) {
                Some(row) => Some(Staged {
                    row,
                    origin: Origin::Unfinished,
                    changed: false,
                }),
                None => self.ended_row(id)?.map(|row| Staged {
                    row,
                    origin: Origin::Ended,
                    changed: false,
                }),
            };
            slot.insert(staged);
        }
        Ok(())
    }

    fn corrupt_row(&self, reason: &str) -> LedgerError {
        LedgerError::Corrupt {
            backend: BACKEND,
            location: self.path().display().to_string(),
            reason: reason.to_owned(),
        }
    }

    /// Rewrites, in id order, up to `limit` unfinished rows that `pick` changes (claims and
    /// renewals) in one sled batch, showing each to `written`; returns how many.
    fn rewrite_unfinished(
        &self,
        what: &str,
        mut pick: impl FnMut(&mut ExecutionRow) -> bool,
        limit: usize,
        mut written: impl FnMut(&ExecutionRow, &HashMap<u64, u32>),
    ) -> Result<u64, LedgerError> {
        let mut state = self.wf_state()?;
        let SledWorkflowState {
            unfinished,
            takeovers,
            ..
        } = &mut *state;
        let unfinished = unfinished.get_or_insert_with(BTreeMap::new);
        let mut batch = sled::Batch::default();
        let mut count = 0;
        let mut encoded = Ok(());
        for (id, row) in unfinished.iter_mut() {
            if count >= limit {
                break;
            }
            if pick(row) {
                match self.wf_encode(*id, row) {
                    Ok(value) => batch.insert(key(b'U', *id), value),
                    Err(e) => {
                        encoded = Err(e);
                        break;
                    }
                }
                written(row, takeovers);
                count += 1;
            }
        }
        let written = encoded.and_then(|()| {
            self.workflows
                .apply_batch(batch)
                .map_err(|e| sled_error(self.path(), what, e))
        });
        if let Err(e) = written {
            // Rows were changed in memory: read them again at the next call.
            state.unfinished = None;
            return Err(e);
        }
        Ok(count as u64)
    }

    /// Claims up to `limit` unfinished executions that `pick` accepts, oldest first; one
    /// taken from another runner counts a takeover. Flushed when it took any: a claim must
    /// outlive a crash to mean anything to another runner (a sweep finding nothing costs
    /// no flush).
    async fn claim_where(
        &self,
        owner: &str,
        lease_until_unix_us: i64,
        limit: usize,
        pick: impl Fn(&ExecutionRow) -> bool,
    ) -> Result<Vec<StoredExecution>, LedgerError> {
        let mut claimed = Vec::new();
        let mut taken = Vec::new();
        self.rewrite_unfinished(
            "workflow claim failed",
            |row| {
                let claimable = pick(row);
                if claimable {
                    if row.execution.owner != owner && row.execution.owner != UNCLAIMED {
                        taken.push(row.execution.id);
                    }
                    owner.clone_into(&mut row.execution.owner);
                    row.execution.lease_until_unix_us = lease_until_unix_us;
                }
                claimable
            },
            limit,
            |row, takeovers| claimed.push(Self::stored(row.clone(), takeovers)),
        )?;
        self.count_takeovers(&taken, &mut claimed)?;
        if !claimed.is_empty() {
            self.flush_db().await?;
        }
        Ok(claimed)
    }

    /// Counts a takeover of each execution in `taken`, in the state and in `claimed`.
    fn count_takeovers(
        &self,
        taken: &[u64],
        claimed: &mut [StoredExecution],
    ) -> Result<(), LedgerError> {
        if taken.is_empty() {
            return Ok(());
        }
        let mut state = self.wf_state()?;
        for id in taken {
            *state.takeovers.entry(*id).or_default() += 1;
        }
        for e in claimed
            .iter_mut()
            .filter(|e| taken.contains(&e.execution.id))
        {
            e.takeovers = e.takeovers.saturating_add(1);
        }
        Ok(())
    }

    fn reserve_now(&self, count: u64) -> Result<u64, LedgerError> {
        let _state = self.wf_state()?;
        let last = match self
            .workflows
            .get(LAST_ID_KEY)
            .map_err(|e| self.wf_read_error(e))?
        {
            Some(v) => <[u8; 8]>::try_from(v.as_ref())
                .map(u64::from_be_bytes)
                .map_err(|_| {
                    crate::sled_backend::corrupt_at(
                        self.path(),
                        "the execution id counter is malformed",
                    )
                })?,
            None => 0,
        };
        let next = last.saturating_add(count.max(1));
        self.workflows
            .insert(LAST_ID_KEY, &next.to_be_bytes())
            .map_err(|e| sled_error(self.path(), "cannot reserve execution ids", e))?;
        Ok(last + 1)
    }
}

impl WorkflowStore for SledLedger {
    fn workflow_backend(&self) -> &'static str {
        BACKEND
    }

    fn write<'a>(&'a self, records: &'a [WorkflowRecord], commit: Commit) -> LedgerFuture<'a, ()> {
        Box::pin(async move {
            self.apply_workflow_batch(records, None)?;
            if commit == Commit::Durable {
                self.flush_db().await?;
            }
            Ok(())
        })
    }

    fn write_as<'a>(
        &'a self,
        owner: &'a str,
        records: &'a [WorkflowRecord],
        commit: Commit,
    ) -> LedgerFuture<'a, Vec<u64>> {
        Box::pin(async move {
            let dropped = self.apply_workflow_batch(records, Some(owner))?;
            if commit == Commit::Durable {
                self.flush_db().await?;
            }
            Ok(dropped)
        })
    }

    fn execution(&self, id: u64) -> LedgerFuture<'_, Option<StoredExecution>> {
        Box::pin(async move {
            let (running, takeovers) = {
                let state = self.wf_state()?;
                if let Some(reason) = state.corrupt.get(&id) {
                    return Err(self.corrupt_row(reason));
                }
                let row = state
                    .unfinished
                    .as_ref()
                    .and_then(|rows| rows.get(&id))
                    .cloned();
                (row, state.takeovers.get(&id).copied().unwrap_or(0))
            };
            let mut stored = match running {
                Some(row) => Self::stored(row, &HashMap::new()),
                None => match self.ended_row(id)? {
                    Some(row) => Self::stored(row, &HashMap::new()),
                    None => return Ok(None),
                },
            };
            stored.takeovers = takeovers;
            Ok(Some(stored))
        })
    }

    fn claim_unfinished<'a>(
        &'a self,
        owner: &'a str,
        now_unix_us: i64,
        lease_until_unix_us: i64,
        limit: usize,
    ) -> LedgerFuture<'a, Vec<StoredExecution>> {
        Box::pin(
            self.claim_where(owner, lease_until_unix_us, limit, move |row| {
                row.execution.owner == owner || row.execution.lease_until_unix_us < now_unix_us
            }),
        )
    }

    fn claim_expired<'a>(
        &'a self,
        owner: &'a str,
        now_unix_us: i64,
        lease_until_unix_us: i64,
        limit: usize,
        workflows: &'a [String],
    ) -> LedgerFuture<'a, Vec<StoredExecution>> {
        Box::pin(
            self.claim_where(owner, lease_until_unix_us, limit, move |row| {
                row.execution.lease_until_unix_us < now_unix_us
                    && workflows.contains(&row.execution.workflow)
            }),
        )
    }

    fn renew_claims<'a>(
        &'a self,
        owner: &'a str,
        lease_until_unix_us: i64,
    ) -> LedgerFuture<'a, Vec<u64>> {
        Box::pin(async move {
            let mut held = Vec::new();
            self.rewrite_unfinished(
                "workflow lease renewal failed",
                |row| {
                    let mine = row.execution.owner == owner;
                    if mine {
                        row.execution.lease_until_unix_us = lease_until_unix_us;
                    }
                    mine
                },
                usize::MAX,
                |row, _| held.push(row.execution.id),
            )?;
            Ok(held)
        })
    }

    fn work_signal(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.wf_state().ok().map(|s| s.signal.subscribe())
    }

    fn unfinished_count(&self) -> LedgerFuture<'_, u64> {
        Box::pin(async move {
            let state = self.wf_state()?;
            let rows = state.unfinished.as_ref().map_or(0, BTreeMap::len);
            Ok((rows + state.corrupt.len()) as u64)
        })
    }

    fn reserve_execution_ids(&self, count: u64) -> LedgerFuture<'_, u64> {
        Box::pin(async move {
            let first = self.reserve_now(count)?;
            // Durable before any id is used: a restart never hands them out again.
            self.flush_db().await?;
            Ok(first)
        })
    }
}

#[cfg(test)]
#[path = "sled_store_tests.rs"]
mod tests;
