//! [`MemoryLedger`]: records in process memory.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use crate::{
    BoundaryQuery, BoundaryRecord, CheckpointRecord, Commit, FiringQuery, FiringRecord, Ledger,
    LedgerError, LedgerFuture, Record, RetainReport, Retention, SnapshotRecord, VerifyReport,
};

const BACKEND: &str = "memory";

#[derive(Debug, Default)]
struct Store {
    boundaries: HashMap<String, BTreeMap<u64, BoundaryRecord>>,
    firings: HashMap<String, BTreeMap<u64, FiringRecord>>,
    checkpoints: HashMap<(String, String), CheckpointRecord>,
    snapshots: HashMap<String, SnapshotRecord>,
}

/// Keeps records in process memory: lost when the process ends. For tests and for reactors
/// whose history need not survive a restart.
#[derive(Debug, Default)]
pub struct MemoryLedger {
    store: Mutex<Store>,
    /// The workflow store's executions.
    pub(crate) workflows: Mutex<crate::workflows::MemoryWorkflows>,
}

impl MemoryLedger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> Result<MutexGuard<'_, Store>, LedgerError> {
        self.store.lock().map_err(|_| LedgerError::Backend {
            backend: BACKEND,
            message: "lock poisoned by a panicking writer".into(),
        })
    }
}

fn conflict(record: &Record) -> LedgerError {
    LedgerError::Conflict {
        backend: BACKEND,
        record: record.describe(),
    }
}

impl Ledger for MemoryLedger {
    fn workflow_store(
        self: std::sync::Arc<Self>,
    ) -> Option<std::sync::Arc<dyn crate::WorkflowStore>> {
        Some(self)
    }

    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn append<'a>(&'a self, records: &'a [Record], _commit: Commit) -> LedgerFuture<'a, ()> {
        Box::pin(async move {
            let mut store = self.lock()?;
            // Check the whole batch first: it is applied entirely or not at all. (Ids repeated
            // inside one batch are checked against each other too.)
            let mut seen_b: HashMap<(&str, u64), &BoundaryRecord> = HashMap::new();
            let mut seen_f: HashMap<(&str, u64), &FiringRecord> = HashMap::new();
            for record in records {
                match record {
                    Record::Boundary(b) => {
                        let stored = store.boundaries.get(&b.reactor).and_then(|m| m.get(&b.seq));
                        let earlier = seen_b.insert((b.reactor.as_str(), b.seq), b);
                        if stored.or(earlier).is_some_and(|e| e != b) {
                            return Err(conflict(record));
                        }
                    }
                    Record::Firing(f) => {
                        let stored = store
                            .firings
                            .get(&f.reactor)
                            .and_then(|m| m.get(&f.firing_id));
                        let earlier = seen_f.insert((f.reactor.as_str(), f.firing_id), f);
                        if stored.or(earlier).is_some_and(|e| e != f) {
                            return Err(conflict(record));
                        }
                    }
                    Record::Checkpoint(_) | Record::Snapshot(_) => {}
                }
            }
            for record in records {
                match record {
                    Record::Boundary(b) => {
                        store
                            .boundaries
                            .entry(b.reactor.clone())
                            .or_default()
                            .entry(b.seq)
                            .or_insert_with(|| b.clone());
                    }
                    Record::Firing(f) => {
                        store
                            .firings
                            .entry(f.reactor.clone())
                            .or_default()
                            .entry(f.firing_id)
                            .or_insert_with(|| f.clone());
                    }
                    Record::Checkpoint(c) => {
                        store
                            .checkpoints
                            .insert((c.owner.clone(), c.key.clone()), c.clone());
                    }
                    Record::Snapshot(s) => {
                        store.snapshots.insert(s.reactor.clone(), s.clone());
                    }
                }
            }
            Ok(())
        })
    }

    fn flush(&self) -> LedgerFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }

    fn firings<'a>(&'a self, query: &'a FiringQuery) -> LedgerFuture<'a, Vec<FiringRecord>> {
        Box::pin(async move {
            let store = self.lock()?;
            let Some(m) = store.firings.get(&query.reactor) else {
                return Ok(Vec::new());
            };
            let found: Vec<FiringRecord> = m
                .range(query.from_id.unwrap_or(0)..)
                .map(|(_, f)| f)
                .filter(|f| query.matches(f))
                .take(query.limit.unwrap_or(usize::MAX))
                .cloned()
                .collect();
            query.check_gaps(BACKEND, &found)?;
            Ok(found)
        })
    }

    fn last_firing<'a>(&'a self, reactor: &'a str) -> LedgerFuture<'a, Option<FiringRecord>> {
        Box::pin(async move {
            Ok(self
                .lock()?
                .firings
                .get(reactor)
                .and_then(|m| m.values().next_back().cloned()))
        })
    }

    fn boundaries<'a>(&'a self, query: &'a BoundaryQuery) -> LedgerFuture<'a, Vec<BoundaryRecord>> {
        Box::pin(async move {
            let store = self.lock()?;
            let Some(m) = store.boundaries.get(&query.reactor) else {
                return Ok(Vec::new());
            };
            let found: Vec<BoundaryRecord> = m
                .range(query.from_seq.unwrap_or(0)..)
                .map(|(_, b)| b)
                .filter(|b| query.matches(b))
                .take(query.limit.unwrap_or(usize::MAX))
                .cloned()
                .collect();
            query.check_gaps(BACKEND, &found)?;
            Ok(found)
        })
    }

    fn snapshot<'a>(&'a self, reactor: &'a str) -> LedgerFuture<'a, Option<SnapshotRecord>> {
        Box::pin(async move { Ok(self.lock()?.snapshots.get(reactor).cloned()) })
    }

    fn checkpoint<'a>(
        &'a self,
        owner: &'a str,
        key: &'a str,
    ) -> LedgerFuture<'a, Option<CheckpointRecord>> {
        Box::pin(async move {
            Ok(self
                .lock()?
                .checkpoints
                .get(&(owner.to_owned(), key.to_owned()))
                .cloned())
        })
    }

    fn checkpoints<'a>(&'a self, owner: &'a str) -> LedgerFuture<'a, Vec<CheckpointRecord>> {
        Box::pin(async move {
            let mut found: Vec<CheckpointRecord> = self
                .lock()?
                .checkpoints
                .values()
                .filter(|c| c.owner == owner)
                .cloned()
                .collect();
            found.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(found)
        })
    }

    fn retain<'a>(
        &'a self,
        reactor: &'a str,
        retention: Retention,
    ) -> LedgerFuture<'a, RetainReport> {
        Box::pin(async move {
            let mut store = self.lock()?;
            let snapshot = store
                .snapshots
                .get(reactor)
                .map(|s| (s.last_seq, s.next_firing_id));
            let max_seq = store
                .boundaries
                .get(reactor)
                .and_then(|m| m.keys().next_back().copied())
                .unwrap_or(0);
            let max_id = store
                .firings
                .get(reactor)
                .and_then(|m| m.keys().next_back().copied())
                .unwrap_or(0);
            let cut = retention.cut(max_seq, max_id, snapshot);
            let mut report = RetainReport::default();
            if let Some(m) = store.boundaries.get_mut(reactor) {
                let before = m.len();
                m.retain(|_, b| !cut.removes_boundary(b.seq, b.received_at_unix_us));
                report.boundaries_removed = (before - m.len()) as u64;
            }
            if let Some(m) = store.firings.get_mut(reactor) {
                let before = m.len();
                m.retain(|_, f| !cut.removes_firing(f.firing_id, f.fired_at_unix_us));
                report.firings_removed = (before - m.len()) as u64;
            }
            Ok(report)
        })
    }

    /// Nothing can be damaged in memory: counts the records and lists id gaps.
    fn verify(&self) -> LedgerFuture<'_, VerifyReport> {
        Box::pin(async move {
            let store = self.lock()?;
            let mut report = VerifyReport::default();
            for (reactor, m) in &store.boundaries {
                let ids: Vec<u64> = m.keys().copied().collect();
                report.note_gaps(reactor, "boundary", &ids);
            }
            for (reactor, m) in &store.firings {
                let ids: Vec<u64> = m.keys().copied().collect();
                report.note_gaps(reactor, "firing", &ids);
            }
            report.records_checked = (store.boundaries.values().map(BTreeMap::len).sum::<usize>()
                + store.firings.values().map(BTreeMap::len).sum::<usize>()
                + store.checkpoints.len()
                + store.snapshots.len()) as u64;
            Ok(report)
        })
    }
}
