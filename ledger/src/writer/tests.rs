//! The writer's tests: batching, retries by error kind, status notification.

use super::*;
use crate::conformance::FaultyLedger;
use crate::{FiringOutcome, FiringQuery, FiringRecord, FiringTrigger, MemoryLedger};

fn options(capacity: usize) -> WriterOptions {
    WriterOptions {
        capacity,
        ..WriterOptions::default()
    }
}

fn firing(reactor: &str, id: u64) -> Record {
    Record::Firing(FiringRecord {
        reactor: reactor.into(),
        firing_id: id,
        trigger: FiringTrigger::Criteria,
        inputs: vec![("a".into(), id)],
        fired_at_unix_us: 0,
        duration_ns: 0,
        outcome: FiringOutcome::Completed { outputs: vec![] },
    })
}

#[tokio::test]
async fn writer_appends_everything_in_order_before_close_returns() {
    let ledger = Arc::new(MemoryLedger::new());
    let writer = LedgerWriter::spawn(ledger.clone(), options(4));
    for id in 1..=1000 {
        writer.write(firing("r", id)).await.expect("write");
    }
    writer.write(firing("other", 1)).await.expect("write");
    let report = writer.close().await;
    assert_eq!((report.written, report.lost), (1001, 0));
    assert!(report.first_error.is_none());
    let ids: Vec<u64> = ledger
        .firings(&FiringQuery::reactor("r"))
        .await
        .expect("read")
        .iter()
        .map(|f| f.firing_id)
        .collect();
    assert_eq!(ids, (1..=1000).collect::<Vec<_>>());
    assert_eq!(
        ledger
            .firings(&FiringQuery::reactor("other"))
            .await
            .expect("read")
            .len(),
        1
    );
    assert!(ledger
        .firings(&FiringQuery::reactor("nobody"))
        .await
        .expect("read")
        .is_empty());
}

#[tokio::test]
async fn transient_append_failures_are_retried_without_loss() {
    let ledger = Arc::new(FaultyLedger::failing_first(APPEND_ATTEMPTS as u64 - 1));
    let writer = LedgerWriter::spawn(ledger.clone(), options(8));
    for id in 1..=5 {
        writer.write(firing("r", id)).await.expect("write");
    }
    // Let the writer work through its retries before reading its status.
    for _ in 0..200 {
        if ledger
            .firings(&FiringQuery::reactor("r"))
            .await
            .expect("read")
            .len()
            == 5
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let status = writer.status();
    assert_eq!(status.failed_appends, u64::from(APPEND_ATTEMPTS) - 1);
    assert_eq!(status.lost_records, 0);
    assert!(!status.failing, "a success clears the failing flag");
    assert_eq!(writer.close().await.written, 5);
    assert_eq!(
        ledger
            .firings(&FiringQuery::reactor("r"))
            .await
            .expect("read")
            .len(),
        5
    );
}

// A panicking backend is retried like a failing one; the writer survives and loses nothing.
#[tokio::test]
async fn panicking_append_is_a_failed_attempt() {
    let ledger = Arc::new(FaultyLedger::panicking_first(1));
    let writer = LedgerWriter::spawn(ledger.clone(), options(64));
    for id in 1..=20 {
        writer.write(firing("r", id)).await.expect("write");
    }
    let report = writer.close().await;
    assert_eq!((report.written, report.lost), (20, 0), "{report:?}");
    assert_eq!(
        ledger
            .firings(&FiringQuery::reactor("r"))
            .await
            .expect("read")
            .len(),
        20
    );
}

// Counts survive errors: a report says both what was written and what was lost.
#[tokio::test]
async fn report_counts_written_and_lost() {
    let ledger = Arc::new(FaultyLedger::failing_first(u64::from(APPEND_ATTEMPTS)));
    let writer = LedgerWriter::spawn(ledger.clone(), options(1));
    writer.write(firing("r", 1)).await.expect("write");
    for _ in 0..400 {
        if writer.status().lost_records == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(writer.status().failing);
    writer.write(firing("r", 2)).await.expect("write");
    let report = writer.close().await;
    assert_eq!((report.written, report.lost), (1, 1), "{report:?}");
    assert!(report.first_error.is_some());
}

// A durable writer acknowledges each record once its batch is appended; many waiting
// callers share one batch (group commit).
#[tokio::test]
async fn acknowledgements_follow_the_append_and_batches_are_shared() {
    let ledger = Arc::new(MemoryLedger::new());
    let writer = Arc::new(LedgerWriter::spawn(
        ledger.clone(),
        WriterOptions {
            capacity: 1024,
            commit: Commit::Durable,
            flush_interval: None,
        },
    ));
    let mut tasks = Vec::new();
    for w in 0..32u64 {
        let writer = Arc::clone(&writer);
        tasks.push(tokio::spawn(async move {
            for k in 0..20 {
                writer.write_and_wait(firing("g", w * 100 + k)).await?;
            }
            Ok::<(), LedgerError>(())
        }));
    }
    for t in tasks {
        t.await.expect("join").expect("durable write");
    }
    assert_eq!(
        ledger
            .firings(&FiringQuery::reactor("g").allow_gaps())
            .await
            .expect("read")
            .len(),
        640
    );
    let status = writer.status();
    assert_eq!(status.written, 640);
    assert!(status.batches < 640, "callers share batches: {status:?}");
}

// Transient failures are retried until the batch lands: nothing lost, the ack is Ok.
#[tokio::test]
async fn transient_errors_are_retried_until_the_batch_lands() {
    let ledger = Arc::new(FaultyLedger::failing_first(u64::from(APPEND_ATTEMPTS) - 1));
    let writer = LedgerWriter::spawn(ledger.clone(), options(8));
    writer
        .write_and_wait(firing("r", 1))
        .await
        .expect("appended after retries");
    assert_eq!(ledger.attempts(), u64::from(APPEND_ATTEMPTS));
    let report = writer.close().await;
    assert_eq!((report.written, report.lost), (1, 0));
}

// A transient outage longer than the attempts: given up after exactly APPEND_ATTEMPTS.
#[tokio::test]
async fn transient_errors_give_up_after_the_attempts() {
    let ledger = Arc::new(FaultyLedger::failing_first(u64::MAX));
    let writer = LedgerWriter::spawn(ledger.clone(), options(8));
    let err = writer
        .write_and_wait(firing("r", 1))
        .await
        .expect_err("given up");
    assert!(err.is_transient(), "{err}");
    assert_eq!(ledger.attempts(), u64::from(APPEND_ATTEMPTS));
    assert_eq!(writer.close().await.lost, 1);
}

// A permanent error is reported at once: one attempt, the batch counted as lost, the ack
// told, and the error kept (with its chain) in the report.
#[tokio::test]
async fn permanent_errors_are_not_retried() {
    let ledger = Arc::new(FaultyLedger::failing_permanently_first(1));
    let writer = LedgerWriter::spawn(ledger.clone(), options(8));
    let err = writer
        .write_and_wait(firing("r", 1))
        .await
        .expect_err("refused");
    assert!(!err.is_transient());
    assert!(err.to_string().contains("injected refusal"), "{err}");
    assert_eq!(ledger.attempts(), 1, "no retry");
    let status = writer.status();
    assert_eq!((status.failed_appends, status.lost_records), (1, 1));
    assert!(status.failing);
    writer
        .write_and_wait(firing("r", 2))
        .await
        .expect("next batch lands");
    assert!(!writer.status().failing);
    let report = writer.close().await;
    assert_eq!((report.written, report.lost), (1, 1));
    let first = report.first_error.expect("first error kept");
    assert!(std::error::Error::source(&first).is_some(), "source kept");
}

// An idle caller learns at once that a batch was given up, and that appends recovered.
#[tokio::test]
async fn status_watchers_wake_when_a_batch_is_lost_and_when_appends_recover() {
    let ledger = Arc::new(FaultyLedger::failing_permanently_first(1));
    let writer = LedgerWriter::spawn(ledger.clone(), options(8));
    let mut watch = writer.watch_status();
    let changed = writer.status_changed();
    writer.write(firing("r", 1)).await.expect("queued");
    changed.await;
    watch.changed().await.expect("writer alive");
    let seen = *watch.borrow_and_update();
    assert!(seen.failing && seen.lost_records == 1, "{seen:?}");
    writer.write(firing("r", 2)).await.expect("queued");
    watch.changed().await.expect("writer alive");
    let seen = *watch.borrow_and_update();
    assert!(!seen.failing && seen.lost_records == 1, "{seen:?}");
    let ended = writer.status_changed();
    drop(writer.close().await);
    ended.await;
    assert!(
        watch.changed().await.is_err(),
        "closed with the writer task"
    );
}

#[test]
fn errors_say_whether_to_retry() {
    let io = |kind| {
        LedgerError::store(
            "x",
            "m",
            crate::io_is_transient(&std::io::Error::from(kind)),
            std::io::Error::from(kind),
        )
    };
    assert!(io(std::io::ErrorKind::Interrupted).is_transient());
    assert!(io(std::io::ErrorKind::ConnectionReset).is_transient());
    assert!(!io(std::io::ErrorKind::InvalidData).is_transient());
    let conflict = LedgerError::Conflict {
        backend: "x",
        record: "r".into(),
    };
    assert_eq!(conflict.kind(), crate::ErrorKind::Permanent);
    let corrupt = LedgerError::Corrupt {
        backend: "x",
        location: "p".into(),
        reason: "r".into(),
    };
    assert!(!corrupt.is_transient());
    let outage = LedgerError::Unreachable {
        backend: "x",
        location: "l".into(),
        message: "m".into(),
    };
    assert_eq!(outage.kind(), crate::ErrorKind::Transient);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_is_appended_in_one_batch_even_past_the_batch_limit() {
    // A queue smaller than the group, and a group past MAX_BATCH: the writer takes the
    // group in pieces as it is queued, but appends it once (atomically).
    let ledger = Arc::new(FaultyLedger::failing_first(0));
    let writer = LedgerWriter::spawn(ledger.clone(), options(1000));
    let n = MAX_BATCH as u64 * 2 + 7;
    let mut group: Vec<(Record, Option<AckSender>)> =
        (1..=n).map(|id| (firing("r", id), None)).collect();
    assert_eq!(writer.write_all(&mut group).await, 0);
    let report = writer.close().await;
    assert_eq!((report.written, report.lost), (n, 0));
    assert_eq!(ledger.attempts(), 1, "one append for the whole group");
    let stored = ledger
        .firings(&FiringQuery::reactor("r"))
        .await
        .expect("read")
        .len() as u64;
    assert_eq!(stored, n);
}

/// Firings `first..first + n`, built on the writer's task; `refuse` ids are not buildable.
struct Firings {
    first: u64,
    n: u64,
    refuse: Vec<u64>,
}

impl RecordBuilder for Firings {
    fn count(&self) -> usize {
        self.n as usize
    }

    fn build(self: Box<Self>, out: &mut Vec<Record>) -> usize {
        let mut failed = 0;
        for id in self.first..self.first + self.n {
            if self.refuse.contains(&id) {
                failed += 1;
            } else {
                out.push(firing("r", id));
            }
        }
        failed
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn built_records_go_with_their_group_and_unbuildable_ones_count_as_lost() {
    let ledger = Arc::new(FaultyLedger::failing_first(0));
    let writer = LedgerWriter::spawn(ledger.clone(), options(4));
    let built = |first, n, refuse| Box::new(Firings { first, n, refuse });
    // A builder and eager records: one group, one append.
    let mut rest: Vec<(Record, Option<AckSender>)> =
        (101..=103).map(|id| (firing("r", id), None)).collect();
    assert_eq!(
        writer
            .write_all_built(built(1, 100, vec![]), &mut rest)
            .await,
        0
    );
    assert_eq!(
        writer.handed(),
        103,
        "a builder counts as the records it stands for"
    );
    // A builder with two records it cannot build.
    let mut none = Vec::new();
    assert_eq!(
        writer
            .write_all_built(built(104, 10, vec![105, 110]), &mut none)
            .await,
        0
    );
    assert_eq!(writer.handed(), 113);
    // A group larger than the queue (4 places): taken in pieces, appended at once.
    let mut more: Vec<(Record, Option<AckSender>)> =
        (124..=129).map(|id| (firing("r", id), None)).collect();
    assert_eq!(
        writer
            .write_all_built(built(114, 10, vec![]), &mut more)
            .await,
        0
    );
    assert_eq!(writer.handed(), 129);
    tokio::time::timeout(Duration::from_secs(10), async {
        while writer.settled() < writer.handed() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("everything handed over settles, the unbuilt records included");
    let report = writer.close().await;
    assert_eq!((report.written, report.lost), (127, 2));
    let ids: Vec<u64> = ledger
        .firings(&FiringQuery::reactor("r").allow_gaps())
        .await
        .expect("read")
        .iter()
        .map(|f| f.firing_id)
        .collect();
    let expected: Vec<u64> = (1..=129).filter(|id| ![105, 110].contains(id)).collect();
    assert_eq!(ids, expected);
}

struct Panicking;

impl RecordBuilder for Panicking {
    fn count(&self) -> usize {
        3
    }

    fn build(self: Box<Self>, out: &mut Vec<Record>) -> usize {
        out.push(firing("p", 1));
        panic!("a codec panicked");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_builder_loses_its_records_not_the_writer() {
    let ledger = Arc::new(MemoryLedger::new());
    let writer = LedgerWriter::spawn(ledger.clone(), options(8));
    let mut none = Vec::new();
    assert_eq!(
        writer.write_all_built(Box::new(Panicking), &mut none).await,
        0
    );
    let mut after: Vec<(Record, Option<AckSender>)> = vec![(firing("q", 1), None)];
    assert_eq!(writer.write_all(&mut after).await, 0);
    let report = writer.close().await;
    assert_eq!((report.written, report.lost), (1, 3), "{report:?}");
    assert!(ledger
        .firings(&FiringQuery::reactor("p").allow_gaps())
        .await
        .expect("read")
        .is_empty());
}
