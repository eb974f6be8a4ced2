//! [`Batch`]: buffers events and emits them together.

use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use cloacina_graph_core::SourceName;
use tokio::sync::mpsc;

use crate::context::{Accumulator, AccumulatorContext, AccumulatorError};
use crate::health::AccumulatorHealth;
use crate::inbound::{SendError, TrySendError};
use crate::polling::{interval_from_now, tick};

/// When a [`Batch`] flushes.
#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    /// Flush as soon as this many events are buffered.
    pub max_size: usize,
    /// Flush whatever is buffered this often (`None`, or an interval too large to add to the
    /// clock such as `Duration::MAX`: no timer).
    pub flush_interval: Option<Duration>,
    /// Room in the batch's own input queue; a full queue makes senders wait.
    pub capacity: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_size: 1024,
            flush_interval: Some(Duration::from_secs(1)),
            capacity: 1024,
        }
    }
}

/// Buffers events of type `T` and emits them as one `Vec<T>` boundary when the buffer reaches
/// `max_size`, when the interval elapses, when the reactor signals after a successful firing,
/// and at shutdown, when it first drains its input queue so nothing accepted is lost.
pub struct Batch<T> {
    config: BatchConfig,
    rx: mpsc::Receiver<T>,
    /// The source it feeds, learned when it runs; shared with its senders for their errors.
    source: Arc<OnceLock<SourceName>>,
}

impl<T> fmt::Debug for Batch<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("config", &self.config)
            .finish()
    }
}

/// Typed, cloneable sender of events into a [`Batch`].
pub struct BatchSender<T> {
    tx: mpsc::Sender<T>,
    source: Arc<OnceLock<SourceName>>,
    _t: PhantomData<fn(T)>,
}

impl<T> Clone for BatchSender<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            source: Arc::clone(&self.source),
            _t: PhantomData,
        }
    }
}

impl<T> fmt::Debug for BatchSender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchSender")
            .field("source", &self.source.get())
            .finish()
    }
}

/// What a [`BatchSender`] calls its batch before the batch ran and learned its source.
const UNBOUND: &str = "(batch never ran)";

impl<T: Send + 'static> BatchSender<T> {
    /// The source the batch feeds, once the batch has started running (`None` before).
    pub fn source(&self) -> Option<&SourceName> {
        self.source.get()
    }

    /// Sends an event, waiting while the batch's queue is full. The error names the batch's
    /// source.
    pub async fn send(&self, value: T) -> Result<(), SendError<T>> {
        self.tx.send(value).await.map_err(|e| SendError::Closed {
            source_name: self
                .source
                .get()
                .cloned()
                .unwrap_or_else(|| SourceName::new(UNBOUND)),
            value: e.0,
        })
    }

    /// Sends an event if there is room now; otherwise hands it back.
    pub fn try_send(&self, value: T) -> Result<(), TrySendError<T>> {
        self.tx.try_send(value).map_err(|e| match e {
            mpsc::error::TrySendError::Full(v) => TrySendError::Full(v),
            mpsc::error::TrySendError::Closed(v) => TrySendError::Closed(v),
        })
    }
}

impl<T: Send + Sync + 'static> Batch<T> {
    /// A batch accumulator and the sender that feeds it.
    pub fn new(config: BatchConfig) -> (Self, BatchSender<T>) {
        let config = BatchConfig {
            max_size: config.max_size.max(1),
            capacity: crate::clamp_capacity(config.capacity),
            flush_interval: config
                .flush_interval
                .map(|every| every.max(Duration::from_millis(1))),
        };
        let (tx, rx) = mpsc::channel(config.capacity);
        let source = Arc::new(OnceLock::new());
        (
            Self {
                config,
                rx,
                source: Arc::clone(&source),
            },
            BatchSender {
                tx,
                source,
                _t: PhantomData,
            },
        )
    }
}

/// Emits the buffer as one boundary. On failure the values are gone with the boundary; the
/// error counts them (plus whatever the caller still holds, see [`Batch::run`]).
async fn flush<T: Send + Sync + 'static>(
    ctx: &AccumulatorContext<Vec<T>>,
    buffer: &mut Vec<T>,
) -> Result<(), AccumulatorError> {
    if buffer.is_empty() {
        return Ok(());
    }
    // No preallocation: a timer or after-fire flush may emit far fewer than `max_size`.
    let batch = std::mem::take(buffer);
    let n = batch.len();
    ctx.emit(batch).await.map_err(|e| match e {
        AccumulatorError::ReactorClosed { source_name, .. } => AccumulatorError::ReactorClosed {
            source_name,
            pending: n,
        },
        other => other,
    })
}

/// Adds every event still queued for the batch to a delivery failure's count, so the error
/// says how many accepted events were not delivered.
fn with_backlog<T>(error: AccumulatorError, rx: &mut mpsc::Receiver<T>) -> AccumulatorError {
    rx.close();
    let mut backlog = 0;
    while rx.try_recv().is_ok() {
        backlog += 1;
    }
    match error {
        AccumulatorError::ReactorClosed {
            source_name,
            pending,
        } => AccumulatorError::ReactorClosed {
            source_name,
            pending: pending + backlog,
        },
        other => other,
    }
}

impl<T: Send + Sync + 'static> Accumulator for Batch<T> {
    type Output = Vec<T>;

    fn wants_after_fire(&self) -> bool {
        true
    }

    async fn run(mut self, ctx: AccumulatorContext<Vec<T>>) -> Result<(), AccumulatorError> {
        // A batch runs once, for one source: the first name set is the only one.
        let _ = self.source.set(ctx.source().clone());
        let result = self.collect(&ctx).await;
        let result = result.map_err(|e| with_backlog(e, &mut self.rx));
        ctx.set_health(AccumulatorHealth::Stopped);
        result
    }
}

impl<T: Send + Sync + 'static> Batch<T> {
    async fn collect(&mut self, ctx: &AccumulatorContext<Vec<T>>) -> Result<(), AccumulatorError> {
        let max = self.config.max_size;
        let mut buffer: Vec<T> = Vec::new();
        let mut ticks = self.config.flush_interval.and_then(interval_from_now);
        ctx.set_health(AccumulatorHealth::Live);
        let mut input_open = true;
        loop {
            tokio::select! {
                biased;
                () = ctx.shutdown_requested() => break,
                event = self.rx.recv(), if input_open => match event {
                    Some(event) => {
                        ctx.metrics().record_events(1);
                        buffer.push(event);
                        if buffer.len() >= max {
                            flush(ctx, &mut buffer).await?;
                        }
                    }
                    None => input_open = false,
                },
                () = tick(&mut ticks) => flush(ctx, &mut buffer).await?,
                () = ctx.after_fire() => flush(ctx, &mut buffer).await?,
            }
        }
        // Shutdown: refuse new events, take everything already queued, emit it all.
        self.rx.close();
        while let Some(event) = self.rx.recv().await {
            ctx.metrics().record_events(1);
            buffer.push(event);
            if buffer.len() >= max {
                flush(ctx, &mut buffer).await?;
            }
        }
        flush(ctx, &mut buffer).await
    }
}
