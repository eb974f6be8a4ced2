//! [`PostgresLedger`]: the PostgreSQL backend (sqlx).
//!
//! URL: `postgres://USER[:PASSWORD]@HOST[:PORT]/DB[?schema=NAME]` (or `postgresql://`). The
//! ledger keeps its tables in one schema: `NAME` (checked with [`crate::validate_tenant`]),
//! or `cloacina` without `schema=`, never `public`, so neither its tables nor sqlx's
//! `_sqlx_migrations` mix with an application's own. Every pooled connection sets its
//! `search_path` to that schema, and the migrations in `migrations/postgres` run inside it,
//! so each schema (tenant) has its own tables and its own migration history.
//!
//! - Open: the format version in table `meta` is checked before anything is created,
//!   migrated or written; a store of another version is refused untouched.
//! - Append: one transaction per batch; boundaries and firings go in with one bulk
//!   `INSERT .. SELECT FROM UNNEST(..) ON CONFLICT DO NOTHING` each, and only when some rows
//!   were already there are the stored rows of the batch read back and compared.
//!   [`Commit::Buffered`] runs the transaction with `synchronous_commit = off` (it commits
//!   without waiting for the WAL flush); [`Commit::Durable`] with `on`, the server default
//!   (a connection whose default is `off` is raised to `on`).
//! - Flush: bumps a counter row in `meta`, committed synchronously. A commit
//!   that wrote WAL waits until the WAL is flushed up to its commit record, which covers every
//!   earlier (asynchronous) commit. (A transaction that writes nothing, or only takes an xid,
//!   writes no WAL and waits for nothing, so it would not do.)
//! - Retention deletes rows; autovacuum makes the space reusable by later inserts (it is not
//!   given back to the operating system).

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::TryStreamExt;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, Executor};

use super::common::{
    self, check_format, clamp_id, forward_ledger, stage, RowReader, Scan, FORMAT_KEY,
};
use crate::{
    BoundaryQuery, BoundaryRecord, CheckpointRecord, Commit, FiringQuery, FiringRecord,
    LedgerError, Record, RetainReport, Retention, SnapshotRecord, VerifyReport,
    LEDGER_FORMAT_VERSION,
};

mod notify;
mod open;
mod read;
mod workflows;

const BACKEND: &str = "postgres";
/// The schema used when the URL names none.
const DEFAULT_SCHEMA: &str = "cloacina";
/// How long opening a connection (and getting one from the pool) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_CONNECTIONS: u32 = 8;
/// Connections for the workflow store's writes (the runner keeps this many batches in
/// flight: [`WorkflowStore::concurrent_writes`](crate::WorkflowStore::concurrent_writes)).
const WORKFLOW_WRITE_CONNECTIONS: u32 = 2;
/// Tries per append when PostgreSQL aborts it for a deadlock or serialization failure.
const APPEND_TRIES: u32 = 3;

/// Migrations a newer build applied are not an error (`ignore_missing`): while a rolling
/// upgrade runs, runners of the previous build open the store the new ones migrated (each
/// migration only adds, with defaults; `meta`'s format version guards incompatible layouts).
static MIGRATOR: Migrator = Migrator {
    ignore_missing: true,
    ..sqlx::migrate!("./migrations/postgres")
};

/// The tables and columns the ledger needs, checked on open (after the migrations claim to be
/// applied) and by `verify`.
const EXPECTED: &[(&str, &[&str])] = &[
    ("meta", &["key", "value"]),
    (
        "boundaries",
        &["reactor", "seq", "source", "received_at_us", "value", "crc"],
    ),
    (
        "firings",
        &["reactor", "firing_id", "fired_at_us", "record"],
    ),
    ("checkpoints", &["owner", "key", "value", "at_us", "crc"]),
    ("snapshots", &["reactor", "record"]),
    (
        "wf_executions",
        &[
            "id",
            "workflow",
            "version",
            "input",
            "created_at_us",
            "owner",
            "lease_until_us",
            "status",
            "final_context",
            "error",
            "finished_at_us",
            "takeovers",
        ],
    ),
    (
        "wf_tasks",
        &[
            "execution_id",
            "task",
            "outcome",
            "attempts",
            "output",
            "error",
            "started_at_us",
            "finished_at_us",
        ],
    ),
];

const INSERT_BOUNDARIES: &str = "\
WITH ins AS (
    INSERT INTO boundaries (reactor, seq, source, received_at_us, value, crc)
    SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::bigint[], $5::bytea[], $6::bigint[])
    ON CONFLICT (reactor, seq) DO NOTHING
    RETURNING 1
) SELECT count(*) FROM ins";

const STORED_BOUNDARIES: &str = "\
SELECT b.reactor, b.seq, b.source, b.received_at_us, b.value, b.crc
FROM UNNEST($1::text[], $2::bigint[]) AS k(reactor, seq)
JOIN boundaries b ON b.reactor = k.reactor AND b.seq = k.seq";

const INSERT_FIRINGS: &str = "\
WITH ins AS (
    INSERT INTO firings (reactor, firing_id, fired_at_us, record)
    SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::bytea[])
    ON CONFLICT (reactor, firing_id) DO NOTHING
    RETURNING 1
) SELECT count(*) FROM ins";

const STORED_FIRINGS: &str = "\
SELECT f.reactor, f.firing_id, f.record
FROM UNNEST($1::text[], $2::bigint[]) AS k(reactor, firing_id)
JOIN firings f ON f.reactor = k.reactor AND f.firing_id = k.firing_id";

const UPSERT_CHECKPOINTS: &str = "\
INSERT INTO checkpoints (owner, key, value, at_us, crc)
SELECT * FROM UNNEST($1::text[], $2::text[], $3::bytea[], $4::bigint[], $5::bigint[])
ON CONFLICT (owner, key) DO UPDATE
SET value = EXCLUDED.value, at_us = EXCLUDED.at_us, crc = EXCLUDED.crc";

const UPSERT_SNAPSHOTS: &str = "\
INSERT INTO snapshots (reactor, record)
SELECT * FROM UNNEST($1::text[], $2::bytea[])
ON CONFLICT (reactor) DO UPDATE SET record = EXCLUDED.record";

const SELECT_FIRINGS: &str = "\
SELECT firing_id, record FROM firings
WHERE reactor = $1 AND firing_id >= $2 AND fired_at_us >= $3 AND fired_at_us <= $4
ORDER BY firing_id LIMIT $5";

const SELECT_BOUNDARIES: &str = "\
SELECT seq, source, received_at_us, value, crc FROM boundaries
WHERE reactor = $1 AND seq >= $2 AND seq <= $3 AND received_at_us >= $4 AND received_at_us <= $5
ORDER BY seq LIMIT $6";

const RETENTION_BOUNDS: &str = "\
SELECT (SELECT max(seq) FROM boundaries WHERE reactor = $1),
       (SELECT max(firing_id) FROM firings WHERE reactor = $1),
       (SELECT record FROM snapshots WHERE reactor = $1)";

const DELETE_BOUNDARIES: &str = "\
DELETE FROM boundaries
WHERE reactor = $1 AND seq <= $2 AND (seq <= $3 OR received_at_us < $4)";

const DELETE_FIRINGS: &str = "\
DELETE FROM firings
WHERE reactor = $1 AND firing_id <= $2 AND (firing_id <= $3 OR fired_at_us < $4)";

const FLUSH: &str = "\
INSERT INTO meta (key, value) VALUES ('flushes', 1)
ON CONFLICT (key) DO UPDATE SET value = meta.value + 1";

/// A ledger stored in PostgreSQL, in one schema of one database (URL and schema: see
/// [`PostgresLedger::open`]). Holds a pool of up to 8 connections; appends from several
/// tasks or processes are safe.
#[derive(Debug)]
pub struct PostgresLedger {
    pool: PgPool,
    /// The workflow store's writes (see `open.rs`).
    workflow_writes: PgPool,
    schema: String,
    location: String,
    /// Bumped when work is submitted to this schema, here or (heard by `LISTEN`) elsewhere.
    work: Arc<crate::workflows::WorkSignal>,
    /// Whether the `LISTEN` task runs.
    listening: std::sync::atomic::AtomicBool,
}

/// What a URL names.
#[derive(Debug)]
struct Target {
    /// The URL handed to sqlx (without `schema=`).
    connect: String,
    /// The schema the ledger lives in.
    schema: String,
    /// The URL as given, without its password, for messages.
    location: String,
}

fn parse_url(url: &str) -> Result<Target, LedgerError> {
    let url = url.trim();
    let location = crate::redact_url(url);
    let bad = |reason: &str| LedgerError::BadUrl {
        url: location.clone(),
        reason: reason.to_owned(),
    };
    let Some(rest) = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
    else {
        return Err(bad("expected postgres://... or postgresql://..."));
    };
    // Host and database are required: without them libpq would quietly pick defaults (a local
    // socket, a database named after the user) and the ledger would create its schema there.
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let host = rest[..authority_end]
        .rsplit_once('@')
        .map_or(&rest[..authority_end], |(_, h)| h);
    let database = rest[authority_end..]
        .strip_prefix('/')
        .map(|p| &p[..p.find(['?', '#']).unwrap_or(p.len())])
        .unwrap_or("");
    let needs = "needs a host and a database: postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?schema=NAME]";
    if host.is_empty() || host.starts_with(':') {
        return Err(bad(&format!("names no host; {needs}")));
    }
    if database.is_empty() {
        return Err(bad(&format!("names no database; {needs}")));
    }
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut schema = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("schema", name)) => {
                if schema.replace(name).is_some() {
                    return Err(bad("names `schema` more than once"));
                }
            }
            None if pair == "schema" => return Err(bad("`schema` needs a value: schema=NAME")),
            _ => kept.push(pair),
        }
    }
    let schema = match schema {
        Some("") => {
            return Err(bad(
                "the `schema` parameter is empty: give a name (schema=NAME) or leave it out \
                 for the default schema `cloacina`",
            ))
        }
        Some(name) => {
            crate::validate_tenant(name)?;
            name.to_owned()
        }
        None => DEFAULT_SCHEMA.to_owned(),
    };
    let mut connect = base.to_owned();
    if !kept.is_empty() {
        connect.push('?');
        connect.push_str(&kept.join("&"));
    }
    Ok(Target {
        connect,
        schema,
        location,
    })
}

/// `name` as a quoted SQL identifier (names are validated first; quoting keeps their case).
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Whether PostgreSQL's SQLSTATE says trying again may succeed: serialization failure,
/// deadlock, lock not available, connection exceptions (class 08), insufficient resources
/// (class 53), operator intervention (shutdown, 57P01-57P03).
fn transient_code(code: &str, _message: &str) -> bool {
    matches!(
        code,
        "40001" | "40P01" | "55P03" | "57P01" | "57P02" | "57P03"
    ) || code.starts_with("08")
        || code.starts_with("53")
}

/// Whether PostgreSQL aborted the transaction only because of another one (deadlock or
/// serialization failure): retried inside `append` at once.
fn retryable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => matches!(db.code().as_deref(), Some("40P01" | "40001")),
        _ => false,
    }
}

/// An append failed: for a ledger reason, or in SQL (what was being done, and the error).
enum Failure {
    Ledger(LedgerError),
    Sql(&'static str, sqlx::Error),
}

impl From<LedgerError> for Failure {
    fn from(e: LedgerError) -> Self {
        Self::Ledger(e)
    }
}

fn sql(what: &'static str) -> impl FnOnce(sqlx::Error) -> Failure {
    move |e| Failure::Sql(what, e)
}

/// A staged batch in the column arrays the bulk statements bind.
struct Batch<'r> {
    staged: common::Staged<'r>,
    b_reactor: Vec<&'r str>,
    b_seq: Vec<i64>,
    b_source: Vec<&'r str>,
    b_at: Vec<i64>,
    b_value: Vec<&'r [u8]>,
    b_crc: Vec<i64>,
    f_reactor: Vec<&'r str>,
    f_id: Vec<i64>,
    f_at: Vec<i64>,
}

impl<'r> Batch<'r> {
    fn build(records: &'r [Record]) -> Result<Batch<'r>, LedgerError> {
        let staged = stage(BACKEND, records, true)?;
        let b = &staged.boundaries;
        let f = &staged.firings;
        Ok(Batch {
            b_reactor: b.iter().map(|b| b.record.reactor.as_str()).collect(),
            b_seq: b.iter().map(|b| b.seq).collect(),
            b_source: b.iter().map(|b| b.record.source.as_str()).collect(),
            b_at: b.iter().map(|b| b.record.received_at_unix_us).collect(),
            b_value: b.iter().map(|b| b.record.value.as_slice()).collect(),
            b_crc: b.iter().map(|b| b.crc).collect(),
            f_reactor: f.iter().map(|f| f.record.reactor.as_str()).collect(),
            f_id: f.iter().map(|f| f.id).collect(),
            f_at: f.iter().map(|f| f.record.fired_at_unix_us).collect(),
            staged,
        })
    }
}

type StoredBoundary = (String, i64, String, i64, Vec<u8>, i64);
type StoredFiring = (String, i64, Vec<u8>);
type RetentionRow = (Option<i64>, Option<i64>, Option<Vec<u8>>);

impl PostgresLedger {
    fn err(&self, what: &str) -> impl Fn(sqlx::Error) -> LedgerError + '_ {
        let what = what.to_owned();
        move |e| {
            common::sql_error(
                BACKEND,
                format!("{what} (schema `{}` at {})", self.schema, self.location),
                e,
                transient_code,
            )
        }
    }

    fn rows(&self) -> RowReader<'_> {
        RowReader {
            backend: BACKEND,
            location: &self.location,
        }
    }

    async fn append_records(&self, records: &[Record], commit: Commit) -> Result<(), LedgerError> {
        if records.is_empty() {
            return Ok(());
        }
        let batch = Batch::build(records)?;
        let mut tries = 0;
        loop {
            tries += 1;
            match self.apply(&batch, commit).await {
                Ok(()) => return Ok(()),
                Err(Failure::Ledger(e)) => return Err(e),
                Err(Failure::Sql(_, e)) if retryable(&e) && tries < APPEND_TRIES => {
                    tracing::debug!(error = %e, "postgres ledger: append aborted, trying again");
                }
                Err(Failure::Sql(what, e)) => return Err(self.err(what)(e)),
            }
        }
    }

    /// One try at appending `batch` in one transaction (dropped, so rolled back, on error).
    async fn apply(&self, batch: &Batch<'_>, commit: Commit) -> Result<(), Failure> {
        let staged = &batch.staged;
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(sql("cannot begin a transaction"))?;
        if commit == Commit::Buffered {
            sqlx::query("SET LOCAL synchronous_commit = off")
                .execute(&mut *tx)
                .await
                .map_err(sql("cannot set synchronous_commit"))?;
        }
        if !staged.boundaries.is_empty() {
            let inserted: i64 = sqlx::query_scalar(INSERT_BOUNDARIES)
                .bind(&batch.b_reactor)
                .bind(&batch.b_seq)
                .bind(&batch.b_source)
                .bind(&batch.b_at)
                .bind(&batch.b_value)
                .bind(&batch.b_crc)
                .fetch_one(&mut *tx)
                .await
                .map_err(sql("cannot insert boundaries"))?;
            if usize::try_from(inserted).ok() != Some(staged.boundaries.len()) {
                // Some ids were already stored: they must hold the same records. (Rows this
                // transaction inserted compare equal; a row retention removed meanwhile is
                // simply absent.)
                let stored: Vec<StoredBoundary> = sqlx::query_as(STORED_BOUNDARIES)
                    .bind(&batch.b_reactor)
                    .bind(&batch.b_seq)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(sql("cannot read stored boundaries"))?;
                let mut by_id: HashMap<(String, i64), BoundaryRecord> = HashMap::new();
                for (r, seq, source, at, value, crc) in stored {
                    let b = self.rows().boundary(&r, seq, source, at, value, crc)?;
                    by_id.insert((r, seq), b);
                }
                for b in &staged.boundaries {
                    if let Some(s) = by_id.get(&(b.record.reactor.clone(), b.seq)) {
                        if s != b.record {
                            return Err(conflict(Record::Boundary(b.record.clone())).into());
                        }
                    }
                }
            }
        }
        if !staged.firings.is_empty() {
            let f_record: Vec<&[u8]> = staged.firings.iter().map(|f| f.bytes.as_slice()).collect();
            let inserted: i64 = sqlx::query_scalar(INSERT_FIRINGS)
                .bind(&batch.f_reactor)
                .bind(&batch.f_id)
                .bind(&batch.f_at)
                .bind(&f_record)
                .fetch_one(&mut *tx)
                .await
                .map_err(sql("cannot insert firings"))?;
            if usize::try_from(inserted).ok() != Some(staged.firings.len()) {
                let stored: Vec<StoredFiring> = sqlx::query_as(STORED_FIRINGS)
                    .bind(&batch.f_reactor)
                    .bind(&batch.f_id)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(sql("cannot read stored firings"))?;
                let stored: HashMap<(String, i64), Vec<u8>> = stored
                    .into_iter()
                    .map(|(r, id, bytes)| ((r, id), bytes))
                    .collect();
                for f in &staged.firings {
                    let Some(bytes) = stored.get(&(f.record.reactor.clone(), f.id)) else {
                        continue;
                    };
                    if !common::same_firing(&self.rows(), bytes, f.record, &f.bytes, f.id)? {
                        return Err(conflict(Record::Firing(f.record.clone())).into());
                    }
                }
            }
        }
        if !staged.checkpoints.is_empty() {
            let c = &staged.checkpoints;
            sqlx::query(UPSERT_CHECKPOINTS)
                .bind(
                    c.iter()
                        .map(|c| c.record.owner.as_str())
                        .collect::<Vec<_>>(),
                )
                .bind(c.iter().map(|c| c.record.key.as_str()).collect::<Vec<_>>())
                .bind(
                    c.iter()
                        .map(|c| c.record.value.as_slice())
                        .collect::<Vec<_>>(),
                )
                .bind(c.iter().map(|c| c.record.at_unix_us).collect::<Vec<_>>())
                .bind(c.iter().map(|c| c.crc).collect::<Vec<_>>())
                .execute(&mut *tx)
                .await
                .map_err(sql("cannot store checkpoints"))?;
        }
        if !staged.snapshots.is_empty() {
            let s = &staged.snapshots;
            sqlx::query(UPSERT_SNAPSHOTS)
                .bind(s.iter().map(|(r, _)| *r).collect::<Vec<_>>())
                .bind(s.iter().map(|(_, b)| b.as_slice()).collect::<Vec<_>>())
                .execute(&mut *tx)
                .await
                .map_err(sql("cannot store snapshots"))?;
        }
        tx.commit().await.map_err(sql("cannot commit"))
    }

    async fn flush_all(&self) -> Result<(), LedgerError> {
        // Writes WAL, so its synchronous commit waits for the WAL flush up to its commit
        // record, past every earlier commit (see the module docs).
        sqlx::query(FLUSH)
            .execute(&self.pool)
            .await
            .map_err(self.err("cannot flush"))?;
        Ok(())
    }
}

fn conflict(record: Record) -> LedgerError {
    LedgerError::Conflict {
        backend: BACKEND,
        record: record.describe(),
    }
}

fn setup_error(target: &Target, what: &str, e: sqlx::Error) -> LedgerError {
    common::sql_error(
        BACKEND,
        format!("{what} (schema `{}` at {})", target.schema, target.location),
        e,
        transient_code,
    )
}

forward_ledger!(PostgresLedger, BACKEND);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_is_send() {
        fn boxed<'a>(
            f: impl std::future::Future<Output = Result<PostgresLedger, LedgerError>> + Send + 'a,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<PostgresLedger, LedgerError>> + Send + 'a>,
        > {
            Box::pin(f)
        }
        drop(boxed(PostgresLedger::open("postgres://h/db")));
    }

    #[test]
    fn urls_are_split_and_redacted() {
        let t = parse_url("postgres://u:secret@h:5432/db?sslmode=disable&schema=tenant_a")
            .expect("parses");
        assert_eq!(t.connect, "postgres://u:secret@h:5432/db?sslmode=disable");
        assert_eq!(t.schema, "tenant_a");
        assert_eq!(
            t.location,
            "postgres://u:***@h:5432/db?sslmode=disable&schema=tenant_a"
        );
        let t = parse_url("postgresql://h/db").expect("parses");
        assert_eq!(
            (t.connect.as_str(), t.schema.as_str()),
            ("postgresql://h/db", "cloacina")
        );
        assert_eq!(
            crate::redact_url("postgres://u@h/db?password=pw&x=1"),
            "postgres://u@h/db?password=***&x=1"
        );
        assert!(matches!(
            parse_url("postgres://h/db?schema=a&schema=b"),
            Err(LedgerError::BadUrl { .. })
        ));
        assert!(matches!(
            parse_url("postgres://h/db?schema=t'; DROP TABLE x --"),
            Err(LedgerError::BadTenant { .. })
        ));
    }

    // An empty `schema=` names the URL (redacted) and the parameter; a URL without a host or
    // database is refused rather than left to libpq's defaults.
    #[test]
    fn empty_schema_and_missing_host_or_database_are_bad_urls() {
        for (url, says) in [
            (
                "postgres://u:hunter2@h/db?schema=",
                "the `schema` parameter is empty",
            ),
            ("postgres://", "names no host"),
            ("postgresql://u:hunter2@", "names no host"),
            ("postgres://u@:5432/db", "names no host"),
            ("postgres:///db", "names no host"),
            ("postgres://h", "names no database"),
            ("postgres://u:hunter2@h:5432/", "names no database"),
            ("postgres://h/?schema=a", "names no database"),
        ] {
            match parse_url(url) {
                Err(e @ LedgerError::BadUrl { .. }) => {
                    let text = e.to_string();
                    assert!(text.contains(says), "`{url}`: {text}");
                    assert!(
                        text.contains("host and a database") || says.contains("schema"),
                        "{text}"
                    );
                    assert!(!text.contains("hunter2"), "password leaked: {text}");
                    assert!(
                        text.contains(&crate::redact_url(url)),
                        "names the URL: {text}"
                    );
                }
                other => panic!("`{url}`: expected BadUrl, got {other:?}"),
            }
        }
    }

    #[test]
    fn sqlstates_are_classified() {
        for code in [
            "40001", "40P01", "08006", "08001", "57P01", "53300", "55P03",
        ] {
            assert!(transient_code(code, ""), "{code}");
        }
        for code in ["23505", "23503", "42P01", "42703", "22P02", "XX001"] {
            assert!(!transient_code(code, ""), "{code}");
        }
    }
}
