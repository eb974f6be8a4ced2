//! The reactor task: one loop that owns the cache, decides when to fire, fires, and hands the
//! result on. Nothing here is shared with other tasks except counters and the health value.

use std::any::Any;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use cloacina_accumulators::{HealthBoard, Inbound};
use cloacina_graph_core::{
    Boundary, Collect, CompiledGraph, Execution, Executor, GraphResult, InputCache, SourceName,
    TerminalOutputs,
};
use cloacina_ledger::{
    AckSender, FiringOutcome, FiringRecord, FiringTrigger, Ledger, LedgerError, LedgerWriter,
    Record, SnapshotRecord,
};
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::config::{FailurePolicy, InputStrategy};
use crate::durable::{self, boundary_record, unix_us, Durability, RecoveryError, RetentionPolicy};
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
    PrepareShutdown(oneshot::Sender<()>),
    Shutdown(oneshot::Sender<ShutdownReport>),
}

/// Whether the loop goes on after a command.
#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

pub(crate) struct Core {
    pub(crate) name: Arc<str>,
    pub(crate) graph: Arc<CompiledGraph>,
    pub(crate) executor: Executor,
    pub(crate) cache: InputCache,
    pub(crate) sources: Arc<[SourceName]>,
    /// Sequence number of the last boundary accepted (reactor-wide).
    pub(crate) last_seq: u64,
    pub(crate) dirty: Vec<bool>,
    pub(crate) watched: Vec<bool>,
    pub(crate) dirty_watched: usize,
    pub(crate) n_watched: usize,
    pub(crate) when_all: bool,
    pub(crate) strategy: InputStrategy,
    pub(crate) failure_policy: FailurePolicy,
    pub(crate) queue: VecDeque<(usize, Boundary)>,
    pub(crate) queue_limit: usize,
    pub(crate) paused: bool,
    pub(crate) warmed: bool,
    pub(crate) subscribers: Vec<Subscriber>,
    pub(crate) ledger: Option<LedgerWriter>,
    /// The store behind `ledger`, read once at start to recover.
    pub(crate) recover_from: Option<Arc<dyn Ledger>>,
    pub(crate) durability: Durability,
    /// Boundary records (with their senders' acknowledgements) waiting to be handed to the
    /// writer before the next firing.
    pub(crate) outbox: Vec<(Record, Option<AckSender>)>,
    /// A state snapshot is recorded after this many boundaries (and at shutdown).
    pub(crate) snapshot_every: u64,
    pub(crate) since_snapshot: u64,
    /// Old records to remove after each snapshot, and the removal in progress.
    pub(crate) retention: Option<(Arc<dyn Ledger>, RetentionPolicy)>,
    pub(crate) retaining: Option<tokio::task::JoinHandle<()>>,
    pub(crate) ledger_failed: bool,
    /// Records that never reached the ledger writer (it had stopped).
    pub(crate) ledger_unwritten: u64,
    pub(crate) inbound: mpsc::Receiver<Inbound>,
    pub(crate) inbound_open: bool,
    pub(crate) buf: Vec<Inbound>,
    /// Shutdown is coming: take everything in, whatever the queue limit.
    pub(crate) draining: bool,
    pub(crate) after_fire: Vec<Arc<Notify>>,
    pub(crate) board: Option<Arc<HealthBoard>>,
    pub(crate) health: watch::Sender<ReactorHealth>,
    pub(crate) stats: Arc<ReactorStats>,
    pub(crate) next_id: u64,
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
        if let Some(ledger) = self.recover_from.take() {
            self.recover(&*ledger).await?;
        }
        let board = self.board.clone();
        self.refresh_health();
        // Work restored from the ledger is owed its firings like any other.
        self.evaluate().await;
        loop {
            self.hand_over().await;
            let room = self.room();
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
                n = self.inbound.recv_many(&mut self.buf, room), if self.inbound_open && room > 0 => {
                    if n == 0 {
                        self.inbound_open = false;
                        continue;
                    }
                    let mut deferred = Vec::new();
                    while let Ok(cmd) = control.try_recv() {
                        match cmd {
                            Command::Subscribe(s) => self.subscribers.push(s),
                            other => deferred.push(other),
                        }
                    }
                    self.take_buffered().await;
                    for cmd in deferred {
                        if self.ordered(cmd).await == Flow::Stop {
                            return Ok(());
                        }
                    }
                }
                () = std::future::ready(()), if self.owes_firings() => {
                    self.drain(false, BATCH).await;
                }
            }
        }
    }

    /// Boundaries the loop may take from the inbound queue now.
    fn room(&self) -> usize {
        match self.strategy {
            InputStrategy::Latest => BATCH,
            InputStrategy::Sequential if self.draining => BATCH,
            InputStrategy::Sequential => {
                BATCH.min(self.queue_limit.saturating_sub(self.queue.len()))
            }
        }
    }

    /// Accepts the batch in `buf` (one receive time for all of it: it was taken from the
    /// queue at once) and fires as the strategy says.
    async fn take_buffered(&mut self) {
        let mut buf = std::mem::take(&mut self.buf);
        let now = SystemTime::now();
        for inb in buf.drain(..) {
            self.accept(inb, now);
        }
        self.buf = buf;
        self.hand_over_if_sync().await;
        self.evaluate().await;
        self.maybe_snapshot().await;
    }

    /// Takes in what is queued right now (within the room there is) and fires for it.
    async fn catch_up(&mut self) {
        let take = self.inbound.len().min(self.room());
        if take == 0 || !self.inbound_open {
            return;
        }
        let now = SystemTime::now();
        for _ in 0..take {
            match self.inbound.try_recv() {
                Ok(inb) => self.accept(inb, now),
                Err(_) => break,
            }
        }
        self.hand_over_if_sync().await;
        self.evaluate().await;
        self.maybe_snapshot().await;
    }

    /// Handles one command in order (see [`Core::run`]).
    async fn ordered(&mut self, cmd: Command) -> Flow {
        match cmd {
            Command::Subscribe(s) => self.subscribers.push(s),
            Command::Shutdown(reply) => {
                let report = self.shutdown().await;
                let _ = reply.send(report);
                return Flow::Stop;
            }
            cmd => {
                self.catch_up().await;
                self.command(cmd).await;
            }
        }
        Flow::Continue
    }

    /// Stamps a boundary, queues its ledger record (if state is recorded), and puts it in the
    /// cache (Latest) or the queue (Sequential).
    fn accept(&mut self, inb: Inbound, received_at: SystemTime) {
        let (index, value, type_name, ack) = match inb {
            Inbound::Boundary {
                source,
                value,
                type_name,
                ack,
            } => (source as usize, value, type_name, ack),
            Inbound::Checkpoint { record, ack } => {
                if self.ledger.is_some() {
                    self.outbox.push((Record::Checkpoint(record), Some(ack)));
                } else {
                    let _ = ack.send(Err(not_recorded("the reactor has no ledger".into())));
                }
                return;
            }
        };
        let inb_ack = ack;
        if index >= self.sources.len() {
            self.stats.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::error!(reactor = %self.name, source = index, "boundary for an unknown source index");
            if let Some(ack) = inb_ack {
                let _ = ack.send(Err(not_recorded("unknown source index".into())));
            }
            return;
        }
        self.last_seq += 1;
        let boundary = Boundary::from_erased(self.last_seq, received_at, value, type_name);
        self.stats.boundaries.fetch_add(1, Ordering::Relaxed);
        if self.durability.records_state() && self.ledger.is_some() {
            self.since_snapshot += 1;
            match boundary_record(&self.name, &self.graph.sources()[index], &boundary) {
                Ok(record) => self.outbox.push((Record::Boundary(record), inb_ack)),
                Err(reason) => {
                    // Accepted in memory, but it cannot be recorded: say so loudly.
                    tracing::error!(reactor = %self.name, seq = self.last_seq, %reason, "boundary not recorded");
                    self.ledger_unwritten += 1;
                    if let Some(ack) = inb_ack {
                        let _ = ack.send(Err(not_recorded(reason)));
                    }
                }
            }
        } else if let Some(ack) = inb_ack {
            // Only durable senders ask; a reactor that records no state cannot promise it.
            let _ = ack.send(Err(not_recorded(
                "the reactor records no boundaries (no ledger, or durability None)".into(),
            )));
        }
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

    /// Whether queued Sequential boundaries wait for firings the reactor may do now.
    fn owes_firings(&self) -> bool {
        self.strategy == InputStrategy::Sequential && self.can_fire() && !self.queue.is_empty()
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
                    self.fire(false, None).await;
                }
            }
            InputStrategy::Sequential => self.drain(false, BATCH).await,
        }
    }

    /// Applies up to `steps` queued boundaries in order, firing whenever the criteria are met.
    /// The loop calls it in chunks (see [`Core::owes_firings`]) so commands are served during
    /// a long backlog.
    async fn drain(&mut self, ignore_gate: bool, steps: usize) {
        let mut steps = steps;
        while steps > 0 && !self.paused && (ignore_gate || self.warmed) {
            steps -= 1;
            let Some((index, boundary)) = self.queue.pop_front() else {
                break;
            };
            self.cache.set_at(index, boundary);
            self.mark_dirty(index);
            if self.criteria_met() {
                self.fire(false, None).await;
            }
        }
    }

    fn clear_dirty(&mut self) {
        for flag in &mut self.dirty {
            *flag = false;
        }
        self.dirty_watched = 0;
    }

    /// Fires once on the live cache, or on `inputs` (a `fire_with`, which leaves the live
    /// cache and its dirty flags alone). Returns the firing when somebody asked for it.
    async fn fire(&mut self, manual: bool, inputs: Option<InputCache>) -> Option<Arc<Firing>> {
        let trigger = match (&inputs, manual) {
            (Some(_), _) => FiringTrigger::Supplied,
            (None, true) => FiringTrigger::Forced,
            (None, false) => FiringTrigger::Criteria,
        };
        if inputs.is_none() {
            self.clear_dirty();
        }
        let cache = inputs.as_ref().unwrap_or(&self.cache);
        let wanted = manual || !self.subscribers.is_empty() || self.ledger.is_some();
        let collect = if wanted {
            Collect::Outputs
        } else {
            Collect::Nothing
        };
        let fired_at = wanted.then(SystemTime::now);
        let Execution {
            mut outcome,
            started,
            mut completed,
        } = self.executor.execute_timed(cache, collect).await;
        let mut attempts = 1;
        if let FailurePolicy::Retry {
            attempts: max,
            backoff,
        } = self.failure_policy
        {
            while attempts < max {
                let Err(error) = &outcome else { break };
                tracing::warn!(reactor = %self.name, attempt = attempts, node = error.node(), %error, "firing failed; retrying on the same inputs");
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(backoff).await;
                let again = self.executor.execute_timed(cache, collect).await;
                (outcome, completed) = (again.outcome, again.completed);
                attempts += 1;
            }
        }
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
            attempts,
            inputs: cache
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
        self.record(&firing, trigger).await;
        self.deliver(&firing).await;
        Some(firing)
    }

    async fn record(&mut self, firing: &Firing, trigger: FiringTrigger) {
        if self.ledger.is_none() {
            return;
        }
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
            trigger,
            inputs: firing
                .inputs
                .iter()
                .map(|i| (i.source.as_str().to_owned(), i.seq))
                .collect(),
            fired_at_unix_us: unix_us(firing.fired_at),
            duration_ns: u64::try_from(firing.duration().as_nanos()).unwrap_or(u64::MAX),
            outcome,
        });
        // Handed over with the batch's boundary records, after them (see `hand_over`).
        self.outbox.push((record, None));
    }

    /// Hands the records gathered since the last call (boundaries as accepted, then the
    /// firings that used them) to the writer in one go, in order. Runs at the top of every
    /// turn of the loop and before a snapshot. Waits only if the writer's queue is full.
    async fn hand_over(&mut self) {
        if self.outbox.is_empty() {
            return;
        }
        let Some(writer) = &self.ledger else {
            self.outbox.clear();
            return;
        };
        let lost = writer.write_all(&mut self.outbox).await as u64;
        if lost > 0 {
            self.ledger_unwritten += lost;
            tracing::error!(reactor = %self.name, lost, "ledger writer gone; boundary records not written");
        }
        self.note_ledger_status();
    }

    /// `Sync`: hands the boundaries just accepted to the writer before firing on them, so
    /// their senders' acknowledgements do not wait for the batch's firings.
    async fn hand_over_if_sync(&mut self) {
        if self.durability == Durability::Sync {
            self.hand_over().await;
        }
    }

    /// Records a state snapshot once enough boundaries have come in since the last one.
    async fn maybe_snapshot(&mut self) {
        if self.since_snapshot >= self.snapshot_every {
            self.snapshot().await;
        }
    }

    /// Records the reactor's state (cache, dirty flags, Sequential queue) so that a restart
    /// needs no boundary from before it (and retention may remove them).
    async fn snapshot(&mut self) {
        self.hand_over().await;
        if !self.durability.records_state() {
            return;
        }
        if self.ledger.is_none() {
            return;
        }
        self.since_snapshot = 0;
        let decls = self.graph.sources();
        let encode = |index: usize, b: &Boundary| {
            decls
                .get(index)
                .ok_or_else(|| "source index out of range".to_owned())
                .and_then(|decl| boundary_record(&self.name, decl, b))
        };
        let encoded = (0..decls.len())
            .filter_map(|index| self.cache.at(index).map(|b| encode(index, b)))
            .collect::<Result<Vec<_>, _>>()
            .and_then(|cache| {
                let queue = self
                    .queue
                    .iter()
                    .map(|(index, b)| encode(*index, b))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((cache, queue))
            });
        let (cache, queue) = match encoded {
            Ok(parts) => parts,
            Err(reason) => {
                // Counted like any record that never reached the ledger.
                tracing::error!(reactor = %self.name, %reason, "snapshot not recorded");
                self.ledger_unwritten += 1;
                self.note_ledger_status();
                return;
            }
        };
        let record = Record::Snapshot(SnapshotRecord {
            reactor: self.name.to_string(),
            last_seq: self.last_seq,
            next_firing_id: self.next_id,
            taken_at_unix_us: unix_us(SystemTime::now()),
            cache,
            dirty: self
                .sources
                .iter()
                .zip(&self.dirty)
                .filter(|(_, d)| **d)
                .map(|(s, _)| s.as_str().to_owned())
                .collect(),
            queue,
        });
        let Some(writer) = &self.ledger else { return };
        if let Err(e) = writer.write(record).await {
            self.ledger_unwritten += 1;
            tracing::error!(reactor = %self.name, error = %e, "ledger writer gone; snapshot not written");
        }
        self.stats.snapshots.fetch_add(1, Ordering::Relaxed);
        self.note_ledger_status();
        if !self.draining {
            self.start_retention();
        }
    }

    /// Removes old records in the background (one removal at a time; the reactor does not
    /// wait for it). What the store's latest snapshot covers is all it may remove.
    fn start_retention(&mut self) {
        let Some((ledger, policy)) = &self.retention else {
            return;
        };
        if self.retaining.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        let (ledger, retention) = (Arc::clone(ledger), policy.at(SystemTime::now()));
        let name = Arc::clone(&self.name);
        let stats = Arc::clone(&self.stats);
        self.retaining = Some(tokio::spawn(async move {
            match ledger.retain(&name, retention).await {
                Ok(report) => {
                    stats.retained_removed.fetch_add(
                        report.boundaries_removed + report.firings_removed,
                        Ordering::Relaxed,
                    );
                    tracing::debug!(reactor = %name, ?report, "ledger retention applied");
                }
                Err(e) => tracing::warn!(reactor = %name, error = %e, "ledger retention failed"),
            }
        }));
    }

    /// Rebuilds cache, dirty flags, queue and counters from the ledger (before the loop).
    async fn recover(&mut self, ledger: &dyn Ledger) -> Result<(), RecoveryError> {
        if !self.durability.records_state() {
            // Firings only: continue their ids (and the inputs' numbering) after the last one.
            let last = ledger
                .last_firing(&self.name)
                .await
                .map_err(|e| RecoveryError {
                    reactor: self.name.to_string(),
                    reason: e.to_string(),
                })?;
            if let Some(f) = last {
                self.next_id = f.firing_id + 1;
                self.last_seq = f.inputs.iter().map(|(_, s)| *s).max().unwrap_or(0);
            }
            return Ok(());
        }
        let state =
            durable::recover(ledger, &self.name, self.graph.sources(), self.strategy).await?;
        for (index, slot) in state.cache.into_iter().enumerate() {
            if let Some(b) = slot {
                self.cache.set_at(index, b);
            }
        }
        self.clear_dirty();
        for (index, dirty) in state.dirty.iter().enumerate() {
            if *dirty {
                self.mark_dirty(index);
            }
        }
        self.queue = state.queue;
        self.last_seq = state.last_seq;
        self.next_id = state.next_id;
        self.stats
            .recovered_boundaries
            .store(state.boundaries, Ordering::Relaxed);
        if state.boundaries > 0 || state.next_id > 1 {
            tracing::info!(reactor = %self.name, restored = state.boundaries, last_seq = state.last_seq, next_firing = state.next_id, "reactor state recovered from the ledger");
        }
        Ok(())
    }

    /// Publishes the writer's counters and flips health while appends fail.
    fn note_ledger_status(&mut self) {
        let Some(writer) = &self.ledger else { return };
        let status = writer.status();
        self.stats
            .ledger_errors
            .store(status.failed_appends, Ordering::Relaxed);
        self.stats.ledger_lost.store(
            status.lost_records + self.ledger_unwritten,
            Ordering::Relaxed,
        );
        // Degraded while appends fail or the writer is gone; a later success clears it.
        let failing = status.failing || writer_gone(writer);
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
                if let Some(firing) = self.fire(true, None).await {
                    let _ = reply.send(firing);
                }
            }
            Command::FireWith(cache, reply) => match self.manual_inputs(&cache) {
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
                Ok(inputs) => {
                    if let Some(firing) = self.fire(true, Some(inputs)).await {
                        let _ = reply.send(Ok(firing));
                    }
                }
            },
            Command::PrepareShutdown(reply) => {
                self.draining = true;
                let _ = reply.send(());
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
                    self.drain(false, BATCH).await;
                }
            }
            Command::State(reply) => {
                let _ = reply.send(self.state());
            }
            Command::Subscribe(subscriber) => self.subscribers.push(subscriber),
            Command::Shutdown(_) => {}
        }
    }

    /// Checks a `fire_with` cache against the graph's sources (names and types) and aligns it.
    fn manual_inputs(&self, cache: &InputCache) -> Result<InputCache, ReactorError> {
        for (source, boundary) in cache.iter() {
            let decl = self
                .graph
                .source_index(source.as_str())
                .and_then(|i| self.graph.sources().get(i))
                .ok_or_else(|| ReactorError::UnknownSource {
                    reactor: self.name.to_string(),
                    source_name: source.clone(),
                })?;
            let value: &(dyn Any + Send + Sync) = &**boundary.value();
            if value.type_id() != decl.type_id {
                return Err(ReactorError::SourceType {
                    reactor: self.name.to_string(),
                    source_name: source.clone(),
                    expected: decl.type_name,
                    requested: boundary.type_name(),
                });
            }
        }
        let mut inputs = self.graph.new_cache();
        inputs.replace_all(cache);
        Ok(inputs)
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

    /// Recomputes health from the accumulators' states and the ledger.
    fn refresh_health(&mut self) {
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
    }

    /// Takes in everything already queued, fires what is owed, closes the ledger and the
    /// subscribers.
    async fn shutdown(&mut self) -> ShutdownReport {
        self.inbound.close();
        self.draining = true;
        // Latest coalesces whatever is waiting; Sequential fires for all of it.
        let mut buf = std::mem::take(&mut self.buf);
        while self.inbound.recv_many(&mut buf, BATCH).await > 0 {
            let now = SystemTime::now();
            for inb in buf.drain(..) {
                self.accept(inb, now);
            }
            self.hand_over().await;
            if self.strategy == InputStrategy::Sequential && !self.paused {
                self.drain(true, usize::MAX).await;
            }
        }
        if !self.paused {
            match self.strategy {
                InputStrategy::Latest if self.criteria_met() => {
                    self.fire(false, None).await;
                }
                InputStrategy::Latest => {}
                InputStrategy::Sequential => self.drain(true, usize::MAX).await,
            }
        }
        let unfired_queued = self.queue.len();
        let unfired_dirty_sources = if self.strategy == InputStrategy::Latest {
            self.dirty.iter().filter(|d| **d).count()
        } else {
            0
        };
        if unfired_queued > 0 || (self.paused && unfired_dirty_sources > 0) {
            tracing::warn!(reactor = %self.name, unfired_queued, unfired_dirty_sources, "reactor stopped paused with inputs never fired");
        }
        let mut report = ShutdownReport {
            fires: self.stats.fires.load(Ordering::Relaxed),
            boundaries: self.stats.boundaries.load(Ordering::Relaxed),
            unfired_queued,
            unfired_dirty_sources: if self.paused {
                unfired_dirty_sources
            } else {
                0
            },
            ledger_records: 0,
            ledger_lost: self.ledger_unwritten,
            ledger_error: None,
        };
        // A final snapshot: a restart resumes exactly here without replaying boundaries.
        self.snapshot().await;
        if let Some(writer) = self.ledger.take() {
            let written = writer.close().await;
            report.ledger_records = written.written;
            report.ledger_lost += written.lost;
            report.ledger_error = written.first_error.map(|e| e.to_string());
        }
        // Retention once more, now that the final snapshot is in the store.
        if let Some(task) = self.retaining.take() {
            let _ = task.await;
        }
        self.start_retention();
        if let Some(task) = self.retaining.take() {
            let _ = task.await;
        }
        self.subscribers.clear();
        self.health.send_replace(ReactorHealth::Stopped);
        report
    }
}

fn not_recorded(reason: String) -> LedgerError {
    LedgerError::Backend {
        backend: "reactor",
        message: reason,
    }
}

fn writer_gone(writer: &LedgerWriter) -> bool {
    writer.is_closed()
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
