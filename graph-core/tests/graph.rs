//! Integration tests of the computation-graph engine through its public API.
//!
//! Each test names the acceptance id it covers (CG-D-xx) in a comment.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloacina_graph_core::{
    codec, source, upstream, BuildError, CompiledGraph, Executor, GraphBuilder, GraphError,
    GraphResult, InputCache, Route, TerminalOutputs,
};
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------------------------
// Helpers and shared types
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OrderBook {
    best_bid: f64,
    best_ask: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Metrics {
    mid: f64,
    spread: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Symbol(String);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Reason(String);

/// Routing enum of the market-maker tests. Deliberately NOT `Serialize`/`Deserialize`: routing
/// nodes must not require a codec for their enum (CG-D-05).
#[derive(Debug)]
enum Decision {
    Trade(f64),
    NoAction(Reason),
}

fn build(builder: GraphBuilder) -> Arc<CompiledGraph> {
    Arc::new(builder.build().expect("graph should pass validation"))
}

fn build_err(builder: GraphBuilder) -> BuildError {
    match builder.build() {
        Ok(graph) => panic!("expected a build error, but the graph built: {graph:?}"),
        Err(e) => e,
    }
}

fn outputs(result: &GraphResult) -> &TerminalOutputs {
    match result {
        GraphResult::Completed { outputs } => outputs,
        GraphResult::Error(e) => panic!("expected a completed firing, got error: {e}"),
    }
}

fn error(result: &GraphResult) -> &GraphError {
    match result {
        GraphResult::Error(e) => e,
        GraphResult::Completed { outputs } => panic!(
            "expected a failed firing, got completed with outputs {:?}",
            outputs.nodes().collect::<Vec<_>>()
        ),
    }
}

fn assert_mentions(message: &str, names: &[&str]) {
    for name in names {
        assert!(
            message.contains(name),
            "message `{message}` should mention `{name}`"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Node functions
// ---------------------------------------------------------------------------------------------

fn ingest(book: Option<&OrderBook>) -> OrderBook {
    book.cloned().unwrap_or(OrderBook {
        best_bid: f64::NAN,
        best_ask: f64::NAN,
    })
}

fn compute(book: &OrderBook) -> Metrics {
    Metrics {
        mid: (book.best_bid + book.best_ask) / 2.0,
        spread: book.best_ask - book.best_bid,
    }
}

fn format_metrics(m: &Metrics) -> String {
    format!("mid={:.2} spread={:.2}", m.mid, m.spread)
}

fn decide(book: Option<&OrderBook>) -> Decision {
    match book {
        Some(b) if b.best_ask - b.best_bid < 0.20 => {
            Decision::Trade((b.best_bid + b.best_ask) / 2.0)
        }
        Some(b) => Decision::NoAction(Reason(format!(
            "spread {:.2} too wide",
            b.best_ask - b.best_bid
        ))),
        None => Decision::NoAction(Reason("no quote".into())),
    }
}

async fn decide_async(book: Option<&OrderBook>) -> Decision {
    tokio::task::yield_now().await;
    decide(book)
}

fn trade(mid: &f64) -> String {
    format!("trade at {mid:.2}")
}

fn no_action(reason: &Reason) -> String {
    format!("no action: {}", reason.0)
}

fn confirm(order: &str) -> usize {
    order.len()
}

fn trade_route() -> Route<Decision> {
    Route::new("Trade", "trade", |d: &Decision| match d {
        Decision::Trade(mid) => Some(mid),
        Decision::NoAction(_) => None,
    })
}

fn no_action_route() -> Route<Decision> {
    Route::new("NoAction", "no_action", |d: &Decision| match d {
        Decision::NoAction(reason) => Some(reason),
        Decision::Trade(_) => None,
    })
}

fn entry_u64(x: Option<&u64>) -> u64 {
    x.copied().unwrap_or(0)
}

fn flaky(x: &u64) -> u64 {
    if *x == 0 {
        panic!("plain node refuses zero");
    }
    *x * 10
}

async fn flaky_async(x: &u64) -> u64 {
    tokio::task::yield_now().await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    if *x == 0 {
        panic!("async node refuses zero after an await");
    }
    *x * 10
}

async fn sleeper(ms: &u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(*ms)).await;
    *ms
}

fn spinner(ms: &u64) -> u64 {
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(*ms) {
        std::hint::spin_loop();
    }
    *ms
}

fn plus_one(x: &u64) -> u64 {
    x + 1
}

// ---------------------------------------------------------------------------------------------
// Firing
// ---------------------------------------------------------------------------------------------

// CG-D-01: ingest(orderbook) -> compute -> format yields exactly one output, the formatted string.
#[tokio::test]
async fn cg_d_01_linear_chain_formats_the_orderbook() {
    let graph = build(
        GraphBuilder::new("chain")
            .node("ingest", (source::<OrderBook>("orderbook"),), ingest)
            .node("compute", (upstream::<OrderBook>("ingest"),), compute)
            .node("format", (upstream::<Metrics>("compute"),), format_metrics),
    );
    let book = OrderBook {
        best_bid: 100.0,
        best_ask: 100.1,
    };
    let expected = "mid=100.05 spread=0.10";

    // Aligned cache (read by index).
    let mut cache = graph.new_cache();
    cache.update("orderbook", book.clone());
    let result = graph.fire(&cache).await;
    assert!(result.is_completed(), "{result:?}");
    let outs = outputs(&result);
    assert_eq!(outs.len(), 1);
    assert_eq!(outs.nodes().collect::<Vec<_>>(), ["format"]);
    assert_eq!(
        result.output::<String>("format").map(String::as_str),
        Some(expected)
    );

    // Unaligned cache (read by name) gives the same answer.
    let mut by_name = InputCache::new();
    by_name.update("orderbook", book);
    let result = graph.fire(&by_name).await;
    assert_eq!(outputs(&result).len(), 1);
    assert_eq!(
        result.output::<String>("format").map(String::as_str),
        Some(expected)
    );
}

// CG-D-02: a 3-node chain (entry passes the input through, the next two nodes each add 1)
// delivers input + 2 at the terminal.
#[tokio::test]
async fn cg_d_02_three_node_chain_adds_two() {
    let graph = build(
        GraphBuilder::new("plus_two")
            .node("n1", (source::<u64>("input"),), entry_u64)
            .node("n2", (upstream::<u64>("n1"),), plus_one)
            .node("n3", (upstream::<u64>("n2"),), plus_one),
    );
    assert_eq!(
        graph.terminals().collect::<Vec<_>>(),
        [("n3", std::any::type_name::<u64>())]
    );
    for input in [0u64, 5, 41, 1_000_000] {
        let mut cache = graph.new_cache();
        cache.update("input", input);
        let result = graph.fire(&cache).await;
        assert_eq!(outputs(&result).len(), 1);
        assert_eq!(
            result.output::<u64>("n3"),
            Some(&(input + 2)),
            "input {input}"
        );
    }
}

// CG-D-03: an entry node with two sources where only src1 has a value sees src2 as None.
#[tokio::test]
async fn cg_d_03_missing_source_is_none() {
    let graph = build(
        GraphBuilder::new("optional_sources")
            .node(
                "entry",
                (source::<u32>("src1"), source::<u32>("src2")),
                |a: Option<&u32>, b: Option<&u32>| (a.copied(), b.is_none()),
            )
            .node(
                "echo",
                (upstream::<(Option<u32>, bool)>("entry"),),
                |v: &(Option<u32>, bool)| *v,
            ),
    );
    let mut cache = graph.new_cache();
    cache.update("src1", 7u32);
    let result = graph.fire(&cache).await;
    assert_eq!(
        result.output::<(Option<u32>, bool)>("echo"),
        Some(&(Some(7), true)),
        "src1 is seen and src2.is_none() == true"
    );

    // Once src2 is populated it is seen as Some.
    cache.update("src2", 8u32);
    let result = graph.fire(&cache).await;
    assert_eq!(
        result.output::<(Option<u32>, bool)>("echo"),
        Some(&(Some(7), false))
    );
}

// CG-D-04: a node taking a source and an upstream (source first) receives both.
#[tokio::test]
async fn cg_d_04_mixed_source_and_upstream_inputs() {
    let graph = build(
        GraphBuilder::new("mixed")
            .node(
                "symbol",
                (source::<String>("ticker"),),
                |t: Option<&String>| Symbol(t.cloned().unwrap_or_default()),
            )
            .node(
                "order",
                (source::<u32>("qty"), upstream::<Symbol>("symbol")),
                |qty: Option<&u32>, sym: &Symbol| {
                    format!("{} x {}", qty.copied().unwrap_or(0), sym.0)
                },
            ),
    );
    let mut cache = graph.new_cache();
    cache.update("ticker", "ACME".to_string());
    cache.update("qty", 25u32);
    let result = graph.fire(&cache).await;
    assert_eq!(
        result.output::<String>("order").map(String::as_str),
        Some("25 x ACME")
    );
}

fn market_maker(async_router: bool) -> Arc<CompiledGraph> {
    let builder = GraphBuilder::new("market_maker");
    let builder = if async_router {
        builder.async_router(
            "decide",
            (source::<OrderBook>("orderbook"),),
            decide_async,
            [trade_route(), no_action_route()],
        )
    } else {
        builder.router(
            "decide",
            (source::<OrderBook>("orderbook"),),
            decide,
            [trade_route(), no_action_route()],
        )
    };
    build(
        builder
            .node("trade", (upstream::<f64>("decide"),), trade)
            .node("no_action", (upstream::<Reason>("decide"),), no_action)
            // A descendant of the Trade branch: skipped with it.
            .node("confirm", (upstream::<String>("trade"),), |s: &String| {
                confirm(s)
            }),
    )
}

// CG-D-05: spread < 0.20 runs only the Trade branch; spread >= 0.20 runs only the NoAction
// branch; never both. The routing enum `Decision` is not serde.
#[tokio::test]
async fn cg_d_05_routing_takes_exactly_one_branch() {
    for async_router in [false, true] {
        let graph = market_maker(async_router);
        let mut executor = Executor::new(Arc::clone(&graph));
        let mut cache = graph.new_cache();

        let cases = [
            (100.0, 100.1, true),
            (100.0, 100.19, true),
            (100.0, 100.2, false),
            (100.0, 101.0, false),
            (99.95, 100.05, true),
        ];
        for (bid, ask, trades) in cases {
            cache.update(
                "orderbook",
                OrderBook {
                    best_bid: bid,
                    best_ask: ask,
                },
            );
            let result = executor.fire(&cache).await;
            let outs = outputs(&result);
            let ran: Vec<&str> = outs.nodes().collect();
            assert!(
                !(outs.contains("no_action") && outs.contains("trade")),
                "both branches ran: {ran:?}"
            );
            assert!(
                !(outs.contains("no_action") && outs.contains("confirm")),
                "both branches ran: {ran:?}"
            );
            if trades {
                // `trade` feeds `confirm`, so `confirm` is the terminal of the Trade branch.
                assert_eq!(
                    ran,
                    ["confirm"],
                    "bid {bid} ask {ask} (async {async_router})"
                );
                let expected = format!("trade at {:.2}", (bid + ask) / 2.0);
                assert_eq!(result.output::<usize>("confirm"), Some(&expected.len()));
            } else {
                assert_eq!(
                    ran,
                    ["no_action"],
                    "bid {bid} ask {ask} (async {async_router})"
                );
                let message = result
                    .output::<String>("no_action")
                    .expect("no_action output is a String");
                assert!(message.starts_with("no action: spread"), "{message}");
            }
        }
    }
}

// CG-D-05: the Trade handler's own output, when it is the terminal of its branch.
#[tokio::test]
async fn cg_d_05_trade_handler_output_when_terminal() {
    let graph = build(
        GraphBuilder::new("market_maker_short")
            .router(
                "decide",
                (source::<OrderBook>("orderbook"),),
                decide,
                [trade_route(), no_action_route()],
            )
            .node("trade", (upstream::<f64>("decide"),), trade)
            .node("no_action", (upstream::<Reason>("decide"),), no_action),
    );
    let mut cache = graph.new_cache();
    cache.update(
        "orderbook",
        OrderBook {
            best_bid: 100.0,
            best_ask: 100.1,
        },
    );
    let result = graph.fire(&cache).await;
    assert_eq!(outputs(&result).nodes().collect::<Vec<_>>(), ["trade"]);
    assert_eq!(
        result.output::<String>("trade").map(String::as_str),
        Some("trade at 100.05")
    );
    assert_eq!(result.output::<String>("no_action"), None);

    cache.update(
        "orderbook",
        OrderBook {
            best_bid: 100.0,
            best_ask: 100.5,
        },
    );
    let result = graph.fire(&cache).await;
    assert_eq!(outputs(&result).nodes().collect::<Vec<_>>(), ["no_action"]);
    assert_eq!(
        result.output::<String>("no_action").map(String::as_str),
        Some("no action: spread 0.50 too wide")
    );
}

// CG-D-06: fan-out compute -> out_a, compute -> out_b gives two terminal outputs computed from
// the same value.
#[tokio::test]
async fn cg_d_06_fan_out_two_terminals_from_one_value() {
    let graph = build(
        GraphBuilder::new("fan_out")
            .node("compute", (source::<u64>("x"),), |x: Option<&u64>| {
                x.copied().unwrap_or(0) * 3
            })
            .node("out_a", (upstream::<u64>("compute"),), |v: &u64| *v + 1)
            .node("out_b", (upstream::<u64>("compute"),), |v: &u64| {
                format!("value={v}")
            }),
    );
    let mut cache = graph.new_cache();
    cache.update("x", 14u64);
    let result = graph.fire(&cache).await;
    let outs = outputs(&result);
    assert_eq!(outs.len(), 2);
    assert_eq!(result.output::<u64>("out_a"), Some(&43));
    assert_eq!(
        result.output::<String>("out_b").map(String::as_str),
        Some("value=42")
    );
}

// CG-D-07: diamond entry -> a, entry -> b, a -> m, b -> m: the entry runs exactly once per
// firing and m receives both a's and b's outputs.
#[tokio::test]
async fn cg_d_07_diamond_runs_entry_once() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let graph = build(
        GraphBuilder::new("diamond")
            .node("entry", (source::<u64>("x"),), move |x: Option<&u64>| {
                counter.fetch_add(1, Ordering::SeqCst);
                x.copied().unwrap_or(0)
            })
            .node("a", (upstream::<u64>("entry"),), |v: &u64| v + 1)
            .node("b", (upstream::<u64>("entry"),), |v: &u64| v * 10)
            .node(
                "m",
                (upstream::<u64>("a"), upstream::<u64>("b")),
                |a: &u64, b: &u64| (*a, *b),
            ),
    );
    let mut executor = Executor::new(Arc::clone(&graph));
    let mut cache = graph.new_cache();
    for (firing, x) in [3u64, 4, 9].into_iter().enumerate() {
        cache.update("x", x);
        let result = executor.fire(&cache).await;
        assert_eq!(outputs(&result).len(), 1);
        assert_eq!(result.output::<(u64, u64)>("m"), Some(&(x + 1, x * 10)));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            firing + 1,
            "entry must run exactly once per firing"
        );
    }
}

// CG-D-08: two terminals give exactly two outputs, each downcastable by name, and each
// `TerminalOutput::encode()` round-trips through `codec::decode`.
#[tokio::test]
async fn cg_d_08_terminal_outputs_downcast_and_encode() {
    let graph = build(
        GraphBuilder::new("two_terminals")
            .node("ingest", (source::<OrderBook>("orderbook"),), ingest)
            .node("metrics", (upstream::<OrderBook>("ingest"),), compute)
            .node(
                "label",
                (upstream::<OrderBook>("ingest"),),
                |b: &OrderBook| format!("{}/{}", b.best_bid, b.best_ask),
            ),
    );
    let mut cache = graph.new_cache();
    cache.update(
        "orderbook",
        OrderBook {
            best_bid: 10.0,
            best_ask: 12.0,
        },
    );
    let result = graph.fire(&cache).await;
    let outs = outputs(&result);
    assert_eq!(outs.len(), 2);

    let expected_metrics = Metrics {
        mid: 11.0,
        spread: 2.0,
    };
    assert_eq!(result.output::<Metrics>("metrics"), Some(&expected_metrics));
    assert_eq!(
        result.output::<String>("label").map(String::as_str),
        Some("10/12")
    );
    // Wrong type or unknown node: None, not a panic.
    assert_eq!(result.output::<String>("metrics"), None);
    assert_eq!(result.output::<u64>("nope"), None);

    let mut seen = HashSet::new();
    for out in outs.iter() {
        let bytes = out.encode().expect("terminal output encodes");
        match out.node() {
            "metrics" => {
                assert_eq!(out.type_name(), std::any::type_name::<Metrics>());
                let decoded: Metrics = codec::decode(&bytes).expect("metrics decode");
                assert_eq!(&decoded, out.get::<Metrics>().expect("typed metrics"));
                assert_eq!(decoded, expected_metrics);
            }
            "label" => {
                assert_eq!(out.type_name(), std::any::type_name::<String>());
                let decoded: String = codec::decode(&bytes).expect("label decode");
                assert_eq!(decoded, "10/12");
            }
            other => panic!("unexpected terminal `{other}`"),
        }
        seen.insert(out.node().to_owned());
    }
    assert_eq!(seen.len(), 2);
}

// CG-D-09 (like): a cache holding a value of the wrong type under a source makes the firing
// fail with GraphError::InputType naming the node and the source, without panicking.
#[tokio::test]
async fn cg_d_09_wrong_source_type_is_an_error() {
    let graph = build(
        GraphBuilder::new("typed")
            .node("entry", (source::<f64>("price"),), |p: Option<&f64>| {
                p.copied().unwrap_or(0.0)
            })
            .node("double", (upstream::<f64>("entry"),), |p: &f64| p * 2.0),
    );
    let aligned = {
        let mut c = graph.new_cache();
        c.update("price", "not a number".to_string());
        c
    };
    let by_name = {
        let mut c = InputCache::new();
        c.update("price", "not a number".to_string());
        c
    };
    let mut executor = Executor::new(Arc::clone(&graph));
    for cache in [&aligned, &by_name] {
        let result = executor.fire(cache).await;
        let err = error(&result);
        match err {
            GraphError::InputType {
                node,
                source_name,
                expected,
                found,
            } => {
                assert_eq!(&**node, "entry");
                assert_eq!(source_name.as_str(), "price");
                assert_eq!(*expected, std::any::type_name::<f64>());
                assert_eq!(*found, std::any::type_name::<String>());
            }
            other => panic!("expected InputType, got {other:?}"),
        }
        assert_eq!(err.node(), "entry");
        assert_mentions(&err.to_string(), &["entry", "price", "f64", "String"]);
    }

    // The executor is still usable with a well-typed cache.
    let mut good = graph.new_cache();
    good.update("price", 2.5f64);
    let result = executor.fire(&good).await;
    assert_eq!(result.output::<f64>("double"), Some(&5.0));
}

fn flaky_graph(async_node: bool) -> Arc<CompiledGraph> {
    let builder = GraphBuilder::new("flaky").node("entry", (source::<u64>("x"),), entry_u64);
    let builder = if async_node {
        builder.async_node("flaky", (upstream::<u64>("entry"),), flaky_async)
    } else {
        builder.node("flaky", (upstream::<u64>("entry"),), flaky)
    };
    build(builder.node("tail", (upstream::<u64>("flaky"),), plus_one))
}

async fn assert_panic_then_recovery(async_node: bool, expected_message: &str) {
    let graph = flaky_graph(async_node);
    let mut executor = Executor::new(Arc::clone(&graph));
    let mut cache = graph.new_cache();
    for round in 0..3u64 {
        cache.update("x", 0u64);
        let result = executor.fire(&cache).await;
        match error(&result) {
            GraphError::NodePanicked { node, message } => {
                assert_eq!(&**node, "flaky");
                assert!(message.contains(expected_message), "{message}");
            }
            other => panic!("expected NodePanicked, got {other:?}"),
        }
        assert_mentions(&error(&result).to_string(), &["flaky", "panicked"]);

        // The same executor fires successfully afterwards: `entry` wrote its slot in the failed
        // firing, so this only works if the slots were reset.
        let x = round + 1;
        cache.update("x", x);
        let result = executor.fire(&cache).await;
        assert_eq!(outputs(&result).len(), 1);
        assert_eq!(result.output::<u64>("tail"), Some(&(x * 10 + 1)));
    }
}

// Panics: a panicking plain node yields NodePanicked naming it; the executor recovers.
#[tokio::test]
async fn plain_node_panic_is_reported_and_executor_recovers() {
    assert_panic_then_recovery(false, "plain node refuses zero").await;
}

// Panics: an async node panicking after an await yields NodePanicked naming it; the executor
// recovers.
#[tokio::test]
async fn async_node_panic_after_await_is_reported_and_executor_recovers() {
    assert_panic_then_recovery(true, "async node refuses zero after an await").await;
}

// Panics: same, on a multi-threaded runtime (the async node may resume on another worker).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_node_panic_on_multi_thread_runtime() {
    assert_panic_then_recovery(true, "async node refuses zero after an await").await;
}

// Timeout: an async node sleeping 5 s under a 50 ms per-firing timeout yields NodeTimedOut
// naming it, long before 5 s; the same executor then fires successfully.
#[tokio::test]
async fn async_node_timeout_is_reported_early() {
    let timeout = Duration::from_millis(50);
    let graph = build(
        GraphBuilder::new("slow")
            .node("delay", (source::<u64>("ms"),), entry_u64)
            .async_node("sleeper", (upstream::<u64>("delay"),), sleeper),
    );
    let mut executor = Executor::new(Arc::clone(&graph)).with_timeout(Some(timeout));
    let mut cache = graph.new_cache();

    cache.update("ms", 5_000u64);
    let started = Instant::now();
    let result = executor.fire(&cache).await;
    let elapsed = started.elapsed();
    match error(&result) {
        GraphError::NodeTimedOut { node, timeout: t } => {
            assert_eq!(&**node, "sleeper");
            assert_eq!(*t, timeout);
        }
        other => panic!("expected NodeTimedOut, got {other:?}"),
    }
    assert_mentions(&error(&result).to_string(), &["sleeper", "timeout"]);
    assert!(
        elapsed < Duration::from_secs(4),
        "the timeout must abandon the node well before its 5 s sleep (took {elapsed:?})"
    );

    // A node that finishes within the timeout completes, on the same executor.
    cache.update("ms", 1u64);
    let result = executor.fire(&cache).await;
    assert_eq!(result.output::<u64>("sleeper"), Some(&1));
}

// Timeout: a plain node that busy-waits past the per-firing timeout yields NodeTimedOut naming
// it (it cannot be interrupted, but the firing fails once it returns).
#[tokio::test]
async fn plain_node_past_timeout_is_reported() {
    let timeout = Duration::from_millis(100);
    let graph = build(
        GraphBuilder::new("busy")
            .node("delay", (source::<u64>("ms"),), entry_u64)
            .node("spinner", (upstream::<u64>("delay"),), spinner)
            .node("after", (upstream::<u64>("spinner"),), plus_one),
    );
    let mut executor = Executor::new(Arc::clone(&graph)).with_timeout(Some(timeout));
    let mut cache = graph.new_cache();

    cache.update("ms", 300u64);
    let result = executor.fire(&cache).await;
    match error(&result) {
        GraphError::NodeTimedOut { node, timeout: t } => {
            assert_eq!(&**node, "spinner");
            assert_eq!(*t, timeout);
        }
        other => panic!("expected NodeTimedOut, got {other:?}"),
    }
    assert_eq!(error(&result).node(), "spinner");

    cache.update("ms", 0u64);
    let result = executor.fire(&cache).await;
    assert_eq!(result.output::<u64>("after"), Some(&1));
}

// Slot reuse: one executor fired 1000 times with changing cache values, alternating routing
// branches, is right every time.
#[tokio::test]
async fn repeated_firing_reuses_slots_correctly() {
    #[derive(Debug)]
    enum Parity {
        Even(u64),
        Odd(u64),
    }
    let graph = build(
        GraphBuilder::new("repeat")
            .node(
                "entry",
                (source::<u64>("x"), source::<u64>("y")),
                |x: Option<&u64>, y: Option<&u64>| {
                    x.copied().unwrap_or(0) + y.copied().unwrap_or(0)
                },
            )
            .router(
                "parity",
                (source::<u64>("x"),),
                |x: Option<&u64>| match x.copied().unwrap_or(0) {
                    v if v % 2 == 0 => Parity::Even(v),
                    v => Parity::Odd(v),
                },
                [
                    Route::new("Even", "half", |p: &Parity| match p {
                        Parity::Even(v) => Some(v),
                        Parity::Odd(_) => None,
                    }),
                    Route::new("Odd", "triple", |p: &Parity| match p {
                        Parity::Odd(v) => Some(v),
                        Parity::Even(_) => None,
                    }),
                ],
            )
            .node("half", (upstream::<u64>("parity"),), |v: &u64| v / 2)
            .node("triple", (upstream::<u64>("parity"),), |v: &u64| v * 3 + 1)
            .node("sum", (upstream::<u64>("entry"),), |s: &u64| {
                format!("sum={s}")
            }),
    );
    let mut executor = Executor::new(Arc::clone(&graph));
    let mut cache = graph.new_cache();
    for i in 0..1000u64 {
        cache.update("x", i);
        cache.update("y", i * 7);
        let snapshot = cache.snapshot();
        let result = executor.fire(&snapshot).await;
        let outs = outputs(&result);
        assert_eq!(
            outs.len(),
            2,
            "firing {i}: {:?}",
            outs.nodes().collect::<Vec<_>>()
        );
        assert_eq!(
            result.output::<String>("sum").map(String::as_str),
            Some(format!("sum={}", i * 8).as_str()),
            "firing {i}"
        );
        if i % 2 == 0 {
            assert_eq!(result.output::<u64>("half"), Some(&(i / 2)), "firing {i}");
            assert!(!outs.contains("triple"), "firing {i}");
        } else {
            assert_eq!(
                result.output::<u64>("triple"),
                Some(&(i * 3 + 1)),
                "firing {i}"
            );
            assert!(!outs.contains("half"), "firing {i}");
        }
    }
}

// CG-D-14: mutating the cache after snapshot() leaves the snapshot unchanged, including what a
// firing on the snapshot sees.
#[tokio::test]
async fn cg_d_14_snapshot_is_isolated() {
    let graph = build(GraphBuilder::new("snap").node(
        "entry",
        (source::<u64>("x"), source::<u64>("y")),
        |x: Option<&u64>, y: Option<&u64>| (x.copied(), y.copied()),
    ));
    let mut cache = graph.new_cache();
    cache.update("x", 1u64);
    let snapshot = cache.snapshot();
    cache.update("x", 2u64);
    cache.update("y", 3u64);

    assert_eq!(snapshot.get::<u64>("x"), Some(Ok(&1)));
    assert!(!snapshot.has("y"));
    assert_eq!(snapshot.boundary("x").map(|b| b.seq()), Some(1));
    assert_eq!(cache.get::<u64>("x"), Some(Ok(&2)));
    assert_eq!(cache.boundary("x").map(|b| b.seq()), Some(2));

    let mut executor = Executor::new(Arc::clone(&graph));
    let old = executor.fire(&snapshot).await;
    assert_eq!(
        old.output::<(Option<u64>, Option<u64>)>("entry"),
        Some(&(Some(1), None))
    );
    let new = executor.fire(&cache).await;
    assert_eq!(
        new.output::<(Option<u64>, Option<u64>)>("entry"),
        Some(&(Some(2), Some(3)))
    );
}

// ---------------------------------------------------------------------------------------------
// Build errors: each asserts the variant and that the message names the culprit.
// ---------------------------------------------------------------------------------------------

fn u64_entry(builder: GraphBuilder, name: &str) -> GraphBuilder {
    builder.node(name, (source::<u64>("x"),), entry_u64)
}

// Cycle a -> b -> c -> a, with an entry feeding a: Cycle listing exactly the cycle nodes.
#[test]
fn build_error_cycle() {
    let err = build_err(
        u64_entry(GraphBuilder::new("cyclic"), "entry")
            .node(
                "a",
                (upstream::<u64>("entry"), upstream::<u64>("c")),
                |e: &u64, c: &u64| e + c,
            )
            .node("b", (upstream::<u64>("a"),), plus_one)
            .node("c", (upstream::<u64>("b"),), plus_one),
    );
    match &err {
        BuildError::Cycle { nodes } => assert_eq!(nodes, &["a", "b", "c", "a"]),
        other => panic!("expected Cycle, got {other:?}"),
    }
    assert_eq!(err.to_string(), "cycle between nodes a -> b -> c -> a");
}

// Cycle declared in an order unlike the data flow: the reported path still follows the edges.
#[test]
fn build_error_cycle_path_follows_edges() {
    let err = build_err(
        GraphBuilder::new("cyclic_shuffled")
            .node("c", (upstream::<u64>("b"),), plus_one)
            .node("b", (upstream::<u64>("a"),), plus_one)
            .node(
                "a",
                (upstream::<u64>("entry"), upstream::<u64>("c")),
                |e: &u64, c: &u64| e + c,
            )
            .node("entry", (source::<u64>("x"),), entry_u64),
    );
    let BuildError::Cycle { nodes } = &err else {
        panic!("expected Cycle, got {err:?}");
    };
    let edges: HashSet<(&str, &str)> = [("a", "b"), ("b", "c"), ("c", "a")].into();
    assert_eq!(nodes.len(), 4, "{nodes:?}");
    assert_eq!(nodes.first(), nodes.last(), "closed path: {nodes:?}");
    for pair in nodes.windows(2) {
        assert!(
            edges.contains(&(pair[0].as_str(), pair[1].as_str())),
            "`{} -> {}` is not an edge of the graph: {nodes:?}",
            pair[0],
            pair[1]
        );
    }
    let members: HashSet<&str> = nodes.iter().map(String::as_str).collect();
    assert_eq!(members, HashSet::from(["a", "b", "c"]));
    assert_mentions(&err.to_string(), &["a", "b", "c"]);
    assert!(!err.to_string().contains("entry"), "{err}");
}

// A strongly connected component that is more than one simple cycle (a <-> b, b -> c -> a):
// the reported path is still a closed walk along real edges.
#[test]
fn build_error_cycle_in_tangled_component_is_a_real_cycle() {
    let err = build_err(
        GraphBuilder::new("tangled")
            .node("c", (upstream::<u64>("b"),), plus_one)
            .node("b", (upstream::<u64>("a"),), plus_one)
            .node(
                "a",
                (
                    upstream::<u64>("entry"),
                    upstream::<u64>("b"),
                    upstream::<u64>("c"),
                ),
                |e: &u64, b: &u64, c: &u64| e + b + c,
            )
            .node("entry", (source::<u64>("x"),), entry_u64),
    );
    let BuildError::Cycle { nodes } = &err else {
        panic!("expected Cycle, got {err:?}");
    };
    let edges: HashSet<(&str, &str)> = [("a", "b"), ("b", "a"), ("b", "c"), ("c", "a")].into();
    assert!(nodes.len() >= 3, "{nodes:?}");
    assert_eq!(nodes.first(), nodes.last(), "closed path: {nodes:?}");
    for pair in nodes.windows(2) {
        assert!(
            edges.contains(&(pair[0].as_str(), pair[1].as_str())),
            "`{} -> {}` is not an edge of the graph: {nodes:?}",
            pair[0],
            pair[1]
        );
    }
    assert_eq!(
        err.to_string(),
        format!("cycle between nodes {}", nodes.join(" -> "))
    );
}

// A node reading itself is a cycle of one node.
#[test]
fn build_error_self_loop() {
    let err = build_err(u64_entry(GraphBuilder::new("self_loop"), "entry").node(
        "me",
        (upstream::<u64>("entry"), upstream::<u64>("me")),
        |e: &u64, m: &u64| e + m,
    ));
    assert_eq!(
        err,
        BuildError::Cycle {
            nodes: vec!["me".into(), "me".into()]
        }
    );
    assert_mentions(&err.to_string(), &["me -> me"]);
}

#[test]
fn build_error_unknown_upstream() {
    let err = build_err(u64_entry(GraphBuilder::new("g"), "entry").node(
        "reader",
        (upstream::<u64>("ghost"),),
        plus_one,
    ));
    assert_eq!(
        err,
        BuildError::UnknownNode {
            node: "reader".into(),
            input: "ghost".into()
        }
    );
    assert_mentions(&err.to_string(), &["reader", "ghost"]);
}

#[test]
fn build_error_duplicate_node() {
    let err = build_err(u64_entry(u64_entry(GraphBuilder::new("g"), "twin"), "twin"));
    assert_eq!(
        err,
        BuildError::DuplicateNode {
            node: "twin".into()
        }
    );
    assert_mentions(&err.to_string(), &["twin"]);
}

#[test]
fn build_error_source_type_conflict() {
    let err = build_err(
        GraphBuilder::new("g")
            .node("first", (source::<u64>("shared"),), entry_u64)
            .node(
                "second",
                (source::<String>("shared"),),
                |s: Option<&String>| s.map_or(0, String::len),
            ),
    );
    assert_eq!(
        err,
        BuildError::SourceTypeConflict {
            source_name: "shared".into(),
            first: std::any::type_name::<u64>(),
            second: std::any::type_name::<String>(),
            node: "second".into(),
        }
    );
    assert_mentions(&err.to_string(), &["shared", "second", "u64", "String"]);
}

#[test]
fn build_error_type_mismatch_on_edge() {
    let err = build_err(u64_entry(GraphBuilder::new("g"), "producer").node(
        "consumer",
        (upstream::<u32>("producer"),),
        |v: &u32| *v,
    ));
    assert_eq!(
        err,
        BuildError::TypeMismatch {
            node: "consumer".into(),
            input: "producer".into(),
            expected: std::any::type_name::<u32>(),
            found: std::any::type_name::<u64>(),
        }
    );
    assert_mentions(&err.to_string(), &["consumer", "producer", "u32", "u64"]);
}

#[test]
fn build_error_no_entry_node() {
    let err = build_err(
        GraphBuilder::new("headless")
            .node("a", (upstream::<u64>("b"),), plus_one)
            .node("b", (upstream::<u64>("a"),), plus_one),
    );
    assert_eq!(
        err,
        BuildError::NoEntryNode {
            graph: "headless".into()
        }
    );
    assert_mentions(&err.to_string(), &["headless", "no entry node"]);
}

#[test]
fn build_error_router_without_routes() {
    let err = build_err(GraphBuilder::new("g").router(
        "decide",
        (source::<OrderBook>("orderbook"),),
        decide,
        Vec::<Route<Decision>>::new(),
    ));
    assert_eq!(
        err,
        BuildError::NoRoutes {
            node: "decide".into()
        }
    );
    assert_mentions(&err.to_string(), &["decide", "no routes"]);
}

#[test]
fn build_error_route_to_unknown_node() {
    let err = build_err(
        GraphBuilder::new("g")
            .router(
                "decide",
                (source::<OrderBook>("orderbook"),),
                decide,
                [
                    trade_route(),
                    Route::new("NoAction", "ghost", |d: &Decision| match d {
                        Decision::NoAction(r) => Some(r),
                        Decision::Trade(_) => None,
                    }),
                ],
            )
            .node("trade", (upstream::<f64>("decide"),), trade),
    );
    assert_eq!(
        err,
        BuildError::UnknownRouteTarget {
            router: "decide".into(),
            variant: "NoAction".into(),
            target: "ghost".into(),
        }
    );
    assert_mentions(&err.to_string(), &["decide", "NoAction", "ghost"]);
}

#[test]
fn build_error_route_target_does_not_read_router() {
    let err = build_err(
        GraphBuilder::new("g")
            .router(
                "decide",
                (source::<OrderBook>("orderbook"),),
                decide,
                [trade_route(), no_action_route()],
            )
            .node("trade", (upstream::<f64>("decide"),), trade)
            // `no_action` exists but reads the cache, not `decide`.
            .node("no_action", (source::<u64>("x"),), entry_u64),
    );
    assert_eq!(
        err,
        BuildError::RouteTargetDoesNotRead {
            router: "decide".into(),
            variant: "NoAction".into(),
            target: "no_action".into(),
        }
    );
    assert_mentions(&err.to_string(), &["decide", "NoAction", "no_action"]);
}

#[test]
fn build_error_reads_router_without_being_a_target() {
    let err = build_err(
        GraphBuilder::new("g")
            .router(
                "decide",
                (source::<OrderBook>("orderbook"),),
                decide,
                [trade_route(), no_action_route()],
            )
            .node("trade", (upstream::<f64>("decide"),), trade)
            .node("no_action", (upstream::<Reason>("decide"),), no_action)
            .node("spy", (upstream::<f64>("decide"),), |m: &f64| *m),
    );
    assert_eq!(
        err,
        BuildError::RouteAmbiguous {
            node: "spy".into(),
            router: "decide".into(),
            routes: 0,
        }
    );
    assert_mentions(&err.to_string(), &["spy", "decide"]);
}

#[test]
fn build_error_duplicate_route_variant() {
    let err = build_err(
        GraphBuilder::new("g")
            .router(
                "decide",
                (source::<OrderBook>("orderbook"),),
                decide,
                [trade_route(), trade_route()],
            )
            .node("trade", (upstream::<f64>("decide"),), trade),
    );
    assert_eq!(
        err,
        BuildError::DuplicateVariant {
            router: "decide".into(),
            variant: "Trade".into(),
        }
    );
    assert_mentions(&err.to_string(), &["decide", "Trade"]);
}

#[test]
fn build_error_empty_graph() {
    let err = build_err(GraphBuilder::new("nothing"));
    assert_eq!(
        err,
        BuildError::Empty {
            graph: "nothing".into()
        }
    );
    assert_mentions(&err.to_string(), &["nothing", "no nodes"]);
}

#[test]
fn build_error_node_name_is_also_a_source() {
    let err = build_err(
        GraphBuilder::new("g")
            .node("price", (source::<u64>("x"),), entry_u64)
            .node("reader", (source::<u64>("price"),), entry_u64),
    );
    assert_eq!(
        err,
        BuildError::NameClash {
            name: "price".into()
        }
    );
    assert_mentions(&err.to_string(), &["price", "both a node and a source"]);
}

// ---------------------------------------------------------------------------------------------
// Review regressions: user code in extractors and serializers, huge timeouts, cancellation.
// ---------------------------------------------------------------------------------------------

enum Pick {
    Left(u64),
    Right(u64),
}

fn pick(x: Option<&u64>) -> Pick {
    match x.copied().unwrap_or(0) {
        v if v % 2 == 0 => Pick::Left(v),
        v => Pick::Right(v),
    }
}

// A route extractor is user code: its panic fails the firing, naming a node; nothing unwinds
// out of the executor, and the executor keeps working.
#[tokio::test]
async fn panicking_route_extractor_is_a_graph_error() {
    let graph = Arc::new(
        GraphBuilder::new("extractor")
            .router(
                "pick",
                (source::<u64>("x"),),
                pick,
                [
                    Route::new("Left", "left", |p: &Pick| match p {
                        Pick::Left(v) => Some(v),
                        Pick::Right(_) => panic!("extractor exploded"),
                    }),
                    Route::new("Right", "right", |p: &Pick| match p {
                        Pick::Right(v) => Some(v),
                        Pick::Left(_) => None,
                    }),
                ],
            )
            .node("left", (upstream::<u64>("pick"),), plus_one)
            .node("right", (upstream::<u64>("pick"),), plus_one)
            .build()
            .expect("valid"),
    );
    let mut executor = Executor::new(Arc::clone(&graph));
    let mut cache = graph.new_cache();
    cache.update("x", 3u64);
    match executor.fire(&cache).await {
        GraphResult::Error(GraphError::NodePanicked { node, message }) => {
            assert_eq!(&*node, "left");
            assert!(message.contains("extractor exploded"), "{message}");
        }
        other => panic!("expected NodePanicked, got {other:?}"),
    }
    cache.update("x", 4u64);
    assert_eq!(executor.fire(&cache).await.output::<u64>("left"), Some(&5));
}

/// Serializes by panicking.
struct BadSer;

impl serde::Serialize for BadSer {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        panic!("serializer exploded")
    }
}

#[tokio::test]
async fn panicking_serializer_is_an_encode_error() {
    let graph = Arc::new(
        GraphBuilder::new("badser")
            .node("make", (source::<u64>("x"),), |_: Option<&u64>| BadSer)
            .build()
            .expect("valid"),
    );
    let mut cache = graph.new_cache();
    cache.update("x", 1u64);
    let result = graph.fire(&cache).await;
    let out = result
        .outputs()
        .expect("completed")
        .iter()
        .next()
        .expect("one output");
    let err = out.encode().expect_err("serializer panics");
    assert!(err.to_string().contains("serializer exploded"), "{err}");
}

#[tokio::test]
async fn huge_timeout_means_no_deadline() {
    let graph = Arc::new(
        GraphBuilder::new("huge")
            .node("inc", (source::<u64>("x"),), |x: Option<&u64>| {
                x.copied().unwrap_or(0) + 1
            })
            .build()
            .expect("valid"),
    );
    let mut executor = Executor::new(Arc::clone(&graph)).with_timeout(Some(Duration::MAX));
    let mut cache = graph.new_cache();
    cache.update("x", 41u64);
    assert_eq!(executor.fire(&cache).await.output::<u64>("inc"), Some(&42));
}

async fn slow_double(x: &u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(200)).await;
    x * 2
}

// Dropping a firing mid-way (e.g. a caller's own timeout) leaves no stale slot behind.
#[tokio::test]
async fn executor_recovers_after_a_cancelled_firing() {
    let graph = Arc::new(
        GraphBuilder::new("cancel")
            .node("entry", (source::<u64>("x"),), |x: Option<&u64>| {
                x.copied().unwrap_or(0)
            })
            .async_node("slow", (upstream::<u64>("entry"),), slow_double)
            .build()
            .expect("valid"),
    );
    let mut executor = Executor::new(Arc::clone(&graph));
    let mut cache = graph.new_cache();
    cache.update("x", 1u64);
    let cancelled = tokio::time::timeout(Duration::from_millis(20), executor.fire(&cache)).await;
    assert!(cancelled.is_err(), "the caller gave up");
    cache.update("x", 21u64);
    let result = executor.fire(&cache).await;
    assert_eq!(result.output::<u64>("slow"), Some(&42), "{result:?}");
}

// CG-D-10: a CPU-heavy node marked blocking does not stall other tasks. On a runtime with a
// single worker, a plain busy node starves a ticker completely while it spins; a blocking one
// hands the worker's other tasks to another thread, so the ticker keeps ticking.
#[test]
fn blocking_node_does_not_stall_other_tasks() {
    use std::sync::atomic::{AtomicBool, AtomicU64};

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let ticks_while_busy = |blocking: bool| -> u64 {
        rt.block_on(async {
            let busy = Arc::new(AtomicBool::new(false));
            let ticks = Arc::new(AtomicU64::new(0));
            let spin = {
                let busy = Arc::clone(&busy);
                move |x: Option<&u64>| {
                    busy.store(true, Ordering::SeqCst);
                    let until = Instant::now() + Duration::from_millis(200);
                    while Instant::now() < until {
                        std::hint::spin_loop();
                    }
                    busy.store(false, Ordering::SeqCst);
                    x.copied().unwrap_or(0)
                }
            };
            let builder = GraphBuilder::new("busy");
            let builder = if blocking {
                builder.blocking_node("spin", (source::<u64>("x"),), spin)
            } else {
                builder.node("spin", (source::<u64>("x"),), spin)
            };
            let graph = Arc::new(builder.build().expect("valid"));
            let ticker = {
                let (busy, ticks) = (Arc::clone(&busy), Arc::clone(&ticks));
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        if busy.load(Ordering::SeqCst) {
                            ticks.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                })
            };
            let mut cache = graph.new_cache();
            cache.update("x", 1u64);
            let result = tokio::spawn(async move { graph.fire(&cache).await })
                .await
                .expect("firing task");
            assert_eq!(result.output::<u64>("spin"), Some(&1));
            ticker.abort();
            ticks.load(Ordering::SeqCst)
        })
    };
    assert_eq!(
        ticks_while_busy(false),
        0,
        "a plain busy node holds the only worker"
    );
    let ticks = ticks_while_busy(true);
    assert!(
        ticks >= 5,
        "the ticker kept running beside a blocking node ({ticks} ticks in 200 ms)"
    );
}

// Execution order is deterministic: wherever edges allow, nodes run in declaration order (so
// graphs combined into one reactor fire in the order they were added).
#[test]
fn independent_nodes_run_in_declaration_order() {
    let id = |x: Option<&u64>| x.copied().unwrap_or(0);
    let inc = |x: &u64| x + 1;
    let graph = GraphBuilder::new("order")
        .node("z_entry", (source::<u64>("x"),), id)
        .node("z_next", (upstream::<u64>("z_entry"),), inc)
        .node("a_entry", (source::<u64>("x"),), id)
        .node("a_next", (upstream::<u64>("a_entry"),), inc)
        .build()
        .expect("valid");
    assert_eq!(
        graph.node_names().collect::<Vec<_>>(),
        ["z_entry", "z_next", "a_entry", "a_next"]
    );
}
