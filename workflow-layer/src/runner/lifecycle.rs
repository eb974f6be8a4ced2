//! How executions come to run in this process: ids reserved from the store, interrupted
//! executions claimed and resumed, each execution's driver spawned and tracked in the live
//! map until it ends, and the heartbeat renewing this runner's leases.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use cloacina_ledger::now_unix_us;
use tokio::sync::watch;

use super::drive::{self, Control, Run};
use super::{lock, DefaultRunner, Inner, Live, RunnerError, ID_BLOCK};

impl DefaultRunner {
    pub(super) async fn next_id(&self) -> Result<u64, RunnerError> {
        let mut ids = self.inner.ids.lock().await;
        if ids.0 >= ids.1 {
            let first = self.inner.store.reserve_execution_ids(ID_BLOCK).await?;
            *ids = (first, first + ID_BLOCK);
        }
        let id = ids.0;
        ids.0 += 1;
        Ok(id)
    }

    /// Claims this runner's own unfinished executions (a restart under the same name) and
    /// resumes those whose workflow is known. Others' expired executions and submitted
    /// work are left to the claimer (within its limit, and only if this runner takes work).
    pub(super) async fn resume_claimed(&self) -> Result<(), RunnerError> {
        let now = now_unix_us();
        let claimed = self
            .inner
            .store
            .claim_unfinished(
                &self.inner.config.runner_id,
                // No lease is older than this: only this runner's own are taken.
                i64::MIN,
                now.saturating_add(self.inner.config.lease_us()),
                usize::MAX,
            )
            .await?;
        for stored in claimed {
            let name = stored.execution.workflow.clone();
            if stored.takeovers > self.inner.config.max_takeovers {
                self.take(stored).await;
                continue;
            }
            match self.resolve(&name) {
                Ok(_) => self.adopt(stored),
                Err(e) => {
                    tracing::info!(execution = stored.execution.id, workflow = %name, error = %e,
                        "interrupted execution waits for its workflow to be registered");
                    lock(&self.inner.orphans).push(stored);
                }
            }
        }
        Ok(())
    }

    pub(super) fn adopt(&self, stored: cloacina_ledger::StoredExecution) {
        let Some(workflow) = self.known(&stored.execution.workflow) else {
            let mut orphans = lock(&self.inner.orphans);
            if !orphans
                .iter()
                .any(|o| o.execution.id == stored.execution.id)
            {
                tracing::info!(execution = stored.execution.id, workflow = %stored.execution.workflow,
                    "claimed execution waits for its workflow to be registered here");
                orphans.push(stored);
            }
            return;
        };
        tracing::info!(
            execution = stored.execution.id,
            workflow = workflow.name(),
            recorded_tasks = stored.tasks.len(),
            "resuming an interrupted execution"
        );
        self.spawn(Run::resumed(workflow, stored));
    }

    /// Starts the driver of `run`, unless the runner is shutting down: then the execution
    /// stays unfinished in the store and the next runner start resumes it.
    pub(super) fn spawn(&self, run: Run) {
        let (control, control_rx) = watch::channel(Control::Running);
        let (done, result) = watch::channel(None);
        {
            let mut live = lock(&self.inner.live);
            // Checked under the lock `shutdown` reads the live map with: a driver either
            // counts for its drain or does not start.
            if !self.inner.accepting.load(Ordering::Acquire) {
                tracing::info!(
                    execution = run.id,
                    "runner shutting down: execution left for the next start"
                );
                return;
            }
            if live.contains_key(&run.id) {
                // Driven here already (a sweep and a schedule's fire can meet).
                return;
            }
            live.insert(
                run.id,
                Live {
                    control,
                    result,
                    since: std::time::Instant::now(),
                },
            );
        }
        let inner = Arc::clone(&self.inner);
        tokio::spawn(async move {
            let id = run.id;
            // Off the live map however the driver ends (a panic included), so shutdown
            // never waits for a driver that is gone.
            let _gone = LiveGuard {
                inner: Arc::clone(&inner),
                id,
            };
            let control = control_rx.clone();
            let outcome = drive::drive(&inner, run, control_rx).await;
            // Stopped because another runner took it over (told by the heartbeat, or by the
            // store refusing its records): that runner drives it now.
            let lost = matches!(&outcome, Err(e) if matches!(**e, cloacina_ledger::LedgerError::ClaimLost { .. }))
                || *control.borrow() == Control::Lost;
            if lost {
                tracing::warn!(
                    execution = id,
                    "execution stopped here: another runner holds it"
                );
                inner.claims.count_lost();
            }
            // Off the live map first: a status query from now on reads the store, which
            // holds the end (recorded before the driver returned).
            drop(_gone);
            let _ = done.send(Some(outcome));
        });
    }
}

/// Removes an execution from the live map when its driver ends.
struct LiveGuard {
    inner: Arc<Inner>,
    id: u64,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        let left = {
            let mut live = lock(&self.inner.live);
            live.remove(&self.id);
            live.len()
        };
        self.inner.drained.notify_waiters();
        // Room while work may be waiting: the claimer takes more (one claim at a time;
        // wake-ups while it claims coalesce into one).
        if left < super::claims::claim_limit(&self.inner.config) && self.inner.claims.backlogged() {
            self.inner.claimer_wake.notify_one();
        }
    }
}

/// Renews this runner's leases every third of the lease while it lives.
pub(super) async fn heartbeat(inner: std::sync::Weak<Inner>) {
    let period = match inner.upgrade() {
        Some(i) => (i.config.lease / 3).max(Duration::from_millis(10)),
        None => return,
    };
    loop {
        tokio::time::sleep(period).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let until = now_unix_us().saturating_add(inner.config.lease_us());
        let began = std::time::Instant::now();
        match inner
            .store
            .renew_claims(&inner.config.runner_id, until)
            .await
        {
            Ok(held) => super::claims::stop_lost(&inner, &held, began).await,
            Err(e) => tracing::warn!(error = %e, "cannot renew workflow leases"),
        }
    }
}
