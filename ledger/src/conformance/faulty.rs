//! [`FaultyLedger`]: a ledger that fails on purpose.

use std::sync::Arc;

use crate::{
    BoundaryQuery, BoundaryRecord, CheckpointRecord, Commit, FiringQuery, FiringRecord, Ledger,
    LedgerError, Record, RetainReport, Retention, SnapshotRecord, StoredExecution, WorkflowRecord,
    WorkflowStore,
};

/// A [`crate::MemoryLedger`] whose first appends fail (with a transient error) or panic, or
/// whose workflow store refuses execution starts, for testing what sits on top of a ledger
/// (writers, reactors, workflow runners) against outages. Reads always work.
#[derive(Debug, Default)]
pub struct FaultyLedger {
    inner: Arc<crate::MemoryLedger>,
    /// Its workflow store refuses (permanently) every batch holding an execution start.
    refuse_starts: bool,
    fail: std::sync::atomic::AtomicU64,
    panics: std::sync::atomic::AtomicU64,
    permanent: bool,
    attempts: std::sync::atomic::AtomicU64,
}

impl FaultyLedger {
    /// Fails its first `n` appends (`u64::MAX`: every one), then stores.
    pub fn failing_first(n: u64) -> Self {
        Self {
            fail: n.into(),
            ..Self::default()
        }
    }

    /// Fails its first `n` appends with a permanent error (`u64::MAX`: every one), then
    /// stores.
    pub fn failing_permanently_first(n: u64) -> Self {
        Self {
            fail: n.into(),
            permanent: true,
            ..Self::default()
        }
    }

    /// Appends attempted so far (failed, panicked or stored).
    pub fn attempts(&self) -> u64 {
        self.attempts.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Appends work; its workflow store refuses, with a permanent error, every batch that
    /// holds an execution start (and stores every other).
    pub fn refusing_workflow_starts() -> Self {
        Self {
            refuse_starts: true,
            ..Self::default()
        }
    }

    /// Panics in its first `n` appends, then stores.
    pub fn panicking_first(n: u64) -> Self {
        Self {
            panics: n.into(),
            ..Self::default()
        }
    }

    fn take(counter: &std::sync::atomic::AtomicU64) -> bool {
        use std::sync::atomic::Ordering;
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| match n {
                0 => None,
                u64::MAX => Some(u64::MAX),
                n => Some(n - 1),
            })
            .is_ok()
    }
}

impl Ledger for FaultyLedger {
    fn backend(&self) -> &'static str {
        "faulty"
    }
    fn append<'a>(&'a self, records: &'a [Record], commit: Commit) -> crate::LedgerFuture<'a, ()> {
        self.attempts
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if Self::take(&self.panics) {
            panic!("faulty ledger: injected panic");
        }
        if Self::take(&self.fail) {
            let e = if self.permanent {
                LedgerError::store(
                    "faulty",
                    "append",
                    false,
                    std::io::Error::new(std::io::ErrorKind::InvalidData, "injected refusal"),
                )
            } else {
                LedgerError::store(
                    "faulty",
                    "append",
                    true,
                    std::io::Error::new(std::io::ErrorKind::ConnectionReset, "injected outage"),
                )
            };
            return Box::pin(async { Err(e) });
        }
        self.inner.append(records, commit)
    }
    fn flush(&self) -> crate::LedgerFuture<'_, ()> {
        self.inner.flush()
    }
    fn firings<'a>(&'a self, q: &'a FiringQuery) -> crate::LedgerFuture<'a, Vec<FiringRecord>> {
        self.inner.firings(q)
    }
    fn last_firing<'a>(&'a self, r: &'a str) -> crate::LedgerFuture<'a, Option<FiringRecord>> {
        self.inner.last_firing(r)
    }
    fn boundaries<'a>(
        &'a self,
        q: &'a BoundaryQuery,
    ) -> crate::LedgerFuture<'a, Vec<BoundaryRecord>> {
        self.inner.boundaries(q)
    }
    fn snapshot<'a>(&'a self, r: &'a str) -> crate::LedgerFuture<'a, Option<SnapshotRecord>> {
        self.inner.snapshot(r)
    }
    fn checkpoint<'a>(
        &'a self,
        o: &'a str,
        k: &'a str,
    ) -> crate::LedgerFuture<'a, Option<CheckpointRecord>> {
        self.inner.checkpoint(o, k)
    }
    fn checkpoints<'a>(&'a self, o: &'a str) -> crate::LedgerFuture<'a, Vec<CheckpointRecord>> {
        self.inner.checkpoints(o)
    }
    fn retain<'a>(&'a self, r: &'a str, p: Retention) -> crate::LedgerFuture<'a, RetainReport> {
        self.inner.retain(r, p)
    }
    fn verify(&self) -> crate::LedgerFuture<'_, crate::VerifyReport> {
        self.inner.verify()
    }
    fn workflow_store(self: Arc<Self>) -> Option<Arc<dyn WorkflowStore>> {
        Some(self)
    }
}

impl FaultyLedger {
    /// The injected refusal of a batch that starts an execution, if asked for.
    fn refusal(&self, records: &[WorkflowRecord]) -> Option<crate::LedgerFuture<'static, ()>> {
        let starts = records
            .iter()
            .any(|r| matches!(r, WorkflowRecord::Started(_)));
        (self.refuse_starts && starts).then(|| -> crate::LedgerFuture<'static, ()> {
            Box::pin(async {
                Err(LedgerError::Rejected {
                    backend: "faulty",
                    message: "injected refusal of an execution start".into(),
                })
            })
        })
    }
}

impl WorkflowStore for FaultyLedger {
    fn workflow_backend(&self) -> &'static str {
        "faulty"
    }
    fn write<'a>(
        &'a self,
        records: &'a [WorkflowRecord],
        commit: Commit,
    ) -> crate::LedgerFuture<'a, ()> {
        if let Some(refused) = self.refusal(records) {
            return refused;
        }
        self.inner.write(records, commit)
    }
    fn write_as<'a>(
        &'a self,
        owner: &'a str,
        records: &'a [WorkflowRecord],
        commit: Commit,
    ) -> crate::LedgerFuture<'a, Vec<u64>> {
        if let Some(refused) = self.refusal(records) {
            return Box::pin(async move {
                refused.await?;
                Ok(Vec::new())
            });
        }
        self.inner.write_as(owner, records, commit)
    }
    fn execution(&self, id: u64) -> crate::LedgerFuture<'_, Option<StoredExecution>> {
        self.inner.execution(id)
    }
    fn claim_unfinished<'a>(
        &'a self,
        owner: &'a str,
        now_unix_us: i64,
        lease_until_unix_us: i64,
        limit: usize,
    ) -> crate::LedgerFuture<'a, Vec<StoredExecution>> {
        self.inner
            .claim_unfinished(owner, now_unix_us, lease_until_unix_us, limit)
    }
    fn claim_expired<'a>(
        &'a self,
        owner: &'a str,
        now_unix_us: i64,
        lease_until_unix_us: i64,
        limit: usize,
        workflows: &'a [String],
    ) -> crate::LedgerFuture<'a, Vec<StoredExecution>> {
        self.inner
            .claim_expired(owner, now_unix_us, lease_until_unix_us, limit, workflows)
    }
    fn renew_claims<'a>(
        &'a self,
        owner: &'a str,
        lease_until_unix_us: i64,
    ) -> crate::LedgerFuture<'a, Vec<u64>> {
        self.inner.renew_claims(owner, lease_until_unix_us)
    }
    fn work_signal(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.inner.work_signal()
    }
    fn unfinished_count(&self) -> crate::LedgerFuture<'_, u64> {
        self.inner.unfinished_count()
    }
    fn reserve_execution_ids(&self, count: u64) -> crate::LedgerFuture<'_, u64> {
        self.inner.reserve_execution_ids(count)
    }
}
