//! CG-R-14 / CG-R-17: a reactor started on the ledger of an earlier one resumes with its cache,
//! dirty flags, Sequential queue, sequence numbers and firing ids; `Sync` senders return only
//! once their boundary is durable. Run against a real sled store on disk.

use std::sync::Arc;
use std::time::Duration;

use cloacina_graph_core::{source, CompiledGraph, GraphBuilder, GraphResult};
use cloacina_ledger::{
    BoundaryQuery, BoundaryRecord, Commit, FiringOutcome, FiringQuery, FiringRecord, FiringTrigger,
    Ledger, Record, SledLedger,
};
use cloacina_reactor::{
    Durability, Firing, InputStrategy, ReactionCriteria, ReactorError, ReactorHandle, ReactorState,
    Subscription,
};

const PATIENCE: Duration = Duration::from_secs(10);

fn pair_graph() -> Arc<CompiledGraph> {
    Arc::new(
        GraphBuilder::new("pair")
            .node(
                "sum",
                (source::<u64>("a"), source::<u64>("b")),
                |a: Option<&u64>, b: Option<&u64>| {
                    a.copied().unwrap_or(0) + b.copied().unwrap_or(0)
                },
            )
            .build()
            .expect("graph"),
    )
}

async fn next(sub: &mut Subscription) -> Arc<Firing> {
    match tokio::time::timeout(PATIENCE, sub.recv()).await {
        Ok(Some(Ok(f))) => f,
        other => panic!("expected a firing, got {other:?}"),
    }
}

fn sum(f: &Arc<Firing>) -> u64 {
    match &f.result {
        GraphResult::Completed { outputs } => *outputs.get::<u64>("sum").expect("sum"),
        GraphResult::Error(e) => panic!("firing failed: {e}"),
    }
}

fn cached(state: &ReactorState, source: &str) -> Option<(u64, u64)> {
    state
        .cache
        .boundary(source)
        .map(|b| (b.seq(), *b.get::<u64>().expect("u64")))
}

fn dirty(state: &ReactorState) -> Vec<String> {
    state
        .dirty
        .iter()
        .filter(|(_, d)| *d)
        .map(|(s, _)| s.as_str().to_owned())
        .collect()
}

fn start(
    ledger: &Arc<SledLedger>,
    strategy: InputStrategy,
    durability: Durability,
) -> Result<ReactorHandle, ReactorError> {
    ReactorHandle::builder(pair_graph())
        .name("pair")
        .strategy(strategy)
        .criteria(ReactionCriteria::when_all())
        .ledger(Arc::clone(ledger) as Arc<dyn Ledger>, 1024)
        .durability(durability)
        .spawn()
}

// CG-R-14 acceptance: fire, stop, start a new reactor on the same ledger: its state is the old
// one without any new push; sequence numbers and firing ids continue.
#[tokio::test]
async fn latest_restart_restores_cache_dirty_flags_and_counters() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = Arc::new(SledLedger::open(dir.path().join("l")).expect("sled"));
    let first = start(&ledger, InputStrategy::Latest, Durability::Batched).expect("spawn");
    let mut sub = first.subscribe();
    let (a, b) = (
        first.sender::<u64>("a").expect("a"),
        first.sender::<u64>("b").expect("b"),
    );
    a.send(1).await.expect("send");
    b.send(10).await.expect("send");
    assert_eq!(sum(&next(&mut sub).await), 11);
    // `a` is dirty again (when_all waits for `b`).
    a.send(2).await.expect("send");
    let before = first.state().await.expect("state");
    assert_eq!(dirty(&before), ["a"]);
    first.shutdown().await.expect("shutdown");

    let second = start(&ledger, InputStrategy::Latest, Durability::Batched).expect("respawn");
    let after = second.state().await.expect("state");
    assert_eq!(cached(&after, "a"), Some((3, 2)), "a: seq 3, value 2");
    assert_eq!(cached(&after, "b"), Some((2, 10)));
    assert_eq!(dirty(&after), ["a"], "dirty flags restored");
    assert_eq!(second.stats().recovered_boundaries, 2);
    let mut sub = second.subscribe();
    second
        .sender::<u64>("b")
        .expect("b")
        .send(20)
        .await
        .expect("send");
    let f = next(&mut sub).await;
    assert_eq!(sum(&f), 22, "fires on the restored `a` and the new `b`");
    assert_eq!(f.id, 2, "firing ids continue");
    assert_eq!(f.input_seq("b"), Some(4), "sequence numbers continue");
    second.shutdown().await.expect("shutdown");
    let ids: Vec<u64> = ledger
        .firings(&FiringQuery::reactor("pair"))
        .await
        .expect("read")
        .iter()
        .map(|f| f.firing_id)
        .collect();
    assert_eq!(ids, [1, 2]);
    let seqs: Vec<u64> = ledger
        .boundaries(&BoundaryQuery::reactor("pair"))
        .await
        .expect("read")
        .iter()
        .map(|b| b.seq)
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4], "every boundary recorded once");
}

// CG-R-17 analog: boundaries queued (paused Sequential reactor) when it stopped fire after
// the restart, in order, none lost.
#[tokio::test]
async fn sequential_queue_survives_a_restart_and_is_drained() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = Arc::new(SledLedger::open(dir.path().join("l")).expect("sled"));
    let graph = Arc::new(
        GraphBuilder::new("seq")
            .node("echo", (source::<u64>("x"),), |x: Option<&u64>| {
                x.copied().unwrap_or(0)
            })
            .build()
            .expect("graph"),
    );
    let spawn = || {
        ReactorHandle::builder(Arc::clone(&graph))
            .strategy(InputStrategy::Sequential)
            .ledger(Arc::clone(&ledger) as Arc<dyn Ledger>, 64)
            .spawn()
            .expect("spawn")
    };
    let first = spawn();
    let x = first.sender::<u64>("x").expect("x");
    x.send(1).await.expect("send");
    first.pause().await.expect("pause");
    for v in 2..=6 {
        x.send(v).await.expect("send");
    }
    let report = first.shutdown().await.expect("shutdown");
    assert_eq!(report.unfired_queued, 5);

    // The restored queue drains as soon as the reactor runs (a subscription made after
    // spawning could miss the first of those firings), so read the ledger instead.
    let second = spawn();
    tokio::time::timeout(PATIENCE, async {
        loop {
            let n = ledger
                .firings(&FiringQuery::reactor("seq"))
                .await
                .expect("read")
                .len();
            if n == 6 && second.state().await.expect("state").queued.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the restored queue fires");
    second.shutdown().await.expect("shutdown");
    let firings = ledger
        .firings(&FiringQuery::reactor("seq"))
        .await
        .expect("read");
    let outputs: Vec<u64> = firings
        .iter()
        .map(|f| match &f.outcome {
            FiringOutcome::Completed { outputs } => {
                cloacina_graph_core::codec::decode::<u64>(&outputs[0].1).expect("u64 output")
            }
            FiringOutcome::Failed { error, .. } => panic!("{error}"),
        })
        .collect();
    assert_eq!(
        outputs,
        [1, 2, 3, 4, 5, 6],
        "each queued boundary fired once, in order"
    );
}

/// Writes the records a reactor would have left behind had it been killed (no snapshot).
async fn leave_behind(
    ledger: &dyn Ledger,
    reactor: &str,
    values: &[(u64, &str, u64)],
    fired_through: Option<u64>,
) {
    let mut records: Vec<Record> = values
        .iter()
        .map(|(seq, source, v)| {
            Record::Boundary(BoundaryRecord {
                reactor: reactor.into(),
                seq: *seq,
                source: (*source).into(),
                received_at_unix_us: 1,
                value: cloacina_graph_core::codec::encode(v).expect("encode"),
            })
        })
        .collect();
    if let Some(h) = fired_through {
        records.push(Record::Firing(FiringRecord {
            reactor: reactor.into(),
            firing_id: 7,
            trigger: FiringTrigger::Criteria,
            inputs: values
                .iter()
                .filter(|(s, _, _)| *s <= h)
                .map(|(s, src, _)| ((*src).into(), *s))
                .collect(),
            fired_at_unix_us: 1,
            duration_ns: 1,
            outcome: FiringOutcome::Completed { outputs: vec![] },
        }));
    }
    ledger
        .append(&records, Commit::Durable)
        .await
        .expect("append");
}

// Recovery without a snapshot (a killed reactor): Latest takes the newest boundary per
// source; sources newer than the last firing's inputs are dirty.
#[tokio::test]
async fn latest_recovers_from_boundaries_and_the_last_firing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = Arc::new(SledLedger::open(dir.path().join("l")).expect("sled"));
    leave_behind(
        &*ledger,
        "pair",
        &[(1, "a", 1), (2, "b", 2), (3, "a", 3)],
        Some(2),
    )
    .await;
    let r = start(&ledger, InputStrategy::Latest, Durability::Batched).expect("spawn");
    let state = r.state().await.expect("state");
    assert_eq!(cached(&state, "a"), Some((3, 3)));
    assert_eq!(cached(&state, "b"), Some((2, 2)));
    assert_eq!(dirty(&state), ["a"]);
    assert_eq!(
        state.fires, 0,
        "when_all: only `a` is new, so no firing on restart"
    );
    r.shutdown().await.expect("shutdown");
}

// Sequential without a snapshot: boundaries after the last firing's inputs are queued again
// and fire (at least once across a crash), those before are in the cache.
#[tokio::test]
async fn sequential_recovers_the_unfired_tail_and_fires_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = Arc::new(SledLedger::open(dir.path().join("l")).expect("sled"));
    leave_behind(
        &*ledger,
        "pair",
        &[
            (1, "a", 1),
            (2, "b", 2),
            (3, "a", 3),
            (4, "b", 4),
            (5, "a", 5),
        ],
        Some(2),
    )
    .await;
    let r = ReactorHandle::builder(pair_graph())
        .name("pair")
        .strategy(InputStrategy::Sequential)
        .ledger(Arc::clone(&ledger) as Arc<dyn Ledger>, 64)
        .spawn()
        .expect("spawn");
    r.pause().await.expect("pause");
    r.shutdown().await.expect("shutdown");
    let fired: Vec<Vec<(String, u64)>> = ledger
        .firings(&FiringQuery {
            from_id: Some(8),
            ..FiringQuery::reactor("pair")
        })
        .await
        .expect("read")
        .into_iter()
        .map(|f| f.inputs)
        .collect();
    // Boundaries 3, 4 and 5 each fire once (when_any default for Sequential here), ids from 8.
    assert_eq!(
        fired,
        vec![
            vec![("a".to_owned(), 3), ("b".to_owned(), 2)],
            vec![("a".to_owned(), 3), ("b".to_owned(), 4)],
            vec![("a".to_owned(), 5), ("b".to_owned(), 4)],
        ]
    );
}

// Sync: when `send` returns, the boundary is in the store (read back through another handle
// after the reactor is gone without a clean shutdown).
#[tokio::test]
async fn sync_send_returns_once_the_boundary_is_durable() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = Arc::new(SledLedger::open(dir.path().join("l")).expect("sled"));
    let r = start(&ledger, InputStrategy::Latest, Durability::Sync).expect("spawn");
    let a = r.sender::<u64>("a").expect("a");
    for v in 1..=50u64 {
        a.send(v).await.expect("durable send");
        let stored = ledger
            .boundaries(&BoundaryQuery {
                from_seq: Some(v),
                ..BoundaryQuery::reactor("pair")
            })
            .await
            .expect("read");
        assert_eq!(stored.len(), 1, "boundary {v} is stored when send returns");
    }
    r.shutdown().await.expect("shutdown");
    // A Sync sender of a reactor that stopped gets its value back.
    let err = a.send(99).await.expect_err("stopped");
    assert_eq!(err.into_value(), Some(99));
}

// A ledger holding boundaries of a source the graph does not read is refused, loudly.
#[tokio::test]
async fn recovery_refuses_records_the_graph_cannot_read() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = Arc::new(SledLedger::open(dir.path().join("l")).expect("sled"));
    leave_behind(&*ledger, "pair", &[(1, "zzz", 1)], None).await;
    let r = start(&ledger, InputStrategy::Latest, Durability::Batched).expect("spawn");
    match r.state().await {
        Err(ReactorError::Stopped { .. }) => {}
        other => panic!("expected the reactor to have stopped, got {other:?}"),
    }
    let health = format!("{:?}", r.health());
    assert!(health.contains("zzz"), "{health}");
}

// Replay: the recorded boundaries of a range, re-run through the same graph, give the
// recorded results; a changed graph is caught; supplied firings are skipped.
#[tokio::test]
async fn replay_reproduces_recorded_results_and_catches_a_changed_graph() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = Arc::new(SledLedger::open(dir.path().join("l")).expect("sled"));
    let r = start(&ledger, InputStrategy::Sequential, Durability::Batched).expect("spawn");
    let (a, b) = (
        r.sender::<u64>("a").expect("a"),
        r.sender::<u64>("b").expect("b"),
    );
    for v in 1..=20u64 {
        a.send(v).await.expect("send");
        b.send(v * 100).await.expect("send");
    }
    let mut supplied = cloacina_graph_core::InputCache::new();
    supplied.update("a", 5u64);
    r.fire_with(supplied).await.expect("fire_with");
    r.shutdown().await.expect("shutdown");

    let report = cloacina_reactor::replay(pair_graph(), &*ledger, &FiringQuery::reactor("pair"))
        .await
        .expect("replay");
    assert_eq!(report.replayed, 20, "{report:?}");
    assert_eq!(report.matched, 20, "{report:?}");
    assert!(report.mismatched.is_empty(), "{report:?}");
    assert_eq!(report.skipped, 1, "the supplied firing is skipped");

    // A time range narrows it.
    let all = ledger
        .firings(&FiringQuery::reactor("pair"))
        .await
        .expect("read");
    let window = FiringQuery {
        since_unix_us: Some(all[4].fired_at_unix_us),
        until_unix_us: Some(all[9].fired_at_unix_us),
        ..FiringQuery::reactor("pair")
    };
    let expected = all
        .iter()
        .filter(|f| window.matches(f) && f.trigger != FiringTrigger::Supplied)
        .count() as u64;
    let part = cloacina_reactor::replay(pair_graph(), &*ledger, &window)
        .await
        .expect("replay");
    assert_eq!((part.replayed, part.matched), (expected, expected));

    // Same sources, different arithmetic: every firing with both inputs differs.
    let changed = Arc::new(
        GraphBuilder::new("pair")
            .node(
                "sum",
                (source::<u64>("a"), source::<u64>("b")),
                |a: Option<&u64>, b: Option<&u64>| {
                    a.copied().unwrap_or(0) * 2 + b.copied().unwrap_or(0)
                },
            )
            .build()
            .expect("graph"),
    );
    let report = cloacina_reactor::replay(changed, &*ledger, &FiringQuery::reactor("pair"))
        .await
        .expect("replay");
    assert_eq!(report.replayed, 20);
    assert_eq!(report.mismatched.len(), 20, "{report:?}");
    assert!(report.mismatched[0].detail.contains("sum"), "{report:?}");
}

// A retention policy keeps a long run bounded: after every snapshot old records go, and a
// restart still resumes where the reactor stopped.
#[tokio::test]
async fn retention_policy_bounds_the_ledger_and_restart_still_resumes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = Arc::new(SledLedger::open(dir.path().join("l")).expect("sled"));
    let spawn = || {
        ReactorHandle::builder(pair_graph())
            .name("pair")
            .strategy(InputStrategy::Sequential)
            .ledger(Arc::clone(&ledger) as Arc<dyn Ledger>, 1024)
            .snapshot_every(100)
            .retention(cloacina_reactor::RetentionPolicy {
                keep_last: Some(50),
                max_age: None,
            })
            .spawn()
            .expect("spawn")
    };
    let r = spawn();
    let a = r.sender::<u64>("a").expect("a");
    for v in 1..=2_000u64 {
        a.send(v).await.expect("send");
    }
    let report = r.shutdown().await.expect("shutdown");
    assert_eq!(report.fires, 2_000);
    let stats = r.stats();
    assert!(stats.snapshots >= 5, "{stats:?}");
    assert!(stats.retained_removed > 0, "{stats:?}");
    let kept = ledger
        .boundaries(&BoundaryQuery::reactor("pair"))
        .await
        .expect("read")
        .len();
    assert_eq!(
        kept, 50,
        "after the final snapshot only the newest 50 boundaries are kept"
    );
    let second = spawn();
    let state = second.state().await.expect("state");
    assert_eq!(
        cached(&state, "a"),
        Some((2_000, 2_000)),
        "resumes at the end"
    );
    assert!(state.queued.is_empty());
    second
        .sender::<u64>("a")
        .expect("a")
        .send(2_001)
        .await
        .expect("send");
    second.shutdown().await.expect("shutdown");
    let last = ledger
        .boundaries(&BoundaryQuery {
            from_seq: Some(2_001),
            ..BoundaryQuery::reactor("pair")
        })
        .await
        .expect("read");
    assert_eq!(last.len(), 1, "sequence numbers continue after retention");
}

// Sync with Sequential: each send returns once durable, and every boundary fires once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_sequential_sends_complete_and_fire() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = Arc::new(SledLedger::open(dir.path().join("l")).expect("sled"));
    let r = ReactorHandle::builder(pair_graph())
        .name("pair")
        .strategy(InputStrategy::Sequential)
        .ledger(Arc::clone(&ledger) as Arc<dyn Ledger>, 65_536)
        .durability(Durability::Sync)
        .spawn()
        .expect("spawn");
    let mut sub = r.subscribe();
    let a = r.sender::<u64>("a").expect("a");
    for v in 1..=100u64 {
        tokio::time::timeout(PATIENCE, a.send(v))
            .await
            .unwrap_or_else(|_| panic!("send {v} hung"))
            .expect("durable send");
        assert_eq!(sum(&next(&mut sub).await), v);
    }
    r.shutdown().await.expect("shutdown");
}

// Durability::None records firings only, but a restart still continues their ids: the audit
// trail of a second life is recorded, not refused as conflicting with the first.
#[tokio::test]
async fn none_durability_continues_firing_ids_across_restarts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = Arc::new(SledLedger::open(dir.path().join("l")).expect("sled"));
    for life in 0..2u64 {
        let r = ReactorHandle::builder(pair_graph())
            .name("pair")
            .strategy(InputStrategy::Sequential)
            .ledger(Arc::clone(&ledger) as Arc<dyn Ledger>, 64)
            .durability(Durability::None)
            .spawn()
            .expect("spawn");
        let a = r.sender::<u64>("a").expect("a");
        for v in 1..=3u64 {
            a.send(v).await.expect("send");
        }
        let report = r.shutdown().await.expect("shutdown");
        assert_eq!(
            (
                report.ledger_records,
                report.ledger_lost,
                report.ledger_error
            ),
            (3, 0, None),
            "life {life}"
        );
    }
    let firings = ledger
        .firings(&FiringQuery::reactor("pair"))
        .await
        .expect("read");
    let ids: Vec<u64> = firings.iter().map(|f| f.firing_id).collect();
    assert_eq!(ids, [1, 2, 3, 4, 5, 6]);
    let seqs: Vec<u64> = firings.iter().map(|f| f.inputs[0].1).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6], "input numbering continues too");
    assert!(ledger
        .boundaries(&BoundaryQuery::reactor("pair"))
        .await
        .expect("read")
        .is_empty());
}
