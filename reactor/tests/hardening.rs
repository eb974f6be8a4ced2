//! Regressions and additions of the engine-hardening work: commands take in every boundary
//! already sent (not only the first batch), `Durability::None` restarts number boundaries after
//! the last live-cache firing, blocking senders on OS threads, `Subscription::try_recv`, and
//! the low-latency (dedicated spinning thread) mode.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cloacina_graph_core::{source, CompiledGraph, GraphBuilder, GraphResult, InputCache};
use cloacina_ledger::{FiringQuery, Ledger, SledLedger};
use cloacina_reactor::{
    Durability, Firing, InputStrategy, LowLatency, ReactorHandle, Subscription, TryRecvError,
};

mod common;

const PATIENCE: Duration = Duration::from_secs(10);

fn echo(x: Option<&u64>) -> u64 {
    x.copied().unwrap_or(0)
}

fn echo_graph() -> Arc<CompiledGraph> {
    Arc::new(
        GraphBuilder::new("echo")
            .node("echo", (source::<u64>("x"),), echo)
            .build()
            .expect("graph"),
    )
}

fn value(f: &Firing) -> u64 {
    match &f.result {
        GraphResult::Completed { outputs } => *outputs.get::<u64>("echo").expect("echo"),
        GraphResult::Error(e) => panic!("firing failed: {e}"),
    }
}

async fn next(sub: &mut Subscription) -> Arc<Firing> {
    match tokio::time::timeout(PATIENCE, sub.recv()).await {
        Ok(Some(Ok(f))) => f,
        other => panic!("expected a firing, got {other:?}"),
    }
}

/// `send(1..=1000).await` then `force_fire()` used to fire on 257: only the first batch (256)
/// was taken in before the command.
#[tokio::test]
async fn force_fire_after_many_sends_sees_every_boundary() {
    for strategy in [InputStrategy::Latest, InputStrategy::Sequential] {
        let r = ReactorHandle::builder(echo_graph())
            .strategy(strategy)
            .spawn()
            .expect("spawn");
        r.pause().await.expect("pause");
        let x = r.sender::<u64>("x").expect("sender");
        for i in 1..=1000u64 {
            x.send(i).await.expect("send");
        }
        let fired = r.force_fire().await.expect("force_fire");
        match strategy {
            // Paused Sequential: everything queued, the cache still empty.
            InputStrategy::Sequential => {
                let state = r.state().await.expect("state");
                assert_eq!(state.queued.len(), 1000, "{strategy:?}");
            }
            InputStrategy::Latest => assert_eq!(value(&fired), 1000, "{strategy:?}"),
        }
        r.resume().await.expect("resume");
        for i in 1001..=2000u64 {
            x.send(i).await.expect("send");
        }
        let fired = r.force_fire().await.expect("force_fire");
        assert_eq!(value(&fired), 2000, "{strategy:?}");
        let state = r.state().await.expect("state");
        assert!(state.queued.is_empty(), "{strategy:?}");
        assert_eq!(
            state.cache.get::<u64>("x").map(|v| v.ok().copied()),
            Some(Some(2000))
        );
        r.shutdown().await.expect("shutdown");
    }
}

/// Under `Durability::None` a restart whose last recorded firing was a `fire_with` numbered new
/// boundaries from that firing's caller-side sequence numbers.
#[tokio::test]
async fn none_restart_after_fire_with_continues_live_numbering() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger: Arc<dyn Ledger> = Arc::new(SledLedger::open(dir.path().join("l")).expect("sled"));
    let spawn = || {
        ReactorHandle::builder(echo_graph())
            .strategy(InputStrategy::Sequential)
            .ledger(Arc::clone(&ledger), 1024)
            .durability(Durability::None)
            .spawn()
            .expect("spawn")
    };
    let r = spawn();
    let x = r.sender::<u64>("x").expect("sender");
    for i in 1..=5u64 {
        x.send(i).await.expect("send");
    }
    let mut supplied = InputCache::new();
    supplied.insert("x", cloacina_graph_core::Boundary::new(9_999, 7u64));
    r.fire_with(supplied).await.expect("fire_with");
    r.shutdown().await.expect("shutdown");

    let r = spawn();
    let x = r.sender::<u64>("x").expect("sender");
    x.send(6).await.expect("send");
    r.shutdown().await.expect("shutdown");

    let firings = ledger
        .firings(&FiringQuery::reactor("echo"))
        .await
        .expect("firings");
    let live: Vec<u64> = firings
        .iter()
        .filter(|f| f.trigger.on_live_cache())
        .map(|f| f.inputs[0].1)
        .collect();
    assert_eq!(
        live,
        vec![1, 2, 3, 4, 5, 6],
        "live inputs numbered on, no repeat"
    );
    let ids: Vec<u64> = firings.iter().map(|f| f.firing_id).collect();
    assert_eq!(ids, vec![1, 2, 3, 4, 5, 6, 7]);
}

/// A plain OS thread feeds a reactor with `send_blocking`; every boundary fires once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn os_thread_producer_with_send_blocking() {
    let r = ReactorHandle::builder(echo_graph())
        .strategy(InputStrategy::Sequential)
        .inbound_capacity(8)
        .spawn()
        .expect("spawn");
    let mut sub = r.subscribe();
    let x = r.sender::<u64>("x").expect("sender");
    let producer = std::thread::spawn(move || {
        for i in 1..=5_000u64 {
            x.send_blocking(i).expect("send");
        }
    });
    for i in 1..=5_000u64 {
        assert_eq!(value(&*next(&mut sub).await), i);
    }
    producer.join().expect("producer");
    r.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn try_recv_reports_empty_then_firings_then_closed() {
    let r = ReactorHandle::builder(echo_graph()).spawn().expect("spawn");
    let mut sub = r.subscribe();
    assert!(matches!(sub.try_recv(), Err(TryRecvError::Empty)));
    r.sender::<u64>("x")
        .expect("sender")
        .send(3)
        .await
        .expect("send");
    r.force_fire().await.expect("force_fire"); // the criteria firing was delivered before it
    let first = sub.try_recv().expect("a firing is waiting");
    assert_eq!(value(&first), 3);
    assert_eq!(value(&sub.try_recv().expect("the forced one")), 3);
    assert!(matches!(sub.try_recv(), Err(TryRecvError::Empty)));
    r.shutdown().await.expect("shutdown");
    assert!(matches!(sub.try_recv(), Err(TryRecvError::Closed)));
}

static SLEPT: AtomicU64 = AtomicU64::new(0);

fn slow_echo(x: Option<&u64>) -> impl std::future::Future<Output = u64> + Send + 'static {
    let v = x.copied().unwrap_or(0);
    async move {
        tokio::time::sleep(Duration::from_millis(1)).await;
        SLEPT.fetch_add(1, Ordering::Relaxed);
        v
    }
}

/// The low-latency mode: the loop runs on a dedicated thread (its async nodes and timers on a
/// runtime of that thread), takes boundaries from OS threads and tasks, serves commands, and
/// shuts down cleanly, firing everything queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_latency_mode_fires_everything_in_order_and_shuts_down() {
    let graph = Arc::new(
        GraphBuilder::new("slow")
            .async_node("echo", (source::<u64>("x"),), slow_echo)
            .build()
            .expect("graph"),
    );
    let r = ReactorHandle::builder(graph)
        .strategy(InputStrategy::Sequential)
        .low_latency(LowLatency {
            spin: Duration::from_micros(200),
        })
        .spawn()
        .expect("spawn");
    let mut sub = r.subscribe();
    let x = r.sender::<u64>("x").expect("sender");
    let from_thread = x.clone();
    let producer = std::thread::spawn(move || {
        for i in 1..=200u64 {
            from_thread.send_blocking(i).expect("send");
            if i % 50 == 0 {
                // Let the reactor run out of spin and park, then wake it again.
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    });
    for i in 1..=200u64 {
        assert_eq!(value(&*next(&mut sub).await), i);
    }
    producer.join().expect("producer");
    x.send(201).await.expect("send from a task");
    assert_eq!(value(&*next(&mut sub).await), 201);
    r.pause().await.expect("pause");
    for i in 202..=210u64 {
        x.send(i).await.expect("send");
    }
    let state = r.state().await.expect("state");
    assert_eq!(state.queued.len(), 9);
    r.resume().await.expect("resume");
    let report = r.shutdown().await.expect("shutdown");
    assert_eq!(report.fires, 210);
    assert_eq!(report.unfired_queued, 0);
    assert!(SLEPT.load(Ordering::Relaxed) >= 210);
    assert!(r.sender::<u64>("x").expect("sender").is_closed());
}

/// When the writer gives a batch up, an idle reactor turns Degraded and counts the loss at
/// once, not when the next boundary happens to arrive.
#[tokio::test]
async fn idle_reactor_reports_a_given_up_batch_at_once() {
    let r = ReactorHandle::builder(echo_graph())
        .ledger(
            Arc::new(common::BrokenStore(cloacina_ledger::MemoryLedger::new())),
            64,
        )
        .spawn()
        .expect("spawn");
    r.sender::<u64>("x")
        .expect("sender")
        .send(1)
        .await
        .expect("send");
    let mut health = r.health_watch();
    let degraded = tokio::time::timeout(PATIENCE, async {
        loop {
            if matches!(
                *health.borrow_and_update(),
                cloacina_reactor::ReactorHealth::Degraded { .. }
            ) {
                return;
            }
            health.changed().await.expect("reactor alive");
        }
    })
    .await;
    assert!(degraded.is_ok(), "still {:?}", r.health());
    assert!(r.stats().ledger_lost > 0, "{:?}", r.stats());
    r.shutdown().await.expect("shutdown");
}

/// A reactor restarting over a hole in its recorded boundaries (a batch its writer gave up
/// in an earlier life) still starts, and fires what the ledger holds, in order; a plain read
/// of the same range fails naming the hole.
#[tokio::test]
async fn restart_over_a_hole_in_the_boundaries_starts_and_fires_what_is_there() {
    use cloacina_ledger::{BoundaryQuery, BoundaryRecord, Commit, LedgerError, Record};
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger: Arc<dyn Ledger> = Arc::new(SledLedger::open(dir.path().join("l")).expect("sled"));
    let records: Vec<Record> = [1u64, 2, 3, 6, 7]
        .iter()
        .map(|&seq| {
            Record::Boundary(BoundaryRecord {
                reactor: "echo".into(),
                seq,
                source: "x".into(),
                received_at_unix_us: 1_700_000_000_000_000,
                value: cloacina_graph_core::codec::encode(&(seq * 10)).expect("encode"),
            })
        })
        .collect();
    ledger
        .append(&records, Commit::Durable)
        .await
        .expect("append");
    match ledger.boundaries(&BoundaryQuery::reactor("echo")).await {
        Err(LedgerError::Gap { gap, .. }) => assert_eq!((gap.after, gap.before), (3, 6)),
        other => panic!("expected Gap, got {other:?}"),
    }

    let r = ReactorHandle::builder(echo_graph())
        .strategy(InputStrategy::Sequential)
        .ledger(Arc::clone(&ledger), 1024)
        .durability(Durability::Sync)
        .spawn()
        .expect("spawn");
    let x = r.sender::<u64>("x").expect("sender");
    x.send(80).await.expect("send");
    r.shutdown().await.expect("shutdown");
    let inputs: Vec<u64> = ledger
        .firings(&FiringQuery::reactor("echo"))
        .await
        .expect("firings, numbered without a hole")
        .iter()
        .map(|f| f.inputs[0].1)
        .collect();
    assert_eq!(inputs, vec![1, 2, 3, 6, 7, 8]);
}
