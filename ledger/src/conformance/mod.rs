//! The one conformance suite every [`Ledger`] backend passes (River's habit: one driver
//! interface, one shared suite). A backend's test instantiates it with one line:
//!
//! ```text
//! cloacina_ledger::conformance::run(&MyHarness { .. }).await;
//! ```
//!
//! The harness must open an empty store the first time. Each check panics with a message
//! naming the backend and what broke, so this module is for tests only.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

mod faulty;
mod workflows;

pub use faulty::FaultyLedger;

use crate::{
    BoundaryQuery, BoundaryRecord, CheckpointRecord, Commit, FiringOutcome, FiringQuery,
    FiringRecord, FiringTrigger, Ledger, LedgerError, Record, RetainReport, Retention,
    SnapshotRecord,
};

/// Opens the backend under test.
pub trait Harness: Sync {
    /// Opens the store; for a persistent backend, the same store every time.
    fn open(&self) -> Pin<Box<dyn Future<Output = Arc<dyn Ledger>> + Send + '_>>;
    /// Whether records survive closing and reopening.
    fn persistent(&self) -> bool;
}

const T0: i64 = 1_700_000_000_000_000;

/// A firing record for tests: completed when `ok`, failed otherwise.
pub fn firing(reactor: &str, id: u64, ok: bool) -> FiringRecord {
    FiringRecord {
        reactor: reactor.into(),
        firing_id: id,
        trigger: match id % 7 {
            0 => FiringTrigger::Forced,
            3 => FiringTrigger::Supplied,
            _ => FiringTrigger::Criteria,
        },
        inputs: vec![("a".into(), id), ("b".into(), id / 2)],
        fired_at_unix_us: T0 + id as i64 * 1_000,
        duration_ns: 1_000 + id,
        outcome: if ok {
            FiringOutcome::Completed {
                outputs: vec![("out".into(), id.to_le_bytes().to_vec())],
            }
        } else {
            FiringOutcome::Failed {
                node: "n".into(),
                error: format!("failure {id}"),
            }
        },
    }
}

/// A boundary record for tests.
pub fn boundary(reactor: &str, seq: u64) -> BoundaryRecord {
    BoundaryRecord {
        reactor: reactor.into(),
        seq,
        source: if seq % 2 == 0 { "even" } else { "odd" }.into(),
        received_at_unix_us: T0 + seq as i64 * 1_000,
        value: seq.to_be_bytes().repeat(1 + (seq % 4) as usize),
    }
}

fn snapshot(reactor: &str, last_seq: u64, next_firing_id: u64) -> SnapshotRecord {
    SnapshotRecord {
        reactor: reactor.into(),
        last_seq,
        next_firing_id,
        taken_at_unix_us: T0 + last_seq as i64,
        cache: vec![boundary(reactor, last_seq - 1), boundary(reactor, last_seq)],
        dirty: vec!["odd".into()],
        queue: vec![boundary(reactor, last_seq + 1)],
    }
}

fn ids(records: &[FiringRecord]) -> Vec<u64> {
    records.iter().map(|f| f.firing_id).collect()
}

fn seqs(records: &[BoundaryRecord]) -> Vec<u64> {
    records.iter().map(|b| b.seq).collect()
}

struct Check<'l> {
    name: &'static str,
    ledger: &'l dyn Ledger,
}

impl Check<'_> {
    async fn append(&self, records: &[Record], commit: Commit) {
        self.ledger
            .append(records, commit)
            .await
            .unwrap_or_else(|e| panic!("{}: append: {e}", self.name));
    }
    // The suite numbers sparsely on purpose (ordering, filters, retention); holes are
    // checked on their own below, through the ledger directly.
    async fn firings(&self, q: FiringQuery) -> Vec<FiringRecord> {
        let q = q.allow_gaps();
        self.ledger
            .firings(&q)
            .await
            .unwrap_or_else(|e| panic!("{}: firings {q:?}: {e}", self.name))
    }
    async fn boundaries(&self, q: BoundaryQuery) -> Vec<BoundaryRecord> {
        let q = q.allow_gaps();
        self.ledger
            .boundaries(&q)
            .await
            .unwrap_or_else(|e| panic!("{}: boundaries {q:?}: {e}", self.name))
    }
    async fn retain(&self, reactor: &str, r: Retention) -> RetainReport {
        self.ledger
            .retain(reactor, r)
            .await
            .unwrap_or_else(|e| panic!("{}: retain: {e}", self.name))
    }
}

/// Runs every check against the backend `harness` opens.
pub async fn run(harness: &dyn Harness) {
    let ledger = harness.open().await;
    let name = ledger.backend();
    let c = Check {
        name,
        ledger: &*ledger,
    };

    // Append and read back each record kind, field for field.
    let fired: Vec<FiringRecord> = (1..=20)
        .map(|id| firing("conf-a", id, id % 3 != 0))
        .collect();
    let received: Vec<BoundaryRecord> = (1..=30).map(|s| boundary("conf-a", s)).collect();
    let mut batch: Vec<Record> = received.iter().cloned().map(Record::Boundary).collect();
    batch.extend(fired.iter().cloned().map(Record::Firing));
    let checkpoint = CheckpointRecord {
        owner: "conf-a/kafka".into(),
        key: "offsets/t/0".into(),
        value: vec![1, 2, 3],
        at_unix_us: T0,
    };
    batch.push(Record::Checkpoint(checkpoint.clone()));
    batch.push(Record::Snapshot(snapshot("conf-a", 10, 5)));
    c.append(&batch, Commit::Buffered).await;
    assert_eq!(
        c.firings(FiringQuery::reactor("conf-a")).await,
        fired,
        "{name}: firings read back differ from those written"
    );
    assert_eq!(
        c.boundaries(BoundaryQuery::reactor("conf-a")).await,
        received,
        "{name}: boundaries read back differ from those written"
    );
    assert_eq!(
        ledger.checkpoint("conf-a/kafka", "offsets/t/0").await.ok(),
        Some(Some(checkpoint.clone())),
        "{name}: checkpoint read back"
    );
    assert_eq!(
        ledger.snapshot("conf-a").await.ok(),
        Some(Some(snapshot("conf-a", 10, 5))),
        "{name}: snapshot read back"
    );
    assert_eq!(ledger.snapshot("conf-none").await.ok(), Some(None));
    assert_eq!(
        ledger.checkpoint("conf-a/kafka", "nope").await.ok(),
        Some(None)
    );

    // A later checkpoint or snapshot replaces the earlier one.
    let newer = CheckpointRecord {
        value: vec![9; 300],
        at_unix_us: T0 + 5,
        ..checkpoint.clone()
    };
    c.append(
        &[
            Record::Checkpoint(newer.clone()),
            Record::Snapshot(snapshot("conf-a", 12, 6)),
        ],
        Commit::Durable,
    )
    .await;
    assert_eq!(
        ledger.checkpoint("conf-a/kafka", "offsets/t/0").await.ok(),
        Some(Some(newer.clone())),
        "{name}: a newer checkpoint replaces the older"
    );
    // Listing: an owner's checkpoints by key, the newest of each, no other owner's (not
    // even one whose name starts with this owner's).
    let other_key = CheckpointRecord {
        key: "offsets/t/1".into(),
        ..checkpoint.clone()
    };
    let longer_owner = CheckpointRecord {
        owner: "conf-a/kafka2".into(),
        ..checkpoint.clone()
    };
    c.append(
        &[
            Record::Checkpoint(other_key.clone()),
            Record::Checkpoint(longer_owner),
        ],
        Commit::Buffered,
    )
    .await;
    assert_eq!(
        ledger.checkpoints("conf-a/kafka").await.ok(),
        Some(vec![newer, other_key]),
        "{name}: an owner's checkpoints listed by key"
    );
    assert_eq!(
        ledger.checkpoints("conf-nobody").await.ok(),
        Some(Vec::new())
    );
    assert_eq!(
        ledger.snapshot("conf-a").await.ok(),
        Some(Some(snapshot("conf-a", 12, 6))),
        "{name}: a newer snapshot replaces the older"
    );

    // Queries: by firing id, id range, time range, limit.
    let one = c
        .firings(FiringQuery {
            from_id: Some(7),
            limit: Some(1),
            ..FiringQuery::reactor("conf-a")
        })
        .await;
    assert_eq!(one, vec![fired[6].clone()], "{name}: firing by id");
    let window = c
        .firings(FiringQuery {
            since_unix_us: Some(T0 + 5_000),
            until_unix_us: Some(T0 + 9_000),
            ..FiringQuery::reactor("conf-a")
        })
        .await;
    assert_eq!(
        ids(&window),
        [5, 6, 7, 8],
        "{name}: firings in a time range"
    );
    let from_limit = c
        .firings(FiringQuery {
            from_id: Some(15),
            limit: Some(3),
            ..FiringQuery::reactor("conf-a")
        })
        .await;
    assert_eq!(ids(&from_limit), [15, 16, 17], "{name}: from id with limit");
    let slice = c
        .boundaries(BoundaryQuery {
            from_seq: Some(4),
            through_seq: Some(9),
            since_unix_us: Some(T0 + 5_000),
            ..BoundaryQuery::reactor("conf-a")
        })
        .await;
    assert_eq!(seqs(&slice), [5, 6, 7, 8, 9], "{name}: boundary range");
    let until_limit = c
        .boundaries(BoundaryQuery {
            until_unix_us: Some(T0 + 20_000),
            limit: Some(4),
            ..BoundaryQuery::reactor("conf-a")
        })
        .await;
    assert_eq!(seqs(&until_limit), [1, 2, 3, 4], "{name}: boundary limit");

    // Ordering per reactor: by id, whatever the append order; reactors do not mix,
    // including a reactor whose name is a prefix of another's.
    let shuffled: Vec<Record> = [7u64, 3, 9, 1, 5]
        .iter()
        .flat_map(|id| {
            [
                Record::Firing(firing("conf-b", *id, true)),
                Record::Boundary(boundary("conf-b", *id)),
            ]
        })
        .collect();
    c.append(&shuffled, Commit::Buffered).await;
    c.append(
        &[
            Record::Firing(firing("conf-b2", 1, true)),
            Record::Boundary(boundary("conf-b2", 2)),
        ],
        Commit::Buffered,
    )
    .await;
    let b = c.firings(FiringQuery::reactor("conf-b")).await;
    assert_eq!(
        ledger.last_firing("conf-b").await.ok(),
        Some(Some(firing("conf-b", 9, true))),
        "{name}: the last firing is the highest id, whatever the append order"
    );
    assert_eq!(ledger.last_firing("conf-none").await.ok(), Some(None));
    assert_eq!(
        ids(&b),
        [1, 3, 5, 7, 9],
        "{name}: firings of one reactor in id order"
    );
    assert!(
        b.iter().all(|f| f.reactor == "conf-b"),
        "{name}: a reactor's read must not include another's records"
    );
    let bb = c.boundaries(BoundaryQuery::reactor("conf-b")).await;
    assert_eq!(
        seqs(&bb),
        [1, 3, 5, 7, 9],
        "{name}: boundaries in seq order"
    );
    // Without `allow_gaps`, a read by id that skips ids fails, naming the first hole; a
    // read by time is not checked (times need not rise with ids).
    let gap = |r: Result<usize, LedgerError>| match r {
        Err(LedgerError::Gap { gap, .. }) => Some((gap.kind, gap.after, gap.before)),
        _ => None,
    };
    assert_eq!(
        gap(ledger
            .firings(&FiringQuery::reactor("conf-b"))
            .await
            .map(|v| v.len())),
        Some(("firing", 1, 3)),
        "{name}: a firing read across a hole fails"
    );
    assert_eq!(
        gap(ledger
            .boundaries(&BoundaryQuery {
                from_seq: Some(3),
                ..BoundaryQuery::reactor("conf-b")
            })
            .await
            .map(|v| v.len())),
        Some(("boundary", 3, 5)),
        "{name}: a boundary read across a hole fails"
    );
    assert_eq!(
        ledger
            .boundaries(&BoundaryQuery {
                from_seq: Some(3),
                through_seq: Some(4),
                ..BoundaryQuery::reactor("conf-b")
            })
            .await
            .map(|v| v.len())
            .ok(),
        Some(1),
        "{name}: a read with no hole inside its result succeeds"
    );
    assert_eq!(
        ledger
            .firings(&FiringQuery {
                since_unix_us: Some(0),
                ..FiringQuery::reactor("conf-b")
            })
            .await
            .map(|v| v.len())
            .ok(),
        Some(5),
        "{name}: a read by time is not checked for holes"
    );
    assert!(c
        .firings(FiringQuery::reactor("conf-none"))
        .await
        .is_empty());
    assert!(c
        .boundaries(BoundaryQuery::reactor("conf"))
        .await
        .is_empty());

    // Idempotent re-append: the same record again is a no-op; different content under the
    // same id is a conflict, and the whole batch (other kinds included) is refused.
    c.append(&batch[..5], Commit::Buffered).await;
    c.append(&batch[30..33], Commit::Buffered).await;
    assert_eq!(c.firings(FiringQuery::reactor("conf-a")).await.len(), 20);
    assert_eq!(
        c.boundaries(BoundaryQuery::reactor("conf-a")).await.len(),
        30
    );
    let mut changed = boundary("conf-a", 2);
    changed.value = vec![0xff];
    for conflicting in [
        vec![
            Record::Firing(firing("conf-a", 21, true)),
            Record::Firing(firing("conf-a", 1, false)),
        ],
        vec![
            Record::Boundary(boundary("conf-a", 31)),
            Record::Checkpoint(CheckpointRecord {
                key: "refused".into(),
                ..checkpoint.clone()
            }),
            Record::Boundary(changed.clone()),
        ],
        // The same id twice in one batch with different content.
        vec![
            Record::Boundary(boundary("conf-a", 40)),
            Record::Boundary(BoundaryRecord {
                value: vec![1],
                ..boundary("conf-a", 40)
            }),
        ],
    ] {
        match ledger.append(&conflicting, Commit::Buffered).await {
            Err(LedgerError::Conflict { .. }) => {}
            other => panic!("{name}: conflicting re-append must be a Conflict, got {other:?}"),
        }
    }
    assert_eq!(
        ids(&c.firings(FiringQuery::reactor("conf-a")).await),
        (1..=20).collect::<Vec<_>>(),
        "{name}: a refused batch must not be partly applied"
    );
    assert_eq!(
        c.boundaries(BoundaryQuery::reactor("conf-a")).await,
        received,
        "{name}: a refused batch must not be partly applied"
    );
    assert_eq!(
        ledger.checkpoint("conf-a/kafka", "refused").await.ok(),
        Some(None),
        "{name}: a refused batch's checkpoint must not be applied"
    );

    // Odd names and large values survive the round trip.
    let odd = BoundaryRecord {
        reactor: "it's a \"réacteur\"; DROP TABLE x --".into(),
        seq: 1,
        source: "sourcé ✓ tab\t".into(),
        received_at_unix_us: -5,
        value: (0..=255u8).cycle().take(1 << 20).collect(),
    };
    c.append(&[Record::Boundary(odd.clone())], Commit::Durable)
        .await;
    assert_eq!(
        c.boundaries(BoundaryQuery::reactor(odd.reactor.clone()))
            .await,
        vec![odd.clone()],
        "{name}: odd names and a 1 MiB value"
    );

    // Concurrent writers: 8 tasks x 50 single-record appends, all present exactly once.
    let mut tasks = Vec::new();
    for w in 0..8u64 {
        let ledger = Arc::clone(&ledger);
        tasks.push(tokio::spawn(async move {
            for k in 0..50u64 {
                let id = w * 1000 + k;
                let commit = if k % 10 == 0 {
                    Commit::Durable
                } else {
                    Commit::Buffered
                };
                ledger
                    .append(
                        &[
                            Record::Firing(firing("conf-c", id, true)),
                            Record::Boundary(boundary("conf-c", id)),
                        ],
                        commit,
                    )
                    .await?;
            }
            Ok::<(), LedgerError>(())
        }));
    }
    for t in tasks {
        t.await
            .unwrap_or_else(|e| panic!("{name}: writer task: {e}"))
            .unwrap_or_else(|e| panic!("{name}: concurrent append: {e}"));
    }
    let mut want: Vec<u64> = (0..8u64)
        .flat_map(|w| (0..50).map(move |k| w * 1000 + k))
        .collect();
    want.sort_unstable();
    assert_eq!(
        ids(&c.firings(FiringQuery::reactor("conf-c")).await),
        want,
        "{name}: concurrent writers"
    );
    assert_eq!(
        seqs(&c.boundaries(BoundaryQuery::reactor("conf-c")).await),
        want,
        "{name}: concurrent writers"
    );
    ledger
        .flush()
        .await
        .unwrap_or_else(|e| panic!("{name}: flush: {e}"));

    // Retention: nothing a restart needs goes. Without a snapshot, nothing goes at all.
    let r: Vec<Record> = (1..=100u64)
        .flat_map(|i| {
            [
                Record::Boundary(boundary("conf-r", i)),
                Record::Firing(firing("conf-r", i, true)),
            ]
        })
        .collect();
    c.append(&r, Commit::Buffered).await;
    let keep_10 = Retention {
        keep_last: Some(10),
        older_than_unix_us: None,
    };
    assert_eq!(
        c.retain("conf-r", keep_10).await,
        RetainReport::default(),
        "{name}: without a snapshot retention removes nothing"
    );
    // Snapshot after boundary 60 and firing 49: boundaries 61.. and firings 50.. are protected.
    c.append(
        &[Record::Snapshot(snapshot("conf-r", 60, 50))],
        Commit::Buffered,
    )
    .await;
    assert_eq!(
        c.retain("conf-r", keep_10).await,
        RetainReport {
            boundaries_removed: 60,
            firings_removed: 49
        },
        "{name}: keep_last stops at the snapshot"
    );
    assert_eq!(
        seqs(&c.boundaries(BoundaryQuery::reactor("conf-r")).await),
        (61..=100).collect::<Vec<_>>()
    );
    assert_eq!(
        ids(&c.firings(FiringQuery::reactor("conf-r")).await),
        (50..=100).collect::<Vec<_>>()
    );
    c.append(
        &[Record::Snapshot(snapshot("conf-r", 100, 101))],
        Commit::Buffered,
    )
    .await;
    // By age: records before T0 + 80 ms go.
    assert_eq!(
        c.retain(
            "conf-r",
            Retention {
                keep_last: None,
                older_than_unix_us: Some(T0 + 80_000),
            }
        )
        .await,
        RetainReport {
            boundaries_removed: 19,
            firings_removed: 30
        },
        "{name}: retention by age"
    );
    assert_eq!(
        seqs(&c.boundaries(BoundaryQuery::reactor("conf-r")).await),
        (80..=100).collect::<Vec<_>>()
    );
    assert_eq!(
        c.retain("conf-r", keep_10).await,
        RetainReport {
            boundaries_removed: 11,
            firings_removed: 11
        },
        "{name}: keep_last"
    );
    assert_eq!(
        ids(&c.firings(FiringQuery::reactor("conf-r")).await),
        (91..=100).collect::<Vec<_>>()
    );
    assert_eq!(
        c.boundaries(BoundaryQuery::reactor("conf-a")).await.len(),
        30,
        "{name}: retention of one reactor leaves others alone"
    );

    // A healthy store verifies clean: every record read back with its checksum intact.
    let report = ledger
        .verify()
        .await
        .unwrap_or_else(|e| panic!("{name}: verify: {e}"));
    assert!(
        report.is_ok(),
        "{name}: a healthy store must verify: {report:?}"
    );
    assert!(
        report.records_checked >= 100,
        "{name}: verify must read the records: {report:?}"
    );
    assert!(
        report
            .gaps
            .iter()
            .any(|g| g.reactor == "conf-b" && g.kind == "firing" && (g.after, g.before) == (1, 3)),
        "{name}: verify lists holes in a reactor's ids: {:?}",
        report.gaps
    );

    // Reopen after close: a persistent backend keeps everything.
    drop(ledger);
    if harness.persistent() {
        let reopened = harness.open().await;
        let c = Check {
            name,
            ledger: &*reopened,
        };
        assert_eq!(
            c.firings(FiringQuery::reactor("conf-a")).await,
            fired,
            "{name}: firings after reopen"
        );
        assert_eq!(
            c.boundaries(BoundaryQuery::reactor("conf-a")).await,
            received,
            "{name}: boundaries after reopen"
        );
        assert_eq!(
            c.firings(FiringQuery::reactor("conf-c")).await.len(),
            400,
            "{name}: concurrent records after reopen"
        );
        assert_eq!(
            reopened.snapshot("conf-r").await.ok(),
            Some(Some(snapshot("conf-r", 100, 101))),
            "{name}: snapshot after reopen"
        );
        assert_eq!(
            c.boundaries(BoundaryQuery::reactor(odd.reactor.clone()))
                .await,
            vec![odd],
            "{name}: large record after reopen"
        );
    }
    workflows::run(harness).await;
}
