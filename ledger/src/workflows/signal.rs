//! [`WorkSignal`]: what a backend bumps when it writes work submitted unclaimed, for the
//! runners of this process ([`WorkflowStore::work_signal`](super::WorkflowStore::work_signal)).

use tokio::sync::watch;

use super::{WorkflowRecord, UNCLAIMED};

/// A counter that changes when unclaimed work may be waiting.
#[derive(Debug)]
pub(crate) struct WorkSignal(watch::Sender<u64>);

impl Default for WorkSignal {
    fn default() -> Self {
        Self(watch::channel(0).0)
    }
}

impl WorkSignal {
    /// Tells every receiver that work may be waiting.
    pub(crate) fn bump(&self) {
        self.0.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that sees every later bump.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }
}

/// Whether `batch` starts an execution for any runner to claim.
pub(crate) fn submits_work(batch: &[WorkflowRecord]) -> bool {
    batch
        .iter()
        .any(|r| matches!(r, WorkflowRecord::Started(s) if s.owner == UNCLAIMED))
}
