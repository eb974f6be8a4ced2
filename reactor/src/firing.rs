//! [`Firing`]: what subscribers receive, one per firing.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use cloacina_graph_core::{GraphResult, SourceName};

/// The input a firing saw from one source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FiringInput {
    /// The source.
    pub source: SourceName,
    /// Sequence number of the boundary the firing saw.
    pub seq: u64,
}

/// One firing of a reactor and its result.
#[derive(Debug)]
pub struct Firing {
    /// Reactor name.
    pub reactor: Arc<str>,
    /// Firing id, from 1, increasing per reactor.
    pub id: u64,
    /// Whether it was a manual firing (`force_fire`, `fire_with`).
    pub manual: bool,
    /// Graph runs it took (more than 1 under [`crate::FailurePolicy::Retry`]).
    pub attempts: u32,
    /// Inputs seen, one per source holding a value.
    pub inputs: Vec<FiringInput>,
    /// Wall-clock time the firing started.
    pub fired_at: SystemTime,
    /// Monotonic time the graph started.
    pub started: Instant,
    /// Monotonic time the graph finished.
    pub completed: Instant,
    /// The graph's result.
    pub result: GraphResult,
}

impl Firing {
    /// How long the graph ran.
    pub fn duration(&self) -> Duration {
        self.completed.saturating_duration_since(self.started)
    }

    /// Sequence number of the boundary of `source` this firing saw.
    pub fn input_seq(&self, source: &str) -> Option<u64> {
        self.inputs
            .iter()
            .find(|i| i.source.as_str() == source)
            .map(|i| i.seq)
    }
}
