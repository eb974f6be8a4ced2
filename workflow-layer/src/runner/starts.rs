//! How an execution begins: [`DefaultRunner::schedule`] (a fresh id from the store, run
//! here), `start_as` (a given id, its start through the group commit) and `start_once` (an
//! id derived from what caused it, which other runners may start at the same moment: the
//! store keeps one start, and only its runner drives it).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use cloacina_ledger::{now_unix_us, WorkflowRecord};
use serde_json::Value;

use super::drive::{self, Run};
use super::{stored, DefaultRunner, RunnerError, WorkflowDurability};
use crate::{Context, Workflow};

impl DefaultRunner {
    /// Starts workflow `name` on `input` and returns its execution id once its start is
    /// recorded (so it runs to its end even if this process dies now: a restarted runner
    /// resumes it). Does not wait for it to run. If `shutdown` began meanwhile, the start is
    /// recorded but the execution does not run here: it runs at the next runner start.
    pub async fn schedule(&self, name: &str, input: Context<Value>) -> Result<u64, RunnerError> {
        if !self.inner.accepting.load(Ordering::Acquire) {
            return Err(RunnerError::ShuttingDown);
        }
        let workflow = self.resolve(name)?;
        let id = self.next_id().await?;
        self.start_as(id, workflow, input).await
    }

    /// Starts `workflow` on `input` as execution `id` (see [`DefaultRunner::schedule`]).
    pub(super) async fn start_as(
        &self,
        id: u64,
        workflow: Arc<Workflow>,
        input: Context<Value>,
    ) -> Result<u64, RunnerError> {
        let encoded = stored::bytes(&input)?;
        let now = now_unix_us();
        let record = cloacina_ledger::ExecutionRecord {
            id,
            workflow: workflow.name().to_owned(),
            version: workflow.version().to_owned(),
            input: encoded,
            created_at_unix_us: now,
            owner: self.inner.config.runner_id.clone(),
            lease_until_unix_us: now.saturating_add(self.inner.config.lease_us()),
        };
        let start = self
            .inner
            .recorder
            .start(WorkflowRecord::Started(record))
            .await
            .map_err(RunnerError::Store)?;
        // Its place under a key limit, in the order executions were scheduled.
        let ticket = drive::key_of(&self.inner, &workflow, Some(&input), None)
            .and_then(|value| self.inner.keys.ticket(workflow.name(), value));
        let run = Run::fresh(id, workflow, input, now).with_ticket(ticket);
        match self.inner.config.durability {
            // The first tasks run while the start is written; their records join it if no
            // batch has taken it yet (one commit for a short execution), or follow it.
            WorkflowDurability::Batched => {
                self.spawn(run.after(Arc::clone(&start)));
                start.written().await.map_err(RunnerError::Store)?;
            }
            // Nothing runs before the start is on stable storage.
            WorkflowDurability::Sync => {
                start.written().await.map_err(RunnerError::Store)?;
                self.spawn(run);
            }
        }
        Ok(id)
    }

    /// Starts `workflow` on `input` as execution `id`, an id derived from what caused it (a
    /// schedule's instant, a trigger's poll, a reactor's firing) that other runners may
    /// start at the same moment: the start is written durably, the store keeps the first,
    /// and only the runner whose start was kept drives it. `Ok(false)`: another runner's
    /// start was kept. An error after the write (the read-back failed) leaves a start that
    /// may be this runner's: the sweep or the next runner start resumes it.
    pub(super) async fn start_once(
        &self,
        id: u64,
        workflow: Arc<Workflow>,
        input: Context<Value>,
    ) -> Result<bool, RunnerError> {
        let now = now_unix_us();
        let owner = self.inner.config.runner_id.clone();
        let start = cloacina_ledger::ExecutionRecord {
            id,
            workflow: workflow.name().to_owned(),
            version: workflow.version().to_owned(),
            input: stored::bytes(&input)?,
            created_at_unix_us: now,
            owner: owner.clone(),
            lease_until_unix_us: now.saturating_add(self.inner.config.lease_us()),
        };
        // Durable whatever the runner's durability: it is the audit record, and what keeps
        // a crash from starting it again.
        self.inner
            .store
            .write(
                &[WorkflowRecord::Started(start)],
                cloacina_ledger::Commit::Durable,
            )
            .await?;
        let kept = self.inner.store.execution(id).await?;
        let mine = kept
            .is_some_and(|k| k.execution.owner == owner && k.execution.created_at_unix_us == now);
        if mine {
            let ticket = drive::key_of(&self.inner, &workflow, Some(&input), None)
                .and_then(|value| self.inner.keys.ticket(workflow.name(), value));
            self.spawn(Run::fresh(id, workflow, input, now).with_ticket(ticket));
        }
        Ok(mine)
    }
}
