//! [`MemoryLedger`]: records in process memory.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use crate::{FiringRecord, Ledger, LedgerError, LedgerFuture, Record};

type Firings = HashMap<String, BTreeMap<u64, FiringRecord>>;

/// Keeps records in process memory: lost when the process ends. For tests and for reactors
/// whose history need not survive a restart.
#[derive(Debug, Default)]
pub struct MemoryLedger {
    firings: Mutex<Firings>,
}

impl MemoryLedger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> Result<MutexGuard<'_, Firings>, LedgerError> {
        self.firings.lock().map_err(|_| LedgerError::Backend {
            backend: "memory",
            message: "lock poisoned by a panicking writer".into(),
        })
    }
}

impl Ledger for MemoryLedger {
    fn backend(&self) -> &'static str {
        "memory"
    }

    fn append<'a>(&'a self, records: &'a [Record]) -> LedgerFuture<'a, ()> {
        Box::pin(async move {
            let mut map = self.lock()?;
            // Check the whole batch first: it is applied entirely or not at all.
            for record in records {
                let Record::Firing(f) = record;
                if let Some(existing) = map.get(&f.reactor).and_then(|m| m.get(&f.firing_id)) {
                    if existing != f {
                        return Err(LedgerError::Conflict {
                            backend: "memory",
                            record: format!("firing {} of reactor `{}`", f.firing_id, f.reactor),
                        });
                    }
                }
            }
            for record in records {
                let Record::Firing(f) = record;
                map.entry(f.reactor.clone())
                    .or_default()
                    .entry(f.firing_id)
                    .or_insert_with(|| f.clone());
            }
            Ok(())
        })
    }

    fn firings<'a>(&'a self, reactor: &'a str) -> LedgerFuture<'a, Vec<FiringRecord>> {
        Box::pin(async move {
            Ok(self
                .lock()?
                .get(reactor)
                .map(|m| m.values().cloned().collect())
                .unwrap_or_default())
        })
    }
}
