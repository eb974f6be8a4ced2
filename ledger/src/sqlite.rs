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

use cloacina_codec::{decode, encode, FORMAT_VERSION};
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteAutoVacuum, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Connection, Row, Sqlite, SqliteConnection, Transaction};

use crate::{
    BoundaryQuery, BoundaryRecord, CheckpointRecord, Commit, FiringQuery, FiringRecord, Ledger,
    LedgerError, LedgerFuture, Record, RetainReport, Retention, SnapshotRecord,
};

const BACKEND: &str = "sqlite";
const FORMAT_KEY: &str = "format_version";
const FLUSH_KEY: &str = "last_flush_us";
/// Reader connections of a file ledger.
const READERS: u32 = 4;
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);
/// Rows per multi-row insert statement; smaller statements take power-of-two sizes, so a
/// connection caches at most a handful of prepared inserts per table.
const CHUNK: usize = 256;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

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

fn backend(message: String) -> LedgerError {
    LedgerError::Backend {
        backend: BACKEND,
        message,
    }
}

fn codec(context: String, source: cloacina_codec::CodecError) -> LedgerError {
    LedgerError::Codec {
        backend: BACKEND,
        context,
        source,
    }
}

/// A u64 id as the i64 SQLite stores.
fn id_to_sql(id: u64, record: impl FnOnce() -> String) -> Result<i64, LedgerError> {
    i64::try_from(id).map_err(|_| {
        backend(format!(
            "{}: id {id} is above {}, the largest the SQLite ledger stores",
            record(),
            i64::MAX
        ))
    })
}

/// A stored id back as u64.
fn id_from_sql(id: i64, what: impl FnOnce() -> String) -> Result<u64, LedgerError> {
    u64::try_from(id).map_err(|_| backend(format!("{}: stored id {id} is negative", what())))
}

/// A bound for a query: ids above `i64::MAX` are clamped (no stored id is that large).
fn clamp_id(id: u64) -> i64 {
    i64::try_from(id).unwrap_or(i64::MAX)
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

/// A firing ready to insert: the record, its encoding and its SQL ids.
struct EncodedFiring<'r> {
    record: &'r FiringRecord,
    id: i64,
    bytes: Vec<u8>,
}

/// A boundary ready to insert.
struct SqlBoundary<'r> {
    record: &'r BoundaryRecord,
    seq: i64,
}

/// An append's records, checked and encoded before the write lock is taken.
struct Staged<'r> {
    boundaries: Vec<SqlBoundary<'r>>,
    firings: Vec<EncodedFiring<'r>>,
    checkpoints: Vec<&'r CheckpointRecord>,
    snapshots: Vec<(&'r str, Vec<u8>)>,
}

fn stage(records: &[Record]) -> Result<Staged<'_>, LedgerError> {
    let mut staged = Staged {
        boundaries: Vec::new(),
        firings: Vec::new(),
        checkpoints: Vec::new(),
        snapshots: Vec::new(),
    };
    for record in records {
        match record {
            Record::Boundary(b) => staged.boundaries.push(SqlBoundary {
                record: b,
                seq: id_to_sql(b.seq, || record.describe())?,
            }),
            Record::Firing(f) => staged.firings.push(EncodedFiring {
                record: f,
                id: id_to_sql(f.firing_id, || record.describe())?,
                bytes: encode(f).map_err(|e| codec(record.describe(), e))?,
            }),
            Record::Checkpoint(c) => staged.checkpoints.push(c),
            Record::Snapshot(s) => staged.snapshots.push((
                &s.reactor,
                encode(s).map_err(|e| codec(record.describe(), e))?,
            )),
        }
    }
    // Id order makes the inserts append to the b-trees; the sort is stable, so of two
    // records with one id the earlier in the batch is inserted and the later compared.
    staged.boundaries.sort_by(|a, b| {
        (a.record.reactor.as_str(), a.seq).cmp(&(b.record.reactor.as_str(), b.seq))
    });
    staged
        .firings
        .sort_by(|a, b| (a.record.reactor.as_str(), a.id).cmp(&(b.record.reactor.as_str(), b.id)));
    Ok(staged)
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
            .map_err(|e| backend(format!("cannot open an in-memory database: {e}")))?;
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
            .map_err(|e| backend(format!("cannot open SQLite database {location}: {e}")))?;
        let found = read_format(&mut check, &location).await;
        let _ = check.close().await;
        check_format(found?, &location)?;

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
            .map_err(|e| backend(format!("cannot open SQLite database {location}: {e}")))?;
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
        MIGRATOR
            .run(&writer)
            .await
            .map_err(|e| backend(format!("cannot migrate {location}: {e}")))?;
        let mut conn = writer
            .acquire()
            .await
            .map_err(|e| backend(format!("cannot open {location}: {e}")))?;
        sqlx::query(
            "INSERT INTO ledger_meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
        )
        .bind(FORMAT_KEY)
        .bind(i64::from(FORMAT_VERSION))
        .execute(&mut *conn)
        .await
        .map_err(|e| {
            backend(format!(
                "cannot write the format version to {location}: {e}"
            ))
        })?;
        // Another process may have written the row between our check and here.
        let found = read_format(&mut conn, &location).await?;
        drop(conn);
        check_format(found, &location)?;
        Ok(Self {
            location,
            writer,
            readers,
            write_lock: tokio::sync::Mutex::new(()),
            insert_boundaries: insert_statements(
                "INSERT INTO boundaries (reactor, seq, source, received_at_us, value)",
                5,
                "ON CONFLICT (reactor, seq) DO NOTHING",
            ),
            insert_firings: insert_statements(
                "INSERT INTO firings (reactor, firing_id, fired_at_us, record)",
                4,
                "ON CONFLICT (reactor, firing_id) DO NOTHING",
            ),
        })
    }

    /// The database file's path, or `:memory:`.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Closes every connection (and so, for `:memory:`, the database). Later calls fail.
    pub async fn close(&self) {
        self.readers.close().await;
        self.writer.close().await;
    }

    fn sql_error(&self, what: &str) -> impl Fn(sqlx::Error) -> LedgerError + '_ {
        let what = what.to_owned();
        move |e| backend(format!("{what} in {}: {e}", self.location))
    }

    /// Takes the write lock and the writer connection, set to `commit`'s durability.
    async fn writer(
        &self,
        commit: Commit,
    ) -> Result<(tokio::sync::MutexGuard<'_, ()>, PoolConnection<Sqlite>), LedgerError> {
        let guard = self.write_lock.lock().await;
        let mut conn = self
            .writer
            .acquire()
            .await
            .map_err(self.sql_error("cannot get the writer connection"))?;
        // Per transaction, and outside it (SQLite refuses to change it inside one).
        let pragma = match commit {
            Commit::Buffered => "PRAGMA synchronous = NORMAL",
            Commit::Durable => "PRAGMA synchronous = FULL",
        };
        sqlx::query(pragma)
            .execute(&mut *conn)
            .await
            .map_err(self.sql_error("cannot set `synchronous`"))?;
        Ok((guard, conn))
    }

    async fn append_records(&self, records: &[Record], commit: Commit) -> Result<(), LedgerError> {
        if records.is_empty() {
            return Ok(());
        }
        let staged = stage(records)?;
        let (_guard, mut conn) = self.writer(commit).await?;
        let mut tx = conn
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(self.sql_error("cannot begin an append"))?;
        match self.apply(&mut tx, &staged).await {
            Ok(()) => tx
                .commit()
                .await
                .map_err(self.sql_error("cannot commit an append")),
            Err(e) => {
                // Dropping the transaction would roll back too, on the connection's next use.
                let _ = tx.rollback().await;
                Err(e)
            }
        }
    }

    async fn apply(
        &self,
        tx: &mut Transaction<'_, Sqlite>,
        staged: &Staged<'_>,
    ) -> Result<(), LedgerError> {
        for (start, log) in chunks(staged.boundaries.len()) {
            let rows = &staged.boundaries[start..start + (1 << log)];
            let mut q = sqlx::query(&self.insert_boundaries[log]);
            for b in rows {
                q = q
                    .bind(&b.record.reactor)
                    .bind(b.seq)
                    .bind(&b.record.source)
                    .bind(b.record.received_at_unix_us)
                    .bind(&b.record.value);
            }
            let done = q
                .execute(&mut **tx)
                .await
                .map_err(self.sql_error("cannot insert boundaries"))?;
            if done.rows_affected() < rows.len() as u64 {
                self.compare_boundaries(tx, rows).await?;
            }
        }
        for (start, log) in chunks(staged.firings.len()) {
            let rows = &staged.firings[start..start + (1 << log)];
            let mut q = sqlx::query(&self.insert_firings[log]);
            for f in rows {
                q = q
                    .bind(&f.record.reactor)
                    .bind(f.id)
                    .bind(f.record.fired_at_unix_us)
                    .bind(&f.bytes);
            }
            let done = q
                .execute(&mut **tx)
                .await
                .map_err(self.sql_error("cannot insert firings"))?;
            if done.rows_affected() < rows.len() as u64 {
                self.compare_firings(tx, rows).await?;
            }
        }
        for c in &staged.checkpoints {
            sqlx::query(
                "INSERT INTO checkpoints (owner, key, value, at_us) VALUES (?, ?, ?, ?) \
                 ON CONFLICT (owner, key) DO UPDATE SET value = excluded.value, at_us = excluded.at_us",
            )
            .bind(&c.owner)
            .bind(&c.key)
            .bind(&c.value)
            .bind(c.at_unix_us)
            .execute(&mut **tx)
            .await
            .map_err(self.sql_error("cannot store a checkpoint"))?;
        }
        for (reactor, bytes) in &staged.snapshots {
            sqlx::query(
                "INSERT INTO snapshots (reactor, record) VALUES (?, ?) \
                 ON CONFLICT (reactor) DO UPDATE SET record = excluded.record",
            )
            .bind(*reactor)
            .bind(bytes)
            .execute(&mut **tx)
            .await
            .map_err(self.sql_error("cannot store a snapshot"))?;
        }
        Ok(())
    }

    /// Some rows of an insert were already stored (or repeated in the batch): each row must
    /// equal what is stored now.
    async fn compare_boundaries(
        &self,
        tx: &mut Transaction<'_, Sqlite>,
        rows: &[SqlBoundary<'_>],
    ) -> Result<(), LedgerError> {
        for b in rows {
            let row = sqlx::query(
                "SELECT source, received_at_us, value FROM boundaries WHERE reactor = ? AND seq = ?",
            )
            .bind(&b.record.reactor)
            .bind(b.seq)
            .fetch_optional(&mut **tx)
            .await
            .map_err(self.sql_error("cannot read a stored boundary"))?;
            let same = match &row {
                Some(row) => {
                    let get = |e| self.sql_error("cannot read a stored boundary")(e);
                    row.try_get::<&str, _>(0).map_err(get)? == b.record.source
                        && row.try_get::<i64, _>(1).map_err(get)? == b.record.received_at_unix_us
                        && row.try_get::<&[u8], _>(2).map_err(get)? == b.record.value.as_slice()
                }
                None => false,
            };
            if !same {
                return Err(LedgerError::Conflict {
                    backend: BACKEND,
                    record: Record::Boundary(b.record.clone()).describe(),
                });
            }
        }
        Ok(())
    }

    async fn compare_firings(
        &self,
        tx: &mut Transaction<'_, Sqlite>,
        rows: &[EncodedFiring<'_>],
    ) -> Result<(), LedgerError> {
        for f in rows {
            let describe = || Record::Firing(f.record.clone()).describe();
            let stored: Option<Vec<u8>> = sqlx::query_scalar(
                "SELECT record FROM firings WHERE reactor = ? AND firing_id = ?",
            )
            .bind(&f.record.reactor)
            .bind(f.id)
            .fetch_optional(&mut **tx)
            .await
            .map_err(self.sql_error("cannot read a stored firing"))?;
            let same = match stored {
                Some(bytes) if bytes == f.bytes => true,
                Some(bytes) => {
                    decode::<FiringRecord>(&bytes).map_err(|e| codec(describe(), e))? == *f.record
                }
                None => false,
            };
            if !same {
                return Err(LedgerError::Conflict {
                    backend: BACKEND,
                    record: describe(),
                });
            }
        }
        Ok(())
    }

    async fn flush_all(&self) -> Result<(), LedgerError> {
        let (_guard, mut conn) = self.writer(Commit::Durable).await?;
        sqlx::query(
            "INSERT INTO ledger_meta (key, value) VALUES (?, ?) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(FLUSH_KEY)
        .bind(crate::now_unix_us())
        .execute(&mut *conn)
        .await
        .map_err(self.sql_error("cannot flush"))?;
        Ok(())
    }

    async fn read_firings(&self, q: &FiringQuery) -> Result<Vec<FiringRecord>, LedgerError> {
        let Ok(from) = i64::try_from(q.from_id.unwrap_or(0)) else {
            return Ok(Vec::new());
        };
        let rows = sqlx::query(
            "SELECT firing_id, record FROM firings \
             WHERE reactor = ?1 AND firing_id >= ?2 \
               AND (?3 IS NULL OR fired_at_us >= ?3) AND (?4 IS NULL OR fired_at_us < ?4) \
             ORDER BY firing_id LIMIT ?5",
        )
        .bind(&q.reactor)
        .bind(from)
        .bind(q.since_unix_us)
        .bind(q.until_unix_us)
        .bind(limit_to_sql(q.limit))
        .fetch_all(&self.readers)
        .await
        .map_err(self.sql_error(&format!("cannot read firings of `{}`", q.reactor)))?;
        rows.iter()
            .map(|row| {
                let id: i64 = row
                    .try_get(0)
                    .map_err(self.sql_error("cannot read a firing"))?;
                let what = || format!("firing {id} of reactor `{}`", q.reactor);
                let bytes: &[u8] = row.try_get(1).map_err(self.sql_error(&what()))?;
                decode(bytes).map_err(|e| codec(what(), e))
            })
            .collect()
    }

    async fn read_last_firing(&self, reactor: &str) -> Result<Option<FiringRecord>, LedgerError> {
        let row = sqlx::query(
            "SELECT firing_id, record FROM firings WHERE reactor = ?1 \
             ORDER BY firing_id DESC LIMIT 1",
        )
        .bind(reactor)
        .fetch_optional(&self.readers)
        .await
        .map_err(self.sql_error(&format!("cannot read the last firing of `{reactor}`")))?;
        match row {
            None => Ok(None),
            Some(row) => {
                let id: i64 = row
                    .try_get(0)
                    .map_err(self.sql_error("cannot read a firing"))?;
                let what = || format!("firing {id} of reactor `{reactor}`");
                let bytes: &[u8] = row.try_get(1).map_err(self.sql_error(&what()))?;
                decode(bytes).map(Some).map_err(|e| codec(what(), e))
            }
        }
    }

    async fn read_boundaries(&self, q: &BoundaryQuery) -> Result<Vec<BoundaryRecord>, LedgerError> {
        let Ok(from) = i64::try_from(q.from_seq.unwrap_or(0)) else {
            return Ok(Vec::new());
        };
        let through = clamp_id(q.through_seq.unwrap_or(u64::MAX));
        let rows = sqlx::query(
            "SELECT seq, source, received_at_us, value FROM boundaries \
             WHERE reactor = ?1 AND seq >= ?2 AND seq <= ?3 \
               AND (?4 IS NULL OR received_at_us >= ?4) AND (?5 IS NULL OR received_at_us < ?5) \
             ORDER BY seq LIMIT ?6",
        )
        .bind(&q.reactor)
        .bind(from)
        .bind(through)
        .bind(q.since_unix_us)
        .bind(q.until_unix_us)
        .bind(limit_to_sql(q.limit))
        .fetch_all(&self.readers)
        .await
        .map_err(self.sql_error(&format!("cannot read boundaries of `{}`", q.reactor)))?;
        rows.iter()
            .map(|row| self.boundary_from_row(&q.reactor, row))
            .collect()
    }

    fn boundary_from_row(
        &self,
        reactor: &str,
        row: &SqliteRow,
    ) -> Result<BoundaryRecord, LedgerError> {
        let err = |e| {
            backend(format!(
                "cannot read a boundary of `{reactor}` in {}: {e}",
                self.location
            ))
        };
        let seq: i64 = row.try_get(0).map_err(err)?;
        Ok(BoundaryRecord {
            reactor: reactor.to_owned(),
            seq: id_from_sql(seq, || format!("boundary of `{reactor}`"))?,
            source: row.try_get(1).map_err(err)?,
            received_at_unix_us: row.try_get(2).map_err(err)?,
            value: row.try_get(3).map_err(err)?,
        })
    }

    async fn read_snapshot(&self, reactor: &str) -> Result<Option<SnapshotRecord>, LedgerError> {
        let bytes: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT record FROM snapshots WHERE reactor = ?")
                .bind(reactor)
                .fetch_optional(&self.readers)
                .await
                .map_err(self.sql_error(&format!("cannot read the snapshot of `{reactor}`")))?;
        bytes
            .map(|b| decode(&b).map_err(|e| codec(format!("snapshot of reactor `{reactor}`"), e)))
            .transpose()
    }

    async fn read_checkpoint(
        &self,
        owner: &str,
        key: &str,
    ) -> Result<Option<CheckpointRecord>, LedgerError> {
        let row: Option<(Vec<u8>, i64)> =
            sqlx::query_as("SELECT value, at_us FROM checkpoints WHERE owner = ? AND key = ?")
                .bind(owner)
                .bind(key)
                .fetch_optional(&self.readers)
                .await
                .map_err(self.sql_error(&format!("cannot read checkpoint `{key}` of `{owner}`")))?;
        Ok(row.map(|(value, at_unix_us)| CheckpointRecord {
            owner: owner.to_owned(),
            key: key.to_owned(),
            value,
            at_unix_us,
        }))
    }

    async fn retain_records(
        &self,
        reactor: &str,
        retention: Retention,
    ) -> Result<RetainReport, LedgerError> {
        let (_guard, mut conn) = self.writer(Commit::Buffered).await?;
        let mut tx = conn
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(self.sql_error("cannot begin retention"))?;
        let report = match self.cut(&mut tx, reactor, retention).await {
            Ok(report) => {
                tx.commit()
                    .await
                    .map_err(self.sql_error("cannot commit retention"))?;
                report
            }
            Err(e) => {
                let _ = tx.rollback().await;
                return Err(e);
            }
        };
        if report.boundaries_removed + report.firings_removed > 0 {
            // Hands the freed pages back to the file system (a no-op for a file created
            // before `auto_vacuum=INCREMENTAL`, which keeps them for reuse).
            sqlx::query("PRAGMA incremental_vacuum")
                .execute(&mut *conn)
                .await
                .map_err(self.sql_error("cannot vacuum after retention"))?;
        }
        Ok(report)
    }

    async fn cut(
        &self,
        tx: &mut Transaction<'_, Sqlite>,
        reactor: &str,
        retention: Retention,
    ) -> Result<RetainReport, LedgerError> {
        let max_seq: Option<i64> =
            sqlx::query_scalar("SELECT max(seq) FROM boundaries WHERE reactor = ?")
                .bind(reactor)
                .fetch_one(&mut **tx)
                .await
                .map_err(self.sql_error("cannot read the newest boundary"))?;
        let max_id: Option<i64> =
            sqlx::query_scalar("SELECT max(firing_id) FROM firings WHERE reactor = ?")
                .bind(reactor)
                .fetch_one(&mut **tx)
                .await
                .map_err(self.sql_error("cannot read the newest firing"))?;
        let snapshot: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT record FROM snapshots WHERE reactor = ?")
                .bind(reactor)
                .fetch_optional(&mut **tx)
                .await
                .map_err(self.sql_error("cannot read the snapshot"))?;
        let snapshot = match snapshot {
            Some(bytes) => {
                let s: SnapshotRecord = decode(&bytes)
                    .map_err(|e| codec(format!("snapshot of reactor `{reactor}`"), e))?;
                Some((s.last_seq, s.next_firing_id))
            }
            None => None,
        };
        let as_id = |v: Option<i64>| v.map_or(0, |v| u64::try_from(v).unwrap_or(0));
        let cut = retention.cut(as_id(max_seq), as_id(max_id), snapshot);
        // Exactly `RetentionCut::removes_boundary` and `removes_firing`.
        let boundaries = sqlx::query(
            "DELETE FROM boundaries WHERE reactor = ?1 AND seq <= ?2 \
             AND (seq <= ?3 OR received_at_us < ?4)",
        )
        .bind(reactor)
        .bind(clamp_id(cut.boundary_protect))
        .bind(clamp_id(cut.boundary_count_cut))
        .bind(cut.older_than_unix_us)
        .execute(&mut **tx)
        .await
        .map_err(self.sql_error("cannot remove boundaries"))?;
        let firings = sqlx::query(
            "DELETE FROM firings WHERE reactor = ?1 AND firing_id <= ?2 \
             AND (firing_id <= ?3 OR fired_at_us < ?4)",
        )
        .bind(reactor)
        .bind(clamp_id(cut.firing_protect))
        .bind(clamp_id(cut.firing_count_cut))
        .bind(cut.older_than_unix_us)
        .execute(&mut **tx)
        .await
        .map_err(self.sql_error("cannot remove firings"))?;
        Ok(RetainReport {
            boundaries_removed: boundaries.rows_affected(),
            firings_removed: firings.rows_affected(),
        })
    }
}

/// The format version stored in an opened database, if it has one.
async fn read_format(
    conn: &mut SqliteConnection,
    location: &str,
) -> Result<Option<i64>, LedgerError> {
    let err = |e: sqlx::Error| {
        backend(format!(
            "cannot read the format version of {location} (is it a SQLite database?): {e}"
        ))
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

fn check_format(found: Option<i64>, location: &str) -> Result<(), LedgerError> {
    match found {
        None => Ok(()),
        Some(v) if v == i64::from(FORMAT_VERSION) => Ok(()),
        Some(v) => Err(LedgerError::IncompatibleFormat {
            backend: BACKEND,
            location: location.to_owned(),
            // Versions are one byte; anything larger is reported as 255.
            found: u8::try_from(v).unwrap_or(u8::MAX),
            expected: FORMAT_VERSION,
        }),
    }
}

impl Ledger for SqliteLedger {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn append<'a>(&'a self, records: &'a [Record], commit: Commit) -> LedgerFuture<'a, ()> {
        Box::pin(self.append_records(records, commit))
    }

    fn flush(&self) -> LedgerFuture<'_, ()> {
        Box::pin(self.flush_all())
    }

    fn firings<'a>(&'a self, query: &'a FiringQuery) -> LedgerFuture<'a, Vec<FiringRecord>> {
        Box::pin(self.read_firings(query))
    }

    fn last_firing<'a>(&'a self, reactor: &'a str) -> LedgerFuture<'a, Option<FiringRecord>> {
        Box::pin(self.read_last_firing(reactor))
    }

    fn boundaries<'a>(&'a self, query: &'a BoundaryQuery) -> LedgerFuture<'a, Vec<BoundaryRecord>> {
        Box::pin(self.read_boundaries(query))
    }

    fn snapshot<'a>(&'a self, reactor: &'a str) -> LedgerFuture<'a, Option<SnapshotRecord>> {
        Box::pin(self.read_snapshot(reactor))
    }

    fn checkpoint<'a>(
        &'a self,
        owner: &'a str,
        key: &'a str,
    ) -> LedgerFuture<'a, Option<CheckpointRecord>> {
        Box::pin(self.read_checkpoint(owner, key))
    }

    fn retain<'a>(
        &'a self,
        reactor: &'a str,
        retention: Retention,
    ) -> LedgerFuture<'a, RetainReport> {
        Box::pin(self.retain_records(reactor, retention))
    }
}

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
