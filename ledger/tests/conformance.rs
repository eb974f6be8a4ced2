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
