//! Several runners on one store: work submitted through the store for any runner
//! ([`DefaultRunner::submit`]), the claimer task that takes it (woken by the store's work
//! signal, PostgreSQL `LISTEN`/`NOTIFY`, with a sweep on a timer as the slow fallback) and
//! takes over executions whose runner's lease expired, the cap after which such an
//! execution is abandoned, and the fencing check that stops an execution this runner lost.
//!
//! There is no cluster protocol: runners share only the store. A claim is one atomic
//! statement (`FOR UPDATE SKIP LOCKED` on PostgreSQL), a lease is renewed by the heartbeat,
//! and every record a runner writes is fenced by its claim ([`WorkflowStore::write_as`]).
//!
//! [`WorkflowStore::write_as`]: cloacina_ledger::WorkflowStore::write_as

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;

use cloacina_ledger::{
    now_unix_us, ExecutionEndRecord, ExecutionRecord, ExecutionStatus, StoredExecution,
    WorkflowRecord, UNCLAIMED,
};
use serde_json::Value;

use super::drive::Control;
use super::{lock, stored, DefaultRunner, Inner, RunnerError};
use crate::Context;

/// What this runner's claims did since it started ([`DefaultRunner::claim_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClaimStats {
    /// Claim statements run (on a signal, after a full claim, or by the sweep).
    pub claim_queries: u64,
    /// Executions they took (submitted work and takeovers).
    pub claimed: u64,
    /// Claim statements that found nothing to take: an idle sweep, or work another runner
    /// took first (PostgreSQL skips rows another claim holds: `SKIP LOCKED`).
    pub empty_claims: u64,
    /// Executions taken over from a runner whose lease expired (their unrecorded tasks
    /// run again here).
    pub takeovers: u64,
    /// Executions ended Failed (`ABANDONED:`) because they had been taken over more than
    /// [`RunnerConfig::max_takeovers`](super::RunnerConfig::max_takeovers) times.
    pub abandoned: u64,
    /// Executions this runner stopped because another runner took them over (its lease
    /// had expired); none of their later records were written.
    pub lost: u64,
}

/// The counters behind [`ClaimStats`].
#[derive(Debug, Default)]
pub(super) struct ClaimCounters {
    claim_queries: AtomicU64,
    claimed: AtomicU64,
    empty_claims: AtomicU64,
    takeovers: AtomicU64,
    abandoned: AtomicU64,
    lost: AtomicU64,
    /// The last claim took all it could: more work may be waiting, so a driver ending
    /// wakes the claimer.
    backlog: AtomicBool,
}

impl ClaimCounters {
    fn snapshot(&self) -> ClaimStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ClaimStats {
            claim_queries: get(&self.claim_queries),
            claimed: get(&self.claimed),
            empty_claims: get(&self.empty_claims),
            takeovers: get(&self.takeovers),
            abandoned: get(&self.abandoned),
            lost: get(&self.lost),
        }
    }

    /// An execution this runner drove was stopped: another runner holds it.
    pub(super) fn count_lost(&self) {
        Self::add(&self.lost, 1);
        metrics::counter!("cloacina_workflow_claims_lost_total").increment(1);
    }

    /// Whether the last claim took all it could (more work may be waiting).
    pub(super) fn backlogged(&self) -> bool {
        self.backlog.load(Ordering::Acquire)
    }

    fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

impl DefaultRunner {
    /// Submits workflow `name` on `input` for whichever runner sharing the store claims it
    /// first (this one too, if it [takes work](super::RunnerConfig::takes_work)), and returns
    /// its id once its start is durable. On PostgreSQL the runners of every process are told
    /// at once (`NOTIFY`); elsewhere those of this process are, and others find it by their
    /// sweep. [`wait`](Self::wait) and [`status`](Self::status) follow it wherever it runs.
    pub async fn submit(&self, name: &str, input: Context<Value>) -> Result<u64, RunnerError> {
        if !self.inner.accepting.load(Ordering::Acquire) {
            return Err(RunnerError::ShuttingDown);
        }
        let workflow = self.resolve(name)?;
        let id = self.next_id().await?;
        let record = ExecutionRecord {
            id,
            workflow: workflow.name().to_owned(),
            version: workflow.version().to_owned(),
            input: stored::bytes(&input)?,
            created_at_unix_us: now_unix_us(),
            owner: UNCLAIMED.to_owned(),
            lease_until_unix_us: 0,
        };
        self.inner
            .recorder
            .start(WorkflowRecord::Started(record))
            .await
            .map_err(RunnerError::Store)?
            .written()
            .await
            .map_err(RunnerError::Store)?;
        Ok(id)
    }

    /// How many executions in the store have started and not ended, whichever runner
    /// holds them (or none yet): the backlog of every runner sharing the store.
    pub async fn unfinished_executions(&self) -> Result<u64, RunnerError> {
        Ok(self.inner.store.unfinished_count().await?)
    }

    /// What this runner's claims did since it started.
    pub fn claim_stats(&self) -> ClaimStats {
        self.inner.claims.snapshot()
    }
}

/// The claimer: claims submitted work and expired leases while this runner drives fewer
/// executions than twice its concurrency ([`claim_limit`]), when the store signals work,
/// when a driver ends after a claim that took all it could, and every [`sweep_interval`]. Ends when shutdown begins
/// (shutdown waits for it, so nothing is claimed after).
///
/// [`sweep_interval`]: super::RunnerConfig::sweep_interval
pub(super) async fn claimer(inner: Weak<Inner>, wake: Arc<tokio::sync::Notify>) {
    let (mut signal, mut stopping, sweep) = match inner.upgrade() {
        Some(i) => (
            i.store.work_signal(),
            i.stopping.subscribe(),
            i.config.sweep_interval,
        ),
        None => return,
    };
    loop {
        let full = match inner.upgrade() {
            Some(inner) if !*stopping.borrow() => claim_once(&inner).await,
            _ => return,
        };
        if full {
            // It took all it could: more may wait once drivers end.
            continue;
        }
        let signalled = async {
            match signal.as_mut() {
                Some(s) => {
                    if s.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = signalled => {}
            () = wake.notified() => {}
            () = tokio::time::sleep(sweep) => {}
            _ = stopping.wait_for(|stop| *stop) => return,
        }
    }
}

/// The most executions a runner drives before it stops claiming: twice its concurrency,
/// so the next claim's round trips overlap the running executions instead of leaving the
/// runner idle while it waits for them.
pub(super) fn claim_limit(config: &super::RunnerConfig) -> usize {
    config.concurrency.saturating_mul(2)
}

/// One claim for as many executions as this runner has room for; `true` if it took that
/// many (more may be waiting).
async fn claim_once(inner: &Arc<Inner>) -> bool {
    let room = claim_limit(&inner.config).saturating_sub(lock(&inner.live).len());
    if room == 0 {
        inner.claims.backlog.store(true, Ordering::Release);
        return false;
    }
    let now = now_unix_us();
    let until = now.saturating_add(inner.config.lease_us());
    // Only work this runner can do: the workflows registered here and those declared
    // in this binary (a runner of an older build leaves a new workflow's work to others).
    let workflows = inner.workflow_names();
    let claimed = match inner
        .store
        .claim_expired(&inner.config.runner_id, now, until, room, &workflows)
        .await
    {
        Ok(claimed) => claimed,
        Err(e) => {
            tracing::warn!(error = %e, "cannot claim work from the workflow store; the sweep tries again");
            return false;
        }
    };
    let c = &inner.claims;
    ClaimCounters::add(&c.claim_queries, 1);
    ClaimCounters::add(&c.claimed, claimed.len() as u64);
    if claimed.is_empty() {
        ClaimCounters::add(&c.empty_claims, 1);
    }
    let full = claimed.len() >= room;
    c.backlog.store(full, Ordering::Release);
    let runner = DefaultRunner {
        inner: Arc::clone(inner),
    };
    for stored in claimed {
        if lock(&inner.live).contains_key(&stored.execution.id) {
            // This runner's own (its lease lapsed while it drove it): it goes on.
            continue;
        }
        // Submitted work is claimed with no takeover; any later claim of it is one.
        if stored.takeovers > 0 {
            ClaimCounters::add(&c.takeovers, 1);
            metrics::counter!("cloacina_workflow_takeovers_total").increment(1);
        }
        runner.take(stored).await;
    }
    full
}

impl DefaultRunner {
    /// Drives a claimed execution, or abandons it if it was taken over too often.
    pub(super) async fn take(&self, stored: StoredExecution) {
        if stored.takeovers > self.inner.config.max_takeovers {
            abandon(&self.inner, stored).await;
        } else {
            self.adopt(stored);
        }
    }
}

/// Ends an execution taken over too often: Failed, `ABANDONED:`, with the tasks whose
/// outcomes were never recorded.
async fn abandon(inner: &Arc<Inner>, stored: StoredExecution) {
    let id = stored.execution.id;
    let recorded: HashSet<&str> = stored.tasks.iter().map(|t| t.task.as_str()).collect();
    let unrecorded = match inner
        .workflows
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&stored.execution.workflow)
    {
        Some(w) => {
            let tasks: Vec<&str> = w
                .tasks()
                .iter()
                .map(|t| t.id())
                .filter(|t| !recorded.contains(t))
                .collect();
            format!("[{}]", tasks.join(", "))
        }
        None => "(its workflow is not registered here)".to_owned(),
    };
    let error = format!(
        "ABANDONED: taken over {} times after its runners' leases expired (limit {}); \
         tasks never recorded: {unrecorded}",
        stored.takeovers, inner.config.max_takeovers,
    );
    tracing::error!(execution = id, workflow = %stored.execution.workflow, %error,
        "abandoning an execution");
    let end = ExecutionEndRecord {
        execution_id: id,
        status: ExecutionStatus::Failed,
        final_context: stored.execution.input.clone(),
        error: Some(error),
        finished_at_unix_us: now_unix_us(),
    };
    match inner
        .recorder
        .record(vec![WorkflowRecord::Ended(end)])
        .await
    {
        Ok(()) => {
            ClaimCounters::add(&inner.claims.abandoned, 1);
            metrics::counter!("cloacina_workflow_abandoned_total").increment(1);
        }
        Err(e) => {
            tracing::warn!(execution = id, error = %e, "cannot record an abandoned execution's end; the sweep tries again");
        }
    }
}

/// After a lease renewal that `held` answered (begun at `began`): every execution this
/// runner drives, started before the previous renewal, that the store no longer says is
/// its own was taken over: its driver stops at once and records nothing more.
pub(super) async fn stop_lost(inner: &Arc<Inner>, held: &[u64], began: Instant) {
    let held: HashSet<u64> = held.iter().copied().collect();
    let grace = inner.config.lease / 3;
    let suspects: Vec<u64> = lock(&inner.live)
        .iter()
        .filter(|(id, l)| !held.contains(id) && began.saturating_duration_since(l.since) > grace)
        .map(|(id, _)| *id)
        .collect();
    for id in suspects {
        // Confirmed by the store: an execution not renewed may have just ended.
        let Ok(Some(stored)) = inner.store.execution(id).await else {
            continue;
        };
        if stored.execution.owner == inner.config.runner_id {
            continue;
        }
        let live = lock(&inner.live);
        if let Some(l) = live.get(&id) {
            tracing::warn!(execution = id, holder = %stored.execution.owner,
                "another runner took this execution over (this runner's lease expired): stopping it here");
            // Counted when its driver ends (`count_lost`).
            l.control.send_replace(Control::Lost);
        }
    }
}
