//! # cloacina-ledger
//!
//! The engine's memory: an append-only record of what reactors did (firings, their inputs'
//! sequence numbers and their results or failures), behind one [`Ledger`] trait.
//!
//! Flow: boundary -> cache -> firing -> result -> **ledger**. Reactors do no ledger I/O in
//! their firing loop: they hand [`Record`]s (boundaries, firings, state snapshots) to a
//! [`LedgerWriter`], a background task that appends them in batches (group commit) through a
//! bounded queue. A reactor waits only when that queue is full, so a slow store
//! back-pressures it instead of losing records. A reactor with no ledger builds no records.
//!
//! The ledger knows nothing of graphs: records carry names, sequence numbers and encoded bytes.
//! Backends are chosen by URL with [`open`] (or [`open_tenant`] for one tenant's store):
//! [`MemoryLedger`] (`memory://`), [`SledLedger`] (a path or `sled://PATH`, the embedded
//! default), [`SqliteLedger`] (`sqlite://PATH`) and [`PostgresLedger`] (`postgres://...`).
//! Every backend passes the one suite in [`conformance`]. The SQL backends are behind cargo
//! features `sqlite` and `postgres` (off by default in this crate; the `cloacina` facade turns
//! both on); sled and memory are always built.
//!
//! Integrity: every stored record carries a crc32 checksum that reads verify (a mismatch is
//! [`LedgerError::Corrupt`] naming the record), and [`Ledger::verify`] runs the backend's own
//! check plus a checksum scan of every record. Errors say whether trying again may help
//! ([`LedgerError::is_transient`]); the [`LedgerWriter`] retries only those.
//!
//! ## Metrics
//!
//! The [`LedgerWriter`] reports through the [`metrics`](https://docs.rs/metrics) facade (free
//! when no recorder is installed), every series labelled `reactor` (the label given to
//! [`LedgerWriter::spawn_labeled`]; empty for [`LedgerWriter::spawn`]):
//!
//! | name | kind | meaning |
//! |---|---|---|
//! | `cloacina_ledger_records_total` | counter | records appended |
//! | `cloacina_ledger_append_failures_total` | counter | append attempts that failed |
//! | `cloacina_ledger_lost_records_total` | counter | records given up on |
//! | `cloacina_ledger_queue_depth` | gauge | records waiting in the writer's queue (its lag) |
//! | `cloacina_ledger_commit_seconds` | histogram | one batch: its append (all attempts) and flush |
//!
//! ```
//! use cloacina_ledger::{Commit, FiringOutcome, FiringQuery, FiringRecord, FiringTrigger, Ledger, MemoryLedger, Record};
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let ledger = MemoryLedger::new();
//! ledger.append(&[Record::Firing(FiringRecord {
//!     reactor: "pricing".into(), firing_id: 1, trigger: FiringTrigger::Criteria,
//!     inputs: vec![("quotes".into(), 1)], fired_at_unix_us: 0, duration_ns: 1_000,
//!     outcome: FiringOutcome::Completed { outputs: vec![("report".into(), vec![1, 2])] },
//! })], Commit::Durable).await?;
//! assert_eq!(ledger.firings(&FiringQuery::reactor("pricing")).await?.len(), 1);
//! # Ok::<(), cloacina_ledger::LedgerError>(()) }).unwrap();
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub mod conformance;
mod frame;
mod memory;
mod records;
mod sled_backend;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql;
#[doc(hidden)]
pub mod testing;
mod workflows;
mod writer;

pub use memory::MemoryLedger;
pub use records::{
    BoundaryQuery, BoundaryRecord, CheckpointRecord, Commit, FiringOutcome, FiringQuery,
    FiringRecord, FiringTrigger, IdGap, Record, RetainReport, Retention, RetentionCut,
    SnapshotRecord, VerifyReport,
};
pub use sled_backend::{SledLedger, SledOptions};
#[cfg(feature = "postgres")]
pub use sql::postgres::PostgresLedger;
#[cfg(feature = "sqlite")]
pub use sql::sqlite::SqliteLedger;
pub use workflows::{
    ExecutionEndRecord, ExecutionRecord, ExecutionStatus, StoredExecution, TaskOutcome, TaskRecord,
    WorkflowRecord, WorkflowStore, UNCLAIMED,
};
pub use writer::{
    AckSender, LedgerWriter, RecordBuilder, WriterOptions, WriterReport, WriterStatus,
    APPEND_ATTEMPTS, MAX_BATCH,
};

/// Version of the ledger's stored layout, kept in every store and checked on open: a store of
/// another version is refused ([`LedgerError::IncompatibleFormat`]) before anything is written.
/// Version 2 added a checksum to every record; stores of version 1 are refused.
pub const LEDGER_FORMAT_VERSION: u8 = 2;

/// A boxed, sendable future (the ledger trait is object-safe so backends are chosen at run
/// time).
pub type LedgerFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, LedgerError>> + Send + 'a>>;

/// A ledger operation failed. Says which backend and what, whether trying again may help
/// ([`LedgerError::is_transient`]), and keeps the underlying error as its
/// [`source`](std::error::Error::source) where there is one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// Something failed that was not classified (kept for callers that build it; counted as
    /// transient, so a writer retries it). Backends report [`LedgerError::Store`] instead.
    #[error("{backend} ledger: {message}")]
    Backend {
        /// Backend name.
        backend: &'static str,
        /// What failed.
        message: String,
    },
    /// The store (or the driver under it) failed.
    #[error("{backend} ledger: {message}: {source}")]
    Store {
        /// Backend name.
        backend: &'static str,
        /// What was being done, and where.
        message: String,
        /// Whether trying again may succeed (connection lost, pool timeout, interrupted IO,
        /// serialization failure, deadlock, database locked or busy).
        transient: bool,
        /// The underlying error (`sqlx::Error`, `sled::Error`, `std::io::Error`, ...).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The store is damaged: a checksum mismatch, a structural check that failed, a file that
    /// could not be recovered, a schema missing a table. Permanent.
    #[error("{backend} ledger at {location} is damaged: {reason}")]
    Corrupt {
        /// Backend name.
        backend: &'static str,
        /// Path or URL (without password).
        location: String,
        /// What is wrong, naming the record or table where known.
        reason: String,
    },
    /// The backend cannot store a record as given (an id beyond its integer range, a NUL
    /// byte in a name). Permanent.
    #[error("{backend} ledger: {message}")]
    Rejected {
        /// Backend name.
        backend: &'static str,
        /// Which record and why.
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
    /// An id-range read found a hole: records between two stored ones are missing (damage,
    /// or a batch a writer gave up and counted as lost). Read with `allow_gaps` to get what
    /// is there; [`Ledger::verify`] lists every hole. Permanent.
    #[error("{backend} ledger: {gap}; read with `allow_gaps` to get the records that are there")]
    Gap {
        /// Backend name.
        backend: &'static str,
        /// Which ids are missing.
        gap: IdGap,
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
    /// A tenant name is not usable.
    #[error("bad tenant name `{tenant}`: {reason}")]
    BadTenant {
        /// The name given.
        tenant: String,
        /// What is wrong.
        reason: String,
    },
    /// The server could not be reached.
    #[error("{backend} ledger at {location}: cannot connect: {message}")]
    Unreachable {
        /// Backend name.
        backend: &'static str,
        /// Where (URL without password).
        location: String,
        /// Why.
        message: String,
    },
    /// The writer task is gone (ledger closed or its task failed).
    #[error("ledger writer closed; {pending} record(s) not handed over")]
    Closed {
        /// Records that could not be handed to the writer.
        pending: usize,
    },
    /// A fenced write ([`WorkflowStore::write_as`]) dropped this execution's records:
    /// another runner holds it now (the writer's lease expired and it was taken over).
    #[error("execution {execution} is held by another runner: this runner's records of it were not written")]
    ClaimLost {
        /// The execution.
        execution: u64,
    },
}

/// Whether trying an operation again may succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Worth retrying: the store may be back (connection lost, pool timeout, interrupted IO,
    /// serialization failure, deadlock, database locked or busy).
    Transient,
    /// Retrying gives the same answer (constraint violation, corruption, codec, conflict,
    /// format, bad URL, missing table, closed writer).
    Permanent,
}

impl LedgerError {
    /// Whether trying again may succeed. [`LedgerError::Backend`] (unclassified) and
    /// [`LedgerError::Unreachable`] count as transient.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Store { transient, .. } => *transient,
            Self::Backend { .. } | Self::Unreachable { .. } => true,
            Self::Conflict { .. }
            | Self::IncompatibleFormat { .. }
            | Self::BadUrl { .. }
            | Self::Codec { .. }
            | Self::BadTenant { .. }
            | Self::Corrupt { .. }
            | Self::Rejected { .. }
            | Self::Gap { .. }
            | Self::Closed { .. }
            | Self::ClaimLost { .. } => false,
        }
    }

    /// [`ErrorKind::Transient`] or [`ErrorKind::Permanent`].
    pub fn kind(&self) -> ErrorKind {
        if self.is_transient() {
            ErrorKind::Transient
        } else {
            ErrorKind::Permanent
        }
    }

    /// A [`LedgerError::Store`] error over any underlying error.
    pub fn store(
        backend: &'static str,
        message: impl Into<String>,
        transient: bool,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Store {
            backend,
            message: message.into(),
            transient,
            source: source.into(),
        }
    }
}

/// `e` and its sources, `: `-separated, skipping a source whose text its parent already shows.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = s.source();
    }
    out
}

/// Whether an IO error is worth retrying (interrupted, timed out, connection lost).
pub(crate) fn io_is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        e.kind(),
        K::Interrupted
            | K::TimedOut
            | K::WouldBlock
            | K::ConnectionReset
            | K::ConnectionAborted
            | K::ConnectionRefused
            | K::NotConnected
            | K::BrokenPipe
            | K::UnexpectedEof
    )
}

/// An append-only store of engine records.
///
/// Every method is atomic on its own; appends from several tasks may interleave. Records of
/// one reactor are read back in id order (boundaries by `seq`, firings by `firing_id`),
/// whatever order they were appended in.
pub trait Ledger: Send + Sync + 'static {
    /// Backend name, for messages.
    fn backend(&self) -> &'static str;

    /// Appends records atomically, in order. A boundary or firing whose id is already stored
    /// is a no-op if its content is the same, and a [`LedgerError::Conflict`] if it differs;
    /// the batch is then not applied at all. Checkpoints and snapshots replace the previous
    /// one with the same id. `commit` says how durable the batch is when this returns.
    fn append<'a>(&'a self, records: &'a [Record], commit: Commit) -> LedgerFuture<'a, ()>;

    /// Makes every [`Commit::Buffered`] append so far durable.
    fn flush(&self) -> LedgerFuture<'_, ()>;

    /// Firings matching `query`, oldest (lowest id) first. A read by id whose result skips
    /// ids fails with [`LedgerError::Gap`] unless the query [allows gaps](FiringQuery::allow_gaps).
    fn firings<'a>(&'a self, query: &'a FiringQuery) -> LedgerFuture<'a, Vec<FiringRecord>>;

    /// The newest (highest-id) firing of `reactor`, if any: where a restarted reactor
    /// continues its firing ids.
    fn last_firing<'a>(&'a self, reactor: &'a str) -> LedgerFuture<'a, Option<FiringRecord>>;

    /// Boundaries matching `query`, in sequence order. A read by seq whose result skips seqs
    /// fails with [`LedgerError::Gap`] unless the query
    /// [allows gaps](BoundaryQuery::allow_gaps).
    fn boundaries<'a>(&'a self, query: &'a BoundaryQuery) -> LedgerFuture<'a, Vec<BoundaryRecord>>;

    /// The latest state snapshot of `reactor`.
    fn snapshot<'a>(&'a self, reactor: &'a str) -> LedgerFuture<'a, Option<SnapshotRecord>>;

    /// The latest checkpoint `key` of `owner`.
    fn checkpoint<'a>(
        &'a self,
        owner: &'a str,
        key: &'a str,
    ) -> LedgerFuture<'a, Option<CheckpointRecord>>;

    /// Every checkpoint of `owner`, by key. The built-in backends list them; a ledger that
    /// cannot refuses with [`LedgerError::Rejected`].
    fn checkpoints<'a>(&'a self, owner: &'a str) -> LedgerFuture<'a, Vec<CheckpointRecord>> {
        let _ = owner;
        let backend = self.backend();
        Box::pin(async move {
            Err(LedgerError::Rejected {
                backend,
                message: "this ledger does not list checkpoints".into(),
            })
        })
    }

    /// Removes `reactor`'s old boundaries and firings as `retention` says (never what a
    /// restart needs; see [`Retention`]) and gives the space back to the store where it can.
    fn retain<'a>(
        &'a self,
        reactor: &'a str,
        retention: Retention,
    ) -> LedgerFuture<'a, RetainReport>;

    /// Checks the whole store: the backend's own structural check (SQLite `quick_check`,
    /// sled's tree walk, PostgreSQL's expected tables and columns), then reads every record
    /// and verifies its checksum. Problems found are listed in the report; an `Err` means the
    /// check itself could not run. Reads the whole store: for maintenance, not the hot path.
    fn verify(&self) -> LedgerFuture<'_, VerifyReport>;

    /// The workflow store kept in the same store as these records (every built-in backend
    /// has one; see [`WorkflowStore`]). `None` for a ledger that keeps no workflows.
    fn workflow_store(self: Arc<Self>) -> Option<Arc<dyn WorkflowStore>> {
        None
    }
}

/// Opens the ledger a URL names:
/// - `memory://`: [`MemoryLedger`] (nothing survives the process);
/// - `sled://PATH[?cache_mb=N]`, or a plain filesystem path: `SledLedger`, the embedded
///   default (`cache_mb`: sled's page cache in MiB, default 64; see [`SledOptions`]);
/// - `sqlite://PATH`: `SqliteLedger` (created if missing; migrations applied; cargo feature
///   `sqlite`);
/// - `postgres://USER@HOST[:PORT]/DB[?schema=NAME]` or `postgresql://...`: `PostgresLedger`
///   (migrations applied; `schema=NAME` keeps the ledger in its own schema; host and database
///   are required; cargo feature `postgres`).
///
/// A malformed URL, an unknown scheme, a backend not built in, an unreachable server or a
/// store of another format version is an error that says which, and touches nothing.
pub async fn open(url: &str) -> Result<Arc<dyn Ledger>, LedgerError> {
    let bad = |reason: &str| LedgerError::BadUrl {
        url: redact_url(url),
        reason: reason.to_owned(),
    };
    let url_trimmed = url.trim();
    if url_trimmed.is_empty() {
        return Err(bad(
            "empty; expected memory://, sled://PATH, sqlite://PATH, postgres://... or a path",
        ));
    }
    match url_trimmed.split_once("://") {
        Some(("memory", "")) => Ok(Arc::new(MemoryLedger::new())),
        Some(("memory", rest)) => Err(bad(&format!(
            "memory:// takes nothing after it (found `{rest}`)"
        ))),
        Some(("sled", "")) => Err(bad("sled:// needs a path, e.g. sled://./data/ledger")),
        Some(("sled", rest)) => {
            let (path, options) = sled_backend::parse_params(rest).map_err(|r| bad(&r))?;
            Ok(Arc::new(SledLedger::open_with(path, options)?))
        }
        #[cfg(feature = "sqlite")]
        Some(("sqlite", _)) => Ok(Arc::new(SqliteLedger::open(url_trimmed).await?)),
        #[cfg(not(feature = "sqlite"))]
        Some(("sqlite", _)) => Err(bad(
            "the SQLite backend is not built in: enable cargo feature `sqlite` \
             (of cloacina-ledger, or of cloacina, where it is on by default)",
        )),
        #[cfg(feature = "postgres")]
        Some(("postgres" | "postgresql", _)) => {
            Ok(Arc::new(PostgresLedger::open(url_trimmed).await?))
        }
        #[cfg(not(feature = "postgres"))]
        Some(("postgres" | "postgresql", _)) => Err(bad(
            "the PostgreSQL backend is not built in: enable cargo feature `postgres` \
             (of cloacina-ledger, or of cloacina, where it is on by default)",
        )),
        Some((scheme, _)) => Err(bad(&format!(
            "unknown scheme `{scheme}`; expected memory://, sled://PATH, sqlite://PATH, postgres://... or a path"
        ))),
        None => Ok(Arc::new(SledLedger::open(url_trimmed)?)),
    }
}

/// Checks a tenant name: 1 to 63 characters, a letter or `_` first, then letters, digits or
/// `_` (safe as a PostgreSQL schema name and in a file name).
pub fn validate_tenant(tenant: &str) -> Result<(), LedgerError> {
    let bad = |reason: &str| LedgerError::BadTenant {
        tenant: tenant.to_owned(),
        reason: reason.to_owned(),
    };
    if tenant.is_empty() || tenant.len() > 63 {
        return Err(bad("must be 1 to 63 characters"));
    }
    let mut chars = tenant.chars();
    if !chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
    {
        return Err(bad("must start with a letter or `_`"));
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(bad("only letters, digits and `_` are allowed"));
    }
    if tenant.to_ascii_lowercase().starts_with("pg_")
        || tenant == "public"
        || tenant == "information_schema"
    {
        return Err(bad("reserved name"));
    }
    Ok(())
}

/// The URL of `tenant`'s own store under `url`: a schema of that name for PostgreSQL
/// (`?schema=TENANT`), a file or directory beside the named one for SQLite and sled
/// (`ledger.db` -> `ledger-TENANT.db`, `data/ledger` -> `data/ledger-TENANT`), a fresh
/// store for `memory://`. One tenant never reads another's records.
pub fn tenant_url(url: &str, tenant: &str) -> Result<String, LedgerError> {
    validate_tenant(tenant)?;
    let bad = |reason: &str| LedgerError::BadUrl {
        url: redact_url(url),
        reason: reason.to_owned(),
    };
    let url = url.trim();
    let beside = |path: &str| -> String {
        let (dir, file) = match path.rfind('/') {
            Some(i) => (&path[..=i], &path[i + 1..]),
            None => ("", path),
        };
        match file.rfind('.') {
            Some(dot) if dot > 0 => format!("{dir}{}-{tenant}{}", &file[..dot], &file[dot..]),
            _ => format!("{dir}{file}-{tenant}"),
        }
    };
    match url.split_once("://") {
        Some(("memory", _)) => Ok(url.to_owned()),
        Some(("postgres" | "postgresql", _)) => {
            if url.contains("schema=") {
                return Err(bad(
                    "already names a schema; give either the schema or the tenant",
                ));
            }
            let sep = if url.contains('?') { '&' } else { '?' };
            Ok(format!("{url}{sep}schema={tenant}"))
        }
        Some((scheme @ ("sled" | "sqlite"), path)) => {
            let (path, query) = match path.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (path, None),
            };
            if path.is_empty() || path == ":memory:" {
                return Err(bad("needs a file path to place the tenant's file beside"));
            }
            let mut out = format!("{scheme}://{}", beside(path));
            if let Some(q) = query {
                out.push('?');
                out.push_str(q);
            }
            Ok(out)
        }
        Some((scheme, _)) => Err(bad(&format!("unknown scheme `{scheme}`"))),
        None if url.is_empty() => Err(bad("empty")),
        None => Ok(beside(url)),
    }
}

/// Opens `tenant`'s own ledger under `url` (see [`tenant_url`]).
pub async fn open_tenant(url: &str, tenant: &str) -> Result<Arc<dyn Ledger>, LedgerError> {
    open(&tenant_url(url, tenant)?).await
}

/// The current time, microseconds since the Unix epoch.
pub fn now_unix_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// The URL without its password (`user:***@host`; a `password=` parameter likewise).
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rfind('@') {
        Some(at) => {
            let (userinfo, host) = authority.split_at(at);
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***{host}"),
                None => authority.to_owned(),
            }
        }
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<&str> = query
                .split('&')
                .map(|p| {
                    if p.starts_with("password=") {
                        "password=***"
                    } else {
                        p
                    }
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}
