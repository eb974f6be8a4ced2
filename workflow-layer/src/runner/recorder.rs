//! The runner's group commit: executions hand their records to one background task, which
//! writes whatever has queued up as one batch ([`WorkflowStore::write`]), as many batches
//! at once as the store takes, and answers every sender when its batch is written.
//! Under load one commit covers the records of many executions; alone, a record waits for
//! nothing but its own write.
//!
//! An execution's start goes in as a [`PendingStart`]: until a batch takes it, the
//! execution's driver may add its first records to it ([`PendingStart::join`]), so under
//! load a short execution's start, task outcomes and end share one commit.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use std::future::Future;
use std::pin::Pin;

use cloacina_ledger::{Commit, Ledger, LedgerError, WorkflowRecord, WorkflowStore};
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, oneshot, watch};

/// Most records in one batch.
const MAX_BATCH: usize = 4_096;
/// Most batches written at once, whatever the store asks for
/// ([`WorkflowStore::concurrent_writes`]): one makes the biggest batches, and is what the
/// embedded stores take (SQLite serializes writes; sled 0.34 deadlocked with three
/// overlapping writes and flushes, a writer holding its segment lock waiting for a file
/// truncation queued behind IO threads that wait for that lock: spacejam/sled#1412);
/// PostgreSQL takes two, one per write connection. A [`Commit::Buffered`] flush takes a
/// write's place.
const MAX_IN_FLIGHT: usize = 4;
/// With [`Commit::Buffered`], how soon after a write the store is flushed.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Tries per batch when the store reports a transient error.
const TRIES: u32 = 5;

type Written = Result<(), Arc<LedgerError>>;

/// Who is answered when a batch is written.
enum Ack {
    Records(oneshot::Sender<Written>),
    Start(StartAck),
}

impl Ack {
    fn send(self, written: Written) {
        match self {
            Self::Records(tx) => {
                let _ = tx.send(written);
            }
            Self::Start(start) => start.send(written),
        }
    }
}

/// An execution's start on its way to the store, with whatever its driver added to it
/// before a batch took it.
pub(crate) struct PendingStart {
    /// `Some` until a batch takes the records.
    records: Mutex<Option<Vec<WorkflowRecord>>>,
    written: watch::Sender<Option<Written>>,
}

impl PendingStart {
    /// Adds `records` to the start if no batch has taken it yet (they are then written with
    /// it, in one commit); gives them back otherwise.
    pub(crate) fn join(&self, records: Vec<WorkflowRecord>) -> Result<(), Vec<WorkflowRecord>> {
        let mut open = self.records.lock().unwrap_or_else(PoisonError::into_inner);
        match open.as_mut() {
            Some(start) => {
                start.extend(records);
                Ok(())
            }
            None => Err(records),
        }
    }

    /// Waits until the start (and what joined it) is written, or could not be.
    pub(crate) async fn written(&self) -> Written {
        let mut rx = self.written.subscribe();
        let answer = rx.wait_for(Option::is_some).await.map(|w| w.clone());
        match answer {
            Ok(Some(written)) => written,
            // The sender lives in `self`: neither can happen.
            _ => Err(Arc::new(LedgerError::Closed { pending: 1 })),
        }
    }

    /// Takes the records for a batch; later joins are refused.
    fn take(&self) -> Vec<WorkflowRecord> {
        self.records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .unwrap_or_default()
    }
}

/// The group-commit task's hold on a [`PendingStart`]: answers it exactly once, with
/// [`LedgerError::Closed`] if dropped unanswered (the task stopped with it still queued).
struct StartAck {
    start: Arc<PendingStart>,
    pending: usize,
    answered: bool,
}

impl StartAck {
    fn send(mut self, written: Written) {
        self.answered = true;
        self.start.written.send_replace(Some(written));
    }
}

impl Drop for StartAck {
    fn drop(&mut self) {
        if !self.answered {
            let pending = self.pending.max(1);
            self.start
                .written
                .send_replace(Some(Err(Arc::new(LedgerError::Closed { pending }))));
        }
    }
}

/// Flushes what was written (the ledger's [`Ledger::flush`]); the closure owns the ledger.
type Flush =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), LedgerError>> + Send>> + Send + Sync>;

/// What an in-flight operation was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InFlight {
    Write,
    Flush,
}

enum Msg {
    Records(Vec<WorkflowRecord>, oneshot::Sender<Written>),
    Start(StartAck),
    /// Write what is queued, let go of the store, then answer.
    Close(oneshot::Sender<()>),
}

/// Hands records to the group-commit task.
#[derive(Clone)]
pub(crate) struct Recorder {
    tx: mpsc::Sender<Msg>,
}

impl Recorder {
    /// Starts the group-commit task writing to `store` with `commit`. With
    /// [`Commit::Buffered`] it also flushes `ledger` within [`FLUSH_EVERY`] of a write, so
    /// a crash loses at most that window (as the reactors' ledger writer does).
    /// Writes are fenced as runner `owner`'s ([`WorkflowStore::write_as`]): once another
    /// runner takes an execution over, this one's records of it are dropped.
    pub(crate) fn spawn(
        ledger: Arc<dyn Ledger>,
        store: Arc<dyn WorkflowStore>,
        owner: &str,
        commit: Commit,
    ) -> Self {
        let in_flight = store.concurrent_writes().clamp(1, MAX_IN_FLIGHT);
        let flush: Flush = Arc::new(move || {
            let ledger = Arc::clone(&ledger);
            Box::pin(async move { ledger.flush().await })
        });
        Self::spawn_with(flush, store, owner.into(), commit, in_flight)
    }

    fn spawn_with(
        flush: Flush,
        store: Arc<dyn WorkflowStore>,
        owner: Arc<str>,
        commit: Commit,
        in_flight: usize,
    ) -> Self {
        let (tx, rx) = mpsc::channel(MAX_BATCH);
        tokio::spawn(run(flush, store, owner, commit, rx, in_flight));
        Self { tx }
    }

    /// Records `records` (in one batch) and returns once they are written.
    pub(crate) async fn record(
        &self,
        records: Vec<WorkflowRecord>,
    ) -> Result<(), Arc<LedgerError>> {
        let pending = records.len();
        let (ack, done) = oneshot::channel();
        self.tx
            .send(Msg::Records(records, ack))
            .await
            .map_err(|_| Arc::new(LedgerError::Closed { pending }))?;
        done.await
            .unwrap_or_else(|_| Err(Arc::new(LedgerError::Closed { pending })))
    }

    /// Queues an execution's start (`record`) and returns it as a [`PendingStart`], to
    /// which the execution's first records may be added until a batch takes it.
    pub(crate) async fn start(
        &self,
        record: WorkflowRecord,
    ) -> Result<Arc<PendingStart>, Arc<LedgerError>> {
        let start = Arc::new(PendingStart {
            records: Mutex::new(Some(vec![record])),
            written: watch::Sender::new(None),
        });
        let ack = StartAck {
            start: Arc::clone(&start),
            pending: 1,
            answered: false,
        };
        self.tx
            .send(Msg::Start(ack))
            .await
            .map_err(|_| Arc::new(LedgerError::Closed { pending: 1 }))?;
        Ok(start)
    }

    /// Writes what is queued and stops the task (it drops its handle on the store); later
    /// records fail with [`LedgerError::Closed`].
    pub(crate) async fn close(&self) {
        let (tx, done) = oneshot::channel();
        if self.tx.send(Msg::Close(tx)).await.is_ok() {
            let _ = done.await;
        }
    }
}

async fn run(
    flush: Flush,
    store: Arc<dyn WorkflowStore>,
    owner: Arc<str>,
    commit: Commit,
    mut rx: mpsc::Receiver<Msg>,
    max_in_flight: usize,
) {
    let mut in_flight: FuturesUnordered<Pin<Box<dyn Future<Output = InFlight> + Send>>> =
        FuturesUnordered::new();
    let mut closing = None;
    // When to flush what was written since the last flush (Buffered only).
    let mut flush_at: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(flush_at.unwrap_or_else(tokio::time::Instant::now)),
                if flush_at.is_some() && in_flight.len() < max_in_flight =>
            {
                flush_at = None;
                let flushed = flush();
                in_flight.push(Box::pin(async move {
                    if let Err(e) = flushed.await {
                        tracing::warn!(error = %e, "workflow store flush failed");
                    }
                    InFlight::Flush
                }));
            }
            first = rx.recv(), if closing.is_none() && in_flight.len() < max_in_flight => {
                let Some(first) = first else { break };
                let mut batch: Vec<WorkflowRecord> = Vec::new();
                // Per sender: where its records start in the batch, and its answer.
                let mut acks: Vec<(usize, Ack)> = Vec::new();
                let mut next = Some(first);
                while let Some(msg) = next.take() {
                    match msg {
                        Msg::Records(records, ack) => {
                            acks.push((batch.len(), Ack::Records(ack)));
                            batch.extend(records);
                        }
                        Msg::Start(mut ack) => {
                            let records = ack.start.take();
                            ack.pending = records.len();
                            acks.push((batch.len(), Ack::Start(ack)));
                            batch.extend(records);
                        }
                        Msg::Close(done) => {
                            closing = Some(done);
                            break;
                        }
                    }
                    if batch.len() < MAX_BATCH {
                        next = rx.try_recv().ok();
                    }
                }
                if !batch.is_empty() {
                    let store = Arc::clone(&store);
                    let owner = Arc::clone(&owner);
                    in_flight.push(Box::pin(async move {
                        let outcome = write(&*store, &owner, &batch, commit).await;
                        metrics::counter!("cloacina_workflow_records_total")
                            .increment(batch.len() as u64);
                        metrics::counter!("cloacina_workflow_commits_total").increment(1);
                        // Where each sender's records end in the batch.
                        let ends: Vec<usize> = acks
                            .iter()
                            .skip(1)
                            .map(|(start, _)| *start)
                            .chain([batch.len()])
                            .collect();
                        match outcome {
                            Err(e) if !e.is_transient() && acks.len() > 1 => {
                                // One sender's bad record must not fail the others: each
                                // sender's records again, on their own.
                                tracing::warn!(error = %e, senders = acks.len(),
                                    "workflow batch refused; writing each execution's records alone");
                                for ((start, ack), end) in acks.into_iter().zip(ends) {
                                    let records = &batch[start..end];
                                    let alone = write(&*store, &owner, records, commit).await;
                                    ack.send(answer(&alone, records));
                                }
                            }
                            outcome => {
                                for ((start, ack), end) in acks.into_iter().zip(ends) {
                                    ack.send(answer(&outcome, &batch[start..end]));
                                }
                            }
                        }
                        InFlight::Write
                    }));
                }
            }
            Some(done) = in_flight.next() => {
                // A flush covers the writes that ended before it starts: the next one is
                // due once a write has ended (not when it was sent, or a flush started
                // beside a write still under way would be the last one it got).
                if done == InFlight::Write && commit == Commit::Buffered && flush_at.is_none() {
                    flush_at = Some(tokio::time::Instant::now() + FLUSH_EVERY);
                }
            }
            else => break,
        }
        if closing.is_some() && in_flight.is_empty() {
            break;
        }
    }
    while in_flight.next().await.is_some() {}
    drop(store);
    drop(flush);
    rx.close();
    // Records sent after the close: refused, not lost silently (a start is answered so
    // when its `StartAck` drops).
    while let Ok(msg) = rx.try_recv() {
        if let Msg::Records(records, ack) = msg {
            let _ = ack.send(Err(Arc::new(LedgerError::Closed {
                pending: records.len(),
            })));
        }
    }
    if let Some(done) = closing {
        let _ = done.send(());
    }
}

/// A sender's answer: the write's error, or [`LedgerError::ClaimLost`] if the fence dropped
/// the records of its execution (another runner holds it now).
fn answer(outcome: &Result<Vec<u64>, Arc<LedgerError>>, records: &[WorkflowRecord]) -> Written {
    let dropped = outcome.as_ref().map_err(Arc::clone)?;
    if dropped.is_empty() {
        return Ok(());
    }
    let lost = records.iter().find_map(|r| {
        let id = match r {
            WorkflowRecord::Started(s) => s.id,
            WorkflowRecord::Task(t) => t.execution_id,
            WorkflowRecord::Ended(e) => e.execution_id,
        };
        dropped.contains(&id).then_some(id)
    });
    match lost {
        Some(execution) => Err(Arc::new(LedgerError::ClaimLost { execution })),
        None => Ok(()),
    }
}

/// Writes `batch` fenced as `owner`'s; returns the executions whose records the fence
/// dropped.
async fn write(
    store: &dyn WorkflowStore,
    owner: &str,
    batch: &[WorkflowRecord],
    commit: Commit,
) -> Result<Vec<u64>, Arc<LedgerError>> {
    let mut tries = 0;
    loop {
        tries += 1;
        match store.write_as(owner, batch, commit).await {
            Ok(dropped) => return Ok(dropped),
            Err(e) if e.is_transient() && tries < TRIES => {
                tracing::warn!(error = %e, tries, "workflow store write failed; trying again");
                tokio::time::sleep(Duration::from_millis(50 << tries)).await;
            }
            Err(e) => {
                tracing::error!(error = %e, records = batch.len(), "workflow store write failed");
                return Err(Arc::new(e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloacina_ledger::{ExecutionRecord, LedgerFuture, StoredExecution};
    use std::sync::Mutex;
    use tokio::time::Instant;

    /// A store whose writes take the given times, noting when each ends.
    struct SlowStore {
        delays: Mutex<Vec<Duration>>,
        ended: Mutex<Vec<Instant>>,
        /// Each write's records.
        batches: Mutex<Vec<Vec<WorkflowRecord>>>,
    }

    impl SlowStore {
        fn new(delays: Vec<Duration>) -> Arc<Self> {
            Arc::new(Self {
                delays: Mutex::new(delays),
                ended: Mutex::new(Vec::new()),
                batches: Mutex::new(Vec::new()),
            })
        }
    }

    impl WorkflowStore for SlowStore {
        fn workflow_backend(&self) -> &'static str {
            "slow"
        }
        fn write<'a>(&'a self, batch: &'a [WorkflowRecord], _: Commit) -> LedgerFuture<'a, ()> {
            Box::pin(async move {
                self.batches.lock().expect("lock").push(batch.to_vec());
                let delay = self.delays.lock().expect("lock").remove(0);
                tokio::time::sleep(delay).await;
                self.ended.lock().expect("lock").push(Instant::now());
                Ok(())
            })
        }
        fn write_as<'a>(
            &'a self,
            _: &'a str,
            batch: &'a [WorkflowRecord],
            commit: Commit,
        ) -> LedgerFuture<'a, Vec<u64>> {
            Box::pin(async move {
                self.write(batch, commit).await?;
                Ok(Vec::new())
            })
        }
        fn claim_expired<'a>(
            &'a self,
            _: &'a str,
            _: i64,
            _: i64,
            _: usize,
            _: &'a [String],
        ) -> LedgerFuture<'a, Vec<StoredExecution>> {
            Box::pin(async { Ok(Vec::new()) })
        }
        fn execution(&self, _: u64) -> LedgerFuture<'_, Option<StoredExecution>> {
            Box::pin(async { Ok(None) })
        }
        fn claim_unfinished<'a>(
            &'a self,
            _: &'a str,
            _: i64,
            _: i64,
            _: usize,
        ) -> LedgerFuture<'a, Vec<StoredExecution>> {
            Box::pin(async { Ok(Vec::new()) })
        }
        fn renew_claims<'a>(&'a self, _: &'a str, _: i64) -> LedgerFuture<'a, Vec<u64>> {
            Box::pin(async { Ok(Vec::new()) })
        }
        fn unfinished_count(&self) -> LedgerFuture<'_, u64> {
            Box::pin(async { Ok(0) })
        }
        fn reserve_execution_ids(&self, _: u64) -> LedgerFuture<'_, u64> {
            Box::pin(async { Ok(1) })
        }
    }

    fn start(id: u64) -> Vec<WorkflowRecord> {
        vec![WorkflowRecord::Started(ExecutionRecord {
            id,
            workflow: "w".into(),
            version: "v".into(),
            input: b"{}".to_vec(),
            created_at_unix_us: 0,
            owner: "r".into(),
            lease_until_unix_us: 0,
        })]
    }

    #[tokio::test(start_paused = true)]
    async fn a_buffered_write_still_under_way_when_a_flush_starts_gets_a_later_flush() {
        let store = SlowStore::new(vec![Duration::from_millis(10), Duration::from_millis(50)]);
        let flushes = Arc::new(Mutex::new(Vec::<Instant>::new()));
        let noted = Arc::clone(&flushes);
        let flush: Flush = Arc::new(move || {
            noted.lock().expect("lock").push(Instant::now());
            Box::pin(async { Ok(()) })
        });
        let t0 = Instant::now();
        let recorder = Recorder::spawn_with(flush, store.clone(), "r".into(), Commit::Buffered, 2);
        recorder.record(start(1)).await.expect("first write");
        // The second write is under way when the flush due after the first one starts.
        tokio::time::sleep_until(t0 + FLUSH_EVERY - Duration::from_millis(5)).await;
        recorder.record(start(2)).await.expect("second write");
        tokio::time::sleep(FLUSH_EVERY * 3).await;
        recorder.close().await;
        let last_write = *store.ended.lock().expect("lock").last().expect("writes");
        let flushes = flushes.lock().expect("lock").clone();
        assert!(
            flushes.iter().any(|f| *f >= last_write),
            "no flush after the last write ended ({:?} after start; flushes at {:?})",
            last_write - t0,
            flushes.iter().map(|f| *f - t0).collect::<Vec<_>>()
        );
        assert!(
            flushes.len() <= 3,
            "flushes only after writes: {}",
            flushes.len()
        );
    }

    fn noop_flush() -> Flush {
        Arc::new(|| Box::pin(async { Ok(()) }))
    }

    fn end(id: u64) -> WorkflowRecord {
        WorkflowRecord::Ended(cloacina_ledger::ExecutionEndRecord {
            execution_id: id,
            status: cloacina_ledger::ExecutionStatus::Completed,
            final_context: b"{}".to_vec(),
            error: None,
            finished_at_unix_us: 1,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn records_joining_a_queued_start_share_its_commit() {
        let store = SlowStore::new(vec![Duration::from_millis(20); 3]);
        let recorder =
            Recorder::spawn_with(noop_flush(), store.clone(), "r".into(), Commit::Buffered, 1);
        // A write under way: the start queues behind it.
        let busy = {
            let recorder = recorder.clone();
            tokio::spawn(async move { recorder.record(start(1)).await })
        };
        tokio::time::sleep(Duration::from_millis(1)).await;
        let pending = recorder.start(start(2).remove(0)).await.expect("queued");
        assert!(
            pending.join(vec![end(2)]).is_ok(),
            "joined the queued start"
        );
        pending.written().await.expect("written");
        busy.await.expect("task").expect("first write");
        recorder.close().await;
        let batches = store.batches.lock().expect("lock").clone();
        assert_eq!(batches.len(), 2, "one commit for the start and its end");
        assert_eq!(batches[1], vec![start(2).remove(0), end(2)]);
    }

    #[tokio::test(start_paused = true)]
    async fn records_after_a_taken_start_are_given_back() {
        let store = SlowStore::new(vec![Duration::from_millis(20); 2]);
        let recorder =
            Recorder::spawn_with(noop_flush(), store.clone(), "r".into(), Commit::Buffered, 1);
        let pending = recorder.start(start(3).remove(0)).await.expect("queued");
        // The idle recorder takes it at once.
        tokio::time::sleep(Duration::from_millis(1)).await;
        let back = pending.join(vec![end(3)]).expect_err("start already taken");
        assert_eq!(back, vec![end(3)]);
        pending.written().await.expect("start written");
        recorder.record(back).await.expect("end written");
        recorder.close().await;
        assert_eq!(store.batches.lock().expect("lock").len(), 2);
    }

    #[tokio::test]
    async fn a_start_queued_at_close_is_answered_closed() {
        let store = SlowStore::new(vec![Duration::from_millis(0); 2]);
        let recorder =
            Recorder::spawn_with(noop_flush(), store.clone(), "r".into(), Commit::Buffered, 1);
        recorder.close().await;
        match recorder.start(start(4).remove(0)).await {
            // Refused at the channel, or queued and answered Closed.
            Err(e) => assert!(matches!(*e, LedgerError::Closed { .. })),
            Ok(pending) => {
                let written = pending.written().await;
                let e = written.expect_err("closed");
                assert!(matches!(*e, LedgerError::Closed { .. }));
            }
        }
        assert!(store.batches.lock().expect("lock").is_empty());
    }
}
