//! [`ReactorBuilder`] and [`ReactorHandle`]: configure, spawn and drive a reactor.

use std::any::TypeId;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloacina_accumulators::{inbound_channel, BoundarySender, HealthBoard, InboundSender};
use cloacina_graph_core::{catch_panic, Boundary, CompiledGraph, Executor, InputCache, SourceName};
use cloacina_ledger::{Commit, Ledger, LedgerWriter, WriterOptions};
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::config::{FailurePolicy, InputStrategy, ReactionCriteria, SubscribeOptions};
use crate::core::{Command, Core};
use crate::durable::{Durability, RetentionPolicy};
use crate::firing::Firing;
use crate::health::ReactorHealth;
use crate::stats::{ReactorStats, StatsSnapshot};
use crate::subscription::{Subscriber, Subscription};

/// A reactor could not be built or driven.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReactorError {
    /// A criteria or sender names a source the graph does not read.
    #[error("reactor `{reactor}`: graph has no source `{source_name}`")]
    UnknownSource {
        /// Reactor.
        reactor: String,
        /// The source.
        source_name: SourceName,
    },
    /// A sender was asked for with another type than the graph reads.
    #[error("reactor `{reactor}`: source `{source_name}` carries {expected}, not {requested}")]
    SourceType {
        /// Reactor.
        reactor: String,
        /// The source.
        source_name: SourceName,
        /// Type the graph reads.
        expected: &'static str,
        /// Type asked for.
        requested: &'static str,
    },
    /// The criteria list no source.
    #[error("reactor `{reactor}`: criteria list no source")]
    EmptyCriteria {
        /// Reactor.
        reactor: String,
    },
    /// The reactor has stopped.
    #[error("reactor `{reactor}` has stopped")]
    Stopped {
        /// Reactor.
        reactor: String,
    },
    /// A recording reactor needs every source's values encodable.
    #[error("reactor `{reactor}`: source `{source_name}` ({type_name}) has no codec, so its boundaries cannot be recorded; make the type Serialize + DeserializeOwned or use Durability::None")]
    SourceNotRecordable {
        /// Reactor.
        reactor: String,
        /// The source.
        source_name: SourceName,
        /// Its type.
        type_name: &'static str,
    },
    /// The reactor failed (could not recover its state, or an engine bug).
    #[error("reactor `{reactor}` failed: {reason}")]
    Failed {
        /// Reactor.
        reactor: String,
        /// Why.
        reason: String,
    },
    /// No tokio runtime to spawn on.
    #[error("reactor `{reactor}`: no tokio runtime (spawn from within a runtime)")]
    NoRuntime {
        /// Reactor.
        reactor: String,
    },
}

/// A reactor's state, read through [`ReactorHandle::state`].
#[derive(Debug, Clone)]
pub struct ReactorState {
    /// Reactor name.
    pub reactor: String,
    /// The cache (an isolated snapshot).
    pub cache: InputCache,
    /// Dirty flag per source: new boundary since the last firing.
    pub dirty: Vec<(SourceName, bool)>,
    /// Boundaries queued and not yet applied (Sequential), oldest first.
    pub queued: Vec<(SourceName, Boundary)>,
    /// Whether firing is paused.
    pub paused: bool,
    /// Health.
    pub health: ReactorHealth,
    /// Firings so far.
    pub fires: u64,
}

/// What a reactor did before it stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Firings in its lifetime.
    pub fires: u64,
    /// Boundaries received in its lifetime.
    pub boundaries: u64,
    /// Sequential boundaries never fired because the reactor was paused at shutdown.
    pub unfired_queued: usize,
    /// Latest sources holding a value never fired because the reactor was paused at shutdown.
    pub unfired_dirty_sources: usize,
    /// Ledger records written.
    pub ledger_records: u64,
    /// Ledger records given up on (every append attempt failed) or never handed over.
    pub ledger_lost: u64,
    /// First ledger error, if any.
    pub ledger_error: Option<String>,
}

/// Configures a reactor for one compiled graph.
pub struct ReactorBuilder {
    graph: Arc<CompiledGraph>,
    name: String,
    criteria: ReactionCriteria,
    strategy: InputStrategy,
    failure_policy: FailurePolicy,
    inbound_capacity: usize,
    queue_limit: usize,
    firing_timeout: Option<Duration>,
    ledger: Option<(Arc<dyn Ledger>, usize)>,
    durability: Durability,
    snapshot_every: u64,
    retention: Option<RetentionPolicy>,
    board: Option<Arc<HealthBoard>>,
    after_fire: Vec<Arc<Notify>>,
}

impl std::fmt::Debug for ReactorBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReactorBuilder")
            .field("name", &self.name)
            .field("criteria", &self.criteria)
            .field("strategy", &self.strategy)
            .finish()
    }
}

impl ReactorBuilder {
    /// A reactor for `graph`, named after it, firing `when_any` with `Latest`.
    pub fn new(graph: Arc<CompiledGraph>) -> Self {
        Self {
            name: graph.name().to_owned(),
            graph,
            criteria: ReactionCriteria::default(),
            strategy: InputStrategy::default(),
            failure_policy: FailurePolicy::default(),
            inbound_capacity: 1024,
            queue_limit: 65_536,
            firing_timeout: Some(Duration::from_secs(30)),
            ledger: None,
            durability: Durability::default(),
            snapshot_every: 65_536,
            retention: None,
            board: None,
            after_fire: Vec::new(),
        }
    }

    /// Names the reactor (default: the graph's name).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// When to fire (default `when_any()`).
    pub fn criteria(mut self, criteria: ReactionCriteria) -> Self {
        self.criteria = criteria;
        self
    }

    /// Latest or Sequential (default Latest).
    pub fn strategy(mut self, strategy: InputStrategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// What to do when a firing fails (default: report it; see [`FailurePolicy`]).
    pub fn on_failure(mut self, policy: FailurePolicy) -> Self {
        self.failure_policy = policy;
        self
    }

    /// Room in the inbound queue (default 1024); a full queue makes senders wait.
    pub fn inbound_capacity(mut self, capacity: usize) -> Self {
        self.inbound_capacity = capacity.max(1);
        self
    }

    /// Sequential boundaries held while paused or warming (default 65,536); at the limit the
    /// reactor stops taking from the inbound queue, so senders wait. Nothing is dropped.
    pub fn queue_limit(mut self, limit: usize) -> Self {
        self.queue_limit = limit.max(1);
        self
    }

    /// Per-firing timeout (default 30 s; `None`: unlimited).
    pub fn firing_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.firing_timeout = timeout;
        self
    }

    /// Records this reactor's life in `ledger` (see [`ReactorBuilder::durability`] for how
    /// much), through a background writer with a bounded queue of `queue` records; at start
    /// the reactor restores the state recorded there.
    pub fn ledger(mut self, ledger: Arc<dyn Ledger>, queue: usize) -> Self {
        self.ledger = Some((ledger, queue));
        self
    }

    /// How much the ledger records and when `send` returns (default [`Durability::Batched`]).
    /// `Batched` and `Sync` need every source of the graph to have a codec (sources declared
    /// with `source::<T>` where `T: Serialize + DeserializeOwned` have one).
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Records a state snapshot after this many boundaries (default 65,536), and always at
    /// shutdown. Retention never removes what the latest snapshot does not cover.
    pub fn snapshot_every(mut self, boundaries: u64) -> Self {
        self.snapshot_every = boundaries.max(1);
        self
    }

    /// Removes old ledger records after every snapshot, in the background, so a long run
    /// stays bounded on disk (default: keep everything).
    pub fn retention(mut self, policy: RetentionPolicy) -> Self {
        self.retention = Some(policy);
        self
    }

    /// Gates firing on these accumulators' health (Warming until all are live).
    pub fn accumulator_health(mut self, board: Arc<HealthBoard>) -> Self {
        self.board = Some(board);
        self
    }

    /// Notified after every successful firing (batch accumulators flush on it).
    pub fn after_fire(mut self, notify: Arc<Notify>) -> Self {
        self.after_fire.push(notify);
        self
    }

    fn source_indices(&self, listed: &Option<Vec<SourceName>>) -> Result<Vec<bool>, ReactorError> {
        let n = self.graph.sources().len();
        match listed {
            None => Ok(vec![true; n]),
            Some(list) => {
                let mut watched = vec![false; n];
                for s in list {
                    let i = self.graph.source_index(s.as_str()).ok_or_else(|| {
                        ReactorError::UnknownSource {
                            reactor: self.name.clone(),
                            source_name: s.clone(),
                        }
                    })?;
                    watched[i] = true;
                }
                Ok(watched)
            }
        }
    }

    /// Spawns the reactor on the current tokio runtime.
    pub fn spawn(self) -> Result<ReactorHandle, ReactorError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| ReactorError::NoRuntime {
                reactor: self.name.clone(),
            })?;
        let (when_all, listed) = match &self.criteria {
            ReactionCriteria::WhenAny(l) => (false, l),
            ReactionCriteria::WhenAll(l) => (true, l),
        };
        let watched = self.source_indices(listed)?;
        let records_state = self.ledger.is_some() && self.durability.records_state();
        if records_state {
            if let Some(decl) = self.graph.sources().iter().find(|d| d.codec.is_none()) {
                return Err(ReactorError::SourceNotRecordable {
                    reactor: self.name.clone(),
                    source_name: decl.name.clone(),
                    type_name: decl.type_name,
                });
            }
        }
        let n_watched = watched.iter().filter(|w| **w).count();
        if n_watched == 0 {
            return Err(ReactorError::EmptyCriteria {
                reactor: self.name.clone(),
            });
        }
        let name: Arc<str> = Arc::from(self.name.as_str());
        let sources: Arc<[SourceName]> = self
            .graph
            .sources()
            .iter()
            .map(|s| s.name.clone())
            .collect();
        let (inbound, inbound_rx) = inbound_channel(self.inbound_capacity);
        let inbound = inbound.durable(records_state && self.durability == Durability::Sync);
        let (control, control_rx) = mpsc::unbounded_channel();
        let (health_tx, health_rx) = watch::channel(ReactorHealth::Starting);
        let stats = Arc::new(ReactorStats::default());
        let _guard = runtime.enter();
        let retention = match (&self.ledger, self.retention) {
            (Some((ledger, _)), Some(policy)) if records_state => {
                Some((Arc::clone(ledger), policy))
            }
            _ => None,
        };
        let core = Core {
            name: Arc::clone(&name),
            executor: Executor::new(Arc::clone(&self.graph)).with_timeout(self.firing_timeout),
            cache: self.graph.new_cache(),
            last_seq: 0,
            dirty: vec![false; sources.len()],
            watched,
            dirty_watched: 0,
            n_watched,
            when_all,
            strategy: self.strategy,
            failure_policy: self.failure_policy,
            queue: VecDeque::new(),
            queue_limit: self.queue_limit,
            paused: false,
            warmed: false,
            subscribers: Vec::new(),
            // Every reactor with a ledger restores at least its counters (firing ids must
            // not repeat); `Batched` and `Sync` restore their whole state.
            recover_from: self.ledger.as_ref().map(|(ledger, _)| Arc::clone(ledger)),
            ledger: self.ledger.map(|(ledger, queue)| {
                LedgerWriter::spawn(
                    ledger,
                    WriterOptions {
                        capacity: queue,
                        commit: if self.durability == Durability::Sync {
                            Commit::Durable
                        } else {
                            Commit::Buffered
                        },
                        ..WriterOptions::default()
                    },
                )
            }),
            durability: self.durability,
            outbox: Vec::with_capacity(256),
            snapshot_every: self.snapshot_every,
            since_snapshot: 0,
            retention,
            retaining: None,
            ledger_failed: false,
            ledger_unwritten: 0,
            inbound: inbound_rx,
            inbound_open: true,
            buf: Vec::with_capacity(256),
            draining: false,
            after_fire: self.after_fire,
            board: self.board,
            health: health_tx,
            stats: Arc::clone(&stats),
            next_id: 1,
            sources: Arc::clone(&sources),
            graph: Arc::clone(&self.graph),
        };
        let failure: Arc<Mutex<Option<String>>> = Arc::default();
        let failed = Arc::clone(&failure);
        let reactor = Arc::clone(&name);
        let task = runtime.spawn(async move {
            // Every user-code path is guarded inside; this catches engine bugs, so that the
            // handle reports `Failed` instead of a stale `Live`.
            let message = match catch_panic(core.run(control_rx)).await {
                Ok(Ok(())) => return,
                Ok(Err(e)) => e.to_string(),
                Err(panic) => format!("reactor task panicked: {panic}"),
            };
            tracing::error!(reactor = %reactor, %message, "reactor failed");
            *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(message);
        });
        Ok(ReactorHandle {
            inner: Arc::new(HandleInner {
                name,
                graph: self.graph,
                inbound,
                control,
                health: health_rx,
                stats,
                failure,
                task: Mutex::new(Some(task)),
            }),
        })
    }
}

struct HandleInner {
    name: Arc<str>,
    graph: Arc<CompiledGraph>,
    inbound: InboundSender,
    control: mpsc::UnboundedSender<Command>,
    health: watch::Receiver<ReactorHealth>,
    stats: Arc<ReactorStats>,
    failure: Arc<Mutex<Option<String>>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Drives a running reactor. Cheap to clone.
///
/// Do not await a command of a reactor (`force_fire`, `state`, a `send` into a full queue, ...)
/// from inside one of its own graph's nodes: the reactor runs that node and cannot serve the
/// command until the node returns, so the node waits until the firing timeout.
#[derive(Clone)]
pub struct ReactorHandle {
    inner: Arc<HandleInner>,
}

impl std::fmt::Debug for ReactorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReactorHandle")
            .field("name", &self.inner.name)
            .finish()
    }
}

impl ReactorHandle {
    /// Starts configuring a reactor for `graph`.
    pub fn builder(graph: Arc<CompiledGraph>) -> ReactorBuilder {
        ReactorBuilder::new(graph)
    }

    /// The reactor's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The graph it fires.
    pub fn graph(&self) -> &Arc<CompiledGraph> {
        &self.inner.graph
    }

    fn stopped(&self) -> ReactorError {
        ReactorError::Stopped {
            reactor: self.inner.name.to_string(),
        }
    }

    /// A typed sender for `source`; fails if the graph has no such source or reads another
    /// type from it.
    pub fn sender<T: Send + Sync + 'static>(
        &self,
        source: &str,
    ) -> Result<BoundarySender<T>, ReactorError> {
        let graph = &self.inner.graph;
        let index = graph
            .source_index(source)
            .ok_or_else(|| ReactorError::UnknownSource {
                reactor: self.inner.name.to_string(),
                source_name: source.into(),
            })?;
        let decl = &graph.sources()[index];
        if decl.type_id != TypeId::of::<T>() {
            return Err(ReactorError::SourceType {
                reactor: self.inner.name.to_string(),
                source_name: decl.name.clone(),
                expected: decl.type_name,
                requested: std::any::type_name::<T>(),
            });
        }
        let index = u32::try_from(index).map_err(|_| self.stopped())?;
        Ok(self.inner.inbound.typed(index, decl.name.clone()))
    }

    fn send(&self, cmd: Command) -> Result<(), ReactorError> {
        self.inner.control.send(cmd).map_err(|_| self.stopped())
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, ReactorError> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx))?;
        rx.await.map_err(|_| self.stopped())
    }

    /// Subscribes to firings with the default queue (1024) and overflow policy.
    pub fn subscribe(&self) -> Subscription {
        self.subscribe_with(SubscribeOptions::default())
    }

    /// Subscribes with explicit options. Every firing for a boundary sent after this call is
    /// delivered (a firing already running when the reactor sees the subscription is not); if
    /// the reactor has stopped the stream ends at once.
    pub fn subscribe_with(&self, options: SubscribeOptions) -> Subscription {
        let (subscriber, subscription) = Subscriber::new(options);
        let _ = self.send(Command::Subscribe(subscriber));
        subscription
    }

    /// Fires now on the current cache (after taking in every boundary already sent), ignoring
    /// criteria, pause and warm-up.
    pub async fn force_fire(&self) -> Result<Arc<Firing>, ReactorError> {
        self.ask(Command::ForceFire).await
    }

    /// Fires once on exactly `cache` (sources it lacks are `None`; no merge with the live
    /// cache). The live cache and its dirty flags are left as they were. Names and types are
    /// checked against the graph first.
    pub async fn fire_with(&self, cache: InputCache) -> Result<Arc<Firing>, ReactorError> {
        self.ask(|tx| Command::FireWith(cache, tx)).await?
    }

    /// Stops firing; boundaries are still taken in (Latest: cache updated; Sequential: queued).
    pub async fn pause(&self) -> Result<(), ReactorError> {
        self.ask(Command::Pause).await
    }

    /// Resumes firing. Sequential fires what was queued; Latest fires on the next boundary.
    pub async fn resume(&self) -> Result<(), ReactorError> {
        self.ask(Command::Resume).await
    }

    /// Cache, dirty flags, queue, pause and health, read consistently.
    pub async fn state(&self) -> Result<ReactorState, ReactorError> {
        self.ask(Command::State).await
    }

    /// Current health.
    pub fn health(&self) -> ReactorHealth {
        let failure = self
            .inner
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match failure {
            Some(reason) => ReactorHealth::Failed { reason },
            None => self.inner.health.borrow().clone(),
        }
    }

    /// A receiver that sees every health change.
    pub fn health_watch(&self) -> watch::Receiver<ReactorHealth> {
        self.inner.health.clone()
    }

    /// Current counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.inner.stats.snapshot()
    }

    /// Lifts the Sequential queue limit so that accumulators stopping before
    /// [`ReactorHandle::shutdown`] can hand over everything they hold (a paused reactor would
    /// otherwise stop taking boundaries and leave them waiting).
    pub async fn prepare_shutdown(&self) -> Result<(), ReactorError> {
        self.ask(Command::PrepareShutdown).await
    }

    /// Stops the reactor: stops taking boundaries, fires for everything already queued
    /// (Sequential) or what is pending (Latest), finishes the ledger, ends subscriptions.
    pub async fn shutdown(&self) -> Result<ShutdownReport, ReactorError> {
        let report = self.ask(Command::Shutdown).await?;
        let task = self
            .inner
            .task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
        Ok(report)
    }
}
