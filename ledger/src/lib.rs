//! # cloacina-ledger
//!
//! The engine's memory: an append-only record of what reactors did (firings, their inputs'
//! sequence numbers and their results or failures), behind one [`Ledger`] trait.
//!
//! Flow: boundary -> cache -> firing -> result -> **ledger**. Reactors do no ledger I/O in
//! their firing loop: they hand records to a [`LedgerWriter`], a background task that appends
//! them in batches (group commit) through a bounded queue. A reactor waits only when that queue
//! is full, so a slow store back-pressures it instead of losing records. A reactor with no
//! ledger configured builds no records at all.
//!
//! The ledger knows nothing of graphs: records carry names, sequence numbers and encoded bytes.
//! Backends are chosen by URL with [`open`]: [`MemoryLedger`] (`memory://`) and
//! [`SledLedger`] (a path or `sled://PATH`, the embedded default); PostgreSQL and SQLite will
//! implement the same trait. Every backend passes the one suite in [`conformance`].
//!
//! ```
//! use cloacina_ledger::{FiringOutcome, FiringRecord, Ledger, MemoryLedger, Record};
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let ledger = MemoryLedger::new();
//! ledger.append(&[Record::Firing(FiringRecord {
//!     reactor: "pricing".into(), firing_id: 1, manual: false, inputs: vec![("quotes".into(), 1)],
//!     fired_at_unix_us: 0, duration_ns: 1_000,
//!     outcome: FiringOutcome::Completed { outputs: vec![("report".into(), vec![1, 2])] },
//! })]).await?;
//! assert_eq!(ledger.firings("pricing").await?.len(), 1);
//! # Ok::<(), cloacina_ledger::LedgerError>(()) }).unwrap();
//! ```

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;

pub mod conformance;
mod memory;
mod sled_backend;

pub use memory::MemoryLedger;
use serde::{Deserialize, Serialize};
pub use sled_backend::SledLedger;
use tokio::sync::mpsc;

/// A boxed, sendable future (the ledger trait is object-safe so backends are chosen at run
/// time).
pub type LedgerFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, LedgerError>> + Send + 'a>>;

/// A ledger operation failed. Says which backend and what.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// The backend failed.
    #[error("{backend} ledger: {message}")]
    Backend {
        /// Backend name.
        backend: &'static str,
        /// What failed.
        message: String,
    },
    /// The same record id was appended with different content.
    #[error("{backend} ledger: {record} was already recorded with different content")]
    Conflict {
        /// Backend name.
        backend: &'static str,
        /// Which record, e.g. "firing 7 of reactor `r`".
        record: String,
    },
    /// The store was written by an incompatible format version; nothing was touched.
    #[error("{backend} ledger at {location}: written by format version {found}, this build reads version {expected}")]
    IncompatibleFormat {
        /// Backend name.
        backend: &'static str,
        /// Path or URL.
        location: String,
        /// Version found in the store.
        found: u8,
        /// Version this build reads.
        expected: u8,
    },
    /// The ledger URL is malformed or names an unknown backend.
    #[error("bad ledger URL `{url}`: {reason}")]
    BadUrl {
        /// The URL given.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// A record could not be encoded or decoded.
    #[error("{backend} ledger: {context}: {source}")]
    Codec {
        /// Backend name.
        backend: &'static str,
        /// Which record.
        context: String,
        /// The codec error.
        source: cloacina_codec::CodecError,
    },
    /// The writer task is gone (ledger closed or its task failed).
    #[error("ledger writer closed; {pending} record(s) not handed over")]
    Closed {
        /// Records that could not be handed to the writer.
        pending: usize,
    },
}

/// How a firing ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FiringOutcome {
    /// Completed; terminal outputs as `(node, encoded value)`.
    Completed {
        /// Encoded terminal outputs.
        outputs: Vec<(String, Vec<u8>)>,
    },
    /// Failed at `node`.
    Failed {
        /// The failing node.
        node: String,
        /// The error message.
        error: String,
    },
}

/// One firing of a reactor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FiringRecord {
    /// Reactor name.
    pub reactor: String,
    /// Firing id, increasing per reactor.
    pub firing_id: u64,
    /// Whether the firing was manual (`force_fire`, `fire_with`).
    pub manual: bool,
    /// `(source, sequence number)` of every input the firing saw.
    pub inputs: Vec<(String, u64)>,
    /// Wall-clock start, microseconds since the Unix epoch.
    pub fired_at_unix_us: i64,
    /// How long the graph ran.
    pub duration_ns: u64,
    /// Result or failure.
    pub outcome: FiringOutcome,
}

/// A record a reactor appends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Record {
    /// A firing and its result.
    Firing(FiringRecord),
}

/// An append-only store of engine records.
pub trait Ledger: Send + Sync + 'static {
    /// Backend name, for messages.
    fn backend(&self) -> &'static str;
    /// Appends records atomically, in order. Appending a record whose id is already stored
    /// (a firing: reactor and firing id) is a no-op if the content is the same, and a
    /// [`LedgerError::Conflict`] if it differs; the batch is then not applied.
    fn append<'a>(&'a self, records: &'a [Record]) -> LedgerFuture<'a, ()>;
    /// Firings of `reactor`, oldest first.
    fn firings<'a>(&'a self, reactor: &'a str) -> LedgerFuture<'a, Vec<FiringRecord>>;
}

/// Opens the ledger a URL names:
/// - `memory://`: [`MemoryLedger`] (nothing survives the process);
/// - `sled://PATH`, or a plain filesystem path: [`SledLedger`], the embedded default;
/// - `postgres://...` and `sqlite://...`: not built yet (an error says so).
///
/// A malformed URL, an unknown scheme or a store of another format version is an error that
/// says which, and touches nothing.
pub async fn open(url: &str) -> Result<Arc<dyn Ledger>, LedgerError> {
    let bad = |reason: &str| LedgerError::BadUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let url_trimmed = url.trim();
    if url_trimmed.is_empty() {
        return Err(bad("empty; expected memory://, sled://PATH or a path"));
    }
    match url_trimmed.split_once("://") {
        Some(("memory", "")) => Ok(Arc::new(MemoryLedger::new())),
        Some(("memory", rest)) => Err(bad(&format!(
            "memory:// takes nothing after it (found `{rest}`)"
        ))),
        Some(("sled", "")) => Err(bad("sled:// needs a path, e.g. sled://./data/ledger")),
        Some(("sled", path)) => Ok(Arc::new(SledLedger::open(path)?)),
        Some(("postgres" | "postgresql" | "sqlite", _)) => Err(bad(
            "PostgreSQL and SQLite ledgers are not built yet; use memory:// or sled://PATH",
        )),
        Some((scheme, _)) => Err(bad(&format!(
            "unknown scheme `{scheme}`; expected memory://, sled://PATH or a path"
        ))),
        None => Ok(Arc::new(SledLedger::open(url_trimmed)?)),
    }
}

/// Hands records to a background task that appends them in batches (group commit).
///
/// [`LedgerWriter::write`] waits only when the bounded queue is full: a slow store slows the
/// reactor down rather than losing records. A failed (or panicking) append is retried ([`APPEND_ATTEMPTS`] tries
/// with growing pauses); a batch that still fails is counted in [`WriterStatus::lost_records`]
/// and logged, and [`WriterStatus::failing`] stays true until an append succeeds again, so the
/// owner can report itself degraded. [`LedgerWriter::close`] waits until every record handed
/// over has been appended or given up on, and reports counts and the first error.
#[derive(Debug)]
pub struct LedgerWriter {
    tx: mpsc::Sender<Record>,
    task: tokio::task::JoinHandle<WriterReport>,
    status: Arc<StatusCells>,
}

/// Records appended per batch at most.
const MAX_BATCH: usize = 1024;

/// Tries per batch before its records are counted as lost.
pub const APPEND_ATTEMPTS: u32 = 3;

#[derive(Debug, Default)]
struct StatusCells {
    failing: AtomicBool,
    failed_appends: AtomicU64,
    lost_records: AtomicU64,
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
}

impl LedgerWriter {
    /// Starts the writer task on the current tokio runtime.
    pub fn spawn(ledger: Arc<dyn Ledger>, capacity: usize) -> Self {
        // Clamped: tokio's semaphore caps permits, and a deeper queue only hides a slow store.
        let (tx, mut rx) = mpsc::channel::<Record>(capacity.clamp(1, 1 << 24));
        let status = Arc::new(StatusCells::default());
        let cells = Arc::clone(&status);
        let task = tokio::spawn(async move {
            let mut batch = Vec::with_capacity(MAX_BATCH);
            let mut written = 0u64;
            let mut first_error = None;
            while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    // A panicking backend is a failed attempt, not a dead writer.
                    // (The call itself is inside the guard: it may panic before any future exists.)
                    let attempted = AssertUnwindSafe(async { ledger.append(&batch).await })
                        .catch_unwind()
                        .await;
                    let result = attempted.unwrap_or_else(|payload| {
                        Err(LedgerError::Backend {
                            backend: ledger.backend(),
                            message: format!("append panicked: {}", panic_text(&*payload)),
                        })
                    });
                    match result {
                        Ok(()) => {
                            written += batch.len() as u64;
                            cells.failing.store(false, Ordering::Release);
                            break;
                        }
                        Err(e) => {
                            cells.failing.store(true, Ordering::Release);
                            cells.failed_appends.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(backend = ledger.backend(), records = batch.len(), attempt, error = %e, "ledger append failed");
                            if attempt >= APPEND_ATTEMPTS {
                                cells
                                    .lost_records
                                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                                first_error.get_or_insert(e);
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(10 * 10u64.pow(attempt - 1)))
                                .await;
                        }
                    }
                }
                batch.clear();
            }
            WriterReport {
                written,
                lost: cells.lost_records.load(Ordering::Relaxed),
                first_error,
            }
        });
        Self { tx, task, status }
    }

    /// Queues one record, waiting while the queue is full.
    pub async fn write(&self, record: Record) -> Result<(), LedgerError> {
        self.tx
            .send(record)
            .await
            .map_err(|_| LedgerError::Closed { pending: 1 })
    }

    /// Whether the writer task has stopped taking records.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// How appends are going.
    pub fn status(&self) -> WriterStatus {
        WriterStatus {
            failing: self.status.failing.load(Ordering::Acquire),
            failed_appends: self.status.failed_appends.load(Ordering::Relaxed),
            lost_records: self.status.lost_records.load(Ordering::Relaxed),
        }
    }

    /// Waits until everything queued has been appended (or given up on) and reports.
    pub async fn close(self) -> WriterReport {
        drop(self.tx);
        match self.task.await {
            Ok(report) => report,
            Err(e) => WriterReport {
                written: 0,
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
    /// The first error of a batch that was given up on.
    pub first_error: Option<LedgerError>,
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
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

    fn firing(reactor: &str, id: u64) -> Record {
        Record::Firing(FiringRecord {
            reactor: reactor.into(),
            firing_id: id,
            manual: false,
            inputs: vec![("a".into(), id)],
            fired_at_unix_us: 0,
            duration_ns: 0,
            outcome: FiringOutcome::Completed { outputs: vec![] },
        })
    }

    #[tokio::test]
    async fn writer_appends_everything_in_order_before_close_returns() {
        let ledger = Arc::new(MemoryLedger::new());
        let writer = LedgerWriter::spawn(ledger.clone(), 4);
        for id in 1..=1000 {
            writer.write(firing("r", id)).await.expect("write");
        }
        writer.write(firing("other", 1)).await.expect("write");
        let report = writer.close().await;
        assert_eq!((report.written, report.lost), (1001, 0));
        assert!(report.first_error.is_none());
        let ids: Vec<u64> = ledger
            .firings("r")
            .await
            .expect("read")
            .iter()
            .map(|f| f.firing_id)
            .collect();
        assert_eq!(ids, (1..=1000).collect::<Vec<_>>());
        assert_eq!(ledger.firings("other").await.expect("read").len(), 1);
        assert!(ledger.firings("nobody").await.expect("read").is_empty());
    }

    /// Fails the first `fail` appends, then delegates to a memory ledger.
    struct Flaky {
        fail: AtomicU64,
        inner: MemoryLedger,
    }

    impl Ledger for Flaky {
        fn backend(&self) -> &'static str {
            "flaky"
        }
        fn append<'a>(&'a self, records: &'a [Record]) -> LedgerFuture<'a, ()> {
            if self
                .fail
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Box::pin(async {
                    Err(LedgerError::Backend {
                        backend: "flaky",
                        message: "transient".into(),
                    })
                });
            }
            self.inner.append(records)
        }
        fn firings<'a>(&'a self, reactor: &'a str) -> LedgerFuture<'a, Vec<FiringRecord>> {
            self.inner.firings(reactor)
        }
    }

    #[tokio::test]
    async fn transient_append_failures_are_retried_without_loss() {
        let ledger = Arc::new(Flaky {
            fail: AtomicU64::new(APPEND_ATTEMPTS as u64 - 1),
            inner: MemoryLedger::new(),
        });
        let writer = LedgerWriter::spawn(ledger.clone(), 8);
        for id in 1..=5 {
            writer.write(firing("r", id)).await.expect("write");
        }
        // Let the writer work through its retries before reading its status.
        for _ in 0..200 {
            if ledger.firings("r").await.expect("read").len() == 5 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let status = writer.status();
        assert_eq!(status.failed_appends, u64::from(APPEND_ATTEMPTS) - 1);
        assert_eq!(status.lost_records, 0);
        assert!(!status.failing, "a success clears the failing flag");
        assert_eq!(writer.close().await.written, 5);
        assert_eq!(ledger.firings("r").await.expect("read").len(), 5);
    }

    /// Panics on its first append, then works.
    struct PanicsOnce {
        panicked: AtomicBool,
        inner: MemoryLedger,
    }

    impl Ledger for PanicsOnce {
        fn backend(&self) -> &'static str {
            "panics-once"
        }
        fn append<'a>(&'a self, records: &'a [Record]) -> LedgerFuture<'a, ()> {
            if !self.panicked.swap(true, Ordering::SeqCst) {
                panic!("backend bug");
            }
            self.inner.append(records)
        }
        fn firings<'a>(&'a self, reactor: &'a str) -> LedgerFuture<'a, Vec<FiringRecord>> {
            self.inner.firings(reactor)
        }
    }

    // A panicking backend is retried like a failing one; the writer survives and loses nothing.
    #[tokio::test]
    async fn panicking_append_is_a_failed_attempt() {
        let ledger = Arc::new(PanicsOnce {
            panicked: AtomicBool::new(false),
            inner: MemoryLedger::new(),
        });
        let writer = LedgerWriter::spawn(ledger.clone(), 64);
        for id in 1..=20 {
            writer.write(firing("r", id)).await.expect("write");
        }
        let report = writer.close().await;
        assert_eq!((report.written, report.lost), (20, 0), "{report:?}");
        assert_eq!(ledger.firings("r").await.expect("read").len(), 20);
    }

    // Counts survive errors: a report says both what was written and what was lost.
    #[tokio::test]
    async fn report_counts_written_and_lost() {
        let ledger = Arc::new(Flaky {
            fail: AtomicU64::new(u64::from(APPEND_ATTEMPTS)),
            inner: MemoryLedger::new(),
        });
        let writer = LedgerWriter::spawn(ledger.clone(), 1);
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
}
