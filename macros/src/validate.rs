//! Topology checks, through `cloacina-topology`: the same rules `GraphBuilder::build` applies
//! at run time, with each verdict turned into a compile error on the offending name.
//!
//! Types are not given to the validator: the generated code makes rustc compare each edge's
//! two ends on the user's own types (see `expand_graph::same_type`), which also understands
//! aliases and paths a textual comparison would get wrong.

use std::collections::HashMap;
use std::fmt;

use cloacina_topology::{validate_graph, GraphInput, GraphNode, GraphRoute, TopologyError};
use proc_macro2::Span;
use syn::Ident;

use crate::parse::{NodeSpec, Topology};

/// No type descriptor: rustc checks the types, so the validator never compares any.
#[derive(Debug, Clone, PartialEq)]
struct Untyped;

impl fmt::Display for Untyped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("(type checked by rustc)")
    }
}

/// Checks the declared topology; the error points at the culprit's name in the declaration.
pub(crate) fn check_topology(
    graph: &str,
    topology: &Topology,
    nodes: &[NodeSpec],
    index: &HashMap<String, usize>,
) -> syn::Result<()> {
    let names: Vec<String> = nodes.iter().map(|n| n.name.to_string()).collect();
    let sources: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| n.sources.iter().flatten().map(Ident::to_string).collect())
        .collect();
    let upstreams: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| n.upstreams.iter().map(Ident::to_string).collect())
        .collect();
    let routes: Vec<Option<Vec<(String, String)>>> = nodes
        .iter()
        .map(|n| {
            n.routes.as_ref().map(|routes| {
                routes
                    .iter()
                    .map(|(variant, target)| (variant.to_string(), target.to_string()))
                    .collect()
            })
        })
        .collect();
    let specs: Vec<GraphNode<'_, Untyped>> = (0..nodes.len())
        .map(|i| GraphNode {
            name: &names[i],
            inputs: sources[i]
                .iter()
                .map(|s| GraphInput::source(s, None))
                .chain(upstreams[i].iter().map(|u| GraphInput::upstream(u, None)))
                .collect(),
            output: None,
            routes: routes[i].as_ref().map(|routes| {
                routes
                    .iter()
                    .map(|(variant, target)| GraphRoute {
                        variant,
                        target,
                        payload: None,
                    })
                    .collect()
            }),
        })
        .collect();
    match validate_graph(graph, &specs) {
        Ok(_) => Ok(()),
        Err(e) => Err(compile_error(e, topology, nodes, index)),
    }
}

/// The validator's verdict as a compile error, on the name it is about.
fn compile_error(
    e: TopologyError<Untyped>,
    topology: &Topology,
    nodes: &[NodeSpec],
    index: &HashMap<String, usize>,
) -> syn::Error {
    let node_span = |name: &str| {
        index
            .get(name)
            .and_then(|&i| nodes.get(i))
            .map_or(topology.brace, |n| n.name.span())
    };
    let (span, message) = match &e {
        TopologyError::Empty { .. } => (topology.brace, "the graph declares no nodes".to_owned()),
        TopologyError::NoEntryNode { .. } => (
            topology.brace,
            "the graph has no entry node (a node that reads only cache sources)".to_owned(),
        ),
        TopologyError::NoInputs { node } => (
            node_span(node),
            format!(
                "entry node `{node}` reads no source: declare its cache inputs as `{node}(source, ..)`"
            ),
        ),
        TopologyError::NameClash { name } => (
            nodes
                .iter()
                .flat_map(|n| n.sources.iter().flatten())
                .find(|s| *s == name)
                .map_or_else(|| node_span(name), Ident::span),
            format!("`{name}` is both a node and a cache source"),
        ),
        TopologyError::NoRoutes { router } => (node_span(router), e.to_string()),
        TopologyError::DuplicateVariant { router, variant } => (
            // The second arm naming the variant.
            index
                .get(router.as_str())
                .and_then(|&i| nodes.get(i))
                .and_then(|n| n.routes.as_ref())
                .and_then(|routes| routes.iter().filter(|(v, _)| v == variant).nth(1))
                .map_or_else(|| node_span(router), |(v, _)| v.span()),
            e.to_string(),
        ),
        TopologyError::Cycle { path } => (
            closing_edge_span(path, nodes, index).unwrap_or(topology.brace),
            format!("cycle in graph: {}", path.join(" -> ")),
        ),
        // The parser makes every name in the topology a node, with one edge per route, and
        // passes no types: these cannot happen here, but are reported plainly if they do.
        TopologyError::DuplicateNode { node }
        | TopologyError::UnknownNode { node, .. }
        | TopologyError::RouteAmbiguous { node, .. }
        | TopologyError::SourceTypeConflict { node, .. }
        | TopologyError::TypeMismatch { node, .. } => (node_span(node), e.to_string()),
        TopologyError::UnknownRouteTarget { router, .. }
        | TopologyError::RouteTargetDoesNotRead { router, .. } => {
            (node_span(router), e.to_string())
        }
    };
    syn::Error::new(span, message)
}

/// The span of the edge closing a cycle path (`c -> b` in `b -> c -> b`): the target's name
/// where that edge is declared.
fn closing_edge_span(
    path: &[String],
    nodes: &[NodeSpec],
    index: &HashMap<String, usize>,
) -> Option<Span> {
    let [.., from, to] = path else { return None };
    let to = nodes.get(*index.get(to)?)?;
    let k = to.upstreams.iter().position(|u| u == from)?;
    to.upstream_spans.get(k).copied().or(Some(to.name.span()))
}
