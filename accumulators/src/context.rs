//! The [`Accumulator`] trait, its [`AccumulatorContext`], and [`Passthrough`].

use std::future::Future;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use cloacina_graph_core::SourceName;
use tokio::sync::{watch, Notify};

use cloacina_graph_core::codec;
use cloacina_ledger::{CheckpointRecord, Ledger};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::health::{AccumulatorHealth, HealthReporter};
use crate::inbound::{BoundarySender, SendError};

/// An accumulator stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccumulatorError {
    /// The reactor stopped accepting boundaries; `pending` values were not delivered.
    #[error("reactor closed: {pending} boundary value(s) of source `{source_name}` not delivered")]
    ReactorClosed {
        /// The source.
        source_name: SourceName,
        /// Values not delivered.
        pending: usize,
    },
    /// A durable (`Sync`) reactor took the value but could not record it durably; it may
    /// have fired. An accumulator must not commit its own offset past it.
    #[error("boundary of source `{source_name}` not recorded durably: {reason}")]
    NotDurable {
        /// The source.
        source_name: SourceName,
        /// Why.
        reason: String,
    },
    /// A checkpoint could not be written or read.
    #[error("accumulator `{source_name}`: checkpoint `{key}`: {reason}")]
    Checkpoint {
        /// The source.
        source_name: SourceName,
        /// The checkpoint's key.
        key: String,
        /// What went wrong.
        reason: String,
    },
    /// The accumulator's own source failed.
    #[error("accumulator `{source_name}` failed: {message}")]
    Failed {
        /// The source.
        source_name: SourceName,
        /// What failed.
        message: String,
    },
}

/// Counters an operator reads: events taken in, boundaries emitted, last event time.
#[derive(Debug, Default)]
pub struct AccumulatorMetrics {
    events: AtomicU64,
    boundaries: AtomicU64,
    last_event_unix_us: AtomicI64,
    failures: AtomicU64,
    restarts: AtomicU64,
}

impl AccumulatorMetrics {
    /// Counts `n` events taken in, now.
    pub fn record_events(&self, n: u64) {
        self.events.fetch_add(n, Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64);
        self.last_event_unix_us.store(now, Ordering::Relaxed);
    }

    /// Counts a failure of the accumulator's own source (e.g. a panicking poll function).
    pub fn record_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a restart by the supervisor.
    pub fn record_restart(&self) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
    }

    /// Times the supervisor restarted the accumulator after a failure.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// Events taken in.
    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    /// Boundaries emitted.
    pub fn boundaries(&self) -> u64 {
        self.boundaries.load(Ordering::Relaxed)
    }

    /// Failures of the source.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Time of the last event, microseconds since the Unix epoch (0: none yet).
    pub fn last_event_unix_us(&self) -> i64 {
        self.last_event_unix_us.load(Ordering::Relaxed)
    }
}

/// What a running accumulator is given.
#[derive(Debug)]
pub struct AccumulatorContext<T> {
    sender: BoundarySender<T>,
    shutdown: watch::Receiver<bool>,
    after_fire: Option<Arc<Notify>>,
    health: HealthReporter,
    metrics: Arc<AccumulatorMetrics>,
    checkpoints: Option<Checkpoints>,
}

/// Where an accumulator's checkpoints go.
#[derive(Clone)]
struct Checkpoints {
    ledger: Arc<dyn Ledger>,
    owner: String,
}

impl std::fmt::Debug for Checkpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoints")
            .field("backend", &self.ledger.backend())
            .field("owner", &self.owner)
            .finish()
    }
}

/// Reads where the ledger says a source's lanes resume (see
/// [`AccumulatorContext::position_reader`] and [`crate::SourcePosition`]).
#[derive(Clone)]
pub struct PositionReader {
    ledger: Arc<dyn Ledger>,
    owner: String,
    source: SourceName,
}

impl std::fmt::Debug for PositionReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PositionReader")
            .field("owner", &self.owner)
            .finish()
    }
}

impl PositionReader {
    /// The `next` of the last boundary of `lane` the ledger holds, if any.
    pub async fn get(&self, lane: u64) -> Result<Option<i64>, AccumulatorError> {
        let key = crate::position_key(lane);
        let error = |reason: String| AccumulatorError::Checkpoint {
            source_name: self.source.clone(),
            key: key.clone(),
            reason,
        };
        match self
            .ledger
            .checkpoint(&self.owner, &key)
            .await
            .map_err(|e| error(e.to_string()))?
        {
            None => Ok(None),
            Some(record) => codec::decode(&record.value)
                .map(Some)
                .map_err(|e| error(e.to_string())),
        }
    }
}

impl<T: Send + Sync + 'static> AccumulatorContext<T> {
    /// Assembles a context. `after_fire` is notified by the reactor after each successful
    /// firing, if the accumulator asked for it.
    pub fn new(
        sender: BoundarySender<T>,
        shutdown: watch::Receiver<bool>,
        after_fire: Option<Arc<Notify>>,
        health: HealthReporter,
    ) -> Self {
        Self {
            sender,
            shutdown,
            after_fire,
            health,
            metrics: Arc::default(),
            checkpoints: None,
        }
    }

    /// Another context on the same sender, signals, health, counters and checkpoints: what
    /// the supervisor hands each fresh instance.
    pub(crate) fn duplicate(&self) -> Self {
        Self {
            sender: self.sender.clone(),
            shutdown: self.shutdown.clone(),
            after_fire: self.after_fire.clone(),
            health: self.health.clone(),
            metrics: Arc::clone(&self.metrics),
            checkpoints: self.checkpoints.clone(),
        }
    }

    /// Lets the accumulator checkpoint its state (offsets, cursors) into `ledger` under
    /// `owner` (e.g. `reactor/source`); see [`AccumulatorContext::checkpoint`].
    pub fn with_checkpoints(mut self, ledger: Arc<dyn Ledger>, owner: impl Into<String>) -> Self {
        self.checkpoints = Some(Checkpoints {
            ledger,
            owner: owner.into(),
        });
        self
    }

    fn checkpoint_error(&self, key: &str, reason: String) -> AccumulatorError {
        AccumulatorError::Checkpoint {
            source_name: self.sender.source().clone(),
            key: key.to_owned(),
            reason,
        }
    }

    /// Records `state` as checkpoint `key` (replacing the previous one). It goes through the
    /// reactor, after every boundary this accumulator emitted before it, and this returns once
    /// it is appended (durably when the reactor's durability is `Sync`): the ledger never
    /// holds a checkpoint ahead of the boundaries it covers. Restore it with
    /// [`AccumulatorContext::last_checkpoint`] on start.
    pub async fn checkpoint<S: Serialize>(
        &self,
        key: &str,
        state: &S,
    ) -> Result<(), AccumulatorError> {
        let Some(Checkpoints { owner, .. }) = &self.checkpoints else {
            return Err(self.checkpoint_error(key, "no ledger configured".into()));
        };
        let value = codec::encode(state).map_err(|e| self.checkpoint_error(key, e.to_string()))?;
        let record = CheckpointRecord {
            owner: owner.clone(),
            key: key.to_owned(),
            value,
            at_unix_us: cloacina_ledger::now_unix_us(),
        };
        // Through the reactor, behind the boundaries already emitted: a stored checkpoint is
        // never ahead of what it covers.
        self.sender
            .checkpoint(record)
            .await
            .map_err(|e| self.checkpoint_error(key, e.to_string()))
    }

    /// The last state recorded as checkpoint `key`, if any (`None` also when no ledger is
    /// configured: nothing was ever checkpointed).
    pub async fn last_checkpoint<S: DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<S>, AccumulatorError> {
        let Some(Checkpoints { ledger, owner }) = &self.checkpoints else {
            return Ok(None);
        };
        match ledger
            .checkpoint(owner, key)
            .await
            .map_err(|e| self.checkpoint_error(key, e.to_string()))?
        {
            None => Ok(None),
            Some(record) => codec::decode(&record.value)
                .map(Some)
                .map_err(|e| self.checkpoint_error(key, e.to_string())),
        }
    }

    /// Shares `metrics` instead of a private counter set.
    pub fn with_metrics(mut self, metrics: Arc<AccumulatorMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The source this accumulator feeds.
    pub fn source(&self) -> &SourceName {
        self.sender.source()
    }

    /// This source's delivery watermark: how many boundaries it sent are done (consumed by a
    /// completed firing and, with a ledger, recorded); see [`crate::Delivered`]. Commit an
    /// external position (an offset) only up to what it covers.
    pub fn delivered(&self) -> &Arc<crate::Delivered> {
        self.sender.delivered()
    }

    /// The typed sender into the reactor.
    pub fn sender(&self) -> &BoundarySender<T> {
        &self.sender
    }

    /// The counters.
    pub fn metrics(&self) -> &Arc<AccumulatorMetrics> {
        &self.metrics
    }

    /// Emits one boundary, waiting while the reactor's queue is full.
    pub async fn emit(&self, value: T) -> Result<(), AccumulatorError> {
        self.sender.send(value).await.map_err(|e| match e {
            SendError::Closed { source_name, .. } => AccumulatorError::ReactorClosed {
                source_name,
                pending: 1,
            },
            SendError::NotDurable {
                source_name,
                reason,
            } => AccumulatorError::NotDurable {
                source_name,
                reason,
            },
            // Only `send_blocking` refuses this way; `send` never does.
            e @ SendError::InsideRuntime { .. } => AccumulatorError::Failed {
                source_name: e.source_name().clone(),
                message: e.to_string(),
            },
        })?;
        self.metrics.boundaries.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Emits one boundary if the reactor's queue has room, without waiting (for a consumer
    /// thread that pauses its source on backpressure); a full queue hands the value back.
    pub fn try_emit(&self, value: T) -> Result<(), crate::TrySendError<T>> {
        self.sender.try_send(value)?;
        self.metrics.boundaries.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Emits one boundary from a plain OS thread, blocking at most `timeout` while the
    /// reactor's queue is full (see [`BoundarySender::send_timeout`]); hands it back then.
    pub fn emit_timeout(
        &self,
        value: T,
        timeout: std::time::Duration,
    ) -> Result<(), crate::TrySendError<T>> {
        self.sender.send_timeout(value, timeout)?;
        self.metrics.boundaries.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// [`AccumulatorContext::emit_timeout`] for a value read at `position` of an external
    /// stream: the reactor records the position with the boundary, in the same ledger
    /// append (see [`crate::SourcePosition`]); read it back with
    /// [`AccumulatorContext::recorded_position`] to resume exactly past what was recorded.
    pub fn emit_timeout_at(
        &self,
        value: T,
        position: crate::SourcePosition,
        timeout: std::time::Duration,
    ) -> Result<(), crate::TrySendError<T>> {
        self.sender.send_timeout_at(value, position, timeout)?;
        self.metrics.boundaries.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Where to resume `lane`: the `next` of the last boundary of that lane the ledger holds
    /// (`None`: no ledger, the reactor records no boundaries, or nothing recorded yet).
    pub async fn recorded_position(&self, lane: u64) -> Result<Option<i64>, AccumulatorError> {
        match self.position_reader() {
            Some(reader) => reader.get(lane).await,
            None => Ok(None),
        }
    }

    /// A reader of this source's recorded positions that can be moved to another thread (a
    /// consumer thread reading them at each partition assignment); `None` without a ledger.
    pub fn position_reader(&self) -> Option<PositionReader> {
        self.checkpoints.as_ref().map(|c| PositionReader {
            ledger: Arc::clone(&c.ledger),
            owner: c.owner.clone(),
            source: self.sender.source().clone(),
        })
    }

    /// Reports health.
    pub fn set_health(&self, health: AccumulatorHealth) {
        self.health.set(health);
    }

    /// Whether shutdown was requested.
    pub fn is_shutdown(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Completes once shutdown is requested (or the engine is gone).
    pub async fn shutdown_requested(&self) {
        let mut shutdown = self.shutdown.clone();
        // An error means the sender is gone, which is a shutdown too.
        let _ = shutdown.wait_for(|stop| *stop).await;
    }

    /// Completes on the reactor's next after-fire signal; never, if none was wired.
    pub async fn after_fire(&self) {
        match &self.after_fire {
            Some(notify) => notify.notified().await,
            None => std::future::pending().await,
        }
    }
}

/// A long-running producer of boundaries for one source.
///
/// The engine starts it under supervision (see [`crate::supervise`]): `restore`, then `run`,
/// which emits through the context, reports health, and returns when
/// [`AccumulatorContext::shutdown_requested`] completes, after delivering everything it has
/// accepted (its close phase). An instance that fails or panics is replaced by a fresh one
/// from its factory.
pub trait Accumulator: Send + 'static {
    /// Type of the boundaries it emits.
    type Output: Send + Sync + 'static;

    /// Whether it wants the reactor's after-fire signal.
    fn wants_after_fire(&self) -> bool {
        false
    }

    /// Restores state before [`Accumulator::run`] (read a checkpoint with
    /// [`AccumulatorContext::last_checkpoint`], a stored offset, ...); called on every
    /// (re)start by the supervisor. An error is a failed start, restarted like a failed run.
    fn restore(
        &mut self,
        ctx: &AccumulatorContext<Self::Output>,
    ) -> impl Future<Output = Result<(), AccumulatorError>> + Send {
        let _ = ctx;
        std::future::ready(Ok(()))
    }

    /// Runs until shutdown.
    fn run(
        self,
        ctx: AccumulatorContext<Self::Output>,
    ) -> impl Future<Output = Result<(), AccumulatorError>> + Send;
}

/// Events pushed in process become boundaries one for one, with no task hop: the engine hands
/// out the context's [`BoundarySender`]. Health is `SocketOnly` at once.
#[derive(Debug)]
pub struct Passthrough<T>(PhantomData<fn(T)>);

impl<T> Passthrough<T> {
    /// A passthrough accumulator for `T`.
    pub fn new() -> Self {
        Self(PhantomData)
    }
}

impl<T> Default for Passthrough<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Send + Sync + 'static> Accumulator for Passthrough<T> {
    type Output = T;

    async fn run(self, ctx: AccumulatorContext<T>) -> Result<(), AccumulatorError> {
        ctx.set_health(AccumulatorHealth::SocketOnly);
        ctx.shutdown_requested().await;
        ctx.set_health(AccumulatorHealth::Stopped);
        Ok(())
    }
}
