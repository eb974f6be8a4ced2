//! [`GraphBuilder`]: declare nodes and routes by name, then [`GraphBuilder::build`] validates
//! the topology and compiles it.

use std::any::TypeId;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cloacina_topology::{
    self as topology, validate_graph, GraphInput, GraphNode, GraphRoute, ResolvedInput,
    TopologyError,
};
use serde::Serialize;

use crate::compiled::{CompiledGraph, CompiledNode, SourceDecl};
use crate::node::{
    new_slot, output_codec, AnyValue, AsyncNode, AsyncNodeFn, ErasedNode, ErasedSlot, ExtractFn,
    InputDecl, InputKind, InputLoc, Inputs, Loc, NodeFn, OutputCodec, SyncNode,
};
use crate::source::SourceName;

/// Why a graph declaration was rejected. Every variant names the culprit. The rules live in
/// `cloacina-topology`; this is their verdict in graph-core's terms.
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

/// A type as the validator compares it: by `TypeId`, named for messages.
#[derive(Debug, Clone, Copy)]
struct TypeInfo {
    id: TypeId,
    name: &'static str,
}

impl PartialEq for TypeInfo {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
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

    /// Validates the declaration (with [`cloacina_topology::validate_graph`], the rules the
    /// `#[computation_graph]` macro applies at compile time) and compiles it.
    pub fn build(self) -> Result<CompiledGraph, BuildError> {
        let GraphBuilder { name, nodes } = self;
        let specs: Vec<GraphNode<'_, TypeInfo>> = nodes.iter().map(NodeDecl::spec).collect();
        let plan = validate_graph(&name, &specs).map_err(build_error)?;
        drop(specs);

        let sources: Vec<SourceDecl> = plan
            .sources()
            .iter()
            .filter_map(|&(node, input)| nodes.get(node)?.inputs.get(input))
            .map(|input| SourceDecl {
                name: SourceName::new(&input.name),
                type_id: input.type_id,
                type_name: input.type_name,
                codec: input.codec,
            })
            .collect();

        // Compile: slot = topological position.
        let topo = plan.order();
        let mut slot_of = vec![0usize; nodes.len()];
        for (slot, &decl) in topo.iter().enumerate() {
            slot_of[decl] = slot;
        }

        // Resolve every argument's location before the declarations are consumed.
        let mut locs_of: Vec<Option<Box<[InputLoc]>>> = (0..nodes.len())
            .map(|d| {
                let locs: Box<[InputLoc]> = plan
                    .inputs(d)
                    .iter()
                    .map(|resolved| match *resolved {
                        ResolvedInput::Source(s) => InputLoc(Loc::Source(s)),
                        ResolvedInput::Node(u) => InputLoc(Loc::Node(slot_of[u])),
                        ResolvedInput::Routed { node, route } => {
                            let extract = nodes[node]
                                .routes
                                .as_ref()
                                .and_then(|routes| routes.get(route))
                                .map(|r| Arc::clone(&r.extract));
                            match extract {
                                Some(extract) => InputLoc(Loc::Routed {
                                    slot: slot_of[node],
                                    extract,
                                }),
                                // The plan only names routes that exist.
                                None => InputLoc(Loc::Node(usize::MAX)),
                            }
                        }
                    })
                    .collect();
                Some(locs)
            })
            .collect();
        let upstreams_of: Vec<Box<[usize]>> = (0..nodes.len())
            .map(|d| {
                plan.dag()
                    .dependencies(d)
                    .iter()
                    .map(|&u| slot_of[u])
                    .collect()
            })
            .collect();

        let mut decls: Vec<Option<NodeDecl>> = nodes.into_iter().map(Some).collect();
        let mut compiled = Vec::with_capacity(decls.len());
        let mut make_slots = Vec::with_capacity(decls.len());
        for &d in topo {
            let (Some(decl), Some(locs)) = (decls[d].take(), locs_of[d].take()) else {
                continue;
            };
            make_slots.push(decl.make_slot);
            compiled.push(CompiledNode {
                name: Arc::from(decl.name.as_str()),
                run: (decl.make)(locs, slot_of[d]),
                terminal: plan.is_terminal(d),
                upstreams: upstreams_of[d].clone(),
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

impl NodeDecl {
    /// The node as the topology validator sees it.
    fn spec(&self) -> GraphNode<'_, TypeInfo> {
        GraphNode {
            name: &self.name,
            inputs: self
                .inputs
                .iter()
                .map(|i| GraphInput {
                    name: &i.name,
                    kind: match i.kind {
                        InputKind::Source => topology::InputKind::Source,
                        InputKind::Upstream => topology::InputKind::Upstream,
                    },
                    ty: Some(TypeInfo {
                        id: i.type_id,
                        name: i.type_name,
                    }),
                })
                .collect(),
            output: Some(self.output),
            routes: self.routes.as_ref().map(|routes| {
                routes
                    .iter()
                    .map(|r| GraphRoute {
                        variant: &r.variant,
                        target: &r.target,
                        payload: Some(r.payload),
                    })
                    .collect()
            }),
        }
    }
}

/// The validator's verdict in this crate's terms (same variants, same messages).
fn build_error(e: TopologyError<TypeInfo>) -> BuildError {
    match e {
        TopologyError::Empty { graph } => BuildError::Empty { graph },
        TopologyError::DuplicateNode { node } => BuildError::DuplicateNode { node },
        TopologyError::NoInputs { node } => BuildError::NoInputs { node },
        TopologyError::NameClash { name } => BuildError::NameClash { name },
        TopologyError::SourceTypeConflict {
            source_name,
            first,
            second,
            node,
        } => BuildError::SourceTypeConflict {
            source_name,
            first: first.name,
            second: second.name,
            node,
        },
        TopologyError::NoRoutes { router } => BuildError::NoRoutes { node: router },
        TopologyError::DuplicateVariant { router, variant } => {
            BuildError::DuplicateVariant { router, variant }
        }
        TopologyError::UnknownRouteTarget {
            router,
            variant,
            target,
        } => BuildError::UnknownRouteTarget {
            router,
            variant,
            target,
        },
        TopologyError::RouteTargetDoesNotRead {
            router,
            variant,
            target,
        } => BuildError::RouteTargetDoesNotRead {
            router,
            variant,
            target,
        },
        TopologyError::RouteAmbiguous {
            node,
            router,
            routes,
        } => BuildError::RouteAmbiguous {
            node,
            router,
            routes,
        },
        TopologyError::UnknownNode { node, input } => BuildError::UnknownNode { node, input },
        TopologyError::TypeMismatch {
            node,
            input,
            expected,
            found,
        } => BuildError::TypeMismatch {
            node,
            input,
            expected: expected.name,
            found: found.name,
        },
        TopologyError::NoEntryNode { graph } => BuildError::NoEntryNode { graph },
        TopologyError::Cycle { path } => BuildError::Cycle { nodes: path },
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
