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

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use cloacina_codec::{decode, encode, FORMAT_VERSION};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, Executor};

use crate::{
    BoundaryQuery, BoundaryRecord, CheckpointRecord, Commit, FiringQuery, FiringRecord, Ledger,
    LedgerError, LedgerFuture, Record, RetainReport, Retention, SnapshotRecord,
};

const BACKEND: &str = "postgres";
/// The schema used when the URL names none.
const DEFAULT_SCHEMA: &str = "cloacina";
/// How long opening a connection (and getting one from the pool) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_CONNECTIONS: u32 = 8;
/// Tries per append when PostgreSQL aborts it for a deadlock or serialization failure.
const APPEND_TRIES: u32 = 3;
const FORMAT_KEY: &str = "format_version";

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

const INSERT_BOUNDARIES: &str = "\
WITH ins AS (
    INSERT INTO boundaries (reactor, seq, source, received_at_us, value)
    SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::bigint[], $5::bytea[])
    ON CONFLICT (reactor, seq) DO NOTHING
    RETURNING 1
) SELECT count(*) FROM ins";

const STORED_BOUNDARIES: &str = "\
SELECT b.reactor, b.seq, b.source, b.received_at_us, b.value
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
INSERT INTO checkpoints (owner, key, value, at_us)
SELECT * FROM UNNEST($1::text[], $2::text[], $3::bytea[], $4::bigint[])
ON CONFLICT (owner, key) DO UPDATE SET value = EXCLUDED.value, at_us = EXCLUDED.at_us";

const UPSERT_SNAPSHOTS: &str = "\
INSERT INTO snapshots (reactor, record)
SELECT * FROM UNNEST($1::text[], $2::bytea[])
ON CONFLICT (reactor) DO UPDATE SET record = EXCLUDED.record";

const SELECT_FIRINGS: &str = "\
SELECT record FROM firings
WHERE reactor = $1 AND firing_id >= $2 AND fired_at_us >= $3 AND fired_at_us <= $4
ORDER BY firing_id LIMIT $5";

const SELECT_BOUNDARIES: &str = "\
SELECT seq, source, received_at_us, value FROM boundaries
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
    schema: String,
    location: String,
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
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(bad("expected postgres://... or postgresql://..."));
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

fn codec_error(context: String, source: cloacina_codec::CodecError) -> LedgerError {
    LedgerError::Codec {
        backend: BACKEND,
        context,
        source,
    }
}

/// Whether PostgreSQL aborted the transaction only because of another one (deadlock or
/// serialization failure): worth trying again.
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

/// A batch sorted, de-duplicated, checked and encoded, in the column arrays the bulk
/// statements bind. Sorting by id makes concurrent batches take row locks in the same order.
#[derive(Default)]
struct Batch<'r> {
    boundaries: Vec<&'r BoundaryRecord>,
    b_reactor: Vec<&'r str>,
    b_seq: Vec<i64>,
    b_source: Vec<&'r str>,
    b_at: Vec<i64>,
    b_value: Vec<&'r [u8]>,
    firings: Vec<&'r FiringRecord>,
    f_reactor: Vec<&'r str>,
    f_id: Vec<i64>,
    f_at: Vec<i64>,
    f_record: Vec<Vec<u8>>,
    c_owner: Vec<&'r str>,
    c_key: Vec<&'r str>,
    c_value: Vec<&'r [u8]>,
    c_at: Vec<i64>,
    s_reactor: Vec<&'r str>,
    s_record: Vec<Vec<u8>>,
}

/// Refuses a name PostgreSQL `TEXT` cannot hold.
fn check_text(record: &Record, field: &str, value: &str) -> Result<(), LedgerError> {
    if value.contains('\0') {
        return Err(LedgerError::Backend {
            backend: BACKEND,
            message: format!(
                "{}: its {field} contains a NUL byte, which PostgreSQL text cannot hold",
                record.describe()
            ),
        });
    }
    Ok(())
}

/// A u64 id as BIGINT.
fn check_id(record: &Record, id: u64) -> Result<i64, LedgerError> {
    i64::try_from(id).map_err(|_| LedgerError::Backend {
        backend: BACKEND,
        message: format!(
            "{}: id {id} is beyond what PostgreSQL BIGINT holds (2^63 - 1)",
            record.describe()
        ),
    })
}

fn conflict(record: Record) -> LedgerError {
    LedgerError::Conflict {
        backend: BACKEND,
        record: record.describe(),
    }
}

impl<'r> Batch<'r> {
    fn build(records: &'r [Record]) -> Result<Self, LedgerError> {
        let mut boundaries: Vec<(&'r Record, &'r BoundaryRecord)> = Vec::new();
        let mut firings: Vec<(&'r Record, &'r FiringRecord)> = Vec::new();
        let mut checkpoints: Vec<&'r CheckpointRecord> = Vec::new();
        let mut snapshots: Vec<(&'r Record, &'r SnapshotRecord)> = Vec::new();
        for record in records {
            match record {
                Record::Boundary(b) => {
                    check_text(record, "reactor name", &b.reactor)?;
                    check_text(record, "source name", &b.source)?;
                    boundaries.push((record, b));
                }
                Record::Firing(f) => {
                    check_text(record, "reactor name", &f.reactor)?;
                    firings.push((record, f));
                }
                Record::Checkpoint(c) => {
                    check_text(record, "owner", &c.owner)?;
                    check_text(record, "key", &c.key)?;
                    checkpoints.push(c);
                }
                Record::Snapshot(s) => {
                    check_text(record, "reactor name", &s.reactor)?;
                    snapshots.push((record, s));
                }
            }
        }
        let mut batch = Self::default();

        // Boundaries and firings: by id; the same id twice must be the same record (stable
        // sort: the later one is the one reported).
        boundaries.sort_by(|a, b| (&a.1.reactor, a.1.seq).cmp(&(&b.1.reactor, b.1.seq)));
        for (record, b) in boundaries {
            if let Some(prev) = batch.boundaries.last() {
                if prev.reactor == b.reactor && prev.seq == b.seq {
                    if *prev != b {
                        return Err(conflict(record.clone()));
                    }
                    continue;
                }
            }
            batch.boundaries.push(b);
            batch.b_reactor.push(&b.reactor);
            batch.b_seq.push(check_id(record, b.seq)?);
            batch.b_source.push(&b.source);
            batch.b_at.push(b.received_at_unix_us);
            batch.b_value.push(&b.value);
        }
        firings.sort_by(|a, b| (&a.1.reactor, a.1.firing_id).cmp(&(&b.1.reactor, b.1.firing_id)));
        for (record, f) in firings {
            if let Some(prev) = batch.firings.last() {
                if prev.reactor == f.reactor && prev.firing_id == f.firing_id {
                    if *prev != f {
                        return Err(conflict(record.clone()));
                    }
                    continue;
                }
            }
            batch.firings.push(f);
            batch.f_reactor.push(&f.reactor);
            batch.f_id.push(check_id(record, f.firing_id)?);
            batch.f_at.push(f.fired_at_unix_us);
            batch
                .f_record
                .push(encode(f).map_err(|e| codec_error(record.describe(), e))?);
        }

        // Checkpoints and snapshots: the last of each id in the batch wins.
        let mut seen = HashSet::new();
        let mut last: Vec<&CheckpointRecord> = checkpoints
            .into_iter()
            .rev()
            .filter(|c| seen.insert((c.owner.as_str(), c.key.as_str())))
            .collect();
        last.sort_by(|a, b| (&a.owner, &a.key).cmp(&(&b.owner, &b.key)));
        for c in last {
            batch.c_owner.push(&c.owner);
            batch.c_key.push(&c.key);
            batch.c_value.push(&c.value);
            batch.c_at.push(c.at_unix_us);
        }
        let mut seen = HashSet::new();
        let mut last: Vec<(&Record, &SnapshotRecord)> = snapshots
            .into_iter()
            .rev()
            .filter(|(_, s)| seen.insert(s.reactor.as_str()))
            .collect();
        last.sort_by(|a, b| a.1.reactor.cmp(&b.1.reactor));
        for (record, s) in last {
            batch.s_reactor.push(&s.reactor);
            batch
                .s_record
                .push(encode(s).map_err(|e| codec_error(record.describe(), e))?);
        }
        Ok(batch)
    }
}

type StoredBoundary = (String, i64, String, i64, Vec<u8>);
type StoredFiring = (String, i64, Vec<u8>);
type RetentionRow = (Option<i64>, Option<i64>, Option<Vec<u8>>);

/// A BIGINT read back as the u64 it was stored from.
fn stored_id(what: &str, id: i64) -> Result<u64, LedgerError> {
    u64::try_from(id).map_err(|_| LedgerError::Backend {
        backend: BACKEND,
        message: format!("{what}: stored id {id} is negative (the table was edited by hand?)"),
    })
}

/// A u64 bound as BIGINT: every stored id is below 2^63, so clamping changes no result.
fn clamp_id(id: u64) -> i64 {
    i64::try_from(id).unwrap_or(i64::MAX)
}

/// Connects once, within [`CONNECT_TIMEOUT`]; any failure is [`LedgerError::Unreachable`].
async fn connect_once(
    options: &PgConnectOptions,
    location: &str,
) -> Result<PgConnection, LedgerError> {
    let unreachable = |message: String| LedgerError::Unreachable {
        backend: BACKEND,
        location: location.to_owned(),
        message,
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, options.connect()).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(unreachable(e.to_string())),
        Err(_) => Err(unreachable(format!(
            "no answer within {} s",
            CONNECT_TIMEOUT.as_secs()
        ))),
    }
}

impl PostgresLedger {
    /// Opens the ledger `url` names (`postgres://...` or `postgresql://...`, optionally with
    /// `?schema=NAME`; default schema `cloacina`): creates the schema if missing, refuses a
    /// store of another format version untouched, applies the migrations.
    ///
    /// Errors: [`LedgerError::BadUrl`] or [`LedgerError::BadTenant`] (nothing contacted),
    /// [`LedgerError::Unreachable`] (no connection within 5 s),
    /// [`LedgerError::IncompatibleFormat`], [`LedgerError::Backend`].
    pub async fn open(url: &str) -> Result<Self, LedgerError> {
        let target = parse_url(url)?;
        let options =
            PgConnectOptions::from_str(&target.connect).map_err(|e| LedgerError::BadUrl {
                url: target.location.clone(),
                reason: e.to_string(),
            })?;
        let mut conn = connect_once(&options, &target.location).await?;
        let prepared = Self::prepare(&mut conn, &target).await;
        // The setup connection is done with either way; a failed goodbye changes nothing.
        let _ = conn.close().await;
        prepared?;

        // Every pooled connection works in the ledger's schema, and commits synchronously
        // unless a transaction says otherwise (a server default of `off` is raised to `on`;
        // stronger settings such as `remote_apply` are kept).
        let setup: Arc<str> = format!(
            "SET search_path TO {}; \
             SELECT CASE WHEN current_setting('synchronous_commit') = 'off' \
             THEN set_config('synchronous_commit', 'on', false) END",
            quote_ident(&target.schema)
        )
        .into();
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(CONNECT_TIMEOUT)
            .after_connect(move |conn, _meta| {
                let setup = Arc::clone(&setup);
                Box::pin(async move {
                    // Unprepared (simple protocol): both statements in one round trip.
                    conn.execute(&*setup).await?;
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(|e| LedgerError::Unreachable {
                backend: BACKEND,
                location: target.location.clone(),
                message: format!("cannot open the connection pool: {e}"),
            })?;
        Ok(Self {
            pool,
            schema: target.schema,
            location: target.location,
        })
    }

    /// The schema the ledger lives in.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Closes the connection pool, waiting for connections in use to come back.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The format version stored in `schema`, if its `meta` table has one.
    async fn stored_format(
        conn: &mut PgConnection,
        target: &Target,
    ) -> Result<Option<i64>, LedgerError> {
        let has_meta: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_tables \
             WHERE schemaname = $1 AND tablename = 'meta')",
        )
        .bind(&target.schema)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| setup_error(target, "cannot look for table `meta`", e))?;
        if !has_meta {
            return Ok(None);
        }
        let sql = format!(
            "SELECT value FROM {}.meta WHERE key = $1",
            quote_ident(&target.schema)
        );
        sqlx::query_scalar(&sql)
            .bind(FORMAT_KEY)
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| setup_error(target, "cannot read the format version", e))
    }

    fn check_format(target: &Target, stored: Option<i64>) -> Result<(), LedgerError> {
        match stored {
            None => Ok(()),
            Some(v) if v == i64::from(FORMAT_VERSION) => Ok(()),
            Some(v) => Err(LedgerError::IncompatibleFormat {
                backend: BACKEND,
                location: target.location.clone(),
                found: u8::try_from(v).unwrap_or(u8::MAX),
                expected: FORMAT_VERSION,
            }),
        }
    }

    /// Checks the format version, then creates the schema, migrates it and records the
    /// version, on one connection.
    async fn prepare(conn: &mut PgConnection, target: &Target) -> Result<(), LedgerError> {
        Self::check_format(target, Self::stored_format(conn, target).await?)?;
        let schema = quote_ident(&target.schema);
        // Created only if missing: `CREATE SCHEMA IF NOT EXISTS` needs the CREATE privilege on
        // the database even when the schema exists. (`Executor` on the connection and
        // `run_direct` rather than `raw_sql(..).execute` and `run`: those make this future
        // fail sqlx's higher-ranked `Send` check.)
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1)",
        )
        .bind(&target.schema)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| setup_error(target, "cannot look for the schema", e))?;
        if !exists {
            let create = format!("CREATE SCHEMA IF NOT EXISTS {schema}");
            if let Err(e) = conn.execute(create.as_str()).await {
                // Two first opens at once can both try to create it: the loser's unique
                // violation means the schema is there.
                let raced = matches!(&e, sqlx::Error::Database(db)
                    if matches!(db.code().as_deref(), Some("23505" | "42P06")));
                if !raced {
                    return Err(setup_error(target, "cannot create the schema", e));
                }
            }
        }
        let search_path = format!("SET search_path TO {schema}");
        conn.execute(search_path.as_str())
            .await
            .map_err(|e| setup_error(target, "cannot set search_path", e))?;
        MIGRATOR
            .run_direct(conn)
            .await
            .map_err(|e| setup_error(target, "cannot migrate", e))?;
        sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
            .bind(FORMAT_KEY)
            .bind(i64::from(FORMAT_VERSION))
            .execute(&mut *conn)
            .await
            .map_err(|e| setup_error(target, "cannot record the format version", e))?;
        // Another build may have initialized the schema at the same moment.
        Self::check_format(target, Self::stored_format(conn, target).await?)
    }

    fn error(&self, what: &str, e: impl std::fmt::Display) -> LedgerError {
        LedgerError::Backend {
            backend: BACKEND,
            message: format!(
                "{what} (schema `{}` at {}): {e}",
                self.schema, self.location
            ),
        }
    }

    async fn append_batch(&self, records: &[Record], commit: Commit) -> Result<(), LedgerError> {
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
                Err(Failure::Sql(what, e)) => return Err(self.error(what, e)),
            }
        }
    }

    /// One try at appending `batch` in one transaction (dropped, so rolled back, on error).
    async fn apply(&self, batch: &Batch<'_>, commit: Commit) -> Result<(), Failure> {
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
        if !batch.boundaries.is_empty() {
            let inserted: i64 = sqlx::query_scalar(INSERT_BOUNDARIES)
                .bind(&batch.b_reactor)
                .bind(&batch.b_seq)
                .bind(&batch.b_source)
                .bind(&batch.b_at)
                .bind(&batch.b_value)
                .fetch_one(&mut *tx)
                .await
                .map_err(sql("cannot insert boundaries"))?;
            if usize::try_from(inserted).ok() != Some(batch.boundaries.len()) {
                // Some ids were already stored: they must hold the same records. (Rows this
                // transaction inserted compare equal; a row retention removed meanwhile is
                // simply absent.)
                let stored: Vec<StoredBoundary> = sqlx::query_as(STORED_BOUNDARIES)
                    .bind(&batch.b_reactor)
                    .bind(&batch.b_seq)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(sql("cannot read stored boundaries"))?;
                let stored: HashMap<(String, i64), (String, i64, Vec<u8>)> = stored
                    .into_iter()
                    .map(|(r, seq, source, at, value)| ((r, seq), (source, at, value)))
                    .collect();
                for (b, seq) in batch.boundaries.iter().zip(&batch.b_seq) {
                    if let Some((source, at, value)) = stored.get(&(b.reactor.clone(), *seq)) {
                        if *source != b.source || *at != b.received_at_unix_us || *value != b.value
                        {
                            return Err(conflict(Record::Boundary((*b).clone())).into());
                        }
                    }
                }
            }
        }
        if !batch.firings.is_empty() {
            let inserted: i64 = sqlx::query_scalar(INSERT_FIRINGS)
                .bind(&batch.f_reactor)
                .bind(&batch.f_id)
                .bind(&batch.f_at)
                .bind(&batch.f_record)
                .fetch_one(&mut *tx)
                .await
                .map_err(sql("cannot insert firings"))?;
            if usize::try_from(inserted).ok() != Some(batch.firings.len()) {
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
                for ((f, id), encoded) in batch.firings.iter().zip(&batch.f_id).zip(&batch.f_record)
                {
                    let Some(bytes) = stored.get(&(f.reactor.clone(), *id)) else {
                        continue;
                    };
                    // Same bytes: same record. Otherwise compare what they decode to.
                    if bytes != encoded {
                        let same = decode::<FiringRecord>(bytes)
                            .map_err(|e| {
                                codec_error(format!("stored firing {id} of `{}`", f.reactor), e)
                            })?
                            .eq(*f);
                        if !same {
                            return Err(conflict(Record::Firing((*f).clone())).into());
                        }
                    }
                }
            }
        }
        if !batch.c_owner.is_empty() {
            sqlx::query(UPSERT_CHECKPOINTS)
                .bind(&batch.c_owner)
                .bind(&batch.c_key)
                .bind(&batch.c_value)
                .bind(&batch.c_at)
                .execute(&mut *tx)
                .await
                .map_err(sql("cannot store checkpoints"))?;
        }
        if !batch.s_reactor.is_empty() {
            sqlx::query(UPSERT_SNAPSHOTS)
                .bind(&batch.s_reactor)
                .bind(&batch.s_record)
                .execute(&mut *tx)
                .await
                .map_err(sql("cannot store snapshots"))?;
        }
        tx.commit().await.map_err(sql("cannot commit"))
    }

    async fn read_firings(&self, q: &FiringQuery) -> Result<Vec<FiringRecord>, LedgerError> {
        let from = q.from_id.unwrap_or(0);
        let Ok(from) = i64::try_from(from) else {
            return Ok(Vec::new());
        };
        let until = match q.until_unix_us {
            Some(i64::MIN) => return Ok(Vec::new()),
            Some(t) => t - 1,
            None => i64::MAX,
        };
        if q.reactor.contains('\0') || q.limit == Some(0) {
            return Ok(Vec::new());
        }
        let rows: Vec<Vec<u8>> = sqlx::query_scalar(SELECT_FIRINGS)
            .bind(&q.reactor)
            .bind(from)
            .bind(q.since_unix_us.unwrap_or(i64::MIN))
            .bind(until)
            .bind(q.limit.map(|l| i64::try_from(l).unwrap_or(i64::MAX)))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.error("cannot read firings", e))?;
        rows.iter()
            .map(|bytes| {
                decode(bytes).map_err(|e| codec_error(format!("a firing of `{}`", q.reactor), e))
            })
            .collect()
    }

    async fn read_last_firing(&self, reactor: &str) -> Result<Option<FiringRecord>, LedgerError> {
        if reactor.contains('\0') {
            return Ok(None);
        }
        let row: Option<Vec<u8>> = sqlx::query_scalar(
            "SELECT record FROM firings WHERE reactor = $1 ORDER BY firing_id DESC LIMIT 1",
        )
        .bind(reactor)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.error("cannot read the last firing", e))?;
        row.map(|bytes| {
            decode(&bytes).map_err(|e| codec_error(format!("the last firing of `{reactor}`"), e))
        })
        .transpose()
    }

    async fn read_boundaries(&self, q: &BoundaryQuery) -> Result<Vec<BoundaryRecord>, LedgerError> {
        let Ok(from) = i64::try_from(q.from_seq.unwrap_or(0)) else {
            return Ok(Vec::new());
        };
        let until = match q.until_unix_us {
            Some(i64::MIN) => return Ok(Vec::new()),
            Some(t) => t - 1,
            None => i64::MAX,
        };
        if q.reactor.contains('\0') || q.limit == Some(0) {
            return Ok(Vec::new());
        }
        let rows: Vec<(i64, String, i64, Vec<u8>)> = sqlx::query_as(SELECT_BOUNDARIES)
            .bind(&q.reactor)
            .bind(from)
            .bind(q.through_seq.map_or(i64::MAX, clamp_id))
            .bind(q.since_unix_us.unwrap_or(i64::MIN))
            .bind(until)
            .bind(q.limit.map(|l| i64::try_from(l).unwrap_or(i64::MAX)))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.error("cannot read boundaries", e))?;
        rows.into_iter()
            .map(|(seq, source, at, value)| {
                Ok(BoundaryRecord {
                    reactor: q.reactor.clone(),
                    seq: stored_id("boundary", seq)?,
                    source,
                    received_at_unix_us: at,
                    value,
                })
            })
            .collect()
    }

    async fn read_snapshot(&self, reactor: &str) -> Result<Option<SnapshotRecord>, LedgerError> {
        if reactor.contains('\0') {
            return Ok(None);
        }
        let bytes: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT record FROM snapshots WHERE reactor = $1")
                .bind(reactor)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| self.error("cannot read the snapshot", e))?;
        bytes
            .map(|b| decode(&b).map_err(|e| codec_error(format!("snapshot of `{reactor}`"), e)))
            .transpose()
    }

    async fn read_checkpoint(
        &self,
        owner: &str,
        key: &str,
    ) -> Result<Option<CheckpointRecord>, LedgerError> {
        if owner.contains('\0') || key.contains('\0') {
            return Ok(None);
        }
        let row: Option<(Vec<u8>, i64)> =
            sqlx::query_as("SELECT value, at_us FROM checkpoints WHERE owner = $1 AND key = $2")
                .bind(owner)
                .bind(key)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| self.error("cannot read the checkpoint", e))?;
        Ok(row.map(|(value, at_unix_us)| CheckpointRecord {
            owner: owner.to_owned(),
            key: key.to_owned(),
            value,
            at_unix_us,
        }))
    }

    async fn retain_now(
        &self,
        reactor: &str,
        retention: Retention,
    ) -> Result<RetainReport, LedgerError> {
        if reactor.contains('\0') {
            return Ok(RetainReport::default());
        }
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| self.error("cannot begin a transaction", e))?;
        let (max_seq, max_id, snapshot): RetentionRow = sqlx::query_as(RETENTION_BOUNDS)
            .bind(reactor)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| self.error("cannot read retention bounds", e))?;
        let snapshot = match snapshot {
            Some(bytes) => {
                let s: SnapshotRecord = decode(&bytes)
                    .map_err(|e| codec_error(format!("snapshot of `{reactor}`"), e))?;
                Some((s.last_seq, s.next_firing_id))
            }
            None => None,
        };
        let cut = retention.cut(
            stored_id("boundary", max_seq.unwrap_or(0))?,
            stored_id("firing", max_id.unwrap_or(0))?,
            snapshot,
        );
        let mut report = RetainReport::default();
        if cut.boundary_protect > 0 {
            report.boundaries_removed = sqlx::query(DELETE_BOUNDARIES)
                .bind(reactor)
                .bind(clamp_id(cut.boundary_protect))
                .bind(clamp_id(cut.boundary_count_cut))
                .bind(cut.older_than_unix_us)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.error("cannot remove boundaries", e))?
                .rows_affected();
        }
        if cut.firing_protect > 0 {
            report.firings_removed = sqlx::query(DELETE_FIRINGS)
                .bind(reactor)
                .bind(clamp_id(cut.firing_protect))
                .bind(clamp_id(cut.firing_count_cut))
                .bind(cut.older_than_unix_us)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.error("cannot remove firings", e))?
                .rows_affected();
        }
        tx.commit()
            .await
            .map_err(|e| self.error("cannot commit retention", e))?;
        Ok(report)
    }
}

fn setup_error(target: &Target, what: &str, e: impl std::fmt::Display) -> LedgerError {
    LedgerError::Backend {
        backend: BACKEND,
        message: format!(
            "{what} (schema `{}` at {}): {e}",
            target.schema, target.location
        ),
    }
}

impl Ledger for PostgresLedger {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn append<'a>(&'a self, records: &'a [Record], commit: Commit) -> LedgerFuture<'a, ()> {
        Box::pin(self.append_batch(records, commit))
    }

    fn flush(&self) -> LedgerFuture<'_, ()> {
        Box::pin(async move {
            // Writes WAL, so its synchronous commit waits for the WAL flush up to its commit
            // record, past every earlier commit (see the module docs).
            sqlx::query(FLUSH)
                .execute(&self.pool)
                .await
                .map_err(|e| self.error("cannot flush", e))?;
            Ok(())
        })
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
        Box::pin(self.retain_now(reactor, retention))
    }
}

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
            parse_url("postgres://h/db?schema="),
            Err(LedgerError::BadTenant { .. })
        ));
        assert!(matches!(
            parse_url("postgres://h/db?schema=t'; DROP TABLE x --"),
            Err(LedgerError::BadTenant { .. })
        ));
    }
}
