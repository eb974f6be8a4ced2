//! [`ReactorBuilder`]: configures a reactor and spawns its loop.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloacina_accumulators::{inbound_channel, Delivered, HealthBoard};
use cloacina_graph_core::{catch_panic, CompiledGraph, Executor, SourceName};
use cloacina_ledger::{Commit, Ledger, LedgerWriter, WriterOptions};
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::config::{FailurePolicy, InputStrategy, LowLatency, ReactionCriteria, ReactorMode};
use crate::core::{Core, Intake, Signals};
use crate::delivery::Subscribers;
use crate::durable::{Durability, RetentionPolicy};
use crate::error::ReactorError;
use crate::handle::{HandleParts, ReactorHandle, Running};
use crate::health::ReactorHealth;
use crate::metrics::ReactorMetrics;
use crate::recorder::{Counters, Recorder, RecorderSetup};
use crate::stats::ReactorStats;
use crate::trigger::Trigger;
use crate::watermark::Watermarks;

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
    recording: Recording,
    mode: ReactorMode,
    board: Option<Arc<HealthBoard>>,
    after_fire: Vec<Arc<Notify>>,
}

/// What a reactor records, and where.
struct Recording {
    ledger: Option<(Arc<dyn Ledger>, usize)>,
    durability: Durability,
    snapshot_every: u64,
    retention: Option<RetentionPolicy>,
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
            recording: Recording {
                ledger: None,
                durability: Durability::default(),
                snapshot_every: 65_536,
                retention: None,
            },
            mode: ReactorMode::default(),
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
        self.recording.ledger = Some((ledger, queue));
        self
    }

    /// How much the ledger records and when `send` returns (default [`Durability::Batched`]).
    /// `Batched` and `Sync` need every source of the graph to have a codec (sources declared
    /// with `source::<T>` where `T: Serialize + DeserializeOwned` have one).
    pub fn durability(mut self, durability: Durability) -> Self {
        self.recording.durability = durability;
        self
    }

    /// Records a state snapshot after this many boundaries (default 65,536), and always at
    /// shutdown. Retention never removes what the latest snapshot does not cover.
    pub fn snapshot_every(mut self, boundaries: u64) -> Self {
        self.recording.snapshot_every = boundaries.max(1);
        self
    }

    /// Removes old ledger records after every snapshot, in the background, so a long run
    /// stays bounded on disk (default: keep everything).
    pub fn retention(mut self, policy: RetentionPolicy) -> Self {
        self.recording.retention = Some(policy);
        self
    }

    /// Where the reactor's loop runs (default [`ReactorMode::Task`]).
    pub fn mode(mut self, mode: ReactorMode) -> Self {
        self.mode = mode;
        self
    }

    /// Runs the reactor in the opt-in low-latency mode: a dedicated thread that spins for
    /// `low_latency.spin` before parking (see [`LowLatency`] for its CPU cost).
    pub fn low_latency(self, low_latency: LowLatency) -> Self {
        self.mode(ReactorMode::LowLatency(low_latency))
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

    /// Spawns the reactor: as a task on the current tokio runtime, or on a thread of its
    /// own in [`ReactorMode::LowLatency`]. Either way the ledger writer and retention run on
    /// the current runtime, which must therefore be inside one.
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
        let Recording {
            ledger,
            durability,
            snapshot_every,
            retention,
        } = self.recording;
        let records_state = ledger.is_some() && durability.records_state();
        if records_state {
            if let Some(decl) = self.graph.sources().iter().find(|d| d.codec.is_none()) {
                return Err(ReactorError::SourceNotRecordable {
                    reactor: self.name.clone(),
                    source_name: decl.name.clone(),
                    type_name: decl.type_name,
                });
            }
        }
        if !watched.iter().any(|w| *w) {
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
        let delivered: Arc<[Arc<Delivered>]> = sources.iter().map(|_| Delivered::new()).collect();
        let inbound = inbound
            .durable(records_state && durability == Durability::Sync)
            .with_delivery(Arc::clone(&delivered));
        let (control, control_rx) = mpsc::unbounded_channel();
        let (health_tx, health_rx) = watch::channel(ReactorHealth::Starting);
        let stats = Arc::new(ReactorStats::default());
        let _guard = runtime.enter();
        let ledger = ledger.map(|(ledger, queue)| {
            let writer = LedgerWriter::spawn_labeled(
                Arc::clone(&ledger),
                WriterOptions {
                    capacity: queue,
                    commit: if durability == Durability::Sync {
                        Commit::Durable
                    } else {
                        Commit::Buffered
                    },
                    ..WriterOptions::default()
                },
                &self.name,
            );
            (ledger, writer)
        });
        let spin = match self.mode {
            ReactorMode::Task => None,
            ReactorMode::LowLatency(l) => Some(l.spin),
        };
        let core = Core {
            name: Arc::clone(&name),
            executor: Executor::new(Arc::clone(&self.graph)).with_timeout(self.firing_timeout),
            trigger: Trigger::new(
                self.graph.new_cache(),
                watched,
                when_all,
                self.strategy,
                self.queue_limit,
            ),
            // Every reactor with a ledger restores at least its counters (firing ids must
            // not repeat); `Batched` and `Sync` restore their whole state.
            recorder: Recorder::new(RecorderSetup {
                name: Arc::clone(&name),
                ledger,
                durability,
                snapshot_every,
                retention,
                runtime: runtime.clone(),
                stats: Arc::clone(&stats),
                sources: Arc::clone(&sources),
                decls: self.graph.sources().iter().cloned().collect(),
            }),
            subscribers: Subscribers::default(),
            failure_policy: self.failure_policy,
            counters: Counters {
                last_seq: 0,
                next_id: 1,
            },
            intake: Intake {
                clock: crate::firing::WallClock::now(),
                rx: inbound_rx,
                open: true,
                buf: Vec::with_capacity(256),
                spin,
            },
            signals: Signals {
                board: self.board,
                board_seen: 0,
                health: health_tx,
                after_fire: self.after_fire,
                watermarks: Watermarks::new(delivered),
                published_at: std::time::Instant::now(),
            },
            draining: false,
            stats: Arc::clone(&stats),
            metrics: ReactorMetrics::new(&name, self.graph.name(), &sources),
            sources,
            graph: Arc::clone(&self.graph),
        };
        let failure: Arc<Mutex<Option<String>>> = Arc::default();
        let failed = Arc::clone(&failure);
        let reactor = Arc::clone(&name);
        // Every user-code path is guarded inside; this catches engine bugs, so that the
        // handle reports `Failed` instead of a stale `Live`.
        let guarded = async move {
            let message = match catch_panic(core.run(control_rx)).await {
                Ok(Ok(())) => return,
                Ok(Err(e)) => e.to_string(),
                Err(panic) => format!("reactor task panicked: {panic}"),
            };
            tracing::error!(reactor = %reactor, %message, "reactor failed");
            *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(message);
        };
        let running = match self.mode {
            ReactorMode::Task => Running::Task(runtime.spawn(guarded)),
            ReactorMode::LowLatency(_) => {
                let (done_tx, done_rx) = oneshot::channel();
                let failed = Arc::clone(&failure);
                let thread_rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| ReactorError::Failed {
                        reactor: self.name.clone(),
                        reason: format!("cannot build the low-latency runtime: {e}"),
                    })?;
                std::thread::Builder::new()
                    .name(format!("cloacina-reactor-{}", self.name))
                    .spawn(move || {
                        thread_rt.block_on(guarded);
                        // Drop the runtime here, not in an async context.
                        drop(thread_rt);
                        let _ = done_tx.send(());
                    })
                    .map_err(|e| {
                        let reason = format!("cannot start the reactor thread: {e}");
                        *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.clone());
                        ReactorError::Failed {
                            reactor: self.name.clone(),
                            reason,
                        }
                    })?;
                Running::Thread(done_rx)
            }
        };
        Ok(ReactorHandle::new(HandleParts {
            name,
            graph: self.graph,
            inbound,
            control,
            health: health_rx,
            stats,
            failure,
            running,
        }))
    }
}
