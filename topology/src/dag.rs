//! The generic layer: ids with dependency ids, checked for duplicates, unknown dependencies
//! and cycles, and put in a deterministic execution order.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt;

/// One node of a dependency graph: its id and the ids it depends on (its upstreams).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DagNode<'a> {
    /// The node's id, unique in the graph.
    pub id: &'a str,
    /// Ids of the nodes it depends on; listing one twice is the same as listing it once.
    pub deps: Vec<&'a str>,
}

impl<'a> DagNode<'a> {
    /// A node `id` depending on `deps`.
    pub fn new(id: &'a str, deps: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            id,
            deps: deps.into_iter().collect(),
        }
    }
}

/// Why a dependency graph was rejected. Every variant names the culprit. Deliberately
/// exhaustive: a new rule must be mapped by every caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DagError {
    /// Two nodes share an id.
    DuplicateId {
        /// The id.
        id: String,
    },
    /// A node depends on an id no node has.
    UnknownDependency {
        /// The node declaring the dependency.
        id: String,
        /// The missing dependency.
        dependency: String,
    },
    /// The dependencies form a cycle.
    Cycle {
        /// The cycle as a closed path along the edges, from a dependency to its dependent:
        /// first and last are the same node (`[a, b, a]`: `b` depends on `a` and `a` on `b`).
        path: Vec<String>,
    },
}

impl fmt::Display for DagError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DagError::DuplicateId { id } => write!(f, "`{id}` is declared twice"),
            DagError::UnknownDependency { id, dependency } => {
                write!(f, "`{id}` depends on unknown `{dependency}`")
            }
            DagError::Cycle { path } => write!(f, "cycle: {}", path.join(" -> ")),
        }
    }
}

impl std::error::Error for DagError {}

/// A validated dependency graph: no duplicate ids, no unknown dependencies, no cycle. Nodes are
/// referred to by their position in the declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dag {
    order: Vec<usize>,
    deps: Vec<Vec<usize>>,
    dependents: Vec<Vec<usize>>,
}

impl Dag {
    /// Validates `nodes`. Checks run in this order: duplicate ids, unknown dependencies (in
    /// declaration order), cycles.
    pub fn new(nodes: &[DagNode<'_>]) -> Result<Self, DagError> {
        let index = index(nodes.iter().map(|n| n.id))
            .map_err(|id| DagError::DuplicateId { id: id.to_owned() })?;
        let mut deps = Vec::with_capacity(nodes.len());
        for n in nodes {
            let mut resolved = Vec::with_capacity(n.deps.len());
            for dep in &n.deps {
                let Some(&d) = index.get(dep) else {
                    return Err(DagError::UnknownDependency {
                        id: n.id.to_owned(),
                        dependency: (*dep).to_owned(),
                    });
                };
                resolved.push(d);
            }
            deps.push(resolved);
        }
        Dag::from_resolved(deps).map_err(|cycle| DagError::Cycle {
            path: cycle.iter().map(|&i| nodes[i].id.to_owned()).collect(),
        })
    }

    /// Orders already-resolved dependencies (`deps[i]`: positions node `i` depends on, each
    /// in range); on a cycle returns it as a closed path of positions.
    pub(crate) fn from_resolved(mut deps: Vec<Vec<usize>>) -> Result<Self, Vec<usize>> {
        let n = deps.len();
        let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (i, ds) in deps.iter_mut().enumerate() {
            ds.sort_unstable();
            ds.dedup();
            for &d in ds.iter() {
                dependents[d].push(i);
            }
        }
        // Kahn's algorithm taking, among the ready nodes, the one declared first: the order is
        // deterministic and keeps declaration order wherever the edges allow.
        let mut waiting: Vec<usize> = deps.iter().map(Vec::len).collect();
        let mut ready: BinaryHeap<Reverse<usize>> =
            (0..n).filter(|&i| waiting[i] == 0).map(Reverse).collect();
        let mut order = Vec::with_capacity(n);
        while let Some(Reverse(i)) = ready.pop() {
            order.push(i);
            for &next in &dependents[i] {
                waiting[next] -= 1;
                if waiting[next] == 0 {
                    ready.push(Reverse(next));
                }
            }
        }
        if order.len() < n {
            return Err(find_cycle(&dependents, &waiting));
        }
        Ok(Self {
            order,
            deps,
            dependents,
        })
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.deps.len()
    }

    /// Whether there are no nodes.
    pub fn is_empty(&self) -> bool {
        self.deps.is_empty()
    }

    /// Every node, dependencies before dependents; among nodes free to go in any order, the
    /// one declared first comes first.
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    /// The nodes `node` depends on, without repeats, in declaration order (empty if out of
    /// range).
    pub fn dependencies(&self, node: usize) -> &[usize] {
        self.deps.get(node).map_or(&[], Vec::as_slice)
    }

    /// The nodes depending on `node`, in declaration order (empty if out of range).
    pub fn dependents(&self, node: usize) -> &[usize] {
        self.dependents.get(node).map_or(&[], Vec::as_slice)
    }

    /// Execution levels: level 0 holds the nodes without dependencies, level `k` the nodes
    /// whose longest dependency chain has `k` edges. Nodes of one level are independent of
    /// each other and listed in declaration order.
    pub fn levels(&self) -> Vec<Vec<usize>> {
        let mut level = vec![0usize; self.len()];
        let mut levels: Vec<Vec<usize>> = Vec::new();
        for &i in &self.order {
            let l = self.deps[i]
                .iter()
                .map(|&d| level[d] + 1)
                .max()
                .unwrap_or(0);
            level[i] = l;
            if levels.len() <= l {
                levels.resize_with(l + 1, Vec::new);
            }
            levels[l].push(i);
        }
        for nodes in &mut levels {
            nodes.sort_unstable();
        }
        levels
    }
}

/// Indexes ids by position; `Err` carries the first repeated id.
pub(crate) fn index<'a>(
    ids: impl ExactSizeIterator<Item = &'a str>,
) -> Result<HashMap<&'a str, usize>, &'a str> {
    let mut index = HashMap::with_capacity(ids.len());
    for (i, id) in ids.enumerate() {
        if index.insert(id, i).is_some() {
            return Err(id);
        }
    }
    Ok(index)
}

/// A cycle among the nodes Kahn's algorithm could not order (`waiting[i] > 0`), as a closed
/// path along the edges. It goes through the earliest-declared node that lies on a cycle and
/// is the shortest such cycle (breadth-first search back to that node).
fn find_cycle(dependents: &[Vec<usize>], waiting: &[usize]) -> Vec<usize> {
    let stuck = |i: usize| waiting[i] > 0;
    let mut parent: Vec<Option<usize>> = vec![None; dependents.len()];
    for start in (0..dependents.len()).filter(|&i| stuck(i)) {
        parent.iter_mut().for_each(|p| *p = None);
        let mut queue = VecDeque::from([start]);
        let mut closing = None;
        'search: while let Some(u) = queue.pop_front() {
            for &w in &dependents[u] {
                if w == start {
                    closing = Some(u);
                    break 'search;
                }
                if stuck(w) && parent[w].is_none() {
                    parent[w] = Some(u);
                    queue.push_back(w);
                }
            }
        }
        let Some(mut at) = closing else { continue };
        // Walk back from the node closing the cycle to the start, then close the path.
        let mut path = vec![at];
        while at != start {
            match parent[at] {
                Some(p) => at = p,
                None => break,
            }
            path.push(at);
        }
        path.reverse();
        path.push(start);
        return path;
    }
    // Unreachable for a graph Kahn's algorithm could not finish (every stuck node has a stuck
    // dependency, so following dependencies must revisit a node); an empty path is the honest
    // answer if it ever happens.
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(dag: &Dag, nodes: &[DagNode<'_>], positions: &[usize]) -> Vec<String> {
        let _ = dag;
        positions.iter().map(|&i| nodes[i].id.to_owned()).collect()
    }

    #[test]
    fn order_keeps_declaration_order_where_free() {
        let nodes = [
            DagNode::new("z", []),
            DagNode::new("z2", ["z"]),
            DagNode::new("a", []),
            DagNode::new("a2", ["a", "a"]),
        ];
        let dag = Dag::new(&nodes).expect("valid");
        assert_eq!(ids(&dag, &nodes, dag.order()), ["z", "z2", "a", "a2"]);
        assert_eq!(dag.dependencies(3), [2]);
        assert_eq!(dag.dependents(0), [1]);
        assert_eq!(dag.levels(), vec![vec![0, 2], vec![1, 3]]);
    }

    #[test]
    fn dependencies_declared_later_are_ordered_first() {
        let nodes = [
            DagNode::new("store", ["parse"]),
            DagNode::new("parse", ["fetch"]),
            DagNode::new("fetch", []),
        ];
        let dag = Dag::new(&nodes).expect("valid");
        assert_eq!(dag.order(), [2, 1, 0]);
        assert_eq!(dag.levels(), vec![vec![2], vec![1], vec![0]]);
    }

    #[test]
    fn duplicate_and_unknown_name_the_culprit() {
        let err = Dag::new(&[DagNode::new("a", []), DagNode::new("a", [])]).expect_err("dup");
        assert_eq!(err, DagError::DuplicateId { id: "a".into() });
        assert_eq!(err.to_string(), "`a` is declared twice");

        let err = Dag::new(&[DagNode::new("a", []), DagNode::new("b", ["a", "ghost"])])
            .expect_err("unknown");
        assert_eq!(
            err,
            DagError::UnknownDependency {
                id: "b".into(),
                dependency: "ghost".into()
            }
        );
        assert_eq!(err.to_string(), "`b` depends on unknown `ghost`");
    }

    #[test]
    fn self_dependency_is_a_cycle_of_one() {
        let err = Dag::new(&[DagNode::new("me", ["me"])]).expect_err("cycle");
        assert_eq!(
            err,
            DagError::Cycle {
                path: vec!["me".into(), "me".into()]
            }
        );
    }

    #[test]
    fn cycle_downstream_of_valid_nodes_names_only_the_cycle() {
        // entry -> a -> b -> c -> a, c -> tail: the path is the cycle, from its first-declared
        // node, along the edges.
        let nodes = [
            DagNode::new("entry", []),
            DagNode::new("tail", ["c"]),
            DagNode::new("c", ["b"]),
            DagNode::new("b", ["a"]),
            DagNode::new("a", ["entry", "c"]),
        ];
        let err = Dag::new(&nodes).expect_err("cycle");
        assert_eq!(
            err,
            DagError::Cycle {
                path: vec!["c".into(), "a".into(), "b".into(), "c".into()]
            }
        );
        assert_eq!(err.to_string(), "cycle: c -> a -> b -> c");
    }

    #[test]
    fn empty_dag_is_valid() {
        let dag = Dag::new(&[]).expect("valid");
        assert!(dag.is_empty());
        assert!(dag.order().is_empty());
        assert!(dag.levels().is_empty());
        assert!(dag.dependencies(5).is_empty());
    }
}
