//! Accumulator health, reported to the reactor through a shared [`HealthBoard`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cloacina_graph_core::SourceName;
use tokio::sync::Notify;

/// Health of one accumulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccumulatorHealth {
    /// Starting up (restoring state).
    Starting,
    /// Connecting to its event source.
    Connecting,
    /// Receiving events.
    Live,
    /// Lost its event source; the reactor keeps firing on stale values.
    Disconnected,
    /// Has no event source of its own; fed by in-process pushes only.
    SocketOnly,
    /// Failed; the supervisor restarts it after a backoff.
    Restarting,
    /// Failed too many times in a row; the supervisor gave up on it.
    Failed,
    /// Stopped (shutdown).
    Stopped,
}

impl AccumulatorHealth {
    /// Whether a reactor may fire on this accumulator's data.
    pub fn is_ready(self) -> bool {
        matches!(
            self,
            AccumulatorHealth::Live | AccumulatorHealth::SocketOnly
        )
    }
}

/// Health of every accumulator of one reactor, with a wake-up for the reactor on change.
#[derive(Debug, Default)]
pub struct HealthBoard {
    states: Mutex<Vec<(SourceName, AccumulatorHealth)>>,
    changed: Notify,
    version: AtomicU64,
}

impl HealthBoard {
    /// An empty board.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Registers an accumulator (state `Starting`) and returns its reporter.
    pub fn register(self: &Arc<Self>, source: SourceName) -> HealthReporter {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        states.push((source, AccumulatorHealth::Starting));
        let index = states.len() - 1;
        drop(states);
        self.version.fetch_add(1, Ordering::Release);
        self.changed.notify_one();
        HealthReporter {
            board: Arc::clone(self),
            index,
        }
    }

    /// Every accumulator's health, in registration order.
    pub fn states(&self) -> Vec<(SourceName, AccumulatorHealth)> {
        self.states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Completes after the next change (or at once if one happened since the last call).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// A number that grows with every change: a cheap check for a spinning reader.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }
}

/// Lets one accumulator report its health.
#[derive(Debug, Clone)]
pub struct HealthReporter {
    board: Arc<HealthBoard>,
    index: usize,
}

impl HealthReporter {
    /// Reports a new state (no-op if unchanged).
    pub fn set(&self, health: AccumulatorHealth) {
        let mut states = self.board.states.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = states.get_mut(self.index) {
            if entry.1 != health {
                entry.1 = health;
                drop(states);
                self.board.version.fetch_add(1, Ordering::Release);
                self.board.changed.notify_one();
            }
        }
    }

    /// The state last reported.
    pub fn get(&self) -> AccumulatorHealth {
        self.board
            .states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(self.index)
            .map_or(AccumulatorHealth::Stopped, |e| e.1)
    }
}
