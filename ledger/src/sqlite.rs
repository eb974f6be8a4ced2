//! [`SqliteLedger`]: the SQLite backend (sqlx).

use crate::{
    BoundaryQuery, BoundaryRecord, CheckpointRecord, Commit, FiringQuery, FiringRecord, Ledger,
    LedgerError, LedgerFuture, Record, RetainReport, Retention, SnapshotRecord,
};

/// A ledger stored in SQLite.
#[derive(Debug)]
pub struct SqliteLedger {
    _private: (),
}

impl SqliteLedger {
    /// Opens the ledger `url` names.
    pub async fn open(url: &str) -> Result<Self, LedgerError> {
        Err(LedgerError::BadUrl {
            url: url.to_owned(),
            reason: "SQLite ledger not built yet".into(),
        })
    }
}

impl Ledger for SqliteLedger {
    fn backend(&self) -> &'static str {
        "sqlite"
    }
    fn append<'a>(&'a self, _records: &'a [Record], _commit: Commit) -> LedgerFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }
    fn flush(&self) -> LedgerFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }
    fn firings<'a>(&'a self, _q: &'a FiringQuery) -> LedgerFuture<'a, Vec<FiringRecord>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    fn boundaries<'a>(&'a self, _q: &'a BoundaryQuery) -> LedgerFuture<'a, Vec<BoundaryRecord>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    fn snapshot<'a>(&'a self, _r: &'a str) -> LedgerFuture<'a, Option<SnapshotRecord>> {
        Box::pin(async { Ok(None) })
    }
    fn checkpoint<'a>(
        &'a self,
        _o: &'a str,
        _k: &'a str,
    ) -> LedgerFuture<'a, Option<CheckpointRecord>> {
        Box::pin(async { Ok(None) })
    }
    fn retain<'a>(&'a self, _r: &'a str, _p: Retention) -> LedgerFuture<'a, RetainReport> {
        Box::pin(async { Ok(RetainReport::default()) })
    }
}
