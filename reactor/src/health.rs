//! Reactor health.

use cloacina_graph_core::SourceName;

/// Health of a reactor, as operators and health endpoints read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReactorHealth {
    /// Spawned, not yet looked at its accumulators.
    Starting,
    /// Waiting for these accumulators to be live; no firing yet (boundaries are kept).
    Warming {
        /// Accumulators not yet live.
        waiting: Vec<SourceName>,
    },
    /// Firing normally.
    Live,
    /// Still firing, on stale values where an accumulator is down, or without a working ledger.
    Degraded {
        /// What is wrong.
        reasons: Vec<String>,
    },
    /// Stopped.
    Stopped,
    /// The reactor task died (an engine bug: a panic that escaped every guard). It takes
    /// nothing in and fires nothing; the reason is the panic message.
    Failed {
        /// What happened.
        reason: String,
    },
}
