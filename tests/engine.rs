//! Integration tests of the `cloacina` facade: wiring checks, health with real accumulators,
//! batch flushing on the after-fire signal, and graceful shutdown.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cloacina::prelude::*;
use cloacina::Error;

fn sum(batch: Option<&Vec<u64>>) -> u64 {
    batch.map_or(0, |b| b.iter().sum())
}

fn echo(v: Option<&u64>) -> u64 {
    v.copied().unwrap_or(0)
}

fn two_sources() -> CompiledGraph {
    GraphBuilder::new("two")
        .node(
            "both",
            (source::<u64>("a"), source::<String>("b")),
            |a: Option<&u64>, b: Option<&String>| format!("{a:?}/{b:?}"),
        )
        .build()
        .expect("valid graph")
}

async fn next_ok(sub: &mut Subscription) -> Arc<Firing> {
    tokio::time::timeout(Duration::from_secs(5), sub.recv())
        .await
        .expect("a firing within 5 s")
        .expect("stream open")
        .expect("not lagged")
}

// CG-A-03: every wiring mistake is rejected before anything runs, naming the source.
#[tokio::test]
async fn wiring_mistakes_are_rejected_by_name() {
    let err = EmbeddedGraph::builder(two_sources())
        .passthrough::<u64>("a")
        .start()
        .expect_err("b is not fed");
    assert!(matches!(&err, Error::UnfedSource { source_name, .. } if source_name.as_str() == "b"));
    assert!(err.to_string().contains("`b`"), "{err}");

    let err = EmbeddedGraph::builder(two_sources())
        .passthrough::<u64>("a")
        .passthrough::<String>("b")
        .passthrough::<u64>("c")
        .start()
        .expect_err("c is not read");
    assert!(
        matches!(&err, Error::UnknownSource { source_name, .. } if source_name.as_str() == "c")
    );
    assert!(
        err.to_string().contains("a, b"),
        "lists known sources: {err}"
    );

    let err = EmbeddedGraph::builder(two_sources())
        .passthrough::<u64>("a")
        .passthrough::<u32>("b")
        .start()
        .expect_err("b has the wrong type");
    assert!(matches!(&err, Error::SourceType { source_name, .. } if source_name.as_str() == "b"));
    assert!(
        err.to_string().contains("u32") && err.to_string().contains("String"),
        "{err}"
    );

    let err = EmbeddedGraph::builder(two_sources())
        .passthrough::<u64>("a")
        .passthrough::<u64>("a")
        .passthrough::<String>("b")
        .start()
        .expect_err("a is fed twice");
    assert!(
        matches!(&err, Error::DuplicateAccumulator { source_name } if source_name.as_str() == "a")
    );

    let engine = EmbeddedGraph::builder(two_sources())
        .passthrough::<u64>("a")
        .passthrough::<String>("b")
        .start()
        .expect("valid wiring");
    assert!(
        engine.sender::<String>("a").is_err(),
        "typed sender checks the type"
    );
    assert!(
        engine.batch_sender::<u64>("a").is_err(),
        "a is not a batch source"
    );
    engine.shutdown().await.expect("shutdown");
}

// CG-R-12 with real accumulators: passthrough (SocketOnly) + polling (Live) => reactor Live.
#[tokio::test]
async fn reactor_goes_live_when_accumulators_are_ready() {
    let engine = EmbeddedGraph::builder(two_sources())
        .passthrough::<u64>("a")
        .polling("b", Duration::from_millis(10), || async {
            Some("x".to_string())
        })
        .start()
        .expect("start");
    let mut health = engine.reactor().health_watch();
    tokio::time::timeout(
        Duration::from_secs(5),
        health.wait_for(|h| *h == ReactorHealth::Live),
    )
    .await
    .expect("live within 5 s")
    .expect("watch open");
    let states = engine.accumulator_health();
    assert_eq!(states.len(), 2);
    assert!(states.iter().all(|(_, h)| h.is_ready()), "{states:?}");
    let reactor = engine.reactor().clone();
    engine.shutdown().await.expect("shutdown");
    assert_eq!(reactor.health(), ReactorHealth::Stopped);
    assert!(
        reactor.force_fire().await.is_err(),
        "a stopped reactor refuses commands"
    );
}

// CG-R-13 / CG-A-08 through the facade: a batch with no timer flushes after each successful
// firing of the reactor; the batch's boundary is one Vec.
#[tokio::test]
async fn batch_flushes_after_each_firing() {
    let graph = GraphBuilder::new("batched")
        .node("sum", (source::<Vec<u64>>("items"),), sum)
        .node("tick", (source::<u64>("trigger"),), echo)
        .build()
        .expect("graph");
    let engine = EmbeddedGraph::builder(graph)
        .strategy(InputStrategy::Sequential)
        .passthrough::<u64>("trigger")
        .batch::<u64>(
            "items",
            BatchConfig {
                max_size: 1000,
                flush_interval: None,
                capacity: 64,
            },
        )
        .start()
        .expect("start");
    let mut results = engine.subscribe();
    let items = engine.batch_sender::<u64>("items").expect("batch sender");
    let trigger = engine.sender::<u64>("trigger").expect("sender");
    for i in 1..=5 {
        items.send(i).await.expect("send");
    }
    // Wait until the batch has taken the five events in, then fire.
    let batch_events = || {
        engine
            .accumulator_metrics()
            .iter()
            .find(|(s, _)| s.as_str() == "items")
            .map_or(0, |(_, m)| m.events())
    };
    tokio::time::timeout(Duration::from_secs(5), async {
        while batch_events() < 5 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("batch took the events in");
    trigger.send(1).await.expect("send");
    let first = next_ok(&mut results).await;
    assert_eq!(first.result.output::<u64>("tick"), Some(&1));
    // The firing's after-fire signal flushed the batch: the next firing sees the sum.
    let second = next_ok(&mut results).await;
    assert_eq!(second.result.output::<u64>("sum"), Some(&15));
    // Sequence numbers are reactor-wide: the trigger was boundary 1, the batch boundary 2.
    assert_eq!(
        second.input_seq("items"),
        Some(2),
        "one boundary for five events"
    );
    engine.shutdown().await.expect("shutdown");
}

// Graceful shutdown: what the batch still holds is flushed and fired before shutdown returns.
#[tokio::test]
async fn shutdown_drains_accumulators_and_fires_what_they_held() {
    static TOTAL: AtomicU64 = AtomicU64::new(0);
    fn add(batch: Option<&Vec<u64>>) -> u64 {
        let s: u64 = batch.map_or(0, |b| b.iter().sum());
        TOTAL.fetch_add(s, Ordering::SeqCst);
        s
    }
    let graph = GraphBuilder::new("drain")
        .node("add", (source::<Vec<u64>>("items"),), add)
        .build()
        .expect("graph");
    let engine = EmbeddedGraph::builder(graph)
        .strategy(InputStrategy::Sequential)
        .batch::<u64>(
            "items",
            BatchConfig {
                max_size: 7,
                flush_interval: None,
                capacity: 4096,
            },
        )
        .start()
        .expect("start");
    let items = engine.batch_sender::<u64>("items").expect("batch sender");
    for i in 1..=1000 {
        items.send(i).await.expect("send");
    }
    let report = engine.shutdown().await.expect("shutdown");
    assert!(
        report.accumulator_errors.is_empty(),
        "{:?}",
        report.accumulator_errors
    );
    assert_eq!(
        TOTAL.load(Ordering::SeqCst),
        500_500,
        "every accepted event was fired"
    );
    assert!(report.reactor.fires >= 1000 / 7);
    assert_eq!(report.reactor.unfired_queued, 0);
    let err = items.send(1).await.expect_err("closed after shutdown");
    assert_eq!(err.into_value(), Some(1), "the value is handed back");
}

// A panicking accumulator is reported, not fatal: the reactor keeps serving the others.
#[tokio::test]
async fn panicking_poll_function_does_not_stop_the_engine() {
    let calls = Arc::new(AtomicU64::new(0));
    let c = Arc::clone(&calls);
    let engine = EmbeddedGraph::builder(two_sources())
        .passthrough::<u64>("a")
        .polling("b", Duration::from_millis(5), move || {
            let n = c.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    panic!("pricing model exploded");
                }
                Some(format!("p{n}"))
            }
        })
        .start()
        .expect("start");
    let mut results = engine.subscribe();
    let a = engine.sender::<u64>("a").expect("sender");
    a.send(7).await.expect("send");
    let mut saw_b = false;
    for _ in 0..50 {
        let f = next_ok(&mut results).await;
        if f.result
            .output::<String>("both")
            .is_some_and(|s| s.contains("Some(\"p"))
        {
            saw_b = true;
            break;
        }
    }
    assert!(saw_b, "polling continued after the panic");
    let failures: u64 = engine
        .accumulator_metrics()
        .iter()
        .map(|(_, m)| m.failures())
        .sum();
    assert_eq!(failures, 1);
    let report = engine.shutdown().await.expect("shutdown");
    assert!(report.accumulator_errors.is_empty());
}

// Shutdown of a paused Sequential engine whose queue is at its limit must not hang: the
// reactor takes in what the accumulators still hold, and reports it as never fired.
#[tokio::test]
async fn shutdown_of_a_paused_full_engine_completes_and_reports() {
    let graph = GraphBuilder::new("paused_full")
        .node("sum", (source::<Vec<u64>>("items"),), sum)
        .build()
        .expect("graph");
    let engine = EmbeddedGraph::builder(graph)
        .strategy(InputStrategy::Sequential)
        .queue_limit(4)
        .inbound_capacity(1)
        .batch::<u64>(
            "items",
            BatchConfig {
                max_size: 1,
                flush_interval: None,
                capacity: 8,
            },
        )
        .start()
        .expect("start");
    engine.reactor().pause().await.expect("pause");
    let items = engine.batch_sender::<u64>("items").expect("batch sender");
    // 4 queued + 1 inbound + 1 held by the blocked batch task + 8 in its queue.
    for i in 0..14u64 {
        items.send(i).await.expect("send");
    }
    let report = tokio::time::timeout(Duration::from_secs(10), engine.shutdown())
        .await
        .expect("shutdown completes")
        .expect("shutdown ok");
    assert_eq!(report.reactor.fires, 0, "paused: nothing fired");
    assert_eq!(
        report.reactor.unfired_queued, 14,
        "every accepted event is accounted for: {report:?}"
    );
}

/// Emits `count` numbers starting after its last checkpoint, checkpointing the position
/// after each emitted one (the way a Kafka accumulator commits offsets).
struct Counter {
    count: u64,
}

impl Accumulator for Counter {
    type Output = u64;

    async fn run(self, ctx: AccumulatorContext<u64>) -> Result<(), AccumulatorError> {
        ctx.set_health(AccumulatorHealth::Live);
        let mut next: u64 = ctx.last_checkpoint("position").await?.unwrap_or(0) + 1;
        for _ in 0..self.count {
            ctx.emit(next).await?;
            ctx.checkpoint("position", &next).await?;
            next += 1;
        }
        ctx.shutdown_requested().await;
        Ok(())
    }
}

// Accumulators checkpoint into the engine's ledger and resume from it: a second engine on
// the same sled store continues where the first stopped, and the reactor's own state too.
#[tokio::test]
async fn accumulator_checkpoints_survive_a_restart() {
    let dir = std::env::temp_dir().join(format!(
        "cloacina-engine-ckpt-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    let url = format!("sled://{}", dir.display());
    let graph = Arc::new(
        GraphBuilder::new("counted")
            .node("seen", (source::<u64>("n"),), |n: Option<&u64>| {
                n.copied().unwrap_or(0)
            })
            .build()
            .expect("graph"),
    );
    for run in 1..=2u64 {
        let ledger = cloacina::ledger::open(&url).await.expect("open ledger");
        let engine = EmbeddedGraph::builder(Arc::clone(&graph))
            .strategy(InputStrategy::Sequential)
            .ledger(Arc::clone(&ledger))
            .accumulator("n", Counter { count: 5 })
            .start()
            .expect("start");
        let reactor = engine.reactor().clone();
        tokio::time::timeout(Duration::from_secs(10), async {
            while reactor.stats().fires < 5 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await
        .expect("five firings");
        let state = reactor.state().await.expect("state");
        assert_eq!(
            state.cache.get::<u64>("n").and_then(Result::ok).copied(),
            Some(run * 5),
            "run {run} resumes counting after the checkpoint"
        );
        engine.shutdown().await.expect("shutdown");
        let checkpoint = ledger
            .checkpoint("counted/n", "position")
            .await
            .expect("read")
            .expect("checkpointed");
        let position: u64 = cloacina::graph::codec::decode(&checkpoint.value).expect("decodes");
        assert_eq!(position, run * 5);
        drop(ledger);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

// An embedded engine with Sync durability: sends return once durable and fire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_sync_engine_acknowledges_and_fires() {
    let dir = std::env::temp_dir().join(format!(
        "cloacina-engine-sync-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    let ledger = cloacina::ledger::open(&format!("sled://{}", dir.display()))
        .await
        .expect("open ledger");
    let graph = Arc::new(
        GraphBuilder::new("synced")
            .node("seen", (source::<u64>("n"),), |n: Option<&u64>| {
                n.copied().unwrap_or(0)
            })
            .build()
            .expect("graph"),
    );
    let engine = EmbeddedGraph::builder(graph)
        .strategy(InputStrategy::Sequential)
        .ledger(ledger)
        .durability(Durability::Sync)
        .passthrough::<u64>("n")
        .start()
        .expect("start");
    let mut results = engine.subscribe();
    let n = engine.sender::<u64>("n").expect("sender");
    for v in 1..=50u64 {
        tokio::time::timeout(Duration::from_secs(10), n.send(v))
            .await
            .unwrap_or_else(|_| panic!("send {v} hung"))
            .expect("durable send");
        assert_eq!(
            next_ok(&mut results).await.result.output::<u64>("seen"),
            Some(&v)
        );
    }
    engine.shutdown().await.expect("shutdown");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A memory ledger that also logs, in append order, what it was given.
struct OrderLog {
    inner: cloacina::ledger::MemoryLedger,
    log: std::sync::Mutex<Vec<String>>,
}

impl cloacina::ledger::Ledger for OrderLog {
    fn backend(&self) -> &'static str {
        "order-log"
    }
    fn append<'a>(
        &'a self,
        records: &'a [cloacina::ledger::Record],
        commit: cloacina::ledger::Commit,
    ) -> cloacina::ledger::LedgerFuture<'a, ()> {
        if let Ok(mut log) = self.log.lock() {
            log.extend(records.iter().map(|r| match r {
                cloacina::ledger::Record::Boundary(b) => format!(
                    "boundary {}",
                    cloacina::graph::codec::decode::<u64>(&b.value).unwrap_or(0)
                ),
                cloacina::ledger::Record::Checkpoint(c) => format!(
                    "checkpoint {}",
                    cloacina::graph::codec::decode::<u64>(&c.value).unwrap_or(0)
                ),
                other => other.describe().split(' ').next().unwrap_or("").to_owned(),
            }));
        }
        self.inner.append(records, commit)
    }
    fn flush(&self) -> cloacina::ledger::LedgerFuture<'_, ()> {
        self.inner.flush()
    }
    fn firings<'a>(
        &'a self,
        q: &'a cloacina::ledger::FiringQuery,
    ) -> cloacina::ledger::LedgerFuture<'a, Vec<cloacina::ledger::FiringRecord>> {
        self.inner.firings(q)
    }
    fn last_firing<'a>(
        &'a self,
        r: &'a str,
    ) -> cloacina::ledger::LedgerFuture<'a, Option<cloacina::ledger::FiringRecord>> {
        self.inner.last_firing(r)
    }
    fn boundaries<'a>(
        &'a self,
        q: &'a cloacina::ledger::BoundaryQuery,
    ) -> cloacina::ledger::LedgerFuture<'a, Vec<cloacina::ledger::BoundaryRecord>> {
        self.inner.boundaries(q)
    }
    fn snapshot<'a>(
        &'a self,
        r: &'a str,
    ) -> cloacina::ledger::LedgerFuture<'a, Option<cloacina::ledger::SnapshotRecord>> {
        self.inner.snapshot(r)
    }
    fn checkpoint<'a>(
        &'a self,
        o: &'a str,
        k: &'a str,
    ) -> cloacina::ledger::LedgerFuture<'a, Option<cloacina::ledger::CheckpointRecord>> {
        self.inner.checkpoint(o, k)
    }
    fn retain<'a>(
        &'a self,
        r: &'a str,
        p: cloacina::ledger::Retention,
    ) -> cloacina::ledger::LedgerFuture<'a, cloacina::ledger::RetainReport> {
        self.inner.retain(r, p)
    }
    fn verify(&self) -> cloacina::ledger::LedgerFuture<'_, cloacina::ledger::VerifyReport> {
        self.inner.verify()
    }
}

// A checkpoint goes through the reactor behind the boundaries emitted before it, so the
// ledger never holds a position ahead of the boundaries it covers (default Batched mode).
#[tokio::test]
async fn checkpoints_are_recorded_after_the_boundaries_they_cover() {
    let ledger = Arc::new(OrderLog {
        inner: cloacina::ledger::MemoryLedger::new(),
        log: std::sync::Mutex::new(Vec::new()),
    });
    let graph = Arc::new(
        GraphBuilder::new("counted")
            .node("seen", (source::<u64>("n"),), |n: Option<&u64>| {
                n.copied().unwrap_or(0)
            })
            .build()
            .expect("graph"),
    );
    let engine = EmbeddedGraph::builder(graph)
        .strategy(InputStrategy::Sequential)
        .ledger(Arc::clone(&ledger) as Arc<dyn cloacina::ledger::Ledger>)
        .accumulator("n", Counter { count: 20 })
        .start()
        .expect("start");
    let reactor = engine.reactor().clone();
    tokio::time::timeout(Duration::from_secs(10), async {
        while reactor.stats().fires < 20 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("twenty firings");
    engine.shutdown().await.expect("shutdown");
    let log = ledger.log.lock().map(|l| l.clone()).unwrap_or_default();
    for n in 1..=20u64 {
        let boundary = log.iter().position(|e| *e == format!("boundary {n}"));
        let checkpoint = log.iter().position(|e| *e == format!("checkpoint {n}"));
        assert!(
            matches!((boundary, checkpoint), (Some(b), Some(c)) if b < c),
            "checkpoint {n} must follow boundary {n}: {log:?}"
        );
    }
}

// A graceful shutdown stops the accumulators one by one; health watchers must not see that as
// a degradation: Live -> Stopped, nothing in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_does_not_flash_degraded() {
    /// Reports Stopped at shutdown, then lingers, as an accumulator flushing to a broker would:
    /// the reactor sees it stopped while the engine is still shutting down.
    struct Lingering;
    impl Accumulator for Lingering {
        type Output = u64;
        async fn run(self, ctx: AccumulatorContext<u64>) -> Result<(), AccumulatorError> {
            ctx.set_health(AccumulatorHealth::Live);
            ctx.shutdown_requested().await;
            ctx.set_health(AccumulatorHealth::Stopped);
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok(())
        }
    }
    let graph = GraphBuilder::new("quiet")
        .node(
            "both",
            (source::<u64>("a"), source::<u64>("b")),
            |a: Option<&u64>, b: Option<&u64>| a.copied().unwrap_or(0) + b.copied().unwrap_or(0),
        )
        .build()
        .expect("graph");
    let engine = EmbeddedGraph::builder(graph)
        .passthrough::<u64>("a")
        .accumulator("b", Lingering)
        .start()
        .expect("start");
    let mut sub = engine.subscribe();
    engine
        .sender::<u64>("a")
        .expect("sender")
        .send(1)
        .await
        .expect("send");
    next_ok(&mut sub).await;
    let mut watch = engine.reactor().health_watch();
    assert_eq!(*watch.borrow_and_update(), ReactorHealth::Live);
    let seen = tokio::spawn(async move {
        let mut seen = Vec::new();
        while watch.changed().await.is_ok() {
            let h = watch.borrow_and_update().clone();
            let stopped = h == ReactorHealth::Stopped;
            seen.push(h);
            if stopped {
                break;
            }
        }
        seen
    });
    engine.shutdown().await.expect("shutdown");
    let seen = tokio::time::timeout(Duration::from_secs(5), seen)
        .await
        .expect("watcher ends")
        .expect("join");
    assert_eq!(seen, vec![ReactorHealth::Stopped], "health went {seen:?}");
}

// The failure policy and the ledger writer's queue are set through the facade's builder.
#[tokio::test]
async fn embedded_builder_sets_failure_policy_and_ledger_queue() {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    fn flaky(v: Option<&u64>) -> u64 {
        if CALLS.fetch_add(1, Ordering::SeqCst) == 0 {
            panic!("first run fails");
        }
        v.copied().unwrap_or(0)
    }
    let graph = GraphBuilder::new("flaky")
        .node("flaky", (source::<u64>("x"),), flaky)
        .build()
        .expect("graph");
    let engine = EmbeddedGraph::builder(graph)
        .ledger(Arc::new(MemoryLedger::new()))
        .ledger_queue(16)
        .on_failure(FailurePolicy::Retry {
            attempts: 2,
            backoff: Duration::from_millis(1),
        })
        .passthrough::<u64>("x")
        .start()
        .expect("start");
    let mut sub = engine.subscribe();
    for i in 0..100u64 {
        engine
            .sender::<u64>("x")
            .expect("sender")
            .send(i)
            .await
            .expect("send");
    }
    let first = next_ok(&mut sub).await;
    assert_eq!(first.attempts, 2, "retried once on the same inputs");
    assert!(matches!(first.result, GraphResult::Completed { .. }));
    let report = engine.shutdown().await.expect("shutdown");
    assert_eq!(report.reactor.ledger_lost, 0);
    assert!(
        report.reactor.ledger_records > 100,
        "a 16-record queue still carries everything"
    );
}
