//! The reactor task: one loop that owns the cache, decides when to fire, fires, and hands the
//! result on. Nothing here is shared with other tasks except counters and the health value.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use cloacina_accumulators::{HealthBoard, Inbound};
use cloacina_graph_core::{
    Boundary, Collect, CompiledGraph, Execution, Executor, GraphResult, InputCache, SourceName,
    TerminalOutputs,
};
use cloacina_ledger::{FiringOutcome, FiringRecord, LedgerWriter, Record};
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::config::InputStrategy;
use crate::firing::{Firing, FiringInput};
use crate::handle::{ReactorError, ReactorState, ShutdownReport};
use crate::health::ReactorHealth;
use crate::stats::ReactorStats;
use crate::subscription::{Delivery, Subscriber};

/// Boundaries taken from the inbound queue per wake-up at most.
const BATCH: usize = 256;

pub(crate) enum Command {
    ForceFire(oneshot::Sender<Arc<Firing>>),
    FireWith(
        InputCache,
        oneshot::Sender<Result<Arc<Firing>, ReactorError>>,
    ),
    Pause(oneshot::Sender<()>),
    Resume(oneshot::Sender<()>),
    State(oneshot::Sender<ReactorState>),
    Subscribe(Subscriber),
    Shutdown(oneshot::Sender<ShutdownReport>),
}

pub(crate) struct Core {
    pub(crate) name: Arc<str>,
    pub(crate) graph: Arc<CompiledGraph>,
    pub(crate) executor: Executor,
    pub(crate) cache: InputCache,
    pub(crate) sources: Arc<[SourceName]>,
    pub(crate) seqs: Vec<u64>,
    pub(crate) dirty: Vec<bool>,
    pub(crate) watched: Vec<bool>,
    pub(crate) dirty_watched: usize,
    pub(crate) n_watched: usize,
    pub(crate) when_all: bool,
    pub(crate) strategy: InputStrategy,
    pub(crate) queue: VecDeque<(usize, Boundary)>,
    pub(crate) queue_limit: usize,
    pub(crate) paused: bool,
    pub(crate) warmed: bool,
    pub(crate) subscribers: Vec<Subscriber>,
    pub(crate) ledger: Option<LedgerWriter>,
    pub(crate) ledger_failed: bool,
    pub(crate) after_fire: Vec<Arc<Notify>>,
    pub(crate) board: Option<Arc<HealthBoard>>,
    pub(crate) health: watch::Sender<ReactorHealth>,
    pub(crate) stats: Arc<ReactorStats>,
    pub(crate) next_id: u64,
}

fn unix_us(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

impl Core {
    pub(crate) async fn run(
        mut self,
        mut inbound: mpsc::Receiver<Inbound>,
        mut control: mpsc::UnboundedReceiver<Command>,
    ) {
        let mut buf: Vec<Inbound> = Vec::with_capacity(BATCH);
        let mut inbound_open = true;
        let board = self.board.clone();
        self.refresh_health();
        loop {
            let room =
                self.strategy == InputStrategy::Latest || self.queue.len() < self.queue_limit;
            tokio::select! {
                biased;
                cmd = control.recv() => match cmd {
                    Some(Command::Shutdown(reply)) => {
                        let report = self.shutdown(&mut inbound, &mut buf).await;
                        let _ = reply.send(report);
                        return;
                    }
                    Some(cmd) => self.command(cmd).await,
                    None => {
                        self.shutdown(&mut inbound, &mut buf).await;
                        return;
                    }
                },
                () = async { match &board { Some(b) => b.changed().await, None => std::future::pending().await } } => {
                    if self.refresh_health() {
                        self.evaluate().await;
                    }
                }
                n = inbound.recv_many(&mut buf, BATCH), if inbound_open && room => {
                    if n == 0 {
                        inbound_open = false;
                        continue;
                    }
                    // Commands sent before these boundaries were queued are handled first.
                    while let Ok(cmd) = control.try_recv() {
                        match cmd {
                            Command::Shutdown(reply) => {
                                let now = SystemTime::now();
                                for inb in buf.drain(..) {
                                    self.accept(inb, now);
                                }
                                let report = self.shutdown(&mut inbound, &mut buf).await;
                                let _ = reply.send(report);
                                return;
                            }
                            cmd => self.command(cmd).await,
                        }
                    }
                    // One receive time per batch: all of it was taken from the queue at once.
                    let now = SystemTime::now();
                    for inb in buf.drain(..) {
                        self.accept(inb, now);
                    }
                    self.evaluate().await;
                }
            }
        }
    }

    /// Stamps a boundary and puts it in the cache (Latest) or the queue (Sequential).
    fn accept(&mut self, inb: Inbound, received_at: SystemTime) {
        let index = inb.source as usize;
        let Some(seq) = self.seqs.get_mut(index) else {
            tracing::error!(reactor = %self.name, source = index, "boundary for an unknown source index");
            return;
        };
        *seq += 1;
        let boundary = Boundary::from_erased(*seq, received_at, inb.value, inb.type_name);
        self.stats.boundaries.fetch_add(1, Ordering::Relaxed);
        match self.strategy {
            InputStrategy::Latest => {
                self.cache.set_at(index, boundary);
                self.mark_dirty(index);
            }
            InputStrategy::Sequential => {
                self.queue.push_back((index, boundary));
            }
        }
    }

    fn mark_dirty(&mut self, index: usize) {
        if let Some(flag) = self.dirty.get_mut(index) {
            if !*flag {
                *flag = true;
                if self.watched.get(index).copied().unwrap_or(false) {
                    self.dirty_watched += 1;
                }
            }
        }
    }

    fn criteria_met(&self) -> bool {
        if self.when_all {
            self.dirty_watched == self.n_watched
        } else {
            self.dirty_watched > 0
        }
    }

    fn can_fire(&self) -> bool {
        !self.paused && self.warmed
    }

    /// Fires as the strategy says, if allowed.
    async fn evaluate(&mut self) {
        if !self.can_fire() {
            return;
        }
        match self.strategy {
            InputStrategy::Latest => {
                if self.criteria_met() {
                    self.fire(false).await;
                }
            }
            InputStrategy::Sequential => self.drain(false).await,
        }
    }

    /// Applies queued boundaries in order, firing whenever the criteria are met.
    async fn drain(&mut self, ignore_gate: bool) {
        while !self.paused && (ignore_gate || self.warmed) {
            let Some((index, boundary)) = self.queue.pop_front() else {
                break;
            };
            self.cache.set_at(index, boundary);
            self.mark_dirty(index);
            if self.criteria_met() {
                self.fire(false).await;
            }
        }
    }

    fn clear_dirty(&mut self) {
        for flag in &mut self.dirty {
            *flag = false;
        }
        self.dirty_watched = 0;
    }

    /// Fires once on the current cache. Returns the firing when somebody asked for it.
    async fn fire(&mut self, manual: bool) -> Option<Arc<Firing>> {
        self.clear_dirty();
        let wanted = manual || !self.subscribers.is_empty() || self.ledger.is_some();
        let collect = if wanted {
            Collect::Outputs
        } else {
            Collect::Nothing
        };
        let fired_at = wanted.then(SystemTime::now);
        let Execution {
            outcome,
            started,
            completed,
        } = self.executor.execute_timed(&self.cache, collect).await;
        self.stats
            .firing_duration
            .record(completed.saturating_duration_since(started));
        let id = self.next_id;
        self.next_id += 1;
        self.stats.fires.fetch_add(1, Ordering::Relaxed);
        if manual {
            self.stats.manual_fires.fetch_add(1, Ordering::Relaxed);
        }
        match &outcome {
            Ok(_) => {
                for notify in &self.after_fire {
                    notify.notify_one();
                }
            }
            Err(error) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(reactor = %self.name, firing = id, node = error.node(), %error, "firing failed");
            }
        }
        if !wanted {
            return None;
        }
        let firing = Arc::new(Firing {
            reactor: Arc::clone(&self.name),
            id,
            manual,
            inputs: self
                .cache
                .iter()
                .map(|(source, b)| FiringInput {
                    source: source.clone(),
                    seq: b.seq(),
                })
                .collect(),
            fired_at: fired_at.unwrap_or_else(SystemTime::now),
            started,
            completed,
            result: match outcome {
                Ok(outputs) => GraphResult::Completed { outputs },
                Err(e) => GraphResult::Error(e),
            },
        });
        self.record(&firing).await;
        self.deliver(&firing).await;
        Some(firing)
    }

    async fn record(&mut self, firing: &Firing) {
        let Some(writer) = &self.ledger else { return };
        let outcome = match &firing.result {
            GraphResult::Completed { outputs } => FiringOutcome::Completed {
                outputs: encode_outputs(&self.name, outputs),
            },
            GraphResult::Error(e) => FiringOutcome::Failed {
                node: e.node().to_owned(),
                error: e.to_string(),
            },
        };
        let record = Record::Firing(FiringRecord {
            reactor: self.name.to_string(),
            firing_id: firing.id,
            manual: firing.manual,
            inputs: firing
                .inputs
                .iter()
                .map(|i| (i.source.as_str().to_owned(), i.seq))
                .collect(),
            fired_at_unix_us: unix_us(firing.fired_at),
            duration_ns: u64::try_from(firing.duration().as_nanos()).unwrap_or(u64::MAX),
            outcome,
        });
        let handed_over = writer.write(record).await;
        let status = writer.status();
        if let Err(e) = handed_over {
            self.stats.ledger_lost.fetch_add(1, Ordering::Relaxed);
            tracing::error!(reactor = %self.name, error = %e, "ledger write failed");
        }
        self.stats
            .ledger_errors
            .store(status.failed_appends, Ordering::Relaxed);
        self.stats
            .ledger_lost
            .fetch_max(status.lost_records, Ordering::Relaxed);
        let failing = status.failing || handed_over_failed(&self.stats);
        if failing != self.ledger_failed {
            self.ledger_failed = failing;
            self.refresh_health();
        }
    }

    async fn deliver(&mut self, firing: &Arc<Firing>) {
        let mut i = 0;
        while i < self.subscribers.len() {
            let keep = match self.subscribers[i].offer(firing).await {
                Delivery::Delivered => true,
                Delivery::Missed => {
                    self.stats.subscriber_missed.fetch_add(1, Ordering::Relaxed);
                    true
                }
                Delivery::Gone => {
                    if self.subscribers[i].detached() {
                        self.stats.subscriber_missed.fetch_add(1, Ordering::Relaxed);
                        self.stats
                            .subscribers_detached
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(reactor = %self.name, firing = firing.id, "slow subscriber detached");
                    }
                    false
                }
            };
            if keep {
                i += 1;
            } else {
                self.subscribers.swap_remove(i);
            }
        }
    }

    async fn command(&mut self, cmd: Command) {
        match cmd {
            Command::ForceFire(reply) => {
                if let Some(firing) = self.fire(true).await {
                    let _ = reply.send(firing);
                }
            }
            Command::FireWith(cache, reply) => {
                if let Some(unknown) = cache
                    .sources()
                    .find(|s| self.graph.source_index(s.as_str()).is_none())
                {
                    let _ = reply.send(Err(ReactorError::UnknownSource {
                        reactor: self.name.to_string(),
                        source_name: unknown.clone(),
                    }));
                    return;
                }
                self.cache.replace_all(&cache);
                if let Some(firing) = self.fire(true).await {
                    let _ = reply.send(Ok(firing));
                }
            }
            Command::Pause(reply) => {
                self.paused = true;
                let _ = reply.send(());
            }
            Command::Resume(reply) => {
                self.paused = false;
                let _ = reply.send(());
                // Sequential work queued while paused is owed its firings; Latest fires on the
                // next boundary, not retroactively.
                if self.strategy == InputStrategy::Sequential && self.warmed {
                    self.drain(false).await;
                }
            }
            Command::State(reply) => {
                let _ = reply.send(self.state());
            }
            Command::Subscribe(subscriber) => self.subscribers.push(subscriber),
            Command::Shutdown(_) => {}
        }
    }

    fn state(&self) -> ReactorState {
        ReactorState {
            reactor: self.name.to_string(),
            cache: self.cache.snapshot(),
            dirty: self
                .sources
                .iter()
                .cloned()
                .zip(self.dirty.iter().copied())
                .collect(),
            queued: self
                .queue
                .iter()
                .filter_map(|(i, b)| self.sources.get(*i).map(|s| (s.clone(), b.clone())))
                .collect(),
            paused: self.paused,
            health: self.health.borrow().clone(),
            fires: self.stats.fires.load(Ordering::Relaxed),
        }
    }

    /// Recomputes health from the accumulators' states. Returns whether firing became allowed.
    fn refresh_health(&mut self) -> bool {
        let was_warmed = self.warmed;
        let states = self.board.as_ref().map(|b| b.states()).unwrap_or_default();
        let not_ready: Vec<SourceName> = states
            .iter()
            .filter(|(_, h)| !h.is_ready())
            .map(|(s, _)| s.clone())
            .collect();
        let health = if !self.warmed && !not_ready.is_empty() {
            ReactorHealth::Warming { waiting: not_ready }
        } else {
            self.warmed = true;
            let mut reasons: Vec<String> = not_ready
                .iter()
                .map(|s| format!("accumulator `{s}` not live"))
                .collect();
            if self.ledger_failed {
                reasons.push("ledger writes failing".into());
            }
            if reasons.is_empty() {
                ReactorHealth::Live
            } else {
                ReactorHealth::Degraded { reasons }
            }
        };
        self.health.send_if_modified(|h| {
            if *h == health {
                false
            } else {
                *h = health;
                true
            }
        });
        !was_warmed && self.warmed
    }

    /// Takes in everything already queued, fires what is owed, closes the ledger and the
    /// subscribers.
    async fn shutdown(
        &mut self,
        inbound: &mut mpsc::Receiver<Inbound>,
        buf: &mut Vec<Inbound>,
    ) -> ShutdownReport {
        inbound.close();
        // Latest coalesces whatever is waiting; Sequential fires for all of it.
        while inbound.recv_many(buf, BATCH).await > 0 {
            let now = SystemTime::now();
            for inb in buf.drain(..) {
                self.accept(inb, now);
            }
            if self.strategy == InputStrategy::Sequential && !self.paused {
                self.drain(true).await;
            }
        }
        if !self.paused {
            match self.strategy {
                InputStrategy::Latest if self.criteria_met() => {
                    self.fire(false).await;
                }
                InputStrategy::Latest => {}
                InputStrategy::Sequential => self.drain(true).await,
            }
        }
        let unfired = self.queue.len();
        if unfired > 0 {
            tracing::warn!(reactor = %self.name, unfired, "reactor stopped paused with queued boundaries");
        }
        let mut ledger_records = 0;
        let mut ledger_error = None;
        if let Some(writer) = self.ledger.take() {
            match writer.close().await {
                Ok(n) => ledger_records = n,
                Err(e) => ledger_error = Some(e.to_string()),
            }
        }
        self.subscribers.clear();
        self.health.send_replace(ReactorHealth::Stopped);
        ShutdownReport {
            fires: self.stats.fires.load(Ordering::Relaxed),
            boundaries: self.stats.boundaries.load(Ordering::Relaxed),
            unfired_queued: unfired,
            ledger_records,
            ledger_error,
        }
    }
}

/// Whether records were lost before reaching the writer (the writer task is gone).
fn handed_over_failed(stats: &ReactorStats) -> bool {
    stats.ledger_lost.load(Ordering::Relaxed) > 0
}

fn encode_outputs(reactor: &str, outputs: &TerminalOutputs) -> Vec<(String, Vec<u8>)> {
    outputs
        .iter()
        .filter_map(|o| match o.encode() {
            Ok(bytes) => Some((o.node().to_owned(), bytes)),
            Err(e) => {
                tracing::error!(reactor, node = o.node(), error = %e, "cannot encode output for the ledger");
                None
            }
        })
        .collect()
}
