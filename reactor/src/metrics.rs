//! Operator metrics through the `metrics` facade.
//!
//! Handles are registered once when the reactor starts, so the hot path only increments them:
//! with no recorder installed each update is a branch on an empty handle. Install the
//! recorder (e.g. `metrics-exporter-prometheus`) before starting reactors; a reactor started
//! earlier reports to no one. Labels are bounded: `reactor`, `graph`, `source`, `outcome`.
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `cloacina_boundaries_total` | counter | reactor, source |
//! | `cloacina_firings_total` | counter | reactor, graph, outcome (`completed`, `failed`) |
//! | `cloacina_firing_duration_seconds` | histogram | reactor, graph |
//! | `cloacina_inbound_queue_depth` | gauge | reactor |
//! | `cloacina_sequential_queue_depth` | gauge | reactor |
//! | `cloacina_subscribers` | gauge | reactor |
//! | `cloacina_subscriber_queue_depth` | gauge (deepest subscriber queue) | reactor |
//! | `cloacina_subscriber_missed_total` | counter | reactor |
//! | `cloacina_subscribers_detached_total` | counter | reactor |
//! | `cloacina_reactor_health` | gauge: 0 starting, 1 warming, 2 live, 3 degraded, 4 stopped, 5 failed | reactor |
//! | `cloacina_accumulator_ready` | gauge: 1 ready (live or socket-only), 0 not | reactor, source |
//!
//! The ledger writer adds `cloacina_ledger_*` (see `cloacina_ledger`).

use std::time::Duration;

use cloacina_graph_core::SourceName;
use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};

use crate::health::ReactorHealth;

/// One reactor's metric handles.
pub(crate) struct ReactorMetrics {
    boundaries: Vec<Counter>,
    completed: Counter,
    failed: Counter,
    firing_seconds: Histogram,
    inbound_depth: Gauge,
    sequential_depth: Gauge,
    subscribers: Gauge,
    subscriber_depth: Gauge,
    subscriber_missed: Counter,
    subscribers_detached: Counter,
    health: Gauge,
    reactor: String,
}

impl ReactorMetrics {
    pub(crate) fn new(reactor: &str, graph: &str, sources: &[SourceName]) -> Self {
        let r = reactor.to_owned();
        let g = graph.to_owned();
        Self {
            boundaries: sources
                .iter()
                .map(|s| counter!("cloacina_boundaries_total", "reactor" => r.clone(), "source" => s.as_str().to_owned()))
                .collect(),
            completed: counter!("cloacina_firings_total", "reactor" => r.clone(), "graph" => g.clone(), "outcome" => "completed"),
            failed: counter!("cloacina_firings_total", "reactor" => r.clone(), "graph" => g.clone(), "outcome" => "failed"),
            firing_seconds: histogram!("cloacina_firing_duration_seconds", "reactor" => r.clone(), "graph" => g),
            inbound_depth: gauge!("cloacina_inbound_queue_depth", "reactor" => r.clone()),
            sequential_depth: gauge!("cloacina_sequential_queue_depth", "reactor" => r.clone()),
            subscribers: gauge!("cloacina_subscribers", "reactor" => r.clone()),
            subscriber_depth: gauge!("cloacina_subscriber_queue_depth", "reactor" => r.clone()),
            subscriber_missed: counter!("cloacina_subscriber_missed_total", "reactor" => r.clone()),
            subscribers_detached: counter!("cloacina_subscribers_detached_total", "reactor" => r.clone()),
            health: gauge!("cloacina_reactor_health", "reactor" => r.clone()),
            reactor: r,
        }
    }

    pub(crate) fn boundary(&self, source: usize) {
        if let Some(c) = self.boundaries.get(source) {
            c.increment(1);
        }
    }

    pub(crate) fn firing(&self, ok: bool, took: Duration) {
        if ok {
            self.completed.increment(1);
        } else {
            self.failed.increment(1);
        }
        self.firing_seconds.record(took.as_secs_f64());
    }

    pub(crate) fn queues(&self, inbound: usize, sequential: usize) {
        self.inbound_depth.set(inbound as f64);
        self.sequential_depth.set(sequential as f64);
    }

    pub(crate) fn subscribers(&self, count: usize, deepest: usize) {
        self.subscribers.set(count as f64);
        self.subscriber_depth.set(deepest as f64);
    }

    pub(crate) fn subscriber_missed(&self, n: u64) {
        self.subscriber_missed.increment(n);
    }

    pub(crate) fn subscriber_detached(&self) {
        self.subscribers_detached.increment(1);
    }

    pub(crate) fn health(&self, health: &ReactorHealth) {
        let code = match health {
            ReactorHealth::Starting => 0.0,
            ReactorHealth::Warming { .. } => 1.0,
            ReactorHealth::Live => 2.0,
            ReactorHealth::Degraded { .. } => 3.0,
            ReactorHealth::Stopped => 4.0,
            ReactorHealth::Failed { .. } => 5.0,
        };
        self.health.set(code);
    }

    /// Accumulator readiness (called on health changes only, so registering here is fine).
    pub(crate) fn accumulator_ready(&self, source: &SourceName, ready: bool) {
        gauge!("cloacina_accumulator_ready", "reactor" => self.reactor.clone(), "source" => source.as_str().to_owned())
            .set(if ready { 1.0 } else { 0.0 });
    }
}
