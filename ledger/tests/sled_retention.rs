//! Retention keeps a long-running sled ledger bounded on disk.
//!
//! One reactor appends a few thousand boundaries and firings (200-byte values) per round, takes
//! a snapshot, appends a tail the snapshot does not cover, keeps the last 1000 records with
//! `retain`, and flushes. The store's size on disk late in the run must stay near its size
//! early in the run, and far below the same run without retention; every record retention
//! must keep (the newest 1000, and everything after the snapshot) must still be readable,
//! also after reopening.
//!
//! Both shapes of append a reactor's writer makes: group commits under load (hundreds of
//! records per append, so large sled values) before the snapshot, small appends (a quiet
//! reactor) in the tail. Sizes per round are printed with `--nocapture`, split into sled's
//! log file (`db`) and its `blobs/` directory: sled 0.34 stores a page bigger than a quarter of
//! its log segment as a blob file of its own, and does not always delete a replaced page's
//! blob.

use std::path::Path;

use cloacina_ledger::{
    BoundaryQuery, BoundaryRecord, Commit, FiringOutcome, FiringQuery, FiringRecord, FiringTrigger,
    Ledger, Record, Retention, SledLedger, SnapshotRecord,
};

const REACTOR: &str = "pricing";
const ROUNDS: usize = 60;
const VALUE_BYTES: usize = 200;
const KEEP_LAST: u64 = 1_000;

fn value(id: u64) -> Vec<u8> {
    let mut x = id.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..VALUE_BYTES)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn boundary(seq: u64) -> Record {
    Record::Boundary(BoundaryRecord {
        reactor: REACTOR.into(),
        seq,
        source: "quotes".into(),
        received_at_unix_us: 1_700_000_000_000_000 + seq as i64,
        value: value(seq),
    })
}

fn firing(id: u64) -> Record {
    Record::Firing(FiringRecord {
        reactor: REACTOR.into(),
        firing_id: id,
        trigger: FiringTrigger::Criteria,
        inputs: vec![("quotes".into(), id * 4)],
        fired_at_unix_us: 1_700_000_000_000_000 + id as i64,
        duration_ns: 1_000,
        outcome: FiringOutcome::Completed {
            outputs: vec![("report".into(), value(u64::MAX - id))],
        },
    })
}

/// Boundaries (and, a quarter as many, firings) per round before the snapshot.
const PER_ROUND: u64 = 2_400;
/// Records per append before the snapshot: the writer's group commits under load.
const LOADED_APPEND: usize = 300;
/// Records per append in the tail: a quiet reactor.
const QUIET_APPEND: usize = 20;

/// The workload's position: highest boundary seq and firing id so far.
#[derive(Debug, Default, Clone, Copy)]
struct Position {
    seq: u64,
    firing: u64,
}

impl Position {
    /// Appends `boundaries` boundaries, with a firing after every fourth one, `per_append`
    /// records per append.
    async fn append(&mut self, ledger: &SledLedger, boundaries: u64, per_append: usize) {
        let mut batch = Vec::with_capacity(per_append);
        for _ in 0..boundaries {
            self.seq += 1;
            batch.push(boundary(self.seq));
            if self.seq % 4 == 0 {
                self.firing += 1;
                batch.push(firing(self.firing));
            }
            if batch.len() >= per_append {
                ledger
                    .append(&batch, Commit::Buffered)
                    .await
                    .expect("append");
                batch.clear();
            }
        }
        if !batch.is_empty() {
            ledger
                .append(&batch, Commit::Buffered)
                .await
                .expect("append");
        }
    }

    fn snapshot(&self) -> Record {
        Record::Snapshot(SnapshotRecord {
            reactor: REACTOR.into(),
            last_seq: self.seq,
            next_firing_id: self.firing + 1,
            taken_at_unix_us: 1_700_000_000_000_000 + self.seq as i64,
            cache: vec![BoundaryRecord {
                reactor: REACTOR.into(),
                seq: self.seq,
                source: "quotes".into(),
                received_at_unix_us: 0,
                value: value(self.seq),
            }],
            dirty: vec![],
            queue: vec![],
        })
    }
}

/// Bytes under `path` (files of every depth).
fn dir_size(path: &Path) -> u64 {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::read_dir(path)
            .expect("read dir")
            .map(|e| dir_size(&e.expect("dir entry").path()))
            .sum(),
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}

/// One round's sizes on disk.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    /// `SledLedger::size_on_disk` (sled's figure: its log file plus its blobs).
    sled: u64,
    /// Every file under the store's directory.
    dir: u64,
    /// The `blobs/` directory alone.
    blobs: u64,
}

/// Which size of a round to judge.
type Pick = fn(&Sizes) -> u64;

/// What one run measured.
struct Run {
    sizes: Vec<Sizes>,
    end: Position,
    snapshot: Position,
}

/// Tail appended after the snapshot in `round`: usually short (the last 1000 then decide),
/// every tenth round longer than `KEEP_LAST` (then the snapshot decides).
fn tail(round: usize) -> u64 {
    if round % 10 == 9 {
        1_500
    } else {
        200
    }
}

/// The first boundary seq and firing id retention must keep.
fn kept_from(end: Position, snapshot: Position) -> (u64, u64) {
    let b = snapshot.seq.min(end.seq.saturating_sub(KEEP_LAST)) + 1;
    let f = snapshot.firing.min(end.firing.saturating_sub(KEEP_LAST)) + 1;
    (b, f)
}

async fn assert_kept(ledger: &SledLedger, end: Position, snapshot: Position, when: &str) {
    let (b_from, f_from) = kept_from(end, snapshot);
    let seqs: Vec<u64> = ledger
        .boundaries(&BoundaryQuery::reactor(REACTOR))
        .await
        .expect("read boundaries")
        .iter()
        .map(|b| {
            assert_eq!(b.value, value(b.seq), "{when}: boundary {} content", b.seq);
            b.seq
        })
        .collect();
    assert_eq!(
        seqs,
        (b_from..=end.seq).collect::<Vec<_>>(),
        "{when}: boundaries kept"
    );
    let ids: Vec<u64> = ledger
        .firings(&FiringQuery::reactor(REACTOR))
        .await
        .expect("read firings")
        .iter()
        .map(|f| f.firing_id)
        .collect();
    assert_eq!(
        ids,
        (f_from..=end.firing).collect::<Vec<_>>(),
        "{when}: firings kept"
    );
    let snap = ledger
        .snapshot(REACTOR)
        .await
        .expect("read snapshot")
        .expect("a snapshot");
    assert_eq!(
        (snap.last_seq, snap.next_firing_id),
        (snapshot.seq, snapshot.firing + 1),
        "{when}: snapshot"
    );
}

async fn run(path: &Path, retain: bool) -> Run {
    let ledger = SledLedger::open(path).expect("open sled ledger");
    let mut pos = Position::default();
    let mut snapshot = Position::default();
    let mut sizes = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        pos.append(&ledger, PER_ROUND, LOADED_APPEND).await;
        snapshot = pos;
        ledger
            .append(&[pos.snapshot()], Commit::Buffered)
            .await
            .expect("append snapshot");
        pos.append(&ledger, tail(round), QUIET_APPEND).await;
        if retain {
            let report = ledger
                .retain(
                    REACTOR,
                    Retention {
                        keep_last: Some(KEEP_LAST),
                        ..Retention::default()
                    },
                )
                .await
                .expect("retain");
            // From round 5 on, both kinds are past the count limit every round.
            if round >= 5 {
                assert!(report.boundaries_removed > 0, "round {round}: {report:?}");
                assert!(report.firings_removed > 0, "round {round}: {report:?}");
            }
        }
        ledger.flush().await.expect("flush");
        sizes.push(Sizes {
            sled: ledger.size_on_disk().expect("size on disk"),
            dir: dir_size(path),
            blobs: dir_size(&path.join("blobs")),
        });
        if retain && (round % 10 == 9 || round == ROUNDS - 1) {
            assert_kept(&ledger, pos, snapshot, &format!("round {round}")).await;
        }
    }
    Run {
        sizes,
        end: pos,
        snapshot,
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// sled's log segment size as the store records it (`segment_size: N` in its `conf` file).
fn segment_size(path: &Path) -> Option<u64> {
    // The file ends with a binary checksum.
    String::from_utf8_lossy(&std::fs::read(path.join("conf")).ok()?)
        .lines()
        .find_map(|l| l.strip_prefix("segment_size: ")?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_a_long_sled_run_bounded_on_disk() {
    let dir = tempfile::tempdir().expect("temp dir");
    let kept_path = dir.path().join("retained");
    let full_path = dir.path().join("unretained");
    let started = std::time::Instant::now();
    let kept = run(&kept_path, true).await;
    let full = run(&full_path, false).await;

    eprintln!(
        "sled segment size {:?} bytes; MiB per round: sled size_on_disk = log file + blobs/",
        segment_size(&kept_path)
    );
    for (round, (k, f)) in kept.sizes.iter().zip(&full.sizes).enumerate() {
        eprintln!(
            "round {round:2}: retained {:6.2} = log {:6.2} + blobs {:6.2} (dir {:6.2}) | unretained {:6.2} = log {:6.2} + blobs {:6.2}",
            mib(k.sled),
            mib(k.sled.saturating_sub(k.blobs)),
            mib(k.blobs),
            mib(k.dir),
            mib(f.sled),
            mib(f.sled.saturating_sub(f.blobs)),
            mib(f.blobs),
        );
    }
    eprintln!("both runs took {:.1} s", started.elapsed().as_secs_f64());

    // Every record that must stay is there after reopening the retained store too, and the
    // unretained run kept everything.
    let reopened = SledLedger::open(&kept_path).expect("reopen");
    assert_kept(&reopened, kept.end, kept.snapshot, "after reopening").await;
    let unretained = SledLedger::open(&full_path).expect("reopen unretained");
    for (from, expected) in [(0, 1), (full.end.seq - 2, full.end.seq - 2)] {
        let first = unretained
            .boundaries(&BoundaryQuery {
                from_seq: Some(from),
                limit: Some(1),
                ..BoundaryQuery::reactor(REACTOR)
            })
            .await
            .expect("read boundaries");
        assert_eq!(first.first().map(|b| b.seq), Some(expected));
    }

    let max_over = |sizes: &[Sizes], rounds: std::ops::Range<usize>, pick: Pick| {
        sizes[rounds].iter().map(pick).max().unwrap_or(0)
    };
    // The median damps sled's steps (it frees and truncates log segments when its cleaner
    // gets to them), so that a steady leak shows against that noise.
    let median_over = |sizes: &[Sizes], rounds: std::ops::Range<usize>, pick: Pick| {
        let mut v: Vec<u64> = sizes[rounds].iter().map(pick).collect();
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or(0)
    };
    let picks: [(&str, Pick); 2] = [("size_on_disk", |s| s.sled), ("directory size", |s| s.dir)];
    let mut failures = Vec::new();
    for (what, pick) in picks {
        let early_max = max_over(&kept.sizes, 10..20, pick);
        let late_max = max_over(&kept.sizes, 40..ROUNDS, pick);
        let growth = median_over(&kept.sizes, 50..60, pick).saturating_sub(median_over(
            &kept.sizes,
            10..20,
            pick,
        ));
        let unretained_early = pick(&full.sizes[19]);
        let unretained_end = pick(&full.sizes[ROUNDS - 1]);
        let unretained_growth = median_over(&full.sizes, 50..60, pick).saturating_sub(median_over(
            &full.sizes,
            10..20,
            pick,
        ));
        eprintln!(
            "{what}: retained max rounds 10-19 {:.2} MiB, max rounds 40-59 {:.2} MiB (x{:.2}), median growth rounds 10-19 to 50-59 {:.2} MiB ({:.1}% of unretained); unretained round 19 {:.2} MiB, end {:.2} MiB, median growth {:.2} MiB",
            mib(early_max),
            mib(late_max),
            late_max as f64 / early_max.max(1) as f64,
            mib(growth),
            100.0 * growth as f64 / unretained_growth.max(1) as f64,
            mib(unretained_early),
            mib(unretained_end),
            mib(unretained_growth),
        );
        // Without retention the store does grow: the comparisons mean something.
        assert!(
            unretained_end > 2 * unretained_early,
            "{what}: the unretained run did not grow ({unretained_early} -> {unretained_end} bytes)"
        );
        // Under retention the store does not keep climbing: from the early rounds to the
        // late ones it grows by less than a tenth of what it grows without retention...
        if growth * 10 > unretained_growth {
            failures.push(format!(
                "{what} keeps growing under retention: its median grew {growth} bytes from rounds 10-19 to 50-59, against {unretained_growth} without retention"
            ));
        }
        // ... its late peaks stay within 2x of its early ones...
        if late_max > early_max * 2 {
            failures.push(format!(
                "{what} keeps growing under retention: max {late_max} bytes in rounds 40-59 against {early_max} in rounds 10-19"
            ));
        }
        // ... and well below the same run without retention.
        if late_max * 2 > unretained_end {
            failures.push(format!(
                "{what} under retention ({late_max} bytes in rounds 40-59) is not well below the unretained run ({unretained_end} bytes)"
            ));
        }
    }
    let blobs_end = kept.sizes[ROUNDS - 1].blobs;
    assert!(
        failures.is_empty(),
        "{}; of the last round's {} bytes, {blobs_end} are sled blob files (sled 0.34 does not always delete a replaced page's blob)",
        failures.join("; "),
        kept.sizes[ROUNDS - 1].sled
    );
}

// A large snapshot (a long Sequential queue) replaced again and again must not leave blob
// files behind: sled 0.34 never deletes a replaced blob page, so snapshots are stored in
// small pieces.
#[tokio::test]
async fn large_snapshots_replaced_repeatedly_stay_bounded() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("ledger");
    let ledger = SledLedger::open(&path).expect("open");
    let queue: Vec<BoundaryRecord> = (1..=2_000u64)
        .map(|seq| match boundary(seq) {
            Record::Boundary(b) => b,
            _ => unreachable!("boundary() makes boundaries"),
        })
        .collect();
    let mut sizes = Vec::new();
    let mut written = 0u64;
    for round in 1..=120u64 {
        let snapshot = SnapshotRecord {
            reactor: REACTOR.into(),
            last_seq: 2_000 * round,
            next_firing_id: round,
            taken_at_unix_us: round as i64,
            cache: Vec::new(),
            dirty: vec!["quotes".into()],
            queue: queue.clone(),
        };
        ledger
            .append(&[Record::Snapshot(snapshot.clone())], Commit::Durable)
            .await
            .expect("append");
        assert_eq!(
            ledger.snapshot(REACTOR).await.expect("read"),
            Some(snapshot),
            "round {round}: the snapshot reads back whole"
        );
        written += cloacina_codec::encode(&queue).map_or(0, |b| b.len() as u64);
        sizes.push(dir_size(&path));
    }
    assert_eq!(dir_size(&path.join("blobs")), 0, "no blob files");
    // A log-structured store grows until its segments are cleaned; then it levels off.
    let early = sizes[20..40].iter().max().copied().unwrap_or(0);
    let late = sizes[100..].iter().max().copied().unwrap_or(0);
    eprintln!("snapshot replacements: {written} bytes written; on disk {early} (rounds 20-40), {late} (100-120)");
    assert!(
        late <= early * 2 && late < written / 4,
        "120 replacements of a ~450 KB snapshot ({written} bytes written): {early} bytes on disk in rounds 20-40, {late} in 100-120"
    );
}

/// One retention pass much larger than one sled write (which takes 64 chunks): every record
/// under the cut goes, every record above it stays, in order, also after reopening.
#[tokio::test]
async fn a_retention_pass_larger_than_one_write_removes_exactly_the_cut() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("ledger");
    const N: u64 = 20_000;
    const KEEP: u64 = 100;
    {
        let ledger = SledLedger::open(&path).expect("open");
        let mut records: Vec<Record> = (1..=N).map(boundary).collect();
        // Retention never removes what the latest snapshot does not cover.
        records.push(
            Position {
                seq: N,
                ..Position::default()
            }
            .snapshot(),
        );
        ledger
            .append(&records, Commit::Durable)
            .await
            .expect("append");
        let report = ledger
            .retain(
                REACTOR,
                Retention {
                    keep_last: Some(KEEP),
                    ..Retention::default()
                },
            )
            .await
            .expect("retain");
        assert_eq!(report.boundaries_removed, N - KEEP, "{report:?}");
        ledger.flush().await.expect("flush");
    }
    let ledger = SledLedger::open(&path).expect("reopen");
    let seqs: Vec<u64> = ledger
        .boundaries(&BoundaryQuery::reactor(REACTOR))
        .await
        .expect("read")
        .iter()
        .map(|b| {
            assert_eq!(b.value, value(b.seq), "boundary {} content", b.seq);
            b.seq
        })
        .collect();
    assert_eq!(seqs, (N - KEEP + 1..=N).collect::<Vec<_>>());
}
