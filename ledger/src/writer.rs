//! [`LedgerWriter`]: the background task that appends records in batches (group commit).

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tokio::sync::{mpsc, oneshot, watch};

use crate::{error_chain, Commit, Ledger, LedgerError, Record};

mod deferred;

use deferred::Payload;
pub use deferred::RecordBuilder;

/// Told once the record it went with has been appended (with the writer's [`Commit`]), or
/// given up on. A `Durable` writer's `Ok` means the record is on stable storage.
pub type AckSender = oneshot::Sender<Result<(), LedgerError>>;

/// Queue entries taken per batch at most. An entry is one record, or the records the writer
/// builds itself ([`RecordBuilder`]), which are bounded apart: at most the writer's capacity
/// of them wait in its queue at once.
pub const MAX_BATCH: usize = 4096;

/// Tries per batch, when appends fail with transient errors, before its records are counted
/// as lost. A permanent error ([`LedgerError::is_transient`] false) is not retried.
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
    payload: Payload,
    ack: Option<AckSender>,
    /// Whether this record ends its group: a batch never ends inside a group (see
    /// [`LedgerWriter::write_all`]).
    ends_group: bool,
}

#[derive(Debug, Default)]
struct StatusCells {
    /// Records handed over (queued), in order (see [`LedgerWriter::handed`]).
    handed: AtomicU64,
    /// Records appended or given up on, in queue order (see [`LedgerWriter::settled`]).
    settled: AtomicU64,
    /// Woken after every batch settles (one waiter: see [`LedgerWriter::progressed`]).
    progress: tokio::sync::Notify,
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
/// queued, up to [`MAX_BATCH`] per append (more only to finish a group: see [`LedgerWriter::write_all`]), so one flush or fsync covers every record (and
/// every caller) in the batch. An append that fails with a transient error (or panics) is
/// retried ([`APPEND_ATTEMPTS`] tries with growing pauses); a permanent error (a conflict, a
/// damaged store, a record the backend refuses) is not retried. A batch given up on is
/// counted in [`WriterStatus::lost_records`], its acknowledgements get the error, it is logged
/// at error level with its error chain, and [`WriterStatus::failing`] stays true until an
/// append succeeds again; [`LedgerWriter::watch_status`] and [`LedgerWriter::status_changed`]
/// tell an idle caller at once. [`LedgerWriter::close`] waits until every record handed over
/// has been appended or given up on, flushes, and reports. Metrics: see the crate docs.
#[derive(Debug)]
pub struct LedgerWriter {
    tx: mpsc::Sender<Entry>,
    task: tokio::task::JoinHandle<WriterReport>,
    status: Arc<StatusCells>,
    watch: watch::Receiver<WriterStatus>,
    commit: Commit,
    /// Room for records built by the writer (one place per record, the writer's capacity
    /// in all): a builder takes its places before it is queued, and the writer gives them
    /// back when it takes the builder from the queue.
    built_room: Arc<tokio::sync::Semaphore>,
}

/// The writer's metric handles, registered once at spawn (see the crate docs for names).
struct Metrics {
    records: metrics::Counter,
    failures: metrics::Counter,
    lost: metrics::Counter,
    queue_depth: metrics::Gauge,
    commit_seconds: metrics::Histogram,
}

impl Metrics {
    fn register(label: &str) -> Self {
        let reactor = label.to_owned();
        Self {
            records: metrics::counter!("cloacina_ledger_records_total", "reactor" => reactor.clone()),
            failures: metrics::counter!("cloacina_ledger_append_failures_total", "reactor" => reactor.clone()),
            lost: metrics::counter!("cloacina_ledger_lost_records_total", "reactor" => reactor.clone()),
            queue_depth: metrics::gauge!("cloacina_ledger_queue_depth", "reactor" => reactor.clone()),
            commit_seconds: metrics::histogram!("cloacina_ledger_commit_seconds", "reactor" => reactor),
        }
    }
}

impl StatusCells {
    fn snapshot(&self) -> WriterStatus {
        WriterStatus {
            failing: self.failing.load(Ordering::Acquire),
            failed_appends: self.failed_appends.load(Ordering::Relaxed),
            lost_records: self.lost_records.load(Ordering::Relaxed),
            written: self.written.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            flushes: self.flushes.load(Ordering::Relaxed),
        }
    }
}

/// Publishes the status to watchers; they are woken only when `failing` flipped or
/// `lost_records` grew.
fn publish(watch: &watch::Sender<WriterStatus>, cells: &StatusCells) {
    let now = cells.snapshot();
    watch.send_if_modified(|seen| {
        let wake = seen.failing != now.failing || seen.lost_records != now.lost_records;
        *seen = now;
        wake
    });
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.payload.fmt(f)
    }
}

impl LedgerWriter {
    /// Starts the writer task on the current tokio runtime; its metrics carry the label
    /// `reactor=""` (see [`LedgerWriter::spawn_labeled`]).
    pub fn spawn(ledger: Arc<dyn Ledger>, options: WriterOptions) -> Self {
        Self::spawn_labeled(ledger, options, "")
    }

    /// Starts the writer task on the current tokio runtime; its metrics carry the label
    /// `reactor=label` (the reactor it writes for).
    pub fn spawn_labeled(ledger: Arc<dyn Ledger>, options: WriterOptions, label: &str) -> Self {
        // Clamped: tokio's semaphore caps permits, and a deeper queue only hides a slow store.
        let capacity = options.capacity.clamp(1, 1 << 24);
        let (tx, rx) = mpsc::channel::<Entry>(capacity);
        let status = Arc::new(StatusCells::default());
        let (watch_tx, watch) = watch::channel(WriterStatus::default());
        let cells = Arc::clone(&status);
        let metrics = Metrics::register(label);
        let built_room = Arc::new(tokio::sync::Semaphore::new(capacity));
        let task = tokio::spawn(run(
            ledger,
            options,
            rx,
            cells,
            watch_tx,
            metrics,
            Arc::clone(&built_room),
        ));
        Self {
            tx,
            task,
            status,
            watch,
            commit: options.commit,
            built_room,
        }
    }

    /// How this writer commits.
    pub fn commit(&self) -> Commit {
        self.commit
    }

    /// Queues one record, waiting while the queue is full.
    pub async fn write(&self, record: Record) -> Result<(), LedgerError> {
        self.tx
            .send(Entry {
                payload: Payload::Record(record),
                ack: None,
                ends_group: true,
            })
            .await
            .map_err(|_| LedgerError::Closed { pending: 1 })?;
        self.status.handed.fetch_add(1, Ordering::Relaxed);
        Ok(())
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
                payload: Payload::Record(record),
                ack: Some(ack),
                ends_group: true,
            })
            .await
        {
            Ok(()) => {
                self.status.handed.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(mpsc::error::SendError(entry)) => match entry.ack {
                Some(ack) => Err((LedgerError::Closed { pending: 1 }, ack)),
                None => Ok(()),
            },
        }
    }

    /// Queues many records in order, taking queue places in bulk (cheaper than one
    /// [`LedgerWriter::write`] each), waiting while the queue is full. The records are one
    /// **group**: they are appended in one batch (atomically, on every backend), even past
    /// [`MAX_BATCH`], so a crash leaves all of them or none. Each record's `ack`, if any, is
    /// told as for [`LedgerWriter::write_acked`]. Returns how many records could not be
    /// handed over because the writer has stopped (their acks get the error).
    pub async fn write_all(&self, entries: &mut Vec<(Record, Option<AckSender>)>) -> usize {
        self.write_group(None, entries).await
    }

    /// [`LedgerWriter::write_all`] with records the writer builds itself (see
    /// [`RecordBuilder`]) at the head of the group: `built`'s records, then `entries`, are
    /// appended in one batch. Returns how many records could not be handed over.
    pub async fn write_all_built(
        &self,
        built: Box<dyn RecordBuilder>,
        entries: &mut Vec<(Record, Option<AckSender>)>,
    ) -> usize {
        self.write_group(Some(built), entries).await
    }

    async fn write_group(
        &self,
        mut built: Option<Box<dyn RecordBuilder>>,
        entries: &mut Vec<(Record, Option<AckSender>)>,
    ) -> usize {
        let mut lost = 0;
        // Places a builder takes in `built_room`: one per record, never more than there are.
        let places = built.as_ref().map_or(0, |b| {
            u32::try_from(b.count().clamp(1, self.tx.max_capacity())).unwrap_or(u32::MAX)
        });
        if built.is_some() {
            // Bounded like records queued one by one: wait for room for its records.
            let room = tokio::select! {
                room = self.built_room.acquire_many(places) => room.ok(),
                () = self.tx.closed() => None,
            };
            match room {
                // Given back by the writer when it takes the builder.
                Some(room) => room.forget(),
                None => {
                    if let Some(builder) = built.take() {
                        lost += builder.count();
                    }
                }
            }
        }
        let mut rest = entries.drain(..);
        loop {
            let total = rest.len() + usize::from(built.is_some());
            let want = total.min(self.tx.max_capacity()).min(MAX_BATCH);
            if want == 0 {
                break;
            }
            match self.tx.reserve_many(want).await {
                Ok(mut permits) => {
                    // The last chunk's last entry ends the group.
                    let group_ends_at = (total == want).then_some(want - 1);
                    let (mut i, mut handed) = (0, 0u64);
                    if let Some(builder) = built.take() {
                        if let Some(permit) = permits.next() {
                            handed += builder.count() as u64;
                            permit.send(Entry {
                                payload: Payload::Built { builder, places },
                                ack: None,
                                ends_group: group_ends_at == Some(0),
                            });
                            i = 1;
                        }
                    }
                    for (permit, (record, ack)) in permits.zip(rest.by_ref()) {
                        permit.send(Entry {
                            payload: Payload::Record(record),
                            ack,
                            ends_group: group_ends_at == Some(i),
                        });
                        i += 1;
                        handed += 1;
                    }
                    self.status.handed.fetch_add(handed, Ordering::Relaxed);
                }
                Err(_) => {
                    if let Some(builder) = built.take() {
                        lost += builder.count();
                        self.built_room.add_permits(places as usize);
                    }
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

    /// Records handed to this writer so far (queued by any `write*` method), in order.
    pub fn handed(&self) -> u64 {
        self.status.handed.load(Ordering::Relaxed)
    }

    /// Records handed to this writer that are settled: durable, or given up on (counted in
    /// [`WriterStatus::lost_records`]). Durable means appended with [`Commit::Durable`], or,
    /// for a [`Commit::Buffered`] writer with a flush interval, covered by a flush that
    /// returned (a buffered writer without one settles at append). Records settle in the
    /// order they were handed over, so a caller that counted its records knows the first
    /// `settled()` are done with; if `lost_records` is 0, all of those are durable.
    pub fn settled(&self) -> u64 {
        self.status.settled.load(Ordering::Acquire)
    }

    /// Completes after the next batch settles (or at once if one settled since the last
    /// wait). Meant for one waiter, the writer's owner: a second waiter may take the wake-up.
    pub fn progressed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let cells = Arc::clone(&self.status);
        async move { cells.progress.notified().await }
    }

    /// How appends are going.
    pub fn status(&self) -> WriterStatus {
        self.status.snapshot()
    }

    /// A receiver of the writer's status, woken (`changed()` completes) whenever
    /// [`WriterStatus::failing`] flips or [`WriterStatus::lost_records`] grows, and closed
    /// (`changed()` returns `Err`) when the writer task stops. Keep it across waits so that
    /// no change is missed: a change since the last `borrow_and_update` wakes it at once.
    pub fn watch_status(&self) -> watch::Receiver<WriterStatus> {
        let mut rx = self.watch.clone();
        rx.mark_unchanged();
        rx
    }

    /// Completes at the next change of [`WriterStatus::failing`] or
    /// [`WriterStatus::lost_records`] after this call (it subscribes when called, not when
    /// first polled), or when the writer task stops. Lets an idle caller learn at once that
    /// the writer gave a batch up; read [`LedgerWriter::status`] then. For a loop that must
    /// not miss a change between waits, keep a [`LedgerWriter::watch_status`] receiver.
    pub fn status_changed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.watch_status();
        async move {
            let _ = rx.changed().await;
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
    watch: watch::Sender<WriterStatus>,
    metrics: Metrics,
    built_room: Arc<tokio::sync::Semaphore>,
) -> WriterReport {
    let mut entries: Vec<Entry> = Vec::with_capacity(MAX_BATCH);
    let mut records: Vec<Record> = Vec::with_capacity(MAX_BATCH);
    let mut acks: Vec<AckSender> = Vec::new();
    let mut first_error = None;
    let mut unflushed = false;
    let mut last_flush = Instant::now();
    let buffered = options.commit == Commit::Buffered;
    // Buffered batches appended but not yet covered by a flush (see `LedgerWriter::settled`).
    let flushes_buffered = buffered && options.flush_interval.is_some();
    let mut unflushed_records = 0u64;
    while rx.recv_many(&mut entries, MAX_BATCH).await > 0 {
        // A batch ends only where a group does: take the rest of an unfinished group (its
        // sender is queueing it right now), so the group is appended atomically.
        while entries.last().is_some_and(|e| !e.ends_group) {
            if rx.recv_many(&mut entries, MAX_BATCH).await == 0 {
                break;
            }
        }
        metrics.queue_depth.set(rx.len() as f64);
        let started = Instant::now();
        let mut unbuilt = 0u64;
        let mut built_places_taken = 0usize;
        for entry in entries.drain(..) {
            let count = entry.payload.count();
            built_places_taken += entry.payload.places() as usize;
            let before = records.len();
            // A builder runs user codecs: a panic there loses its records, not the writer.
            match std::panic::catch_unwind(AssertUnwindSafe(|| entry.payload.build(&mut records))) {
                Ok(failed) => unbuilt += failed as u64,
                Err(panic) => {
                    records.truncate(before);
                    unbuilt += count as u64;
                    tracing::error!(backend = ledger.backend(), records = count, panic = %panic_text(&*panic), "building records panicked; they are lost");
                }
            }
            if let Some(ack) = entry.ack {
                acks.push(ack);
            }
        }
        // Out of the queue: their places are free again (as a queued record's place is once
        // the writer takes it).
        built_room.add_permits(built_places_taken);
        if unbuilt > 0 {
            // Logged by the builder; lost like a batch given up, and settled with this one.
            cells.lost_records.fetch_add(unbuilt, Ordering::Relaxed);
            metrics.lost.increment(unbuilt);
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
                    metrics.records.increment(records.len() as u64);
                    break Ok(());
                }
                Err(e) => {
                    cells.failing.store(true, Ordering::Release);
                    cells.failed_appends.fetch_add(1, Ordering::Relaxed);
                    metrics.failures.increment(1);
                    let transient = e.is_transient();
                    if transient && attempt < APPEND_ATTEMPTS {
                        tracing::warn!(backend = ledger.backend(), records = records.len(), attempt, error = %error_chain(&e), "ledger append failed; trying again");
                        tokio::time::sleep(Duration::from_millis(10 * 10u64.pow(attempt - 1)))
                            .await;
                        continue;
                    }
                    tracing::error!(backend = ledger.backend(), records = records.len(), attempt, transient, error = %error_chain(&e), "ledger append failed; batch given up");
                    cells
                        .lost_records
                        .fetch_add(records.len() as u64, Ordering::Relaxed);
                    metrics.lost.increment(records.len() as u64);
                    break Err(e);
                }
            }
        };
        let outcome_kind = if outcome.is_ok() {
            BatchEnd::Appended
        } else {
            BatchEnd::GivenUp
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
                    let _ = ack.send(Err(LedgerError::store(
                        ledger.backend(),
                        "not recorded",
                        e.is_transient(),
                        error_chain(&e),
                    )));
                }
                first_error.get_or_insert(e);
            }
        }
        // Settled: given up, or durable. A buffered batch is durable once a flush covers it.
        let accounted = records.len() as u64 + unbuilt;
        match (&outcome_kind, flushes_buffered) {
            (BatchEnd::Appended, true) => unflushed_records += accounted,
            _ => settle(&cells, accounted),
        }
        records.clear();
        // Buffered: flush when the queue runs dry or the interval has passed under load.
        if let (true, Some(interval)) = (unflushed, options.flush_interval) {
            if rx.is_empty() || last_flush.elapsed() >= interval {
                if let Err(e) = guarded(&*ledger, "flush", || ledger.flush()).await {
                    tracing::error!(backend = ledger.backend(), error = %error_chain(&e), "ledger flush failed");
                    cells.failing.store(true, Ordering::Release);
                } else {
                    cells.flushes.fetch_add(1, Ordering::Relaxed);
                    settle(&cells, std::mem::take(&mut unflushed_records));
                }
                unflushed = false;
                last_flush = Instant::now();
            }
        }
        metrics
            .commit_seconds
            .record(started.elapsed().as_secs_f64());
        publish(&watch, &cells);
    }
    if unflushed || buffered {
        if let Err(e) = guarded(&*ledger, "flush", || ledger.flush()).await {
            tracing::error!(backend = ledger.backend(), error = %error_chain(&e), "final ledger flush failed");
            first_error.get_or_insert(e);
        } else {
            settle(&cells, std::mem::take(&mut unflushed_records));
        }
    }
    WriterReport {
        written: cells.written.load(Ordering::Relaxed),
        lost: cells.lost_records.load(Ordering::Relaxed),
        first_error,
    }
}

/// How a batch ended, for settling.
enum BatchEnd {
    Appended,
    GivenUp,
}

/// `n` more records (in queue order) are settled: wakes the owner.
fn settle(cells: &StatusCells, n: u64) {
    if n > 0 {
        cells.settled.fetch_add(n, Ordering::Release);
        cells.progress.notify_one();
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
mod tests;
