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
//! One write is one sled batch, applied under the store's write lock (first-wins checks
//! read what they then write); [`Commit::Durable`] ends with the ledger's flush.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{
    by_kind, check_batch, ExecutionEndRecord, ExecutionRecord, ExecutionStatus, StoredExecution,
    TaskRecord, WorkflowRecord, WorkflowStore,
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

fn key(kind: u8, id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(kind);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

impl SledLedger {
    fn wf_lock(&self) -> Result<std::sync::MutexGuard<'_, ()>, LedgerError> {
        self.workflow_lock.lock().map_err(|_| {
            LedgerError::store(BACKEND, "workflow store lock", false, "poisoned by a panic")
        })
    }

    fn wf_read_error(&self, e: sled::Error) -> LedgerError {
        sled_error(self.path(), "workflow store read failed", e)
    }

    fn wf_get<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
        what: impl FnOnce() -> String,
    ) -> Result<Option<T>, LedgerError> {
        match self.workflows.get(key).map_err(|e| self.wf_read_error(e))? {
            None => Ok(None),
            Some(bytes) => {
                let location = self.path().display().to_string();
                decode_sealed(&bytes)
                    .map(Some)
                    .map_err(frame_error(BACKEND, &location, what))
            }
        }
    }

    fn wf_encode<T: Serialize>(&self, what: String, value: &T) -> Result<Vec<u8>, LedgerError> {
        encode_sealed(value).map_err(|source| LedgerError::Codec {
            backend: BACKEND,
            context: what,
            source,
        })
    }

    fn row(&self, id: u64) -> Result<Option<ExecutionRow>, LedgerError> {
        match self.wf_get(&key(b'U', id), || format!("execution {id}"))? {
            Some(row) => Ok(Some(row)),
            None => self.wf_get(&key(b'E', id), || format!("execution {id}")),
        }
    }

    fn stored(row: ExecutionRow) -> StoredExecution {
        StoredExecution {
            execution: row.execution,
            status: row.status,
            tasks: row.tasks,
            end: row.end,
        }
    }

    fn apply_workflow_batch(&self, records: &[WorkflowRecord]) -> Result<(), LedgerError> {
        check_batch(BACKEND, records)?;
        let _guard = self.wf_lock()?;
        let (starts, tasks, ends) = by_kind(records);
        // Rows this batch read or changed, by id, with whether they changed: later records
        // of the batch see earlier ones.
        let mut rows: HashMap<u64, Option<(ExecutionRow, bool)>> = HashMap::new();
        for s in starts {
            self.load_row(&mut rows, s.id)?;
            let slot = rows.entry(s.id).or_default();
            if slot.is_none() {
                let row = ExecutionRow {
                    execution: s.clone(),
                    status: ExecutionStatus::Running,
                    tasks: Vec::new(),
                    end: None,
                };
                *slot = Some((row, true));
            }
        }
        for t in tasks {
            self.load_row(&mut rows, t.execution_id)?;
            let Some(Some((row, changed))) = rows.get_mut(&t.execution_id) else {
                continue;
            };
            if let Err(i) = row.tasks.binary_search_by(|r| r.task.as_str().cmp(&t.task)) {
                row.tasks.insert(i, t.clone());
                *changed = true;
            }
        }
        for end in ends {
            self.load_row(&mut rows, end.execution_id)?;
            let Some(Some((row, changed))) = rows.get_mut(&end.execution_id) else {
                continue;
            };
            if row.end.is_none() {
                row.status = end.status;
                row.end = Some(end.clone());
                *changed = true;
            }
        }
        let mut batch = sled::Batch::default();
        for (id, slot) in &rows {
            let Some((row, true)) = slot else {
                continue;
            };
            let value = self.wf_encode(format!("execution {id}"), row)?;
            if row.end.is_some() {
                batch.remove(key(b'U', *id));
                batch.insert(key(b'E', *id), value);
            } else {
                batch.insert(key(b'U', *id), value);
            }
        }
        self.workflows
            .apply_batch(batch)
            .map_err(|e| sled_error(self.path(), "workflow store write failed", e))
    }

    /// Reads row `id` into `rows` unless there; whether the execution exists.
    fn load_row(
        &self,
        rows: &mut HashMap<u64, Option<(ExecutionRow, bool)>>,
        id: u64,
    ) -> Result<(), LedgerError> {
        if let std::collections::hash_map::Entry::Vacant(slot) = rows.entry(id) {
            slot.insert(self.row(id)?.map(|row| (row, false)));
        }
        Ok(())
    }

    /// A `U id` entry of a scan: its key and row.
    fn unfinished_row(
        &self,
        entry: sled::Result<(sled::IVec, sled::IVec)>,
    ) -> Result<(sled::IVec, ExecutionRow), LedgerError> {
        let (k, bytes) = entry.map_err(|e| self.wf_read_error(e))?;
        let location = self.path().display().to_string();
        let row = decode_sealed(&bytes).map_err(frame_error(BACKEND, &location, || {
            "an unfinished execution".to_owned()
        }))?;
        Ok((k, row))
    }

    fn claim_now(
        &self,
        owner: &str,
        now: i64,
        until: i64,
        limit: usize,
    ) -> Result<Vec<StoredExecution>, LedgerError> {
        let _guard = self.wf_lock()?;
        let mut batch = sled::Batch::default();
        let mut out = Vec::new();
        for entry in self.workflows.scan_prefix([b'U']) {
            if out.len() >= limit {
                break;
            }
            let (k, mut row) = self.unfinished_row(entry)?;
            if row.execution.owner != owner && row.execution.lease_until_unix_us >= now {
                continue;
            }
            row.execution.owner = owner.to_owned();
            row.execution.lease_until_unix_us = until;
            let id = row.execution.id;
            batch.insert(k, self.wf_encode(format!("execution {id}"), &row)?);
            out.push(Self::stored(row));
        }
        self.workflows
            .apply_batch(batch)
            .map_err(|e| sled_error(self.path(), "workflow claim failed", e))?;
        Ok(out)
    }

    fn renew_now(&self, owner: &str, until: i64) -> Result<u64, LedgerError> {
        let _guard = self.wf_lock()?;
        let mut batch = sled::Batch::default();
        let mut renewed = 0;
        for entry in self.workflows.scan_prefix([b'U']) {
            let (k, mut row) = self.unfinished_row(entry)?;
            if row.execution.owner == owner {
                row.execution.lease_until_unix_us = until;
                let id = row.execution.id;
                batch.insert(k, self.wf_encode(format!("execution {id}"), &row)?);
                renewed += 1;
            }
        }
        self.workflows
            .apply_batch(batch)
            .map_err(|e| sled_error(self.path(), "workflow lease renewal failed", e))?;
        Ok(renewed)
    }

    fn reserve_now(&self, count: u64) -> Result<u64, LedgerError> {
        let _guard = self.wf_lock()?;
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
            self.apply_workflow_batch(records)?;
            if commit == Commit::Durable {
                self.flush_db().await?;
            }
            Ok(())
        })
    }

    fn execution(&self, id: u64) -> LedgerFuture<'_, Option<StoredExecution>> {
        Box::pin(async move {
            match self.row(id)? {
                Some(row) => Ok(Some(Self::stored(row))),
                None => Ok(None),
            }
        })
    }

    fn claim_unfinished<'a>(
        &'a self,
        owner: &'a str,
        now_unix_us: i64,
        lease_until_unix_us: i64,
        limit: usize,
    ) -> LedgerFuture<'a, Vec<StoredExecution>> {
        Box::pin(async move {
            let claimed = self.claim_now(owner, now_unix_us, lease_until_unix_us, limit)?;
            // A claim must outlive a crash to mean anything to another runner.
            self.flush_db().await?;
            Ok(claimed)
        })
    }

    fn renew_claims<'a>(
        &'a self,
        owner: &'a str,
        lease_until_unix_us: i64,
    ) -> LedgerFuture<'a, u64> {
        Box::pin(async move { self.renew_now(owner, lease_until_unix_us) })
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
