//! [`LedgerWriter`]: the background task that appends records in batches (group commit).

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tokio::sync::{mpsc, oneshot};

use crate::{Commit, Ledger, LedgerError, Record};

/// Told once the record it went with has been appended (with the writer's [`Commit`]), or
/// given up on. A `Durable` writer's `Ok` means the record is on stable storage.
pub type AckSender = oneshot::Sender<Result<(), LedgerError>>;

/// Records appended per batch at most.
pub const MAX_BATCH: usize = 4096;

/// Tries per batch before its records are counted as lost.
pub const APPEND_ATTEMPTS: u32 = 3;

/// How a [`LedgerWriter`] commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterOptions {
    /// Records the queue holds; a full queue makes [`LedgerWriter::write`] wait.
    pub capacity: usize,
    /// How durable each batch is when its append returns.
    pub commit: Commit,
    /// With [`Commit::Buffered`]: the longest a batch stays un-flushed while records keep
    /// coming (the writer also flushes whenever its queue runs empty). `None`: never flush;
    /// leave it to the store.
    pub flush_interval: Option<Duration>,
}

impl Default for WriterOptions {
    fn default() -> Self {
        Self {
            capacity: 65_536,
            commit: Commit::Buffered,
            flush_interval: Some(Duration::from_millis(100)),
        }
    }
}

struct Entry {
    record: Record,
    ack: Option<AckSender>,
}

#[derive(Debug, Default)]
struct StatusCells {
    failing: AtomicBool,
    failed_appends: AtomicU64,
    lost_records: AtomicU64,
    written: AtomicU64,
    batches: AtomicU64,
    flushes: AtomicU64,
}

/// How a [`LedgerWriter`] is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriterStatus {
    /// The last append failed (cleared by the next success).
    pub failing: bool,
    /// Append attempts that failed.
    pub failed_appends: u64,
    /// Records given up on after every attempt failed.
    pub lost_records: u64,
    /// Records appended.
    pub written: u64,
    /// Appends (group commits) made.
    pub batches: u64,
    /// Flushes made (buffered writers).
    pub flushes: u64,
}

/// Hands records to a background task that appends them in batches (group commit).
///
/// [`LedgerWriter::write`] waits only when the bounded queue is full: a slow store slows the
/// writer's callers rather than losing records. Records are appended in the order they were
/// queued, up to [`MAX_BATCH`] per append, so one flush or fsync covers every record (and
/// every caller) in the batch. A failed (or panicking) append is retried ([`APPEND_ATTEMPTS`]
/// tries with growing pauses); a batch that still fails is counted in
/// [`WriterStatus::lost_records`], its acknowledgements get the error, and
/// [`WriterStatus::failing`] stays true until an append succeeds again.
/// [`LedgerWriter::close`] waits until every record handed over has been appended or given
/// up on, flushes, and reports.
#[derive(Debug)]
pub struct LedgerWriter {
    tx: mpsc::Sender<Entry>,
    task: tokio::task::JoinHandle<WriterReport>,
    status: Arc<StatusCells>,
    commit: Commit,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.record.describe())
    }
}

impl LedgerWriter {
    /// Starts the writer task on the current tokio runtime.
    pub fn spawn(ledger: Arc<dyn Ledger>, options: WriterOptions) -> Self {
        // Clamped: tokio's semaphore caps permits, and a deeper queue only hides a slow store.
        let (tx, rx) = mpsc::channel::<Entry>(options.capacity.clamp(1, 1 << 24));
        let status = Arc::new(StatusCells::default());
        let task = tokio::spawn(run(ledger, options, rx, Arc::clone(&status)));
        Self {
            tx,
            task,
            status,
            commit: options.commit,
        }
    }

    /// How this writer commits.
    pub fn commit(&self) -> Commit {
        self.commit
    }

    /// Queues one record, waiting while the queue is full.
    pub async fn write(&self, record: Record) -> Result<(), LedgerError> {
        self.tx
            .send(Entry { record, ack: None })
            .await
            .map_err(|_| LedgerError::Closed { pending: 1 })
    }

    /// Queues one record and has `ack` told once its batch has been appended (durably, for a
    /// [`Commit::Durable`] writer) or given up on. Waits while the queue is full. If the
    /// writer has stopped, `ack` is handed back with the error.
    pub async fn write_acked(
        &self,
        record: Record,
        ack: AckSender,
    ) -> Result<(), (LedgerError, AckSender)> {
        match self
            .tx
            .send(Entry {
                record,
                ack: Some(ack),
            })
            .await
        {
            Ok(()) => Ok(()),
            Err(mpsc::error::SendError(entry)) => match entry.ack {
                Some(ack) => Err((LedgerError::Closed { pending: 1 }, ack)),
                None => Ok(()),
            },
        }
    }

    /// Queues many records in order, taking queue places in bulk (cheaper than one
    /// [`LedgerWriter::write`] each), waiting while the queue is full. Each record's `ack`, if
    /// any, is told as for [`LedgerWriter::write_acked`]. Returns how many records could not be
    /// handed over because the writer has stopped (their acks get the error).
    pub async fn write_all(&self, entries: &mut Vec<(Record, Option<AckSender>)>) -> usize {
        let mut lost = 0;
        let mut rest = entries.drain(..);
        loop {
            let want = rest.len().min(self.tx.max_capacity()).min(MAX_BATCH);
            if want == 0 {
                break;
            }
            match self.tx.reserve_many(want).await {
                Ok(permits) => {
                    for (permit, (record, ack)) in permits.zip(rest.by_ref()) {
                        permit.send(Entry { record, ack });
                    }
                }
                Err(_) => {
                    for (_, ack) in rest.by_ref() {
                        lost += 1;
                        if let Some(ack) = ack {
                            let _ = ack.send(Err(LedgerError::Closed { pending: 1 }));
                        }
                    }
                }
            }
        }
        lost
    }

    /// Queues one record and waits until it has been appended (durably, for a
    /// [`Commit::Durable`] writer).
    pub async fn write_and_wait(&self, record: Record) -> Result<(), LedgerError> {
        let (ack, done) = oneshot::channel();
        self.write_acked(record, ack).await.map_err(|(e, _)| e)?;
        done.await
            .unwrap_or(Err(LedgerError::Closed { pending: 1 }))
    }

    /// Whether the writer task has stopped taking records.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// How appends are going.
    pub fn status(&self) -> WriterStatus {
        let s = &self.status;
        WriterStatus {
            failing: s.failing.load(Ordering::Acquire),
            failed_appends: s.failed_appends.load(Ordering::Relaxed),
            lost_records: s.lost_records.load(Ordering::Relaxed),
            written: s.written.load(Ordering::Relaxed),
            batches: s.batches.load(Ordering::Relaxed),
            flushes: s.flushes.load(Ordering::Relaxed),
        }
    }

    /// Waits until everything queued has been appended (or given up on), flushes, and reports.
    pub async fn close(self) -> WriterReport {
        drop(self.tx);
        match self.task.await {
            Ok(report) => report,
            Err(e) => WriterReport {
                written: self.status.written.load(Ordering::Relaxed),
                lost: self.status.lost_records.load(Ordering::Relaxed),
                first_error: Some(LedgerError::Backend {
                    backend: "writer",
                    message: format!("writer task failed: {e}"),
                }),
            },
        }
    }
}

/// What a [`LedgerWriter`] did, from [`LedgerWriter::close`].
#[derive(Debug)]
pub struct WriterReport {
    /// Records appended.
    pub written: u64,
    /// Records given up on after every attempt failed.
    pub lost: u64,
    /// The first error of a batch that was given up on (or of the final flush).
    pub first_error: Option<LedgerError>,
}

/// One append, with a panicking backend turned into an error.
/// Runs one ledger call with a panicking backend turned into an error naming `what`. (The
/// call itself is inside the guard: it may panic before any future exists.)
async fn guarded<'a>(
    ledger: &'a dyn Ledger,
    what: &str,
    call: impl FnOnce() -> crate::LedgerFuture<'a, ()>,
) -> Result<(), LedgerError> {
    AssertUnwindSafe(async { call().await })
        .catch_unwind()
        .await
        .unwrap_or_else(|payload| {
            Err(LedgerError::Backend {
                backend: ledger.backend(),
                message: format!("{what} panicked: {}", panic_text(&*payload)),
            })
        })
}

async fn run(
    ledger: Arc<dyn Ledger>,
    options: WriterOptions,
    mut rx: mpsc::Receiver<Entry>,
    cells: Arc<StatusCells>,
) -> WriterReport {
    let mut entries: Vec<Entry> = Vec::with_capacity(MAX_BATCH);
    let mut records: Vec<Record> = Vec::with_capacity(MAX_BATCH);
    let mut acks: Vec<AckSender> = Vec::new();
    let mut first_error = None;
    let mut unflushed = false;
    let mut last_flush = Instant::now();
    let buffered = options.commit == Commit::Buffered;
    while rx.recv_many(&mut entries, MAX_BATCH).await > 0 {
        for entry in entries.drain(..) {
            records.push(entry.record);
            if let Some(ack) = entry.ack {
                acks.push(ack);
            }
        }
        let mut attempt = 0;
        let outcome = loop {
            attempt += 1;
            match guarded(&*ledger, "append", || {
                ledger.append(&records, options.commit)
            })
            .await
            {
                Ok(()) => {
                    cells
                        .written
                        .fetch_add(records.len() as u64, Ordering::Relaxed);
                    cells.batches.fetch_add(1, Ordering::Relaxed);
                    cells.failing.store(false, Ordering::Release);
                    break Ok(());
                }
                Err(e) => {
                    cells.failing.store(true, Ordering::Release);
                    cells.failed_appends.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(backend = ledger.backend(), records = records.len(), attempt, error = %e, "ledger append failed");
                    if attempt >= APPEND_ATTEMPTS {
                        cells
                            .lost_records
                            .fetch_add(records.len() as u64, Ordering::Relaxed);
                        break Err(e);
                    }
                    tokio::time::sleep(Duration::from_millis(10 * 10u64.pow(attempt - 1))).await;
                }
            }
        };
        match outcome {
            Ok(()) => {
                unflushed |= buffered;
                for ack in acks.drain(..) {
                    let _ = ack.send(Ok(()));
                }
            }
            Err(e) => {
                for ack in acks.drain(..) {
                    let _ = ack.send(Err(LedgerError::Backend {
                        backend: ledger.backend(),
                        message: format!("not recorded: {e}"),
                    }));
                }
                first_error.get_or_insert(e);
            }
        }
        records.clear();
        // Buffered: flush when the queue runs dry or the interval has passed under load.
        if let (true, Some(interval)) = (unflushed, options.flush_interval) {
            if rx.is_empty() || last_flush.elapsed() >= interval {
                if let Err(e) = guarded(&*ledger, "flush", || ledger.flush()).await {
                    tracing::error!(backend = ledger.backend(), error = %e, "ledger flush failed");
                    cells.failing.store(true, Ordering::Release);
                } else {
                    cells.flushes.fetch_add(1, Ordering::Relaxed);
                }
                unflushed = false;
                last_flush = Instant::now();
            }
        }
    }
    if unflushed || buffered {
        if let Err(e) = guarded(&*ledger, "flush", || ledger.flush()).await {
            tracing::error!(backend = ledger.backend(), error = %e, "final ledger flush failed");
            first_error.get_or_insert(e);
        }
    }
    WriterReport {
        written: cells.written.load(Ordering::Relaxed),
        lost: cells.lost_records.load(Ordering::Relaxed),
        first_error,
    }
}

pub(crate) fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

#[cfg(test)]
mod tests {
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
                .firings(&FiringQuery::reactor("g"))
                .await
                .expect("read")
                .len(),
            640
        );
        let status = writer.status();
        assert_eq!(status.written, 640);
        assert!(status.batches < 640, "callers share batches: {status:?}");
    }
}
