//! Results of the executions that ended in this runner lately, kept so that `wait` and
//! `status` just after an end (the usual `schedule` then `wait`) answer without a store read.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::WorkflowExecutionResult;

/// Ended executions kept (the oldest goes first); older ones are read from the store.
pub(super) const KEPT: usize = 4_096;

/// The last [`KEPT`] results, by execution id.
#[derive(Default)]
pub(super) struct Ended {
    order: VecDeque<u64>,
    results: HashMap<u64, Arc<WorkflowExecutionResult>>,
}

impl Ended {
    /// Keeps `result`, letting the oldest go past [`KEPT`].
    pub(super) fn insert(&mut self, result: Arc<WorkflowExecutionResult>) {
        let id = result.execution_id;
        if self.results.insert(id, result).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > KEPT {
            if let Some(old) = self.order.pop_front() {
                self.results.remove(&old);
            }
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
            ended.insert(result(id));
        }
        assert!(ended.get(9).is_none(), "the oldest went");
        assert_eq!(ended.get(10).map(|r| r.execution_id), Some(10));
        assert!(ended.get(KEPT as u64 + 9).is_some());
        assert_eq!(ended.results.len(), KEPT);
        assert_eq!(ended.order.len(), KEPT);
    }
}
