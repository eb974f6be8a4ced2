//! Results of the executions that ended in this runner lately, kept so that `wait` and
//! `status` just after an end (the usual `schedule` then `wait`) answer without a store read.
//! Each is the result this runner's driver ended with, as `wait` on a running execution
//! returns it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::WorkflowExecutionResult;

/// Ended executions kept at most (the oldest goes first); older ones are read from the
/// store.
pub(super) const KEPT: usize = 4_096;
/// Most bytes of final contexts (as stored) kept; a result whose context alone is larger
/// than a sixteenth of it is not kept.
pub(super) const KEPT_BYTES: usize = 64 << 20;

/// The last results, within [`KEPT`] and [`KEPT_BYTES`], by execution id.
#[derive(Default)]
pub(super) struct Ended {
    /// Ids and context sizes, oldest first.
    order: VecDeque<(u64, usize)>,
    results: HashMap<u64, Arc<WorkflowExecutionResult>>,
    bytes: usize,
}

impl Ended {
    /// Keeps `result`, whose final context takes `size` bytes stored, letting the oldest go
    /// past the bounds.
    pub(super) fn insert(&mut self, result: Arc<WorkflowExecutionResult>, size: usize) {
        if size > KEPT_BYTES / 16 {
            return;
        }
        let id = result.execution_id;
        if self.results.insert(id, result).is_some() {
            return;
        }
        self.order.push_back((id, size));
        self.bytes += size;
        while self.order.len() > KEPT || self.bytes > KEPT_BYTES {
            let Some((old, size)) = self.order.pop_front() else {
                break;
            };
            self.results.remove(&old);
            self.bytes -= size;
        }
    }

    pub(super) fn get(&self, id: u64) -> Option<Arc<WorkflowExecutionResult>> {
        self.results.get(&id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn result(id: u64) -> Arc<WorkflowExecutionResult> {
        Arc::new(WorkflowExecutionResult {
            execution_id: id,
            workflow_name: "w".into(),
            workflow_version: "v".into(),
            status: crate::WorkflowStatus::Completed,
            start_time: SystemTime::UNIX_EPOCH,
            end_time: SystemTime::UNIX_EPOCH,
            duration: std::time::Duration::ZERO,
            final_context: crate::Context::new(),
            error: None,
            task_results: Vec::new(),
        })
    }

    #[test]
    fn keeps_the_last_results_only() {
        let mut ended = Ended::default();
        for id in 0..(KEPT as u64 + 10) {
            ended.insert(result(id), 2);
        }
        assert!(ended.get(9).is_none(), "the oldest went");
        assert_eq!(ended.get(10).map(|r| r.execution_id), Some(10));
        assert!(ended.get(KEPT as u64 + 9).is_some());
        assert_eq!(ended.results.len(), KEPT);
        assert_eq!(ended.order.len(), KEPT);
        assert_eq!(ended.bytes, 2 * KEPT);
    }

    #[test]
    fn keeps_within_the_byte_budget() {
        let mut ended = Ended::default();
        let big = KEPT_BYTES / 16;
        ended.insert(result(1), big + 1);
        assert!(ended.get(1).is_none(), "too big to keep");
        for id in 2..20 {
            ended.insert(result(id), big);
        }
        assert!(ended.bytes <= KEPT_BYTES);
        assert!(
            ended.get(2).is_none() && ended.get(3).is_none(),
            "the oldest went"
        );
        assert!(ended.get(19).is_some());
        assert_eq!(ended.results.len(), 16);
    }
}
