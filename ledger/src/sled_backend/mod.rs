//! [`SledLedger`]: the embedded default, a sled database in a directory.
//!
//! Layout: the file `cloacina-format` beside sled's own holds the format version (read before
//! sled opens the directory: sled rewrites its snapshot files on every open, so a store of
//! another version is refused untouched); tree `meta` holds it too; tree `records` holds everything else under
//! keys that start with a kind byte, so that one atomic sled batch covers a whole append:
//!
//! - `B reactor 0x00 first_seq` and `F reactor 0x00 first_id` (ids big-endian): a *chunk*,
//!   the codec-encoded, id-sorted boundaries (firings) of one reactor from one append. Chunks
//!   of a reactor never overlap, so a range scan reads them in id order. One key per append
//!   instead of one per record is what lets sled keep up with a reactor: per-key overhead
//!   dominates small records (measured: 160k single-key inserts/s against 500k records/s
//!   chunked with 200-byte values).
//! - `C owner 0x00 key`: a checkpoint; `S reactor`: a snapshot (both replaced in place).
//!
//! [`Commit::Durable`] appends end with `Db::flush`, which writes sled's buffers and fsyncs;
//! one flush covers every record of the batch. [`Commit::Buffered`] appends stay in sled's
//! memory buffers until the next flush (the writer's, or sled's own every 500 ms).
//!
//! Integrity: every value (chunk, checkpoint, snapshot) is sealed with a crc32 that reads
//! verify. A store whose directory holds sled files but no format marker, or whose `meta`
//! lost its version, is refused as damaged rather than initialized afresh; a panic inside
//! sled's recovery (it panics on some damaged logs) is contained and reported as
//! [`LedgerError::Corrupt`] naming the path.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::frame::{decode_sealed, encode_sealed, frame_error};
use crate::{
    BoundaryQuery, BoundaryRecord, CheckpointRecord, Commit, FiringQuery, FiringRecord, Ledger,
    LedgerError, LedgerFuture, Record, RetainReport, Retention, SnapshotRecord, VerifyReport,
    LEDGER_FORMAT_VERSION,
};

mod append;
mod open;
mod retain;
mod verify;

pub(crate) use open::corrupt as corrupt_at;
pub(crate) use open::parse_params;
pub use open::SledOptions;

const BACKEND: &str = "sled";
/// Largest chunk value aimed for. A sled leaf holds up to 16 values and sled writes a page
/// over a quarter segment (128 KiB) to a blob file of its own; sled 0.34 never deletes a
/// blob whose page is later replaced, so large chunks made the store grow without bound
/// even under retention (measured: 9 -> 120 MiB over 300 rounds). 16 x 6 KiB stays inline.
const CHUNK_BYTES: usize = 6 << 10;
const FORMAT_KEY: &[u8] = b"format";
const BOUNDARY: u8 = b'B';
const FIRING: u8 = b'F';
const CHECKPOINT: u8 = b'C';
const SNAPSHOT: u8 = b'S';
/// Key (in `records`, so that each append's atomic batch bumps it) of the append counter.
const APPENDS_KEY: &[u8] = b"Mappends";

/// Highest id stored per reactor: `[boundaries, firings]`.
#[derive(Debug, Default)]
struct HighWater([HashMap<String, u64>; 2]);

impl HighWater {
    fn of(&mut self, kind: u8) -> &mut HashMap<String, u64> {
        &mut self.0[usize::from(kind == FIRING)]
    }
}

/// A ledger stored with sled in one directory.
#[derive(Debug)]
pub struct SledLedger {
    path: PathBuf,
    db: sled::Db,
    records: sled::Tree,
    /// Serializes appends and retention (conflict checks read what they then write), and
    /// caches the highest id stored per `(kind, reactor)`.
    high: Mutex<HighWater>,
    /// Appends applied so far (also stored under [`APPENDS_KEY`], in each append's batch).
    appends: std::sync::atomic::AtomicU64,
    /// The workflow store's tree (see `crate::workflows`).
    pub(crate) workflows: sled::Tree,
    /// Serializes workflow store writes and claims, and holds the unfinished executions'
    /// rows (see `crate::workflows`).
    pub(crate) workflow_state: Mutex<crate::workflows::SledWorkflowState>,
}

/// A sled error: `Corruption` is [`LedgerError::Corrupt`]; IO errors are transient as
/// their kind says; the rest are permanent.
pub(crate) fn sled_error(path: &Path, what: &str, e: sled::Error) -> LedgerError {
    match e {
        sled::Error::Corruption { .. } => open::corrupt(path, format!("{what}: {e}")),
        sled::Error::Io(io) => {
            let transient = crate::io_is_transient(&io);
            LedgerError::store(
                BACKEND,
                format!("{what} at {}", path.display()),
                transient,
                io,
            )
        }
        other => LedgerError::store(
            BACKEND,
            format!("{what} at {}", path.display()),
            false,
            other,
        ),
    }
}

fn nul_name(reactor: &str) -> LedgerError {
    LedgerError::Rejected {
        backend: BACKEND,
        message: format!("reactor name {reactor:?} contains a NUL byte"),
    }
}

/// `kind reactor 0x00 id` back into `(reactor, id)`, for messages.
fn describe_key(key: &[u8]) -> String {
    let kind = match key.first() {
        Some(&BOUNDARY) => "boundaries",
        Some(&FIRING) => "firings",
        Some(&CHECKPOINT) => "checkpoint",
        Some(&SNAPSHOT) => "snapshot",
        _ => "record",
    };
    match key.len().checked_sub(9).filter(|&n| n >= 1 && key[n] == 0) {
        Some(n) if matches!(key.first(), Some(&BOUNDARY | &FIRING)) => {
            let mut id = [0u8; 8];
            id.copy_from_slice(&key[n + 1..]);
            format!(
                "{kind} from id {} of reactor `{}`",
                u64::from_be_bytes(id),
                String::from_utf8_lossy(&key[1..n])
            )
        }
        _ => format!(
            "{kind} under key `{}`",
            String::from_utf8_lossy(key.get(1..).unwrap_or(&[]))
        ),
    }
}

fn prefix(kind: u8, name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(name.len() + 10);
    key.push(kind);
    key.extend_from_slice(name.as_bytes());
    key.push(0);
    key
}

/// The list of `reactor`'s records in `groups`, made if missing (most recent first checked).
fn group<'g, 'r, T>(groups: &'g mut Vec<(&'r str, Vec<T>)>, reactor: &'r str) -> &'g mut Vec<T> {
    let i = match groups.iter().rposition(|(r, _)| *r == reactor) {
        Some(i) => i,
        None => {
            groups.push((reactor, Vec::new()));
            groups.len() - 1
        }
    };
    &mut groups[i].1
}

fn chunk_key(kind: u8, reactor: &str, first: u64) -> Vec<u8> {
    let mut key = prefix(kind, reactor);
    key.extend_from_slice(&first.to_be_bytes());
    key
}

/// A record kind stored in chunks.
trait Chunked: Serialize + DeserializeOwned + Clone + PartialEq {
    const KIND: u8;
    fn id(&self) -> u64;
    fn record(&self) -> Record;
}

impl Chunked for BoundaryRecord {
    const KIND: u8 = BOUNDARY;
    fn id(&self) -> u64 {
        self.seq
    }
    fn record(&self) -> Record {
        Record::Boundary(self.clone())
    }
}

impl Chunked for FiringRecord {
    const KIND: u8 = FIRING;
    fn id(&self) -> u64 {
        self.firing_id
    }
    fn record(&self) -> Record {
        Record::Firing(self.clone())
    }
}

impl SledLedger {
    /// Opens (or creates) the ledger in directory `path` with [`SledOptions::default`].
    /// A store written by another format version is refused before anything is written.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, LedgerError> {
        Self::open_with(path, SledOptions::default())
    }

    /// Opens (or creates) the ledger in directory `path`. Refused, with nothing written:
    /// a store of another format version ([`LedgerError::IncompatibleFormat`], read from the
    /// `cloacina-format` file before sled opens anything) and a directory that holds files but
    /// no marker ([`LedgerError::Corrupt`]). A store sled cannot recover, or whose records
    /// lost their format version, is [`LedgerError::Corrupt`] naming the path.
    pub fn open_with(path: impl AsRef<Path>, options: SledOptions) -> Result<Self, LedgerError> {
        let path = path.as_ref().to_path_buf();
        let found = open::check_marker(&path)?;
        let db = open::open_db(&path, options)?;
        // `open_tree` creates a missing tree: look first, so a store that lost its `meta`
        // tree is not written to.
        let has_meta = db.tree_names().iter().any(|n| n.as_ref() == b"meta");
        if !has_meta && found != open::Found::New {
            return Err(open::corrupt(
                &path,
                "sled opened it without its format version: damaged (or its creation was \
                 interrupted; then delete the directory)",
            ));
        }
        let meta = db
            .open_tree("meta")
            .map_err(|e| sled_error(&path, "cannot open tree `meta`", e))?;
        match meta
            .get(FORMAT_KEY)
            .map_err(|e| sled_error(&path, "cannot read the format version", e))?
        {
            Some(v) if v.as_ref() == [LEDGER_FORMAT_VERSION] => {}
            Some(v) => {
                return Err(open::corrupt(
                    &path,
                    format!(
                        "its marker says format {LEDGER_FORMAT_VERSION} but its records say {:?}",
                        v.as_ref()
                    ),
                ))
            }
            None if found == open::Found::New => {
                meta.insert(FORMAT_KEY, &[LEDGER_FORMAT_VERSION])
                    .map_err(|e| sled_error(&path, "cannot write the format version", e))?;
                db.flush()
                    .map_err(|e| sled_error(&path, "cannot flush", e))?;
            }
            None => {
                // sled opened the files as an empty or partial store: never initialize it
                // afresh over what may be recoverable.
                return Err(open::corrupt(
                    &path,
                    "sled opened it without its format version: damaged (or its creation was \
                     interrupted; then delete the directory)",
                ));
            }
        }
        let records = db
            .open_tree("records")
            .map_err(|e| sled_error(&path, "cannot open tree `records`", e))?;
        // sled recovers its log up to the first damaged segment and drops the rest without a
        // word: a store that holds fewer appends than were flushed lost some.
        let appends = match records
            .get(APPENDS_KEY)
            .map_err(|e| sled_error(&path, "cannot read the append counter", e))?
        {
            Some(v) => <[u8; 8]>::try_from(v.as_ref())
                .map(u64::from_be_bytes)
                .map_err(|_| open::corrupt(&path, "the append counter is malformed"))?,
            None => 0,
        };
        let durable = open::read_durable(&path);
        if appends < durable {
            return Err(open::corrupt(
                &path,
                format!(
                    "sled recovered {appends} appends but {durable} had been flushed: its log \
                     is damaged and the records after append {appends} are lost"
                ),
            ));
        }
        let workflows = db
            .open_tree("workflows")
            .map_err(|e| sled_error(&path, "cannot open tree `workflows`", e))?;
        Ok(Self {
            path,
            db,
            records,
            high: Mutex::new(HighWater::default()),
            appends: appends.into(),
            workflows,
            workflow_state: Mutex::default(),
        })
    }

    /// The directory of the store.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes the store takes on disk (sled's own figure).
    pub fn size_on_disk(&self) -> Result<u64, LedgerError> {
        self.db
            .size_on_disk()
            .map_err(|e| sled_error(&self.path, "cannot read size", e))
    }

    fn lock(&self) -> Result<MutexGuard<'_, HighWater>, LedgerError> {
        self.high.lock().map_err(|_| {
            LedgerError::store(
                BACKEND,
                format!("append lock of {}", self.path.display()),
                false,
                "poisoned by a panic",
            )
        })
    }

    fn read_error(&self, e: sled::Error) -> LedgerError {
        sled_error(&self.path, "read failed", e)
    }

    fn decode_chunk<T: Chunked>(&self, key: &[u8], bytes: &[u8]) -> Result<Vec<T>, LedgerError> {
        let location = self.path.display().to_string();
        decode_sealed(bytes).map_err(frame_error(BACKEND, &location, || describe_key(key)))
    }

    fn encode_value<T: Serialize + ?Sized>(
        &self,
        what: impl FnOnce() -> String,
        value: &T,
    ) -> Result<Vec<u8>, LedgerError> {
        encode_sealed(value).map_err(|source| LedgerError::Codec {
            backend: BACKEND,
            context: what(),
            source,
        })
    }

    /// The chunk that would hold `id` (the one with the greatest first id `<= id`).
    fn chunk_at<T: Chunked>(
        &self,
        reactor: &str,
        id: u64,
    ) -> Result<Option<(sled::IVec, Vec<T>)>, LedgerError> {
        let start = prefix(T::KIND, reactor);
        let end = chunk_key(T::KIND, reactor, id);
        match self.records.range(start..=end).next_back() {
            None => Ok(None),
            Some(entry) => {
                let (key, value) = entry.map_err(|e| self.read_error(e))?;
                let chunk = self.decode_chunk(&key, &value)?;
                Ok(Some((key, chunk)))
            }
        }
    }

    /// The highest id stored for `reactor` (0 if none), cached.
    fn high_id<T: Chunked>(&self, high: &mut HighWater, reactor: &str) -> Result<u64, LedgerError> {
        if let Some(h) = high.of(T::KIND).get(reactor) {
            return Ok(*h);
        }
        let h = match self.chunk_at::<T>(reactor, u64::MAX)? {
            Some((_, chunk)) => chunk.last().map_or(0, T::id),
            None => 0,
        };
        high.of(T::KIND).insert(reactor.to_owned(), h);
        Ok(h)
    }

    /// Records of one reactor from `from` on, chunk by chunk, until `keep` says stop.
    fn scan<T: Chunked>(
        &self,
        reactor: &str,
        from: u64,
        mut visit: impl FnMut(T) -> bool,
    ) -> Result<(), LedgerError> {
        let start = match self.chunk_at::<T>(reactor, from)? {
            Some((key, _)) => key.to_vec(),
            None => prefix(T::KIND, reactor),
        };
        let end = chunk_key(T::KIND, reactor, u64::MAX);
        for entry in self.records.range(start..=end) {
            let (key, value) = entry.map_err(|e| self.read_error(e))?;
            for r in self.decode_chunk::<T>(&key, &value)? {
                if r.id() >= from && !visit(r) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn get_one<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, LedgerError> {
        match self.records.get(key).map_err(|e| self.read_error(e))? {
            None => Ok(None),
            Some(bytes) => {
                let location = self.path.display().to_string();
                decode_sealed(&bytes)
                    .map(Some)
                    .map_err(frame_error(BACKEND, &location, || describe_key(key)))
            }
        }
    }
}

impl Ledger for SledLedger {
    fn workflow_store(
        self: std::sync::Arc<Self>,
    ) -> Option<std::sync::Arc<dyn crate::WorkflowStore>> {
        Some(self)
    }

    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn append<'a>(&'a self, records: &'a [Record], commit: Commit) -> LedgerFuture<'a, ()> {
        Box::pin(async move {
            self.append_now(records)?;
            if commit == Commit::Durable {
                self.flush_db().await?;
            }
            Ok(())
        })
    }

    fn flush(&self) -> LedgerFuture<'_, ()> {
        Box::pin(self.flush_db())
    }

    fn firings<'a>(&'a self, query: &'a FiringQuery) -> LedgerFuture<'a, Vec<FiringRecord>> {
        Box::pin(async move {
            let limit = query.limit.unwrap_or(usize::MAX);
            let mut out = Vec::new();
            if limit == 0 {
                return Ok(out);
            }
            self.scan::<FiringRecord>(&query.reactor, query.from_id.unwrap_or(0), |f| {
                if query.matches(&f) {
                    out.push(f);
                }
                out.len() < limit
            })?;
            query.check_gaps(BACKEND, &out)?;
            Ok(out)
        })
    }

    fn last_firing<'a>(&'a self, reactor: &'a str) -> LedgerFuture<'a, Option<FiringRecord>> {
        Box::pin(async move {
            Ok(self
                .chunk_at::<FiringRecord>(reactor, u64::MAX)?
                .and_then(|(_, chunk)| chunk.into_iter().last()))
        })
    }

    fn boundaries<'a>(&'a self, query: &'a BoundaryQuery) -> LedgerFuture<'a, Vec<BoundaryRecord>> {
        Box::pin(async move {
            let limit = query.limit.unwrap_or(usize::MAX);
            let through = query.through_seq.unwrap_or(u64::MAX);
            let mut out = Vec::new();
            if limit == 0 {
                return Ok(out);
            }
            self.scan::<BoundaryRecord>(&query.reactor, query.from_seq.unwrap_or(0), |b| {
                if b.seq > through {
                    return false;
                }
                if query.matches(&b) {
                    out.push(b);
                }
                out.len() < limit
            })?;
            query.check_gaps(BACKEND, &out)?;
            Ok(out)
        })
    }

    fn snapshot<'a>(&'a self, reactor: &'a str) -> LedgerFuture<'a, Option<SnapshotRecord>> {
        Box::pin(async move { self.read_snapshot(reactor) })
    }

    fn checkpoint<'a>(
        &'a self,
        owner: &'a str,
        key: &'a str,
    ) -> LedgerFuture<'a, Option<CheckpointRecord>> {
        Box::pin(async move {
            let mut k = prefix(CHECKPOINT, owner);
            k.extend_from_slice(key.as_bytes());
            self.get_one(&k)
        })
    }

    fn checkpoints<'a>(&'a self, owner: &'a str) -> LedgerFuture<'a, Vec<CheckpointRecord>> {
        Box::pin(async move {
            let mut found = Vec::new();
            for entry in self.records.scan_prefix(prefix(CHECKPOINT, owner)) {
                let (key, bytes) = entry.map_err(|e| self.read_error(e))?;
                let location = self.path.display().to_string();
                found.push(decode_sealed(&bytes).map_err(frame_error(
                    BACKEND,
                    &location,
                    || describe_key(&key),
                ))?);
            }
            Ok(found)
        })
    }

    fn retain<'a>(
        &'a self,
        reactor: &'a str,
        retention: Retention,
    ) -> LedgerFuture<'a, RetainReport> {
        Box::pin(async move {
            let snapshot = self.read_snapshot(reactor)?;
            let report = self.retain_now(reactor, retention, snapshot)?;
            // sled reuses the freed log segments for later writes, so a ledger under
            // retention stays bounded on disk (pages stay under sled's blob size: see
            // CHUNK_BYTES; tests/sled_retention.rs measures it).
            self.flush_db().await?;
            Ok(report)
        })
    }

    fn verify(&self) -> LedgerFuture<'_, VerifyReport> {
        Box::pin(async move { self.verify_now() })
    }
}
