//! The delivery contract: a source's watermark counts its boundaries consumed by a completed
//! firing and, with a ledger, recorded; it never runs ahead of either, and stops for good
//! when the ledger loses records.

use std::sync::Arc;
use std::time::Duration;

use cloacina_graph_core::{source, CompiledGraph, GraphBuilder};
use cloacina_ledger::{BoundaryQuery, FiringQuery, Ledger, SledLedger};
use cloacina_reactor::{InputStrategy, ReactorHandle};
use tokio::sync::Semaphore;

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

/// A graph whose one node returns its input, first waiting for a permit of `gate` when
/// `waits(input)`.
fn gated_graph(gate: &Arc<Semaphore>, waits: fn(u64) -> bool) -> Arc<CompiledGraph> {
    let g = Arc::clone(gate);
    Arc::new(
        GraphBuilder::new("gated")
            .async_node("wait", (source::<u64>("x"),), move |x: Option<&u64>| {
                let (v, g) = (x.copied().unwrap_or(0), Arc::clone(&g));
                async move {
                    if waits(v) {
                        g.acquire().await.expect("gate").forget();
                    }
                    v
                }
            })
            .build()
            .expect("graph"),
    )
}

/// Waits until `d` reaches `n` (or fails after PATIENCE).
async fn reach(d: &cloacina_accumulators::Delivered, n: u64) {
    let got = tokio::time::timeout(PATIENCE, async {
        let mut seen = d.get();
        while seen < n {
            seen = d.wait_past(seen).await;
        }
        seen
    })
    .await;
    assert_eq!(got.ok(), Some(n), "watermark at {}", d.get());
}

#[tokio::test]
async fn sequential_and_latest_count_every_boundary_sent_once_fired() {
    for strategy in [InputStrategy::Sequential, InputStrategy::Latest] {
        let r = ReactorHandle::builder(echo_graph())
            .strategy(strategy)
            .spawn()
            .expect("spawn");
        let x = r.sender::<u64>("x").expect("sender");
        for i in 1..=1000 {
            x.send(i).await.expect("send");
        }
        // Latest coalesces: the firing that took the last value consumed all 1000.
        reach(x.delivered(), 1000).await;
        assert_eq!(
            x.delivered().get(),
            1000,
            "{strategy:?}: never past what was sent"
        );
        r.shutdown().await.expect("shutdown");
    }
}

/// A firing that has not completed consumes nothing; each completion moves the watermark by
/// the boundaries that firing took.
#[tokio::test]
async fn the_watermark_waits_for_the_firing_to_complete() {
    let gate = Arc::new(Semaphore::new(0));
    let graph = gated_graph(&gate, |_| true);
    let r = ReactorHandle::builder(graph)
        .strategy(InputStrategy::Sequential)
        .spawn()
        .expect("spawn");
    let x = r.sender::<u64>("x").expect("sender");
    for i in 1..=3 {
        x.send(i).await.expect("send");
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(x.delivered().get(), 0, "no firing has completed");
    gate.add_permits(1);
    reach(x.delivered(), 1).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(x.delivered().get(), 1, "the second firing is still running");
    gate.add_permits(2);
    reach(x.delivered(), 3).await;
    r.shutdown().await.expect("shutdown");
}

/// With a ledger, a boundary counts as done only once the firing that consumed it is in the
/// store: whenever the watermark reads k, the ledger already holds a firing on seq >= k.
#[tokio::test]
async fn with_a_ledger_the_watermark_follows_the_recorded_firings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger: Arc<dyn Ledger> = Arc::new(SledLedger::open(dir.path().join("l")).expect("sled"));
    let r = ReactorHandle::builder(echo_graph())
        .strategy(InputStrategy::Sequential)
        .ledger(Arc::clone(&ledger), 64)
        .spawn()
        .expect("spawn");
    let x = r.sender::<u64>("x").expect("sender");
    let sender = {
        let x = x.clone();
        tokio::spawn(async move {
            for i in 1..=5000 {
                x.send(i).await.expect("send");
            }
        })
    };
    let mut seen = 0;
    let mut checks = 0;
    while seen < 5000 {
        seen = tokio::time::timeout(PATIENCE, x.delivered().wait_past(seen))
            .await
            .expect("the watermark moves");
        let recorded = ledger
            .firings(&FiringQuery::reactor("echo"))
            .await
            .expect("read")
            .last()
            .map_or(0, |f| f.inputs[0].1);
        assert!(
            recorded >= seen,
            "watermark {seen} ahead of the ledger's last firing (on seq {recorded})"
        );
        checks += 1;
    }
    sender.await.expect("sender");
    assert!(checks >= 1);
    r.shutdown().await.expect("shutdown");
    assert_eq!(x.delivered().get(), 5000);
}

/// A ledger that loses records stops the watermark: what was not recorded must not be
/// committed anywhere. Firings (and subscribers) go on.
#[tokio::test]
async fn a_lost_ledger_batch_stops_the_watermark() {
    let r = ReactorHandle::builder(echo_graph())
        .strategy(InputStrategy::Sequential)
        .ledger(
            Arc::new(common::BrokenStore(cloacina_ledger::MemoryLedger::new())),
            64,
        )
        .spawn()
        .expect("spawn");
    let mut sub = r.subscribe();
    let x = r.sender::<u64>("x").expect("sender");
    for i in 1..=20 {
        x.send(i).await.expect("send");
    }
    for _ in 0..20 {
        let f = tokio::time::timeout(PATIENCE, sub.recv())
            .await
            .expect("a firing");
        assert!(matches!(f, Some(Ok(_))), "{f:?}");
    }
    // Long enough for the writer to try (and give up) every batch.
    tokio::time::timeout(PATIENCE, async {
        while r.stats().ledger_lost < 20 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the writer gives the batches up");
    assert_eq!(x.delivered().get(), 0);
    r.shutdown().await.expect("shutdown");
    assert_eq!(x.delivered().get(), 0, "not even at shutdown");
}

/// A value its codec refuses: the ledger writer builds the records, so the refusal happens
/// there; it must still be counted (and stop the watermark) while the rest is recorded.
#[derive(Debug, Clone, serde::Deserialize)]
struct Refused(u64);

impl serde::Serialize for Refused {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 == 7 {
            return Err(serde::ser::Error::custom("seven is not encodable"));
        }
        s.serialize_u64(self.0)
    }
}

#[tokio::test]
async fn a_boundary_that_cannot_be_encoded_is_counted_lost_and_the_rest_recorded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger: Arc<dyn Ledger> = Arc::new(SledLedger::open(dir.path().join("l")).expect("sled"));
    let graph = Arc::new(
        GraphBuilder::new("refusing")
            .node("v", (source::<Refused>("x"),), |x: Option<&Refused>| {
                x.map_or(0, |r| r.0)
            })
            .build()
            .expect("graph"),
    );
    let r = ReactorHandle::builder(graph)
        .strategy(InputStrategy::Sequential)
        .ledger(Arc::clone(&ledger), 64)
        .spawn()
        .expect("spawn");
    let mut sub = r.subscribe();
    let x = r.sender::<Refused>("x").expect("sender");
    for i in 1..=10 {
        x.send(Refused(i)).await.expect("send");
    }
    for _ in 0..10 {
        let f = tokio::time::timeout(PATIENCE, sub.recv()).await;
        assert!(matches!(f, Ok(Some(Ok(_)))), "{f:?}");
    }
    let report = r.shutdown().await.expect("shutdown");
    assert_eq!(report.ledger_lost, 1, "{report:?}");
    let seqs: Vec<u64> = ledger
        .boundaries(&BoundaryQuery::reactor("refusing").allow_gaps())
        .await
        .expect("read")
        .iter()
        .map(|b| b.seq)
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6, 8, 9, 10]);
    let firings = ledger
        .firings(&FiringQuery::reactor("refusing"))
        .await
        .expect("read");
    assert_eq!(firings.len(), 10, "every firing is recorded");
    assert!(
        x.delivered().get() < 7,
        "the watermark never passes what was lost: {}",
        x.delivered().get()
    );
}

/// A Sequential backlog's firings reach a subscriber in order, every one of them, the
/// backlog's last one included.
#[tokio::test]
async fn a_backlog_reaches_subscribers_in_order_to_its_last_firing() {
    let r = ReactorHandle::builder(echo_graph())
        .strategy(InputStrategy::Sequential)
        .spawn()
        .expect("spawn");
    let mut sub = r.subscribe();
    let x = r.sender::<u64>("x").expect("sender");
    for round in 0..3u64 {
        // Queued at once: the reactor works through them as one backlog.
        for i in 1..=500 {
            x.try_send(round * 1000 + i).expect("room");
        }
        for i in 1..=500 {
            let f = tokio::time::timeout(PATIENCE, sub.recv())
                .await
                .expect("every firing arrives, the backlog's last one too")
                .expect("open")
                .expect("not lagged");
            let out = match &f.result {
                cloacina_graph_core::GraphResult::Completed { outputs } => {
                    outputs.get::<u64>("echo").copied()
                }
                other => panic!("{other:?}"),
            };
            assert_eq!(out, Some(round * 1000 + i), "in order");
        }
    }
    r.shutdown().await.expect("shutdown");
}

/// Firings held for a run (see the reactor's delivery docs) do not wait for a later firing
/// whose graph waits: the fast firings of a backlog reach the subscriber while a slow one is
/// still running, and a forced firing is in the queue by the time `force_fire` returns.
#[tokio::test]
async fn held_firings_go_out_before_a_waiting_graph_and_forced_ones_at_once() {
    let gate = Arc::new(Semaphore::new(0));
    let graph = gated_graph(&gate, |v| v == 100);
    let r = ReactorHandle::builder(graph)
        .strategy(InputStrategy::Sequential)
        .spawn()
        .expect("spawn");
    let mut sub = r.subscribe();
    let x = r.sender::<u64>("x").expect("sender");
    // One backlog: 1..=99 fire at once, 100 waits for the gate.
    for i in 1..=100 {
        x.try_send(i).expect("room");
    }
    let output = |f: &cloacina_reactor::Firing| match &f.result {
        cloacina_graph_core::GraphResult::Completed { outputs } => {
            outputs.get::<u64>("wait").copied()
        }
        other => panic!("{other:?}"),
    };
    for i in 1..=99 {
        let f = tokio::time::timeout(PATIENCE, sub.recv())
            .await
            .expect("the fast firings arrive while firing 100 waits")
            .expect("open")
            .expect("not lagged");
        assert_eq!(output(&f), Some(i), "in order");
    }
    // One permit for firing 100, one for the forced firing below (it sees 100 again).
    gate.add_permits(2);
    let f = tokio::time::timeout(PATIENCE, sub.recv())
        .await
        .expect("firing 100 arrives once its graph completes")
        .expect("open")
        .expect("not lagged");
    assert_eq!(output(&f), Some(100));
    // A forced firing is delivered before force_fire returns: no waiting needed.
    let forced = r.force_fire().await.expect("forced");
    let got = sub.try_recv().expect("already in the queue");
    assert_eq!(got.id, forced.id);
    assert_eq!(output(&got), Some(100));
    r.shutdown().await.expect("shutdown");
}
