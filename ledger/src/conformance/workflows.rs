//! The workflow store's part of the suite: every built-in backend's
//! [`Ledger::workflow_store`](crate::Ledger::workflow_store) passes it.

use std::sync::Arc;

use super::{Harness, T0};
use crate::{
    Commit, ExecutionEndRecord, ExecutionRecord, ExecutionStatus, LedgerError, StoredExecution,
    TaskOutcome, TaskRecord, WorkflowRecord, WorkflowStore,
};

fn start(id: u64, owner: &str, lease: i64) -> ExecutionRecord {
    ExecutionRecord {
        id,
        workflow: "conf-wf".into(),
        version: "v1".into(),
        input: br#"{"seed":1}"#.to_vec(),
        created_at_unix_us: T0 + id as i64,
        owner: owner.into(),
        lease_until_unix_us: lease,
    }
}

fn task(id: u64, name: &str, ok: bool) -> TaskRecord {
    TaskRecord {
        execution_id: id,
        task: name.into(),
        outcome: if ok {
            TaskOutcome::Completed
        } else {
            TaskOutcome::Failed
        },
        attempts: if ok { 1 } else { 3 },
        output: if ok {
            format!("{{\"{name}\":true}}").into_bytes()
        } else {
            Vec::new()
        },
        error: (!ok).then(|| format!("{name} broke")),
        started_at_unix_us: T0 + 10,
        finished_at_unix_us: T0 + 20,
    }
}

fn end(id: u64, status: ExecutionStatus) -> ExecutionEndRecord {
    ExecutionEndRecord {
        execution_id: id,
        status,
        final_context: br#"{"done":true}"#.to_vec(),
        error: None,
        finished_at_unix_us: T0 + 30,
    }
}

struct Check<'a> {
    name: &'static str,
    store: &'a dyn WorkflowStore,
}

impl Check<'_> {
    async fn write(&self, records: Vec<WorkflowRecord>) {
        self.store
            .write(&records, Commit::Buffered)
            .await
            .unwrap_or_else(|e| panic!("{}: workflow write: {e}", self.name));
    }

    async fn get(&self, id: u64) -> Option<StoredExecution> {
        self.store
            .execution(id)
            .await
            .unwrap_or_else(|e| panic!("{}: read execution {id}: {e}", self.name))
    }

    /// The execution, which the store must hold.
    async fn must_get(&self, id: u64) -> StoredExecution {
        self.get(id)
            .await
            .unwrap_or_else(|| panic!("{}: execution {id} lost", self.name))
    }

    async fn claim(&self, owner: &str, now: i64, until: i64) -> Vec<u64> {
        self.store
            .claim_unfinished(owner, now, until, 100)
            .await
            .unwrap_or_else(|e| panic!("{}: claim: {e}", self.name))
            .iter()
            .map(|e| e.execution.id)
            .collect()
    }
}

fn store_of(ledger: Arc<dyn crate::Ledger>) -> Arc<dyn WorkflowStore> {
    let name = ledger.backend();
    ledger
        .workflow_store()
        .unwrap_or_else(|| panic!("{name}: a built-in backend keeps workflows"))
}

/// Runs the workflow store checks on the store `harness` opens.
pub(super) async fn run(harness: &dyn Harness) {
    let ledger = harness.open().await;
    let name = ledger.backend();
    let store = store_of(ledger);
    let c = Check {
        name,
        store: &*store,
    };

    // Ids come in disjoint blocks.
    let first = store.reserve_execution_ids(10).await.expect("reserve ids");
    let second = store.reserve_execution_ids(5).await.expect("reserve ids");
    assert!(first >= 1, "{name}: ids start at 1");
    assert!(
        second >= first + 10,
        "{name}: blocks overlap ({first}, {second})"
    );
    let (e1, e2, e3) = (first, first + 1, first + 2);

    // A start and task outcomes read back field for field, tasks in task-id order.
    c.write(vec![
        WorkflowRecord::Started(start(e1, "r1", T0 + 1_000)),
        WorkflowRecord::Task(task(e1, "b", false)),
        WorkflowRecord::Task(task(e1, "a", true)),
    ])
    .await;
    let got = c.must_get(e1).await;
    assert_eq!(
        got.execution,
        start(e1, "r1", T0 + 1_000),
        "{name}: start read back"
    );
    assert_eq!(got.status, ExecutionStatus::Running);
    assert_eq!(
        got.tasks,
        vec![task(e1, "a", true), task(e1, "b", false)],
        "{name}: tasks"
    );
    assert_eq!(got.end, None);

    // The first record wins: a second start, task outcome or end changes nothing.
    let mut other = start(e1, "r9", 0);
    other.workflow = "changed".into();
    let mut rerun = task(e1, "a", true);
    rerun.output = b"{}".to_vec();
    c.write(vec![
        WorkflowRecord::Started(other),
        WorkflowRecord::Task(rerun),
        WorkflowRecord::Task(task(e3 + 1_000, "orphan", true)),
    ])
    .await;
    let again = c.must_get(e1).await;
    assert_eq!(
        again.execution, got.execution,
        "{name}: a second start changed the first"
    );
    assert_eq!(
        again.tasks, got.tasks,
        "{name}: a second task outcome changed the first"
    );
    assert_eq!(
        c.get(e3 + 1_000).await,
        None,
        "{name}: an orphan task made an execution"
    );

    c.write(vec![WorkflowRecord::Ended(end(
        e1,
        ExecutionStatus::Completed,
    ))])
    .await;
    c.write(vec![WorkflowRecord::Ended(end(
        e1,
        ExecutionStatus::Failed,
    ))])
    .await;
    let ended = c.must_get(e1).await;
    assert_eq!(
        ended.status,
        ExecutionStatus::Completed,
        "{name}: first end wins"
    );
    assert_eq!(ended.end, Some(end(e1, ExecutionStatus::Completed)));

    // A start after the end changes nothing either, for a reserved id and for one never
    // handed out (started and ended in one batch).
    let unreserved = second + 100_000;
    c.write(vec![
        WorkflowRecord::Started(start(unreserved, "r1", T0)),
        WorkflowRecord::Ended(end(unreserved, ExecutionStatus::Cancelled)),
    ])
    .await;
    for id in [e1, unreserved] {
        let before = c.must_get(id).await;
        let mut late = start(id, "r7", T0 + 7);
        late.workflow = "late".into();
        c.write(vec![WorkflowRecord::Started(late)]).await;
        assert_eq!(
            c.get(id).await,
            Some(before),
            "{name}: a start after the end of {id} changed it"
        );
    }

    // A short execution whole in one batch (start, task outcome, end), as the runner's group
    // commit writes it under load; written again (a retry whose answer was lost), it
    // changes nothing.
    let whole = second + 1;
    let batch = vec![
        WorkflowRecord::Started(start(whole, "r1", T0)),
        WorkflowRecord::Task(task(whole, "only", true)),
        WorkflowRecord::Ended(end(whole, ExecutionStatus::Completed)),
    ];
    c.write(batch.clone()).await;
    let got = c.must_get(whole).await;
    assert_eq!(got.execution, start(whole, "r1", T0), "{name}: whole start");
    assert_eq!(
        got.tasks,
        vec![task(whole, "only", true)],
        "{name}: whole task"
    );
    assert_eq!(
        got.end,
        Some(end(whole, ExecutionStatus::Completed)),
        "{name}: whole end"
    );
    let mut retried = batch;
    retried.push(WorkflowRecord::Ended(end(whole, ExecutionStatus::Failed)));
    c.write(retried).await;
    assert_eq!(c.get(whole).await, Some(got), "{name}: whole batch again");

    // A start written again with an end, the execution running in the store: the end is
    // recorded, the first start kept.
    let running = second + 2;
    c.write(vec![WorkflowRecord::Started(start(running, "r1", T0))])
        .await;
    let mut again = start(running, "r5", T0 + 5);
    again.workflow = "changed".into();
    c.write(vec![
        WorkflowRecord::Started(again),
        WorkflowRecord::Ended(end(running, ExecutionStatus::Failed)),
    ])
    .await;
    let got = c.must_get(running).await;
    assert_eq!(
        got.execution,
        start(running, "r1", T0),
        "{name}: first start kept"
    );
    assert_eq!(
        got.end,
        Some(end(running, ExecutionStatus::Failed)),
        "{name}: end with a second start"
    );

    // A bad record refuses the whole batch.
    let refused = store
        .write(
            &[
                WorkflowRecord::Started(start(e3, "r1", T0)),
                WorkflowRecord::Ended(end(e3, ExecutionStatus::Running)),
            ],
            Commit::Buffered,
        )
        .await;
    assert!(
        matches!(refused, Err(LedgerError::Rejected { .. })),
        "{name}: an end saying Running: {refused:?}"
    );
    assert_eq!(
        c.get(e3).await,
        None,
        "{name}: part of a refused batch was applied"
    );

    // Claims: own executions and expired leases only; ended ones never.
    c.write(vec![WorkflowRecord::Started(start(e2, "r1", T0 + 1_000))])
        .await;
    assert_eq!(
        c.claim("r2", T0, T0 + 5_000).await,
        Vec::<u64>::new(),
        "{name}: r1's lease holds"
    );
    assert_eq!(
        c.claim("r1", T0, T0 + 2_000).await,
        vec![e2],
        "{name}: r1 takes its own"
    );
    assert_eq!(
        c.claim("r2", T0 + 3_000, T0 + 9_000).await,
        vec![e2],
        "{name}: expired lease"
    );
    let claimed = c.must_get(e2).await;
    assert_eq!(
        (
            claimed.execution.owner.as_str(),
            claimed.execution.lease_until_unix_us
        ),
        ("r2", T0 + 9_000)
    );
    assert_eq!(
        store.renew_claims("r2", T0 + 20_000).await.ok(),
        Some(vec![e2]),
        "{name}: renew"
    );
    assert_eq!(
        store.renew_claims("r1", T0 + 20_000).await.ok(),
        Some(vec![])
    );
    assert_eq!(
        c.get(e2).await.map(|e| e.execution.lease_until_unix_us),
        Some(T0 + 20_000)
    );
    let limited = store
        .claim_unfinished("r2", T0, T0 + 30_000, 0)
        .await
        .expect("claim");
    assert!(limited.is_empty(), "{name}: limit 0 claims nothing");

    scale_out(&c, &*store).await;

    // A large batch (backends split it into several statements or key writes): every
    // record lands once, the first of each kind wins across the whole batch, and a task of
    // an execution that was never started is dropped.
    const MANY: u64 = 300;
    let b = store.reserve_execution_ids(MANY).await.expect("reserve");
    let mut batch: Vec<WorkflowRecord> = (b..b + MANY)
        .map(|id| WorkflowRecord::Started(start(id, "r9", T0 + 90_000)))
        .collect();
    batch.extend((b..b + MANY).map(|id| WorkflowRecord::Task(task(id, "t", true))));
    batch.push(WorkflowRecord::Task(task(b + MANY - 1, "t", false)));
    batch.push(WorkflowRecord::Task(task(
        b + MANY + 1_000_000,
        "orphan",
        true,
    )));
    batch.extend((b..b + 200).map(|id| WorkflowRecord::Ended(end(id, ExecutionStatus::Completed))));
    batch.push(WorkflowRecord::Ended(end(b + 199, ExecutionStatus::Failed)));
    c.write(batch).await;
    for id in b..b + MANY {
        let got = c.must_get(id).await;
        assert_eq!(
            got.tasks,
            vec![task(id, "t", true)],
            "{name}: tasks of {id}"
        );
        let expected = if id < b + 200 {
            ExecutionStatus::Completed
        } else {
            ExecutionStatus::Running
        };
        assert_eq!(got.status, expected, "{name}: status of {id}");
    }
    assert_eq!(
        c.get(b + MANY + 1_000_000).await,
        None,
        "{name}: orphan task"
    );

    drop(store);
    if harness.persistent() {
        let store = store_of(harness.open().await);
        let c = Check {
            name,
            store: &*store,
        };
        assert_eq!(
            c.get(e1).await,
            Some(ended),
            "{name}: ended execution after reopen"
        );
        assert_eq!(
            c.get(e2).await.map(|e| e.execution.owner),
            Some("r2".to_owned()),
            "{name}: claim after reopen"
        );
        let before = c.get(unreserved).await;
        assert!(
            before.is_some(),
            "{name}: ended execution {unreserved} after reopen"
        );
        c.write(vec![WorkflowRecord::Started(start(unreserved, "r8", T0))])
            .await;
        assert_eq!(
            c.get(unreserved).await,
            before,
            "{name}: a start after reopen changed ended execution {unreserved}"
        );
        for (id, status) in [
            (b, ExecutionStatus::Completed),
            (b + 199, ExecutionStatus::Completed),
            (b + 200, ExecutionStatus::Running),
            (b + MANY - 1, ExecutionStatus::Running),
        ] {
            let got = c.get(id).await.map(|e| (e.status, e.tasks));
            assert_eq!(
                got,
                Some((status, vec![task(id, "t", true)])),
                "{name}: execution {id} of the large batch after reopen"
            );
        }
        let third = store.reserve_execution_ids(1).await.expect("reserve");
        assert!(
            third >= second + 5,
            "{name}: ids reused after reopen ({third})"
        );
    }
}

/// What several runners sharing a store rely on: expired claims taken over (and counted),
/// work submitted unclaimed, the work signal, and fenced writes.
async fn scale_out(c: &Check<'_>, store: &dyn WorkflowStore) {
    let name = c.name;
    let before = store.unfinished_count().await.expect("count");
    let signal = store.work_signal();
    let seen = signal.as_ref().map(|s| *s.borrow());
    let b = store.reserve_execution_ids(3).await.expect("reserve");
    let (held, expired, submitted) = (b, b + 1, b + 2);
    c.write(vec![
        WorkflowRecord::Started(start(held, "r1", T0 + 50_000)),
        WorkflowRecord::Started(start(expired, "r1", T0 + 1_000)),
        WorkflowRecord::Started(start(submitted, crate::UNCLAIMED, 0)),
    ])
    .await;
    assert_eq!(
        store.unfinished_count().await.expect("count"),
        before + 3,
        "{name}: unfinished executions counted"
    );
    if let (Some(signal), Some(seen)) = (&signal, seen) {
        assert_ne!(
            *signal.borrow(),
            seen,
            "{name}: submitted work is signalled"
        );
    }

    // Only workflows the claimer can run: none of an unknown one, nothing for no names.
    let unknown = ["other".to_owned()];
    let none = store
        .claim_expired("r2", T0 + 10_000, T0 + 60_000, 100, &unknown)
        .await
        .expect("claim expired");
    assert!(
        none.iter().all(|e| e.execution.id < b),
        "{name}: claimed another workflow's executions"
    );
    assert!(store
        .claim_expired("r2", T0 + 10_000, T0 + 60_000, 100, &[])
        .await
        .expect("claim expired")
        .is_empty());
    let known = [start(b, "x", 0).workflow];
    // Only expired leases (and unclaimed work), whoever held them; never r1's live one.
    let claimed = store
        .claim_expired("r2", T0 + 10_000, T0 + 60_000, 100, &known)
        .await
        .expect("claim expired");
    let got: Vec<(u64, u32)> = claimed
        .iter()
        .filter(|e| e.execution.id >= b)
        .map(|e| (e.execution.id, e.takeovers))
        .collect();
    assert_eq!(
        got,
        vec![(expired, 1), (submitted, 0)],
        "{name}: claim_expired takes expired and unclaimed executions; a takeover counts"
    );
    assert_eq!(
        c.must_get(expired).await.takeovers,
        1,
        "{name}: takeovers stored"
    );
    assert_eq!(c.must_get(expired).await.execution.owner, "r2");
    assert_eq!(c.must_get(held).await.execution.owner, "r1");

    // Fenced writes: r1 lost `expired`, so its records of it are dropped; r2's land.
    let r1_late = [
        WorkflowRecord::Task(task(expired, "late", true)),
        WorkflowRecord::Ended(end(expired, ExecutionStatus::Failed)),
        WorkflowRecord::Task(task(held, "mine", true)),
    ];
    let dropped = store
        .write_as("r1", &r1_late, Commit::Buffered)
        .await
        .expect("fenced write");
    assert_eq!(
        dropped,
        vec![expired],
        "{name}: a fenced write names the executions whose records it dropped"
    );
    let lost = c.must_get(expired).await;
    assert!(
        lost.tasks.is_empty() && lost.end.is_none(),
        "{name}: a runner that lost its claim recorded {lost:?}"
    );
    assert_eq!(
        c.must_get(held).await.tasks.len(),
        1,
        "{name}: a fenced write records what its runner holds"
    );
    let none_dropped = store
        .write_as(
            "r2",
            &[
                WorkflowRecord::Task(task(expired, "late", true)),
                WorkflowRecord::Ended(end(expired, ExecutionStatus::Completed)),
            ],
            Commit::Buffered,
        )
        .await
        .expect("holder's write");
    assert!(none_dropped.is_empty(), "{name}: {none_dropped:?}");
    let done = c.must_get(expired).await;
    assert_eq!(
        (done.tasks.len(), done.status),
        (1, ExecutionStatus::Completed),
        "{name}: the holder's records land"
    );
    // Clean up for the checks after this one: r2 and r1 end theirs.
    c.write(vec![
        WorkflowRecord::Ended(end(held, ExecutionStatus::Completed)),
        WorkflowRecord::Ended(end(submitted, ExecutionStatus::Completed)),
    ])
    .await;
}
