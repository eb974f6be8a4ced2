//! Benchmark harness for the ledger: W concurrent writers appending boundary records through
//! one shared [`LedgerWriter`] (group commit).
//!
//! ```text
//! cargo run --release --example ledger_bench -- --url sled:///tmp/lb --mode sync
//! cargo run --release --example ledger_bench -- --url memory:// --mode batched --records 1000000
//! ```
//!
//! Options: `--url URL` (required: `memory://`, `sled://PATH` or a path, `sqlite://PATH`,
//! `postgres://...`), `--mode batched|sync` (required), `--writers W` (64), `--seconds S` (5;
//! fractions allowed), `--records N` (stop after N records instead of a duration),
//! `--value-bytes B` (200).
//!
//! - **sync**: the writer commits [`Commit::Durable`]; each task calls `write_and_wait`, so a
//!   record counts once its append has returned durable. Commit latency: from the call to its
//!   return, for every record.
//! - **batched**: the writer commits [`Commit::Buffered`]; each task calls `write` (returns
//!   once queued). Records count when `close()` (which appends the rest and flushes) has
//!   returned, and the elapsed time includes it. Its latency is *queue-to-append*, not a
//!   commit: every 64th record is queued with `write_acked` and timed from the call to its
//!   acknowledgement (its batch appended, buffered). With producers writing flat out into a
//!   deep queue it is mostly time spent waiting in the queue. JSON keys: `p50_commit_us`..
//!   (sync) or `p50_queue_to_append_us`.. (batched), and `latency_measures` says which.
//!
//! Every run uses fresh reactor names (`bench-RUNID-W`), so it can run on a store left by an
//! earlier run. Human-readable lines go to stderr; the last stdout line is one JSON object.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloacina::ledger::{
    self, BoundaryRecord, Commit, LedgerError, LedgerWriter, Record, WriterOptions,
};
use tokio::task::JoinSet;

const USAGE: &str = "usage: ledger_bench --url URL --mode batched|sync [--writers W] \
[--seconds S | --records N] [--value-bytes B]";

/// Every this many records, a batched writer samples its commit latency.
const SAMPLE_EVERY: u64 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Batched,
    Sync,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::Batched => "batched",
            Self::Sync => "sync",
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Stop {
    After(Duration),
    Records(u64),
}

#[derive(Debug, Clone)]
struct Args {
    url: String,
    mode: Mode,
    writers: usize,
    stop: Stop,
    value_bytes: usize,
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Args, String> {
    let mut args = args.into_iter();
    let mut url = None;
    let mut mode = None;
    let mut writers = 64usize;
    let mut seconds: Option<f64> = None;
    let mut records: Option<u64> = None;
    let mut value_bytes = 200usize;
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--url" => url = Some(value("--url")?),
            "--mode" => {
                mode = Some(match value("--mode")?.as_str() {
                    "batched" => Mode::Batched,
                    "sync" => Mode::Sync,
                    other => return Err(format!("--mode is `batched` or `sync`, not `{other}`")),
                })
            }
            "--writers" => {
                writers = value("--writers")?
                    .parse()
                    .ok()
                    .filter(|w| (1..=100_000).contains(w))
                    .ok_or("--writers takes a whole number from 1 to 100000")?;
            }
            "--seconds" => {
                seconds = Some(
                    value("--seconds")?
                        .parse::<f64>()
                        .ok()
                        .filter(|s| s.is_finite() && *s > 0.0 && *s <= 86_400.0)
                        .ok_or("--seconds takes a number of seconds > 0 (at most 86400)")?,
                );
            }
            "--records" => {
                records = Some(
                    value("--records")?
                        .parse()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or("--records takes a whole number > 0")?,
                );
            }
            "--value-bytes" => {
                value_bytes = value("--value-bytes")?
                    .parse()
                    .ok()
                    .filter(|b| *b <= 16 << 20)
                    .ok_or("--value-bytes takes a whole number of bytes (at most 16 MiB)")?;
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    let stop = match (seconds, records) {
        (Some(_), Some(_)) => return Err("give --seconds or --records, not both".into()),
        (None, Some(n)) => Stop::Records(n),
        (Some(s), None) => Stop::After(Duration::from_secs_f64(s)),
        (None, None) => Stop::After(Duration::from_secs(5)),
    };
    Ok(Args {
        url: url.ok_or("--url is required")?,
        mode: mode.ok_or("--mode is required")?,
        writers,
        stop,
        value_bytes,
    })
}

fn percentile_us(sorted_ns: &[u64], p: f64) -> f64 {
    if sorted_ns.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted_ns.len() as f64 - 1.0)).round() as usize;
    sorted_ns[rank.min(sorted_ns.len() - 1)] as f64 / 1000.0
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn load1() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A value of `len` bytes that differs per writer (no store sees runs of zeros).
fn value_bytes(len: usize, writer: usize) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (writer as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// What one writer task did.
#[derive(Debug, Default)]
struct TaskResult {
    /// Records handed over (sync: acknowledged durable).
    records: u64,
    /// Commit latencies, ns (sync: every record; batched: the samples).
    latencies_ns: Vec<u64>,
}

/// Decides, per record, whether the task goes on.
enum Budget {
    Until(Instant),
    Records { limit: u64, taken: AtomicU64 },
}

impl Budget {
    fn take(&self) -> bool {
        match self {
            Self::Until(deadline) => Instant::now() < *deadline,
            Self::Records { limit, taken } => taken.fetch_add(1, Ordering::Relaxed) < *limit,
        }
    }
}

async fn writer_task(
    writer: Arc<LedgerWriter>,
    mode: Mode,
    reactor: String,
    value: Vec<u8>,
    budget: Arc<Budget>,
) -> Result<TaskResult, String> {
    let mut out = TaskResult::default();
    let mut samples: JoinSet<Result<u64, String>> = JoinSet::new();
    let mut seq = 0u64;
    while budget.take() {
        seq += 1;
        let record = Record::Boundary(BoundaryRecord {
            reactor: reactor.clone(),
            seq,
            source: "bench".into(),
            received_at_unix_us: ledger::now_unix_us(),
            value: value.clone(),
        });
        match mode {
            Mode::Sync => {
                let t0 = Instant::now();
                writer
                    .write_and_wait(record)
                    .await
                    .map_err(|e| format!("{reactor}: durable write {seq} failed: {e}"))?;
                out.latencies_ns.push(nanos(t0.elapsed()));
            }
            Mode::Batched if seq % SAMPLE_EVERY == 0 => {
                let t0 = Instant::now();
                let (ack, done) = tokio::sync::oneshot::channel();
                writer
                    .write_acked(record, ack)
                    .await
                    .map_err(|(e, _)| format!("{reactor}: write {seq} failed: {e}"))?;
                samples.spawn(async move {
                    match done.await {
                        Ok(Ok(())) => Ok(nanos(t0.elapsed())),
                        Ok(Err(e)) => Err(format!("record not appended: {e}")),
                        Err(_) => Err("writer dropped an acknowledgement".into()),
                    }
                });
            }
            Mode::Batched => writer
                .write(record)
                .await
                .map_err(|e| format!("{reactor}: write {seq} failed: {e}"))?,
        }
        out.records += 1;
    }
    while let Some(sample) = samples.join_next().await {
        out.latencies_ns
            .push(sample.map_err(|e| format!("sample task failed: {e}"))??);
    }
    Ok(out)
}

async fn run(args: Args) -> Result<(), String> {
    let store = ledger::open(&args.url)
        .await
        .map_err(|e: LedgerError| format!("cannot open `{}`: {e}", args.url))?;
    let backend = store.backend();
    let run_id = format!("{}-{}", ledger::now_unix_us(), std::process::id());
    let writer = Arc::new(LedgerWriter::spawn(
        Arc::clone(&store),
        WriterOptions {
            capacity: 65_536,
            commit: match args.mode {
                Mode::Sync => Commit::Durable,
                Mode::Batched => Commit::Buffered,
            },
            ..WriterOptions::default()
        },
    ));
    let load_before = load1();
    let start = Instant::now();
    let budget = Arc::new(match args.stop {
        Stop::After(d) => Budget::Until(start + d),
        Stop::Records(limit) => Budget::Records {
            limit,
            taken: AtomicU64::new(0),
        },
    });
    let mut tasks = JoinSet::new();
    for w in 0..args.writers {
        tasks.spawn(writer_task(
            Arc::clone(&writer),
            args.mode,
            format!("bench-{run_id}-{w}"),
            value_bytes(args.value_bytes, w),
            Arc::clone(&budget),
        ));
    }
    let mut submitted = 0u64;
    let mut latencies = Vec::new();
    let mut errors = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(result)) => {
                submitted += result.records;
                latencies.extend(result.latencies_ns);
            }
            Ok(Err(e)) => errors.push(e),
            Err(e) => errors.push(format!("writer task failed: {e}")),
        }
    }
    let queued_s = start.elapsed().as_secs_f64();
    // `close` consumes the writer and its status: wait until everything handed over has been
    // appended (or given up on) so the status read here is final, then close (flush).
    loop {
        let s = writer.status();
        if s.written + s.lost_records >= submitted || writer.is_closed() {
            break;
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let status = writer.status();
    let writer = Arc::try_unwrap(writer)
        .map_err(|_| "a writer task still holds the writer after joining".to_string())?;
    let report = writer.close().await;
    let elapsed = start.elapsed();
    let elapsed_s = elapsed.as_secs_f64();

    latencies.sort_unstable();
    let written = report.written;
    let records_per_s = written as f64 / elapsed_s;
    let (p50, p90, p99) = (
        percentile_us(&latencies, 50.0),
        percentile_us(&latencies, 90.0),
        percentile_us(&latencies, 99.0),
    );
    let max = latencies.last().map_or(0.0, |v| *v as f64 / 1000.0);
    let size_bytes = store_size(&args.url);
    eprintln!(
        "{backend} {}: {written} records by {} writers in {elapsed_s:.3} s ({queued_s:.3} s queueing) \
         = {records_per_s:.0} records/s; {} batches ({:.1} records/batch), {} flushes",
        args.mode.name(),
        args.writers,
        status.batches,
        written as f64 / status.batches.max(1) as f64,
        status.flushes
    );
    let (latency_key, latency_measures) = match args.mode {
        Mode::Sync => (
            "commit",
            "commit: from write_and_wait to its durable append, every record",
        ),
        Mode::Batched => (
            "queue_to_append",
            "queue to append: from write_acked to its batch appended (buffered, not durable), \
             every 64th record; mostly time waiting in the writer's queue",
        ),
    };
    eprintln!(
        "{latency_measures}; over {} samples: p50 {p50:.1} us, p90 {p90:.1} us, p99 {p99:.1} us, \
         max {max:.1} us",
        latencies.len(),
    );
    if let Some(bytes) = size_bytes {
        eprintln!("store on disk: {:.1} MiB", bytes as f64 / (1 << 20) as f64);
    }
    let mut json = serde_json::json!({
        "backend": backend,
        "mode": args.mode.name(),
        "writers": args.writers,
        "records": written,
        "records_per_s": records_per_s.round() as u64,
        "latency_measures": latency_measures,
        "latency_samples": latencies.len(),
        "elapsed_s": elapsed_s,
        "queued_s": queued_s,
        "value_bytes": args.value_bytes,
        "batches": status.batches,
        "flushes": status.flushes,
        "failed_appends": status.failed_appends,
        "submitted": submitted,
        "lost": report.lost,
        "load1_before": load_before,
        "store_bytes": size_bytes,
    });
    if let Some(fields) = json.as_object_mut() {
        for (name, value) in [("p50", p50), ("p90", p90), ("p99", p99), ("max", max)] {
            fields.insert(format!("{name}_{latency_key}_us"), value.into());
        }
    }
    println!("{json}");

    if let Some(e) = &report.first_error {
        errors.push(format!("writer error: {e}"));
    }
    if report.lost > 0 {
        errors.push(format!("{} record(s) lost", report.lost));
    }
    if report.written != submitted {
        errors.push(format!(
            "{submitted} record(s) handed over but {} written",
            report.written
        ));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// Bytes under the store's directory or file, for file-based URLs.
fn store_size(url: &str) -> Option<u64> {
    let path = match url.split_once("://") {
        Some(("sled", p)) => p,
        Some(("sqlite", p)) => p.split('?').next().unwrap_or(p),
        Some(_) => return None,
        None => url,
    };
    fn walk(p: &std::path::Path) -> u64 {
        match std::fs::symlink_metadata(p) {
            Ok(m) if m.is_dir() => std::fs::read_dir(p)
                .map(|entries| entries.flatten().map(|e| walk(&e.path())).sum())
                .unwrap_or(0),
            Ok(m) => m.len(),
            Err(_) => 0,
        }
    }
    let path = std::path::Path::new(path);
    let mut total = walk(path);
    // SQLite keeps its write-ahead log beside the file.
    for suffix in ["-wal", "-shm"] {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        total += walk(std::path::Path::new(&side));
    }
    path.exists().then_some(total)
}

fn main() {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(message) => {
            eprintln!("ledger_bench: {message}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ledger_bench: cannot start the tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(message) = runtime.block_on(run(args)) {
        eprintln!("ledger_bench: FAILED: {message}");
        std::process::exit(1);
    }
}
