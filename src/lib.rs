//! # cloacina
//!
//! An embedded Rust engine for event-driven computation graphs (DAG workflows on top come in
//! later releases). This facade crate re-exports the public API of the member crates and wires
//! them together:
//!
//! | crate | role in the flow boundary -> cache -> firing -> result -> ledger |
//! |---|---|
//! | [`graph`] (`cloacina-graph-core`) | boundaries, InputCache, graph builder, compiled executor |
//! | [`accumulators`] | turn events into boundaries: passthrough, polling, batch |
//! | [`reactor`] | decides when to fire, fires, fans results out |
//! | [`ledger`] | records firings and results |
//!
//! [`EmbeddedGraph`] wires one graph, its reactor and its accumulators, checking that every
//! source the graph reads is fed by exactly one accumulator of the right type:
//!
//! ```
//! use std::time::Duration;
//! use cloacina::prelude::*;
//!
//! fn spread(bid: Option<&f64>, ask: Option<&f64>) -> f64 {
//!     ask.copied().unwrap_or(f64::NAN) - bid.copied().unwrap_or(f64::NAN)
//! }
//!
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! let graph = GraphBuilder::new("spread")
//!     .node("spread", (source::<f64>("bid"), source::<f64>("ask")), spread)
//!     .build()?;
//! let engine = EmbeddedGraph::builder(graph)
//!     .strategy(InputStrategy::Sequential)
//!     .passthrough::<f64>("bid")
//!     .polling("ask", Duration::from_millis(10), || async { Some(100.25_f64) })
//!     .start()?;
//! let mut results = engine.subscribe();
//! let bid = engine.sender::<f64>("bid")?;
//! bid.send(100.0).await.expect("reactor running");
//! while let Some(Ok(firing)) = results.recv().await {
//!     if let Some(s) = firing.result.output::<f64>("spread").filter(|s| !s.is_nan()) {
//!         assert_eq!(*s, 0.25);
//!         break;
//!     }
//! }
//! engine.shutdown().await?;
//! # Ok::<(), cloacina::Error>(()) }).unwrap();
//! ```

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

pub mod registry;
mod subscribe;

pub use subscribe::subscribe_workflow;

pub use cloacina_accumulators as accumulators;
pub use cloacina_graph_core as graph;
/// Kafka in: [`kafka::KafkaSource`] (cargo feature `kafka`, on by default).
#[cfg(feature = "kafka")]
pub use cloacina_kafka as kafka;
pub use cloacina_ledger as ledger;
pub use cloacina_macros::{computation_graph, reactor, task, workflow};
pub use cloacina_reactor as reactor;
pub use cloacina_workflow_layer as workflow;
#[doc(hidden)]
pub use inventory;

use accumulators::{
    Accumulator, AccumulatorContext, AccumulatorError, AccumulatorFactory, AccumulatorHealth,
    AccumulatorMetrics, Batch, BatchConfig, BatchSender, BoundarySender, HealthBoard,
    HealthReporter, Passthrough, Polling, RestartPolicy,
};
use graph::{BuildError, CompiledGraph, SourceName};
use ledger::Ledger;
use reactor::{
    InputStrategy, ReactionCriteria, ReactorBuilder, ReactorError, ReactorHandle, ShutdownReport,
    SubscribeOptions, Subscription,
};

/// The README's code blocks, compiled and run as doctests so they cannot drift.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// Everything a typical program needs.
pub mod prelude {
    pub use crate::accumulators::{
        Accumulator, AccumulatorContext, AccumulatorError, AccumulatorFactory, AccumulatorHealth,
        BatchConfig, BatchSender, BoundarySender, Delivered, RestartPolicy, SendError,
        TrySendError,
    };
    pub use crate::graph::{
        source, upstream, CompiledGraph, GraphBuilder, GraphError, GraphResult, InputCache, Route,
        SourceName,
    };
    pub use crate::ledger::{Ledger, MemoryLedger};
    pub use crate::reactor::{
        Durability, FailurePolicy, Firing, InputStrategy, Lagged, LowLatency, Overflow,
        ReactionCriteria, ReactorHandle, ReactorHealth, ReactorMode, RetentionPolicy,
        SubscribeOptions, Subscription, TryRecvError,
    };
    pub use crate::registry::Registry;
    pub use crate::workflow::{
        invoke_graph, BackoffStrategy, CatchUp, ClaimStats, Context, ContextError, DefaultRunner,
        ExecutionEvent, ExecutionEventKind, ExecutorPool, FnTask, KeyLimit, PollingTrigger,
        ReactorSubscription, RecordedEvent, RetryCondition, RetryPolicy, RunnerConfig, RunnerError,
        Schedule, Task, TaskError, TaskHandle, TaskResult, TaskState, TriggerError, TriggerResult,
        TriggerRule, ValueOperator, Workflow, WorkflowDurability, WorkflowError,
        WorkflowExecutionResult, WorkflowStatus,
    };
    pub use crate::{computation_graph, reactor, task, workflow};
    pub use crate::{subscribe_workflow, EmbeddedGraph, EngineReport, Error};
}

/// Anything the facade can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The graph declaration is invalid.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The reactor refused a configuration or has stopped.
    #[error(transparent)]
    Reactor(#[from] ReactorError),
    /// An accumulator feeds a source the graph does not read.
    #[error(
        "accumulator for `{source_name}`: graph `{graph}` reads no such source (it reads: {known})"
    )]
    UnknownSource {
        /// Graph.
        graph: String,
        /// The accumulator's source.
        source_name: SourceName,
        /// Sources the graph reads.
        known: String,
    },
    /// An accumulator emits another type than the graph reads from its source.
    #[error(
        "accumulator for `{source_name}` emits {emits}, but graph `{graph}` reads {reads} from it"
    )]
    SourceType {
        /// Graph.
        graph: String,
        /// The source.
        source_name: SourceName,
        /// Type emitted.
        emits: &'static str,
        /// Type read.
        reads: &'static str,
    },
    /// Two accumulators feed one source.
    #[error("source `{source_name}` has two accumulators")]
    DuplicateAccumulator {
        /// The source.
        source_name: SourceName,
    },
    /// A source the graph reads has no accumulator.
    #[error("graph `{graph}` reads source `{source_name}`, but no accumulator feeds it")]
    UnfedSource {
        /// Graph.
        graph: String,
        /// The source.
        source_name: SourceName,
    },
    /// No batch accumulator of this type feeds the source.
    #[error("no batch accumulator of {requested} items feeds `{source_name}`")]
    NoBatch {
        /// The source.
        source_name: SourceName,
        /// Item type asked for.
        requested: &'static str,
    },
}

struct Wiring<'a> {
    reactor: &'a ReactorHandle,
    /// The ledger accumulators checkpoint into, if any.
    ledger: Option<Arc<dyn Ledger>>,
    shutdown: watch::Receiver<bool>,
    after_fire: Option<Arc<Notify>>,
    health: HealthReporter,
    metrics: Arc<AccumulatorMetrics>,
    restart: RestartPolicy,
}

type SpawnFn =
    Box<dyn FnOnce(Wiring<'_>) -> Result<JoinHandle<Result<(), AccumulatorError>>, Error> + Send>;

/// A factory whose first instance was made ahead (at registration).
struct FirstThen<F: AccumulatorFactory> {
    first: Option<F::Accumulator>,
    rest: F,
}

impl<F: AccumulatorFactory> AccumulatorFactory for FirstThen<F> {
    type Accumulator = F::Accumulator;

    fn create(&mut self) -> Option<F::Accumulator> {
        self.first.take().or_else(|| self.rest.create())
    }
}

struct Pending {
    source: SourceName,
    output: (TypeId, &'static str),
    after_fire: bool,
    spawn: SpawnFn,
}

/// Configures an [`EmbeddedGraph`].
pub struct EmbeddedGraphBuilder {
    graph: Arc<CompiledGraph>,
    reactor: ReactorBuilder,
    ledger: Option<Arc<dyn Ledger>>,
    ledger_queue: usize,
    restart: RestartPolicy,
    pending: Vec<Pending>,
    batch_senders: HashMap<SourceName, Box<dyn Any + Send + Sync>>,
}

impl std::fmt::Debug for EmbeddedGraphBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedGraphBuilder")
            .field("graph", &self.graph.name())
            .field("reactor", &self.reactor)
            .finish()
    }
}

impl EmbeddedGraphBuilder {
    /// When the reactor fires (default `when_any()`).
    pub fn criteria(mut self, criteria: ReactionCriteria) -> Self {
        self.reactor = self.reactor.criteria(criteria);
        self
    }

    /// Latest or Sequential (default Latest).
    pub fn strategy(mut self, strategy: InputStrategy) -> Self {
        self.reactor = self.reactor.strategy(strategy);
        self
    }

    /// Per-firing timeout (default 30 s).
    pub fn firing_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.reactor = self.reactor.firing_timeout(timeout);
        self
    }

    /// Sequential boundaries held while paused or warming (default 65,536); at the limit
    /// senders wait.
    pub fn queue_limit(mut self, limit: usize) -> Self {
        self.reactor = self.reactor.queue_limit(limit);
        self
    }

    /// Room in the reactor's inbound queue (default 1024).
    pub fn inbound_capacity(mut self, capacity: usize) -> Self {
        self.reactor = self.reactor.inbound_capacity(capacity);
        self
    }

    /// Records the reactor's life in `ledger` (group commit through the writer's queue; see
    /// [`EmbeddedGraphBuilder::ledger_queue`]) and restores its state from it at start; see
    /// [`EmbeddedGraphBuilder::durability`].
    pub fn ledger(mut self, ledger: Arc<dyn Ledger>) -> Self {
        self.ledger = Some(Arc::clone(&ledger));
        self.reactor = self.reactor.ledger(ledger, self.ledger_queue);
        self
    }

    /// Records the ledger writer's queue holds (default 65,536). A full queue makes the
    /// reactor wait; under `Batched` durability a crash can lose what the queue held, so a
    /// smaller queue narrows that window (see the README's measured loss window).
    pub fn ledger_queue(mut self, records: usize) -> Self {
        self.ledger_queue = records.max(1);
        if let Some(ledger) = &self.ledger {
            self.reactor = self.reactor.ledger(Arc::clone(ledger), self.ledger_queue);
        }
        self
    }

    /// What the reactor does when a firing fails (default: report it; see
    /// [`reactor::FailurePolicy`]).
    pub fn on_failure(mut self, policy: reactor::FailurePolicy) -> Self {
        self.reactor = self.reactor.on_failure(policy);
        self
    }

    /// Runs the reactor on a dedicated spinning thread (see [`reactor::LowLatency`] for what it
    /// gains and what it costs); default: a task on the current runtime.
    pub fn low_latency(mut self, low_latency: reactor::LowLatency) -> Self {
        self.reactor = self.reactor.low_latency(low_latency);
        self
    }

    /// How much the ledger records and when a `send` returns (default `Batched`; see
    /// [`reactor::Durability`]).
    pub fn durability(mut self, durability: reactor::Durability) -> Self {
        self.reactor = self.reactor.durability(durability);
        self
    }

    /// Records a state snapshot after this many boundaries (default 65,536) and at shutdown.
    pub fn snapshot_every(mut self, boundaries: u64) -> Self {
        self.reactor = self.reactor.snapshot_every(boundaries);
        self
    }

    /// Removes old ledger records after every snapshot (default: keep everything).
    pub fn retention(mut self, policy: reactor::RetentionPolicy) -> Self {
        self.reactor = self.reactor.retention(policy);
        self
    }

    /// Names the reactor (default: the graph's name).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.reactor = self.reactor.name(name);
        self
    }

    /// How failed accumulators registered with a factory are restarted (default: backoff
    /// from 1 s doubling to 60 s, Failed after 5 consecutive failures).
    pub fn restart_policy(mut self, policy: RestartPolicy) -> Self {
        self.restart = policy;
        self
    }

    /// Feeds `source` with one [`Accumulator`] instance. It runs under supervision, but one
    /// instance cannot be replaced: if it fails, the source is marked Failed. Register a
    /// factory with [`EmbeddedGraphBuilder::accumulator_factory`] to have it restarted.
    pub fn accumulator<A: Accumulator>(self, source: impl Into<SourceName>, acc: A) -> Self {
        self.accumulator_factory(source, accumulators::Once::new(acc))
    }

    /// Feeds `source` with instances from `factory` (any `FnMut() -> A`): a fresh one at
    /// start and after each failure, under the [`EmbeddedGraphBuilder::restart_policy`]
    /// (restore, run, close; exponential backoff; Failed after too many consecutive
    /// failures). A failing accumulator is restarted alone: the reactor shows Degraded
    /// meanwhile and keeps running.
    pub fn accumulator_factory<F: AccumulatorFactory>(
        mut self,
        source: impl Into<SourceName>,
        mut factory: F,
    ) -> Self {
        type Out<F> = <<F as AccumulatorFactory>::Accumulator as Accumulator>::Output;
        let source = source.into();
        // The first instance is made now: it says whether it wants the after-fire signal.
        let first = factory.create();
        let after_fire = first.as_ref().is_some_and(Accumulator::wants_after_fire);
        let factory = FirstThen {
            first,
            rest: factory,
        };
        let name = source.clone();
        let spawn: SpawnFn = Box::new(move |w: Wiring<'_>| {
            let sender = w.reactor.sender::<Out<F>>(name.as_str())?;
            let mut ctx = AccumulatorContext::new(sender, w.shutdown, w.after_fire, w.health)
                .with_metrics(w.metrics);
            if let Some(ledger) = w.ledger {
                ctx = ctx.with_checkpoints(
                    ledger,
                    accumulators::checkpoint_owner(w.reactor.name(), name.as_str()),
                );
            }
            Ok(tokio::spawn(accumulators::supervise(
                factory, ctx, w.restart,
            )))
        });
        self.pending.push(Pending {
            source,
            output: (TypeId::of::<Out<F>>(), std::any::type_name::<Out<F>>()),
            after_fire,
            spawn,
        });
        self
    }

    /// Feeds `source` from in-process pushes: get the sender with [`EmbeddedGraph::sender`].
    pub fn passthrough<T: Send + Sync + 'static>(self, source: impl Into<SourceName>) -> Self {
        self.accumulator(source, Passthrough::<T>::new())
    }

    /// Feeds `source` by calling `poll` every `interval`; `None` emits nothing.
    pub fn polling<T, F, Fut>(
        self,
        source: impl Into<SourceName>,
        interval: Duration,
        poll: F,
    ) -> Self
    where
        T: Send + Sync + 'static,
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = Option<T>> + Send,
    {
        self.accumulator(source, Polling::new(interval, poll))
    }

    /// Feeds `source` with batches of `T` (the graph reads `Vec<T>`); get the sender with
    /// [`EmbeddedGraph::batch_sender`].
    pub fn batch<T: Send + Sync + 'static>(
        mut self,
        source: impl Into<SourceName>,
        config: BatchConfig,
    ) -> Self {
        let source = source.into();
        let (batch, sender) = Batch::<T>::new(config);
        self.batch_senders.insert(source.clone(), Box::new(sender));
        self.accumulator(source, batch)
    }

    fn check(&self) -> Result<(), Error> {
        let graph = &self.graph;
        let known = || {
            graph
                .sources()
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        for (i, p) in self.pending.iter().enumerate() {
            if self.pending[..i].iter().any(|o| o.source == p.source) {
                return Err(Error::DuplicateAccumulator {
                    source_name: p.source.clone(),
                });
            }
            let Some(decl) = graph.sources().iter().find(|s| s.name == p.source) else {
                return Err(Error::UnknownSource {
                    graph: graph.name().to_owned(),
                    source_name: p.source.clone(),
                    known: known(),
                });
            };
            if decl.type_id != p.output.0 {
                return Err(Error::SourceType {
                    graph: graph.name().to_owned(),
                    source_name: p.source.clone(),
                    emits: p.output.1,
                    reads: decl.type_name,
                });
            }
        }
        if let Some(unfed) = graph
            .sources()
            .iter()
            .find(|s| !self.pending.iter().any(|p| p.source == s.name))
        {
            return Err(Error::UnfedSource {
                graph: graph.name().to_owned(),
                source_name: unfed.name.clone(),
            });
        }
        Ok(())
    }

    /// Checks the wiring, then spawns the reactor and the accumulators on the current tokio
    /// runtime.
    pub fn start(self) -> Result<EmbeddedGraph, Error> {
        self.check()?;
        let board = HealthBoard::new();
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let mut reactor = self.reactor.accumulator_health(Arc::clone(&board));
        let mut wired = Vec::with_capacity(self.pending.len());
        for p in self.pending {
            let reporter = board.register(p.source.clone());
            let notify = p.after_fire.then(|| Arc::new(Notify::new()));
            if let Some(n) = &notify {
                reactor = reactor.after_fire(Arc::clone(n));
            }
            wired.push((p, reporter, notify));
        }
        let handle = reactor.spawn()?;
        let mut tasks = Vec::with_capacity(wired.len());
        let mut metrics = Vec::with_capacity(wired.len());
        for (p, reporter, notify) in wired {
            let m = Arc::new(AccumulatorMetrics::default());
            let task = (p.spawn)(Wiring {
                reactor: &handle,
                ledger: self.ledger.clone(),
                shutdown: shutdown_rx.clone(),
                after_fire: notify,
                health: reporter,
                metrics: Arc::clone(&m),
                restart: self.restart,
            })?;
            metrics.push((p.source.clone(), m));
            tasks.push((p.source, task));
        }
        Ok(EmbeddedGraph {
            reactor: handle,
            shutdown: shutdown_tx,
            tasks,
            metrics,
            board,
            batch_senders: self.batch_senders,
        })
    }
}

/// What [`EmbeddedGraph::shutdown`] observed.
#[derive(Debug)]
pub struct EngineReport {
    /// The reactor's report.
    pub reactor: ShutdownReport,
    /// Accumulators that ended with an error (source, message).
    pub accumulator_errors: Vec<(SourceName, String)>,
}

/// A running graph: its reactor and accumulators.
pub struct EmbeddedGraph {
    reactor: ReactorHandle,
    shutdown: watch::Sender<bool>,
    tasks: Vec<(SourceName, JoinHandle<Result<(), AccumulatorError>>)>,
    metrics: Vec<(SourceName, Arc<AccumulatorMetrics>)>,
    board: Arc<HealthBoard>,
    batch_senders: HashMap<SourceName, Box<dyn Any + Send + Sync>>,
}

impl std::fmt::Debug for EmbeddedGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedGraph")
            .field("reactor", &self.reactor)
            .finish()
    }
}

impl EmbeddedGraph {
    /// Starts wiring `graph`.
    pub fn builder(graph: impl Into<Arc<CompiledGraph>>) -> EmbeddedGraphBuilder {
        let graph = graph.into();
        EmbeddedGraphBuilder {
            reactor: ReactorBuilder::new(Arc::clone(&graph)),
            ledger: None,
            ledger_queue: 65_536,
            restart: RestartPolicy::default(),
            graph,
            pending: Vec::new(),
            batch_senders: HashMap::new(),
        }
    }

    /// The reactor (pause, resume, force_fire, fire_with, state, stats, health).
    pub fn reactor(&self) -> &ReactorHandle {
        &self.reactor
    }

    /// A typed sender into `source` (for passthrough sources).
    pub fn sender<T: Send + Sync + 'static>(
        &self,
        source: &str,
    ) -> Result<BoundarySender<T>, Error> {
        Ok(self.reactor.sender::<T>(source)?)
    }

    /// The sender feeding the batch accumulator of `source`.
    pub fn batch_sender<T: Send + 'static>(&self, source: &str) -> Result<BatchSender<T>, Error> {
        self.batch_senders
            .get(source)
            .and_then(|s| s.downcast_ref::<BatchSender<T>>())
            .cloned()
            .ok_or_else(|| Error::NoBatch {
                source_name: source.into(),
                requested: std::any::type_name::<T>(),
            })
    }

    /// Subscribes to firings.
    pub fn subscribe(&self) -> Subscription {
        self.reactor.subscribe()
    }

    /// Subscribes with an explicit queue size and overflow policy.
    pub fn subscribe_with(&self, options: SubscribeOptions) -> Subscription {
        self.reactor.subscribe_with(options)
    }

    /// Every accumulator's health.
    pub fn accumulator_health(&self) -> Vec<(SourceName, AccumulatorHealth)> {
        self.board.states()
    }

    /// Every accumulator's counters.
    pub fn accumulator_metrics(&self) -> &[(SourceName, Arc<AccumulatorMetrics>)] {
        &self.metrics
    }

    /// Graceful stop: accumulators stop and deliver what they hold (batches flush), then the
    /// reactor fires for everything already received and stops. The reactor takes everything
    /// in during this (even paused, past its queue limit), so no accumulator is left waiting.
    pub async fn shutdown(self) -> Result<EngineReport, Error> {
        // If the reactor is already gone, the accumulators' sends fail and report it below.
        let _ = self.reactor.prepare_shutdown().await;
        let _ = self.shutdown.send(true);
        let mut accumulator_errors = Vec::new();
        for (source, task) in self.tasks {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => accumulator_errors.push((source, e.to_string())),
                Err(e) => accumulator_errors.push((source, format!("task failed: {e}"))),
            }
        }
        match self.reactor.shutdown().await {
            Ok(reactor) => Ok(EngineReport {
                reactor,
                accumulator_errors,
            }),
            Err(e) => {
                for (source, error) in &accumulator_errors {
                    tracing::error!(%source, %error, "accumulator error at shutdown");
                }
                Err(e.into())
            }
        }
    }
}
