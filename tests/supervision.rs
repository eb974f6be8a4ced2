//! Accumulator supervision (CG-R-18): a failed accumulator is restarted alone, from its
//! factory, with backoff; the reactor shows Degraded meanwhile and is never restarted; after
//! too many consecutive failures the source is Failed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cloacina::prelude::*;
use cloacina::reactor::ReactorHealth;

const PATIENCE: Duration = Duration::from_secs(10);

fn echo(v: Option<&u64>) -> u64 {
    v.copied().unwrap_or(0)
}

fn graph() -> CompiledGraph {
    GraphBuilder::new("sup")
        .node("echo", (source::<u64>("x"),), echo)
        .build()
        .expect("graph")
}

/// Emits the shared counter's next values, `limit` of them, then panics (if `panic_after`)
/// or waits for shutdown.
struct Counting {
    next: Arc<AtomicU64>,
    limit: u64,
    panic_after: bool,
}

impl Accumulator for Counting {
    type Output = u64;

    async fn run(self, ctx: AccumulatorContext<u64>) -> Result<(), AccumulatorError> {
        ctx.set_health(AccumulatorHealth::Live);
        for _ in 0..self.limit {
            let v = self.next.fetch_add(1, Ordering::SeqCst);
            ctx.emit(v).await?;
        }
        if self.panic_after {
            // Long enough for the reactor to have seen this source Live and fired.
            tokio::time::sleep(Duration::from_millis(50)).await;
            panic!("source broke after {} events", self.limit);
        }
        ctx.shutdown_requested().await;
        ctx.set_health(AccumulatorHealth::Stopped);
        Ok(())
    }
}

fn fast() -> RestartPolicy {
    RestartPolicy {
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(400),
        max_failures: 5,
    }
}

#[tokio::test]
async fn a_panicking_accumulator_is_restarted_alone_and_events_keep_firing() {
    let next = Arc::new(AtomicU64::new(1));
    let made = Arc::new(AtomicU64::new(0));
    let (n, m) = (Arc::clone(&next), Arc::clone(&made));
    let engine = EmbeddedGraph::builder(graph())
        .strategy(InputStrategy::Sequential)
        .restart_policy(fast())
        .accumulator_factory("x", move || {
            let first = m.fetch_add(1, Ordering::SeqCst) == 0;
            Counting {
                next: Arc::clone(&n),
                limit: if first { 2 } else { 8 },
                panic_after: first,
            }
        })
        .start()
        .expect("start");
    let mut sub = engine.subscribe();
    let mut health = engine.reactor().health_watch();
    let mut values = Vec::new();
    let mut saw_degraded = false;
    let mut ids = Vec::new();
    tokio::time::timeout(PATIENCE, async {
        while values.len() < 10 {
            tokio::select! {
                f = sub.recv() => {
                    let f = f.expect("open").expect("not lagged");
                    ids.push(f.id);
                    if let GraphResult::Completed { outputs } = &f.result {
                        values.push(*outputs.get::<u64>("echo").expect("echo"));
                    }
                }
                changed = health.changed() => {
                    changed.expect("reactor alive");
                    if matches!(*health.borrow_and_update(), ReactorHealth::Degraded { .. }) {
                        saw_degraded = true;
                    }
                }
            }
        }
    })
    .await
    .expect("every event fires");
    assert_eq!(
        values,
        (1..=10).collect::<Vec<_>>(),
        "later events still fire"
    );
    assert_eq!(
        ids,
        (1..=10).collect::<Vec<_>>(),
        "one reactor throughout: firing ids never restart"
    );
    assert!(
        saw_degraded,
        "the reactor showed Degraded while the source restarted"
    );
    assert_eq!(made.load(Ordering::SeqCst), 2, "one restart");
    let metrics = &engine.accumulator_metrics()[0].1;
    assert_eq!(metrics.restarts(), 1);
    assert_eq!(metrics.failures(), 1);
    // Back to Live once the new instance runs.
    tokio::time::timeout(PATIENCE, async {
        while !matches!(*health.borrow_and_update(), ReactorHealth::Live) {
            health.changed().await.expect("reactor alive");
        }
    })
    .await
    .expect("Live again");
    engine.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn consecutive_failures_mark_the_source_failed_with_backoff_between_them() {
    let made = Arc::new(AtomicU64::new(0));
    let m = Arc::clone(&made);
    let started = std::time::Instant::now();
    let engine = EmbeddedGraph::builder(graph())
        .restart_policy(RestartPolicy {
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(40),
            max_failures: 3,
        })
        .accumulator_factory("x", move || {
            m.fetch_add(1, Ordering::SeqCst);
            // Fails before emitting anything: no progress, so the failures are consecutive.
            Counting {
                next: Arc::new(AtomicU64::new(0)),
                limit: 0,
                panic_after: true,
            }
        })
        .start()
        .expect("start");
    tokio::time::timeout(PATIENCE, async {
        loop {
            let h = engine.accumulator_health();
            if h[0].1 == AccumulatorHealth::Failed {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the source is marked Failed");
    // Backoffs of 20 ms then 40 ms separate the three instances.
    assert!(started.elapsed() >= Duration::from_millis(60));
    assert_eq!(made.load(Ordering::SeqCst), 3);
    assert_eq!(engine.accumulator_metrics()[0].1.restarts(), 2);
    // Never Live (it never stayed up long enough to warm the reactor): Warming or Degraded.
    assert!(
        !matches!(engine.reactor().health(), ReactorHealth::Live),
        "{:?}",
        engine.reactor().health()
    );
    let report = engine.shutdown().await.expect("shutdown");
    assert_eq!(report.accumulator_errors.len(), 1, "{report:?}");
}

#[tokio::test]
async fn one_instance_is_not_restarted() {
    let engine = EmbeddedGraph::builder(graph())
        .restart_policy(fast())
        .accumulator(
            "x",
            Counting {
                next: Arc::new(AtomicU64::new(1)),
                limit: 1,
                panic_after: true,
            },
        )
        .start()
        .expect("start");
    tokio::time::timeout(PATIENCE, async {
        while engine.accumulator_health()[0].1 != AccumulatorHealth::Failed {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("Failed: nothing to restart it from");
    let report = engine.shutdown().await.expect("shutdown");
    assert!(
        report.accumulator_errors[0].1.contains("panicked"),
        "{report:?}"
    );
}
