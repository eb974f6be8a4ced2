//! SIGKILL crash tests: a reactor recording to a real ledger (sled, SQLite, PostgreSQL) is
//! killed at random moments while numbered events are pushed into it. Every restart must
//! restore exactly the state the ledger describes, and across all restarts:
//! - every boundary acknowledged by a `Durability::Sync` sender is recorded, exactly once;
//! - boundary sequence numbers are exactly `1..=max` (they continue across restarts) and
//!   firing ids exactly `1..=n`;
//! - every recorded boundary up to the newest fired one has been fired (at least once across
//!   crashes; since what survives a crash is a prefix of what happened, exactly once in the
//!   record), in order, with the right value;
//! - after a final graceful run every recorded boundary has fired, and a restart from the
//!   final snapshot restores the same state.
//!
//! Rounds vary, all drawn from one seeded PRNG: most wait for `ready`, push as fast as the
//! child takes numbers and kill it 5-300 ms later; some pause the reactor first (boundaries
//! are recorded but not fired, so the next restart restores and re-fires a long queue); some
//! kill the child 0-40 ms after its start, during recovery or the re-firing of its queue; the
//! node sometimes waits 1-2 ms per firing. `Sync` children snapshot every 1000 boundaries, so
//! restarts from a snapshot plus the boundaries after it are covered too.
//!
//! With `Durability::Batched` a `send` returns once the boundary is queued, so a kill may lose
//! acknowledged boundaries: `batched_loss_window_sled` measures how many (and prints one
//! `batched_loss_window {...}` line), asserting only that what survives is a prefix.
//!
//! The test binary is its own child process: started with `CLOACINA_CRASH_CHILD=<ledger url>`
//! (and `CLOACINA_CRASH_MODE=sync|batched`), the `crash_child` test runs a reactor that reads
//! numbers from stdin, sends each and prints `ack N` once the send returned; without the
//! variable `crash_child` does nothing.
//!
//! Environment: `CLOACINA_CRASH_SEED=<seed>` replays the kill delays of a failed run (the seed
//! is printed); `CLOACINA_CRASH_ROUNDS=<n>` sets the number of kills (default 12);
//! `CLOACINA_TEST_POSTGRES_URL` enables the PostgreSQL test (skipped without it).

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cloacina::graph::{codec, source, GraphBuilder};
use cloacina::ledger::{BoundaryQuery, FiringOutcome, FiringQuery, FiringTrigger};
use cloacina::reactor::{Durability, InputStrategy, ReactorHandle};
use serde_json::{json, Value};

const CHILD_ENV: &str = "CLOACINA_CRASH_CHILD";
const MODE_ENV: &str = "CLOACINA_CRASH_MODE";
const NODE_US_ENV: &str = "CLOACINA_CRASH_NODE_US";
const PAUSE_ENV: &str = "CLOACINA_CRASH_PAUSE";
const SEED_ENV: &str = "CLOACINA_CRASH_SEED";
const ROUNDS_ENV: &str = "CLOACINA_CRASH_ROUNDS";
/// Marks the child's protocol lines among libtest's own output.
const MARK: &str = "@crash ";
const REACTOR: &str = "crash";
const SOURCE: &str = "n";
const NODE: &str = "echo";
const DEFAULT_ROUNDS: usize = 12;
/// Kill delay after the child is ready, in milliseconds (inclusive range).
const KILL_DELAY_MS: (u64, u64) = (5, 300);
/// Generous limits, only so that a broken child cannot hang the test.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);
/// One round in this many kills the child soon after it starts, ready or not (a crash during
/// recovery and its re-firing); the others wait for `ready` and push events.
const EARLY_KILL_ONE_IN: u64 = 5;
/// Delay of such an early kill after the spawn, in milliseconds (inclusive range).
const EARLY_KILL_MS: (u64, u64) = (0, 40);
/// Cost of one firing in the child, in microseconds, drawn per round: a slow node leaves
/// durable boundaries not yet fired (or whose firing is not yet recorded) at the kill, so the
/// restart has a queue to restore and re-fire.
const NODE_US: [u64; 5] = [0, 0, 0, 1000, 2000];
/// One pushing round in this many pauses the reactor after `ready`: boundaries are recorded
/// (durably, for `Sync`) but not fired, so the next restart restores a long queue and fires
/// it in chunks (and a later kill may land in the middle of that).
const PAUSE_ONE_IN: u64 = 4;
/// Numbers written to the child's stdin per write.
const PUSH_CHUNK: u64 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Sync,
    Batched,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::Sync => "sync",
            Self::Batched => "batched",
        }
    }

    fn durability(self) -> Durability {
        match self {
            Self::Sync => Durability::Sync,
            Self::Batched => Durability::Batched,
        }
    }

    /// Snapshot interval of the child's reactor. `Sync` snapshots often so that recovery from
    /// a snapshot plus the boundaries after it is exercised on every backend; `Batched` keeps
    /// the default (65,536 per process, not reached before a kill: recovery replays every
    /// boundary since the last graceful stop).
    fn snapshot_every(self) -> Option<u64> {
        match self {
            Self::Sync => Some(1000),
            Self::Batched => None,
        }
    }

    /// Sends in flight at once in the child. `Sync` sends wait for durability, so many run
    /// at once (and share flushes); `Batched` sends go one after another so that pushes,
    /// acknowledgements and sequence numbers are all in number order.
    fn in_flight(self) -> usize {
        match self {
            Self::Sync => 64,
            Self::Batched => 1,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Child mode
// ---------------------------------------------------------------------------------------

/// The child process's body; does nothing unless started by a parent test below.
#[test]
fn crash_child() {
    let Ok(url) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mode = match std::env::var(MODE_ENV).as_deref() {
        Ok("batched") => Mode::Batched,
        _ => Mode::Sync,
    };
    let (out, lines) = mpsc::channel::<String>();
    let printer = spawn_printer(lines);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(reason) = runtime.block_on(child_run(&url, mode, out.clone())) {
        let _ = out.send(format!("fatal {reason}"));
    }
    drop(out);
    runtime.shutdown_timeout(Duration::from_secs(5));
    let _ = printer.join();
}

/// Writes protocol lines to stdout from one thread, each after the event it reports
/// happened, flushing as soon as no more lines are waiting.
fn spawn_printer(lines: mpsc::Receiver<String>) -> JoinHandle<()> {
    thread::spawn(move || {
        let stdout = std::io::stdout();
        let mut chunk = String::new();
        let push = |chunk: &mut String, line: &str| {
            chunk.push_str(MARK);
            chunk.push_str(line);
            chunk.push('\n');
        };
        while let Ok(line) = lines.recv() {
            chunk.clear();
            push(&mut chunk, &line);
            while chunk.len() < 16 * 1024 {
                match lines.try_recv() {
                    Ok(line) => push(&mut chunk, &line),
                    Err(_) => break,
                }
            }
            let mut out = stdout.lock();
            if out
                .write_all(chunk.as_bytes())
                .and_then(|()| out.flush())
                .is_err()
            {
                return;
            }
        }
    })
}

/// The child's node cost (set once, from [`NODE_US_ENV`]).
static NODE_COST: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();

/// The child's node: returns its input, after waiting [`NODE_COST`] (without blocking the
/// thread, so the ledger writer runs meanwhile).
async fn echo(n: Option<&u64>) -> u64 {
    let cost = NODE_COST.get().copied().unwrap_or_default();
    if !cost.is_zero() {
        tokio::time::sleep(cost).await;
    }
    n.copied().unwrap_or(0)
}

async fn child_run(url: &str, mode: Mode, out: mpsc::Sender<String>) -> Result<(), String> {
    use tokio::io::AsyncBufReadExt;

    let ledger = cloacina::ledger::open(url)
        .await
        .map_err(|e| format!("cannot open the ledger: {e}"))?;
    let cost = std::env::var(NODE_US_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::ZERO, Duration::from_micros);
    let _ = NODE_COST.set(cost);
    let graph = GraphBuilder::new("crash")
        .async_node(NODE, (source::<u64>(SOURCE),), echo)
        .build()
        .map_err(|e| format!("graph: {e}"))?;
    let mut builder = ReactorHandle::builder(Arc::new(graph))
        .name(REACTOR)
        .strategy(InputStrategy::Sequential)
        .ledger(ledger, 4096)
        .durability(mode.durability());
    if let Some(every) = mode.snapshot_every() {
        builder = builder.snapshot_every(every);
    }
    let reactor = builder.spawn().map_err(|e| format!("spawn: {e}"))?;
    let state = reactor
        .state()
        .await
        .map_err(|e| format!("state: {e} (health: {:?})", reactor.health()))?;
    let stats = reactor.stats();
    let pair = |b: &cloacina::graph::Boundary| -> Result<[u64; 2], String> {
        let v = b
            .get::<u64>()
            .ok_or_else(|| format!("boundary {} is not a u64", b.seq()))?;
        Ok([b.seq(), *v])
    };
    let cached = state.cache.boundary(SOURCE).map(pair).transpose()?;
    let queued = state
        .queued
        .iter()
        .map(|(_, b)| pair(b))
        .collect::<Result<Vec<_>, _>>()?;
    let last_seq = queued.last().or(cached.as_ref()).map_or(0, |&[seq, _]| seq);
    let ready = json!({
        "last_seq": last_seq,
        "cached": cached,
        "queued": queued,
        "fires": state.fires,
        "recovered": stats.recovered_boundaries,
        "health": format!("{:?}", state.health),
    });
    out.send(format!("ready {ready}"))
        .map_err(|_| "printer gone".to_owned())?;
    if std::env::var(PAUSE_ENV).is_ok_and(|v| v == "1") {
        reactor.pause().await.map_err(|e| format!("pause: {e}"))?;
    }

    let sender = reactor
        .sender::<u64>(SOURCE)
        .map_err(|e| format!("sender: {e}"))?;
    let in_flight = mode.in_flight();
    let permits = Arc::new(tokio::sync::Semaphore::new(in_flight));
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await.map_err(|e| format!("stdin: {e}"))? {
        let n: u64 = line
            .trim()
            .parse()
            .map_err(|e| format!("stdin line `{line}`: {e}"))?;
        let permit = Arc::clone(&permits)
            .acquire_owned()
            .await
            .map_err(|e| format!("semaphore: {e}"))?;
        let (sender, out) = (sender.clone(), out.clone());
        let send = async move {
            let line = match sender.send(n).await {
                Ok(()) => format!("ack {n}"),
                Err(e) => format!("err {n} {e}"),
            };
            let _ = out.send(line);
            drop(permit);
        };
        if in_flight == 1 {
            send.await;
        } else {
            tokio::spawn(send);
        }
    }
    // stdin closed: a graceful stop (fires everything owed, writes a snapshot).
    let all = u32::try_from(in_flight).map_err(|e| e.to_string())?;
    let _all = permits
        .acquire_many(all)
        .await
        .map_err(|e| format!("semaphore: {e}"))?;
    let report = reactor
        .shutdown()
        .await
        .map_err(|e| format!("shutdown: {e}"))?;
    let done = json!({
        "fires": report.fires,
        "boundaries": report.boundaries,
        "unfired_queued": report.unfired_queued,
        "ledger_records": report.ledger_records,
        "ledger_lost": report.ledger_lost,
        "ledger_error": report.ledger_error,
    });
    out.send(format!("done {done}"))
        .map_err(|_| "printer gone".to_owned())?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Parent side: the child process
// ---------------------------------------------------------------------------------------

#[derive(Debug)]
enum Msg {
    Ready(Value),
    Ack(u64),
    Err(u64, String),
    Done(Value),
    Fatal(String),
}

fn parse_msg(line: &str) -> Result<Msg, String> {
    let (kind, rest) = line.split_once(' ').unwrap_or((line, ""));
    let number = |s: &str| s.parse::<u64>().map_err(|e| format!("`{line}`: {e}"));
    let json = |s: &str| serde_json::from_str::<Value>(s).map_err(|e| format!("`{line}`: {e}"));
    match kind {
        "ready" => Ok(Msg::Ready(json(rest)?)),
        "ack" => Ok(Msg::Ack(number(rest)?)),
        "err" => {
            let (n, reason) = rest.split_once(' ').unwrap_or((rest, ""));
            Ok(Msg::Err(number(n)?, reason.to_owned()))
        }
        "done" => Ok(Msg::Done(json(rest)?)),
        "fatal" => Ok(Msg::Fatal(rest.to_owned())),
        _ => Err(format!("unknown child line `{line}`")),
    }
}

/// A running child; killed (and reaped) when dropped, so a failing test leaves none behind.
struct ChildProc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<(Instant, String)>,
}

impl ChildProc {
    fn spawn(url: &str, mode: Mode, node_us: u64, paused: bool) -> Self {
        let exe = std::env::current_exe().expect("path of the test binary");
        let mut child = Command::new(exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, url)
            .env(MODE_ENV, mode.name())
            .env(NODE_US_ENV, node_us.to_string())
            .env(PAUSE_ENV, if paused { "1" } else { "0" })
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the child process");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("child stdout is piped");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(i) = line.find(MARK) {
                    let msg = line[i + MARK.len()..].to_owned();
                    if tx.send((Instant::now(), msg)).is_err() {
                        break;
                    }
                }
            }
        });
        Self {
            child,
            stdin,
            lines,
        }
    }

    /// The next protocol line before `deadline`: `Ok(None)` on timeout, `Err` once the child's
    /// stdout is closed.
    fn next(&self, deadline: Instant) -> Result<Option<(Instant, Msg)>, ()> {
        let wait = deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(wait) {
            Ok((at, line)) => match parse_msg(&line) {
                Ok(msg) => Ok(Some((at, msg))),
                Err(e) => panic!("{e}"),
            },
            Err(mpsc::RecvTimeoutError::Timeout) => Ok(None),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(()),
        }
    }

    fn wait_ready(&mut self) -> Value {
        let deadline = Instant::now() + READY_TIMEOUT;
        match self.next(deadline) {
            Ok(Some((_, Msg::Ready(v)))) => v,
            Ok(Some((_, Msg::Fatal(reason)))) => panic!("child failed to start: {reason}"),
            Ok(Some((_, other))) => panic!("child: expected `ready`, got {other:?}"),
            Ok(None) => panic!("child not ready within {READY_TIMEOUT:?}"),
            Err(()) => panic!(
                "child exited before `ready` (status {:?})",
                self.child.wait()
            ),
        }
    }

    /// Closes stdin (the child then stops gracefully) and waits for its `done` report and exit.
    fn finish(&mut self) -> Value {
        drop(self.stdin.take());
        let deadline = Instant::now() + EXIT_TIMEOUT;
        let mut done = None;
        loop {
            match self.next(deadline) {
                Ok(Some((_, Msg::Done(v)))) => done = Some(v),
                Ok(Some((_, Msg::Fatal(reason)))) => panic!("child failed: {reason}"),
                Ok(Some((_, other))) => panic!("child: unexpected {other:?} while stopping"),
                Ok(None) => panic!("child did not stop within {EXIT_TIMEOUT:?}"),
                Err(()) => break,
            }
        }
        let status = self.child.wait().expect("wait for the child");
        assert!(status.success(), "child exited with {status}");
        done.expect("the child reported `done` before exiting")
    }

    /// SIGKILL (on Unix), then reap.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Writes consecutive numbers from `start` into the child's stdin as fast as it takes them,
/// until told to stop or the pipe breaks (the child was killed). Joining it gives the first
/// number never written, so no number is ever reused.
struct Pusher {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<u64>,
}

impl Pusher {
    fn start(mut stdin: ChildStdin, start: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let mut next = start;
            let mut chunk = String::new();
            while !stopping.load(Ordering::Relaxed) {
                chunk.clear();
                for n in next..next + PUSH_CHUNK {
                    chunk.push_str(&n.to_string());
                    chunk.push('\n');
                }
                next += PUSH_CHUNK;
                if stdin.write_all(chunk.as_bytes()).is_err() {
                    break;
                }
            }
            next
        });
        Self { stop, thread }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("pusher thread")
    }
}

// ---------------------------------------------------------------------------------------
// Parent side: reading and checking the ledger
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
struct Fired {
    id: u64,
    trigger: FiringTrigger,
    inputs: Vec<(String, u64)>,
    output: Option<u64>,
}

/// What the ledger holds for the test reactor.
#[derive(Debug, Clone, Default)]
struct View {
    /// `(seq, value)`, in the order read (sequence order).
    boundaries: Vec<(u64, u64)>,
    firings: Vec<Fired>,
    /// `(last_seq, queue length)` of the latest snapshot.
    snapshot: Option<(u64, usize)>,
}

impl View {
    fn max_seq(&self) -> u64 {
        self.boundaries.len() as u64
    }

    fn value(&self, seq: u64) -> Option<u64> {
        let i = usize::try_from(seq.checked_sub(1)?).ok()?;
        self.boundaries.get(i).map(|&(_, v)| v)
    }

    /// Sequence number of the newest boundary the last firing consumed (0: none).
    fn horizon(&self) -> u64 {
        self.firings
            .last()
            .and_then(|f| f.inputs.iter().map(|(_, s)| *s).max())
            .unwrap_or(0)
    }
}

/// Reads the ledger with a handle of its own, dropped before returning (sled allows one
/// process at a time, so this runs only while no child does).
fn read_view(url: &str) -> View {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let ledger = cloacina::ledger::open(url)
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
        let boundaries = ledger
            .boundaries(&BoundaryQuery::reactor(REACTOR))
            .await
            .expect("read boundaries")
            .into_iter()
            .map(|b| {
                let v = codec::decode::<u64>(&b.value)
                    .unwrap_or_else(|e| panic!("boundary {} does not decode: {e}", b.seq));
                (b.seq, v)
            })
            .collect();
        let firings = ledger
            .firings(&FiringQuery::reactor(REACTOR))
            .await
            .expect("read firings")
            .into_iter()
            .map(|f| Fired {
                id: f.firing_id,
                trigger: f.trigger,
                inputs: f.inputs,
                output: match f.outcome {
                    FiringOutcome::Completed { outputs } => outputs
                        .iter()
                        .find(|(node, _)| node == NODE)
                        .and_then(|(_, bytes)| codec::decode::<u64>(bytes).ok()),
                    FiringOutcome::Failed { .. } => None,
                },
            })
            .collect();
        let snapshot = ledger
            .snapshot(REACTOR)
            .await
            .expect("read the snapshot")
            .map(|s| (s.last_seq, s.queue.len()));
        drop(ledger);
        View {
            boundaries,
            firings,
            snapshot,
        }
    })
}

/// What must hold of any ledger the reactor left behind, and of it against the one read
/// before the last child ran (`prev`: the ledger only grows).
fn check_view(view: &View, prev: &View) -> Result<(), String> {
    for (i, &(seq, _)) in view.boundaries.iter().enumerate() {
        if seq != i as u64 + 1 {
            let around: Vec<u64> = view.boundaries
                [i.saturating_sub(3)..(i + 3).min(view.boundaries.len())]
                .iter()
                .map(|&(s, _)| s)
                .collect();
            return Err(format!(
                "boundary sequence numbers are not exactly 1..=max: position {} holds seq {seq} (around it: {around:?})",
                i + 1
            ));
        }
    }
    let mut seen = HashMap::with_capacity(view.boundaries.len());
    for &(seq, v) in &view.boundaries {
        if let Some(first) = seen.insert(v, seq) {
            return Err(format!(
                "number {v} recorded twice: seq {first} and seq {seq}"
            ));
        }
    }
    if let Some(i) = prev
        .boundaries
        .iter()
        .zip(&view.boundaries)
        .position(|(a, b)| a != b)
        .or((view.boundaries.len() < prev.boundaries.len()).then_some(view.boundaries.len()))
    {
        return Err(format!(
            "boundary at position {} changed or vanished since the previous read: was {:?}, now {:?}",
            i + 1,
            prev.boundaries.get(i),
            view.boundaries.get(i)
        ));
    }
    for (i, f) in view.firings.iter().enumerate() {
        let expected_id = i as u64 + 1;
        if f.id != expected_id {
            return Err(format!(
                "firing ids are not exactly 1..=n: position {expected_id} holds firing {}",
                f.id
            ));
        }
        if f.trigger != FiringTrigger::Criteria {
            return Err(format!("firing {} has trigger {:?}", f.id, f.trigger));
        }
        let [(source, seq)] = f.inputs.as_slice() else {
            return Err(format!("firing {} has inputs {:?}", f.id, f.inputs));
        };
        if source != SOURCE {
            return Err(format!("firing {} read source `{source}`", f.id));
        }
        // Sequential, one source: firing k consumes boundary k. A firing lost in a crash is
        // redone under the same id after the restart, so this holds across crashes too;
        // anything else is a boundary fired twice in the record, skipped, or out of order.
        if *seq != f.id {
            return Err(format!(
                "firing {} consumed boundary {seq}; expected boundary {} (boundaries must fire once each, in order)",
                f.id, f.id
            ));
        }
        let Some(value) = view.value(*seq) else {
            return Err(format!(
                "firing {} consumed boundary {seq}, which is not recorded (max seq {})",
                f.id,
                view.max_seq()
            ));
        };
        if f.output != Some(value) {
            return Err(format!(
                "firing {} on boundary {seq} (value {value}) output {:?}",
                f.id, f.output
            ));
        }
    }
    if let Some(i) = prev
        .firings
        .iter()
        .zip(&view.firings)
        .position(|(a, b)| a != b)
        .or((view.firings.len() < prev.firings.len()).then_some(view.firings.len()))
    {
        return Err(format!(
            "firing at position {} changed or vanished since the previous read: was {:?}, now {:?}",
            i + 1,
            prev.firings.get(i),
            view.firings.get(i)
        ));
    }
    Ok(())
}

/// Checks the state a child restored against the ledger it started on. Sequential
/// semantics: the boundaries up to the last recorded firing's input are consumed (the cache
/// holds the newest of them); the later ones are queued and re-fire at once, so by the time
/// the state is read `fires` of them have been applied and the rest are still queued.
/// Returns how many boundaries the restart owed firings for.
fn check_ready(ready: &Value, view: &View) -> Result<u64, String> {
    let field = |name: &str| {
        ready
            .get(name)
            .and_then(Value::as_u64)
            .ok_or_else(|| format!("`ready` lacks {name}: {ready}"))
    };
    let pair = |v: &Value| -> Option<(u64, u64)> {
        let a = v.as_array()?;
        Some((a.first()?.as_u64()?, a.get(1)?.as_u64()?))
    };
    let max_seq = view.max_seq();
    let last_seq = field("last_seq")?;
    if last_seq != max_seq {
        return Err(format!(
            "restored last_seq {last_seq}, but the ledger's newest boundary is {max_seq} ({ready})"
        ));
    }
    let horizon = view.horizon();
    let owed = max_seq - horizon;
    let fires = field("fires")?;
    if fires > owed {
        return Err(format!(
            "{fires} firings right after the restart, but only {owed} boundaries were unfired"
        ));
    }
    let applied = horizon + fires;
    let cached = match ready.get("cached") {
        None | Some(Value::Null) => None,
        Some(v) => Some(pair(v).ok_or_else(|| format!("bad `cached` in {ready}"))?),
    };
    let expected_cached = (applied > 0).then(|| (applied, view.value(applied).unwrap_or(0)));
    if cached != expected_cached {
        return Err(format!(
            "restored cache {cached:?}, expected {expected_cached:?} (last firing consumed seq {horizon}, {fires} re-fired since)"
        ));
    }
    let queued: Vec<(u64, u64)> = ready
        .get("queued")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("`ready` lacks queued: {ready}"))?
        .iter()
        .map(|v| pair(v).ok_or_else(|| format!("bad `queued` in {ready}")))
        .collect::<Result<_, _>>()?;
    let expected_queued: Vec<(u64, u64)> = (applied + 1..=max_seq)
        .map(|s| (s, view.value(s).unwrap_or(0)))
        .collect();
    if queued != expected_queued {
        return Err(format!(
            "restored queue of {} boundaries {:?}..{:?}, expected {} ({:?}..{:?})",
            queued.len(),
            queued.first(),
            queued.last(),
            expected_queued.len(),
            expected_queued.first(),
            expected_queued.last()
        ));
    }
    let recovered = field("recovered")?;
    let expected_recovered = owed + u64::from(horizon > 0);
    if recovered != expected_recovered {
        return Err(format!(
            "restored {recovered} boundaries, expected {expected_recovered} (the consumed one in the cache plus {owed} unfired)"
        ));
    }
    Ok(owed)
}

// ---------------------------------------------------------------------------------------
// Parent side: the harness
// ---------------------------------------------------------------------------------------

/// xorshift64: small, seedable, good enough for kill delays.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

fn seed() -> u64 {
    if let Some(seed) = std::env::var(SEED_ENV).ok().and_then(|s| s.parse().ok()) {
        return seed;
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (nanos ^ u64::from(std::process::id()).rotate_left(32)) | 1
}

fn rounds() -> usize {
    std::env::var(ROUNDS_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_ROUNDS)
}

fn unique(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{tag}_{}_{nanos}", std::process::id())
}

/// Where a test's ledger lives; removed afterwards (kept, and named, if the test failed).
struct Store {
    backend: &'static str,
    url: String,
    dir: Option<PathBuf>,
    pg: Option<(String, String)>,
}

impl Store {
    fn dir(backend: &'static str, tag: &str) -> (Self, PathBuf) {
        let dir = std::env::temp_dir().join(format!("cloacina-{}", unique(tag)));
        std::fs::create_dir_all(&dir).expect("create a temp dir");
        let store = Self {
            backend,
            url: String::new(),
            dir: Some(dir.clone()),
            pg: None,
        };
        (store, dir)
    }

    fn sled(tag: &str) -> Self {
        let (mut store, dir) = Self::dir("sled", tag);
        store.url = format!("sled://{}", dir.join("ledger").display());
        store
    }

    fn sqlite(tag: &str) -> Self {
        let (mut store, dir) = Self::dir("sqlite", tag);
        store.url = format!("sqlite://{}", dir.join("crash.db").display());
        store
    }

    /// `None` (and a note why) without a server to test against.
    fn postgres(tag: &str) -> Option<Self> {
        // Skips without a server; fails instead when CLOACINA_REQUIRE_POSTGRES=1 (CI).
        let base = cloacina::ledger::testing::postgres_url()?;
        let schema = unique(&format!("crash_{tag}"));
        let url = cloacina::ledger::tenant_url(&base, &schema).expect("schema URL");
        Some(Self {
            backend: "postgres",
            url,
            dir: None,
            pg: Some((base, schema)),
        })
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("ledger kept for inspection: {}", self.url);
            return;
        }
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
        if let Some((base, schema)) = &self.pg {
            // Best effort: the facade has no SQL client of its own; `psql` usually sits
            // beside a test server.
            let dropped = Command::new("psql")
                .args([base.as_str(), "-qc"])
                .arg(format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !dropped {
                eprintln!("note: could not drop test schema `{schema}` (no psql?)");
            }
        }
    }
}

/// One killed round, settled against the ledger read before the next child starts.
struct Round {
    /// Boundaries in the ledger before the round.
    before: usize,
    /// Numbers `start..end` were (or may have been) written to the child.
    start: u64,
    end: u64,
    /// Acknowledged numbers in the order the child reported them, with when the parent read
    /// the line.
    acks: Vec<(u64, Instant)>,
    killed_at: Instant,
}

/// How a child will be run.
#[derive(Debug, Clone, Copy)]
enum ChildKind {
    /// Killed: its node cost is drawn (slow nodes leave work unfinished at the kill).
    Killed { paused: bool },
    /// Stopped gracefully after draining what is owed: a fast node.
    Graceful,
}

struct Harness {
    store: Store,
    mode: Mode,
    seed: u64,
    rng: XorShift,
    round: usize,
    next_number: u64,
    view: View,
    acked: u64,
    pushed: u64,
    unacked_recorded: u64,
    /// Boundaries a restart found recorded but not fired (their firing was lost or never
    /// ran), summed over restarts: the re-firings the crashes cost.
    refired: u64,
    /// Most boundaries a restart owed firings for.
    max_restored_queue: u64,
    /// Pushing rounds with the reactor paused.
    paused_rounds: u64,
    /// Rounds killed soon after the start.
    early_kills: u64,
    /// Pushing rounds whose child recovered from a snapshot (plus the boundaries after it).
    from_snapshot: u64,
    /// Per killed round: acknowledged boundaries the kill lost (`Batched`), and how long
    /// before the kill the oldest of them was acknowledged.
    losses: Vec<(u64, u64)>,
}

impl Harness {
    fn new(store: Store, mode: Mode) -> Self {
        let seed = seed();
        eprintln!(
            "crash test {}/{}: seed {seed} ({SEED_ENV}={seed} to replay the kill delays)",
            store.backend,
            mode.name()
        );
        Self {
            store,
            mode,
            seed,
            rng: XorShift(seed),
            round: 0,
            next_number: 1,
            view: View::default(),
            acked: 0,
            pushed: 0,
            unacked_recorded: 0,
            refired: 0,
            early_kills: 0,
            paused_rounds: 0,
            max_restored_queue: 0,
            from_snapshot: 0,
            losses: Vec::new(),
        }
    }

    fn fail(&self, what: &str) -> ! {
        panic!(
            "[{}/{} seed {} round {}] {what}",
            self.store.backend,
            self.mode.name(),
            self.seed,
            self.round
        )
    }

    /// Reads the ledger after a child stopped and checks it against the last read.
    fn reread(&mut self) {
        if self.store.backend == "postgres" {
            // A killed client's last COMMIT may still be completing on the server (its backend
            // only notices the dead socket when it replies): let it land before reading, or the
            // view is older than what the next child will recover from.
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
        let view = read_view(&self.store.url);
        if let Err(e) = check_view(&view, &self.view) {
            self.fail(&e);
        }
        self.view = view;
    }

    /// Spawns a child on the ledger and checks the state it restored.
    fn start_child(&mut self, kind: ChildKind) -> ChildProc {
        let mut child = self.spawn_child(kind);
        let ready = child.wait_ready();
        self.restored(&ready);
        child
    }

    /// Spawns a child with a node cost drawn for it.
    fn spawn_child(&mut self, kind: ChildKind) -> ChildProc {
        let (node_us, paused) = match kind {
            ChildKind::Killed { paused } => {
                let range = NODE_US.len() as u64 - 1;
                (NODE_US[self.rng.range(0, range) as usize], paused)
            }
            // A slow node would take minutes over a long restored queue.
            ChildKind::Graceful => (0, false),
        };
        ChildProc::spawn(&self.store.url, self.mode, node_us, paused)
    }

    /// Checks a child's restored state against the ledger it started on.
    fn restored(&mut self, ready: &Value) {
        match check_ready(ready, &self.view) {
            Ok(owed) => {
                self.refired += owed;
                self.max_restored_queue = self.max_restored_queue.max(owed);
            }
            Err(e) => self.fail(&format!("restored state: {e}")),
        }
    }

    /// Kills a child soon after its start, whether it is ready or not, and checks what it
    /// left. A `ready` it managed to print is checked too.
    fn early_kill(&mut self) {
        let mut child = self.spawn_child(ChildKind::Killed { paused: false });
        let delay = self.rng.range(EARLY_KILL_MS.0, EARLY_KILL_MS.1);
        thread::sleep(Duration::from_millis(delay));
        child.kill();
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            match child.next(deadline) {
                Ok(Some((_, Msg::Ready(ready)))) => self.restored(&ready),
                Ok(Some((_, other))) => self.fail(&format!("unexpected {other:?}")),
                Ok(None) => self.fail("child stdout still open after the kill"),
                Err(()) => break,
            }
        }
        drop(child);
        self.early_kills += 1;
        self.reread();
    }

    /// Starts a child, pushes numbers into it and kills it after a random delay.
    fn kill_round(&mut self) {
        self.round += 1;
        if self.rng.range(1, EARLY_KILL_ONE_IN) == 1 {
            return self.early_kill();
        }
        if self.view.snapshot.is_some() {
            self.from_snapshot += 1;
        }
        let paused = self.rng.range(1, PAUSE_ONE_IN) == 1;
        self.paused_rounds += u64::from(paused);
        let mut child = self.start_child(ChildKind::Killed { paused });
        let start = self.next_number;
        let stdin = child.stdin.take().expect("child stdin");
        let pusher = Pusher::start(stdin, start);
        let delay = Duration::from_millis(self.rng.range(KILL_DELAY_MS.0, KILL_DELAY_MS.1));
        let deadline = Instant::now() + delay;
        let mut acks = Vec::new();
        let mut errors = Vec::new();
        let mut take = |msg: (Instant, Msg)| match msg {
            (at, Msg::Ack(n)) => acks.push((n, at)),
            (_, Msg::Err(n, reason)) => errors.push(format!("{n}: {reason}")),
            (_, other) => errors.push(format!("unexpected {other:?}")),
        };
        loop {
            match child.next(deadline) {
                Ok(Some(msg)) => take(msg),
                Ok(None) => break,
                Err(()) => {
                    let status = child.child.wait();
                    self.fail(&format!("child died before the kill: {status:?}"));
                }
            }
        }
        let killed_at = Instant::now();
        child.kill();
        // Lines the child wrote before it died are still in the pipe: they count.
        let drain_deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            match child.next(drain_deadline) {
                Ok(Some(msg)) => take(msg),
                Ok(None) => self.fail("child stdout still open after the kill"),
                Err(()) => break,
            }
        }
        let end = pusher.stop();
        drop(child);
        if !errors.is_empty() {
            self.fail(&format!(
                "{} send(s) failed, first: {}",
                errors.len(),
                errors[0]
            ));
        }
        self.next_number = end;
        self.pushed += end - start;
        self.acked += acks.len() as u64;
        let round = Round {
            before: self.view.boundaries.len(),
            start,
            end,
            acks,
            killed_at,
        };
        self.reread();
        if let Err(e) = self.settle(&round) {
            self.fail(&e);
        }
    }

    /// Checks what the ledger kept of a killed round.
    fn settle(&mut self, round: &Round) -> Result<(), String> {
        let recorded: Vec<u64> = self.view.boundaries[round.before..]
            .iter()
            .map(|&(_, v)| v)
            .collect();
        if let Some(v) = recorded
            .iter()
            .find(|v| !(round.start..round.end).contains(*v))
        {
            return Err(format!(
                "recorded number {v}, which this round (numbers {}..{}) never pushed",
                round.start, round.end
            ));
        }
        match self.mode {
            Mode::Sync => {
                let kept: HashSet<u64> = recorded.iter().copied().collect();
                let missing: Vec<u64> = round
                    .acks
                    .iter()
                    .map(|&(n, _)| n)
                    .filter(|n| !kept.contains(n))
                    .collect();
                if !missing.is_empty() {
                    return Err(format!(
                        "{} acknowledged Sync boundaries missing from the ledger after the kill: {:?}",
                        missing.len(),
                        &missing[..missing.len().min(20)]
                    ));
                }
                self.unacked_recorded += (recorded.len() - round.acks.len()) as u64;
            }
            Mode::Batched => {
                // One send at a time: pushes, acknowledgements and sequence numbers all
                // follow the numbers, so what survives must be the first K of them.
                if let Some((i, v)) = recorded
                    .iter()
                    .enumerate()
                    .find(|&(i, v)| *v != round.start + i as u64)
                {
                    return Err(format!(
                        "the ledger is not a prefix of what was sent: position {i} of the round holds {v}, expected {}",
                        round.start + i as u64
                    ));
                }
                if let Some((i, (v, _))) = round
                    .acks
                    .iter()
                    .enumerate()
                    .find(|&(i, (v, _))| *v != round.start + i as u64)
                {
                    return Err(format!(
                        "acknowledgement {i} of the round is {v}, expected {}",
                        round.start + i as u64
                    ));
                }
                let kept = recorded.len();
                let lost = round.acks.len().saturating_sub(kept);
                let lost_ms = round.acks.get(kept).map_or(0, |&(_, at)| {
                    round.killed_at.saturating_duration_since(at).as_millis() as u64
                });
                self.losses.push((lost as u64, lost_ms));
                self.unacked_recorded += kept.saturating_sub(round.acks.len()) as u64;
            }
        }
        Ok(())
    }

    /// After the last kill: a child drains what is owed and stops gracefully; then a child
    /// restarted from the final snapshot must restore the same state and add nothing.
    fn finish(&mut self) {
        self.round += 1;
        let mut child = self.start_child(ChildKind::Graceful);
        let done = child.finish();
        drop(child);
        if done.get("ledger_lost").and_then(Value::as_u64) != Some(0)
            || !done.get("ledger_error").is_some_and(Value::is_null)
            || done.get("unfired_queued").and_then(Value::as_u64) != Some(0)
        {
            self.fail(&format!("graceful stop reported {done}"));
        }
        self.reread();
        let (boundaries, firings) = (self.view.boundaries.len(), self.view.firings.len());
        if firings != boundaries {
            self.fail(&format!(
                "after a graceful stop {firings} of {boundaries} recorded boundaries have fired"
            ));
        }
        let max_seq = self.view.max_seq();
        if self.view.snapshot != Some((max_seq, 0)) {
            self.fail(&format!(
                "final snapshot {:?}, expected last_seq {max_seq} with an empty queue",
                self.view.snapshot
            ));
        }
        self.round += 1;
        let before = self.view.clone();
        let mut child = self.start_child(ChildKind::Graceful);
        child.finish();
        drop(child);
        self.reread();
        if self.view.boundaries.len() != before.boundaries.len()
            || self.view.firings.len() != before.firings.len()
        {
            self.fail("a restart from the final snapshot recorded boundaries or firings");
        }
    }

    fn run(mut self, rounds: usize) {
        let started = Instant::now();
        self.view = read_view(&self.store.url);
        if let Err(e) = check_view(&self.view, &View::default()) {
            self.fail(&e);
        }
        for _ in 0..rounds {
            self.kill_round();
        }
        self.finish();
        let elapsed = started.elapsed();
        let summary = json!({
            "backend": self.store.backend,
            "mode": self.mode.name(),
            "seed": self.seed,
            "rounds": rounds,
            "pushed": self.pushed,
            "acked": self.acked,
            "recorded": self.view.boundaries.len(),
            "unacked_recorded": self.unacked_recorded,
            "refired": self.refired,
            "max_restored_queue": self.max_restored_queue,
            "early_kills": self.early_kills,
            "paused_rounds": self.paused_rounds,
            "from_snapshot": self.from_snapshot,
            "firings": self.view.firings.len(),
            "secs": (elapsed.as_secs_f64() * 100.0).round() / 100.0,
        });
        println!("crash_summary {summary}");
        if self.mode == Mode::Batched {
            let mut lost: Vec<u64> = self.losses.iter().map(|&(n, _)| n).collect();
            lost.sort_unstable();
            let window = json!({
                "backend": self.store.backend,
                "rounds": self.losses.len(),
                "acked": self.acked,
                "lost_total": lost.iter().sum::<u64>(),
                "rounds_with_loss": lost.iter().filter(|n| **n > 0).count(),
                "max_lost": lost.last().copied().unwrap_or(0),
                "median_lost": lost.get(lost.len() / 2).copied().unwrap_or(0),
                "max_lost_ms": self.losses.iter().map(|&(_, ms)| ms).max().unwrap_or(0),
                "per_round": self.losses.iter().map(|&(n, _)| n).collect::<Vec<_>>(),
            });
            println!("batched_loss_window {window}");
        }
        if self.acked == 0 {
            self.fail("no send was acknowledged in any round: the test proved nothing");
        }
    }
}

#[test]
fn sync_crash_recovery_sled() {
    Harness::new(Store::sled("sync"), Mode::Sync).run(rounds());
}

#[test]
fn sync_crash_recovery_sqlite() {
    Harness::new(Store::sqlite("sync"), Mode::Sync).run(rounds());
}

#[test]
fn sync_crash_recovery_postgres() {
    let Some(store) = Store::postgres("sync") else {
        return;
    };
    Harness::new(store, Mode::Sync).run(rounds());
}

#[test]
fn batched_loss_window_sled() {
    Harness::new(Store::sled("batched"), Mode::Batched).run(rounds());
}

/// The loss window over many more kills, on every backend available.
#[test]
#[ignore = "long: many kills per backend"]
fn batched_loss_window_long() {
    let rounds = rounds().max(30);
    Harness::new(Store::sled("batched_long"), Mode::Batched).run(rounds);
    Harness::new(Store::sqlite("batched_long"), Mode::Batched).run(rounds);
    if let Some(store) = Store::postgres("batched_long") {
        Harness::new(store, Mode::Batched).run(rounds);
    }
}
