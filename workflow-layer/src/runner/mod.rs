//! [`DefaultRunner`]: durable workflow executions over the ledger's [`WorkflowStore`].
//!
//! Each execution is driven by one tokio task running the sans-IO [`ExecutionState`]
//! (`drive.rs`); its records go through one group-commit task (`recorder.rs`), so many
//! executions share each store commit. A task's outcome and output are recorded before any
//! of its dependants start; an execution's start is recorded before
//! [`DefaultRunner::schedule`] returns its id. Completion is pushed to waiters in process,
//! never polled. Executions begin in `starts.rs`; drivers are spawned, tracked and resumed
//! in `lifecycle.rs`; results of executions that ended lately are kept in `ended.rs`.
//! Several runners sharing a store claim work from it in `claims.rs`; cron schedules,
//! polling triggers and reactor subscriptions start executions from `schedules.rs`,
//! `triggers.rs` and `subscriptions.rs`.
//!
//! [`ExecutionState`]: crate::ExecutionState

mod claims;
mod config;
mod drive;
mod ended;
mod error;
mod events;
mod lifecycle;
mod recorder;
mod routing;
mod schedules;
mod starts;
mod stored;
mod subscriptions;
mod triggers;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use cloacina_ledger::{Ledger, LedgerError, WorkflowStore};
use serde_json::Value;
use tokio::sync::{broadcast, watch, Notify};

pub use claims::ClaimStats;
pub use config::{RunnerBuilder, RunnerConfig, WorkflowDurability};
pub use error::RunnerError;
pub use events::{ExecutionEvent, ExecutionEventKind, RecordedEvent};
pub use routing::{ExecutorPool, KeyLimit, KeyUsage, PoolUsage};
pub use schedules::{CatchUp, Schedule, ScheduleInfo, MAX_CATCH_UP, SCHEDULES_OWNER};
pub use subscriptions::{FiringSink, ReactorSubscription, SUBSCRIPTIONS_OWNER};
pub use triggers::{
    PollingTrigger, TriggerError, TriggerInfo, TriggerResult, MIN_POLL_INTERVAL, TRIGGERS_OWNER,
};

use crate::{Context, Workflow, WorkflowExecutionResult, WorkflowStatus};
use drive::Control;
use lifecycle::heartbeat;
use recorder::Recorder;

/// Runs workflows durably on one ledger: executions survive a crash of the process and
/// resume, without re-running completed tasks, when a runner starts again on the same store.
///
/// Cheap to clone (one shared runner).
#[derive(Clone)]
pub struct DefaultRunner {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for DefaultRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DefaultRunner")
            .field("backend", &self.inner.ledger.backend())
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// An execution this runner drives.
struct Live {
    control: watch::Sender<Control>,
    result: watch::Receiver<Option<Result<Arc<WorkflowExecutionResult>, Arc<LedgerError>>>>,
    /// When its driver started (a lease renewal soon after may not cover it yet).
    since: std::time::Instant,
}

pub(crate) struct Inner {
    ledger: Arc<dyn Ledger>,
    store: Arc<dyn WorkflowStore>,
    recorder: Recorder,
    config: RunnerConfig,
    workflows: RwLock<HashMap<String, Arc<Workflow>>>,
    live: Mutex<HashMap<u64, Live>>,
    /// Results of executions that ended here lately.
    ended: Mutex<ended::Ended>,
    /// Executions claimed at start whose workflow is not known yet.
    orphans: Mutex<Vec<cloacina_ledger::StoredExecution>>,
    /// Execution ids reserved from the store: `(next, end)`.
    ids: tokio::sync::Mutex<(u64, u64)>,
    /// Task slots: the executor pools.
    pools: routing::Pools,
    /// Per-key limits on running executions.
    keys: Arc<routing::KeyGates>,
    events: broadcast::Sender<ExecutionEvent>,
    accepting: AtomicBool,
    /// Set once `shutdown` begins (see [`DefaultRunner::shutting_down`]).
    stopping: watch::Sender<bool>,
    /// Names of the reactor subscriptions with a sink open here (one each).
    sinks: Mutex<std::collections::HashSet<String>>,
    drained: Notify,
    /// A schedule was written here: the scheduler reads them again at once.
    /// (Shared with the scheduler, which holds no strong reference while it waits.)
    schedules_changed: Arc<Notify>,
    /// The scheduler task, awaited by `shutdown`.
    scheduler: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// What claims did.
    claims: claims::ClaimCounters,
    /// Wakes the claimer (a driver ended while work may be waiting).
    claimer_wake: Arc<Notify>,
    /// The claimer task, awaited by `shutdown`.
    claimer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Polling triggers registered here, each with its poll loop.
    triggers: triggers::Triggers,
}

/// Execution ids reserved from the store at a time.
const ID_BLOCK: u64 = 1_024;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these locks leaves consistent data (single inserts/removes).
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl DefaultRunner {
    /// A runner on the ledger `url` names (a path or `sled://PATH`, the embedded default;
    /// `sqlite://PATH`; `postgres://...`; `memory://`) with [`RunnerConfig::default`].
    /// Interrupted executions of workflows it knows (declared with `#[workflow]`) resume at
    /// once; others when their workflow is registered.
    pub async fn new(url: &str) -> Result<Self, RunnerError> {
        Self::with_config(url, RunnerConfig::default()).await
    }

    /// A runner on `url` with `config`.
    pub async fn with_config(url: &str, config: RunnerConfig) -> Result<Self, RunnerError> {
        let ledger = cloacina_ledger::open(url).await?;
        Self::from_ledger(ledger, config).await
    }

    /// A runner on tenant `tenant`'s store at `url` (PostgreSQL: schema `tenant`; sled and
    /// SQLite: a store of its own beside the path).
    pub async fn with_schema(url: &str, tenant: &str) -> Result<Self, RunnerError> {
        let ledger = cloacina_ledger::open_tenant(url, tenant).await?;
        Self::from_ledger(ledger, RunnerConfig::default()).await
    }

    /// A builder: URL and settings.
    pub fn builder() -> RunnerBuilder {
        RunnerBuilder::default()
    }

    /// A runner on an open ledger (shared with reactors that record into it).
    pub async fn from_ledger(
        ledger: Arc<dyn Ledger>,
        config: RunnerConfig,
    ) -> Result<Self, RunnerError> {
        if config.sweep_interval.is_zero() {
            return Err(RunnerError::InvalidConfig {
                reason: "sweep_interval must be more than zero".into(),
            });
        }
        let pools = routing::Pools::new(config.concurrency, &config.pools)?;
        let keys = Arc::new(routing::KeyGates::new(&config.key_limits)?);
        let backend = ledger.backend();
        let store = Arc::clone(&ledger)
            .workflow_store()
            .ok_or(RunnerError::NoWorkflowStore { backend })?;
        let recorder = Recorder::spawn(
            Arc::clone(&ledger),
            Arc::clone(&store),
            &config.runner_id,
            config.durability.commit(),
        );
        let (events, _) = broadcast::channel(config.event_capacity.max(1));
        let inner = Arc::new(Inner {
            ledger,
            store,
            recorder,
            pools,
            keys,
            config,
            workflows: RwLock::new(HashMap::new()),
            live: Mutex::new(HashMap::new()),
            ended: Mutex::new(ended::Ended::default()),
            orphans: Mutex::new(Vec::new()),
            ids: tokio::sync::Mutex::new((0, 0)),
            events,
            accepting: AtomicBool::new(true),
            stopping: watch::channel(false).0,
            sinks: Mutex::new(std::collections::HashSet::new()),
            drained: Notify::new(),
            schedules_changed: Arc::new(Notify::new()),
            scheduler: Mutex::new(None),
            claims: claims::ClaimCounters::default(),
            claimer_wake: Arc::new(Notify::new()),
            claimer: Mutex::new(None),
            triggers: Mutex::new(HashMap::new()),
        });
        let runner = Self { inner };
        // Schedules declared with `#[workflow(schedule = "...")]`, under the workflow's name
        // (the same definition again changes nothing); before anything runs, so a bad one
        // leaves nothing started.
        for (workflow, declared) in crate::declared_schedules() {
            runner
                .register_schedule(
                    Schedule::new(workflow, workflow, declared.expression)
                        .time_zone(declared.time_zone),
                )
                .await?;
        }
        runner.resume_claimed().await?;
        tokio::spawn(heartbeat(Arc::downgrade(&runner.inner)));
        let scheduler = tokio::spawn(schedules::scheduler(Arc::downgrade(&runner.inner)));
        *lock(&runner.inner.scheduler) = Some(scheduler);
        if runner.inner.config.takes_work {
            let claimer = tokio::spawn(claims::claimer(
                Arc::downgrade(&runner.inner),
                Arc::clone(&runner.inner.claimer_wake),
            ));
            *lock(&runner.inner.claimer) = Some(claimer);
        }
        Ok(runner)
    }

    /// The ledger this runner records into (reactors can share it).
    pub fn ledger(&self) -> Arc<dyn Ledger> {
        Arc::clone(&self.inner.ledger)
    }

    /// Each executor pool's limit and the slots its running attempts hold, the default
    /// pool last.
    pub fn pools(&self) -> Vec<PoolUsage> {
        self.inner.pools.usage()
    }

    /// The executor pool that runs `workflow`'s task `task` (`default` if no pool's
    /// pattern matches `workflow::task`).
    pub fn pool_for(&self, workflow: &str, task: &str) -> String {
        self.inner.pools.pool_name(workflow, task).to_owned()
    }

    /// The key values of [`KeyLimit`]s in use now: executions running and waiting per value.
    pub fn key_usage(&self) -> Vec<KeyUsage> {
        self.inner.keys.usage()
    }

    /// Completes once [`DefaultRunner::shutdown`] has begun (at once if it has): for
    /// tasks that feed the runner and should stop with it.
    pub async fn shutting_down(&self) {
        let mut stopping = self.inner.stopping.subscribe();
        // An error means the runner is gone, which is a shutdown too.
        let _ = stopping.wait_for(|stop| *stop).await;
    }

    /// The settings in force.
    pub fn config(&self) -> &RunnerConfig {
        &self.inner.config
    }

    /// Registers a workflow built with [`Workflow::builder`] (declared ones need no call).
    /// The same workflow again is a no-op; another version under the same name is refused.
    /// Interrupted executions of it found at start resume now.
    pub fn register_workflow(&self, workflow: Workflow) -> Result<(), RunnerError> {
        let name = workflow.name().to_owned();
        {
            let mut known = self
                .inner
                .workflows
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(existing) = known.get(&name) {
                if existing.version() != workflow.version() {
                    return Err(RunnerError::AlreadyRegistered {
                        name,
                        registered: existing.version().to_owned(),
                        offered: workflow.version().to_owned(),
                    });
                }
                return Ok(());
            }
            known.insert(name.clone(), Arc::new(workflow));
        }
        // Schedules of this workflow start firing here.
        self.inner.schedules_changed.notify_one();
        let adopted: Vec<_> = {
            let mut orphans = lock(&self.inner.orphans);
            let (mine, rest) = orphans
                .drain(..)
                .partition(|e| e.execution.workflow == name);
            *orphans = rest;
            mine
        };
        for stored in adopted {
            self.adopt(stored);
        }
        Ok(())
    }

    /// Runs workflow `name` on `input` and waits for its end.
    pub async fn execute(
        &self,
        name: &str,
        input: Context<Value>,
    ) -> Result<WorkflowExecutionResult, RunnerError> {
        let id = self.schedule(name, input).await?;
        self.wait(id).await
    }

    /// Waits for execution `id` to end and returns what it ended with, wherever it runs.
    /// Pushed from the execution's driver when it runs here; otherwise (another runner
    /// sharing the store drives it, it waits to be claimed, or it ended earlier or in an
    /// earlier process) read from the store, polled every few milliseconds up to 200 ms.
    /// An execution that no runner can drive (its workflow registered nowhere) is waited
    /// for until one can.
    pub async fn wait(&self, id: u64) -> Result<WorkflowExecutionResult, RunnerError> {
        let mut poll = std::time::Duration::from_millis(2);
        loop {
            let receiver = lock(&self.inner.live).get(&id).map(|l| l.result.clone());
            if let Some(mut receiver) = receiver {
                let ended = receiver
                    .wait_for(Option::is_some)
                    .await
                    .map(|r| r.clone())
                    .ok()
                    .flatten();
                match ended {
                    // Paused while the runner takes work: another runner took it over
                    // (at shutdown, a paused execution is left unfinished: that is its end
                    // here).
                    Some(Ok(result))
                        if result.status == WorkflowStatus::Paused
                            && self.inner.accepting.load(Ordering::Acquire) => {}
                    Some(Ok(result)) => return Ok((*result).clone()),
                    // Its records were refused: another runner holds it; follow the store.
                    Some(Err(e)) if matches!(*e, LedgerError::ClaimLost { .. }) => {}
                    Some(Err(e)) => return Err(RunnerError::Store(e)),
                    None => {} // The driver went away: read what the store holds.
                }
            }
            if let Some(result) = lock(&self.inner.ended).get(id) {
                return Ok((*result).clone());
            }
            let stored = self.stored(id).await?;
            if let Some(result) =
                stored::result(&stored, self.known(&stored.execution.workflow).as_deref())
            {
                return Ok(result);
            }
            if !self.inner.accepting.load(Ordering::Acquire) {
                // Shut down: nothing here will drive it any more.
                return Err(RunnerError::NotHere {
                    id,
                    reason: format!(
                        "it is unfinished (held by runner `{}`) and this runner is shut down",
                        stored.execution.owner
                    ),
                });
            }
            tokio::time::sleep(poll).await;
            poll = (poll * 2).min(std::time::Duration::from_millis(200));
        }
    }

    /// Where execution `id` is: Running or Paused while this runner drives it, otherwise
    /// what the store says.
    pub async fn status(&self, id: u64) -> Result<WorkflowStatus, RunnerError> {
        if let Some(live) = lock(&self.inner.live).get(&id) {
            return Ok(match *live.control.borrow() {
                Control::Paused => WorkflowStatus::Paused,
                _ => WorkflowStatus::Running,
            });
        }
        if let Some(result) = lock(&self.inner.ended).get(id) {
            return Ok(result.status);
        }
        let stored = self.stored(id).await?;
        Ok(stored::status(stored.status))
    }

    /// What the store recorded of execution `id`: its submission first, each recorded
    /// task's start and outcome (with its attempts) in time order, and its end last if it
    /// ended.
    /// Works for executions of any runner sharing the store, and after restarts.
    pub async fn history(&self, id: u64) -> Result<Vec<RecordedEvent>, RunnerError> {
        let stored = self.stored(id).await?;
        Ok(events::recorded(&stored))
    }

    /// What the store holds of execution `id`.
    async fn stored(&self, id: u64) -> Result<cloacina_ledger::StoredExecution, RunnerError> {
        self.inner
            .store
            .execution(id)
            .await?
            .ok_or(RunnerError::UnknownExecution(id))
    }

    /// Cancels execution `id`: its running tasks are stopped (their attempts aborted), no
    /// other task starts, and it ends Cancelled with the outputs of the tasks that completed.
    pub fn cancel(&self, id: u64) -> Result<(), RunnerError> {
        self.control(id, Control::Cancelled)
    }

    /// Pauses execution `id`: running tasks finish, no new task starts until
    /// [`resume`](Self::resume).
    pub fn pause(&self, id: u64) -> Result<(), RunnerError> {
        self.control(id, Control::Paused)
    }

    /// Lets a paused execution go on.
    pub fn resume(&self, id: u64) -> Result<(), RunnerError> {
        self.control(id, Control::Running)
    }

    /// The stream of execution events (starts, task outcomes, pauses, ends) of this runner.
    /// A subscriber that falls more than [`RunnerConfig::event_capacity`] events behind
    /// misses the oldest and is told how many (`RecvError::Lagged`); executions never wait
    /// for subscribers.
    pub fn subscribe(&self) -> broadcast::Receiver<ExecutionEvent> {
        self.inner.events.subscribe()
    }

    /// Stops taking new executions and waits until every execution this runner drives has
    /// ended (paused ones are left unfinished in the store and resume at the next start);
    /// every record is written and flushed to stable storage when it returns, and the
    /// runner holds the store only until it is dropped.
    pub async fn shutdown(&self) -> Result<(), RunnerError> {
        self.inner.stopping.send_replace(true);
        // The claimer stops first (a claim under way ends, and what it took starts here and
        // is drained below): nothing is claimed after, and nothing claimed is left undriven.
        let claimer = lock(&self.inner.claimer).take();
        if let Some(claimer) = claimer {
            let _ = claimer.await;
        }
        {
            // Under the live lock: a spawn either happened (and is drained) or sees this.
            let _live = lock(&self.inner.live);
            self.inner.accepting.store(false, Ordering::Release);
        }
        // The scheduler stops (a fire under way ends first): no start is written after
        // this returns.
        self.inner.schedules_changed.notify_one();
        let scheduler = lock(&self.inner.scheduler).take();
        if let Some(scheduler) = scheduler {
            let _ = scheduler.await;
        }
        // Triggers stop polling (a poll under way is dropped; its slot is not polled again).
        triggers::stop_all(&self.inner.triggers).await;
        loop {
            let drained = self.inner.drained.notified();
            let paused: Vec<u64> = {
                let live = lock(&self.inner.live);
                if live.is_empty() {
                    break;
                }
                live.iter()
                    .filter(|(_, l)| *l.control.borrow() == Control::Paused)
                    .map(|(id, _)| *id)
                    .collect()
            };
            for id in paused {
                let _ = self.control(id, Control::Detached);
            }
            drained.await;
        }
        self.inner.recorder.close().await;
        self.inner.ledger.flush().await?;
        Ok(())
    }

    fn control(&self, id: u64, to: Control) -> Result<(), RunnerError> {
        let live = lock(&self.inner.live);
        let Some(l) = live.get(&id) else {
            return Err(RunnerError::NotHere {
                id,
                reason: "it is not running here (ended, unknown, or held by another runner)".into(),
            });
        };
        // Paused after shutdown began: nothing would ever resume it here.
        let to = if to == Control::Paused && !self.inner.accepting.load(Ordering::Acquire) {
            Control::Detached
        } else {
            to
        };
        l.control.send_if_modified(|c| {
            let change = *c != to && !matches!(*c, Control::Cancelled | Control::Lost);
            if change {
                *c = to;
            }
            change
        });
        Ok(())
    }

    fn known(&self, name: &str) -> Option<Arc<Workflow>> {
        let known = self
            .inner
            .workflows
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        known.get(name).cloned()
    }

    /// The registered workflow `name`, or the declared one (then registered).
    fn resolve(&self, name: &str) -> Result<Arc<Workflow>, RunnerError> {
        if let Some(w) = self.known(name) {
            return Ok(w);
        }
        match crate::declared_workflow(name) {
            Some(built) => {
                self.register_workflow(built?)?;
                self.known(name)
                    .ok_or_else(|| RunnerError::UnknownWorkflow {
                        name: name.to_owned(),
                        known: "(registered and removed at once)".into(),
                    })
            }
            None => {
                let names = self.inner.workflow_names();
                Err(RunnerError::UnknownWorkflow {
                    name: name.to_owned(),
                    known: if names.is_empty() {
                        "none".into()
                    } else {
                        names.join(", ")
                    },
                })
            }
        }
    }
}

impl Inner {
    /// The workflows this runner can run, sorted: registered here or declared in the binary.
    fn workflow_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .workflows
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        names.extend(crate::declared_workflows().into_iter().map(str::to_owned));
        names.sort_unstable();
        names.dedup();
        names
    }

    fn emit(&self, execution_id: u64, workflow: &str, kind: impl FnOnce() -> ExecutionEventKind) {
        if self.events.receiver_count() > 0 {
            let _ = self.events.send(ExecutionEvent {
                execution_id,
                workflow: workflow.to_owned(),
                kind: kind(),
            });
        }
    }
}
