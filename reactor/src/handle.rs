//! [`ReactorHandle`]: drives a running reactor.

use std::any::TypeId;
use std::sync::{Arc, Mutex};

use cloacina_accumulators::{BoundarySender, InboundSender};
use cloacina_graph_core::{CompiledGraph, InputCache};
use tokio::sync::{mpsc, oneshot, watch};

use crate::builder::ReactorBuilder;
use crate::command::Command;
use crate::config::SubscribeOptions;
use crate::error::{ReactorError, ReactorState, ShutdownReport};
use crate::firing::Firing;
use crate::health::ReactorHealth;
use crate::stats::{ReactorStats, StatsSnapshot};
use crate::subscription::{Subscriber, Subscription};

/// Where the reactor's loop runs, to wait for it at shutdown.
pub(crate) enum Running {
    /// A task on the runtime it was spawned from.
    Task(tokio::task::JoinHandle<()>),
    /// A dedicated thread (low-latency mode); told when the thread is done.
    Thread(oneshot::Receiver<()>),
}

/// What [`ReactorBuilder::spawn`] hands over to the handle.
pub(crate) struct HandleParts {
    pub(crate) name: Arc<str>,
    pub(crate) graph: Arc<CompiledGraph>,
    pub(crate) inbound: InboundSender,
    pub(crate) control: mpsc::UnboundedSender<Command>,
    pub(crate) health: watch::Receiver<ReactorHealth>,
    pub(crate) stats: Arc<ReactorStats>,
    pub(crate) failure: Arc<Mutex<Option<String>>>,
    pub(crate) running: Running,
}

struct HandleInner {
    name: Arc<str>,
    graph: Arc<CompiledGraph>,
    inbound: InboundSender,
    control: mpsc::UnboundedSender<Command>,
    health: watch::Receiver<ReactorHealth>,
    stats: Arc<ReactorStats>,
    failure: Arc<Mutex<Option<String>>>,
    running: Mutex<Option<Running>>,
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
    pub(crate) fn new(parts: HandleParts) -> Self {
        Self {
            inner: Arc::new(HandleInner {
                name: parts.name,
                graph: parts.graph,
                inbound: parts.inbound,
                control: parts.control,
                health: parts.health,
                stats: parts.stats,
                failure: parts.failure,
                running: Mutex::new(Some(parts.running)),
            }),
        }
    }

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

    /// Fires now on the current cache, ignoring criteria, pause and warm-up. Every boundary
    /// already sent is taken in first; under `Sequential` (unless paused) each queued boundary
    /// also gets its own firing first, so the forced one comes after theirs, in order.
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

    /// Cache, dirty flags, queue, pause and health, read consistently, after every boundary
    /// already sent has been taken in (a Sequential backlog shows in `queued`; it is not fired
    /// first).
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
        let running = self
            .inner
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        match running {
            Some(Running::Task(task)) => {
                let _ = task.await;
            }
            Some(Running::Thread(done)) => {
                let _ = done.await;
            }
            None => {}
        }
        Ok(report)
    }
}
