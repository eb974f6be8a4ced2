//! The declarative front end: `#[reactor]` and `#[computation_graph]` expand to the builder
//! API, register themselves, and fire exactly like hand-built graphs.

#![allow(missing_docs)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cloacina::prelude::*;
use cloacina::registry::{GraphDecl, ReactorDecl, RegistryError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderBook {
    pub best_bid: f64,
    pub best_ask: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pricing {
    pub fair: f64,
}

#[derive(Debug)]
pub struct TradeSignal {
    pub price: f64,
}

#[derive(Debug)]
pub struct NoActionReason {
    pub why: String,
}

pub enum Decision {
    Trade(TradeSignal),
    NoAction(NoActionReason),
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct Confirmation {
    pub price: f64,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub why: String,
}

// CG-R-01
#[reactor(name = "market_maker", accumulators = [orderbook, pricing],
          criteria = when_any(orderbook, pricing))]
pub struct MarketMaker;

// CG-D-01, CG-D-03, CG-D-05, CG-D-16
#[computation_graph(trigger = reactor("market_maker"), graph = {
    decision(orderbook, pricing) => { Trade -> execute, NoAction -> audit },
})]
pub mod market_maker {
    use super::*;

    pub fn decision(orderbook: Option<&OrderBook>, pricing: Option<&Pricing>) -> Decision {
        match (orderbook, pricing) {
            (Some(b), Some(_)) if b.best_ask - b.best_bid < 0.20 => Decision::Trade(TradeSignal {
                price: (b.best_bid + b.best_ask) / 2.0,
            }),
            (Some(_), Some(_)) => Decision::NoAction(NoActionReason { why: "wide".into() }),
            _ => Decision::NoAction(NoActionReason {
                why: "waiting".into(),
            }),
        }
    }

    pub async fn execute(signal: &TradeSignal) -> Confirmation {
        Confirmation {
            price: signal.price,
        }
    }

    pub fn audit(reason: &NoActionReason) -> AuditRecord {
        AuditRecord {
            why: reason.why.clone(),
        }
    }
}

static ENTRY_RUNS: AtomicUsize = AtomicUsize::new(0);

// CG-D-02, CG-D-04, CG-D-06, CG-D-07: chain, mixed cache + upstream, fan-out, diamond.
#[computation_graph(graph = {
    entry(seed) -> left -> merge,
    entry -> right -> merge,
    merge -> report,
    merge -> enrich(config),
})]
pub mod shapes {
    use super::ENTRY_RUNS;
    use std::sync::atomic::Ordering;

    pub fn entry(seed: Option<&u64>) -> u64 {
        ENTRY_RUNS.fetch_add(1, Ordering::SeqCst);
        seed.copied().unwrap_or(0)
    }
    pub fn left(x: &u64) -> u64 {
        x + 1
    }
    pub async fn right(x: &u64) -> u64 {
        x * 10
    }
    pub fn merge(left: &u64, right: &u64) -> u64 {
        left + right
    }
    pub fn report(total: &u64) -> String {
        format!("total={total}")
    }
    pub fn enrich(config: Option<&String>, total: &u64) -> String {
        format!("{}:{total}", config.map_or("none", String::as_str))
    }
}

#[tokio::test]
async fn declared_graph_fires_directly_and_routes() {
    let graph = market_maker::graph().expect("valid graph");
    assert_eq!(graph.name(), "market_maker");
    assert_eq!(market_maker::TRIGGER, Some("market_maker"));

    let mut cache = graph.new_cache();
    cache.update(
        "orderbook",
        OrderBook {
            best_bid: 100.0,
            best_ask: 100.1,
        },
    );
    cache.update("pricing", Pricing { fair: 100.05 });
    let result = graph.fire(&cache).await;
    let confirmation = result
        .output::<Confirmation>("execute")
        .expect("trade branch");
    assert!((confirmation.price - 100.05).abs() < 1e-9);
    assert!(
        !result.outputs().expect("completed").contains("audit"),
        "only the taken branch"
    );

    cache.update(
        "orderbook",
        OrderBook {
            best_bid: 100.0,
            best_ask: 100.5,
        },
    );
    let result = graph.fire(&cache).await;
    assert_eq!(
        result.output::<AuditRecord>("audit"),
        Some(&AuditRecord { why: "wide".into() })
    );
    assert!(!result.outputs().expect("completed").contains("execute"));
}

#[tokio::test]
async fn declared_shapes_match_their_topology() {
    let graph = shapes::graph().expect("valid graph");
    let mut cache = graph.new_cache();
    cache.update("seed", 4u64);
    let before = ENTRY_RUNS.load(Ordering::SeqCst);
    let result = graph.fire(&cache).await;
    assert_eq!(
        ENTRY_RUNS.load(Ordering::SeqCst) - before,
        1,
        "diamond: entry runs once"
    );
    assert_eq!(
        result.output::<String>("report").map(String::as_str),
        Some("total=45")
    );
    assert_eq!(
        result.output::<String>("enrich").map(String::as_str),
        Some("none:45")
    );
    cache.update("config", "cfg".to_string());
    let result = graph.fire(&cache).await;
    assert_eq!(
        result.output::<String>("enrich").map(String::as_str),
        Some("cfg:45")
    );
    assert_eq!(shapes::TRIGGER, None, "no trigger: a trigger-less graph");
}

#[test]
fn reactor_declaration_exposes_its_contract() {
    assert_eq!(MarketMaker::NAME, "market_maker");
    assert_eq!(MarketMaker::ACCUMULATORS, &["orderbook", "pricing"]);
    assert_eq!(
        MarketMaker::criteria(),
        ReactionCriteria::when_any_of(["orderbook", "pricing"])
    );
}

// CG-D-17: declarations are discoverable at startup with no manual call.
#[test]
fn declarations_are_discovered_without_manual_registration() {
    let registry = Registry::from_declarations().expect("no duplicates");
    assert!(registry.reactor("market_maker").is_some());
    let graphs: Vec<&str> = registry.graph_names().collect();
    assert!(
        graphs.contains(&"market_maker") && graphs.contains(&"shapes"),
        "{graphs:?}"
    );
    let bound: Vec<&str> = registry
        .graphs_of("market_maker")
        .map(GraphDecl::name)
        .collect();
    assert_eq!(bound, ["market_maker"]);
}

fn other_build() -> Result<CompiledGraph, cloacina::graph::BuildError> {
    GraphBuilder::new("market_maker")
        .node("only", (source::<u64>("x"),), |x: Option<&u64>| {
            x.copied().unwrap_or(0)
        })
        .build()
}

// CG-D-18: two scoped registries in one process do not see each other.
#[test]
fn scoped_registries_are_isolated() {
    let mut a = Registry::new();
    let mut b = Registry::new();
    a.register_graph(market_maker::declaration())
        .expect("register");
    a.register_reactor(MarketMaker::declaration())
        .expect("register");
    b.register_graph(GraphDecl::new("market_maker", None, other_build))
        .expect("register");
    assert!(b.reactor("market_maker").is_none());
    assert_eq!(
        a.graph("market_maker").and_then(GraphDecl::trigger),
        Some("market_maker")
    );
    assert_eq!(b.graph("market_maker").and_then(GraphDecl::trigger), None);
    let built = b
        .graph("market_maker")
        .expect("registered")
        .build()
        .expect("valid");
    assert_eq!(built.node_names().collect::<Vec<_>>(), ["only"]);
    assert!(matches!(
        a.register_graph(market_maker::declaration()),
        Err(RegistryError::Duplicate { .. })
    ));
    assert!(a.unregister_graph("market_maker"));
    assert!(a.graph("market_maker").is_none());
    assert!(b.graph("market_maker").is_some(), "b unaffected");
}

// A declared graph bound to a declared reactor runs end to end through the registry.
#[tokio::test]
async fn registry_wires_a_declared_reactor_and_graph() {
    let registry = Registry::from_declarations().expect("registry");
    let engine = registry
        .embedded("market_maker")
        .expect("graph and reactor agree")
        .passthrough::<OrderBook>("orderbook")
        .polling("pricing", Duration::from_millis(5), || async {
            Some(Pricing { fair: 100.05 })
        })
        .start()
        .expect("start");
    assert_eq!(engine.reactor().name(), "market_maker");
    let mut results = engine.subscribe();
    let book = engine.sender::<OrderBook>("orderbook").expect("sender");
    book.send(OrderBook {
        best_bid: 100.0,
        best_ask: 100.1,
    })
    .await
    .expect("send");
    let mut traded = false;
    for _ in 0..50 {
        let firing = tokio::time::timeout(Duration::from_secs(5), results.recv())
            .await
            .expect("a firing")
            .expect("open")
            .expect("not lagged");
        if firing.result.output::<Confirmation>("execute").is_some() {
            traded = true;
            break;
        }
    }
    assert!(traded, "book + pricing led to a trade");
    engine.shutdown().await.expect("shutdown");

    let mut partial = Registry::new();
    partial
        .register_graph(market_maker::declaration())
        .expect("register");
    assert!(matches!(
        partial.embedded("market_maker"),
        Err(RegistryError::UnknownReactor { .. })
    ));
    let mut narrow = Registry::new();
    narrow
        .register_graph(market_maker::declaration())
        .expect("register");
    narrow
        .register_reactor(ReactorDecl::new(
            "market_maker",
            &["orderbook"],
            ReactionCriteria::when_any(),
        ))
        .expect("register");
    match narrow.embedded("market_maker") {
        Err(RegistryError::SourceNotFed { source_name, .. }) => {
            assert_eq!(source_name.as_str(), "pricing")
        }
        other => panic!("expected SourceNotFed, got {other:?}"),
    }
}

// CG-D-16: several graphs bound to one reactor each fire once per reactor firing, in
// declaration order, on the same cache.
static PAIR_LOG: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());

#[reactor(name = "pair", accumulators = [ticks])]
pub struct Pair;

#[computation_graph(trigger = reactor("pair"), graph = { first(ticks) })]
pub mod first_graph {
    pub fn first(ticks: Option<&u64>) -> u64 {
        super::PAIR_LOG.lock().expect("log").push("first");
        ticks.copied().unwrap_or(0)
    }
}

#[computation_graph(trigger = reactor("pair"), graph = { second(ticks) -> doubled })]
pub mod second_graph {
    pub fn second(ticks: Option<&u64>) -> u64 {
        super::PAIR_LOG.lock().expect("log").push("second");
        ticks.copied().unwrap_or(0)
    }
    #[node(blocking)]
    pub fn doubled(x: &u64) -> u64 {
        x * 2
    }
}

// Declared last but first in alphabetical order: declaration order, not names, decides.
#[computation_graph(trigger = reactor("pair"), graph = { third(ticks) })]
pub mod a_third_graph {
    pub fn third(ticks: Option<&u64>) -> u64 {
        super::PAIR_LOG.lock().expect("log").push("third");
        ticks.copied().unwrap_or(0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphs_bound_to_one_reactor_fire_in_declaration_order() {
    let registry = Registry::from_declarations().expect("registry");
    let bound: Vec<&str> = registry.graphs_of("pair").map(GraphDecl::name).collect();
    assert_eq!(
        bound,
        ["first_graph", "second_graph", "a_third_graph"],
        "declaration order"
    );
    let engine = registry
        .embedded_reactor("pair")
        .expect("both graphs read only `ticks`")
        .strategy(InputStrategy::Sequential)
        .passthrough::<u64>("ticks")
        .start()
        .expect("start");
    let mut results = engine.subscribe();
    let ticks = engine.sender::<u64>("ticks").expect("sender");
    for t in 1..=3u64 {
        ticks.send(t).await.expect("send");
        let firing = tokio::time::timeout(Duration::from_secs(5), results.recv())
            .await
            .expect("a firing")
            .expect("open")
            .expect("not lagged");
        assert_eq!(firing.result.output::<u64>("first_graph::first"), Some(&t));
        assert_eq!(
            firing.result.output::<u64>("second_graph::doubled"),
            Some(&(2 * t))
        );
    }
    engine.shutdown().await.expect("shutdown");
    assert_eq!(
        *PAIR_LOG.lock().expect("log"),
        ["first", "second", "third", "first", "second", "third", "first", "second", "third"]
    );
}

// Raw identifiers name sources and nodes without their `r#`.
#[computation_graph(graph = { r#match(r#type) })]
pub mod raw_names {
    pub fn r#match(r#type: Option<&u64>) -> u64 {
        r#type.copied().unwrap_or(0) + 1
    }
}

#[tokio::test]
async fn raw_identifiers_are_unraw_at_run_time() {
    let graph = raw_names::graph().expect("valid");
    let mut cache = graph.new_cache();
    cache.update("type", 41u64);
    assert_eq!(graph.fire(&cache).await.output::<u64>("match"), Some(&42));
}

// A reactor accumulator that no graph reads is refused with a clear error (the engine would
// refuse to start it).
#[test]
fn reactor_accumulators_must_all_be_read() {
    let mut registry = Registry::new();
    registry
        .register_graph(market_maker::declaration())
        .expect("register");
    registry
        .register_reactor(ReactorDecl::new(
            "market_maker",
            &["orderbook", "pricing", "news"],
            ReactionCriteria::when_any(),
        ))
        .expect("register");
    match registry.embedded("market_maker") {
        Err(RegistryError::AccumulatorNotRead { source_name, .. }) => {
            assert_eq!(source_name.as_str(), "news")
        }
        other => panic!("expected AccumulatorNotRead, got {other:?}"),
    }
}

// Trigger-less graphs are invoked with a workflow Context: entry nodes read context keys,
// terminal outputs are written back under their node names.
#[tokio::test]
async fn trigger_less_graph_runs_on_a_workflow_context() {
    use serde_json::json;

    let graph = shapes::graph().expect("valid");
    let mut ctx = Context::new();
    ctx.insert("seed", json!(4)).expect("new key");
    let outputs = invoke_graph(&graph, &mut ctx).await.expect("invoked");
    assert_eq!(ctx.get("report"), Some(&json!("total=45")));
    assert_eq!(
        ctx.get("enrich"),
        Some(&json!("none:45")),
        "absent key: source is None"
    );
    // CG-D-08: the outputs as JSON, keyed by node.
    let as_json = outputs.to_json().expect("serializable outputs");
    assert_eq!(as_json.get("report"), Some(&json!("total=45")));

    // A value of the wrong type is refused, naming the key; the context is unchanged.
    let mut bad = Context::new();
    bad.insert("seed", json!("four")).expect("new key");
    let before = bad.clone();
    match invoke_graph(&graph, &mut bad).await {
        Err(cloacina::workflow::InvokeError::Input { key, .. }) => assert_eq!(key, "seed"),
        other => panic!("expected an Input error, got {other:?}"),
    }
    assert_eq!(bad, before);
}
