//! The computation-graph layer: nodes read cache sources and upstream nodes, routing nodes send
//! their output down exactly one route. Adds graph rules on top of the [`Dag`] ones.

use std::collections::HashMap;
use std::fmt;

use crate::dag::{index, Dag};

/// Whether an input reads a cache source or another node's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InputKind {
    /// A cache source (entry inputs).
    Source,
    /// The output of another node (or the payload of the route it took to this node).
    Upstream,
}

/// One input of a node, in parameter order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphInput<'a, T> {
    /// Source name or upstream node name.
    pub name: &'a str,
    /// Source or upstream.
    pub kind: InputKind,
    /// The type the node reads, if the caller knows it (`None`: not checked).
    pub ty: Option<T>,
}

impl<'a, T> GraphInput<'a, T> {
    /// An input reading cache source `name`.
    pub fn source(name: &'a str, ty: Option<T>) -> Self {
        Self {
            name,
            kind: InputKind::Source,
            ty,
        }
    }

    /// An input reading the output of node `name`.
    pub fn upstream(name: &'a str, ty: Option<T>) -> Self {
        Self {
            name,
            kind: InputKind::Upstream,
            ty,
        }
    }
}

/// One route of a routing node: variant `variant` goes to node `target` with a payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphRoute<'a, T> {
    /// The variant's name.
    pub variant: &'a str,
    /// The node the variant's payload goes to.
    pub target: &'a str,
    /// The payload's type, if known.
    pub payload: Option<T>,
}

/// One node of a computation graph as declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphNode<'a, T> {
    /// The node's name, unique in the graph.
    pub name: &'a str,
    /// Its inputs, in parameter order.
    pub inputs: Vec<GraphInput<'a, T>>,
    /// The type of its output, if known (unused for routing nodes: their consumers read a
    /// route's payload).
    pub output: Option<T>,
    /// Its routes if it is a routing node.
    pub routes: Option<Vec<GraphRoute<'a, T>>>,
}

/// Where one input of a validated graph reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolvedInput {
    /// Source number `n` of [`GraphPlan::sources`].
    Source(usize),
    /// The output of the node at this declaration position.
    Node(usize),
    /// The payload of route `route` of the routing node at declaration position `node`.
    Routed {
        /// The routing node.
        node: usize,
        /// The route's position among the node's routes.
        route: usize,
    },
}

/// A validated graph: its DAG (execution order, edges) and every input resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphPlan {
    dag: Dag,
    sources: Vec<(usize, usize)>,
    inputs: Vec<Vec<ResolvedInput>>,
}

impl GraphPlan {
    /// The dependency graph of the nodes (declaration positions).
    pub fn dag(&self) -> &Dag {
        &self.dag
    }

    /// Nodes in execution order: upstreams first, declaration order wherever edges allow.
    pub fn order(&self) -> &[usize] {
        self.dag.order()
    }

    /// The distinct sources in order of first reading, each as (node, input) of that first
    /// reading.
    pub fn sources(&self) -> &[(usize, usize)] {
        &self.sources
    }

    /// Where each input of `node` reads from, in parameter order (empty if out of range).
    pub fn inputs(&self, node: usize) -> &[ResolvedInput] {
        self.inputs.get(node).map_or(&[], Vec::as_slice)
    }

    /// Whether no node reads `node` (its output is a result of the graph).
    pub fn is_terminal(&self, node: usize) -> bool {
        self.dag.dependents(node).is_empty()
    }
}

/// Why a graph declaration was rejected. Every variant names the culprit. `T` is the caller's
/// type descriptor. Deliberately exhaustive: a new rule must be mapped by every front end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopologyError<T> {
    /// The graph has no nodes.
    Empty {
        /// Graph name.
        graph: String,
    },
    /// Two nodes share a name.
    DuplicateNode {
        /// The node.
        node: String,
    },
    /// A node declares no inputs.
    NoInputs {
        /// The node.
        node: String,
    },
    /// A name is used for a node and for a source.
    NameClash {
        /// The name.
        name: String,
    },
    /// A source is read with two types.
    SourceTypeConflict {
        /// The source.
        source_name: String,
        /// The type it was read with first.
        first: T,
        /// The conflicting type.
        second: T,
        /// The node reading it with the conflicting type.
        node: String,
    },
    /// A routing node has no routes.
    NoRoutes {
        /// The router.
        router: String,
    },
    /// A routing node declares a variant twice.
    DuplicateVariant {
        /// The router.
        router: String,
        /// The variant.
        variant: String,
    },
    /// A route goes to a node that does not exist.
    UnknownRouteTarget {
        /// The router.
        router: String,
        /// The variant.
        variant: String,
        /// The missing target.
        target: String,
    },
    /// A route's target does not read the router.
    RouteTargetDoesNotRead {
        /// The router.
        router: String,
        /// The variant.
        variant: String,
        /// The target.
        target: String,
    },
    /// A node reads a routing node without being the target of exactly one of its routes.
    RouteAmbiguous {
        /// The reading node.
        node: String,
        /// The router.
        router: String,
        /// How many of the router's routes go to the node.
        routes: usize,
    },
    /// A node reads a node that does not exist.
    UnknownNode {
        /// The reading node.
        node: String,
        /// The missing upstream.
        input: String,
    },
    /// An edge joins different types.
    TypeMismatch {
        /// The reading node.
        node: String,
        /// The upstream.
        input: String,
        /// The type the reader declares.
        expected: T,
        /// The type the upstream produces (or its route carries).
        found: T,
    },
    /// No node reads only sources.
    NoEntryNode {
        /// Graph name.
        graph: String,
    },
    /// The edges form a cycle.
    Cycle {
        /// The cycle as a closed path along the edges (`[a, b, a]`).
        path: Vec<String>,
    },
}

impl<T: fmt::Display> fmt::Display for TopologyError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty { graph } => write!(f, "graph `{graph}` has no nodes"),
            Self::DuplicateNode { node } => write!(f, "node `{node}` is declared twice"),
            Self::NoInputs { node } => write!(f, "node `{node}` has no inputs"),
            Self::NameClash { name } => write!(f, "`{name}` is both a node and a source"),
            Self::SourceTypeConflict {
                source_name,
                first,
                second,
                node,
            } => write!(
                f,
                "source `{source_name}` is read as {first} and as {second} (by node `{node}`)"
            ),
            Self::NoRoutes { router } => write!(f, "routing node `{router}` has no routes"),
            Self::DuplicateVariant { router, variant } => write!(
                f,
                "routing node `{router}` declares variant `{variant}` twice"
            ),
            Self::UnknownRouteTarget {
                router,
                variant,
                target,
            } => write!(
                f,
                "route `{router}::{variant}` goes to unknown node `{target}`"
            ),
            Self::RouteTargetDoesNotRead {
                router,
                variant,
                target,
            } => write!(
                f,
                "route `{router}::{variant}` goes to `{target}`, which does not read `{router}`"
            ),
            Self::RouteAmbiguous {
                node,
                router,
                routes,
            } => write!(
                f,
                "node `{node}` reads routing node `{router}` but is the target of {routes} of its routes (must be exactly 1)"
            ),
            Self::UnknownNode { node, input } => {
                write!(f, "node `{node}` reads unknown node `{input}`")
            }
            Self::TypeMismatch {
                node,
                input,
                expected,
                found,
            } => write!(
                f,
                "node `{node}` expects {expected} from `{input}`, but `{input}` produces {found}"
            ),
            Self::NoEntryNode { graph } => write!(
                f,
                "graph `{graph}` has no entry node (a node whose inputs are all sources)"
            ),
            Self::Cycle { path } => write!(f, "cycle between nodes {}", path.join(" -> ")),
        }
    }
}

impl<T: fmt::Debug + fmt::Display> std::error::Error for TopologyError<T> {}

/// Validates a computation graph called `graph`. Checks run in this order, and the first
/// failure is returned: no nodes; duplicate names; per node, no inputs, a source named like a
/// node, a source read with two types; per routing node, no routes, a repeated variant, an
/// unknown target, a target not reading the router; per upstream input, an unknown node, a
/// router read by a node that is not the target of exactly one route, a type mismatch; no
/// entry node; a cycle. Types are compared only where both ends are known.
pub fn validate_graph<T: PartialEq + Clone>(
    graph: &str,
    nodes: &[GraphNode<'_, T>],
) -> Result<GraphPlan, TopologyError<T>> {
    if nodes.is_empty() {
        return Err(TopologyError::Empty {
            graph: graph.to_owned(),
        });
    }
    let index =
        index(nodes.iter().map(|n| n.name)).map_err(|name| TopologyError::DuplicateNode {
            node: name.to_owned(),
        })?;

    // Sources: a source's first known type is the one every reader must use.
    let mut sources: Vec<(usize, usize)> = Vec::new();
    let mut source_index: HashMap<&str, (usize, Option<&T>)> = HashMap::new();
    for (i, n) in nodes.iter().enumerate() {
        if n.inputs.is_empty() {
            return Err(TopologyError::NoInputs {
                node: n.name.to_owned(),
            });
        }
        for (k, input) in n.inputs.iter().enumerate() {
            if input.kind != InputKind::Source {
                continue;
            }
            if index.contains_key(input.name) {
                return Err(TopologyError::NameClash {
                    name: input.name.to_owned(),
                });
            }
            match source_index.get_mut(input.name) {
                Some((_, first)) => match (&*first, &input.ty) {
                    (Some(a), Some(b)) if *a != b => {
                        return Err(TopologyError::SourceTypeConflict {
                            source_name: input.name.to_owned(),
                            first: (*a).clone(),
                            second: b.clone(),
                            node: n.name.to_owned(),
                        })
                    }
                    (None, Some(b)) => *first = Some(b),
                    _ => {}
                },
                None => {
                    source_index.insert(input.name, (sources.len(), input.ty.as_ref()));
                    sources.push((i, k));
                }
            }
        }
    }

    // Routes: at least one, unique variants, targets that exist and read the router.
    for n in nodes {
        let Some(routes) = &n.routes else { continue };
        if routes.is_empty() {
            return Err(TopologyError::NoRoutes {
                router: n.name.to_owned(),
            });
        }
        for (k, r) in routes.iter().enumerate() {
            if routes[..k].iter().any(|o| o.variant == r.variant) {
                return Err(TopologyError::DuplicateVariant {
                    router: n.name.to_owned(),
                    variant: r.variant.to_owned(),
                });
            }
            let Some(&t) = index.get(r.target) else {
                return Err(TopologyError::UnknownRouteTarget {
                    router: n.name.to_owned(),
                    variant: r.variant.to_owned(),
                    target: r.target.to_owned(),
                });
            };
            if !nodes[t]
                .inputs
                .iter()
                .any(|i| i.kind == InputKind::Upstream && i.name == n.name)
            {
                return Err(TopologyError::RouteTargetDoesNotRead {
                    router: n.name.to_owned(),
                    variant: r.variant.to_owned(),
                    target: r.target.to_owned(),
                });
            }
        }
    }

    // Upstream edges: known node, one route if it is a router, equal types.
    let mut inputs: Vec<Vec<ResolvedInput>> = Vec::with_capacity(nodes.len());
    let mut deps: Vec<Vec<usize>> = Vec::with_capacity(nodes.len());
    for n in nodes {
        let mut resolved = Vec::with_capacity(n.inputs.len());
        let mut upstreams = Vec::new();
        for input in &n.inputs {
            if input.kind == InputKind::Source {
                let s = source_index.get(input.name).map_or(usize::MAX, |(s, _)| *s);
                resolved.push(ResolvedInput::Source(s));
                continue;
            }
            let Some(&u) = index.get(input.name) else {
                return Err(TopologyError::UnknownNode {
                    node: n.name.to_owned(),
                    input: input.name.to_owned(),
                });
            };
            let up = &nodes[u];
            let (found, at) = match &up.routes {
                None => (up.output.as_ref(), ResolvedInput::Node(u)),
                Some(routes) => {
                    let mut to_me = routes
                        .iter()
                        .enumerate()
                        .filter(|(_, r)| r.target == n.name);
                    match (to_me.next(), to_me.count()) {
                        (Some((k, r)), 0) => (
                            r.payload.as_ref(),
                            ResolvedInput::Routed { node: u, route: k },
                        ),
                        (first, rest) => {
                            return Err(TopologyError::RouteAmbiguous {
                                node: n.name.to_owned(),
                                router: up.name.to_owned(),
                                routes: usize::from(first.is_some()) + rest,
                            })
                        }
                    }
                }
            };
            if let (Some(expected), Some(found)) = (&input.ty, found) {
                if expected != found {
                    return Err(TopologyError::TypeMismatch {
                        node: n.name.to_owned(),
                        input: input.name.to_owned(),
                        expected: expected.clone(),
                        found: found.clone(),
                    });
                }
            }
            resolved.push(at);
            upstreams.push(u);
        }
        inputs.push(resolved);
        deps.push(upstreams);
    }

    if !nodes
        .iter()
        .any(|n| n.inputs.iter().all(|i| i.kind == InputKind::Source))
    {
        return Err(TopologyError::NoEntryNode {
            graph: graph.to_owned(),
        });
    }

    let dag = Dag::from_resolved(deps).map_err(|cycle| TopologyError::Cycle {
        path: cycle.iter().map(|&i| nodes[i].name.to_owned()).collect(),
    })?;
    Ok(GraphPlan {
        dag,
        sources,
        inputs,
    })
}
