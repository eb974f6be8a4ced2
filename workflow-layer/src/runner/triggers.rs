//! Polling triggers: a user function polled on an interval that says whether to start a
//! workflow (and with what input), polled **once per interval across all runners** sharing
//! the store, with de-duplication of fires by their context.
//!
//! Every runner of a deployment registers the same triggers (they are code, not data).
//! Time is cut into slots of the trigger's interval (aligned to the Unix epoch); before
//! polling slot `k`, a runner claims it in the store: a record whose id is derived from
//! `(trigger, k)`, written started-and-ended in one write; the store keeps the first, so
//! one runner polls each slot and the others pass it by. That record is the poll's audit
//! record. A fire starts an execution whose id is derived from `(trigger, k)` too.
//!
//! De-duplication (unless `allow_concurrent`): the fired context's SHA-256 is kept in the
//! store (checkpoint owner [`TRIGGERS_OWNER`], key `trigger/hash`) with the execution it
//! started; a fire whose hash names an execution that has not ended is skipped.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use cloacina_ledger::{
    now_unix_us, CheckpointRecord, Commit, ExecutionEndRecord, ExecutionRecord, ExecutionStatus,
    Record, WorkflowRecord,
};
use futures_util::FutureExt;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::schedules::derived_id;
use super::{lock, DefaultRunner, Inner, RunnerError};
use crate::Context;

/// The checkpoint owner under which triggers' de-duplication hashes are stored.
pub const TRIGGERS_OWNER: &str = "cloacina/triggers";

/// The workflow name of poll records (the store's audit of who polled which slot).
const POLL_RECORD: &str = "cloacina/trigger-poll";

/// The shortest interval a trigger may have.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// What a poll decided.
#[derive(Debug, Clone, PartialEq)]
pub enum TriggerResult {
    /// Start the workflow, with this input (empty if `None`).
    Fire(Option<Context<Value>>),
    /// Nothing to do this time.
    Skip,
}

/// A poll that failed; logged and counted, and the trigger polls again next interval.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct TriggerError(pub String);

impl TriggerError {
    /// A failed poll, saying why.
    pub fn new(reason: impl Into<String>) -> Self {
        Self(reason.into())
    }
}

type PollFuture = Pin<Box<dyn Future<Output = Result<TriggerResult, TriggerError>> + Send>>;
type PollFn = Arc<dyn Fn() -> PollFuture + Send + Sync>;

/// A polling trigger: `poll` is called every `interval` (by one runner of those sharing the
/// store) and starts `workflow` when it says [`TriggerResult::Fire`].
///
/// Each execution's input is the fired context plus `trigger` (the trigger's name).
#[derive(Clone)]
pub struct PollingTrigger {
    name: String,
    workflow: String,
    interval: Duration,
    allow_concurrent: bool,
    poll_timeout: Duration,
    poll: PollFn,
}

impl std::fmt::Debug for PollingTrigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PollingTrigger")
            .field("name", &self.name)
            .field("workflow", &self.workflow)
            .field("interval", &self.interval)
            .field("allow_concurrent", &self.allow_concurrent)
            .finish_non_exhaustive()
    }
}

impl PollingTrigger {
    /// Trigger `name` polling `poll` every `interval` to start `workflow`. By default a fire
    /// whose context equals that of an execution it started that has not ended is skipped
    /// (see [`allow_concurrent`](Self::allow_concurrent)); a poll may take 30 s.
    pub fn new<F, Fut>(
        name: impl Into<String>,
        workflow: impl Into<String>,
        interval: Duration,
        poll: F,
    ) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<TriggerResult, TriggerError>> + Send + 'static,
    {
        Self {
            name: name.into(),
            workflow: workflow.into(),
            interval,
            allow_concurrent: false,
            poll_timeout: Duration::from_secs(30),
            poll: Arc::new(move || Box::pin(poll())),
        }
    }

    /// Whether fires with the same context may run at once (default `false`: such a fire
    /// is skipped while the execution of the last one has not ended).
    pub fn allow_concurrent(mut self, allow: bool) -> Self {
        self.allow_concurrent = allow;
        self
    }

    /// How long a poll may take before it is cut off and counted as failed (default 30 s).
    pub fn poll_timeout(mut self, timeout: Duration) -> Self {
        self.poll_timeout = timeout;
        self
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A trigger registered in this runner, with what its polls did here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerInfo {
    /// Its name.
    pub name: String,
    /// The workflow it starts.
    pub workflow: String,
    /// Its interval.
    pub interval: Duration,
    /// Whether same-context fires may run at once.
    pub allow_concurrent: bool,
    /// Polls this runner made (slots it claimed).
    pub polls: u64,
    /// Slots another runner polled.
    pub polled_elsewhere: u64,
    /// Polls that fired and started an execution.
    pub fires: u64,
    /// Polls that said skip.
    pub skips: u64,
    /// Fires skipped because the execution of the same context had not ended.
    pub deduplicated: u64,
    /// Polls that failed, panicked or timed out, and fires that could not start.
    pub errors: u64,
}

/// A registered trigger's counters, shared with its poll loop.
#[derive(Debug, Default)]
pub(super) struct Counters {
    polls: AtomicU64,
    elsewhere: AtomicU64,
    fires: AtomicU64,
    skips: AtomicU64,
    deduplicated: AtomicU64,
    errors: AtomicU64,
}

/// A registered trigger: its definition, counters and poll loop.
pub(super) struct Registered {
    trigger: PollingTrigger,
    counters: Arc<Counters>,
    task: tokio::task::JoinHandle<()>,
}

impl Registered {
    fn info(&self) -> TriggerInfo {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TriggerInfo {
            name: self.trigger.name.clone(),
            workflow: self.trigger.workflow.clone(),
            interval: self.trigger.interval,
            allow_concurrent: self.trigger.allow_concurrent,
            polls: get(&c.polls),
            polled_elsewhere: get(&c.elsewhere),
            fires: get(&c.fires),
            skips: get(&c.skips),
            deduplicated: get(&c.deduplicated),
            errors: get(&c.errors),
        }
    }
}

/// This runner's triggers.
pub(super) type Triggers = std::sync::Mutex<HashMap<String, Registered>>;

/// Stops every trigger's poll loop (a poll under way is dropped) and waits for them.
pub(super) async fn stop_all(triggers: &Triggers) {
    let tasks: Vec<_> = lock(triggers).drain().map(|(_, r)| r.task).collect();
    for task in tasks {
        task.abort();
        let _ = task.await;
    }
}

impl DefaultRunner {
    /// Registers `trigger` in this runner and starts polling it (every runner of a
    /// deployment registers the same triggers; each interval one of them polls). Errors:
    /// an empty name or one with NUL, an interval under [`MIN_POLL_INTERVAL`], a zero poll
    /// timeout, a trigger of that name already registered here, an unknown workflow, or no
    /// tokio runtime to poll on.
    pub fn register_trigger(&self, trigger: PollingTrigger) -> Result<(), RunnerError> {
        let invalid = |reason: &str| RunnerError::InvalidTrigger {
            name: trigger.name.clone(),
            reason: reason.to_owned(),
        };
        if trigger.name.is_empty() || trigger.name.contains('\0') {
            return Err(invalid("the name is empty or contains NUL"));
        }
        if trigger.interval < MIN_POLL_INTERVAL {
            return Err(invalid(&format!(
                "the interval {:?} is under the minimum {MIN_POLL_INTERVAL:?}",
                trigger.interval
            )));
        }
        if trigger.poll_timeout.is_zero() {
            return Err(invalid("the poll timeout must be more than zero"));
        }
        self.resolve(&trigger.workflow)?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| invalid("no tokio runtime to poll it on"))?;
        let mut triggers = lock(&self.inner.triggers);
        if triggers.contains_key(&trigger.name) {
            return Err(invalid("a trigger of that name is registered here already"));
        }
        let counters = Arc::new(Counters::default());
        let task = runtime.spawn(poll_loop(
            Arc::downgrade(&self.inner),
            trigger.clone(),
            Arc::clone(&counters),
        ));
        triggers.insert(
            trigger.name.clone(),
            Registered {
                trigger,
                counters,
                task,
            },
        );
        Ok(())
    }

    /// Stops polling trigger `name` here; `false` if it was not registered.
    pub async fn unregister_trigger(&self, name: &str) -> bool {
        let registered = lock(&self.inner.triggers).remove(name);
        match registered {
            Some(r) => {
                r.task.abort();
                let _ = r.task.await;
                true
            }
            None => false,
        }
    }

    /// The triggers registered here, by name, with what their polls did here.
    pub fn triggers(&self) -> Vec<TriggerInfo> {
        let mut out: Vec<TriggerInfo> = lock(&self.inner.triggers)
            .values()
            .map(Registered::info)
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX).max(1)
}

/// Polls `trigger` at each slot this runner claims, until the runner stops.
async fn poll_loop(inner: Weak<Inner>, trigger: PollingTrigger, counters: Arc<Counters>) {
    let interval = micros(trigger.interval);
    let mut stopping = match inner.upgrade() {
        Some(i) => i.stopping.subscribe(),
        None => return,
    };
    let mut slot = now_unix_us() / interval;
    loop {
        // The start of the next slot.
        slot += 1;
        let wait = slot.saturating_mul(interval).saturating_sub(now_unix_us());
        let wait = Duration::from_micros(u64::try_from(wait).unwrap_or(0));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stopping.wait_for(|stop| *stop) => return,
        }
        // Slots missed while the last poll ran are passed over: one poll per interval.
        slot = slot.max(now_unix_us() / interval);
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let runner = DefaultRunner { inner: strong };
        match runner.claim_slot(&trigger.name, interval, slot).await {
            Ok(true) => runner.poll(&trigger, slot, &counters).await,
            Ok(false) => {
                counters.elsewhere.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(trigger = %trigger.name, error = %e, "cannot claim a trigger's poll; next interval tries again");
            }
        }
    }
}

impl DefaultRunner {
    /// Claims poll slot `slot` (of `interval` µs) of trigger `name` in the store; `true`
    /// if this runner won. The interval is part of the slot's id: runners of two versions
    /// of a trigger with different intervals never share slot ids.
    async fn claim_slot(&self, name: &str, interval: i64, slot: i64) -> Result<bool, RunnerError> {
        let mut at = [0u8; 16];
        at[..8].copy_from_slice(&interval.to_be_bytes());
        at[8..].copy_from_slice(&slot.to_be_bytes());
        let id = derived_id(b"cloacina-trigger-poll", name, &at);
        let now = now_unix_us();
        let owner = self.inner.config.runner_id.clone();
        let start = ExecutionRecord {
            id,
            workflow: POLL_RECORD.to_owned(),
            version: name.to_owned(),
            input: Vec::new(),
            created_at_unix_us: now,
            owner: owner.clone(),
            lease_until_unix_us: 0,
        };
        let end = ExecutionEndRecord {
            execution_id: id,
            status: ExecutionStatus::Completed,
            final_context: Vec::new(),
            error: None,
            finished_at_unix_us: now,
        };
        self.inner
            .store
            .write(
                &[WorkflowRecord::Started(start), WorkflowRecord::Ended(end)],
                Commit::Durable,
            )
            .await?;
        // The first record written wins.
        Ok(self.inner.store.execution(id).await?.is_some_and(|kept| {
            kept.execution.owner == owner && kept.execution.created_at_unix_us == now
        }))
    }

    /// One poll of `trigger` (slot `slot` is this runner's), and its fire.
    async fn poll(&self, trigger: &PollingTrigger, slot: i64, counters: &Counters) {
        counters.polls.fetch_add(1, Ordering::Relaxed);
        let name = &trigger.name;
        let polled = tokio::time::timeout(
            trigger.poll_timeout,
            std::panic::AssertUnwindSafe((trigger.poll)()).catch_unwind(),
        )
        .await;
        let fired = match polled {
            Ok(Ok(Ok(TriggerResult::Fire(ctx)))) => ctx.unwrap_or_default(),
            Ok(Ok(Ok(TriggerResult::Skip))) => {
                counters.skips.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(Ok(Err(e))) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(trigger = %name, error = %e, "trigger poll failed");
                return;
            }
            Ok(Err(_panic)) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(trigger = %name, "trigger poll panicked");
                return;
            }
            Err(_) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(trigger = %name, timeout = ?trigger.poll_timeout, "trigger poll timed out");
                return;
            }
        };
        match self.fire_trigger(trigger, slot, fired).await {
            Ok(true) => {
                counters.fires.fetch_add(1, Ordering::Relaxed);
            }
            Ok(false) => {
                counters.deduplicated.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(trigger = %name, error = %e, "trigger fired but its workflow did not start");
            }
        }
    }

    /// Starts the trigger's workflow on `ctx` unless a same-context execution is still
    /// running (and concurrency is not allowed); `Ok(false)` if skipped so.
    async fn fire_trigger(
        &self,
        trigger: &PollingTrigger,
        slot: i64,
        ctx: Context<Value>,
    ) -> Result<bool, RunnerError> {
        let name = &trigger.name;
        let key = if trigger.allow_concurrent {
            None
        } else {
            let json = serde_json::to_vec(&ctx.to_json()?).map_err(|e| {
                RunnerError::Context(crate::ContextError::Json {
                    key: "(trigger context)".into(),
                    message: e.to_string(),
                })
            })?;
            let hash = Sha256::digest(&json);
            let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
            let key = format!("{name}/{hex}");
            if let Some(previous) = self.inner.ledger.checkpoint(TRIGGERS_OWNER, &key).await? {
                let id = <[u8; 8]>::try_from(previous.value.as_slice())
                    .map(u64::from_be_bytes)
                    .ok();
                if let Some(id) = id {
                    if let Some(running) = self.inner.store.execution(id).await? {
                        if running.end.is_none() {
                            tracing::debug!(trigger = %name, execution = id, "fire skipped: the same context is still running");
                            return Ok(false);
                        }
                    }
                }
            }
            Some(key)
        };
        let workflow = self.resolve(&trigger.workflow)?;
        let mut input = ctx;
        input.insert_or_update("trigger", Value::from(name.as_str()));
        let id = derived_id(b"cloacina-trigger-fire", name, &slot.to_be_bytes());
        if self.start_once(id, workflow, input).await? {
            tracing::info!(trigger = %name, execution = id, "trigger fired");
        }
        if let Some(key) = key {
            // After the start: whoever reads it finds the execution. (A crash between the
            // two lets the next same-context fire run beside this one.)
            let record = Record::Checkpoint(CheckpointRecord {
                owner: TRIGGERS_OWNER.to_owned(),
                key,
                value: id.to_be_bytes().to_vec(),
                at_unix_us: now_unix_us(),
            });
            self.inner.ledger.append(&[record], Commit::Durable).await?;
        }
        Ok(true)
    }
}
