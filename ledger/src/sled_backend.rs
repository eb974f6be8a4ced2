//! [`SledLedger`]: the embedded default, a sled database in a directory.
//!
//! Layout: tree `meta` holds the format version; tree `firings` maps
//! `reactor 0x00 firing_id (big-endian)` to the codec-encoded [`FiringRecord`], so a prefix
//! scan reads one reactor's firings in id order. Each append is one atomic sled batch followed
//! by one `flush` (group commit: a batch shares one flush).

use std::path::{Path, PathBuf};

use cloacina_codec::{decode, encode, FORMAT_VERSION};

use crate::{FiringRecord, Ledger, LedgerError, LedgerFuture, Record};

const BACKEND: &str = "sled";
const FORMAT_KEY: &[u8] = b"format";

/// A ledger stored with sled in one directory.
#[derive(Debug)]
pub struct SledLedger {
    path: PathBuf,
    db: sled::Db,
    firings: sled::Tree,
}

fn backend_error(path: &Path, what: &str, e: impl std::fmt::Display) -> LedgerError {
    LedgerError::Backend {
        backend: BACKEND,
        message: format!("{what} at {}: {e}", path.display()),
    }
}

fn firing_key(reactor: &str, firing_id: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(reactor.len() + 9);
    key.extend_from_slice(reactor.as_bytes());
    key.push(0);
    key.extend_from_slice(&firing_id.to_be_bytes());
    key
}

impl SledLedger {
    /// Opens (or creates) the ledger in directory `path`. A store written by another format
    /// version is refused before anything is written.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, LedgerError> {
        let path = path.as_ref().to_path_buf();
        let db = sled::open(&path).map_err(|e| backend_error(&path, "cannot open", e))?;
        let meta = db
            .open_tree("meta")
            .map_err(|e| backend_error(&path, "cannot open tree `meta`", e))?;
        match meta
            .get(FORMAT_KEY)
            .map_err(|e| backend_error(&path, "cannot read format version", e))?
        {
            Some(v) if v.as_ref() == [FORMAT_VERSION] => {}
            Some(v) => {
                return Err(LedgerError::IncompatibleFormat {
                    backend: BACKEND,
                    location: path.display().to_string(),
                    found: v.first().copied().unwrap_or(0),
                    expected: FORMAT_VERSION,
                })
            }
            None => {
                meta.insert(FORMAT_KEY, &[FORMAT_VERSION])
                    .map_err(|e| backend_error(&path, "cannot write format version", e))?;
            }
        }
        let firings = db
            .open_tree("firings")
            .map_err(|e| backend_error(&path, "cannot open tree `firings`", e))?;
        Ok(Self { path, db, firings })
    }

    /// The directory of the store.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Ledger for SledLedger {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn append<'a>(&'a self, records: &'a [Record]) -> LedgerFuture<'a, ()> {
        Box::pin(async move {
            let mut encoded = Vec::with_capacity(records.len());
            for record in records {
                let Record::Firing(f) = record;
                let bytes = encode(f).map_err(|source| LedgerError::Codec {
                    backend: BACKEND,
                    context: format!("firing {} of reactor `{}`", f.firing_id, f.reactor),
                    source,
                })?;
                encoded.push((firing_key(&f.reactor, f.firing_id), bytes, f));
            }
            // A read-only conflict check, then one atomic batch. (sled 0.34 transactions can
            // deadlock against a concurrent flush, so none are used.) Two writers racing on
            // the same record id could both pass the check; a reactor has one writer per
            // ledger, so that is a retry of the same record, which is harmless.
            let mut batch = sled::Batch::default();
            for (key, bytes, f) in &encoded {
                match self
                    .firings
                    .get(key)
                    .map_err(|e| backend_error(&self.path, "read failed", e))?
                {
                    Some(existing) if existing.as_ref() == bytes.as_slice() => {}
                    Some(_) => {
                        return Err(LedgerError::Conflict {
                            backend: BACKEND,
                            record: format!("firing {} of reactor `{}`", f.firing_id, f.reactor),
                        })
                    }
                    None => batch.insert(key.as_slice(), bytes.as_slice()),
                }
            }
            self.firings
                .apply_batch(batch)
                .map_err(|e| backend_error(&self.path, "append failed", e))?;
            // One flush per batch (group commit), on tokio's blocking pool: sled's own
            // `flush_async` thread pool stalled under concurrent appends in our tests.
            let db = self.db.clone();
            match tokio::task::spawn_blocking(move || db.flush()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(backend_error(&self.path, "flush failed", e)),
                Err(e) => return Err(backend_error(&self.path, "flush task failed", e)),
            }
            Ok(())
        })
    }

    fn firings<'a>(&'a self, reactor: &'a str) -> LedgerFuture<'a, Vec<FiringRecord>> {
        Box::pin(async move {
            let mut prefix = reactor.as_bytes().to_vec();
            prefix.push(0);
            let mut out = Vec::new();
            for entry in self.firings.scan_prefix(&prefix) {
                let (key, value) =
                    entry.map_err(|e| backend_error(&self.path, "read failed", e))?;
                let record: FiringRecord = decode(&value).map_err(|source| LedgerError::Codec {
                    backend: BACKEND,
                    context: format!("record under key {key:?}"),
                    source,
                })?;
                out.push(record);
            }
            Ok(out)
        })
    }
}
