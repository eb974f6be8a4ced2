//! [`SqliteLedger`]: the SQLite backend (sqlx), one database file per ledger.
//!
//! Tables (see `migrations/sqlite`, applied on open): `boundaries` and `firings` keyed by
//! `(reactor, id)`, `checkpoints` keyed by `(owner, key)`, `snapshots` keyed by reactor, and
//! `ledger_meta` holding the format version. Firings and snapshots are stored whole,
//! codec-encoded. Ids are stored as SQLite integers: ids above `i64::MAX` are refused.
//!
//! Writes go through one connection behind an async mutex (SQLite has one writer), one
//! `BEGIN IMMEDIATE` transaction per append, with multi-row `INSERT ... ON CONFLICT DO
//! NOTHING` statements; only a statement that inserted fewer rows than it carried has its
//! rows compared with what is stored. Reads use up to four other connections (`query_only`),
//! which WAL lets read while the writer writes.
//!
//! Durability (the file is put in `journal_mode=WAL`; every connection waits up to 30 s for
//! a lock, `busy_timeout`):
//! - [`Commit::Buffered`]: committed with `synchronous=NORMAL`. Survives a crash of the
//!   process (the transaction is in the WAL file); an OS crash or power loss may lose the
//!   latest buffered transactions, never corrupting the store.
//! - [`Commit::Durable`]: committed with `synchronous=FULL`, so the WAL is fsynced before
//!   `append` returns. Survives power loss (given a disk that honours fsync), and so does
//!   every append committed before it.
//! - [`Ledger::flush`]: a durable (`synchronous=FULL`) transaction that updates one row of
//!   `ledger_meta`; its fsync of the WAL covers every earlier buffered append.
//!
//! `sqlite://:memory:` is one private in-memory database on a single connection, shared by
//! reads and writes; nothing survives the ledger.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::TryStreamExt;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteAutoVacuum, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Connection, Row, Sqlite, SqliteConnection, Transaction};

use super::common::{
    self, check_format, clamp_id, forward_ledger, stage, RowReader, Scan, SqlBoundary, SqlFiring,
    Staged, FORMAT_KEY,
};
use crate::{
    BoundaryQuery, BoundaryRecord, CheckpointRecord, Commit, FiringQuery, FiringRecord,
    LedgerError, Record, RetainReport, Retention, SnapshotRecord, VerifyReport,
    LEDGER_FORMAT_VERSION,
};

mod append;
mod read;
mod workflows;

const BACKEND: &str = "sqlite";
const FLUSH_KEY: &str = "last_flush_us";
/// Reader connections of a file ledger.
const READERS: u32 = 4;
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);
/// Rows per multi-row insert statement; smaller statements take power-of-two sizes, so a
/// connection caches at most a handful of prepared inserts per table.
const CHUNK: usize = 256;

/// Migrations a newer build applied are not an error (see the PostgreSQL backend's).
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate::Migrator {
    ignore_missing: true,
    ..sqlx::migrate!("./migrations/sqlite")
};

/// A ledger stored in one SQLite database file (or in memory with `sqlite://:memory:`).
#[derive(Debug)]
pub struct SqliteLedger {
    /// The file path, or `:memory:`.
    location: String,
    /// One connection: every write goes through it.
    writer: SqlitePool,
    /// Read connections (the writer's pool itself for `:memory:`).
    readers: SqlitePool,
    /// Serializes appends, flushes and retention.
    write_lock: tokio::sync::Mutex<()>,
    /// `INSERT` statements for `boundaries` by log2 of their row count.
    insert_boundaries: Vec<String>,
    /// `INSERT` statements for `firings` by log2 of their row count.
    insert_firings: Vec<String>,
    /// Bumped when work is submitted unclaimed through this ledger (in this process; other
    /// processes sharing the file find it by their sweep).
    work: crate::workflows::WorkSignal,
}

/// Where a `sqlite://` URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Memory,
    File(PathBuf),
}

fn parse_url(url: &str) -> Result<Target, LedgerError> {
    let bad = |reason: String| LedgerError::BadUrl {
        url: url.to_owned(),
        reason,
    };
    let trimmed = url.trim();
    let rest = trimmed
        .strip_prefix("sqlite://")
        .or_else(|| trimmed.strip_prefix("sqlite:"))
        .ok_or_else(|| bad("expected sqlite://PATH or sqlite://:memory:".into()))?;
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    if let Some(query) = query {
        for param in query.split('&').filter(|p| !p.is_empty()) {
            // `mode=rwc` (read, write, create) is what the ledger does anyway.
            if param != "mode=rwc" {
                return Err(bad(format!(
                    "unsupported query parameter `{param}`; sqlite:// accepts only `mode=rwc`"
                )));
            }
        }
    }
    if path.is_empty() {
        return Err(bad(
            "sqlite:// needs a file path, e.g. sqlite://./data/ledger.db, sqlite:///abs/ledger.db \
             or sqlite://:memory:"
                .into(),
        ));
    }
    if path == ":memory:" {
        return Ok(Target::Memory);
    }
    // SQLite reads a name starting with `file:` as a URI; keep it a plain path.
    let path = if path.starts_with("file:") {
        Path::new(".").join(path)
    } else {
        PathBuf::from(path)
    };
    Ok(Target::File(path))
}

/// SQLite's primary result code of an error code (extended codes carry it in the low byte).
fn primary_code(code: &str) -> Option<i64> {
    code.parse::<i64>().ok().map(|c| c & 0xff)
}

/// `SQLITE_BUSY` (5) and `SQLITE_LOCKED` (6): another connection holds the lock.
fn transient_code(code: &str, message: &str) -> bool {
    matches!(primary_code(code), Some(5 | 6))
        || message.contains("database is locked")
        || message.contains("database is busy")
}

/// A sqlx error in `location`: `SQLITE_CORRUPT` (11) and `SQLITE_NOTADB` (26) are
/// [`LedgerError::Corrupt`], the rest [`LedgerError::Store`].
fn error(location: &str, what: &str, e: sqlx::Error) -> LedgerError {
    if let sqlx::Error::Database(db) = &e {
        if matches!(db.code().as_deref().and_then(primary_code), Some(11 | 26)) {
            return LedgerError::Corrupt {
                backend: BACKEND,
                location: location.to_owned(),
                reason: format!("{what}: {e}"),
            };
        }
    }
    common::sql_error(BACKEND, format!("{what} in {location}"), e, transient_code)
}

fn limit_to_sql(limit: Option<usize>) -> i64 {
    limit.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX))
}

/// Multi-row insert statements with 1, 2, 4, ... [`CHUNK`] rows.
fn insert_statements(head: &str, columns: usize, tail: &str) -> Vec<String> {
    let row = format!("({})", vec!["?"; columns].join(","));
    let mut out = Vec::new();
    let mut rows = 1;
    while rows <= CHUNK {
        out.push(format!(
            "{head} VALUES {} {tail}",
            vec![row.as_str(); rows].join(",")
        ));
        rows *= 2;
    }
    out
}

/// Splits `len` rows into statement sizes: full chunks, then descending powers of two.
/// Yields `(start, log2 of size)`.
fn chunks(len: usize) -> Vec<(usize, usize)> {
    let full_log = CHUNK.trailing_zeros() as usize;
    let mut out = Vec::new();
    let mut start = 0;
    while len - start >= CHUNK {
        out.push((start, full_log));
        start += CHUNK;
    }
    for log in (0..full_log).rev() {
        if (len - start) & (1 << log) != 0 {
            out.push((start, log));
            start += 1 << log;
        }
    }
    out
}

impl SqliteLedger {
    /// Opens (or creates) the ledger `url` names: `sqlite://PATH` (relative, or absolute as
    /// `sqlite:///abs/path`) or `sqlite://:memory:`. The only query parameter accepted is
    /// `mode=rwc`, which is what the ledger does anyway. The file is created if missing and
    /// migrated. A store of another format version, or a file that is not a SQLite database,
    /// is refused before anything is written.
    pub async fn open(url: &str) -> Result<Self, LedgerError> {
        match parse_url(url)? {
            Target::Memory => Self::open_memory().await,
            Target::File(path) => Self::open_file(&path).await,
        }
    }

    async fn open_memory() -> Result<Self, LedgerError> {
        let location = ":memory:".to_owned();
        let options = SqliteConnectOptions::new()
            .filename(":memory:")
            .busy_timeout(BUSY_TIMEOUT);
        // One connection for ever: the database lives as long as it does.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(600))
            .connect_with(options)
            .await
            .map_err(|e| error(&location, "cannot open an in-memory database", e))?;
        Self::migrate(location, pool.clone(), pool).await
    }

    async fn open_file(path: &Path) -> Result<Self, LedgerError> {
        let location = path.display().to_string();
        let base = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .busy_timeout(BUSY_TIMEOUT);
        // Read the format version on a plain connection first: WAL mode, migrations and the
        // version row all write, and must not touch a store this build cannot read.
        let mut check = SqliteConnection::connect_with(&base)
            .await
            .map_err(|e| error(&location, "cannot open the SQLite database", e))?;
        let found = read_format(&mut check, &location).await;
        let _ = check.close().await;
        check_format(BACKEND, found?, &location)?;

        let options = base
            .clone()
            .auto_vacuum(SqliteAutoVacuum::Incremental)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(600))
            .connect_with(options)
            .await
            .map_err(|e| error(&location, "cannot open the SQLite database", e))?;
        // Readers need not set WAL mode (the writer made it the file's mode); they never
        // write, and `query_only` makes sure of it.
        let readers = SqlitePoolOptions::new()
            .max_connections(READERS)
            .test_before_acquire(false)
            .connect_lazy_with(
                base.synchronous(SqliteSynchronous::Normal)
                    .pragma("query_only", "ON"),
            );
        Self::migrate(location, writer, readers).await
    }

    async fn migrate(
        location: String,
        writer: SqlitePool,
        readers: SqlitePool,
    ) -> Result<Self, LedgerError> {
        MIGRATOR.run(&writer).await.map_err(|e| {
            LedgerError::store(BACKEND, format!("cannot migrate {location}"), false, e)
        })?;
        let mut conn = writer
            .acquire()
            .await
            .map_err(|e| error(&location, "cannot open", e))?;
        sqlx::query(
            "INSERT INTO ledger_meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
        )
        .bind(FORMAT_KEY)
        .bind(i64::from(LEDGER_FORMAT_VERSION))
        .execute(&mut *conn)
        .await
        .map_err(|e| error(&location, "cannot write the format version", e))?;
        // Another process may have written the row between our check and here.
        let found = read_format(&mut conn, &location).await?;
        drop(conn);
        check_format(BACKEND, found, &location)?;
        Ok(Self {
            location,
            writer,
            readers,
            write_lock: tokio::sync::Mutex::new(()),
            insert_boundaries: insert_statements(
                "INSERT INTO boundaries (reactor, seq, source, received_at_us, value, crc)",
                6,
                "ON CONFLICT (reactor, seq) DO NOTHING",
            ),
            insert_firings: insert_statements(
                "INSERT INTO firings (reactor, firing_id, fired_at_us, record)",
                4,
                "ON CONFLICT (reactor, firing_id) DO NOTHING",
            ),
            work: crate::workflows::WorkSignal::default(),
        })
    }

    /// The database file's path, or `:memory:`.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Waits for appends in progress, checkpoints the WAL into the database file and
    /// truncates it (`PRAGMA wal_checkpoint(TRUNCATE)`), then closes every connection (and
    /// so, for `:memory:`, the database). Returns once all are closed; later calls fail.
    /// The connections are closed even when the checkpoint fails; its error is returned.
    pub async fn close(&self) -> Result<(), LedgerError> {
        let _guard = self.write_lock.lock().await;
        if self.location != ":memory:" {
            self.readers.close().await;
        }
        let checkpoint = match self.writer.acquire().await {
            Ok(mut conn) if self.location != ":memory:" => {
                sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                    .execute(&mut *conn)
                    .await
                    .map(drop)
                    .map_err(self.err("cannot checkpoint the WAL"))
            }
            Ok(_) => Ok(()),
            Err(e) => Err(self.err("cannot get the writer connection")(e)),
        };
        self.writer.close().await;
        checkpoint
    }

    fn err(&self, what: &str) -> impl Fn(sqlx::Error) -> LedgerError + '_ {
        let what = what.to_owned();
        move |e| error(&self.location, &what, e)
    }

    fn rows(&self) -> RowReader<'_> {
        RowReader {
            backend: BACKEND,
            location: &self.location,
        }
    }
}

/// The format version stored in an opened database, if it has one.
async fn read_format(
    conn: &mut SqliteConnection,
    location: &str,
) -> Result<Option<i64>, LedgerError> {
    let err = |e| {
        error(
            location,
            "cannot read the format version (is it a SQLite database?)",
            e,
        )
    };
    let has_meta: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'ledger_meta')",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(err)?;
    if !has_meta {
        return Ok(None);
    }
    sqlx::query_scalar("SELECT value FROM ledger_meta WHERE key = ?")
        .bind(FORMAT_KEY)
        .fetch_optional(&mut *conn)
        .await
        .map_err(err)
}

forward_ledger!(SqliteLedger, BACKEND);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(parse_url("sqlite://:memory:").ok(), Some(Target::Memory));
        assert_eq!(
            parse_url("sqlite:///abs/l.db").ok(),
            Some(Target::File("/abs/l.db".into()))
        );
        assert_eq!(
            parse_url("sqlite://rel/l.db?mode=rwc").ok(),
            Some(Target::File("rel/l.db".into()))
        );
        assert!(matches!(
            parse_url("sqlite://"),
            Err(LedgerError::BadUrl { .. })
        ));
        assert!(matches!(
            parse_url("sqlite://x.db?mode=ro"),
            Err(LedgerError::BadUrl { .. })
        ));
    }

    #[test]
    fn locked_and_busy_are_transient() {
        assert!(transient_code("5", ""));
        assert!(transient_code("517", "")); // SQLITE_BUSY_SNAPSHOT
        assert!(transient_code("6", ""));
        assert!(transient_code("", "database is locked"));
        assert!(!transient_code("19", "UNIQUE constraint failed")); // SQLITE_CONSTRAINT
        assert!(!transient_code("11", "database disk image is malformed"));
    }

    #[test]
    fn chunk_sizes_cover_every_row_once() {
        for len in [0, 1, 2, 3, 255, 256, 257, 1000, 4096, 4097] {
            let mut next = 0;
            for (start, log) in chunks(len) {
                assert_eq!(start, next);
                assert!(1 << log <= CHUNK);
                next += 1 << log;
            }
            assert_eq!(next, len, "{len}");
        }
    }
}
