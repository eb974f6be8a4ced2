//! Opening a sled store safely: the URL parameters, sled's page cache, the format marker file
//! read before sled touches anything, and sled's own recovery contained (it panics on some
//! damaged logs).

use std::io::Write;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::{LedgerError, LEDGER_FORMAT_VERSION};

use super::BACKEND;

/// The file beside sled's own that holds the store's format version, written when the store
/// is created and read before sled opens the directory (sled rewrites its snapshot files on
/// every open, so a store of another version must be refused before that).
pub(crate) const MARKER: &str = "cloacina-format";
const MARKER_PREFIX: &str = "cloacina-ledger format ";
/// How long `open` waits for sled's file lock.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// How a [`super::SledLedger`] is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SledOptions {
    /// sled's page cache, bytes (sled's own default is 1 GiB; a ledger is written far more
    /// than it is read: reactors read it at start, retention scans what it removes). Default
    /// 16 MiB, which keeps `cg_bench`'s sled soak within 10 % RSS growth (64 MiB still grew
    /// 15 % after the first 10 s as the cache filled); URL parameter `cache_mb`.
    pub cache_bytes: u64,
}

impl Default for SledOptions {
    fn default() -> Self {
        Self {
            cache_bytes: 16 << 20,
        }
    }
}

/// Splits `PATH[?cache_mb=N]` (after `sled://`) into the path and options; the error says why.
pub(crate) fn parse_params(rest: &str) -> Result<(&str, SledOptions), String> {
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, q),
        None => (rest, ""),
    };
    if path.is_empty() {
        return Err("sled:// needs a path, e.g. sled://./data/ledger".into());
    }
    let mut options = SledOptions::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("cache_mb", n)) => {
                let mb: u64 = n
                    .parse()
                    .ok()
                    .filter(|mb| (1..=1 << 20).contains(mb))
                    .ok_or_else(|| {
                        format!(
                            "`cache_mb` must be a whole number of MiB from 1 to 1048576, not `{n}`"
                        )
                    })?;
                options.cache_bytes = mb << 20;
            }
            _ => {
                return Err(format!(
                    "unsupported query parameter `{pair}`; sled:// accepts only `cache_mb=N`"
                ))
            }
        }
    }
    Ok((path, options))
}

fn io_error(path: &Path, what: &str, e: std::io::Error) -> LedgerError {
    let transient = crate::io_is_transient(&e);
    LedgerError::store(
        BACKEND,
        format!("{what} at {}", path.display()),
        transient,
        e,
    )
}

pub(crate) fn corrupt(path: &Path, reason: impl Into<String>) -> LedgerError {
    LedgerError::Corrupt {
        backend: BACKEND,
        location: path.display().to_string(),
        reason: reason.into(),
    }
}

/// What the directory holds before sled is let near it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Found {
    /// Missing, empty, or only our marker (a creation that stopped before sled wrote): a new
    /// store, created now.
    New,
    /// A store with a marker of this build's version.
    Current,
}

/// Checks the marker without writing anything; creates the directory and marker of a new
/// store.
pub(crate) fn check_marker(path: &Path) -> Result<Found, LedgerError> {
    let entries: Vec<String> = match std::fs::read_dir(path) {
        Ok(dir) => dir
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()
            .map_err(|e| io_error(path, "cannot list the store's directory", e))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io_error(path, "cannot open the store's directory", e)),
    };
    if entries.iter().all(|name| name == MARKER) {
        std::fs::create_dir_all(path).map_err(|e| io_error(path, "cannot create", e))?;
        write_marker(path)?;
        return Ok(Found::New);
    }
    let marker = path.join(MARKER);
    let text = match std::fs::read(&marker) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(corrupt(
                path,
                format!(
                    "the directory holds files but no `{MARKER}` marker: not a ledger store of \
                     format {LEDGER_FORMAT_VERSION} (stores of format 1 had none and are not \
                     readable) or a damaged one; nothing was touched"
                ),
            ))
        }
        Err(e) => return Err(io_error(path, "cannot read the format marker", e)),
    };
    let version = std::str::from_utf8(&text)
        .ok()
        .and_then(|t| t.trim().strip_prefix(MARKER_PREFIX))
        .and_then(|v| v.parse::<u8>().ok())
        .ok_or_else(|| corrupt(path, format!("`{MARKER}` is not a format marker: {text:?}")))?;
    if version != LEDGER_FORMAT_VERSION {
        return Err(LedgerError::IncompatibleFormat {
            backend: BACKEND,
            location: path.display().to_string(),
            found: version,
            expected: LEDGER_FORMAT_VERSION,
        });
    }
    Ok(Found::Current)
}

/// Writes the marker of this build's version (synced, so it never lags the store).
pub(crate) fn write_marker(path: &Path) -> Result<(), LedgerError> {
    let marker = path.join(MARKER);
    let mut file = std::fs::File::create(&marker)
        .map_err(|e| io_error(path, "cannot write the format marker", e))?;
    file.write_all(format!("{MARKER_PREFIX}{LEDGER_FORMAT_VERSION}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| io_error(path, "cannot write the format marker", e))
}

/// The file that holds how many appends were flushed (see [`write_durable`]).
const DURABLE: &str = "cloacina-durable";

/// Notes that the first `appends` appends are on disk. Written after sled's flush, replaced
/// by rename; not fsynced (it only ever lags the store, and a lost or torn copy reads as 0).
/// Failing to write it loses only that check, so a failure is logged, not returned.
pub(crate) fn write_durable(path: &Path, appends: u64) {
    let tmp = path.join(format!("{DURABLE}.tmp"));
    let written = std::fs::write(&tmp, format!("{appends}\n"))
        .and_then(|()| std::fs::rename(&tmp, path.join(DURABLE)));
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), error = %e, "sled ledger: cannot note the flushed appends");
    }
}

/// The appends [`write_durable`] last noted (0 if none or unreadable).
pub(crate) fn read_durable(path: &Path) -> u64 {
    std::fs::read_to_string(path.join(DURABLE))
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

/// Opens sled in `path`, waiting briefly for its file lock, with sled's recovery panics
/// turned into [`LedgerError::Corrupt`].
pub(crate) fn open_db(path: &Path, options: SledOptions) -> Result<sled::Db, LedgerError> {
    let config = sled::Config::new()
        .path(path)
        .cache_capacity(options.cache_bytes);
    // sled locks the store's file; a handle dropped a moment ago (in this process or one
    // that just exited) can still hold it briefly, so wait a little before giving up.
    let started = Instant::now();
    loop {
        let opened = std::panic::catch_unwind(AssertUnwindSafe(|| config.open()));
        match opened {
            Ok(Ok(db)) => return Ok(db),
            Ok(Err(e))
                if e.to_string().contains("could not acquire lock")
                    && started.elapsed() < LOCK_WAIT =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(Err(e)) if e.to_string().contains("could not acquire lock") => {
                return Err(LedgerError::store(
                    BACKEND,
                    format!(
                        "store at {} in use by another process or handle (lock not released \
                         within 2 s)",
                        path.display()
                    ),
                    true,
                    e,
                ))
            }
            Ok(Err(e)) => return Err(super::sled_error(path, "cannot open", e)),
            Err(payload) => {
                return Err(corrupt(
                    path,
                    format!(
                        "sled's recovery failed (panicked: {})",
                        crate::writer::panic_text(&*payload)
                    ),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_mb_is_parsed_and_checked() {
        assert_eq!(
            parse_params("d/l?cache_mb=48"),
            Ok((
                "d/l",
                SledOptions {
                    cache_bytes: 48 << 20
                }
            ))
        );
        assert_eq!(parse_params("d/l"), Ok(("d/l", SledOptions::default())));
        for bad in [
            "d?cache_mb=",
            "d?cache_mb=x",
            "d?cache_mb=0",
            "d?cache_mb=-1",
            "d?x=1",
            "?cache_mb=1",
        ] {
            assert!(parse_params(bad).is_err(), "{bad}");
        }
    }
}
