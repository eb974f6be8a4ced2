//! The one conformance suite every [`Ledger`] backend passes (River's habit: one driver
//! interface, one shared suite). A backend's test instantiates it with one line:
//!
//! ```text
//! cloacina_ledger::conformance::run(&MyHarness { .. }).await;
//! ```
//!
//! Each check panics with a message naming the backend and what broke, so this module is for
//! tests only.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::{FiringOutcome, FiringRecord, Ledger, LedgerError, Record};

/// Opens the backend under test.
pub trait Harness: Sync {
    /// Opens the store; for a persistent backend, the same store every time.
    fn open(&self) -> Pin<Box<dyn Future<Output = Arc<dyn Ledger>> + Send + '_>>;
    /// Whether records survive closing and reopening.
    fn persistent(&self) -> bool;
}

fn firing(reactor: &str, id: u64, ok: bool) -> Record {
    Record::Firing(FiringRecord {
        reactor: reactor.into(),
        firing_id: id,
        manual: id % 5 == 0,
        inputs: vec![("a".into(), id), ("b".into(), id / 2)],
        fired_at_unix_us: 1_700_000_000_000_000 + id as i64,
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
    })
}

fn ids(records: &[FiringRecord]) -> Vec<u64> {
    records.iter().map(|f| f.firing_id).collect()
}

/// Runs every check against the backend `harness` opens.
pub async fn run(harness: &dyn Harness) {
    let ledger = harness.open().await;
    let name = ledger.backend();

    // Append and read back each record kind (completed and failed firings), field for field.
    let written: Vec<Record> = (1..=20)
        .map(|id| firing("conf-a", id, id % 3 != 0))
        .collect();
    ledger
        .append(&written)
        .await
        .unwrap_or_else(|e| panic!("{name}: append: {e}"));
    let read = ledger
        .firings("conf-a")
        .await
        .unwrap_or_else(|e| panic!("{name}: read: {e}"));
    let expected: Vec<FiringRecord> = written
        .iter()
        .map(|r| match r {
            Record::Firing(f) => f.clone(),
        })
        .collect();
    assert_eq!(
        read, expected,
        "{name}: records read back differ from those written"
    );

    // Ordering per reactor: by firing id, whatever the append order; reactors do not mix,
    // including a reactor whose name is a prefix of another's.
    let shuffled: Vec<Record> = [7u64, 3, 9, 1, 5]
        .iter()
        .map(|id| firing("conf-b", *id, true))
        .collect();
    ledger
        .append(&shuffled)
        .await
        .unwrap_or_else(|e| panic!("{name}: append: {e}"));
    ledger
        .append(&[firing("conf-b2", 1, true)])
        .await
        .unwrap_or_else(|e| panic!("{name}: append: {e}"));
    let b = ledger
        .firings("conf-b")
        .await
        .unwrap_or_else(|e| panic!("{name}: read: {e}"));
    assert_eq!(
        ids(&b),
        [1, 3, 5, 7, 9],
        "{name}: firings of one reactor in id order"
    );
    assert!(
        b.iter().all(|f| f.reactor == "conf-b"),
        "{name}: a reactor's read must not include another's records"
    );
    assert!(ledger
        .firings("conf-none")
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .is_empty());

    // Idempotent re-append: the same record again is a no-op; different content under the
    // same id is a conflict, and the whole batch is refused.
    ledger
        .append(&written[..3])
        .await
        .unwrap_or_else(|e| panic!("{name}: re-append: {e}"));
    assert_eq!(
        ledger.firings("conf-a").await.map(|r| r.len()).ok(),
        Some(20),
        "{name}: re-append duplicated records"
    );
    let conflicting = [firing("conf-a", 21, true), firing("conf-a", 1, false)];
    match ledger.append(&conflicting).await {
        Err(LedgerError::Conflict { .. }) => {}
        other => panic!("{name}: conflicting re-append must be a Conflict, got {other:?}"),
    }
    let a = ledger
        .firings("conf-a")
        .await
        .unwrap_or_else(|e| panic!("{name}: read: {e}"));
    assert_eq!(
        ids(&a),
        (1..=20).collect::<Vec<_>>(),
        "{name}: a refused batch must not be partly applied"
    );

    // Concurrent writers: 8 tasks x 50 single-record appends, all present exactly once.
    let mut tasks = Vec::new();
    for w in 0..8u64 {
        let ledger = Arc::clone(&ledger);
        tasks.push(tokio::spawn(async move {
            for k in 0..50u64 {
                ledger
                    .append(&[firing("conf-c", w * 1000 + k, true)])
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
    let c = ledger
        .firings("conf-c")
        .await
        .unwrap_or_else(|e| panic!("{name}: read: {e}"));
    let mut want: Vec<u64> = (0..8u64)
        .flat_map(|w| (0..50).map(move |k| w * 1000 + k))
        .collect();
    want.sort_unstable();
    assert_eq!(ids(&c), want, "{name}: concurrent writers");

    // Reopen after close: a persistent backend keeps everything.
    drop(ledger);
    if harness.persistent() {
        let reopened = harness.open().await;
        let a = reopened
            .firings("conf-a")
            .await
            .unwrap_or_else(|e| panic!("{name}: read after reopen: {e}"));
        assert_eq!(a, expected, "{name}: records after reopen");
        let c = reopened
            .firings("conf-c")
            .await
            .unwrap_or_else(|e| panic!("{name}: read after reopen: {e}"));
        assert_eq!(c.len(), 400, "{name}: concurrent records after reopen");
    }
}
