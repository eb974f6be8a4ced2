//! Tenancy: which tenant names are accepted, which URL each backend maps a tenant to, and
//! that two tenants of one sled URL are separate stores.

use cloacina_ledger::{
    open, open_tenant, tenant_url, validate_tenant, BoundaryQuery, BoundaryRecord, Commit,
    FiringOutcome, FiringQuery, FiringRecord, FiringTrigger, LedgerError, Record,
};

#[test]
fn tenant_names_accepted() {
    let longest = format!("t{}", "x".repeat(62));
    assert_eq!(longest.len(), 63);
    for name in [
        "alpha",
        "a",
        "_",
        "_private",
        "Tenant_42",
        "a1",
        "ALPHA",
        "pg",
        "pgx",
        "public_x",
        longest.as_str(),
    ] {
        if let Err(e) = validate_tenant(name) {
            panic!("`{name}` should be accepted: {e}");
        }
        assert!(tenant_url("memory://", name).is_ok(), "{name}");
    }
}

#[test]
fn tenant_names_refused() {
    let too_long = "a".repeat(64);
    for (name, says) in [
        ("", "1 to 63"),
        (too_long.as_str(), "1 to 63"),
        ("1abc", "start with a letter"),
        ("-abc", "start with a letter"),
        ("a-b", "only letters"),
        ("a b", "only letters"),
        ("a.b", "only letters"),
        ("a/b", "only letters"),
        ("../x", "start with a letter"),
        ("t'; DROP TABLE x --", "only letters"),
        ("tenant\"x", "only letters"),
        ("caf\u{e9}", "only letters"),
        ("\u{e9}t\u{e9}", "start with a letter"),
        ("pg_x", "reserved"),
        ("PG_catalog", "reserved"),
        ("public", "reserved"),
        ("information_schema", "reserved"),
    ] {
        match validate_tenant(name) {
            Err(LedgerError::BadTenant { tenant, reason }) => {
                assert_eq!(tenant, name);
                assert!(reason.contains(says), "`{name}`: reason `{reason}`");
            }
            other => panic!("`{name}` should be refused, got {other:?}"),
        }
        // Every mapping refuses it the same way, whatever the backend.
        for url in [
            "memory://",
            "sled://d/ledger",
            "d/ledger",
            "sqlite://d/l.db",
            "postgres://h/db",
        ] {
            assert!(
                matches!(tenant_url(url, name), Err(LedgerError::BadTenant { .. })),
                "`{name}` under `{url}`"
            );
        }
    }
}

#[test]
fn each_backend_maps_a_tenant_to_its_own_store() {
    for (url, expected) in [
        ("sled://d/ledger", "sled://d/ledger-alpha"),
        ("sled:///var/lib/x/ledger", "sled:///var/lib/x/ledger-alpha"),
        ("sled://ledger", "sled://ledger-alpha"),
        ("d/ledger", "d/ledger-alpha"),
        ("/abs/d/ledger", "/abs/d/ledger-alpha"),
        ("ledger", "ledger-alpha"),
        ("d/ledger.sled", "d/ledger-alpha.sled"),
        ("sqlite://d/l.db", "sqlite://d/l-alpha.db"),
        ("sqlite:///abs/l.db", "sqlite:///abs/l-alpha.db"),
        ("sqlite://l", "sqlite://l-alpha"),
        ("sqlite://d/l.db?mode=rwc", "sqlite://d/l-alpha.db?mode=rwc"),
        ("postgres://h/db", "postgres://h/db?schema=alpha"),
        ("postgres://h/db?x=1", "postgres://h/db?x=1&schema=alpha"),
        (
            "postgresql://u:p@h:5432/db",
            "postgresql://u:p@h:5432/db?schema=alpha",
        ),
        ("memory://", "memory://"),
    ] {
        match tenant_url(url, "alpha") {
            Ok(got) => assert_eq!(got, expected, "tenant of `{url}`"),
            Err(e) => panic!("tenant of `{url}`: {e}"),
        }
    }
    // Two tenants never share a store.
    for url in [
        "sled://d/ledger",
        "d/ledger",
        "sqlite://d/l.db",
        "postgres://h/db",
    ] {
        let a = tenant_url(url, "alpha").expect("alpha");
        let b = tenant_url(url, "beta").expect("beta");
        assert_ne!(a, b, "{url}");
        assert_ne!(a, url, "{url}");
    }
}

#[test]
fn urls_without_room_for_a_tenant_are_refused() {
    for (url, says) in [
        ("postgres://h/db?schema=other", "already names a schema"),
        ("postgres://h/db?x=1&schema=other", "already names a schema"),
        ("postgresql://h/db?schema=other", "already names a schema"),
        ("sqlite://:memory:", "file path"),
        ("sqlite://", "file path"),
        ("sled://", "file path"),
        ("", "empty"),
        ("   ", "empty"),
        ("ftp://h/x", "unknown scheme"),
    ] {
        match tenant_url(url, "alpha") {
            Err(LedgerError::BadUrl { reason, .. }) => {
                assert!(reason.contains(says), "`{url}`: reason `{reason}`");
            }
            other => panic!("`{url}` should be refused, got {other:?}"),
        }
    }
}

fn boundary(reactor: &str, seq: u64, value: &[u8]) -> Record {
    Record::Boundary(BoundaryRecord {
        reactor: reactor.into(),
        seq,
        source: "quotes".into(),
        received_at_unix_us: 1_000 + seq as i64,
        value: value.to_vec(),
    })
}

fn firing(reactor: &str, id: u64) -> Record {
    Record::Firing(FiringRecord {
        reactor: reactor.into(),
        firing_id: id,
        trigger: FiringTrigger::Criteria,
        inputs: vec![("quotes".into(), id)],
        fired_at_unix_us: 2_000 + id as i64,
        duration_ns: 10,
        outcome: FiringOutcome::Completed { outputs: vec![] },
    })
}

async fn seqs(ledger: &dyn cloacina_ledger::Ledger, reactor: &str) -> Vec<(u64, Vec<u8>)> {
    ledger
        .boundaries(&BoundaryQuery::reactor(reactor))
        .await
        .expect("read boundaries")
        .into_iter()
        .map(|b| (b.seq, b.value))
        .collect()
}

async fn firing_ids(ledger: &dyn cloacina_ledger::Ledger, reactor: &str) -> Vec<u64> {
    ledger
        .firings(&FiringQuery::reactor(reactor))
        .await
        .expect("read firings")
        .into_iter()
        .map(|f| f.firing_id)
        .collect()
}

#[tokio::test]
async fn sled_tenants_are_separate_stores_that_survive_reopening() {
    let dir = tempfile::tempdir().expect("temp dir");
    let base = dir.path().join("ledger").display().to_string();
    let by_scheme = format!("sled://{base}");

    {
        let alpha = open_tenant(&base, "alpha").await.expect("open alpha");
        let beta = open_tenant(&by_scheme, "beta").await.expect("open beta");
        assert_eq!((alpha.backend(), beta.backend()), ("sled", "sled"));
        // The same reactor name, and the same ids, in both tenants, with different content:
        // no conflict, because they are different stores.
        alpha
            .append(
                &[
                    boundary("r", 1, b"a1"),
                    boundary("r", 2, b"a2"),
                    firing("r", 1),
                ],
                Commit::Durable,
            )
            .await
            .expect("append alpha");
        beta.append(&[boundary("r", 1, b"b1")], Commit::Durable)
            .await
            .expect("append beta");
        beta.append(&[boundary("only-beta", 7, b"b7")], Commit::Buffered)
            .await
            .expect("append beta");
        beta.flush().await.expect("flush beta");

        assert_eq!(
            seqs(&*alpha, "r").await,
            vec![(1, b"a1".to_vec()), (2, b"a2".to_vec())]
        );
        assert_eq!(seqs(&*beta, "r").await, vec![(1, b"b1".to_vec())]);
        assert_eq!(firing_ids(&*alpha, "r").await, vec![1]);
        assert!(firing_ids(&*beta, "r").await.is_empty());
        assert!(seqs(&*alpha, "only-beta").await.is_empty());
        assert_eq!(seqs(&*beta, "only-beta").await.len(), 1);
    }

    // Each tenant is its own directory beside the base, and the base itself was not created.
    assert!(dir.path().join("ledger-alpha").is_dir());
    assert!(dir.path().join("ledger-beta").is_dir());
    assert!(!dir.path().join("ledger").exists());

    // Reopened (each via the other spelling of the URL): every tenant has exactly its own.
    let alpha = open_tenant(&by_scheme, "alpha")
        .await
        .expect("reopen alpha");
    let beta = open_tenant(&base, "beta").await.expect("reopen beta");
    assert_eq!(
        seqs(&*alpha, "r").await,
        vec![(1, b"a1".to_vec()), (2, b"a2".to_vec())]
    );
    assert_eq!(firing_ids(&*alpha, "r").await, vec![1]);
    assert!(seqs(&*alpha, "only-beta").await.is_empty());
    assert_eq!(seqs(&*beta, "r").await, vec![(1, b"b1".to_vec())]);
    assert_eq!(seqs(&*beta, "only-beta").await, vec![(7, b"b7".to_vec())]);
    assert!(firing_ids(&*beta, "r").await.is_empty());

    // Appending what the other tenant holds is not a conflict here either (after reopening,
    // the id checks read this tenant's store).
    beta.append(&[boundary("r", 2, b"b2")], Commit::Durable)
        .await
        .expect("append beta after reopen");
    assert_eq!(seqs(&*alpha, "r").await[1], (2, b"a2".to_vec()));
    assert_eq!(seqs(&*beta, "r").await[1], (2, b"b2".to_vec()));

    // The untenanted store at the base URL is a third, empty store.
    drop((alpha, beta));
    let plain = open(&base).await.expect("open base");
    assert!(seqs(&*plain, "r").await.is_empty());
    assert!(seqs(&*plain, "only-beta").await.is_empty());
}

#[tokio::test]
async fn memory_tenants_are_separate_stores() {
    let alpha = open_tenant("memory://", "alpha").await.expect("alpha");
    let beta = open_tenant("memory://", "beta").await.expect("beta");
    alpha
        .append(&[boundary("r", 1, b"a")], Commit::Durable)
        .await
        .expect("append");
    assert_eq!(seqs(&*alpha, "r").await.len(), 1);
    assert!(seqs(&*beta, "r").await.is_empty());
}

#[tokio::test]
async fn open_tenant_refuses_bad_names_before_touching_anything() {
    let dir = tempfile::tempdir().expect("temp dir");
    let base = dir.path().join("ledger").display().to_string();
    for name in [
        "",
        "1abc",
        "a-b",
        "t'; DROP TABLE x --",
        "pg_x",
        "../escape",
    ] {
        match open_tenant(&base, name).await {
            Err(LedgerError::BadTenant { .. }) => {}
            Err(e) => panic!("`{name}`: wrong error {e}"),
            Ok(_) => panic!("`{name}` was accepted"),
        }
    }
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "nothing may be created: {left:?}");
}
