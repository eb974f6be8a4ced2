//! [`WorkflowStore`] for [`MemoryLedger`]: executions in process memory.

use std::collections::BTreeMap;

use super::signal::submits_work;
use super::{
    by_kind, check_batch, ExecutionStatus, StoredExecution, WorkSignal, WorkflowRecord,
    WorkflowStore, UNCLAIMED,
};
use crate::{Commit, LedgerError, LedgerFuture, MemoryLedger};

const BACKEND: &str = "memory";

/// The executions a [`MemoryLedger`] holds.
#[derive(Debug, Default)]
pub(crate) struct MemoryWorkflows {
    executions: BTreeMap<u64, StoredExecution>,
    /// The last execution id handed out.
    last_id: u64,
    /// Bumped when work is submitted unclaimed.
    signal: WorkSignal,
}

impl MemoryWorkflows {
    /// Applies `batch`; with `fence`, only to executions that runner holds (starts aside).
    /// Returns the executions whose records the fence dropped.
    fn apply(&mut self, batch: &[WorkflowRecord], fence: Option<&str>) -> Vec<u64> {
        let mut dropped = Vec::new();
        let held = |e: &StoredExecution, dropped: &mut Vec<u64>| {
            let held = fence.is_none_or(|owner| e.execution.owner == owner);
            if !held && !dropped.contains(&e.execution.id) {
                dropped.push(e.execution.id);
            }
            held
        };
        let (starts, tasks, ends) = by_kind(batch);
        for s in starts {
            self.executions
                .entry(s.id)
                .or_insert_with(|| StoredExecution {
                    execution: s.clone(),
                    status: ExecutionStatus::Running,
                    tasks: Vec::new(),
                    end: None,
                    takeovers: 0,
                });
        }
        for t in tasks {
            if let Some(e) = self
                .executions
                .get_mut(&t.execution_id)
                .filter(|e| held(e, &mut dropped))
            {
                if let Err(i) = e.tasks.binary_search_by(|r| r.task.as_str().cmp(&t.task)) {
                    e.tasks.insert(i, t.clone());
                }
            }
        }
        for end in ends {
            if let Some(e) = self
                .executions
                .get_mut(&end.execution_id)
                .filter(|e| held(e, &mut dropped))
            {
                if e.end.is_none() {
                    e.status = end.status;
                    e.end = Some(end.clone());
                }
            }
        }
        if submits_work(batch) {
            self.signal.bump();
        }
        dropped
    }
}

impl MemoryWorkflows {
    /// Claims up to `limit` unfinished executions that `pick` accepts, oldest first; one
    /// taken from another runner counts a takeover.
    fn claim(
        &mut self,
        owner: &str,
        lease_until_unix_us: i64,
        limit: usize,
        pick: impl Fn(&StoredExecution) -> bool,
    ) -> Result<Vec<StoredExecution>, LedgerError> {
        let mut out = Vec::new();
        for e in self.executions.values_mut() {
            if out.len() >= limit {
                break;
            }
            if e.status == ExecutionStatus::Running && pick(e) {
                if e.execution.owner != UNCLAIMED && e.execution.owner != owner {
                    e.takeovers = e.takeovers.saturating_add(1);
                }
                e.execution.owner = owner.to_owned();
                e.execution.lease_until_unix_us = lease_until_unix_us;
                out.push(e.clone());
            }
        }
        Ok(out)
    }
}

impl MemoryLedger {
    fn workflows(&self) -> Result<std::sync::MutexGuard<'_, MemoryWorkflows>, LedgerError> {
        self.workflows.lock().map_err(|_| LedgerError::Backend {
            backend: BACKEND,
            message: "workflow store lock poisoned by a panicking writer".into(),
        })
    }
}

impl WorkflowStore for MemoryLedger {
    fn workflow_backend(&self) -> &'static str {
        BACKEND
    }

    fn write<'a>(&'a self, records: &'a [WorkflowRecord], _commit: Commit) -> LedgerFuture<'a, ()> {
        Box::pin(async move {
            check_batch(BACKEND, records)?;
            self.workflows()?.apply(records, None);
            Ok(())
        })
    }

    fn write_as<'a>(
        &'a self,
        owner: &'a str,
        records: &'a [WorkflowRecord],
        _commit: Commit,
    ) -> LedgerFuture<'a, Vec<u64>> {
        Box::pin(async move {
            check_batch(BACKEND, records)?;
            Ok(self.workflows()?.apply(records, Some(owner)))
        })
    }

    fn execution(&self, id: u64) -> LedgerFuture<'_, Option<StoredExecution>> {
        Box::pin(async move { Ok(self.workflows()?.executions.get(&id).cloned()) })
    }

    fn claim_unfinished<'a>(
        &'a self,
        owner: &'a str,
        now_unix_us: i64,
        lease_until_unix_us: i64,
        limit: usize,
    ) -> LedgerFuture<'a, Vec<StoredExecution>> {
        Box::pin(async move {
            self.workflows()?
                .claim(owner, lease_until_unix_us, limit, |e| {
                    e.execution.owner == owner || e.execution.lease_until_unix_us < now_unix_us
                })
        })
    }

    fn claim_expired<'a>(
        &'a self,
        owner: &'a str,
        now_unix_us: i64,
        lease_until_unix_us: i64,
        limit: usize,
        workflows: &'a [String],
    ) -> LedgerFuture<'a, Vec<StoredExecution>> {
        Box::pin(async move {
            self.workflows()?
                .claim(owner, lease_until_unix_us, limit, |e| {
                    e.execution.lease_until_unix_us < now_unix_us
                        && workflows.contains(&e.execution.workflow)
                })
        })
    }

    fn renew_claims<'a>(
        &'a self,
        owner: &'a str,
        lease_until_unix_us: i64,
    ) -> LedgerFuture<'a, Vec<u64>> {
        Box::pin(async move {
            let mut store = self.workflows()?;
            let mut renewed = Vec::new();
            for (id, e) in store.executions.iter_mut() {
                if e.status == ExecutionStatus::Running && e.execution.owner == owner {
                    e.execution.lease_until_unix_us = lease_until_unix_us;
                    renewed.push(*id);
                }
            }
            Ok(renewed)
        })
    }

    fn work_signal(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.workflows().ok().map(|w| w.signal.subscribe())
    }

    fn unfinished_count(&self) -> LedgerFuture<'_, u64> {
        Box::pin(async move {
            let store = self.workflows()?;
            Ok(store
                .executions
                .values()
                .filter(|e| e.status == ExecutionStatus::Running)
                .count() as u64)
        })
    }

    fn reserve_execution_ids(&self, count: u64) -> LedgerFuture<'_, u64> {
        Box::pin(async move {
            let mut store = self.workflows()?;
            let first = store.last_id + 1;
            store.last_id += count.max(1);
            Ok(first)
        })
    }
}
