//! [`CompiledGraph`] and its per-caller [`Executor`].
//!
//! Compilation fixes a topological order and gives every node a slot index; a firing is a
//! straight run over that order. Each node's output goes into its own reusable slot, where its
//! consumers borrow it; terminal outputs are moved out into the [`GraphResult`]. A node whose
//! upstream did not run (an untaken route) is skipped, and so are its descendants.

use std::any::TypeId;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::cache::InputCache;
use crate::node::{
    ErasedNode, ErasedSlot, FireCtx, NodeFailure, NodeRun, OutputCodec, SourceCodec,
};
use crate::result::{GraphError, GraphResult, TerminalOutput, TerminalOutputs};
use crate::source::SourceName;

/// A source a graph reads, with its type.
#[derive(Debug, Clone)]
pub struct SourceDecl {
    /// Source name.
    pub name: SourceName,
    /// Type of its values.
    pub type_id: TypeId,
    /// Rust type name, for messages.
    pub type_name: &'static str,
    /// Codec of its values.
    pub codec: Option<SourceCodec>,
}

/// Makes an empty output slot of one node's type.
pub(crate) type MakeSlot = fn() -> Box<dyn ErasedSlot>;

pub(crate) struct CompiledNode {
    pub(crate) name: Arc<str>,
    pub(crate) run: Box<dyn ErasedNode>,
    pub(crate) terminal: bool,
    /// Slots of the nodes this one reads (no repeats): it may run once they are all settled.
    pub(crate) upstreams: Box<[usize]>,
    pub(crate) output_type: &'static str,
    pub(crate) encode: Option<OutputCodec>,
}

/// A validated, compiled graph. Share it with `Arc`; fire it through an [`Executor`].
pub struct CompiledGraph {
    id: u64,
    name: Arc<str>,
    nodes: Box<[CompiledNode]>,
    sources: Box<[SourceDecl]>,
    source_names: Box<[SourceName]>,
    make_slots: Box<[MakeSlot]>,
}

impl fmt::Debug for CompiledGraph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompiledGraph")
            .field("name", &self.name)
            .field("nodes", &self.node_names().collect::<Vec<_>>())
            .field("sources", &self.source_names)
            .finish()
    }
}

impl CompiledGraph {
    pub(crate) fn new(
        id: u64,
        name: String,
        nodes: Vec<CompiledNode>,
        sources: Vec<SourceDecl>,
        make_slots: Vec<MakeSlot>,
    ) -> Self {
        let source_names = sources.iter().map(|s| s.name.clone()).collect();
        Self {
            id,
            name: Arc::from(name),
            nodes: nodes.into_boxed_slice(),
            sources: sources.into_boxed_slice(),
            source_names,
            make_slots: make_slots.into_boxed_slice(),
        }
    }

    /// The graph's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The sources the graph reads, in slot order.
    pub fn sources(&self) -> &[SourceDecl] {
        &self.sources
    }

    /// Slot index of source `name`.
    pub fn source_index(&self, name: &str) -> Option<usize> {
        self.source_names.iter().position(|s| s.as_str() == name)
    }

    /// Node names in execution (topological) order.
    pub fn node_names(&self) -> impl Iterator<Item = &str> + '_ {
        self.nodes.iter().map(|n| &*n.name)
    }

    /// Terminal node names with their output type names.
    pub fn terminals(&self) -> impl Iterator<Item = (&str, &'static str)> + '_ {
        self.nodes
            .iter()
            .filter(|n| n.terminal)
            .map(|n| (&*n.name, n.output_type))
    }

    /// An empty cache aligned with this graph's sources (read by index when fired).
    pub fn new_cache(&self) -> InputCache {
        InputCache::aligned(self.id, &self.source_names)
    }

    /// Fires once on `cache` with a throw-away executor (tests, tools, benchmarks of a single
    /// firing). Reactors keep an [`Executor`] instead.
    pub async fn fire(self: &Arc<Self>, cache: &InputCache) -> GraphResult {
        Executor::new(Arc::clone(self)).fire(cache).await
    }
}

/// Fires one compiled graph, reusing its node slots from firing to firing.
pub struct Executor {
    graph: Arc<CompiledGraph>,
    slots: Box<[Box<dyn ErasedSlot>]>,
    timeout: Option<Duration>,
    /// A firing started and has not cleaned up yet (its future was dropped mid-way):
    /// the next firing empties every slot first.
    in_flight: bool,
}

impl fmt::Debug for Executor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Executor")
            .field("graph", &self.graph.name)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Whether a firing keeps its terminal outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Collect {
    /// Move terminal outputs into the result.
    Outputs,
    /// Drop them (nobody reads the result): no allocation for the result.
    Nothing,
}

impl Executor {
    /// An executor for `graph`, with no timeout.
    pub fn new(graph: Arc<CompiledGraph>) -> Self {
        let slots = graph.make_slots.iter().map(|make| make()).collect();
        Self {
            graph,
            slots,
            timeout: None,
            in_flight: false,
        }
    }

    /// Sets the per-firing timeout (`None`: no limit). An async node still pending at the
    /// deadline is abandoned; a plain node that returns after it fails the firing. Either way
    /// the result names the node.
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// The graph.
    pub fn graph(&self) -> &Arc<CompiledGraph> {
        &self.graph
    }

    /// Fires once on `cache` and returns the terminal outputs.
    pub async fn fire(&mut self, cache: &InputCache) -> GraphResult {
        match self.execute(cache, Collect::Outputs).await {
            Ok(outputs) => GraphResult::Completed { outputs },
            Err(e) => GraphResult::Error(e),
        }
    }

    /// Fires once on `cache`; with [`Collect::Nothing`] the outputs are dropped.
    pub async fn execute(
        &mut self,
        cache: &InputCache,
        collect: Collect,
    ) -> Result<TerminalOutputs, GraphError> {
        self.execute_inner(cache, collect, false).await.0
    }

    /// Like [`Executor::execute`], and also returns when the firing started and completed.
    /// The instants are the ones the deadline checks read anyway, so timing a firing this way
    /// costs no extra clock reads.
    pub async fn execute_timed(&mut self, cache: &InputCache, collect: Collect) -> Execution {
        let (outcome, times) = self.execute_inner(cache, collect, true).await;
        let (started, completed) = times.unwrap_or_else(|| {
            let now = Instant::now();
            (now, now)
        });
        Execution {
            outcome,
            started,
            completed,
        }
    }

    /// Runs a firing; reads the clock only for a deadline or when `timed`.
    async fn execute_inner(
        &mut self,
        cache: &InputCache,
        collect: Collect,
        timed: bool,
    ) -> (
        Result<TerminalOutputs, GraphError>,
        Option<(Instant, Instant)>,
    ) {
        if self.in_flight {
            for slot in self.slots.iter_mut() {
                slot.clear();
            }
        }
        self.in_flight = true;
        let (outcome, times) = self.run_nodes(cache, timed).await;
        let graph = &self.graph;
        let mut outputs = match (&outcome, collect) {
            (Ok(()), Collect::Outputs) => {
                TerminalOutputs::with_capacity(graph.nodes.iter().filter(|n| n.terminal).count())
            }
            _ => TerminalOutputs::default(),
        };
        for (node, slot) in graph.nodes.iter().zip(self.slots.iter_mut()) {
            if outcome.is_ok() && collect == Collect::Outputs && node.terminal {
                if let Some(value) = slot.take_boxed() {
                    outputs.push(TerminalOutput::new(
                        Arc::clone(&node.name),
                        value,
                        node.output_type,
                        node.encode,
                    ));
                }
            } else {
                slot.clear();
            }
        }
        self.in_flight = false;
        (outcome.map(|()| outputs), times)
    }

    /// Runs every due node; returns the outcome, and the start and end instants if the clock
    /// was read (a deadline is set, or `timed`).
    async fn run_nodes(
        &self,
        cache: &InputCache,
        timed: bool,
    ) -> (Result<(), GraphError>, Option<(Instant, Instant)>) {
        let graph = &*self.graph;
        let ctx = FireCtx {
            cache,
            aligned: cache.layout() == graph.id,
            source_names: &graph.source_names,
            slots: &self.slots,
        };
        let started = (timed || self.timeout.is_some()).then(Instant::now);
        // A timeout too large to add to the clock means no deadline.
        let deadline = match (self.timeout, started) {
            (Some(t), Some(start)) => start.checked_add(t).map(|at| (t, at)),
            _ => None,
        };
        let end = |outcome: Result<(), GraphError>, at: Option<Instant>| {
            let times = started.map(|s| (s, at.unwrap_or_else(Instant::now)));
            (outcome, times)
        };
        // The last clock reading, if no node was looked at since it was taken.
        let mut fresh: Option<Instant> = None;
        for node in graph.nodes.iter() {
            fresh = None;
            let outcome = match node.run.run(&ctx) {
                NodeRun::Skipped => continue,
                NodeRun::Done(outcome) => outcome,
                NodeRun::Pending(fut) => match deadline {
                    None => fut.await,
                    Some((timeout, at)) => match (WithDeadline {
                        fut,
                        at,
                        sleep: None,
                    })
                    .await
                    {
                        Some(outcome) => outcome,
                        None => return end(Err(timed_out(node, timeout)), None),
                    },
                },
            };
            if let Err(failure) = outcome {
                return end(Err(node_error(node, failure)), None);
            }
            if let Some((timeout, at)) = deadline {
                let now = Instant::now();
                if now > at {
                    return end(Err(timed_out(node, timeout)), Some(now));
                }
                fresh = Some(now);
            }
        }
        end(Ok(()), fresh)
    }
}

/// The outcome of one firing with its timing.
#[derive(Debug)]
pub struct Execution {
    /// Terminal outputs, or the error naming the node.
    pub outcome: Result<TerminalOutputs, GraphError>,
    /// When the first node was about to run.
    pub started: Instant,
    /// When the last node finished (or the firing failed).
    pub completed: Instant,
}

fn timed_out(node: &CompiledNode, timeout: Duration) -> GraphError {
    GraphError::NodeTimedOut {
        node: Arc::clone(&node.name),
        timeout,
    }
}

fn node_error(node: &CompiledNode, failure: NodeFailure) -> GraphError {
    let node = Arc::clone(&node.name);
    match failure {
        NodeFailure::Panicked(message) => GraphError::NodePanicked { node, message },
        NodeFailure::InputType {
            source,
            expected,
            found,
        } => GraphError::InputType {
            node,
            source_name: source,
            expected,
            found,
        },
        NodeFailure::Internal(detail) => GraphError::Internal { node, detail },
    }
}

/// Polls `fut` until `at`; the timer is armed only if the future is still pending after its
/// first poll, so nodes that complete at once pay nothing for the timeout.
struct WithDeadline<F> {
    fut: F,
    at: Instant,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<F: Future + Unpin> Future for WithDeadline<F> {
    type Output = Option<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(v) = Pin::new(&mut self.fut).poll(cx) {
            return Poll::Ready(Some(v));
        }
        let at = self.at;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at.into())));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}
