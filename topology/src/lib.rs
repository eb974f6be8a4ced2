//! # cloacina-topology
//!
//! The one place where cloacina decides whether a topology is valid. The
//! `#[computation_graph]` macro calls it at compile time, `GraphBuilder::build` in
//! cloacina-graph-core at run time, so a rule changes here and nowhere else. It sits before
//! the flow boundary -> cache -> firing -> result: nothing fires until the topology passed.
//!
//! Two layers, each returning a typed error that names the culprit:
//!
//! - [`Dag`] (generic): nodes are ids with dependency ids. [`Dag::new`] rejects a duplicate
//!   id, a dependency on an unknown id and a cycle (giving its path, `a -> b -> a`), and
//!   returns a deterministic execution order. Workflow task DAGs use this layer alone.
//! - [`validate_graph`] (computation graphs) adds, on top of the DAG rules: every node has
//!   inputs, a source name is not a node name and is read with one type, routing nodes have
//!   routes whose variants are unique and whose targets exist and read the router, a node
//!   reading a router is the target of exactly one of its routes, edges join equal types
//!   (where the caller knows them), and there is an entry node (one reading only sources).
//!   Types are any `T: PartialEq` the caller chooses (`TypeId`s at run time, nothing at
//!   compile time where rustc checks them).
//!
//! ```
//! use cloacina_topology::{Dag, DagError, DagNode};
//!
//! let dag = Dag::new(&[
//!     DagNode::new("fetch", []),
//!     DagNode::new("parse", ["fetch"]),
//!     DagNode::new("store", ["parse", "fetch"]),
//! ])?;
//! assert_eq!(dag.order(), [0, 1, 2]);
//!
//! let err = Dag::new(&[DagNode::new("a", ["b"]), DagNode::new("b", ["a"])]).unwrap_err();
//! assert_eq!(err, DagError::Cycle { path: vec!["a".into(), "b".into(), "a".into()] });
//! assert_eq!(err.to_string(), "cycle: a -> b -> a");
//! # Ok::<(), DagError>(())
//! ```

mod dag;
mod graph;

pub use dag::{Dag, DagError, DagNode};
pub use graph::{
    validate_graph, GraphInput, GraphNode, GraphPlan, GraphRoute, InputKind, ResolvedInput,
    TopologyError,
};
