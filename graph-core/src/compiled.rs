//! [`CompiledGraph`] and its per-caller [`Executor`].
//!
//! Compilation fixes a topological order and gives every node a slot index; a firing is a
//! straight run over that order. Each node's output goes into its own reusable slot, where its
//! consumers borrow it; terminal outputs are moved out into the [`GraphResult`]. A node whose
//! upstream did not run (an untaken route) is skipped, and so are its descendants.
//!
//! Independent async branches run concurrently. While every node settles at once (plain nodes,
//! async nodes whose future is ready on its first poll) the firing is the straight run. When an
//! async node's future is pending, the firing keeps polling it, in the firing's own task (no
//! spawning), while it starts every later node whose upstreams have all settled (run or
//! skipped); plain nodes among them still run inline. Each node runs at most once per firing,
//! and only after all of its upstreams settled, so routing and fan-in are exactly as in the
//! straight run.

use std::any::TypeId;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::cache::InputCache;
use crate::node::{
    ErasedNode, ErasedSlot, FireCtx, NodeFailure, NodeFuture, NodeRun, OutputCodec, SourceCodec,
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
    /// Per-node progress, used once a firing has an async node pending.
    status: Box<[Status]>,
    /// A firing started and has not cleaned up yet (its future was dropped mid-way):
    /// the next firing empties every slot first.
    in_flight: bool,
}

/// Where a node stands in a firing that runs branches concurrently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    /// Not started.
    Waiting,
    /// Its future is pending.
    Running,
    /// Ran or was skipped: its slot is final for this firing.
    Settled,
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
        let status = vec![Status::Waiting; graph.nodes.len()].into_boxed_slice();
        Self {
            graph,
            slots,
            timeout: None,
            status,
            in_flight: false,
        }
    }

    /// Sets the per-firing timeout (`None`: no limit), for the whole firing. Async nodes still
    /// pending at the deadline are abandoned and the result names one of them; a plain node
    /// that returns after it fails the firing, and the result names it.
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
        let (outcome, times) = run_nodes(
            &self.graph,
            &self.slots,
            &mut self.status,
            self.timeout,
            cache,
            timed,
        )
        .await;
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
}

/// Runs every due node; returns the outcome, and the start and end instants if the clock was
/// read (a deadline is set, or `timed`).
async fn run_nodes(
    graph: &CompiledGraph,
    slots: &[Box<dyn ErasedSlot>],
    status: &mut [Status],
    timeout: Option<Duration>,
    cache: &InputCache,
    timed: bool,
) -> (Result<(), GraphError>, Option<(Instant, Instant)>) {
    let ctx = FireCtx {
        cache,
        aligned: cache.layout() == graph.id,
        source_names: &graph.source_names,
        slots,
    };
    let started = (timed || timeout.is_some()).then(Instant::now);
    // A timeout too large to add to the clock means no deadline.
    let deadline = match (timeout, started) {
        (Some(t), Some(start)) => start.checked_add(t).map(|at| Deadline { timeout: t, at }),
        _ => None,
    };
    let end = |outcome: Result<(), GraphError>, at: Option<Instant>| {
        let times = started.map(|s| (s, at.unwrap_or_else(Instant::now)));
        (outcome, times)
    };
    // The straight run, while every node settles at once. `fresh` is the last clock reading,
    // if no node was looked at since it was taken.
    let mut fresh: Option<Instant> = None;
    for (i, node) in graph.nodes.iter().enumerate() {
        fresh = None;
        let outcome = match node.run.run(&ctx) {
            NodeRun::Skipped => continue,
            NodeRun::Done(outcome) => outcome,
            NodeRun::Pending(mut fut) => {
                match std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await {
                    Poll::Ready(outcome) => outcome,
                    Poll::Pending => {
                        let outcome =
                            Concurrent::start(graph, &ctx, status, deadline, i, fut).await;
                        return end(outcome, None);
                    }
                }
            }
        };
        if let Err(failure) = outcome {
            return end(Err(node_error(node, failure)), None);
        }
        if let Some(d) = deadline {
            match d.check(node) {
                Ok(now) => fresh = Some(now),
                Err((e, now)) => return end(Err(e), Some(now)),
            }
        }
    }
    end(Ok(()), fresh)
}

/// The per-firing deadline.
#[derive(Debug, Clone, Copy)]
struct Deadline {
    timeout: Duration,
    at: Instant,
}

impl Deadline {
    /// After `node` settled: the current instant, or the timeout error naming `node` if the
    /// deadline has passed.
    fn check(&self, node: &CompiledNode) -> Result<Instant, (GraphError, Instant)> {
        let now = Instant::now();
        if now > self.at {
            Err((timed_out(node, self.timeout), now))
        } else {
            Ok(now)
        }
    }
}

/// The rest of a firing once an async node is pending: a hand-rolled join over the pending
/// node futures, polled in the firing's task, that starts every node whose upstreams have
/// settled.
struct Concurrent<'a, 's> {
    graph: &'a CompiledGraph,
    ctx: &'a FireCtx<'a>,
    status: &'s mut [Status],
    deadline: Option<Deadline>,
    /// Pending node futures with their node index, in the order they started.
    running: Vec<(usize, NodeFuture<'a>)>,
    /// Every node before this one has started.
    next: usize,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<'a, 's> Concurrent<'a, 's> {
    /// Runs the rest of the firing; node `first` is pending with `fut`, every node before it
    /// has settled.
    async fn start(
        graph: &'a CompiledGraph,
        ctx: &'a FireCtx<'a>,
        status: &'s mut [Status],
        deadline: Option<Deadline>,
        first: usize,
        fut: NodeFuture<'a>,
    ) -> Result<(), GraphError> {
        for (i, s) in status.iter_mut().enumerate() {
            *s = match i.cmp(&first) {
                std::cmp::Ordering::Less => Status::Settled,
                std::cmp::Ordering::Equal => Status::Running,
                std::cmp::Ordering::Greater => Status::Waiting,
            };
        }
        let mut running = Vec::with_capacity(4);
        running.push((first, fut));
        let mut this = Concurrent {
            graph,
            ctx,
            status,
            deadline,
            running,
            next: first + 1,
            sleep: None,
        };
        std::future::poll_fn(move |cx| this.poll(cx)).await
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GraphError>> {
        loop {
            self.start_ready()?;
            let mut settled = false;
            let mut k = 0;
            while k < self.running.len() {
                match self.running[k].1.as_mut().poll(cx) {
                    Poll::Pending => k += 1,
                    Poll::Ready(outcome) => {
                        let (i, _) = self.running.remove(k);
                        self.settle(i, outcome)?;
                        settled = true;
                    }
                }
            }
            if self.running.is_empty() && self.next >= self.status.len() {
                return Poll::Ready(Ok(()));
            }
            if !settled {
                break;
            }
        }
        // Everything left is pending: wait, but not past the deadline. The timer is armed
        // only now, so firings whose futures finish at once pay nothing for it.
        if let Some(d) = self.deadline {
            let sleep = self
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(d.at.into())));
            if sleep.as_mut().poll(cx).is_ready() {
                let node = self
                    .running
                    .first()
                    .and_then(|(i, _)| self.graph.nodes.get(*i));
                if let Some(node) = node {
                    return Poll::Ready(Err(timed_out(node, d.timeout)));
                }
            }
        }
        Poll::Pending
    }

    /// Starts, in topological order, every waiting node whose upstreams have all settled.
    /// Plain nodes (and skipped ones) settle on the spot, which may make later ones ready in
    /// the same pass; async nodes join `running` and are polled by the caller.
    fn start_ready(&mut self) -> Result<(), GraphError> {
        let nodes = &self.graph.nodes;
        for i in self.next..nodes.len() {
            if self.status[i] != Status::Waiting {
                continue;
            }
            let node = &nodes[i];
            if !node
                .upstreams
                .iter()
                .all(|&u| self.status.get(u) == Some(&Status::Settled))
            {
                continue;
            }
            match node.run.run(self.ctx) {
                NodeRun::Skipped => self.status[i] = Status::Settled,
                NodeRun::Done(outcome) => self.settle(i, outcome)?,
                NodeRun::Pending(fut) => {
                    self.status[i] = Status::Running;
                    self.running.push((i, fut));
                }
            }
        }
        while self.next < nodes.len() && self.status[self.next] != Status::Waiting {
            self.next += 1;
        }
        Ok(())
    }

    /// Node `i` finished with `outcome`.
    fn settle(&mut self, i: usize, outcome: Result<(), NodeFailure>) -> Result<(), GraphError> {
        let Some(node) = self.graph.nodes.get(i) else {
            return Ok(());
        };
        if let Err(failure) = outcome {
            return Err(node_error(node, failure));
        }
        if let Some(d) = self.deadline {
            d.check(node).map_err(|(e, _)| e)?;
        }
        self.status[i] = Status::Settled;
        Ok(())
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
