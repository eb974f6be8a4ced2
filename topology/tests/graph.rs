//! The graph layer: every rule rejects its culprit by name, and a valid graph resolves.

#![allow(missing_docs)]

use cloacina_topology::{
    validate_graph, GraphInput, GraphNode, GraphRoute, ResolvedInput, TopologyError,
};

type Node = GraphNode<'static, &'static str>;

fn node(
    name: &'static str,
    inputs: Vec<GraphInput<'static, &'static str>>,
    out: &'static str,
) -> Node {
    GraphNode {
        name,
        inputs,
        output: Some(out),
        routes: None,
    }
}

fn src(name: &'static str, ty: &'static str) -> GraphInput<'static, &'static str> {
    GraphInput::source(name, Some(ty))
}

fn up(name: &'static str, ty: &'static str) -> GraphInput<'static, &'static str> {
    GraphInput::upstream(name, Some(ty))
}

fn route(
    variant: &'static str,
    target: &'static str,
    payload: &'static str,
) -> GraphRoute<'static, &'static str> {
    GraphRoute {
        variant,
        target,
        payload: Some(payload),
    }
}

fn err(nodes: &[Node]) -> TopologyError<&'static str> {
    validate_graph("g", nodes).expect_err("invalid graph")
}

/// decide(book) => { Trade -> exec, Hold -> audit }, exec -> confirm
fn market() -> Vec<Node> {
    vec![
        GraphNode {
            name: "decide",
            inputs: vec![src("book", "Book")],
            output: Some("Decision"),
            routes: Some(vec![
                route("Trade", "exec", "f64"),
                route("Hold", "audit", "String"),
            ]),
        },
        node("exec", vec![up("decide", "f64")], "String"),
        node("audit", vec![up("decide", "String")], "String"),
        node(
            "confirm",
            vec![src("book", "Book"), up("exec", "String")],
            "usize",
        ),
    ]
}

#[test]
fn valid_graph_resolves_every_input() {
    let nodes = market();
    let plan = validate_graph("g", &nodes).expect("valid");
    assert_eq!(plan.order(), [0, 1, 2, 3]);
    assert_eq!(plan.sources(), [(0, 0)]);
    assert_eq!(
        plan.inputs(1),
        [ResolvedInput::Routed { node: 0, route: 0 }]
    );
    assert_eq!(
        plan.inputs(2),
        [ResolvedInput::Routed { node: 0, route: 1 }]
    );
    assert_eq!(
        plan.inputs(3),
        [ResolvedInput::Source(0), ResolvedInput::Node(1)]
    );
    assert!(!plan.is_terminal(0) && !plan.is_terminal(1));
    assert!(plan.is_terminal(2) && plan.is_terminal(3));
}

#[test]
fn unknown_types_are_not_compared() {
    let nodes: Vec<GraphNode<'_, &str>> = vec![
        GraphNode {
            name: "a",
            inputs: vec![GraphInput::source("x", None)],
            output: None,
            routes: None,
        },
        GraphNode {
            name: "b",
            inputs: vec![
                GraphInput::upstream("a", Some("u64")),
                GraphInput::source("x", Some("u8")),
            ],
            output: None,
            routes: None,
        },
    ];
    validate_graph("g", &nodes).expect("types unknown on one end are not checked");
}

#[test]
fn empty_duplicate_and_no_inputs() {
    assert_eq!(err(&[]), TopologyError::Empty { graph: "g".into() });
    let dup = [
        node("a", vec![src("x", "u64")], "u64"),
        node("a", vec![src("x", "u64")], "u64"),
    ];
    assert_eq!(err(&dup), TopologyError::DuplicateNode { node: "a".into() });
    assert_eq!(err(&dup).to_string(), "node `a` is declared twice");
    let none = [
        node("a", vec![src("x", "u64")], "u64"),
        node("lonely", vec![], "u64"),
    ];
    assert_eq!(
        err(&none),
        TopologyError::NoInputs {
            node: "lonely".into()
        }
    );
}

#[test]
fn sources_clash_with_nodes_and_keep_one_type() {
    let clash = [
        node("a", vec![src("x", "u64")], "u64"),
        node("x", vec![src("y", "u64")], "u64"),
    ];
    assert_eq!(err(&clash), TopologyError::NameClash { name: "x".into() });
    let conflict = [
        node("a", vec![src("x", "u64")], "u64"),
        node("b", vec![src("x", "String")], "u64"),
    ];
    let e = err(&conflict);
    assert_eq!(
        e,
        TopologyError::SourceTypeConflict {
            source_name: "x".into(),
            first: "u64",
            second: "String",
            node: "b".into()
        }
    );
    assert_eq!(
        e.to_string(),
        "source `x` is read as u64 and as String (by node `b`)"
    );
}

#[test]
fn unknown_upstream_names_the_reader() {
    let nodes = [
        node("a", vec![src("x", "u64")], "u64"),
        node("b", vec![up("ghost", "u64")], "u64"),
    ];
    let e = err(&nodes);
    assert_eq!(
        e,
        TopologyError::UnknownNode {
            node: "b".into(),
            input: "ghost".into()
        }
    );
    assert_eq!(e.to_string(), "node `b` reads unknown node `ghost`");
}

#[test]
fn type_mismatch_names_both_ends() {
    let nodes = [
        node("a", vec![src("x", "u64")], "u64"),
        node("b", vec![up("a", "String")], "u64"),
    ];
    let e = err(&nodes);
    assert_eq!(
        e,
        TopologyError::TypeMismatch {
            node: "b".into(),
            input: "a".into(),
            expected: "String",
            found: "u64"
        }
    );
    assert_eq!(
        e.to_string(),
        "node `b` expects String from `a`, but `a` produces u64"
    );
    // Through a route, the payload type is what counts.
    let mut nodes = market();
    nodes[1].inputs[0].ty = Some("Decision");
    assert!(matches!(
        err(&nodes),
        TopologyError::TypeMismatch { found: "f64", .. }
    ));
}

#[test]
fn route_rules() {
    let mut nodes = market();
    nodes[0].routes = Some(vec![]);
    assert_eq!(
        err(&nodes),
        TopologyError::NoRoutes {
            router: "decide".into()
        }
    );

    let mut nodes = market();
    nodes[0].routes = Some(vec![
        route("Trade", "exec", "f64"),
        route("Trade", "audit", "String"),
    ]);
    assert_eq!(
        err(&nodes),
        TopologyError::DuplicateVariant {
            router: "decide".into(),
            variant: "Trade".into()
        }
    );

    let mut nodes = market();
    nodes[0].routes = Some(vec![
        route("Trade", "nowhere", "f64"),
        route("Hold", "audit", "String"),
    ]);
    let e = err(&nodes);
    assert_eq!(
        e,
        TopologyError::UnknownRouteTarget {
            router: "decide".into(),
            variant: "Trade".into(),
            target: "nowhere".into()
        }
    );
    assert_eq!(
        e.to_string(),
        "route `decide::Trade` goes to unknown node `nowhere`"
    );

    let mut nodes = market();
    nodes[0].routes = Some(vec![
        route("Trade", "confirm", "f64"),
        route("Hold", "audit", "String"),
    ]);
    assert_eq!(
        err(&nodes),
        TopologyError::RouteTargetDoesNotRead {
            router: "decide".into(),
            variant: "Trade".into(),
            target: "confirm".into()
        }
    );

    // exec reads decide but no route goes to it.
    let mut nodes = market();
    nodes[0].routes = Some(vec![route("Hold", "audit", "String")]);
    assert_eq!(
        err(&nodes),
        TopologyError::RouteAmbiguous {
            node: "exec".into(),
            router: "decide".into(),
            routes: 0
        }
    );
    // Two routes to the same node.
    let mut nodes = market();
    nodes[0].routes = Some(vec![
        route("Trade", "audit", "String"),
        route("Hold", "audit", "String"),
    ]);
    nodes[1].inputs = vec![src("book", "Book")];
    assert_eq!(
        err(&nodes),
        TopologyError::RouteAmbiguous {
            node: "audit".into(),
            router: "decide".into(),
            routes: 2
        }
    );
}

#[test]
fn no_entry_is_reported_before_the_cycle() {
    let nodes = [
        node("a", vec![src("x", "u64"), up("b", "u64")], "u64"),
        node("b", vec![up("a", "u64")], "u64"),
    ];
    let e = err(&nodes);
    assert_eq!(e, TopologyError::NoEntryNode { graph: "g".into() });
    assert_eq!(
        e.to_string(),
        "graph `g` has no entry node (a node whose inputs are all sources)"
    );
}

#[test]
fn cycle_names_its_path() {
    let nodes = [
        node("entry", vec![src("x", "u64")], "u64"),
        node("a", vec![up("entry", "u64"), up("c", "u64")], "u64"),
        node("b", vec![up("a", "u64")], "u64"),
        node("c", vec![up("b", "u64")], "u64"),
    ];
    let e = err(&nodes);
    assert_eq!(
        e,
        TopologyError::Cycle {
            path: vec!["a".into(), "b".into(), "c".into(), "a".into()]
        }
    );
    assert_eq!(e.to_string(), "cycle between nodes a -> b -> c -> a");
}
