//! Test helpers shared by the reactor's integration tests.

use cloacina_ledger::{FiringQuery, Ledger};

/// A store whose appends always fail (reads work, and find nothing).
pub struct BrokenStore(pub cloacina_ledger::MemoryLedger);

impl Ledger for BrokenStore {
    fn backend(&self) -> &'static str {
        "broken"
    }
    fn append<'a>(
        &'a self,
        _records: &'a [cloacina_ledger::Record],
        _commit: cloacina_ledger::Commit,
    ) -> cloacina_ledger::LedgerFuture<'a, ()> {
        Box::pin(async {
            Err(cloacina_ledger::LedgerError::Rejected {
                backend: "broken",
                message: "disk on fire".into(),
            })
        })
    }
    fn flush(&self) -> cloacina_ledger::LedgerFuture<'_, ()> {
        self.0.flush()
    }
    fn firings<'a>(
        &'a self,
        q: &'a FiringQuery,
    ) -> cloacina_ledger::LedgerFuture<'a, Vec<cloacina_ledger::FiringRecord>> {
        self.0.firings(q)
    }
    fn last_firing<'a>(
        &'a self,
        r: &'a str,
    ) -> cloacina_ledger::LedgerFuture<'a, Option<cloacina_ledger::FiringRecord>> {
        self.0.last_firing(r)
    }
    fn boundaries<'a>(
        &'a self,
        q: &'a cloacina_ledger::BoundaryQuery,
    ) -> cloacina_ledger::LedgerFuture<'a, Vec<cloacina_ledger::BoundaryRecord>> {
        self.0.boundaries(q)
    }
    fn snapshot<'a>(
        &'a self,
        r: &'a str,
    ) -> cloacina_ledger::LedgerFuture<'a, Option<cloacina_ledger::SnapshotRecord>> {
        self.0.snapshot(r)
    }
    fn checkpoint<'a>(
        &'a self,
        o: &'a str,
        k: &'a str,
    ) -> cloacina_ledger::LedgerFuture<'a, Option<cloacina_ledger::CheckpointRecord>> {
        self.0.checkpoint(o, k)
    }
    fn retain<'a>(
        &'a self,
        r: &'a str,
        retention: cloacina_ledger::Retention,
    ) -> cloacina_ledger::LedgerFuture<'a, cloacina_ledger::RetainReport> {
        self.0.retain(r, retention)
    }
    fn verify(&self) -> cloacina_ledger::LedgerFuture<'_, cloacina_ledger::VerifyReport> {
        self.0.verify()
    }
}
