//! What a reactor reports: its errors, its state on request and its shutdown report.

use cloacina_graph_core::{Boundary, InputCache, SourceName};

use crate::health::ReactorHealth;

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
