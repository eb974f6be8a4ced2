//! Property tests of the DAG layer: random DAGs validate with a correct order, and one back
//! edge makes a cycle error whose path is a real cycle of the graph.

#![allow(missing_docs)]

use std::collections::HashSet;

use cloacina_topology::{Dag, DagError, DagNode};
use proptest::prelude::*;

/// A random DAG over `n` nodes: node `i` may depend on any `j < i`; declared in a shuffled
/// order so that declaration order and data flow disagree.
fn dag_strategy() -> impl Strategy<Value = (Vec<Vec<usize>>, Vec<usize>)> {
    (1usize..24)
        .prop_flat_map(|n| {
            let deps = (0..n)
                .map(|i| proptest::collection::vec(0..i.max(1), 0..=i.min(4)))
                .collect::<Vec<_>>();
            let order = Just((0..n).collect::<Vec<usize>>()).prop_shuffle();
            (deps, order)
        })
        .prop_map(|(mut deps, order)| {
            // Node 0 has no valid dependency (`0..1` would be itself): clear it.
            deps[0].clear();
            (deps, order)
        })
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("n{i}")).collect()
}

/// Declares logical node `order[k]` at position `k`, with `extra` added dependencies.
fn declare<'a>(
    names: &'a [String],
    deps: &[Vec<usize>],
    order: &[usize],
    extra: Option<(usize, usize)>,
) -> Vec<DagNode<'a>> {
    order
        .iter()
        .map(|&logical| {
            let mut ds: Vec<&str> = deps[logical].iter().map(|&d| names[d].as_str()).collect();
            if let Some((node, dep)) = extra {
                if node == logical {
                    ds.push(names[dep].as_str());
                }
            }
            DagNode::new(names[logical].as_str(), ds)
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_dags_validate_in_dependency_order((deps, order) in dag_strategy()) {
        let names = names(deps.len());
        let nodes = declare(&names, &deps, &order, None);
        let dag = Dag::new(&nodes).expect("a DAG validates");
        prop_assert_eq!(dag.order().len(), nodes.len());
        let mut position = vec![usize::MAX; nodes.len()];
        for (k, &p) in dag.order().iter().enumerate() {
            position[p] = k;
        }
        for (p, node) in nodes.iter().enumerate() {
            for &d in dag.dependencies(p) {
                prop_assert!(position[d] < position[p], "{} before {}", nodes[d].id, node.id);
            }
        }
        let levels: usize = dag.levels().iter().map(Vec::len).sum();
        prop_assert_eq!(levels, nodes.len());
    }

    #[test]
    fn a_back_edge_yields_a_real_cycle(
        (deps, order) in dag_strategy(),
        pick in any::<proptest::sample::Index>(),
        hop in any::<proptest::sample::Index>(),
    ) {
        // Pick a node with a dependency, walk one or more dependency hops up to an ancestor,
        // and make the ancestor depend on the node: a back edge.
        let with_deps: Vec<usize> = (0..deps.len()).filter(|&i| !deps[i].is_empty()).collect();
        prop_assume!(!with_deps.is_empty());
        let node = with_deps[pick.index(with_deps.len())];
        let mut ancestor = deps[node][hop.index(deps[node].len())];
        while !deps[ancestor].is_empty() && hop.index(2) == 1 {
            ancestor = deps[ancestor][hop.index(deps[ancestor].len())];
        }
        let names = names(deps.len());
        let nodes = declare(&names, &deps, &order, Some((ancestor, node)));
        let err = Dag::new(&nodes).expect_err("a back edge makes a cycle");
        let DagError::Cycle { path } = err else {
            return Err(TestCaseError::fail(format!("expected a cycle, got {err:?}")));
        };
        // Edges of the augmented graph, from dependency to dependent.
        let mut edges: HashSet<(&str, &str)> = HashSet::new();
        for n in &nodes {
            for d in &n.deps {
                edges.insert((d, n.id));
            }
        }
        prop_assert!(path.len() >= 2, "{:?}", path);
        prop_assert_eq!(path.first(), path.last());
        for pair in path.windows(2) {
            prop_assert!(
                edges.contains(&(pair[0].as_str(), pair[1].as_str())),
                "{} -> {} is not an edge; path {:?}", pair[0], pair[1], path
            );
        }
        // A simple cycle: no node repeats except the closing one.
        let distinct: HashSet<&String> = path[1..].iter().collect();
        prop_assert_eq!(distinct.len(), path.len() - 1);
    }
}
