//! Damaged and foreign sled stores: refused with an error naming the path, never a panic, and
//! a store of another format version is not touched at all.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use cloacina_ledger::conformance::{boundary, firing};
use cloacina_ledger::{
    BoundaryQuery, Commit, FiringQuery, Ledger, LedgerError, Record, SledLedger, SledOptions,
};

/// Every file under `dir` with its bytes and modification time.
fn files(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, SystemTime)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir").flatten() {
            let path = entry.path();
            let meta = entry.metadata().expect("metadata");
            if meta.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).expect("read file");
                out.insert(path, (bytes, meta.modified().expect("mtime")));
            }
        }
    }
    out
}

async fn write_store(path: &Path, n: u64) {
    let ledger = SledLedger::open(path).expect("create");
    let records: Vec<Record> = (1..=n)
        .flat_map(|i| {
            [
                Record::Boundary(boundary("r", i)),
                Record::Firing(firing("r", i, true)),
            ]
        })
        .collect();
    for chunk in records.chunks(200) {
        ledger.append(chunk, Commit::Durable).await.expect("append");
    }
}

#[tokio::test]
async fn a_store_of_another_format_version_is_refused_untouched() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("old");
    write_store(&path, 50).await;
    std::fs::write(path.join("cloacina-format"), "cloacina-ledger format 99\n").expect("stamp");
    let before = files(&path);
    match SledLedger::open(&path) {
        Err(e @ LedgerError::IncompatibleFormat { found: 99, .. }) => {
            assert!(e.to_string().contains("format version 99"), "{e}");
            assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        }
        other => panic!("expected IncompatibleFormat, got {other:?}"),
    }
    assert_eq!(
        files(&path),
        before,
        "every file's bytes and mtime unchanged"
    );
}

#[tokio::test]
async fn a_directory_without_the_marker_is_refused_untouched() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("foreign");
    {
        let db = sled::open(&path).expect("raw sled");
        db.insert(b"k", b"v").expect("insert");
        db.flush().expect("flush");
    }
    let before = files(&path);
    match SledLedger::open(&path) {
        Err(e @ LedgerError::Corrupt { .. }) => {
            let text = e.to_string();
            assert!(text.contains("cloacina-format"), "{text}");
            assert!(text.contains(&path.display().to_string()), "{text}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(files(&path), before, "nothing touched");
}

// A store whose data lost its format version (sled opened a damaged copy as empty) is not
// initialized afresh.
#[tokio::test]
async fn a_store_that_lost_its_format_version_is_not_reinitialized() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("emptied");
    write_store(&path, 5).await;
    {
        let db = sled::open(&path).expect("raw sled");
        db.drop_tree("meta").expect("drop meta");
        db.flush().expect("flush");
    }
    match SledLedger::open(&path) {
        Err(e @ LedgerError::Corrupt { .. }) => {
            assert!(e.to_string().contains("without its format version"), "{e}")
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    let db = sled::open(&path).expect("raw sled");
    assert!(
        !db.tree_names().iter().any(|n| n.as_ref() == b"meta"),
        "no fresh format version written"
    );
    drop(db);
    assert!(SledLedger::open(&path).is_err(), "still refused");
}

/// What a damaged store did: refused at open, or opened and then refused by reads or verify.
#[derive(Debug)]
enum Outcome {
    RefusedAtOpen(String),
    ReadError(String),
    VerifyFound(Vec<String>),
    /// Opened, and everything reads back: how many boundaries and firings.
    Intact(usize, usize),
}

async fn damage_and_reopen(path: &Path, pattern: &str) -> Outcome {
    // The largest file: sled's `db` log.
    let (file, len) = files(path)
        .into_iter()
        .map(|(p, (b, _))| (p, b.len()))
        .max_by_key(|(_, len)| *len)
        .expect("files");
    let mut bytes = std::fs::read(&file).expect("read");
    let at = match pattern {
        "header" => 0,
        "middle" => len / 2,
        "tail" => len.saturating_sub(600),
        _ => unreachable!(),
    };
    for (i, b) in bytes.iter_mut().skip(at).take(512).enumerate() {
        *b ^= 0x5a ^ (i as u8);
    }
    std::fs::write(&file, &bytes).expect("overwrite");
    let ledger = match SledLedger::open_with(path, SledOptions::default()) {
        Err(e) => {
            let text = e.to_string();
            assert!(
                text.contains(&path.display().to_string()),
                "{pattern}: the error names the path: {text}"
            );
            return Outcome::RefusedAtOpen(text);
        }
        Ok(l) => l,
    };
    let boundaries = match ledger.boundaries(&BoundaryQuery::reactor("r")).await {
        Err(e) => return Outcome::ReadError(e.to_string()),
        Ok(b) => b,
    };
    let firings = match ledger.firings(&FiringQuery::reactor("r")).await {
        Err(e) => return Outcome::ReadError(e.to_string()),
        Ok(f) => f,
    };
    let expected: Vec<_> = (1..=boundaries.len() as u64)
        .map(|i| boundary("r", i))
        .collect();
    assert_eq!(
        boundaries, expected,
        "{pattern}: what reads back is what was written"
    );
    match ledger.verify().await {
        Ok(report) if !report.is_ok() => Outcome::VerifyFound(report.problems),
        Ok(_) => Outcome::Intact(boundaries.len(), firings.len()),
        Err(e) => Outcome::ReadError(e.to_string()),
    }
}

// Overwritten bytes in sled's log, at the header, the middle and near the end: never a panic;
// the damage is reported (at open, by a read, or by verify), or it hit bytes no live page
// uses (sled's log keeps superseded page versions) and every record reads back intact.
#[tokio::test]
async fn damaged_stores_are_errors_not_panics() {
    for pattern in ["header", "middle", "tail"] {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("l");
        write_store(&path, 3000).await;
        let outcome = damage_and_reopen(&path, pattern).await;
        eprintln!("{pattern}: {outcome:?}");
        match outcome {
            Outcome::RefusedAtOpen(text) | Outcome::ReadError(text) => {
                assert!(text.contains("sled ledger"), "{pattern}: {text}")
            }
            Outcome::VerifyFound(problems) => assert!(!problems.is_empty()),
            Outcome::Intact(b, f) => {
                assert_eq!(
                    (b, f),
                    (3000, 3000),
                    "{pattern}: records lost without an error"
                )
            }
        }
    }
}

#[test]
fn cache_size_is_configurable() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = SledLedger::open_with(
        dir.path().join("l"),
        SledOptions {
            cache_bytes: 1 << 20,
        },
    )
    .expect("open with a 1 MiB cache");
    assert_eq!(ledger.path(), dir.path().join("l"));
}
