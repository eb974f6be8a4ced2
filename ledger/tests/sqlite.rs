//! The SQLite backend: the conformance suite (file, through `open`, and `:memory:`), plus
//! URLs, format version, tenants, reopening and giving space back.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use cloacina_ledger::conformance::{self, boundary, firing, Harness};
use cloacina_ledger::{
    open, open_tenant, BoundaryQuery, BoundaryRecord, Commit, FiringQuery, FiringRecord, Ledger,
    LedgerError, Record, Retention, SnapshotRecord, SqliteLedger,
};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, SqliteConnection};

fn url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

/// Opens the same file every time.
struct File(PathBuf);

impl Harness for File {
    fn open(&self) -> Pin<Box<dyn Future<Output = Arc<dyn Ledger>> + Send + '_>> {
        Box::pin(async {
            Arc::new(
                SqliteLedger::open(&url(&self.0))
                    .await
                    .expect("open sqlite ledger"),
            ) as Arc<dyn Ledger>
        })
    }
    fn persistent(&self) -> bool {
        true
    }
}

/// Opens the same file every time through `cloacina_ledger::open`.
struct ThroughOpen(PathBuf);

impl Harness for ThroughOpen {
    fn open(&self) -> Pin<Box<dyn Future<Output = Arc<dyn Ledger>> + Send + '_>> {
        Box::pin(async { open(&url(&self.0)).await.expect("open sqlite ledger") })
    }
    fn persistent(&self) -> bool {
        true
    }
}

struct Memory;

impl Harness for Memory {
    fn open(&self) -> Pin<Box<dyn Future<Output = Arc<dyn Ledger>> + Send + '_>> {
        Box::pin(async {
            Arc::new(
                SqliteLedger::open("sqlite://:memory:")
                    .await
                    .expect("open :memory:"),
            ) as Arc<dyn Ledger>
        })
    }
    fn persistent(&self) -> bool {
        false
    }
}

async fn raw(path: &Path) -> SqliteConnection {
    SqliteConnection::connect_with(
        &SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true),
    )
    .await
    .expect("raw sqlite connection")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_file_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().expect("temp dir");
    conformance::run(&File(dir.path().join("ledger.db"))).await;
}

#[tokio::test]
async fn sqlite_through_open_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().expect("temp dir");
    conformance::run(&ThroughOpen(dir.path().join("ledger.db"))).await;
}

#[tokio::test]
async fn open_routes_sqlite_urls_here() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = url(&dir.path().join("ledger.db"));
    for url in [url.as_str(), "sqlite://:memory:"] {
        let ledger = open(url).await.expect("open");
        assert_eq!(ledger.backend(), "sqlite", "{url}");
        ledger
            .append(&[Record::Firing(firing("r", 1, true))], Commit::Durable)
            .await
            .expect("append");
        assert_eq!(
            ledger
                .firings(&FiringQuery::reactor("r"))
                .await
                .expect("read"),
            vec![firing("r", 1, true)],
            "{url}"
        );
    }
    let reopened = open(&url).await.expect("reopen");
    assert_eq!(
        reopened
            .firings(&FiringQuery::reactor("r"))
            .await
            .expect("read")
            .len(),
        1
    );
    let fresh = open("sqlite://:memory:").await.expect("memory");
    assert!(
        fresh
            .firings(&FiringQuery::reactor("r"))
            .await
            .expect("read")
            .is_empty(),
        "every :memory: ledger is its own"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_memory_passes_the_conformance_suite() {
    conformance::run(&Memory).await;
}

#[tokio::test]
async fn relative_paths_and_mode_rwc_work() {
    let dir = tempfile::tempdir().expect("temp dir");
    // A relative path, from the current directory (the crate's, under cargo test).
    let cwd = std::env::current_dir().expect("cwd");
    let rel = pathdiff(dir.path(), &cwd).join("rel.db");
    let ledger = open(&format!("sqlite://{}?mode=rwc", rel.display()))
        .await
        .expect("relative sqlite path");
    assert_eq!(ledger.backend(), "sqlite");
    assert!(dir.path().join("rel.db").exists());
}

/// `to` relative to `from` (both absolute).
fn pathdiff(to: &Path, from: &Path) -> PathBuf {
    let to: Vec<_> = to.components().collect();
    let from: Vec<_> = from.components().collect();
    let common = to.iter().zip(&from).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..from.len() {
        out.push("..");
    }
    for c in &to[common..] {
        out.push(c);
    }
    out
}

#[tokio::test]
async fn bad_urls_are_clear_errors() {
    for (url, says) in [
        ("sqlite://", "needs a file path"),
        ("sqlite://?mode=rwc", "needs a file path"),
        ("sqlite://x.db?mode=ro", "`mode=ro`"),
        ("sqlite://x.db?journal=off", "unsupported query parameter"),
    ] {
        match open(url).await {
            Err(e @ LedgerError::BadUrl { .. }) => {
                assert!(e.to_string().contains(says), "`{url}`: {e}")
            }
            Err(other) => panic!("`{url}`: expected BadUrl, got {other}"),
            Ok(l) => panic!("`{url}`: expected an error, opened {}", l.backend()),
        }
    }
    assert!(!Path::new("x.db").exists());
}

#[tokio::test]
async fn an_unopenable_path_is_a_clear_error_and_creates_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("no-such-dir").join("ledger.db");
    match open(&url(&missing)).await {
        Err(e @ LedgerError::Store { .. }) => {
            assert!(
                e.to_string().contains(&missing.display().to_string()),
                "{e}"
            );
            assert!(
                std::error::Error::source(&e).is_some(),
                "keeps sqlx's error"
            );
        }
        other => panic!("expected a Store error, got {:?}", other.map(|_| ())),
    }
    assert!(!dir.path().join("no-such-dir").exists());

    let junk = dir.path().join("junk.db");
    let bytes: Vec<u8> = b"this is not a SQLite database. "
        .iter()
        .copied()
        .cycle()
        .take(8192)
        .collect();
    std::fs::write(&junk, &bytes).expect("write junk");
    match open(&url(&junk)).await {
        Err(e @ LedgerError::Corrupt { .. }) => {
            let text = e.to_string();
            assert!(text.contains(&junk.display().to_string()), "{text}");
            assert!(text.contains("not a database"), "{text}");
        }
        other => panic!("expected a Corrupt error, got {:?}", other.map(|_| ())),
    }
    assert_eq!(
        std::fs::read(&junk).expect("read junk"),
        bytes,
        "junk untouched"
    );
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["junk.db"], "no -wal or -shm file created");
}

#[tokio::test]
async fn a_store_of_another_format_version_is_refused_untouched() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("old.db");
    {
        let mut conn = raw(&path).await;
        sqlx::query(
            "CREATE TABLE ledger_meta (key TEXT NOT NULL PRIMARY KEY, value INTEGER NOT NULL)",
        )
        .execute(&mut conn)
        .await
        .expect("create meta");
        sqlx::query("INSERT INTO ledger_meta (key, value) VALUES ('format_version', 99)")
            .execute(&mut conn)
            .await
            .expect("write version");
        conn.close().await.expect("close");
    }
    let before = std::fs::read(&path).expect("read file");
    match SqliteLedger::open(&url(&path)).await {
        Err(e @ LedgerError::IncompatibleFormat { found: 99, .. }) => {
            assert!(e.to_string().contains("format version 99"), "{e}")
        }
        other => panic!("expected IncompatibleFormat, got {:?}", other.map(|_| ())),
    }
    assert_eq!(
        std::fs::read(&path).expect("read file"),
        before,
        "the refused file is byte for byte unchanged"
    );
    let mut conn = raw(&path).await;
    let version: i64 =
        sqlx::query_scalar("SELECT value FROM ledger_meta WHERE key = 'format_version'")
            .fetch_one(&mut conn)
            .await
            .expect("read version");
    assert_eq!(version, 99, "the version row is unchanged");
    let tables: i64 = sqlx::query_scalar("SELECT count(*) FROM sqlite_master WHERE type = 'table'")
        .fetch_one(&mut conn)
        .await
        .expect("count tables");
    assert_eq!(tables, 1, "no migration ran");
}

#[tokio::test]
async fn the_current_format_version_is_recorded() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("l.db");
    let ledger = SqliteLedger::open(&url(&path)).await.expect("open");
    ledger.close().await.expect("close");
    let mut conn = raw(&path).await;
    let version: i64 =
        sqlx::query_scalar("SELECT value FROM ledger_meta WHERE key = 'format_version'")
            .fetch_one(&mut conn)
            .await
            .expect("read version");
    assert_eq!(version, i64::from(cloacina_ledger::LEDGER_FORMAT_VERSION));
}

#[tokio::test]
async fn tenants_get_their_own_files() {
    let dir = tempfile::tempdir().expect("temp dir");
    let base = url(&dir.path().join("ledger.db"));
    let alpha = open_tenant(&base, "alpha").await.expect("alpha");
    let beta = open_tenant(&base, "beta").await.expect("beta");
    alpha
        .append(
            &[
                Record::Boundary(boundary("r", 1)),
                Record::Firing(firing("r", 1, true)),
            ],
            Commit::Durable,
        )
        .await
        .expect("append to alpha");
    assert_eq!(
        alpha
            .firings(&FiringQuery::reactor("r"))
            .await
            .expect("alpha")
            .len(),
        1
    );
    assert!(beta
        .firings(&FiringQuery::reactor("r"))
        .await
        .expect("beta")
        .is_empty());
    assert!(beta
        .boundaries(&BoundaryQuery::reactor("r"))
        .await
        .expect("beta")
        .is_empty());
    assert!(dir.path().join("ledger-alpha.db").exists());
    assert!(dir.path().join("ledger-beta.db").exists());
    assert!(!dir.path().join("ledger.db").exists());
}

#[tokio::test]
async fn a_reopen_sees_a_durable_append() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = url(&dir.path().join("l.db"));
    let written = boundary("r", 7);
    {
        let ledger = SqliteLedger::open(&url).await.expect("open");
        ledger
            .append(&[Record::Boundary(written.clone())], Commit::Durable)
            .await
            .expect("append");
        ledger.close().await.expect("close");
    }
    let ledger = SqliteLedger::open(&url).await.expect("reopen");
    assert_eq!(
        ledger
            .boundaries(&BoundaryQuery::reactor("r"))
            .await
            .expect("read"),
        vec![written]
    );
}

#[tokio::test]
async fn ids_beyond_i64_are_refused_and_nothing_is_applied() {
    let ledger = SqliteLedger::open("sqlite://:memory:").await.expect("open");
    let result = ledger
        .append(
            &[
                Record::Boundary(boundary("r", 1)),
                Record::Firing(FiringRecord {
                    firing_id: u64::MAX,
                    ..firing("r", 1, true)
                }),
            ],
            Commit::Buffered,
        )
        .await;
    match result {
        Err(e @ LedgerError::Rejected { .. }) => assert!(
            e.to_string().contains(&u64::MAX.to_string()),
            "names the id: {e}"
        ),
        other => panic!("expected a Rejected error, got {other:?}"),
    }
    assert!(ledger
        .boundaries(&BoundaryQuery::reactor("r"))
        .await
        .expect("read")
        .is_empty());
    // Query bounds above i64::MAX are fine.
    let q = BoundaryQuery {
        from_seq: Some(u64::MAX),
        ..BoundaryQuery::reactor("r")
    };
    assert!(ledger.boundaries(&q).await.expect("read").is_empty());
    let q = FiringQuery {
        from_id: Some(u64::MAX),
        ..FiringQuery::reactor("r")
    };
    assert!(ledger.firings(&q).await.expect("read").is_empty());
}

#[tokio::test]
async fn retention_gives_space_back() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("l.db");
    let ledger = SqliteLedger::open(&url(&path)).await.expect("open");
    let records: Vec<Record> = (1..=2000u64)
        .map(|seq| {
            Record::Boundary(BoundaryRecord {
                value: vec![seq as u8; 4096],
                ..boundary("r", seq)
            })
        })
        .collect();
    ledger
        .append(&records, Commit::Buffered)
        .await
        .expect("append");
    let snapshot = SnapshotRecord {
        reactor: "r".into(),
        last_seq: 2000,
        next_firing_id: 1,
        taken_at_unix_us: 0,
        cache: Vec::new(),
        dirty: Vec::new(),
        queue: Vec::new(),
    };
    ledger
        .append(&[Record::Snapshot(snapshot)], Commit::Durable)
        .await
        .expect("snapshot");
    let report = ledger
        .retain(
            "r",
            Retention {
                keep_last: Some(0),
                older_than_unix_us: None,
            },
        )
        .await
        .expect("retain");
    assert_eq!(report.boundaries_removed, 2000);
    ledger.close().await.expect("close");
    let mut conn = raw(&path).await;
    let free: i64 = sqlx::query_scalar("PRAGMA freelist_count")
        .fetch_one(&mut conn)
        .await
        .expect("freelist");
    let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
        .fetch_one(&mut conn)
        .await
        .expect("pages");
    assert_eq!(free, 0, "incremental vacuum emptied the free list");
    assert!(pages < 100, "{pages} pages left after removing 8 MiB");
}

/// Rough single-process append throughput: `cargo test --release -p cloacina-ledger --test
/// sqlite -- --ignored --nocapture throughput`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, not a check"]
async fn throughput() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = SqliteLedger::open(&url(&dir.path().join("bench.db")))
        .await
        .expect("open");
    let mut seq = 0u64;
    for (commit, batches) in [(Commit::Buffered, 100), (Commit::Durable, 100)] {
        let start = Instant::now();
        for _ in 0..batches {
            let batch: Vec<Record> = (0..4096)
                .map(|_| {
                    seq += 1;
                    Record::Boundary(BoundaryRecord {
                        reactor: "bench".into(),
                        seq,
                        source: "src".into(),
                        received_at_unix_us: seq as i64,
                        value: vec![7; 200],
                    })
                })
                .collect();
            ledger.append(&batch, commit).await.expect("append");
        }
        let secs = start.elapsed().as_secs_f64();
        let n = f64::from(batches * 4096);
        println!(
            "{commit:?}: {batches} batches of 4096 200-byte boundaries in {secs:.2} s: {:.0} records/s",
            n / secs
        );
    }
    let start = Instant::now();
    for i in 0..1000u64 {
        ledger
            .append(
                &[Record::Boundary(boundary("single", i + 1))],
                Commit::Durable,
            )
            .await
            .expect("append");
    }
    println!(
        "Durable single-record appends: {:.0}/s",
        1000.0 / start.elapsed().as_secs_f64()
    );
}

/// 64 tasks writing through one durable group-commit [`LedgerWriter`]: `cargo test --release
/// -p cloacina-ledger --test sqlite -- --ignored --nocapture throughput`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, not a check"]
async fn throughput_64_writers() {
    use cloacina_ledger::{LedgerWriter, WriterOptions};
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger: Arc<dyn Ledger> = Arc::new(
        SqliteLedger::open(&url(&dir.path().join("bench.db")))
            .await
            .expect("open"),
    );
    for commit in [Commit::Durable, Commit::Buffered] {
        let writer = Arc::new(LedgerWriter::spawn(
            Arc::clone(&ledger),
            WriterOptions {
                commit,
                ..WriterOptions::default()
            },
        ));
        let per_task = 5_000u64;
        let start = Instant::now();
        let tasks: Vec<_> = (0..64u64)
            .map(|t| {
                let writer = Arc::clone(&writer);
                tokio::spawn(async move {
                    for seq in 1..=per_task {
                        writer
                            .write(Record::Boundary(BoundaryRecord {
                                reactor: format!("{commit:?}-{t}"),
                                seq,
                                source: "src".into(),
                                received_at_unix_us: seq as i64,
                                value: vec![7; 200],
                            }))
                            .await
                            .expect("write");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
        let writer = Arc::into_inner(writer).expect("last handle");
        let report = writer.close().await;
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(report.written, 64 * per_task, "{report:?}");
        println!(
            "{commit:?}, 64 writers through one LedgerWriter: {} records in {secs:.2} s: {:.0} records/s",
            report.written,
            report.written as f64 / secs
        );
    }
}

// `close` checkpoints the WAL into the database file and truncates it before it returns.
#[tokio::test]
async fn close_checkpoints_and_empties_the_wal() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("l.db");
    let ledger = SqliteLedger::open(&url(&path)).await.expect("open");
    let records: Vec<Record> = (1..=500)
        .map(|i| Record::Boundary(boundary("r", i)))
        .collect();
    ledger
        .append(&records, Commit::Durable)
        .await
        .expect("append");
    let wal = dir.path().join("l.db-wal");
    assert!(
        std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0) > 0,
        "the append went to the WAL"
    );
    ledger.close().await.expect("close");
    assert_eq!(
        std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0),
        0,
        "the WAL is empty or gone after close"
    );
    assert!(ledger.flush().await.is_err(), "closed");
    let reopened = SqliteLedger::open(&url(&path)).await.expect("reopen");
    assert_eq!(
        reopened
            .boundaries(&BoundaryQuery::reactor("r"))
            .await
            .expect("read")
            .len(),
        500
    );
}

// Damage that SQLite itself does not notice on reads is found: a changed value fails its
// checksum on read (naming the record), and verify lists it.
#[tokio::test]
async fn a_record_changed_behind_the_ledger_fails_its_checksum() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("l.db");
    let ledger = SqliteLedger::open(&url(&path)).await.expect("open");
    let records: Vec<Record> = (1..=20)
        .flat_map(|i| {
            [
                Record::Boundary(boundary("r", i)),
                Record::Firing(firing("r", i, true)),
            ]
        })
        .collect();
    ledger
        .append(&records, Commit::Durable)
        .await
        .expect("append");
    assert!(ledger.verify().await.expect("verify").is_ok());
    ledger.close().await.expect("close");
    let mut conn = raw(&path).await;
    sqlx::query("UPDATE boundaries SET value = x'00' WHERE reactor = 'r' AND seq = 7")
        .execute(&mut conn)
        .await
        .expect("tamper boundary");
    sqlx::query("UPDATE firings SET record = substr(record, 1, length(record) - 1) || x'00' WHERE firing_id = 3")
        .execute(&mut conn)
        .await
        .expect("tamper firing");
    conn.close().await.expect("close raw");
    let ledger = SqliteLedger::open(&url(&path)).await.expect("reopen");
    match ledger.boundaries(&BoundaryQuery::reactor("r")).await {
        Err(e @ LedgerError::Corrupt { .. }) => {
            assert!(e.to_string().contains("boundary 7 of reactor `r`"), "{e}")
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    match ledger.firings(&FiringQuery::reactor("r")).await {
        Err(e @ LedgerError::Corrupt { .. }) => {
            assert!(e.to_string().contains("firing 3 of reactor `r`"), "{e}")
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    let report = ledger.verify().await.expect("verify runs");
    assert_eq!(report.problems.len(), 2, "{report:?}");
    assert_eq!(report.records_checked, 40);
}

// Bytes overwritten inside the file (a damaged page): verify reports it (quick_check and
// the checksum scan) instead of reads quietly returning fewer records.
#[tokio::test]
async fn a_damaged_page_is_found_by_verify() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("l.db");
    let ledger = SqliteLedger::open(&url(&path)).await.expect("open");
    let records: Vec<Record> = (1..=3000)
        .map(|i| Record::Boundary(boundary("r", i)))
        .collect();
    ledger
        .append(&records, Commit::Durable)
        .await
        .expect("append");
    ledger.close().await.expect("close");
    let mut bytes = std::fs::read(&path).expect("read");
    let at = bytes.len() / 2 + 100;
    for b in bytes.iter_mut().skip(at).take(512) {
        *b ^= 0xa5;
    }
    std::fs::write(&path, &bytes).expect("damage");
    let problems = match SqliteLedger::open(&url(&path)).await {
        Err(e) => vec![e.to_string()],
        Ok(ledger) => match ledger.verify().await {
            Ok(report) => report.problems,
            Err(e) => vec![e.to_string()],
        },
    };
    assert!(!problems.is_empty(), "the damage must be reported");
}

// Rows gone from the middle (a lost page, a batch a writer gave up): a read by seq fails
// naming the missing range; with `allow_gaps` it returns what is there.
#[tokio::test]
async fn a_hole_in_the_ids_fails_a_read_and_names_the_range() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("l.db");
    let ledger = SqliteLedger::open(&url(&path)).await.expect("open");
    let records: Vec<Record> = (1..=3000)
        .map(|i| Record::Boundary(boundary("r", i)))
        .collect();
    ledger
        .append(&records, Commit::Durable)
        .await
        .expect("append");
    ledger.close().await.expect("close");
    let mut conn = raw(&path).await;
    sqlx::query("DELETE FROM boundaries WHERE seq BETWEEN 1409 AND 2000")
        .execute(&mut conn)
        .await
        .expect("remove rows");
    conn.close().await.expect("close raw");
    let ledger = SqliteLedger::open(&url(&path)).await.expect("reopen");
    match ledger.boundaries(&BoundaryQuery::reactor("r")).await {
        Err(e @ LedgerError::Gap { .. }) => assert!(
            e.to_string()
                .contains("boundaries 1409..=2000 of reactor `r` missing"),
            "{e}"
        ),
        other => panic!("expected Gap, got {:?}", other.map(|v| v.len())),
    }
    let found = ledger
        .boundaries(&BoundaryQuery::reactor("r").allow_gaps())
        .await
        .expect("read past the hole");
    assert_eq!(found.len(), 3000 - 592);
    let report = ledger.verify().await.expect("verify");
    assert_eq!(report.gaps.len(), 1, "{report:?}");
}
