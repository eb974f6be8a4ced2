//! Integration tests of the accumulators through their public API, each run by hand against a
//! reactor-less inbound channel.
//!
//! Each test names the acceptance id it covers (CG-A-xx) in a comment; "analog" marks a test of
//! the same behaviour through this crate's API where the spec row describes the upstream one.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cloacina_accumulators::{
    inbound_channel, Accumulator, AccumulatorContext, AccumulatorError, AccumulatorHealth,
    AccumulatorMetrics, Batch, BatchConfig, BatchSender, BoundarySender, HealthBoard,
    HealthReporter, Inbound, InboundSender, Passthrough, Polling,
};
use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tokio::task::JoinHandle;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Upper bound on any wait: only there so a broken implementation fails instead of hanging.
const PATIENCE: Duration = Duration::from_secs(10);

async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(PATIENCE, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {PATIENCE:?} waiting for {what}"),
    }
}

/// Polls `cond` until it holds (or panics after [`PATIENCE`]).
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    within(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
}

/// Everything needed to run one accumulator by hand.
struct Rig<T> {
    /// Keeps the inbound channel open; drop it to let `rx` end once the context is gone.
    inbound: InboundSender,
    rx: mpsc::Receiver<Inbound>,
    stop: watch::Sender<bool>,
    reporter: HealthReporter,
    board: Arc<HealthBoard>,
    metrics: Arc<AccumulatorMetrics>,
    after_fire: Arc<Notify>,
    ctx: Option<AccumulatorContext<T>>,
}

/// A context for source `name` (index 3 in a pretend reactor), with an after-fire signal.
fn rig<T: Send + Sync + 'static>(name: &str, capacity: usize) -> Rig<T> {
    let (inbound, rx) = inbound_channel(capacity);
    let (stop, stop_rx) = watch::channel(false);
    let board = HealthBoard::new();
    let reporter = board.register(name.into());
    let metrics = Arc::new(AccumulatorMetrics::default());
    let after_fire = Arc::new(Notify::new());
    let ctx = AccumulatorContext::new(
        inbound.typed::<T>(3, name.into()),
        stop_rx,
        Some(Arc::clone(&after_fire)),
        reporter.clone(),
    )
    .with_metrics(Arc::clone(&metrics));
    Rig {
        inbound,
        rx,
        stop,
        reporter,
        board,
        metrics,
        after_fire,
        ctx: Some(ctx),
    }
}

impl<T: Send + Sync + 'static> Rig<T> {
    /// Spawns `acc.run(ctx)`.
    fn spawn<A: Accumulator<Output = T>>(
        &mut self,
        acc: A,
    ) -> JoinHandle<Result<(), AccumulatorError>> {
        let ctx = self.ctx.take().expect("context already used");
        tokio::spawn(acc.run(ctx))
    }

    fn shutdown(&self) {
        self.stop
            .send(true)
            .expect("accumulator task holds the receiver");
    }

    async fn wait_health(&self, health: AccumulatorHealth) {
        let reporter = self.reporter.clone();
        wait_until(&format!("accumulator health {health:?}"), move || {
            reporter.get() == health
        })
        .await;
    }
}

/// The next boundary's value, which must be a `T` from source index 3.
async fn next_value<T: Clone + 'static>(rx: &mut mpsc::Receiver<Inbound>) -> T {
    let inbound = within("a boundary", rx.recv())
        .await
        .expect("inbound channel closed");
    assert_eq!(
        inbound.source_index(),
        Some(3),
        "boundary must carry the context's source index"
    );
    assert_eq!(inbound.type_name(), Some(std::any::type_name::<T>()));
    inbound
        .value()
        .expect("a boundary")
        .downcast_ref::<T>()
        .cloned()
        .expect("boundary of the declared type")
}

async fn join(task: JoinHandle<Result<(), AccumulatorError>>) {
    within("the accumulator to return", task)
        .await
        .expect("accumulator task panicked")
        .expect("accumulator returned an error");
}

// ---------------------------------------------------------------------------------------------
// Passthrough and BoundarySender
// ---------------------------------------------------------------------------------------------

// CG-A-04 / CG-A-13: Passthrough reports SocketOnly at once, Stopped after shutdown, and run()
// returns Ok.
#[tokio::test]
async fn passthrough_reports_socket_only_then_stopped() {
    let mut rig = rig::<u64>("clicks", 8);
    assert_eq!(rig.reporter.get(), AccumulatorHealth::Starting);
    let task = rig.spawn(Passthrough::<u64>::new());
    rig.wait_health(AccumulatorHealth::SocketOnly).await;
    assert_eq!(
        rig.board.states(),
        vec![("clicks".into(), AccumulatorHealth::SocketOnly)]
    );
    rig.shutdown();
    join(task).await;
    assert_eq!(rig.reporter.get(), AccumulatorHealth::Stopped);
}

// CG-A-04: events pushed through the context's BoundarySender become boundaries one for one,
// in order, tagged with the source.
#[tokio::test]
async fn boundary_sender_delivers_three_values_in_order() {
    let mut rig = rig::<String>("actions", 8);
    let sender: BoundarySender<String> = rig.ctx.as_ref().expect("context").sender().clone();
    assert_eq!(sender.source().as_str(), "actions");
    let task = rig.spawn(Passthrough::<String>::new());
    for action in ["login", "view", "export"] {
        sender.send(action.to_owned()).await.expect("channel open");
    }
    for expected in ["login", "view", "export"] {
        assert_eq!(next_value::<String>(&mut rig.rx).await, expected);
    }
    assert!(rig.rx.try_recv().is_err(), "exactly three boundaries");
    rig.shutdown();
    join(task).await;
}

// ---------------------------------------------------------------------------------------------
// Polling (CG-A-07)
// ---------------------------------------------------------------------------------------------

// CG-A-07: a 20 ms poll returning Some(n) yields at least 3 boundaries, in call order; health is
// Live; shutdown makes run() return Ok.
#[tokio::test]
async fn polling_emits_some_values_and_stops_on_shutdown() {
    let mut rig = rig::<u64>("ticks", 16);
    let mut n = 0u64;
    let task = rig.spawn(Polling::new(Duration::from_millis(20), move || {
        n += 1;
        let v = n;
        async move { Some(v) }
    }));
    for expected in 1..=3u64 {
        assert_eq!(next_value::<u64>(&mut rig.rx).await, expected);
    }
    assert_eq!(rig.reporter.get(), AccumulatorHealth::Live);
    assert!(rig.metrics.boundaries() >= 3);
    assert!(rig.metrics.events() >= 3);
    rig.shutdown();
    join(task).await;
    assert_eq!(rig.reporter.get(), AccumulatorHealth::Stopped);
}

// CG-A-07: a poll returning None ("no change") emits nothing.
#[tokio::test]
async fn polling_none_emits_nothing() {
    let mut rig = rig::<u64>("quiet", 16);
    let calls = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&calls);
    let task = rig.spawn(Polling::new(Duration::from_millis(5), move || {
        counted.fetch_add(1, Ordering::SeqCst);
        async { None::<u64> }
    }));
    wait_until("three polls", || calls.load(Ordering::SeqCst) >= 3).await;
    rig.shutdown();
    join(task).await;
    drop(rig.inbound);
    assert!(
        rig.rx.recv().await.is_none(),
        "a poll returning None must emit no boundary"
    );
    assert_eq!(rig.metrics.boundaries(), 0);
    assert_eq!(rig.metrics.events(), 0);
}

// CG-A-07 / CG-A-13: a poll function whose future panics on the 2nd call is counted as a
// failure; health goes Disconnected, then Live again on the next good poll, and polling
// continues.
#[tokio::test]
async fn polling_survives_a_panicking_poll_future() {
    let mut rig = rig::<u64>("flaky", 16);
    let calls = Arc::new(AtomicU64::new(0));
    // The 3rd call waits for this gate, so the test can observe the Disconnected state.
    let gate = Arc::new(Semaphore::new(0));
    let (c, g) = (Arc::clone(&calls), Arc::clone(&gate));
    let task = rig.spawn(Polling::new(Duration::from_millis(20), move || {
        let call = c.fetch_add(1, Ordering::SeqCst) + 1;
        let gate = Arc::clone(&g);
        async move {
            if call == 2 {
                panic!("poll source exploded");
            }
            if call == 3 {
                gate.acquire().await.expect("gate open").forget();
            }
            Some(call)
        }
    }));
    assert_eq!(next_value::<u64>(&mut rig.rx).await, 1);
    rig.wait_health(AccumulatorHealth::Disconnected).await;
    assert_eq!(rig.metrics.failures(), 1);
    gate.add_permits(1);
    assert_eq!(next_value::<u64>(&mut rig.rx).await, 3);
    assert_eq!(next_value::<u64>(&mut rig.rx).await, 4);
    rig.wait_health(AccumulatorHealth::Live).await;
    assert_eq!(rig.metrics.failures(), 1);
    rig.shutdown();
    join(task).await;
}

// CG-A-07 / CG-A-13: same, when the poll closure itself panics on the 2nd call (before it
// returns a future): still a counted failure, not the end of the accumulator.
#[tokio::test]
async fn polling_survives_a_panicking_poll_closure() {
    let mut rig = rig::<u64>("flaky_sync", 16);
    let mut calls = 0u64;
    let task = rig.spawn(Polling::new(Duration::from_millis(10), move || {
        calls += 1;
        if calls == 2 {
            panic!("poll closure exploded");
        }
        let v = calls;
        async move { Some(v) }
    }));
    assert_eq!(next_value::<u64>(&mut rig.rx).await, 1);
    assert_eq!(next_value::<u64>(&mut rig.rx).await, 3);
    assert_eq!(rig.metrics.failures(), 1);
    rig.wait_health(AccumulatorHealth::Live).await;
    rig.shutdown();
    join(task).await;
}

// ---------------------------------------------------------------------------------------------
// Batch (CG-A-08)
// ---------------------------------------------------------------------------------------------

fn batch(max_size: usize, flush_interval: Option<Duration>) -> (Batch<u64>, BatchSender<u64>) {
    Batch::new(BatchConfig {
        max_size,
        flush_interval,
        capacity: 64,
    })
}

// CG-A-08: reaching max_size flushes exactly one boundary holding the 5 events.
#[tokio::test]
async fn batch_flushes_on_max_size() {
    let mut rig = rig::<Vec<u64>>("orders", 16);
    let (acc, tx) = batch(5, None);
    assert!(acc.wants_after_fire());
    let task = rig.spawn(acc);
    for v in 1..=5u64 {
        tx.send(v).await.expect("batch open");
    }
    let got = next_value::<Vec<u64>>(&mut rig.rx).await;
    assert_eq!(got, vec![1, 2, 3, 4, 5]);
    assert_eq!(got.iter().sum::<u64>(), 15);
    rig.shutdown();
    join(task).await;
    drop(rig.inbound);
    assert!(
        rig.rx.recv().await.is_none(),
        "exactly one boundary (nothing left to flush at shutdown)"
    );
    assert_eq!(rig.metrics.boundaries(), 1);
}

// CG-A-08 / CG-R-13: the reactor's after-fire signal flushes a partial batch as one boundary.
#[tokio::test]
async fn batch_flushes_partial_buffer_on_after_fire_signal() {
    let mut rig = rig::<Vec<u64>>("orders", 16);
    let (acc, tx) = batch(100, None);
    let task = rig.spawn(acc);
    for v in [7u64, 8, 9] {
        tx.send(v).await.expect("batch open");
    }
    rig.after_fire.notify_one();
    assert_eq!(next_value::<Vec<u64>>(&mut rig.rx).await, vec![7, 8, 9]);
    rig.shutdown();
    join(task).await;
    drop(rig.inbound);
    assert!(rig.rx.recv().await.is_none(), "exactly one boundary");
}

// CG-A-08: an after-fire signal on an empty buffer emits nothing (no empty batches).
#[tokio::test]
async fn batch_empty_buffer_emits_nothing_on_after_fire() {
    let mut rig = rig::<Vec<u64>>("orders", 16);
    let (acc, tx) = batch(100, None);
    let task = rig.spawn(acc);
    rig.wait_health(AccumulatorHealth::Live).await;
    rig.after_fire.notify_one();
    // Give the batch a chance to act on the signal with nothing buffered (if it wrongly emitted
    // an empty batch, it would be received before the one below).
    tokio::time::sleep(Duration::from_millis(50)).await;
    tx.send(42).await.expect("batch open");
    rig.after_fire.notify_one();
    assert_eq!(next_value::<Vec<u64>>(&mut rig.rx).await, vec![42]);
    rig.shutdown();
    join(task).await;
    drop(rig.inbound);
    assert!(rig.rx.recv().await.is_none(), "no empty batch emitted");
    assert_eq!(rig.metrics.boundaries(), 1);
}

// CG-A-08: the flush interval flushes a partial batch without any signal.
#[tokio::test]
async fn batch_flushes_partial_buffer_on_interval() {
    let mut rig = rig::<Vec<u64>>("orders", 16);
    let (acc, tx) = batch(100, Some(Duration::from_millis(30)));
    let task = rig.spawn(acc);
    for v in [1u64, 2, 3] {
        tx.send(v).await.expect("batch open");
    }
    // The timer may split the three events over more than one tick; together they arrive in
    // order, each boundary a partial batch.
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let part = next_value::<Vec<u64>>(&mut rig.rx).await;
        assert!(
            !part.is_empty() && part.len() < 100,
            "partial batch: {part:?}"
        );
        seen.extend(part);
    }
    assert_eq!(seen, vec![1, 2, 3]);
    rig.shutdown();
    join(task).await;
}

// CG-A-08: shutdown drains events still waiting in the batch's input queue and emits them all
// before run() returns; afterwards BatchSender::send hands the value back.
#[tokio::test]
async fn batch_shutdown_emits_everything_queued() {
    let mut rig = rig::<Vec<u64>>("orders", 16);
    let (acc, tx) = batch(4, None);
    let task = rig.spawn(acc);
    // On this single-threaded runtime the batch task has not run yet: all ten events are
    // still in its input queue when shutdown is requested.
    for v in 1..=10u64 {
        tx.try_send(v).expect("room in the batch queue");
    }
    rig.shutdown();
    join(task).await;
    assert_eq!(rig.reporter.get(), AccumulatorHealth::Stopped);
    drop(rig.inbound);
    let mut batches = Vec::new();
    while let Some(inbound) = rig.rx.recv().await {
        batches.push(
            inbound
                .value()
                .expect("a boundary")
                .downcast_ref::<Vec<u64>>()
                .cloned()
                .expect("Vec<u64> boundary"),
        );
    }
    assert!(
        batches.iter().all(|b| !b.is_empty() && b.len() <= 4),
        "{batches:?}"
    );
    let all: Vec<u64> = batches.into_iter().flatten().collect();
    assert_eq!(all, (1..=10).collect::<Vec<_>>());
    assert_eq!(all.iter().sum::<u64>(), 55);
    assert_eq!(rig.metrics.events(), 10);

    let err = tx.send(99).await.expect_err("batch stopped");
    assert_eq!(err.into_value(), Some(99));
    match tx.try_send(100) {
        Err(e) => assert_eq!(e.into_inner(), 100),
        Ok(()) => panic!("try_send after shutdown must fail"),
    }
}

// CG-A-14: events taken in are counted and stamped with the time of the last one.
#[tokio::test]
async fn batch_metrics_count_events_and_last_event_time() {
    let mut rig = rig::<Vec<u64>>("orders", 16);
    let (acc, tx) = batch(10, None);
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after epoch")
        .as_micros();
    let task = rig.spawn(acc);
    for v in 0..10u64 {
        tx.send(v).await.expect("batch open");
    }
    assert_eq!(next_value::<Vec<u64>>(&mut rig.rx).await.len(), 10);
    assert_eq!(rig.metrics.events(), 10);
    assert_eq!(rig.metrics.boundaries(), 1);
    let last = u128::try_from(rig.metrics.last_event_unix_us()).expect("positive timestamp");
    assert!(
        last >= before,
        "last event time {last} precedes the test start {before}"
    );
    rig.shutdown();
    join(task).await;
}

// ---------------------------------------------------------------------------------------------
// Custom accumulators
// ---------------------------------------------------------------------------------------------

/// Emits only the even numbers of its input (odd ones produce no boundary), then waits for
/// shutdown.
struct EvenOnly {
    events: Vec<u64>,
}

impl EvenOnly {
    fn process(event: u64) -> Option<u64> {
        (event % 2 == 0).then_some(event)
    }
}

impl Accumulator for EvenOnly {
    type Output = u64;

    async fn run(self, ctx: AccumulatorContext<u64>) -> Result<(), AccumulatorError> {
        ctx.set_health(AccumulatorHealth::Live);
        for event in self.events {
            ctx.metrics().record_events(1);
            if let Some(out) = Self::process(event) {
                ctx.emit(out).await?;
            }
        }
        ctx.shutdown_requested().await;
        ctx.set_health(AccumulatorHealth::Stopped);
        Ok(())
    }
}

// CG-A-01 analog: an accumulator returning no boundary for odd numbers, fed 1..=10, yields
// exactly 5 boundaries.
#[tokio::test]
async fn filtering_accumulator_yields_five_of_ten() {
    let mut rig = rig::<u64>("evens", 16);
    let task = rig.spawn(EvenOnly {
        events: (1..=10).collect(),
    });
    for expected in [2u64, 4, 6, 8, 10] {
        assert_eq!(next_value::<u64>(&mut rig.rx).await, expected);
    }
    rig.shutdown();
    join(task).await;
    drop(rig.inbound);
    assert!(rig.rx.recv().await.is_none(), "exactly five boundaries");
    assert_eq!(rig.metrics.events(), 10);
    assert_eq!(rig.metrics.boundaries(), 5);
}

/// A custom pull source: emits `count` events, then ends on its own.
struct FiniteSource {
    count: u64,
}

impl Accumulator for FiniteSource {
    type Output = u64;

    async fn run(self, ctx: AccumulatorContext<u64>) -> Result<(), AccumulatorError> {
        ctx.set_health(AccumulatorHealth::Live);
        for i in 1..=self.count {
            if ctx.is_shutdown() {
                break;
            }
            ctx.emit(i).await?;
        }
        ctx.set_health(AccumulatorHealth::Stopped);
        Ok(())
    }
}

// CG-A-10 analog: a custom source emitting 5 events then ending yields 5 boundaries and a clean
// end (Ok, health Stopped), without any shutdown request.
#[tokio::test]
async fn finite_custom_source_ends_cleanly() {
    let mut rig = rig::<u64>("finite", 16);
    let task = rig.spawn(FiniteSource { count: 5 });
    join(task).await;
    assert_eq!(rig.reporter.get(), AccumulatorHealth::Stopped);
    drop(rig.inbound);
    let mut got = Vec::new();
    while let Some(inbound) = rig.rx.recv().await {
        got.push(
            *inbound
                .value()
                .and_then(|v| v.downcast_ref::<u64>())
                .expect("u64 boundary"),
        );
    }
    assert_eq!(got, vec![1, 2, 3, 4, 5]);
    assert_eq!(rig.metrics.boundaries(), 5);
}

// CG-A-10 analog (an accumulator ends cleanly, with an error, when its reactor is gone).
// An accumulator whose reactor is gone gets ReactorClosed instead of hanging or panicking.
#[tokio::test]
async fn emit_into_a_closed_reactor_reports_reactor_closed() {
    let mut rig = rig::<u64>("orphan", 16);
    // The task does not run before this test yields (single-threaded runtime), so the reactor
    // side is gone before the first emit.
    let task = rig.spawn(FiniteSource { count: 5 });
    drop(rig.rx);
    let result = within("the accumulator to return", task)
        .await
        .expect("accumulator task panicked");
    match result {
        Err(AccumulatorError::ReactorClosed {
            source_name,
            pending,
        }) => {
            assert_eq!(source_name.as_str(), "orphan");
            assert_eq!(pending, 1);
        }
        other => panic!("expected ReactorClosed, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Review regressions: batch configuration extremes, loss accounting when the reactor is gone.
// ---------------------------------------------------------------------------------------------

// A zero interval is clamped (no panic), and an enormous max_size allocates nothing up front.
#[tokio::test]
async fn batch_extreme_config_does_not_panic() {
    let mut r = rig::<Vec<u64>>("extreme", 64);
    let (batch, tx) = Batch::<u64>::new(BatchConfig {
        max_size: usize::MAX,
        flush_interval: Some(Duration::ZERO),
        capacity: usize::MAX,
    });
    let task = r.spawn(batch);
    tx.send(7).await.expect("send");
    assert_eq!(next_value::<Vec<u64>>(&mut r.rx).await, vec![7]);
    r.shutdown();
    join(task).await;
}

// If the reactor is gone, the error counts every accepted event not delivered: the failed
// batch plus everything still queued for the batch.
#[tokio::test]
async fn batch_counts_everything_undelivered_when_the_reactor_is_gone() {
    let mut r = rig::<Vec<u64>>("orphan", 64);
    let (batch, tx) = Batch::<u64>::new(BatchConfig {
        max_size: 2,
        flush_interval: None,
        capacity: 64,
    });
    r.rx.close();
    for i in 0..10u64 {
        tx.send(i).await.expect("queued in the batch");
    }
    let task = r.spawn(batch);
    let result = within("the accumulator to return", task)
        .await
        .expect("no panic");
    match result {
        Err(AccumulatorError::ReactorClosed { pending, .. }) => assert_eq!(pending, 10),
        other => panic!("expected ReactorClosed, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Issue 8: "never" intervals and the batch sender's source name.
// ---------------------------------------------------------------------------------------------

// `Duration::MAX` as a polling interval means "never": no panic on `now + interval`, no poll,
// and shutdown still ends the task cleanly.
#[tokio::test]
async fn polling_with_a_never_interval_does_not_poll_or_panic() {
    let mut rig = rig::<u64>("never", 16);
    let calls = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&calls);
    let task = rig.spawn(Polling::new(Duration::MAX, move || {
        counted.fetch_add(1, Ordering::SeqCst);
        async { Some(1u64) }
    }));
    rig.wait_health(AccumulatorHealth::Live).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    rig.shutdown();
    join(task).await;
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert_eq!(rig.reporter.get(), AccumulatorHealth::Stopped);
}

// A batch whose flush interval is `Duration::MAX` has no timer, but still flushes on the
// after-fire signal and at shutdown.
#[tokio::test]
async fn batch_with_a_never_interval_flushes_on_other_triggers() {
    let mut rig = rig::<Vec<u64>>("never_batch", 16);
    let (acc, tx) = batch(100, Some(Duration::MAX));
    let task = rig.spawn(acc);
    tx.send(1).await.expect("batch open");
    tx.send(2).await.expect("batch open");
    rig.wait_health(AccumulatorHealth::Live).await;
    wait_until("both events taken in", || rig.metrics.events() == 2).await;
    rig.after_fire.notify_one();
    assert_eq!(next_value::<Vec<u64>>(&mut rig.rx).await, vec![1, 2]);
    tx.send(3).await.expect("batch open");
    rig.shutdown();
    join(task).await;
    assert_eq!(next_value::<Vec<u64>>(&mut rig.rx).await, vec![3]);
}

// A BatchSender's error names the batch's real source, not "batch".
#[tokio::test]
async fn batch_sender_errors_name_the_source() {
    let mut rig = rig::<Vec<u64>>("order_feed", 16);
    let (acc, tx) = batch(4, None);
    assert_eq!(tx.source(), None, "not known before the batch runs");
    let task = rig.spawn(acc);
    rig.wait_health(AccumulatorHealth::Live).await;
    assert_eq!(tx.source().map(|s| s.as_str()), Some("order_feed"));
    rig.shutdown();
    join(task).await;
    let err = tx.send(5).await.expect_err("batch stopped");
    assert_eq!(err.source_name().as_str(), "order_feed");
    assert!(err.to_string().contains("order_feed"), "{err}");
    assert!(!err.to_string().contains("`batch`"), "{err}");
    assert_eq!(err.into_value(), Some(5));

    // A batch dropped before it ever ran cannot know its source, and says so.
    let (acc, tx) = batch(4, None);
    drop(acc);
    let err = tx.send(6).await.expect_err("batch gone");
    assert!(err.to_string().contains("never ran"), "{err}");
}
