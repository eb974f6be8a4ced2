//! Every backend runs the one conformance suite (`cloacina_ledger::conformance`), plus the
//! URL and format-version checks of `open`.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use cloacina_ledger::conformance::{self, Harness};
use cloacina_ledger::{open, Ledger, LedgerError, MemoryLedger, SledLedger};

struct Memory;

impl Harness for Memory {
    fn open(&self) -> Pin<Box<dyn Future<Output = Arc<dyn Ledger>> + Send + '_>> {
        Box::pin(async { Arc::new(MemoryLedger::new()) as Arc<dyn Ledger> })
    }
    fn persistent(&self) -> bool {
        false
    }
}

struct Sled(PathBuf);

impl Harness for Sled {
    fn open(&self) -> Pin<Box<dyn Future<Output = Arc<dyn Ledger>> + Send + '_>> {
        Box::pin(async {
            Arc::new(SledLedger::open(&self.0).expect("open sled ledger")) as Arc<dyn Ledger>
        })
    }
    fn persistent(&self) -> bool {
        true
    }
}

#[tokio::test]
async fn memory_passes_the_conformance_suite() {
    conformance::run(&Memory).await;
}

#[tokio::test]
async fn sled_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().expect("temp dir");
    conformance::run(&Sled(dir.path().join("ledger"))).await;
}

#[tokio::test]
async fn open_picks_the_backend_by_url() {
    assert_eq!(open("memory://").await.expect("memory").backend(), "memory");
    let dir = tempfile::tempdir().expect("temp dir");
    let by_scheme = format!("sled://{}", dir.path().join("a").display());
    assert_eq!(open(&by_scheme).await.expect("sled://").backend(), "sled");
    let by_path = dir.path().join("b").display().to_string();
    assert_eq!(open(&by_path).await.expect("path").backend(), "sled");
}

#[tokio::test]
async fn bad_urls_are_clear_errors() {
    for (url, says) in [
        ("", "empty"),
        ("memory://x", "memory://"),
        ("sled://", "needs a path"),
        ("kafka://broker", "unknown scheme `kafka`"),
    ] {
        match open(url).await {
            Err(e @ LedgerError::BadUrl { .. }) => {
                assert!(e.to_string().contains(says), "`{url}`: {e}")
            }
            Err(other) => panic!("`{url}`: expected BadUrl, got {other}"),
            Ok(l) => panic!("`{url}`: expected an error, opened {}", l.backend()),
        }
    }
}

#[tokio::test]
async fn sled_urls_take_a_cache_size() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sled://{}?cache_mb=8", dir.path().join("c").display());
    assert_eq!(open(&url).await.expect("cache_mb=8").backend(), "sled");
    for bad in ["cache_mb=0", "cache_mb=lots", "cache=8"] {
        let url = format!("sled://{}?{bad}", dir.path().join("d").display());
        match open(&url).await {
            Err(e @ LedgerError::BadUrl { .. }) => assert!(e.to_string().contains("cache"), "{e}"),
            Err(other) => panic!("`{url}`: expected BadUrl, got {other}"),
            Ok(_) => panic!("`{url}`: opened"),
        }
    }
    assert!(!dir.path().join("d").exists(), "a bad URL creates nothing");
}

// Built without a SQL backend (`cargo test -p cloacina-ledger`), its URLs say which cargo
// feature to enable. (Under `cargo test --workspace` the facade turns both features on.)
#[cfg(not(all(feature = "sqlite", feature = "postgres")))]
#[tokio::test]
async fn urls_of_backends_not_built_name_the_feature() {
    let mut urls = Vec::new();
    if cfg!(not(feature = "sqlite")) {
        urls.push(("sqlite://x.db", "cargo feature `sqlite`"));
    }
    if cfg!(not(feature = "postgres")) {
        urls.push(("postgres://h/db", "cargo feature `postgres`"));
    }
    for (url, says) in urls {
        match open(url).await {
            Err(e @ LedgerError::BadUrl { .. }) => assert!(e.to_string().contains(says), "{e}"),
            Err(other) => panic!("`{url}`: expected BadUrl, got {other}"),
            Ok(_) => panic!("`{url}`: opened"),
        }
    }
    assert!(!std::path::Path::new("x.db").exists());
}
