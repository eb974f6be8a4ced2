//! The recorder: everything a reactor writes to, and reads back from, its ledger.
//!
//! It gathers records in an outbox (boundaries as they are accepted, then the firings that
//! used them) and hands them to the [`LedgerWriter`] in one go per turn of the loop; takes
//! state snapshots; runs retention in the background; rebuilds the reactor's state at start;
//! and tracks whether the ledger is failing (the loop turns health Degraded on it).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use cloacina_accumulators::SourcePosition;
use cloacina_graph_core::{Boundary, SourceDecl, SourceName};
use cloacina_ledger::{
    AckSender, CheckpointRecord, FiringQuery, FiringRecord, FiringTrigger, Ledger, LedgerError,
    LedgerWriter, Record, SnapshotRecord, WriterReport, WriterStatus,
};

use crate::built::Unbuilt;
use crate::durable::{self, boundary_record, unix_us, Durability, RecoveryError, RetentionPolicy};
use crate::firing::Firing;
use crate::positions::PendingPositions;
use crate::stats::ReactorStats;
use crate::trigger::Trigger;

/// Where a reactor's state stands, for a snapshot or a recovery.
pub(crate) struct Counters {
    /// Sequence number of the last boundary accepted.
    pub(crate) last_seq: u64,
    /// Id the next firing gets.
    pub(crate) next_id: u64,
}

/// A reactor's side of its ledger.
pub(crate) struct Recorder {
    name: Arc<str>,
    writer: Option<LedgerWriter>,
    /// The store behind `writer`, read once at start to recover.
    recover_from: Option<Arc<dyn Ledger>>,
    durability: Durability,
    /// Records (with their senders' acknowledgements) waiting to be handed to the writer.
    outbox: Vec<(Record, Option<AckSender>)>,
    /// Boundaries and firings waiting to be handed to the writer, which builds their records
    /// (ahead of the outbox's, in the same group).
    unbuilt: Unbuilt,
    /// The graph's sources (their codecs), by index.
    decls: Arc<[SourceDecl]>,
    /// Source positions of the boundaries in the outbox: the newest `next` per
    /// `(source index, lane)`, recorded as checkpoints at the end of the same hand-over.
    positions: PendingPositions,
    snapshot_every: u64,
    since_snapshot: u64,
    retention: Option<(Arc<dyn Ledger>, RetentionPolicy)>,
    retaining: Option<tokio::task::JoinHandle<()>>,
    /// Where background work (retention) runs: the runtime the reactor was spawned from.
    runtime: tokio::runtime::Handle,
    failing: bool,
    /// Records that never reached the writer (it had stopped, or a value had no encoding).
    unwritten: u64,
    /// Tells the loop when the writer's status changes, even while no boundary arrives.
    status: Option<tokio::sync::watch::Receiver<WriterStatus>>,
    stats: Arc<ReactorStats>,
}

/// How a recorder is set up.
pub(crate) struct RecorderSetup {
    pub(crate) name: Arc<str>,
    pub(crate) ledger: Option<(Arc<dyn Ledger>, LedgerWriter)>,
    pub(crate) durability: Durability,
    pub(crate) snapshot_every: u64,
    pub(crate) retention: Option<RetentionPolicy>,
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) stats: Arc<ReactorStats>,
    /// The graph's sources, by index.
    pub(crate) sources: Arc<[SourceName]>,
    /// The graph's source declarations (codecs), by index.
    pub(crate) decls: Arc<[SourceDecl]>,
}

impl Recorder {
    pub(crate) fn new(setup: RecorderSetup) -> Self {
        let records_state = setup.durability.records_state();
        let (recover_from, writer) = match setup.ledger {
            Some((ledger, writer)) => (Some(ledger), Some(writer)),
            None => (None, None),
        };
        let retention = match (&recover_from, setup.retention) {
            (Some(ledger), Some(policy)) if records_state => Some((Arc::clone(ledger), policy)),
            _ => None,
        };
        let status = writer.as_ref().map(LedgerWriter::watch_status);
        Self {
            positions: PendingPositions::new(&setup.name, &setup.sources),
            name: setup.name,
            status,
            writer,
            recover_from,
            durability: setup.durability,
            outbox: Vec::with_capacity(256),
            unbuilt: Unbuilt::default(),
            decls: setup.decls,
            snapshot_every: setup.snapshot_every.max(1),
            since_snapshot: 0,
            retention,
            retaining: None,
            runtime: setup.runtime,
            failing: false,
            unwritten: 0,
            stats: setup.stats,
        }
    }

    /// Whether firings are recorded (the reactor has a ledger).
    pub(crate) fn is_recording(&self) -> bool {
        self.writer.is_some()
    }

    /// Whether boundaries and state are recorded too.
    fn records_state(&self) -> bool {
        self.writer.is_some() && self.durability.records_state()
    }

    /// Whether the ledger is failing (appends fail, or the writer is gone).
    pub(crate) fn is_failing(&self) -> bool {
        self.failing
    }

    /// Queues the record of an accepted boundary, with its sender's acknowledgement; a
    /// sender waiting for durability is told at once if the boundary cannot be recorded.
    /// A `position` (where in an external stream the boundary came from) is recorded in
    /// the same append as the boundary (see [`Recorder::hand_over`]).
    pub(crate) fn boundary(
        &mut self,
        source: u32,
        decl: &SourceDecl,
        boundary: &Boundary,
        ack: Option<AckSender>,
        position: Option<SourcePosition>,
    ) {
        if !self.records_state() {
            if let Some(ack) = ack {
                // Only durable senders ask; a reactor that records no state cannot promise it.
                let _ = ack.send(Err(not_recorded(
                    "the reactor records no boundaries (no ledger, or durability None)".into(),
                )));
            }
            return;
        }
        self.since_snapshot += 1;
        if ack.is_none() && decl.codec.is_some() {
            // The writer builds the record (see `built.rs`).
            self.unbuilt.boundary(source, boundary);
            if let Some(p) = position {
                self.positions.note(source, p);
            }
            return;
        }
        match boundary_record(&self.name, decl, boundary) {
            Ok(record) => {
                self.outbox.push((Record::Boundary(record), ack));
                if let Some(p) = position {
                    self.positions.note(source, p);
                }
            }
            Err(reason) => {
                // Accepted in memory, but it cannot be recorded: say so loudly.
                tracing::error!(reactor = %self.name, seq = boundary.seq(), %reason, "boundary not recorded");
                self.unwritten += 1;
                if let Some(ack) = ack {
                    let _ = ack.send(Err(not_recorded(reason)));
                }
            }
        }
    }

    /// Queues an accumulator checkpoint behind every boundary accepted before it.
    pub(crate) fn checkpoint(&mut self, record: CheckpointRecord, ack: AckSender) {
        if self.writer.is_some() {
            self.outbox.push((Record::Checkpoint(record), Some(ack)));
        } else {
            let _ = ack.send(Err(not_recorded("the reactor has no ledger".into())));
        }
    }

    /// Queues a firing's record (built by the writer), behind the boundaries it used.
    pub(crate) fn firing(&mut self, firing: &Arc<Firing>, trigger: FiringTrigger) {
        if self.writer.is_some() {
            self.unbuilt.firing(firing, trigger);
        }
    }

    /// Hands what the outbox holds to the writer, in order, as one group the writer appends
    /// atomically; waits only if the writer's queue is full. The source positions of the
    /// boundaries in it end the group (one checkpoint per lane that moved), so the ledger
    /// never holds a boundary without its position, nor a position ahead of its boundaries.
    /// Returns whether the ledger's failing state changed.
    pub(crate) async fn hand_over(&mut self) -> bool {
        if self.outbox.is_empty() && self.unbuilt.is_empty() {
            return false;
        }
        let Some(writer) = &self.writer else {
            self.outbox.clear();
            self.unbuilt.clear();
            self.positions.clear();
            return false;
        };
        self.positions.drain_into(&self.name, &mut self.outbox);
        let lost = if self.unbuilt.is_empty() {
            writer.write_all(&mut self.outbox).await
        } else {
            let built = self.unbuilt.take(&self.name, &self.decls);
            writer
                .write_all_built(Box::new(built), &mut self.outbox)
                .await
        } as u64;
        if lost > 0 {
            self.unwritten += lost;
            tracing::error!(reactor = %self.name, lost, "ledger writer gone; records not written");
        }
        self.note_status()
    }

    /// `Sync`: hands the boundaries just accepted to the writer before firing on them, so
    /// their senders' acknowledgements do not wait for the batch's firings.
    pub(crate) async fn hand_over_if_sync(&mut self) -> bool {
        if self.durability == Durability::Sync {
            self.hand_over().await
        } else {
            false
        }
    }

    /// Whether enough boundaries came in since the last snapshot.
    pub(crate) fn snapshot_due(&self) -> bool {
        self.since_snapshot >= self.snapshot_every
    }

    /// Records the reactor's state (cache, dirty flags, Sequential queue) so that a restart
    /// needs no boundary from before it (and retention may remove them). Returns whether the
    /// ledger's failing state changed.
    pub(crate) async fn snapshot(
        &mut self,
        trigger: &Trigger,
        sources: &[SourceName],
        decls: &[SourceDecl],
        counters: Counters,
        draining: bool,
    ) -> bool {
        let mut changed = self.hand_over().await;
        if !self.records_state() {
            return changed;
        }
        self.since_snapshot = 0;
        let encode = |index: usize, b: &Boundary| {
            decls
                .get(index)
                .ok_or_else(|| "source index out of range".to_owned())
                .and_then(|decl| boundary_record(&self.name, decl, b))
        };
        let cache = trigger.cache();
        let encoded = (0..decls.len())
            .filter_map(|index| cache.at(index).map(|b| encode(index, b)))
            .collect::<Result<Vec<_>, _>>()
            .and_then(|cache| {
                let queue = trigger
                    .queue()
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
                self.unwritten += 1;
                return self.note_status() || changed;
            }
        };
        let record = Record::Snapshot(SnapshotRecord {
            reactor: self.name.to_string(),
            last_seq: counters.last_seq,
            next_firing_id: counters.next_id,
            taken_at_unix_us: unix_us(SystemTime::now()),
            cache,
            dirty: sources
                .iter()
                .zip(trigger.dirty())
                .filter(|(_, d)| **d)
                .map(|(s, _)| s.as_str().to_owned())
                .collect(),
            queue,
        });
        if let Some(writer) = &self.writer {
            if let Err(e) = writer.write(record).await {
                self.unwritten += 1;
                tracing::error!(reactor = %self.name, error = %e, "ledger writer gone; snapshot not written");
            }
        }
        self.stats.snapshots.fetch_add(1, Ordering::Relaxed);
        changed |= self.note_status();
        if !draining {
            self.start_retention();
        }
        changed
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
        self.retaining = Some(self.runtime.spawn(async move {
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

    /// Rebuilds the trigger's state and the counters from the ledger (before the loop).
    pub(crate) async fn recover(
        &mut self,
        trigger: &mut Trigger,
        decls: &[SourceDecl],
        counters: &mut Counters,
    ) -> Result<(), RecoveryError> {
        let Some(ledger) = self.recover_from.take() else {
            return Ok(());
        };
        let fail = |e: LedgerError| RecoveryError {
            reactor: self.name.to_string(),
            reason: e.to_string(),
        };
        if !self.durability.records_state() {
            // Firings only: continue their ids after the last one, and the boundaries'
            // numbering after the last firing on the live cache (a `fire_with` carries its
            // caller's numbers, which say nothing about ours).
            if let Some(last) = ledger.last_firing(&self.name).await.map_err(fail)? {
                counters.next_id = last.firing_id + 1;
                counters.last_seq = last_live_seq(&*ledger, &self.name, last)
                    .await
                    .map_err(fail)?;
            }
            return Ok(());
        }
        let state = durable::recover(&*ledger, &self.name, decls, trigger.strategy()).await?;
        trigger.restore(state.cache, &state.dirty, state.queue);
        counters.last_seq = state.last_seq;
        counters.next_id = state.next_id;
        self.stats
            .recovered_boundaries
            .store(state.boundaries, Ordering::Relaxed);
        if state.boundaries > 0 || state.next_id > 1 {
            tracing::info!(reactor = %self.name, restored = state.boundaries, last_seq = state.last_seq, next_firing = state.next_id, "reactor state recovered from the ledger");
        }
        Ok(())
    }

    /// Where the ledger writer stands for delivery watermarks: records handed over, records
    /// settled (read after `handed`), and whether any record was lost (read after
    /// `settled`, so a loss inside it is seen). `None` without a ledger (or once closed).
    pub(crate) fn delivery_position(&self) -> Option<(u64, u64, bool)> {
        let writer = self.writer.as_ref()?;
        let handed = writer.handed();
        let settled = writer.settled();
        let lost = self.unwritten > 0 || writer.status().lost_records > 0;
        Some((handed, settled, lost))
    }

    /// Completes after the writer settles its next batch; `None` without a ledger.
    pub(crate) fn progressed(
        &self,
    ) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        self.writer.as_ref().map(LedgerWriter::progressed)
    }

    /// Publishes the writer's counters; returns whether the failing state changed.
    pub(crate) fn note_status(&mut self) -> bool {
        let Some(writer) = &self.writer else {
            return false;
        };
        let status = writer.status();
        self.stats
            .ledger_errors
            .store(status.failed_appends, Ordering::Relaxed);
        self.stats
            .ledger_lost
            .store(status.lost_records + self.unwritten, Ordering::Relaxed);
        // Failing while appends fail or the writer is gone; a later success clears it.
        let failing = status.failing || writer.is_closed();
        let changed = failing != self.failing;
        self.failing = failing;
        changed
    }

    /// Completes when the writer's status changes (an append failed, a batch was given up,
    /// appends recovered); never, without a ledger.
    pub(crate) async fn status_changed(&mut self) {
        let changed = match &mut self.status {
            Some(rx) => rx.changed().await.is_ok(),
            None => false,
        };
        if !changed {
            // No ledger, or the writer is gone (seen by `note_status`): nothing more to watch.
            self.status = None;
            std::future::pending::<()>().await;
        }
    }

    /// Closes the writer (every record handed over is appended or given up on), then runs
    /// retention once more now that the final snapshot is in the store.
    pub(crate) async fn close(&mut self) -> (Option<WriterReport>, u64) {
        let report = match self.writer.take() {
            Some(writer) => Some(writer.close().await),
            None => None,
        };
        if let Some(task) = self.retaining.take() {
            let _ = task.await;
        }
        self.start_retention();
        if let Some(task) = self.retaining.take() {
            let _ = task.await;
        }
        (report, self.unwritten)
    }
}

/// The newest input sequence number of the last firing on the live cache, searching back from
/// `last` a page at a time.
async fn last_live_seq(
    ledger: &dyn Ledger,
    reactor: &str,
    last: FiringRecord,
) -> Result<u64, LedgerError> {
    const PAGE: u64 = 256;
    let newest = |f: &FiringRecord| f.inputs.iter().map(|(_, s)| *s).max().unwrap_or(0);
    if last.trigger.on_live_cache() {
        return Ok(newest(&last));
    }
    let mut below = last.firing_id;
    while below > 1 {
        let from = below.saturating_sub(PAGE).max(1);
        let page = ledger
            .firings(
                &FiringQuery {
                    from_id: Some(from),
                    limit: Some(usize::try_from(below - from).unwrap_or(usize::MAX)),
                    ..FiringQuery::reactor(reactor)
                }
                .allow_gaps(),
            )
            .await?;
        if let Some(live) = page
            .iter()
            .rev()
            .find(|f| f.firing_id < below && f.trigger.on_live_cache())
        {
            return Ok(newest(live));
        }
        below = from;
    }
    Ok(0)
}

pub(crate) fn not_recorded(reason: String) -> LedgerError {
    LedgerError::Backend {
        backend: "reactor",
        message: reason,
    }
}
