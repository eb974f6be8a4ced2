//! [`GraphBuilder`]: declare nodes and routes by name, then [`GraphBuilder::build`] validates
//! the topology and compiles it.

use std::any::TypeId;
use std::collections::{HashMap, VecDeque};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use petgraph::graph::{DiGraph, NodeIndex};
use serde::Serialize;

use crate::compiled::{CompiledGraph, CompiledNode, SourceDecl};
use crate::node::{
    new_slot, output_codec, AnyValue, AsyncNode, AsyncNodeFn, ErasedNode, ErasedSlot, ExtractFn,
    InputDecl, InputKind, InputLoc, Inputs, Loc, NodeFn, OutputCodec, SyncNode,
};
use crate::source::SourceName;

/// Why a graph declaration was rejected. Every variant names the culprit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The graph has no nodes.
    #[error("graph `{graph}` has no nodes")]
    Empty {
        /// Graph name.
        graph: String,
    },
    /// Two nodes share a name.
    #[error("node `{node}` is declared twice")]
    DuplicateNode {
        /// The node.
        node: String,
    },
    /// A node declares no inputs.
    #[error("node `{node}` has no inputs")]
    NoInputs {
        /// The node.
        node: String,
    },
    /// A node name is also used as a source name.
    #[error("`{name}` is both a node and a source")]
    NameClash {
        /// The name.
        name: String,
    },
    /// An upstream input names no node.
    #[error("node `{node}` reads unknown node `{input}`")]
    UnknownNode {
        /// The reading node.
        node: String,
        /// The missing upstream.
        input: String,
    },
    /// A source is declared with two types.
    #[error("source `{source_name}` is read as {first} and as {second} (by node `{node}`)")]
    SourceTypeConflict {
        /// The source.
        source_name: String,
        /// Type declared first.
        first: &'static str,
        /// Conflicting type.
        second: &'static str,
        /// Node declaring the conflicting type.
        node: String,
    },
    /// An edge joins different types.
    #[error("node `{node}` expects {expected} from `{input}`, but `{input}` produces {found}")]
    TypeMismatch {
        /// The reading node.
        node: String,
        /// The upstream.
        input: String,
        /// Type the reader declared.
        expected: &'static str,
        /// Type the upstream produces.
        found: &'static str,
    },
    /// No node reads only sources.
    #[error("graph `{graph}` has no entry node (a node whose inputs are all sources)")]
    NoEntryNode {
        /// Graph name.
        graph: String,
    },
    /// The topology has a cycle.
    #[error("cycle between nodes {}", nodes.join(" -> "))]
    Cycle {
        /// Nodes on the cycle.
        nodes: Vec<String>,
    },
    /// A routing node declares no routes.
    #[error("routing node `{node}` has no routes")]
    NoRoutes {
        /// The router.
        node: String,
    },
    /// A route names a missing node.
    #[error("route `{router}::{variant}` goes to unknown node `{target}`")]
    UnknownRouteTarget {
        /// The router.
        router: String,
        /// The variant.
        variant: String,
        /// The missing target.
        target: String,
    },
    /// A route's target does not read the router.
    #[error("route `{router}::{variant}` goes to `{target}`, which does not read `{router}`")]
    RouteTargetDoesNotRead {
        /// The router.
        router: String,
        /// The variant.
        variant: String,
        /// The target.
        target: String,
    },
    /// A node reads a router without being the target of exactly one of its routes.
    #[error("node `{node}` reads routing node `{router}` but is the target of {routes} of its routes (must be exactly 1)")]
    RouteAmbiguous {
        /// The reading node.
        node: String,
        /// The router.
        router: String,
        /// Routes to the node.
        routes: usize,
    },
    /// A router declares a variant twice.
    #[error("routing node `{router}` declares variant `{variant}` twice")]
    DuplicateVariant {
        /// The router.
        router: String,
        /// The variant.
        variant: String,
    },
}

static NEXT_GRAPH_ID: AtomicU64 = AtomicU64::new(1);

type MakeNode = Box<dyn FnOnce(Box<[InputLoc]>, usize) -> Box<dyn ErasedNode>>;

struct TypeInfo {
    id: TypeId,
    name: &'static str,
}

struct RouteDecl {
    variant: String,
    target: String,
    payload: TypeInfo,
    extract: ExtractFn,
}

struct NodeDecl {
    name: String,
    inputs: Vec<InputDecl>,
    output: TypeInfo,
    routes: Option<Vec<RouteDecl>>,
    make: MakeNode,
    make_slot: fn() -> Box<dyn ErasedSlot>,
    encode: Option<OutputCodec>,
}

/// One route of a routing node: when the node's output is the variant `variant`, the payload
/// returned by the extractor goes to node `target`.
pub struct Route<E> {
    variant: String,
    target: String,
    payload: TypeInfo,
    extract: ExtractFn,
    _e: PhantomData<fn(E)>,
}

impl<E: Send + Sync + 'static> Route<E> {
    /// Declares that variant `variant` (matched by `extract`) runs node `target` with the
    /// payload `extract` returns. `variant` is a label for messages; what decides the branch is
    /// `extract` returning `Some`, so the extractors of one router must not overlap.
    pub fn new<P, X>(variant: impl Into<String>, target: impl Into<String>, extract: X) -> Self
    where
        P: Send + Sync + 'static,
        X: for<'v> Fn(&'v E) -> Option<&'v P> + Send + Sync + 'static,
    {
        let erased: ExtractFn = Arc::new(move |value: &AnyValue| -> Option<&AnyValue> {
            let e = value.downcast_ref::<E>()?;
            extract(e).map(|p| p as &AnyValue)
        });
        Self {
            variant: variant.into(),
            target: target.into(),
            payload: TypeInfo {
                id: TypeId::of::<P>(),
                name: std::any::type_name::<P>(),
            },
            extract: erased,
            _e: PhantomData,
        }
    }
}

/// Declares a computation graph node by node; see the crate docs for an example.
pub struct GraphBuilder {
    name: String,
    nodes: Vec<NodeDecl>,
}

impl GraphBuilder {
    /// Starts a graph called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            nodes: Vec::new(),
        }
    }

    fn push<I, O>(
        mut self,
        name: String,
        inputs: I,
        make: MakeNode,
        routes: Option<Vec<RouteDecl>>,
        encode: Option<OutputCodec>,
    ) -> Self
    where
        I: Inputs,
        O: Send + Sync + 'static,
    {
        self.nodes.push(NodeDecl {
            name,
            inputs: inputs.decls(),
            output: TypeInfo {
                id: TypeId::of::<O>(),
                name: std::any::type_name::<O>(),
            },
            routes,
            make,
            make_slot: new_slot::<O>,
            encode,
        });
        self
    }

    /// Adds a plain (synchronous) node. Plain nodes cost no allocation per firing.
    pub fn node<I, O, F>(self, name: impl Into<String>, inputs: I, f: F) -> Self
    where
        I: Inputs,
        O: Serialize + Send + Sync + 'static,
        F: NodeFn<I, O>,
    {
        self.push::<I, O>(
            name.into(),
            inputs,
            plain::<I, O, F>(f),
            None,
            Some(output_codec::<O>()),
        )
    }

    /// Adds a plain node that does CPU-heavy work: on a multi-thread tokio runtime it runs
    /// under `tokio::task::block_in_place`, so the worker's other tasks (timers, other
    /// reactors) move to the rest of the pool while it computes; its arguments are still
    /// borrowed, not copied. On a current-thread runtime it runs inline.
    pub fn blocking_node<I, O, F>(self, name: impl Into<String>, inputs: I, f: F) -> Self
    where
        I: Inputs,
        O: Serialize + Send + Sync + 'static,
        F: NodeFn<I, O>,
    {
        self.push::<I, O>(
            name.into(),
            inputs,
            compile_sync::<I, O, F>(f, true),
            None,
            Some(output_codec::<O>()),
        )
    }

    /// Adds an async node; its future may borrow its arguments.
    pub fn async_node<I, O, F>(self, name: impl Into<String>, inputs: I, f: F) -> Self
    where
        I: Inputs,
        O: Serialize + Send + Sync + 'static,
        F: for<'a> AsyncNodeFn<'a, I, O>,
    {
        self.push::<I, O>(
            name.into(),
            inputs,
            awaited::<I, O, F>(f),
            None,
            Some(output_codec::<O>()),
        )
    }

    /// Adds a plain routing node: it returns an enum `E`, and only the route matching the
    /// returned variant runs. `E` need not be serializable.
    pub fn router<I, E, F>(
        self,
        name: impl Into<String>,
        inputs: I,
        f: F,
        routes: impl IntoIterator<Item = Route<E>>,
    ) -> Self
    where
        I: Inputs,
        E: Send + Sync + 'static,
        F: NodeFn<I, E>,
    {
        self.push::<I, E>(
            name.into(),
            inputs,
            plain::<I, E, F>(f),
            Some(route_decls(routes)),
            None,
        )
    }

    /// Adds an async routing node.
    pub fn async_router<I, E, F>(
        self,
        name: impl Into<String>,
        inputs: I,
        f: F,
        routes: impl IntoIterator<Item = Route<E>>,
    ) -> Self
    where
        I: Inputs,
        E: Send + Sync + 'static,
        F: for<'a> AsyncNodeFn<'a, I, E>,
    {
        self.push::<I, E>(
            name.into(),
            inputs,
            awaited::<I, E, F>(f),
            Some(route_decls(routes)),
            None,
        )
    }

    /// Validates the declaration and compiles it.
    pub fn build(self) -> Result<CompiledGraph, BuildError> {
        let GraphBuilder { name, nodes } = self;
        if nodes.is_empty() {
            return Err(BuildError::Empty { graph: name });
        }
        let mut index: HashMap<&str, usize> = HashMap::with_capacity(nodes.len());
        for (i, n) in nodes.iter().enumerate() {
            if index.insert(n.name.as_str(), i).is_some() {
                return Err(BuildError::DuplicateNode {
                    node: n.name.clone(),
                });
            }
        }

        // Sources: first declaration fixes the type.
        let mut sources: Vec<SourceDecl> = Vec::new();
        for n in &nodes {
            if n.inputs.is_empty() {
                return Err(BuildError::NoInputs {
                    node: n.name.clone(),
                });
            }
            for input in n.inputs.iter().filter(|i| i.kind == InputKind::Source) {
                if index.contains_key(input.name.as_str()) {
                    return Err(BuildError::NameClash {
                        name: input.name.clone(),
                    });
                }
                match sources.iter().find(|s| s.name.as_str() == input.name) {
                    Some(s) if s.type_id != input.type_id => {
                        return Err(BuildError::SourceTypeConflict {
                            source_name: input.name.clone(),
                            first: s.type_name,
                            second: input.type_name,
                            node: n.name.clone(),
                        })
                    }
                    Some(_) => {}
                    None => sources.push(SourceDecl {
                        name: SourceName::new(&input.name),
                        type_id: input.type_id,
                        type_name: input.type_name,
                        codec: input.codec,
                    }),
                }
            }
        }

        // Routes: targets exist, read the router, variants unique.
        for n in &nodes {
            let Some(routes) = &n.routes else { continue };
            if routes.is_empty() {
                return Err(BuildError::NoRoutes {
                    node: n.name.clone(),
                });
            }
            for (k, r) in routes.iter().enumerate() {
                if routes[..k].iter().any(|o| o.variant == r.variant) {
                    return Err(BuildError::DuplicateVariant {
                        router: n.name.clone(),
                        variant: r.variant.clone(),
                    });
                }
                let Some(&t) = index.get(r.target.as_str()) else {
                    return Err(BuildError::UnknownRouteTarget {
                        router: n.name.clone(),
                        variant: r.variant.clone(),
                        target: r.target.clone(),
                    });
                };
                if !nodes[t]
                    .inputs
                    .iter()
                    .any(|i| i.kind == InputKind::Upstream && i.name == n.name)
                {
                    return Err(BuildError::RouteTargetDoesNotRead {
                        router: n.name.clone(),
                        variant: r.variant.clone(),
                        target: r.target.clone(),
                    });
                }
            }
        }

        // Upstream edges: known node, matching type.
        let mut graph = DiGraph::<usize, ()>::with_capacity(nodes.len(), nodes.len());
        let ids: Vec<NodeIndex> = (0..nodes.len()).map(|i| graph.add_node(i)).collect();
        for (i, n) in nodes.iter().enumerate() {
            for input in n.inputs.iter().filter(|i| i.kind == InputKind::Upstream) {
                let Some(&u) = index.get(input.name.as_str()) else {
                    return Err(BuildError::UnknownNode {
                        node: n.name.clone(),
                        input: input.name.clone(),
                    });
                };
                let found = match &nodes[u].routes {
                    None => &nodes[u].output,
                    Some(routes) => {
                        let to_me: Vec<&RouteDecl> =
                            routes.iter().filter(|r| r.target == n.name).collect();
                        match to_me.as_slice() {
                            [r] => &r.payload,
                            _ => {
                                return Err(BuildError::RouteAmbiguous {
                                    node: n.name.clone(),
                                    router: nodes[u].name.clone(),
                                    routes: to_me.len(),
                                })
                            }
                        }
                    }
                };
                if found.id != input.type_id {
                    return Err(BuildError::TypeMismatch {
                        node: n.name.clone(),
                        input: input.name.clone(),
                        expected: input.type_name,
                        found: found.name,
                    });
                }
                graph.add_edge(ids[u], ids[i], ());
            }
        }

        if !nodes
            .iter()
            .any(|n| n.inputs.iter().all(|i| i.kind == InputKind::Source))
        {
            return Err(BuildError::NoEntryNode { graph: name });
        }

        let order = match stable_topological_order(&graph) {
            Some(order) => order,
            None => {
                let scc = petgraph::algo::tarjan_scc(&graph)
                    .into_iter()
                    .find(|c| c.len() > 1 || graph.contains_edge(c[0], c[0]))
                    .unwrap_or_default();
                // Report a real cycle: from the component's earliest-declared node, follow
                // edges (breadth-first, inside the component) back to it.
                let mut cycle: Vec<String> = Vec::new();
                if let Some(start) = scc.iter().copied().min_by_key(|&ix| graph[ix]) {
                    let mut parent: HashMap<NodeIndex, NodeIndex> = HashMap::new();
                    let mut queue = VecDeque::from([start]);
                    let mut last = None;
                    'search: while let Some(u) = queue.pop_front() {
                        for w in graph.neighbors(u) {
                            if w == start {
                                last = Some(u);
                                break 'search;
                            }
                            if scc.contains(&w) && !parent.contains_key(&w) {
                                parent.insert(w, u);
                                queue.push_back(w);
                            }
                        }
                    }
                    let mut at = last;
                    while let Some(ix) = at {
                        cycle.push(nodes[graph[ix]].name.clone());
                        at = if ix == start {
                            None
                        } else {
                            parent.get(&ix).copied()
                        };
                    }
                    cycle.reverse();
                    if let Some(first) = cycle.first().cloned() {
                        cycle.push(first);
                    }
                }
                return Err(BuildError::Cycle { nodes: cycle });
            }
        };

        // Compile: slot = topological position.
        let topo: Vec<usize> = order.iter().map(|&ix| graph[ix]).collect();
        let mut slot_of = vec![0usize; nodes.len()];
        for (slot, &decl) in topo.iter().enumerate() {
            slot_of[decl] = slot;
        }
        let has_consumer: Vec<bool> = (0..nodes.len())
            .map(|i| graph.neighbors(ids[i]).next().is_some())
            .collect();

        // Resolve every argument's location before the declarations are consumed.
        let mut locs_of: Vec<Option<Box<[InputLoc]>>> = nodes
            .iter()
            .map(|n| {
                let locs: Box<[InputLoc]> = n
                    .inputs
                    .iter()
                    .map(|input| match input.kind {
                        InputKind::Source => InputLoc(Loc::Source(
                            sources
                                .iter()
                                .position(|s| s.name.as_str() == input.name)
                                .unwrap_or(usize::MAX),
                        )),
                        InputKind::Upstream => {
                            let u = index
                                .get(input.name.as_str())
                                .copied()
                                .unwrap_or(usize::MAX);
                            let slot = slot_of.get(u).copied().unwrap_or(usize::MAX);
                            let route = nodes
                                .get(u)
                                .and_then(|up| up.routes.as_ref())
                                .and_then(|rs| rs.iter().find(|r| r.target == n.name));
                            match route {
                                Some(r) => InputLoc(Loc::Routed {
                                    slot,
                                    extract: Arc::clone(&r.extract),
                                }),
                                None => InputLoc(Loc::Node(slot)),
                            }
                        }
                    })
                    .collect();
                Some(locs)
            })
            .collect();

        let mut decls: Vec<Option<NodeDecl>> = nodes.into_iter().map(Some).collect();
        let mut compiled = Vec::with_capacity(decls.len());
        let mut make_slots = Vec::with_capacity(decls.len());
        for &d in &topo {
            let (Some(decl), Some(locs)) = (decls[d].take(), locs_of[d].take()) else {
                continue;
            };
            make_slots.push(decl.make_slot);
            compiled.push(CompiledNode {
                name: Arc::from(decl.name.as_str()),
                run: (decl.make)(locs, slot_of[d]),
                terminal: !has_consumer[d],
                output_type: decl.output.name,
                encode: decl.encode,
            });
        }
        Ok(CompiledGraph::new(
            NEXT_GRAPH_ID.fetch_add(1, Ordering::Relaxed),
            name,
            compiled,
            sources,
            make_slots,
        ))
    }
}

/// Compiles a plain node once its argument locations and slot are known.
fn plain<I, O, F>(f: F) -> MakeNode
where
    I: Inputs,
    O: Send + Sync + 'static,
    F: NodeFn<I, O>,
{
    compile_sync::<I, O, F>(f, false)
}

/// Compiles a plain node, optionally run as blocking (see [`GraphBuilder::blocking_node`]).
fn compile_sync<I, O, F>(f: F, blocking: bool) -> MakeNode
where
    I: Inputs,
    O: Send + Sync + 'static,
    F: NodeFn<I, O>,
{
    Box::new(move |locs, slot| {
        Box::new(SyncNode::<I, O, F> {
            f,
            locs,
            slot,
            blocking,
            _p: PhantomData,
        })
    })
}

/// Compiles an async node once its argument locations and slot are known.
fn awaited<I, O, F>(f: F) -> MakeNode
where
    I: Inputs,
    O: Send + Sync + 'static,
    F: for<'a> AsyncNodeFn<'a, I, O>,
{
    Box::new(move |locs, slot| {
        Box::new(AsyncNode::<I, O, F> {
            f,
            locs,
            slot,
            _p: PhantomData,
        })
    })
}

/// Kahn's algorithm taking, among the nodes ready to run, the one declared first: the
/// execution order is deterministic and keeps declaration order wherever the edges allow (so
/// graphs combined into one run in the order they were added). `None` if there is a cycle.
fn stable_topological_order(graph: &DiGraph<usize, ()>) -> Option<Vec<NodeIndex>> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;

    let mut indegree: Vec<usize> = graph
        .node_indices()
        .map(|ix| {
            graph
                .neighbors_directed(ix, petgraph::Direction::Incoming)
                .count()
        })
        .collect();
    let mut ready: BinaryHeap<Reverse<(usize, NodeIndex)>> = graph
        .node_indices()
        .filter(|ix| indegree[ix.index()] == 0)
        .map(|ix| Reverse((graph[ix], ix)))
        .collect();
    let mut order = Vec::with_capacity(graph.node_count());
    while let Some(Reverse((_, ix))) = ready.pop() {
        order.push(ix);
        for next in graph.neighbors(ix) {
            let d = &mut indegree[next.index()];
            *d -= 1;
            if *d == 0 {
                ready.push(Reverse((graph[next], next)));
            }
        }
    }
    (order.len() == graph.node_count()).then_some(order)
}

fn route_decls<E>(routes: impl IntoIterator<Item = Route<E>>) -> Vec<RouteDecl> {
    routes
        .into_iter()
        .map(|r| RouteDecl {
            variant: r.variant,
            target: r.target,
            payload: r.payload,
            extract: r.extract,
        })
        .collect()
}
