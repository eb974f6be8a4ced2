//! The reactor's loop: takes boundaries and commands in, asks the [`Trigger`] what is due,
//! fires, and hands each firing to the [`Recorder`] and the [`Subscribers`]. Nothing here is
//! shared with other tasks except counters and the health value. Commands and shutdown are
//! handled in `control.rs`, firing in `fire.rs`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use cloacina_accumulators::{AccumulatorHealth, HealthBoard, Inbound};
use cloacina_graph_core::{Boundary, CompiledGraph, Executor, SourceName};
use tokio::sync::{mpsc, watch, Notify};

use crate::command::Command;
use crate::config::{FailurePolicy, InputStrategy};
use crate::delivery::Subscribers;
use crate::durable::RecoveryError;
use crate::firing::WallClock;
use crate::health::ReactorHealth;
use crate::metrics::ReactorMetrics;
use crate::recorder::{not_recorded, Counters, Recorder};
use crate::stats::ReactorStats;
use crate::trigger::{Step, Trigger};
use crate::watermark::Watermarks;

/// Boundaries taken from the inbound queue per wake-up at most.
pub(crate) const BATCH: usize = 256;

/// How often a run of firings publishes delivery watermarks (besides once per loop turn).
const PUBLISH_EVERY: Duration = Duration::from_millis(1);

/// Whether the loop goes on after a command.
#[derive(PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    Stop,
}

/// The inbound side: the queue accumulators send into.
pub(crate) struct Intake {
    pub(crate) rx: mpsc::Receiver<Inbound>,
    pub(crate) open: bool,
    pub(crate) buf: Vec<Inbound>,
    /// Low-latency mode: how long an idle loop spins on the queue before it parks.
    pub(crate) spin: Option<Duration>,
    /// The clocks as of the last batch taken in (receive times, firings' wall-clock starts).
    pub(crate) clock: WallClock,
}

impl Intake {
    /// Reads the clocks for a batch about to be taken in; returns its receive time.
    pub(crate) fn stamp(&mut self) -> SystemTime {
        self.clock = WallClock::now();
        self.clock.wall()
    }
}

/// Health inputs and outputs, and the after-fire signal.
pub(crate) struct Signals {
    pub(crate) board: Option<Arc<HealthBoard>>,
    pub(crate) board_seen: u64,
    pub(crate) health: watch::Sender<ReactorHealth>,
    pub(crate) after_fire: Vec<Arc<Notify>>,
    /// The sources' delivery watermarks.
    pub(crate) watermarks: Watermarks,
    /// When a firing last published them from inside a run of firings.
    pub(crate) published_at: Instant,
}

pub(crate) struct Core {
    pub(crate) name: Arc<str>,
    pub(crate) graph: Arc<CompiledGraph>,
    pub(crate) executor: Executor,
    pub(crate) sources: Arc<[SourceName]>,
    pub(crate) trigger: Trigger,
    pub(crate) recorder: Recorder,
    pub(crate) subscribers: Subscribers,
    pub(crate) failure_policy: FailurePolicy,
    pub(crate) counters: Counters,
    pub(crate) intake: Intake,
    pub(crate) signals: Signals,
    /// Shutdown is coming: take everything in, whatever the queue limit.
    pub(crate) draining: bool,
    pub(crate) stats: Arc<ReactorStats>,
    pub(crate) metrics: ReactorMetrics,
}

impl Core {
    /// The loop. Ordering rule: a command whose caller awaits it is handled after every
    /// boundary that was already queued when the command was seen, so `send(x).await;
    /// force_fire().await` fires on `x`; a subscription is registered before them, so
    /// `subscribe(); send(x)` delivers the firing for `x`.
    pub(crate) async fn run(
        mut self,
        mut control: mpsc::UnboundedReceiver<Command>,
    ) -> Result<(), RecoveryError> {
        self.recorder
            .recover(&mut self.trigger, self.graph.sources(), &mut self.counters)
            .await?;
        let board = self.signals.board.clone();
        self.refresh_health();
        // Work restored from the ledger is owed its firings like any other.
        self.evaluate().await;
        loop {
            // The turn is over: what it fired goes to the subscribers (first: the ledger's
            // hand-over may wait for room) before the loop waits.
            self.send_held().await;
            if self.recorder.hand_over().await {
                self.refresh_health();
            }
            self.publish_delivery();
            if let Some(spin) = self.intake.spin {
                if self.spin_for_work(&control, spin) {
                    // Boundaries are waiting: take them without going through `select!`
                    // (whose wake-up registrations cost more than the hand-off itself).
                    let room = self.room();
                    while self.intake.buf.len() < room {
                        match self.intake.rx.try_recv() {
                            Ok(inb) => self.intake.buf.push(inb),
                            Err(_) => break,
                        }
                    }
                    if !self.intake.buf.is_empty() {
                        if self.take_batch(&mut control).await == Flow::Stop {
                            return Ok(());
                        }
                        continue;
                    }
                }
            }
            let room = self.room();
            // Only while a watermark waits for the writer (no cost otherwise).
            let progressed = self
                .signals
                .watermarks
                .waiting_for()
                .and_then(|_| self.recorder.progressed());
            let waiting = progressed.is_some();
            tokio::select! {
                biased;
                cmd = control.recv() => {
                    let Some(cmd) = cmd else {
                        // Every handle is gone: stop as if asked to.
                        self.shutdown().await;
                        return Ok(());
                    };
                    if self.ordered(cmd).await == Flow::Stop {
                        return Ok(());
                    }
                }
                () = async { match &board { Some(b) => b.changed().await, None => std::future::pending().await } } => {
                    self.refresh_health();
                    self.evaluate().await;
                }
                () = self.recorder.status_changed() => {
                    if self.recorder.note_status() {
                        self.refresh_health();
                    }
                }
                () = async { if let Some(p) = progressed { p.await } }, if waiting => {
                    // Published at the top of the loop.
                }
                n = self.intake.rx.recv_many(&mut self.intake.buf, room), if self.intake.open && room > 0 => {
                    if n == 0 {
                        self.intake.open = false;
                        continue;
                    }
                    if self.take_batch(&mut control).await == Flow::Stop {
                        return Ok(());
                    }
                }
                () = std::future::ready(()), if self.trigger.owes_firings() => {
                    self.drain(false, BATCH).await;
                }
            }
        }
    }

    /// Handles the boundaries in the buffer: subscriptions that arrived meanwhile are
    /// registered first (so they see these firings), other commands after (the ordering rule).
    async fn take_batch(&mut self, control: &mut mpsc::UnboundedReceiver<Command>) -> Flow {
        let mut deferred = Vec::new();
        while let Ok(cmd) = control.try_recv() {
            match cmd {
                Command::Subscribe(s) => self.subscribers.add(s),
                other => deferred.push(other),
            }
        }
        self.take_buffered().await;
        for cmd in deferred {
            if self.ordered(cmd).await == Flow::Stop {
                return Flow::Stop;
            }
        }
        Flow::Continue
    }

    /// Low-latency mode: waits for work by spinning (no park, no wake-up for the sender) for
    /// up to `spin`; returns as soon as a boundary, a command or a health change is waiting,
    /// or when the spin is over (the `select!` then parks as usual).
    /// Returns whether boundaries are waiting (and may be taken now).
    fn spin_for_work(&self, control: &mpsc::UnboundedReceiver<Command>, spin: Duration) -> bool {
        if self.trigger.owes_firings() {
            return false;
        }
        let inbound_counts = self.intake.open && self.room() > 0;
        let board_seen = self.signals.board_seen;
        let board = self.signals.board.as_deref();
        let start = Instant::now();
        let mut turns = 0u32;
        loop {
            if inbound_counts && !self.intake.rx.is_empty() {
                return true;
            }
            if !control.is_empty() || board.is_some_and(|b| b.version() != board_seen) {
                return false;
            }
            if self.delivery_settled() {
                return false;
            }
            turns = turns.wrapping_add(1);
            if turns % 128 == 0 && start.elapsed() >= spin {
                return false;
            }
            std::hint::spin_loop();
        }
    }

    /// Publishes the delivery watermarks: at once without a ledger; with one, once the
    /// writer has settled the records of the firings they stand for.
    pub(crate) fn publish_delivery(&mut self) {
        match self.recorder.delivery_position() {
            None => self.signals.watermarks.publish_now(),
            Some((handed, settled, lost)) => {
                self.signals.watermarks.recorded(handed, settled, lost);
            }
        }
    }

    /// Inside a run of firings (a Sequential backlog), publishes the watermarks (handing the
    /// records over first) at most every [`PUBLISH_EVERY`], judged by the firing's own
    /// completion time (no clock read): a slow graph's progress is seen while it works
    /// through a backlog, not when the batch ends.
    pub(crate) async fn publish_if_due(&mut self, completed: Instant) {
        if completed.saturating_duration_since(self.signals.published_at) < PUBLISH_EVERY {
            return;
        }
        self.signals.published_at = completed;
        self.send_held().await;
        if self.recorder.hand_over().await {
            self.refresh_health();
        }
        self.publish_delivery();
    }

    /// Whether the writer has settled what the oldest pending watermark waits for.
    fn delivery_settled(&self) -> bool {
        match (
            self.signals.watermarks.waiting_for(),
            self.recorder.delivery_position(),
        ) {
            (Some(pos), Some((_, settled, _))) => settled >= pos,
            _ => false,
        }
    }

    /// Boundaries the loop may take from the inbound queue now.
    pub(crate) fn room(&self) -> usize {
        self.trigger.room(BATCH, self.draining)
    }

    /// Accepts the batch in the buffer (one receive time for all of it: it was taken from the
    /// queue at once) and fires as the strategy says.
    async fn take_buffered(&mut self) {
        let mut buf = std::mem::take(&mut self.intake.buf);
        let now = self.intake.stamp();
        for inb in buf.drain(..) {
            self.accept(inb, now);
        }
        self.intake.buf = buf;
        self.after_intake().await;
        self.evaluate().await;
        self.maybe_snapshot().await;
    }

    /// Puts the firings held for the subscribers' runs in their queues: at the end of each
    /// turn, and before anything that may wait (a ledger hand-over, a command's reply).
    pub(crate) async fn send_held(&mut self) {
        self.subscribers
            .send(&self.name, &self.stats, &self.metrics)
            .await;
    }

    /// Sync hand-over and queue gauges after boundaries were taken in.
    pub(crate) async fn after_intake(&mut self) {
        self.send_held().await;
        if self.recorder.hand_over_if_sync().await {
            self.refresh_health();
        }
        self.metrics
            .queues(self.intake.rx.len(), self.trigger.queue().len());
    }

    /// Stamps a boundary, has its ledger record queued (if state is recorded), and hands it
    /// to the trigger.
    pub(crate) fn accept(&mut self, inb: Inbound, received_at: SystemTime) {
        let (index, value, type_name, ack, position) = match inb {
            Inbound::Boundary {
                source,
                value,
                type_name,
                ack,
                position,
            } => (source as usize, value, type_name, ack, position),
            Inbound::Checkpoint { record, ack } => {
                self.recorder.checkpoint(record, ack);
                return;
            }
        };
        let Some(decl) = self.graph.sources().get(index) else {
            self.stats.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::error!(reactor = %self.name, source = index, "boundary for an unknown source index");
            if let Some(ack) = ack {
                let _ = ack.send(Err(not_recorded("unknown source index".into())));
            }
            return;
        };
        self.counters.last_seq += 1;
        let boundary = Boundary::from_erased(self.counters.last_seq, received_at, value, type_name);
        self.stats.boundaries.fetch_add(1, Ordering::Relaxed);
        self.metrics.boundary(index);
        self.recorder
            .boundary(index as u32, decl, &boundary, ack, position);
        self.trigger.offer(index, boundary);
    }

    /// Fires as the strategy says, if allowed.
    pub(crate) async fn evaluate(&mut self) {
        match self.trigger.strategy() {
            InputStrategy::Latest => {
                if self.trigger.latest_due() {
                    self.fire(false, None).await;
                }
            }
            InputStrategy::Sequential => self.drain(false, BATCH).await,
        }
    }

    /// Applies up to `steps` queued boundaries in order, firing whenever the criteria are met.
    /// The loop calls it in chunks (see [`Trigger::owes_firings`]) so commands are served
    /// during a long backlog.
    pub(crate) async fn drain(&mut self, ignore_gate: bool, steps: usize) {
        for _ in 0..steps {
            match self.trigger.step(ignore_gate) {
                Step::Idle => break,
                Step::Applied { fire: true } => {
                    self.fire(false, None).await;
                }
                Step::Applied { fire: false } => {}
            }
        }
    }

    /// Records a state snapshot once enough boundaries have come in since the last one.
    pub(crate) async fn maybe_snapshot(&mut self) {
        if self.recorder.snapshot_due() {
            self.snapshot().await;
        }
    }

    pub(crate) async fn snapshot(&mut self) {
        self.send_held().await;
        let counters = Counters {
            last_seq: self.counters.last_seq,
            next_id: self.counters.next_id,
        };
        let changed = self
            .recorder
            .snapshot(
                &self.trigger,
                &self.sources,
                self.graph.sources(),
                counters,
                self.draining,
            )
            .await;
        if changed {
            self.refresh_health();
        }
    }

    /// Recomputes health from the accumulators' states and the ledger.
    pub(crate) fn refresh_health(&mut self) {
        let states = match &self.signals.board {
            Some(board) => {
                self.signals.board_seen = board.version();
                board.states()
            }
            None => Vec::new(),
        };
        let not_ready: Vec<(SourceName, AccumulatorHealth)> = states
            .iter()
            .filter(|(_, h)| !h.is_ready())
            .cloned()
            .collect();
        let health = if !self.trigger.is_warmed() && !not_ready.is_empty() {
            ReactorHealth::Warming {
                waiting: not_ready.into_iter().map(|(s, _)| s).collect(),
            }
        } else {
            self.trigger.warm();
            // While shutting down, accumulators stop one by one: that is not a degradation.
            let mut reasons: Vec<String> = if self.draining {
                Vec::new()
            } else {
                not_ready
                    .iter()
                    .map(|(s, h)| format!("accumulator `{s}` not live ({h:?})"))
                    .collect()
            };
            if self.recorder.is_failing() {
                reasons.push("ledger writes failing".into());
            }
            if reasons.is_empty() {
                ReactorHealth::Live
            } else {
                ReactorHealth::Degraded { reasons }
            }
        };
        self.set_health(health);
        for (source, h) in &states {
            self.metrics.accumulator_ready(source, h.is_ready());
        }
    }

    pub(crate) fn set_health(&self, health: ReactorHealth) {
        self.metrics.health(&health);
        self.signals.health.send_if_modified(|h| {
            if *h == health {
                false
            } else {
                *h = health;
                true
            }
        });
    }
}
