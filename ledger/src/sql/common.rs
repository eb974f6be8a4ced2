//! What the SQL backends share: staging a batch (id checks, duplicates inside a batch,
//! checksums, encoding), reading rows back into records (checksums verified), the format
//! check, retention bounds, the verify scan, error classification, and the one forwarding
//! `impl Ledger` ([`forward_ledger`]).

use std::collections::HashSet;

use crate::frame::{self, decode_sealed, encode_sealed};
use crate::{
    BoundaryRecord, CheckpointRecord, FiringRecord, LedgerError, Record, Retention, RetentionCut,
    SnapshotRecord, VerifyReport, LEDGER_FORMAT_VERSION,
};

/// Key of the format-version row in the meta table.
pub(crate) const FORMAT_KEY: &str = "format_version";

/// A boundary ready to insert: SQL id and checksum.
pub(crate) struct SqlBoundary<'r> {
    pub(crate) record: &'r BoundaryRecord,
    pub(crate) seq: i64,
    pub(crate) crc: i64,
}

/// A firing ready to insert: SQL id and sealed encoding.
pub(crate) struct SqlFiring<'r> {
    pub(crate) record: &'r FiringRecord,
    pub(crate) id: i64,
    pub(crate) bytes: Vec<u8>,
}

/// A checkpoint ready to insert, with its checksum.
pub(crate) struct SqlCheckpoint<'r> {
    pub(crate) record: &'r CheckpointRecord,
    pub(crate) crc: i64,
}

/// An append's records, checked, de-duplicated, sorted by id (so inserts append to the
/// b-trees and concurrent batches lock rows in one order) and encoded.
pub(crate) struct Staged<'r> {
    pub(crate) boundaries: Vec<SqlBoundary<'r>>,
    pub(crate) firings: Vec<SqlFiring<'r>>,
    /// The last checkpoint of each `(owner, key)` in the batch.
    pub(crate) checkpoints: Vec<SqlCheckpoint<'r>>,
    /// The last snapshot of each reactor in the batch, sealed.
    pub(crate) snapshots: Vec<(&'r str, Vec<u8>)>,
}

/// A u64 id as the i64 SQL stores; larger ids are refused.
pub(crate) fn id_to_sql(
    backend: &'static str,
    id: u64,
    record: &Record,
) -> Result<i64, LedgerError> {
    i64::try_from(id).map_err(|_| LedgerError::Rejected {
        backend,
        message: format!(
            "{}: id {id} is above {}, the largest the {backend} ledger stores",
            record.describe(),
            i64::MAX
        ),
    })
}

/// A query bound as i64: every stored id is below 2^63, so clamping changes no result.
pub(crate) fn clamp_id(id: u64) -> i64 {
    i64::try_from(id).unwrap_or(i64::MAX)
}

/// A checksum as the integer column holds it.
pub(crate) fn crc_to_sql(crc: u32) -> i64 {
    i64::from(crc)
}

fn nul_check(
    backend: &'static str,
    record: &Record,
    field: &str,
    value: &str,
) -> Result<(), LedgerError> {
    if value.contains('\0') {
        return Err(LedgerError::Rejected {
            backend,
            message: format!(
                "{}: its {field} contains a NUL byte, which {backend} text cannot hold",
                record.describe()
            ),
        });
    }
    Ok(())
}

fn conflict(backend: &'static str, record: Record) -> LedgerError {
    LedgerError::Conflict {
        backend,
        record: record.describe(),
    }
}

/// Checks and encodes a batch. `reject_nul`: names may not contain NUL (PostgreSQL text).
pub(crate) fn stage<'r>(
    backend: &'static str,
    records: &'r [Record],
    reject_nul: bool,
) -> Result<Staged<'r>, LedgerError> {
    let mut boundaries = Vec::new();
    let mut firings = Vec::new();
    let mut checkpoints: Vec<&CheckpointRecord> = Vec::new();
    let mut snapshots: Vec<(&Record, &SnapshotRecord)> = Vec::new();
    for record in records {
        let names: &[(&str, &str)] = match record {
            Record::Boundary(b) => &[("reactor name", &b.reactor), ("source name", &b.source)],
            Record::Firing(f) => &[("reactor name", &f.reactor)],
            Record::Checkpoint(c) => &[("owner", &c.owner), ("key", &c.key)],
            Record::Snapshot(s) => &[("reactor name", &s.reactor)],
        };
        if reject_nul {
            for (field, value) in names {
                nul_check(backend, record, field, value)?;
            }
        }
        match record {
            Record::Boundary(b) => boundaries.push(SqlBoundary {
                record: b,
                seq: id_to_sql(backend, b.seq, record)?,
                crc: crc_to_sql(frame::boundary_crc(b)),
            }),
            Record::Firing(f) => {
                firings.push((record, f, id_to_sql(backend, f.firing_id, record)?))
            }
            Record::Checkpoint(c) => checkpoints.push(c),
            Record::Snapshot(s) => snapshots.push((record, s)),
        }
    }
    // The same id twice in one batch must be the same record (stable sort: the later one is
    // the one reported).
    boundaries.sort_by(|a, b| {
        (a.record.reactor.as_str(), a.seq).cmp(&(b.record.reactor.as_str(), b.seq))
    });
    let mut unique: Vec<SqlBoundary<'_>> = Vec::with_capacity(boundaries.len());
    for b in boundaries {
        match unique.last() {
            Some(prev) if prev.record.reactor == b.record.reactor && prev.seq == b.seq => {
                if prev.record != b.record {
                    return Err(conflict(backend, Record::Boundary(b.record.clone())));
                }
            }
            _ => unique.push(b),
        }
    }
    firings.sort_by(|a, b| (a.1.reactor.as_str(), a.2).cmp(&(b.1.reactor.as_str(), b.2)));
    let mut unique_f: Vec<SqlFiring<'_>> = Vec::with_capacity(firings.len());
    for (record, f, id) in firings {
        match unique_f.last() {
            Some(prev) if prev.record.reactor == f.reactor && prev.id == id => {
                if prev.record != f {
                    return Err(conflict(backend, record.clone()));
                }
            }
            _ => unique_f.push(SqlFiring {
                record: f,
                id,
                bytes: encode_sealed(f).map_err(|source| LedgerError::Codec {
                    backend,
                    context: record.describe(),
                    source,
                })?,
            }),
        }
    }
    // Checkpoints and snapshots: the last of each id in the batch wins.
    let mut seen = HashSet::new();
    let mut last: Vec<&CheckpointRecord> = checkpoints
        .into_iter()
        .rev()
        .filter(|c| seen.insert((c.owner.as_str(), c.key.as_str())))
        .collect();
    last.sort_by(|a, b| (&a.owner, &a.key).cmp(&(&b.owner, &b.key)));
    let checkpoints = last
        .into_iter()
        .map(|c| SqlCheckpoint {
            record: c,
            crc: crc_to_sql(frame::checkpoint_crc(c)),
        })
        .collect();
    let mut seen = HashSet::new();
    let mut last: Vec<(&Record, &SnapshotRecord)> = snapshots
        .into_iter()
        .rev()
        .filter(|(_, s)| seen.insert(s.reactor.as_str()))
        .collect();
    last.sort_by(|a, b| a.1.reactor.cmp(&b.1.reactor));
    let snapshots = last
        .into_iter()
        .map(|(record, s)| {
            encode_sealed(s)
                .map(|bytes| (s.reactor.as_str(), bytes))
                .map_err(|source| LedgerError::Codec {
                    backend,
                    context: record.describe(),
                    source,
                })
        })
        .collect::<Result<_, _>>()?;
    Ok(Staged {
        boundaries: unique,
        firings: unique_f,
        checkpoints,
        snapshots,
    })
}

/// Whether a stored firing (sealed bytes) is the same record as `new` (encoded `encoded`).
pub(crate) fn same_firing(
    reader: &RowReader<'_>,
    stored: &[u8],
    new: &FiringRecord,
    encoded: &[u8],
    id: i64,
) -> Result<bool, LedgerError> {
    if stored == encoded {
        return Ok(true);
    }
    Ok(reader.firing(&new.reactor, id, stored)? == *new)
}

/// Turns stored rows back into records, verifying checksums and that each record is stored
/// under its own id; errors name the backend, the store and the record.
pub(crate) struct RowReader<'l> {
    pub(crate) backend: &'static str,
    pub(crate) location: &'l str,
}

impl RowReader<'_> {
    fn corrupt(&self, reason: String) -> LedgerError {
        LedgerError::Corrupt {
            backend: self.backend,
            location: self.location.to_owned(),
            reason,
        }
    }

    fn id(&self, id: i64, what: impl FnOnce() -> String) -> Result<u64, LedgerError> {
        u64::try_from(id)
            .map_err(|_| self.corrupt(format!("{}: stored id {id} is negative", what())))
    }

    /// A boundary stored in columns.
    pub(crate) fn boundary(
        &self,
        reactor: &str,
        seq: i64,
        source: String,
        received_at_unix_us: i64,
        value: Vec<u8>,
        crc: i64,
    ) -> Result<BoundaryRecord, LedgerError> {
        let what = || format!("boundary {seq} of reactor `{reactor}`");
        let b = BoundaryRecord {
            reactor: reactor.to_owned(),
            seq: self.id(seq, what)?,
            source,
            received_at_unix_us,
            value,
        };
        if crc_to_sql(frame::boundary_crc(&b)) != crc {
            return Err(self.corrupt(format!("{}: checksum mismatch", what())));
        }
        Ok(b)
    }

    /// A firing stored whole (sealed) under `(reactor, id)`.
    pub(crate) fn firing(
        &self,
        reactor: &str,
        id: i64,
        bytes: &[u8],
    ) -> Result<FiringRecord, LedgerError> {
        let what = || format!("firing {id} of reactor `{reactor}`");
        let f: FiringRecord =
            decode_sealed(bytes).map_err(frame::frame_error(self.backend, self.location, what))?;
        if f.reactor != reactor || i64::try_from(f.firing_id).ok() != Some(id) {
            return Err(self.corrupt(format!("{} holds {}", what(), Record::Firing(f).describe())));
        }
        Ok(f)
    }

    /// A snapshot stored whole (sealed).
    pub(crate) fn snapshot(
        &self,
        reactor: &str,
        bytes: &[u8],
    ) -> Result<SnapshotRecord, LedgerError> {
        let what = || format!("snapshot of reactor `{reactor}`");
        let s: SnapshotRecord =
            decode_sealed(bytes).map_err(frame::frame_error(self.backend, self.location, what))?;
        if s.reactor != reactor {
            return Err(self.corrupt(format!("{} holds reactor `{}`'s", what(), s.reactor)));
        }
        Ok(s)
    }

    /// A checkpoint stored in columns.
    pub(crate) fn checkpoint(
        &self,
        owner: &str,
        key: &str,
        value: Vec<u8>,
        at_unix_us: i64,
        crc: i64,
    ) -> Result<CheckpointRecord, LedgerError> {
        let c = CheckpointRecord {
            owner: owner.to_owned(),
            key: key.to_owned(),
            value,
            at_unix_us,
        };
        if crc_to_sql(frame::checkpoint_crc(&c)) != crc {
            return Err(self.corrupt(format!(
                "checkpoint `{key}` of `{owner}`: checksum mismatch"
            )));
        }
        Ok(c)
    }

    /// The retention bounds of `reactor` from its newest ids and stored snapshot.
    pub(crate) fn retention_cut(
        &self,
        reactor: &str,
        retention: Retention,
        max_seq: Option<i64>,
        max_id: Option<i64>,
        snapshot: Option<&[u8]>,
    ) -> Result<RetentionCut, LedgerError> {
        let snapshot = match snapshot {
            Some(bytes) => {
                let s = self.snapshot(reactor, bytes)?;
                Some((s.last_seq, s.next_firing_id))
            }
            None => None,
        };
        let max_seq = self.id(max_seq.unwrap_or(0), || {
            format!("newest boundary of `{reactor}`")
        })?;
        let max_id = self.id(max_id.unwrap_or(0), || {
            format!("newest firing of `{reactor}`")
        })?;
        Ok(retention.cut(max_seq, max_id, snapshot))
    }
}

/// The format version stored in a store (`None`: a new store) against this build's.
pub(crate) fn check_format(
    backend: &'static str,
    found: Option<i64>,
    location: &str,
) -> Result<(), LedgerError> {
    match found {
        None => Ok(()),
        Some(v) if v == i64::from(LEDGER_FORMAT_VERSION) => Ok(()),
        Some(v) => Err(LedgerError::IncompatibleFormat {
            backend,
            location: location.to_owned(),
            // Versions are one byte; anything larger is reported as 255.
            found: u8::try_from(v).unwrap_or(u8::MAX),
            expected: LEDGER_FORMAT_VERSION,
        }),
    }
}

/// A boundary row as the verify scan reads it.
pub(crate) type BoundaryRow = (String, i64, String, i64, Vec<u8>, i64);
/// A checkpoint row as the verify scan reads it.
pub(crate) type CheckpointRow = (String, String, Vec<u8>, i64, i64);

/// The verify scan's queries (the same SQL for both databases).
pub(crate) const SCAN_BOUNDARIES: &str = "SELECT reactor, seq, source, received_at_us, value, crc \
     FROM boundaries ORDER BY reactor, seq";
pub(crate) const SCAN_FIRINGS: &str =
    "SELECT reactor, firing_id, record FROM firings ORDER BY reactor, firing_id";
pub(crate) const SCAN_SNAPSHOTS: &str = "SELECT reactor, record FROM snapshots";
pub(crate) const SCAN_CHECKPOINTS: &str = "SELECT owner, key, value, at_us, crc FROM checkpoints";

/// Collects a verify scan: rows come ordered by `(reactor, id)` per kind.
pub(crate) struct Scan {
    pub(crate) report: VerifyReport,
    current: Option<(&'static str, String)>,
    ids: Vec<u64>,
}

impl Scan {
    pub(crate) fn new() -> Self {
        Self {
            report: VerifyReport::default(),
            current: None,
            ids: Vec::new(),
        }
    }

    /// One record read: `checked` is the outcome of reading it back.
    fn record(
        &mut self,
        kind: &'static str,
        reactor: &str,
        id: i64,
        checked: Result<(), LedgerError>,
    ) {
        self.report.records_checked += 1;
        if let Err(e) = checked {
            self.report.problems.push(e.to_string());
        }
        let same = matches!(&self.current, Some((k, r)) if *k == kind && r == reactor);
        if !same {
            self.end_group();
            self.current = Some((kind, reactor.to_owned()));
        }
        if let Ok(id) = u64::try_from(id) {
            self.ids.push(id);
        }
    }

    /// One record that is not numbered (checkpoint, snapshot).
    fn other(&mut self, checked: Result<(), LedgerError>) {
        self.report.records_checked += 1;
        if let Err(e) = checked {
            self.report.problems.push(e.to_string());
        }
    }

    /// A boundary row, checked.
    pub(crate) fn boundary(&mut self, rows: &RowReader<'_>, row: BoundaryRow) {
        let (reactor, seq, source, at, value, crc) = row;
        let checked = rows
            .boundary(&reactor, seq, source, at, value, crc)
            .map(drop);
        self.record("boundary", &reactor, seq, checked);
    }

    /// A firing row, checked.
    pub(crate) fn firing(&mut self, rows: &RowReader<'_>, reactor: &str, id: i64, bytes: &[u8]) {
        let checked = rows.firing(reactor, id, bytes).map(drop);
        self.record("firing", reactor, id, checked);
    }

    /// Every snapshot row, checked.
    pub(crate) fn snapshots(&mut self, rows: &RowReader<'_>, all: Vec<(String, Vec<u8>)>) {
        for (reactor, bytes) in all {
            self.other(rows.snapshot(&reactor, &bytes).map(drop));
        }
    }

    /// Every checkpoint row, checked.
    pub(crate) fn checkpoints(&mut self, rows: &RowReader<'_>, all: Vec<CheckpointRow>) {
        for (owner, key, value, at, crc) in all {
            self.other(rows.checkpoint(&owner, &key, value, at, crc).map(drop));
        }
    }

    fn end_group(&mut self) {
        if let Some((kind, reactor)) = self.current.take() {
            self.report.note_gaps(&reactor, kind, &self.ids);
        }
        self.ids.clear();
    }

    pub(crate) fn finish(mut self) -> VerifyReport {
        self.end_group();
        self.report
    }
}

/// A sqlx error as a ledger error: [`LedgerError::Store`] keeping it as the source,
/// transient as `db_transient` says for database errors (by code), and for lost
/// connections, pool timeouts and interrupted IO.
pub(crate) fn sql_error(
    backend: &'static str,
    message: String,
    e: sqlx::Error,
    db_transient: fn(&str, &str) -> bool,
) -> LedgerError {
    let transient = match &e {
        sqlx::Error::Io(io) => crate::io_is_transient(io),
        sqlx::Error::PoolTimedOut | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db_transient(db.code().as_deref().unwrap_or(""), db.message()),
        _ => false,
    };
    LedgerError::store(backend, message, transient, e)
}

/// The one `impl Ledger` of the SQL backends: forwards to their inherent `append_records`,
/// `flush_all`, `read_*`, `retain_records` and `verify_store`.
macro_rules! forward_ledger {
    ($ty:ty, $backend:expr) => {
        impl $crate::Ledger for $ty {
            fn backend(&self) -> &'static str {
                $backend
            }
            fn append<'a>(
                &'a self,
                records: &'a [$crate::Record],
                commit: $crate::Commit,
            ) -> $crate::LedgerFuture<'a, ()> {
                Box::pin(self.append_records(records, commit))
            }
            fn flush(&self) -> $crate::LedgerFuture<'_, ()> {
                Box::pin(self.flush_all())
            }
            fn firings<'a>(
                &'a self,
                query: &'a $crate::FiringQuery,
            ) -> $crate::LedgerFuture<'a, Vec<$crate::FiringRecord>> {
                Box::pin(async move {
                    let found = self.read_firings(query).await?;
                    query.check_gaps($backend, &found)?;
                    Ok(found)
                })
            }
            fn last_firing<'a>(
                &'a self,
                reactor: &'a str,
            ) -> $crate::LedgerFuture<'a, Option<$crate::FiringRecord>> {
                Box::pin(self.read_last_firing(reactor))
            }
            fn boundaries<'a>(
                &'a self,
                query: &'a $crate::BoundaryQuery,
            ) -> $crate::LedgerFuture<'a, Vec<$crate::BoundaryRecord>> {
                Box::pin(async move {
                    let found = self.read_boundaries(query).await?;
                    query.check_gaps($backend, &found)?;
                    Ok(found)
                })
            }
            fn snapshot<'a>(
                &'a self,
                reactor: &'a str,
            ) -> $crate::LedgerFuture<'a, Option<$crate::SnapshotRecord>> {
                Box::pin(self.read_snapshot(reactor))
            }
            fn checkpoint<'a>(
                &'a self,
                owner: &'a str,
                key: &'a str,
            ) -> $crate::LedgerFuture<'a, Option<$crate::CheckpointRecord>> {
                Box::pin(self.read_checkpoint(owner, key))
            }
            fn checkpoints<'a>(
                &'a self,
                owner: &'a str,
            ) -> $crate::LedgerFuture<'a, Vec<$crate::CheckpointRecord>> {
                Box::pin(self.read_checkpoints(owner))
            }
            fn retain<'a>(
                &'a self,
                reactor: &'a str,
                retention: $crate::Retention,
            ) -> $crate::LedgerFuture<'a, $crate::RetainReport> {
                Box::pin(self.retain_records(reactor, retention))
            }
            fn verify(&self) -> $crate::LedgerFuture<'_, $crate::VerifyReport> {
                Box::pin(self.verify_store())
            }
            fn workflow_store(
                self: std::sync::Arc<Self>,
            ) -> Option<std::sync::Arc<dyn $crate::WorkflowStore>> {
                Some(self)
            }
        }

        impl $crate::WorkflowStore for $ty {
            fn workflow_backend(&self) -> &'static str {
                $backend
            }
            fn write<'a>(
                &'a self,
                records: &'a [$crate::WorkflowRecord],
                commit: $crate::Commit,
            ) -> $crate::LedgerFuture<'a, ()> {
                Box::pin(async move {
                    self.write_workflow_records(records, commit, None).await?;
                    Ok(())
                })
            }
            fn write_as<'a>(
                &'a self,
                owner: &'a str,
                records: &'a [$crate::WorkflowRecord],
                commit: $crate::Commit,
            ) -> $crate::LedgerFuture<'a, Vec<u64>> {
                Box::pin(self.write_workflow_records(records, commit, Some(owner)))
            }
            fn execution(
                &self,
                id: u64,
            ) -> $crate::LedgerFuture<'_, Option<$crate::StoredExecution>> {
                Box::pin(self.read_execution(id))
            }
            fn claim_unfinished<'a>(
                &'a self,
                owner: &'a str,
                now_unix_us: i64,
                lease_until_unix_us: i64,
                limit: usize,
            ) -> $crate::LedgerFuture<'a, Vec<$crate::StoredExecution>> {
                Box::pin(self.claim_executions(
                    owner,
                    now_unix_us,
                    lease_until_unix_us,
                    limit,
                    None,
                ))
            }
            fn claim_expired<'a>(
                &'a self,
                owner: &'a str,
                now_unix_us: i64,
                lease_until_unix_us: i64,
                limit: usize,
                workflows: &'a [String],
            ) -> $crate::LedgerFuture<'a, Vec<$crate::StoredExecution>> {
                Box::pin(self.claim_executions(
                    owner,
                    now_unix_us,
                    lease_until_unix_us,
                    limit,
                    Some(workflows),
                ))
            }
            fn renew_claims<'a>(
                &'a self,
                owner: &'a str,
                lease_until_unix_us: i64,
            ) -> $crate::LedgerFuture<'a, Vec<u64>> {
                Box::pin(self.renew_executions(owner, lease_until_unix_us))
            }
            fn work_signal(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
                Some(self.work_receiver())
            }
            fn unfinished_count(&self) -> $crate::LedgerFuture<'_, u64> {
                Box::pin(self.count_unfinished())
            }
            fn reserve_execution_ids(&self, count: u64) -> $crate::LedgerFuture<'_, u64> {
                Box::pin(self.reserve_ids(count))
            }
            fn concurrent_writes(&self) -> usize {
                self.workflow_write_slots()
            }
        }
    };
}
pub(crate) use forward_ledger;
