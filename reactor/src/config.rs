//! Reaction criteria, input strategies and reactor settings.

use std::time::Duration;

use cloacina_graph_core::SourceName;

/// When a reactor fires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReactionCriteria {
    /// Fire when any listed source has a new boundary since the last firing
    /// (`None`: every source of the graph).
    WhenAny(Option<Vec<SourceName>>),
    /// Fire when every listed source has a new boundary since the last firing
    /// (`None`: every source of the graph).
    WhenAll(Option<Vec<SourceName>>),
}

impl ReactionCriteria {
    /// Any source of the graph.
    pub fn when_any() -> Self {
        ReactionCriteria::WhenAny(None)
    }

    /// Any of `sources`.
    pub fn when_any_of<S: Into<SourceName>>(sources: impl IntoIterator<Item = S>) -> Self {
        ReactionCriteria::WhenAny(Some(sources.into_iter().map(Into::into).collect()))
    }

    /// Every source of the graph.
    pub fn when_all() -> Self {
        ReactionCriteria::WhenAll(None)
    }

    /// Every one of `sources`.
    pub fn when_all_of<S: Into<SourceName>>(sources: impl IntoIterator<Item = S>) -> Self {
        ReactionCriteria::WhenAll(Some(sources.into_iter().map(Into::into).collect()))
    }
}

impl Default for ReactionCriteria {
    fn default() -> Self {
        Self::when_any()
    }
}

/// How boundaries that arrive while the reactor is busy are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InputStrategy {
    /// One slot per source, newest wins: boundaries arriving during a firing are coalesced and
    /// the next firing sees only the newest.
    #[default]
    Latest,
    /// Every boundary is queued and applied in arrival order, one firing per boundary (under
    /// `WhenAll`, each application is evaluated in turn).
    Sequential,
}

/// What a subscriber's full queue does to the reactor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Wait for room up to `max_wait`; a subscriber still full then is detached (its stream
    /// reports [`crate::Lagged`] and ends). The default: no loss while the subscriber keeps up
    /// within the bound, and one slow subscriber cannot stall the others for longer.
    Block {
        /// Longest the reactor waits for this subscriber.
        max_wait: Duration,
    },
    /// Never wait: a firing that finds the queue full is not delivered to this subscriber;
    /// every such miss is counted and reported on its stream as [`crate::Lagged`].
    DropNewest,
}

impl Default for Overflow {
    fn default() -> Self {
        Overflow::Block {
            max_wait: Duration::from_secs(5),
        }
    }
}

/// A subscriber's queue size and overflow policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// Firings the subscriber's queue holds.
    pub capacity: usize,
    /// What happens when it is full.
    pub overflow: Overflow,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        Self {
            capacity: 1024,
            overflow: Overflow::default(),
        }
    }
}

/// What a reactor does when a firing fails (a node panicked, timed out or hit a bad input).
///
/// Either way the failure is never silent: it is counted, logged, delivered to subscribers as
/// `GraphResult::Error` naming the node, and recorded in the ledger with the sequence numbers
/// of the inputs it consumed (the dead-letter record).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailurePolicy {
    /// Report the failure; the inputs are consumed (the default, as in the reference).
    #[default]
    Report,
    /// Re-run the graph on the same inputs, up to `attempts` runs in all, pausing `backoff`
    /// between runs; report only if the last run fails too. The reactor fires nothing else
    /// meanwhile (later boundaries wait), so keep `attempts * backoff` small.
    Retry {
        /// Runs in all, the first included.
        attempts: u32,
        /// Pause between runs.
        backoff: std::time::Duration,
    },
}

/// Where a reactor's loop runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReactorMode {
    /// A task on the tokio runtime the reactor was spawned from (the default). A producer on
    /// another thread wakes it through the runtime, paying a parked worker's wake-up (tens of
    /// microseconds on a small VM) per event that finds the reactor idle.
    #[default]
    Task,
    /// A dedicated OS thread of its own (see [`LowLatency`]).
    LowLatency(LowLatency),
}

/// The opt-in low-latency mode: the reactor runs on a dedicated OS thread (with a
/// single-threaded tokio runtime of its own for its async nodes and timers) that, when idle,
/// spins on its inbound queue for up to `spin` before parking. A producer that sends while the
/// reactor spins only writes to the queue: no wake-up, no system call, on either side.
///
/// **CPU cost**: while events arrive at least every `spin`, the thread never parks and keeps
/// one core busy (100 % of a core, whatever the event rate). After `spin` without work it parks
/// and costs nothing until the next event, which then pays an ordinary thread wake-up.
/// The graph's async nodes run on that thread too; work they `tokio::spawn` runs there only
/// between firings, so spawn background work on your own runtime instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LowLatency {
    /// How long an idle reactor spins before it parks (default 2 ms).
    pub spin: Duration,
}

impl Default for LowLatency {
    fn default() -> Self {
        Self {
            spin: Duration::from_millis(2),
        }
    }
}
