//! The PostgreSQL backend: the conformance suite, format-version refusal, tenant isolation,
//! and URL / connection errors.
//!
//! Tests that need a server read its URL from `CLOACINA_TEST_POSTGRES_URL` (e.g.
//! `postgres://postgres@127.0.0.1:5432/test`) and pass with a note when it is unset or the
//! server is unreachable, unless `CLOACINA_REQUIRE_POSTGRES=1` (then they fail). Each
//! works in a fresh schema of its own and drops it at the end.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloacina_ledger::conformance::{self, boundary, firing, Harness};
use cloacina_ledger::{
    open, open_tenant, tenant_url, BoundaryQuery, BoundaryRecord, CheckpointRecord, Commit,
    FiringQuery, Ledger, LedgerError, Record,
};
use sqlx::Connection;

fn server_url(test: &str) -> Option<String> {
    // Skips (None) without a server, or fails when CLOACINA_REQUIRE_POSTGRES=1.
    let url = cloacina_ledger::testing::postgres_url();
    if url.is_none() {
        eprintln!("{test}: skipped");
    }
    url
}

/// A schema name no other test (or run) uses.
fn fresh_schema(tag: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "cl_{tag}_{}_{}_{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

async fn raw(url: &str) -> sqlx::PgConnection {
    sqlx::PgConnection::connect(url)
        .await
        .expect("raw connection to the test server")
}

async fn drop_schema(url: &str, schema: &str) {
    let mut conn = raw(url).await;
    sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .execute(&mut conn)
        .await
        .expect("drop test schema");
}

struct Postgres {
    url: String,
}

impl Harness for Postgres {
    fn open(&self) -> Pin<Box<dyn Future<Output = Arc<dyn Ledger>> + Send + '_>> {
        Box::pin(async {
            open(&self.url)
                .await
                .unwrap_or_else(|e| panic!("open {}: {e}", self.url))
        })
    }
    fn persistent(&self) -> bool {
        true
    }
}

#[tokio::test]
async fn postgres_passes_the_conformance_suite() {
    let Some(url) = server_url("postgres_passes_the_conformance_suite") else {
        return;
    };
    let schema = fresh_schema("conf");
    let harness = Postgres {
        url: tenant_url(&url, &schema).expect("tenant url"),
    };
    conformance::run(&harness).await;
    drop_schema(&url, &schema).await;
}

#[tokio::test]
async fn a_schema_of_another_format_version_is_refused_untouched() {
    let Some(url) = server_url("a_schema_of_another_format_version_is_refused_untouched") else {
        return;
    };
    let schema = fresh_schema("fmt");
    let ledger_url = tenant_url(&url, &schema).expect("tenant url");
    let ledger = open(&ledger_url).await.expect("first open");
    ledger
        .append(&[Record::Boundary(boundary("r", 1))], Commit::Durable)
        .await
        .expect("append");
    drop(ledger);

    let mut conn = raw(&url).await;
    sqlx::raw_sql(&format!(
        "UPDATE \"{schema}\".meta SET value = 99 WHERE key = 'format_version'"
    ))
    .execute(&mut conn)
    .await
    .expect("write a wrong version");
    match open(&ledger_url).await {
        Err(e @ LedgerError::IncompatibleFormat { found: 99, .. }) => {
            assert!(e.to_string().contains("format version 99"), "{e}")
        }
        Err(other) => panic!("expected IncompatibleFormat, got {other}"),
        Ok(_) => panic!("expected IncompatibleFormat, the ledger opened"),
    }
    let version: i64 = sqlx::query_scalar(&format!(
        "SELECT value FROM \"{schema}\".meta WHERE key = 'format_version'"
    ))
    .fetch_one(&mut conn)
    .await
    .expect("read version");
    assert_eq!(version, 99, "the refused store is untouched");
    let rows: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM \"{schema}\".boundaries"))
        .fetch_one(&mut conn)
        .await
        .expect("count");
    assert_eq!(rows, 1);
    drop_schema(&url, &schema).await;
}

#[tokio::test]
async fn a_foreign_version_is_refused_before_migrating() {
    let Some(url) = server_url("a_foreign_version_is_refused_before_migrating") else {
        return;
    };
    // A schema some other build made: only its meta table, at version 7.
    let schema = fresh_schema("old");
    let mut conn = raw(&url).await;
    sqlx::raw_sql(&format!(
        "CREATE SCHEMA \"{schema}\"; \
         CREATE TABLE \"{schema}\".meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL); \
         INSERT INTO \"{schema}\".meta VALUES ('format_version', 7);"
    ))
    .execute(&mut conn)
    .await
    .expect("set up an old schema");
    match open_tenant(&url, &schema).await {
        Err(LedgerError::IncompatibleFormat {
            found: 7, expected, ..
        }) => assert_eq!(expected, cloacina_ledger::LEDGER_FORMAT_VERSION),
        Err(other) => panic!("expected IncompatibleFormat, got {other}"),
        Ok(_) => panic!("expected IncompatibleFormat, the ledger opened"),
    }
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_catalog.pg_tables WHERE schemaname = $1 ORDER BY 1",
    )
    .bind(&schema)
    .fetch_all(&mut conn)
    .await
    .expect("list tables");
    assert_eq!(
        tables,
        ["meta"],
        "nothing was migrated into the refused schema"
    );
    drop_schema(&url, &schema).await;
}

#[tokio::test]
async fn tenants_never_see_each_other() {
    let Some(url) = server_url("tenants_never_see_each_other") else {
        return;
    };
    let (a_name, b_name) = (fresh_schema("ta"), fresh_schema("tb"));
    let a = open_tenant(&url, &a_name).await.expect("tenant a");
    let b = open(&tenant_url(&url, &b_name).expect("url b"))
        .await
        .expect("tenant b");
    let mut in_b = boundary("shared", 1);
    in_b.value = b"tenant b".to_vec();
    let checkpoint = |owner: &str, value: u8| CheckpointRecord {
        owner: owner.into(),
        key: "k".into(),
        value: vec![value],
        at_unix_us: 0,
    };
    a.append(
        &[
            Record::Boundary(boundary("shared", 1)),
            Record::Firing(firing("shared", 1, true)),
            Record::Checkpoint(checkpoint("shared", 1)),
        ],
        Commit::Durable,
    )
    .await
    .expect("append a");
    // The same ids with other content: no conflict, it is another store.
    b.append(
        &[
            Record::Boundary(in_b.clone()),
            Record::Checkpoint(checkpoint("shared", 2)),
        ],
        Commit::Durable,
    )
    .await
    .expect("append b");
    assert_eq!(
        a.boundaries(&BoundaryQuery::reactor("shared"))
            .await
            .expect("read a"),
        vec![boundary("shared", 1)]
    );
    assert_eq!(
        b.boundaries(&BoundaryQuery::reactor("shared"))
            .await
            .expect("read b"),
        vec![in_b]
    );
    assert_eq!(
        a.firings(&FiringQuery::reactor("shared"))
            .await
            .expect("read a")
            .len(),
        1
    );
    assert!(b
        .firings(&FiringQuery::reactor("shared"))
        .await
        .expect("read b")
        .is_empty());
    assert_eq!(
        b.checkpoint("shared", "k").await.expect("read b"),
        Some(checkpoint("shared", 2))
    );
    assert_eq!(
        a.checkpoint("shared", "k").await.expect("read a"),
        Some(checkpoint("shared", 1))
    );
    drop((a, b));
    drop_schema(&url, &a_name).await;
    drop_schema(&url, &b_name).await;
}

#[tokio::test]
async fn an_injected_schema_name_is_refused_without_contacting_the_server() {
    // Port 1 has no server: reaching it would be `Unreachable`, so `BadTenant` shows that
    // nothing was contacted. No server needed.
    let nowhere = "postgres://postgres@127.0.0.1:1/x";
    for tenant in ["t'; DROP TABLE x --", "a\"b", "public", "pg_catalog", ""] {
        match open_tenant(nowhere, tenant).await {
            Err(LedgerError::BadTenant { .. }) => {}
            Err(other) => panic!("`{tenant}`: expected BadTenant, got {other}"),
            Ok(_) => panic!("`{tenant}`: expected BadTenant, opened"),
        }
    }
    match open("postgres://postgres@127.0.0.1:1/x?schema=t';DROP%20TABLE%20x%20--").await {
        Err(LedgerError::BadTenant { .. }) => {}
        Err(other) => panic!("expected BadTenant, got {other}"),
        Ok(_) => panic!("expected BadTenant, opened"),
    }
}

#[tokio::test]
async fn an_unreachable_server_is_a_quick_clear_error() {
    let started = Instant::now();
    match open("postgres://postgres:hunter2@127.0.0.1:1/x?schema=t").await {
        Err(e @ LedgerError::Unreachable { .. }) => {
            let text = e.to_string();
            assert!(text.contains("127.0.0.1:1"), "{text}");
            assert!(!text.contains("hunter2"), "the password leaked: {text}");
        }
        Err(other) => panic!("expected Unreachable, got {other}"),
        Ok(_) => panic!("expected Unreachable, opened"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn bad_postgres_urls_are_clear_errors() {
    for (url, says) in [
        ("postgres://h:notaport/db", "port"),
        ("postgres://h/db?schema=a&schema=b", "more than once"),
        ("postgresql://u:hunter2@h/db?schema", "needs a value"),
    ] {
        match open(url).await {
            Err(e @ LedgerError::BadUrl { .. }) => {
                let text = e.to_string();
                assert!(text.contains(says), "`{url}`: {text}");
                assert!(!text.contains("hunter2"), "the password leaked: {text}");
            }
            Err(other) => panic!("`{url}`: expected BadUrl, got {other}"),
            Ok(_) => panic!("`{url}`: expected an error, opened"),
        }
    }
}

#[tokio::test]
async fn records_postgres_cannot_hold_are_refused_clearly() {
    let Some(url) = server_url("records_postgres_cannot_hold_are_refused_clearly") else {
        return;
    };
    let schema = fresh_schema("nul");
    let ledger = open_tenant(&url, &schema).await.expect("open");
    let with_nul = BoundaryRecord {
        reactor: "a\0b".into(),
        ..boundary("x", 1)
    };
    let huge = BoundaryRecord {
        seq: 1 << 63,
        ..boundary("x", 2)
    };
    for (record, says) in [
        (Record::Boundary(with_nul), "NUL"),
        (
            Record::Boundary(huge),
            "the largest the postgres ledger stores",
        ),
    ] {
        match ledger
            .append(
                &[Record::Boundary(boundary("x", 1)), record.clone()],
                Commit::Durable,
            )
            .await
        {
            Err(e @ LedgerError::Rejected { .. }) => {
                let text = e.to_string();
                assert!(
                    text.contains(says) && text.contains(&record.describe()),
                    "{text}"
                );
                assert!(!e.is_transient(), "a refused record is not worth retrying");
            }
            other => panic!("expected a Rejected error, got {other:?}"),
        }
    }
    assert!(ledger
        .boundaries(&BoundaryQuery::reactor("x"))
        .await
        .expect("read")
        .is_empty());
    drop(ledger);
    drop_schema(&url, &schema).await;
}

/// Rough append throughput: 4096-record batches of 200-byte boundaries, buffered and
/// durable, appended directly and through a `LedgerWriter` fed by 64 tasks. Run with
/// `CLOACINA_TEST_POSTGRES_URL=... cargo test --release -p cloacina-ledger --test postgres
/// -- --ignored --nocapture throughput`.
#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn throughput() {
    let Some(url) = server_url("throughput") else {
        return;
    };
    let schema = fresh_schema("bench");
    let ledger = open_tenant(&url, &schema).await.expect("open");
    const BATCH: u64 = 4096;
    const BATCHES: u64 = 50;
    let record = |reactor: &str, seq: u64| {
        Record::Boundary(BoundaryRecord {
            reactor: reactor.into(),
            seq,
            source: "src".into(),
            received_at_unix_us: seq as i64,
            value: vec![seq as u8; 200],
        })
    };
    for (name, commit) in [("buffered", Commit::Buffered), ("durable", Commit::Durable)] {
        let reactor = format!("direct-{name}");
        let batches: Vec<Vec<Record>> = (0..BATCHES)
            .map(|b| {
                (0..BATCH)
                    .map(|i| record(&reactor, b * BATCH + i + 1))
                    .collect()
            })
            .collect();
        let started = Instant::now();
        for batch in &batches {
            ledger.append(batch, commit).await.expect("append");
        }
        ledger.flush().await.expect("flush");
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "direct {name}: {} records in {secs:.2} s = {:.0} records/s",
            BATCH * BATCHES,
            (BATCH * BATCHES) as f64 / secs
        );
    }
    // Single-record appends: what the commit mode costs per transaction.
    for (name, commit) in [("buffered", Commit::Buffered), ("durable", Commit::Durable)] {
        let reactor = format!("single-{name}");
        let started = Instant::now();
        for seq in 1..=2_000 {
            ledger
                .append(&[record(&reactor, seq)], commit)
                .await
                .expect("append");
        }
        let secs = started.elapsed().as_secs_f64();
        eprintln!("single-record {name}: {:.0} appends/s", 2_000.0 / secs);
    }
    for (name, commit) in [("buffered", Commit::Buffered), ("durable", Commit::Durable)] {
        let writer = Arc::new(cloacina_ledger::LedgerWriter::spawn(
            Arc::clone(&ledger),
            cloacina_ledger::WriterOptions {
                commit,
                ..Default::default()
            },
        ));
        const TASKS: u64 = 64;
        const PER_TASK: u64 = 4_000;
        let started = Instant::now();
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let writer = Arc::clone(&writer);
            let reactor = format!("writer-{name}-{t}");
            tasks.push(tokio::spawn(async move {
                for seq in 1..=PER_TASK {
                    writer.write(record(&reactor, seq)).await.expect("write");
                }
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        let Ok(writer) = Arc::try_unwrap(writer) else {
            panic!("writer still shared")
        };
        let report = writer.close().await;
        let secs = started.elapsed().as_secs_f64();
        assert_eq!(report.written, TASKS * PER_TASK, "{report:?}");
        eprintln!(
            "writer {name}, {TASKS} tasks: {} records in {secs:.2} s = {:.0} records/s",
            TASKS * PER_TASK,
            (TASKS * PER_TASK) as f64 / secs
        );
    }
    drop(ledger);
    drop_schema(&url, &schema).await;
}

#[tokio::test]
async fn flush_makes_buffered_commits_durable() {
    let Some(url) = server_url("flush_makes_buffered_commits_durable") else {
        return;
    };
    let schema = fresh_schema("flush");
    let ledger = open_tenant(&url, &schema).await.expect("open");
    ledger
        .append(&[Record::Boundary(boundary("r", 1))], Commit::Buffered)
        .await
        .expect("append");
    // Everything written so far (our asynchronous commit included) is before this point.
    let mut conn = raw(&url).await;
    let written: String = sqlx::query_scalar("SELECT pg_current_wal_insert_lsn()::text")
        .fetch_one(&mut conn)
        .await
        .expect("insert lsn");
    ledger.flush().await.expect("flush");
    let flushed_past: bool =
        sqlx::query_scalar("SELECT pg_current_wal_flush_lsn() >= $1::text::pg_lsn")
            .bind(&written)
            .fetch_one(&mut conn)
            .await
            .expect("flush lsn");
    assert!(flushed_past, "WAL not flushed past {written} after flush()");
    drop(ledger);
    drop_schema(&url, &schema).await;
}

#[tokio::test]
async fn first_opens_of_one_schema_may_race() {
    let Some(url) = server_url("first_opens_of_one_schema_may_race") else {
        return;
    };
    let schema = fresh_schema("race");
    let ledger_url = tenant_url(&url, &schema).expect("tenant url");
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let ledger_url = ledger_url.clone();
            tokio::spawn(async move { open(&ledger_url).await.map(|_| ()) })
        })
        .collect();
    for o in opens {
        o.await.expect("task").expect("concurrent first open");
    }
    drop_schema(&url, &schema).await;
}

#[tokio::test]
async fn without_a_schema_the_ledger_lives_in_schema_cloacina() {
    let Some(url) = server_url("without_a_schema_the_ledger_lives_in_schema_cloacina") else {
        return;
    };
    // Left in place: it is the documented default, and other runs may be using it.
    let ledger = cloacina_ledger::PostgresLedger::open(&url)
        .await
        .expect("open");
    assert_eq!(ledger.schema(), "cloacina");
    let mut conn = raw(&url).await;
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_catalog.pg_tables WHERE schemaname = 'cloacina' \
         ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await
    .expect("list tables");
    assert_eq!(
        tables,
        [
            "_sqlx_migrations",
            "boundaries",
            "checkpoints",
            "firings",
            "meta",
            "snapshots",
            "wf_executions",
            "wf_tasks"
        ]
    );
}

// The migration history can say a table exists that was dropped: refused at open, naming it.
#[tokio::test]
async fn a_schema_missing_a_table_is_refused_at_open() {
    let Some(url) = server_url("a_schema_missing_a_table_is_refused_at_open") else {
        return;
    };
    let schema = fresh_schema("drop");
    {
        let ledger = open_tenant(&url, &schema).await.expect("open");
        ledger
            .append(&[Record::Boundary(boundary("r", 1))], Commit::Durable)
            .await
            .expect("append");
        let report = ledger.verify().await.expect("verify");
        assert!(report.is_ok() && report.records_checked == 1, "{report:?}");
    }
    let mut conn = raw(&url).await;
    sqlx::raw_sql(&format!("DROP TABLE \"{schema}\".firings"))
        .execute(&mut conn)
        .await
        .expect("drop a table");
    match open_tenant(&url, &schema).await {
        Err(e @ LedgerError::Corrupt { .. }) => {
            let text = e.to_string();
            assert!(text.contains("table `firings`"), "{text}");
            assert!(text.contains(&schema), "{text}");
        }
        Err(other) => panic!("expected Corrupt, got {other}"),
        Ok(_) => panic!("expected Corrupt, the ledger opened"),
    }
    drop_schema(&url, &schema).await;
}

// A value changed behind the ledger's back fails its checksum, on read and in verify.
#[tokio::test]
async fn a_changed_row_fails_its_checksum() {
    let Some(url) = server_url("a_changed_row_fails_its_checksum") else {
        return;
    };
    let schema = fresh_schema("crc");
    let ledger = open_tenant(&url, &schema).await.expect("open");
    let records: Vec<Record> = (1..=5)
        .map(|i| Record::Boundary(boundary("r", i)))
        .collect();
    ledger
        .append(&records, Commit::Durable)
        .await
        .expect("append");
    let mut conn = raw(&url).await;
    sqlx::raw_sql(&format!(
        "UPDATE \"{schema}\".boundaries SET value = '\\x00' WHERE seq = 4"
    ))
    .execute(&mut conn)
    .await
    .expect("tamper");
    match ledger.boundaries(&BoundaryQuery::reactor("r")).await {
        Err(e @ LedgerError::Corrupt { .. }) => {
            assert!(e.to_string().contains("boundary 4 of reactor `r`"), "{e}")
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    let report = ledger.verify().await.expect("verify runs");
    assert_eq!(report.problems.len(), 1, "{report:?}");
    drop(ledger);
    drop_schema(&url, &schema).await;
}

#[tokio::test]
async fn a_store_migrated_by_a_newer_build_still_opens() {
    let Some(url) = server_url("a_store_migrated_by_a_newer_build_still_opens") else {
        return;
    };
    let schema = fresh_schema("newer");
    let ledger_url = tenant_url(&url, &schema).expect("tenant url");
    drop(open(&ledger_url).await.expect("first open"));
    // A migration this build does not know, as a newer runner of a rolling upgrade leaves.
    let mut conn = raw(&url).await;
    sqlx::raw_sql(&format!(
        "INSERT INTO \"{schema}\"._sqlx_migrations \
         (version, description, success, checksum, execution_time) \
         VALUES (999, 'from a newer build', true, '\\x00'::bytea, 1)"
    ))
    .execute(&mut conn)
    .await
    .expect("record a newer migration");
    let ledger = open(&ledger_url)
        .await
        .expect("a store a newer build migrated opens");
    ledger
        .append(&[Record::Boundary(boundary("r", 1))], Commit::Durable)
        .await
        .expect("append");
    drop_schema(&url, &schema).await;
}
