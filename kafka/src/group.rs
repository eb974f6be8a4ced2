//! [`SourceContext`]: what librdkafka's callbacks (run inside `poll`, on the consumer
//! thread) share with the consumer loop: the offset tracker, commits, the rebalance
//! handling (commit on revoke, resume from the ledger on assign) and the exactly-once
//! source side.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cloacina_accumulators::{Delivered, PositionReader};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::offsets::OffsetTracker;

/// What the librdkafka callbacks (run inside `poll`, on this thread) share with the loop.
pub(crate) struct SourceContext {
    pub(crate) tracker: Mutex<OffsetTracker>,
    pub(crate) delivered: Arc<Delivered>,
    /// Set by the error callback when every broker is down; cleared by the next record.
    pub(crate) brokers_down: AtomicBool,
    pub(crate) stats: Arc<crate::source::KafkaStats>,
    pub(crate) source: String,
    /// The ledger's source positions, read at each assignment (with the runtime that
    /// drives the ledger's I/O): `None` without a ledger.
    pub(crate) positions: Option<(PositionReader, tokio::runtime::Handle)>,
    /// How long an assignment waits for records of an earlier one to finish.
    pub(crate) settle_timeout: Duration,
    /// Exactly-once: the sink commits offsets in its transactions; this consumer never does.
    pub(crate) transactional: bool,
    /// Partition revocations seen (exactly-once: a transaction that spans one aborts).
    pub(crate) revocations: std::sync::atomic::AtomicU64,
    /// The consumer's group metadata, refreshed at each assignment (exactly-once).
    pub(crate) group: Mutex<Option<Arc<rdkafka::consumer::ConsumerGroupMetadata>>>,
}

impl crate::exactly_once::TransactionalOffsets for SourceContext {
    fn due_after(&self, boundaries: u64) -> crate::exactly_once::DueOffsets {
        let due = crate::exactly_once::due_after(&mut self.tracker(), boundaries);
        let group = self.group.lock().unwrap_or_else(|p| p.into_inner()).clone();
        (due, group)
    }

    fn committed(&self, offsets: &[(String, i32, i64)]) {
        self.tracker().committed(offsets);
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
    }

    fn revocations(&self) -> u64 {
        self.revocations.load(Ordering::Acquire)
    }
}

impl SourceContext {
    pub(crate) fn tracker(&self) -> MutexGuard<'_, OffsetTracker> {
        self.tracker.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Commits what is done on every assigned partition, synchronously. A failed commit is
    /// counted and logged; what it covered is committed by a later one.
    pub(crate) fn commit(&self, consumer: &BaseConsumer<SourceContext>) -> Commit {
        if self.transactional {
            // The sink commits, in its transactions.
            return Commit::NothingDue;
        }
        let due = {
            let mut tracker = self.tracker();
            tracker.delivered(self.delivered.get());
            tracker.due()
        };
        if due.is_empty() {
            return Commit::NothingDue;
        }
        let mut tpl = TopicPartitionList::new();
        for (topic, partition, offset) in &due {
            if let Err(e) = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset)) {
                tracing::warn!(source = %self.source, %topic, partition, error = %e, "bad offset");
                return Commit::Failed { rebalancing: false };
            }
        }
        match consumer.commit(&tpl, CommitMode::Sync) {
            Ok(()) => {
                self.tracker().committed(&due);
                self.stats.commits.fetch_add(1, Ordering::Relaxed);
                Commit::Done
            }
            Err(e) => {
                self.stats.commit_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(source = %self.source, error = %e, "offset commit failed; retried with the next one");
                // The coordinator is forming a new generation (or ours is stale): the
                // partitions are about to move.
                let rebalancing = matches!(
                    e.rdkafka_error_code(),
                    Some(
                        RDKafkaErrorCode::RebalanceInProgress
                            | RDKafkaErrorCode::IllegalGeneration
                            | RDKafkaErrorCode::UnknownMemberId
                    )
                );
                Commit::Failed { rebalancing }
            }
        }
    }
}

/// What one [`SourceContext::commit`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Commit {
    /// The done offsets are committed.
    Done,
    /// Nothing new was done since the last commit (or the sink commits: exactly-once).
    NothingDue,
    /// The broker refused; `rebalancing`: because the group is rebalancing.
    Failed { rebalancing: bool },
}

impl ClientContext for SourceContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::AllBrokersDown)
        ) {
            self.brokers_down.store(true, Ordering::Release);
        }
        tracing::warn!(source = %self.source, %error, reason, "kafka client error");
    }
}

impl SourceContext {
    /// With a ledger: moves each newly assigned partition to where the ledger says its
    /// recorded boundaries end (effectively-once into the ledger), unless the group's
    /// committed offset is further (work another member did since is not redone). Records
    /// this consumer took from it in an earlier assignment are let finish first (bounded by
    /// the close timeout), so the ledger's position covers them. Returns the partitions
    /// moved, with where they resume (recorded: they may be committed).
    fn resume_from_ledger(
        &self,
        consumer: &BaseConsumer<Self>,
        tpl: &mut TopicPartitionList,
    ) -> Vec<(String, i32, i64)> {
        let Some((reader, runtime)) = &self.positions else {
            return Vec::new();
        };
        self.settle_in_flight(tpl, None);
        let mut recorded = Vec::new();
        for elem in tpl.elements() {
            let (topic, partition) = (elem.topic(), elem.partition());
            let lane = cloacina_accumulators::lane_id(topic, partition);
            let reader = reader.clone();
            match run_on(runtime, async move { reader.get(lane).await }) {
                Some(Ok(Some(next))) => recorded.push((topic.to_owned(), partition, next)),
                Some(Ok(None)) => {}
                Some(Err(e)) => {
                    tracing::warn!(source = %self.source, topic, partition, error = %e, "cannot read the ledger's position; resuming from the committed offset");
                }
                None => {
                    tracing::warn!(source = %self.source, topic, partition, "the ledger read did not complete (runtime shut down, or the read panicked); resuming from the committed offset");
                }
            }
        }
        if recorded.is_empty() {
            return recorded;
        }
        let committed = consumer.committed_offsets(tpl.clone(), Duration::from_secs(10));
        recorded.retain(|(topic, partition, next)| {
            let group_at = committed
                .as_ref()
                .ok()
                .and_then(|c| c.find_partition(topic, *partition))
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                });
            if group_at.is_some_and(|o| o >= *next) {
                return false;
            }
            if let Err(e) = tpl.set_partition_offset(topic, *partition, Offset::Offset(*next)) {
                tracing::warn!(source = %self.source, %topic, partition, error = %e, "cannot resume from the ledger's position");
                return false;
            }
            tracing::info!(source = %self.source, %topic, partition, offset = next, committed = ?group_at, "resuming past the records the ledger holds");
            true
        });
        recorded
    }

    /// Waits (up to the close timeout) until no record this consumer took from the
    /// partitions of `tpl` is still in the reactor's hands. `commit_while`: commits what
    /// gets done meanwhile (every 20 ms), and stops waiting at once if the coordinator
    /// refuses a commit because the group is rebalancing (no commit could cover the rest).
    fn settle_in_flight(
        &self,
        tpl: &TopicPartitionList,
        commit_while: Option<&BaseConsumer<Self>>,
    ) {
        if self.transactional {
            // Exactly-once: records retire as the sink commits them, not by the watermark.
            return;
        }
        let deadline = Instant::now() + self.settle_timeout;
        let mut last_commit = Instant::now();
        loop {
            let pending: usize = {
                let mut tracker = self.tracker();
                tracker.delivered(self.delivered.get());
                tpl.elements()
                    .iter()
                    .map(|e| tracker.in_flight_of(e.topic(), e.partition()))
                    .sum()
            };
            if pending == 0 {
                return;
            }
            if Instant::now() >= deadline {
                tracing::warn!(source = %self.source, pending, "records of an earlier assignment still in flight; they may be recorded twice");
                return;
            }
            if let Some(consumer) = commit_while {
                if last_commit.elapsed() >= SETTLE_COMMIT_EVERY {
                    if matches!(self.commit(consumer), Commit::Failed { rebalancing: true }) {
                        return;
                    }
                    last_commit = Instant::now();
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// While a revoke waits for the records in flight, how often it commits what got done.
const SETTLE_COMMIT_EVERY: Duration = Duration::from_millis(20);

impl ConsumerContext for SourceContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        // rdkafka's default, with the assigned offsets moved to the ledger's positions first.
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            rdkafka::consumer::RebalanceProtocol::Cooperative
        );
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let resumed = self.resume_from_ledger(consumer, tpl);
                self.pre_rebalance(consumer, &Rebalance::Assign(tpl));
                let assigned = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = assigned {
                    tracing::error!(source = %self.source, error = %e, "cannot take the assigned partitions");
                }
                self.post_rebalance(consumer, &Rebalance::Assign(tpl));
                let mut tracker = self.tracker();
                for (topic, partition, next) in &resumed {
                    tracker.resumed(topic, *partition, *next);
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.pre_rebalance(consumer, &Rebalance::Revoke(tpl));
                let released = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = released {
                    tracing::error!(source = %self.source, error = %e, "cannot release the revoked partitions");
                }
                self.post_rebalance(consumer, &Rebalance::Revoke(tpl));
            }
            other => {
                let code: RDKafkaErrorCode = other.into();
                let rebalance = Rebalance::Error(KafkaError::Rebalance(code));
                self.pre_rebalance(consumer, &rebalance);
                self.post_rebalance(consumer, &rebalance);
            }
        }
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            self.stats.rebalances.fetch_add(1, Ordering::Relaxed);
            self.revocations.fetch_add(1, Ordering::AcqRel);
            // What is done is committed before the partitions go, and what is not done is
            // not. Where the coordinator takes commits during the rebalance (Kafka does
            // while the group prepares it), the records in flight from these partitions are
            // let finish first (bounded by the close timeout) and committed too, so the next
            // owner starts after them rather than firing them again. Where it refuses them
            // (some coordinators do until the new generation forms), waiting would only
            // hold up the whole group's rebalance: the next owner fires them again.
            if !matches!(self.commit(consumer), Commit::Failed { rebalancing: true }) {
                self.settle_in_flight(tpl, Some(consumer));
                let _ = self.commit(consumer);
            }
            let mut tracker = self.tracker();
            for elem in tpl.elements() {
                tracker.revoked(elem.topic(), elem.partition());
            }
            tracing::info!(source = %self.source, partitions = tpl.count(), "partitions revoked");
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                if self.transactional {
                    *self.group.lock().unwrap_or_else(|p| p.into_inner()) =
                        consumer.group_metadata().map(Arc::new);
                }
                self.stats.rebalances.fetch_add(1, Ordering::Relaxed);
                let mut tracker = self.tracker();
                for elem in tpl.elements() {
                    tracker.assigned(elem.topic(), elem.partition());
                }
                tracing::info!(source = %self.source, partitions = tpl.count(), "partitions assigned");
            }
            Rebalance::Error(e) => {
                tracing::warn!(source = %self.source, error = %e, "rebalance error");
            }
            Rebalance::Revoke(_) => {}
        }
    }
}

/// Runs `fut` on `runtime` and waits for its output on this thread (the consumer's own OS
/// thread, inside a librdkafka callback). `None` if the runtime is shut down or dropped
/// before the task completes. Unlike `Handle::block_on`, it cannot panic when the runtime
/// is gone, and a panic inside librdkafka's callback would abort the process.
pub(crate) fn run_on<F>(runtime: &tokio::runtime::Handle, fut: F) -> Option<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    // A runtime that is gone drops the task (and with it `tx`) without running it.
    drop(runtime.spawn(async move {
        let _ = tx.send(fut.await);
    }));
    rx.recv().ok()
}

#[cfg(test)]
mod tests {
    use super::run_on;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime")
    }

    #[test]
    fn run_on_returns_the_output_while_the_runtime_runs() {
        let rt = runtime();
        let got = run_on(rt.handle(), async {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            7
        });
        assert_eq!(got, Some(7));
    }

    #[test]
    fn run_on_a_runtime_that_is_gone_is_none_not_a_panic() {
        let rt = runtime();
        let handle = rt.handle().clone();
        rt.shutdown_background();
        assert_eq!(run_on(&handle, async { 7 }), None);
        // A task parked on I/O when the runtime goes away is dropped too.
        let rt = runtime();
        let handle = rt.handle().clone();
        let waiter = std::thread::spawn(move || {
            run_on(&handle, async {
                tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                7
            })
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        drop(rt);
        assert_eq!(waiter.join().expect("no panic"), None);
    }
}
