//! Unit tests of the sled workflow store (crash between an end's two key writes, an
//! undecodable row).

use super::*;

fn start(id: u64) -> WorkflowRecord {
    WorkflowRecord::Started(ExecutionRecord {
        id,
        workflow: "w".into(),
        version: "v1".into(),
        input: b"{}".to_vec(),
        created_at_unix_us: 1,
        owner: "r".into(),
        lease_until_unix_us: 2,
    })
}

fn end(id: u64) -> WorkflowRecord {
    WorkflowRecord::Ended(ExecutionEndRecord {
        execution_id: id,
        status: ExecutionStatus::Completed,
        final_context: b"{}".to_vec(),
        error: None,
        finished_at_unix_us: 3,
    })
}

/// A store at `path` with executions 1 and 2 started, durably.
async fn with_two_starts(path: &std::path::Path) -> SledLedger {
    let ledger = SledLedger::open(path).expect("open");
    ledger
        .write(&[start(1), start(2)], Commit::Durable)
        .await
        .expect("starts");
    ledger
}

#[tokio::test]
async fn a_crash_between_an_ends_two_key_writes_leaves_the_execution_ended() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    {
        let ledger = with_two_starts(&path).await;
        let unfinished = ledger
            .workflows
            .get(key(b'U', 1))
            .expect("read")
            .expect("U row");
        ledger.write(&[end(1)], Commit::Durable).await.expect("end");
        // What a crash after writing `E 1` but before removing `U 1` leaves.
        ledger
            .workflows
            .insert(key(b'U', 1), unfinished)
            .expect("put back");
        ledger.flush_db().await.expect("flush");
    }
    let ledger = SledLedger::open(&path).expect("reopen");
    let stored = ledger.execution(1).await.expect("read").expect("stored");
    assert_eq!(stored.status, ExecutionStatus::Completed);
    assert!(stored.end.is_some());
    let claimed = ledger
        .claim_unfinished("other", i64::MAX, i64::MAX, usize::MAX)
        .await
        .expect("claim");
    let ids: Vec<u64> = claimed.iter().map(|e| e.execution.id).collect();
    assert_eq!(ids, [2], "only the execution that did not end is claimed");
    assert!(!ledger.workflows.contains_key(key(b'U', 1)).expect("read"));
    // The ended execution stays ended: a later start or end changes nothing.
    ledger
        .write(&[start(1), end(1)], Commit::Buffered)
        .await
        .expect("write");
    let again = ledger.execution(1).await.expect("read").expect("stored");
    assert_eq!(again.end, stored.end);
}

#[tokio::test]
async fn an_undecodable_unfinished_row_fails_only_its_own_execution() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    drop(with_two_starts(&path).await);
    {
        // Damage execution 1's row behind the store's back.
        // The dropped store's background flusher may hold sled's file lock a moment
        // longer: wait for it (up to 5 s).
        let mut tries = 0;
        let db = loop {
            match sled::open(&path) {
                Ok(db) => break db,
                Err(_) if tries < 100 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => panic!("raw open: {e:?}"),
            }
        };
        let tree = db.open_tree("workflows").expect("tree");
        tree.insert(key(b'U', 1), &b"not a row"[..])
            .expect("damage");
        db.flush().expect("flush");
    }
    let ledger = SledLedger::open(&path).expect("reopen");
    assert!(matches!(
        ledger.execution(1).await,
        Err(LedgerError::Corrupt { .. })
    ));
    let refused = ledger.write(&[start(1)], Commit::Buffered).await;
    assert!(
        matches!(refused, Err(LedgerError::Corrupt { .. })),
        "{refused:?}"
    );
    // Everything else goes on.
    ledger
        .write(&[start(3)], Commit::Buffered)
        .await
        .expect("another execution");
    assert!(ledger.execution(2).await.expect("read").is_some());
    assert!(ledger.execution(3).await.expect("read").is_some());
    let claimed = ledger
        .claim_unfinished("r", 0, 10, usize::MAX)
        .await
        .expect("claim");
    let ids: Vec<u64> = claimed.iter().map(|e| e.execution.id).collect();
    assert_eq!(ids, [2, 3]);
}
