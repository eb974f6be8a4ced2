//! Operator metrics: with a recorder installed (here `metrics-exporter-prometheus`, as the
//! README shows), a running engine reports its `cloacina_*` series. Its own test binary: the
//! recorder is process-global.

use std::time::Duration;

use cloacina::prelude::*;
use metrics_exporter_prometheus::PrometheusBuilder;

fn echo(v: Option<&u64>) -> u64 {
    v.copied().unwrap_or(0)
}

fn value_of(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn engine_reports_cloacina_metrics_to_prometheus() {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .expect("install the recorder");
    let graph = GraphBuilder::new("metered")
        .node("echo", (source::<u64>("x"),), echo)
        .build()
        .expect("graph");
    let engine = EmbeddedGraph::builder(graph)
        .strategy(InputStrategy::Sequential)
        .ledger(std::sync::Arc::new(MemoryLedger::new()))
        .passthrough::<u64>("x")
        .start()
        .expect("start");
    let mut sub = engine.subscribe();
    let x = engine.sender::<u64>("x").expect("sender");
    for i in 0..10u64 {
        x.send(i).await.expect("send");
    }
    for _ in 0..10 {
        tokio::time::timeout(Duration::from_secs(5), sub.recv())
            .await
            .expect("firing")
            .expect("open")
            .expect("not lagged");
    }
    engine.shutdown().await.expect("shutdown");
    let text = handle.render();
    assert_eq!(
        value_of(
            &text,
            "cloacina_boundaries_total{reactor=\"metered\",source=\"x\"}"
        ),
        Some(10.0),
        "{text}"
    );
    assert_eq!(
        value_of(
            &text,
            "cloacina_firings_total{reactor=\"metered\",graph=\"metered\",outcome=\"completed\"}"
        ),
        Some(10.0),
        "{text}"
    );
    assert!(text.contains("cloacina_firing_duration_seconds"), "{text}");
    assert!(
        text.contains("cloacina_reactor_health{reactor=\"metered\"} 4"),
        "stopped: {text}"
    );
    assert!(
        text.contains("cloacina_accumulator_ready{reactor=\"metered\",source=\"x\"}"),
        "{text}"
    );
}
