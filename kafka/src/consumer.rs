//! The consumer thread: poll, decode, emit (pausing on backpressure), commit what is done.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cloacina_accumulators::{
    AccumulatorContext, AccumulatorError, AccumulatorHealth, AccumulatorMetrics,
};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::dead_letter::DeadLetters;
use crate::group::{Commit, SourceContext};
use crate::handoff::{offer, take, Held, InFlightWindow};
use crate::offsets::OffsetTracker;
use crate::source::{KafkaSource, StartFrom};

/// How long one poll waits (bounds how late a shutdown or a commit is noticed).
const POLL: Duration = Duration::from_millis(50);
/// How long the thread waits for room in the reactor's queue before it serves the client
/// (callbacks, rebalances) again.
const HOLD_WAIT: Duration = Duration::from_millis(20);
/// How long records may wait for room in the reactor's queue before the partitions are
/// paused (see the backpressure in `run`).
const PAUSE_AFTER: Duration = Duration::from_millis(250);
/// Tries of the final commit at close (100 ms of client service between them).
const CLOSE_COMMIT_ATTEMPTS: u32 = 20;
/// The longest the consumer stops handing out records after a commit was refused because
/// the group is rebalancing, if no rebalance callback or successful commit ends it sooner.
const REBALANCE_HOLD_MAX: Duration = Duration::from_secs(10);
/// While records keep coming, the clock (commit interval, rebalance hold) is read and the
/// event counters are published once per this many records, not per record; an idle poll
/// does both at once.
const CLOCK_EVERY: u32 = 64;
/// Records taken from the client at most before they are offered to the reactor together
/// (see the burst in `run`).
const BURST: u32 = 128;

/// Records taken but not yet added to the accumulator's event counters (published in
/// groups; whatever is left is published when the loop ends, however it ends).
struct Uncounted<'a> {
    metrics: &'a AccumulatorMetrics,
    events: u64,
}

impl Uncounted<'_> {
    fn publish(&mut self) {
        if self.events > 0 {
            self.metrics.record_events(std::mem::take(&mut self.events));
        }
    }
}

impl Drop for Uncounted<'_> {
    fn drop(&mut self) {
        self.publish();
    }
}

/// Runs the consumer until shutdown; then waits (up to the close timeout) for the records in
/// flight to be done, commits, and leaves the group.
pub(crate) fn run<T: Send + Sync + 'static>(
    src: &KafkaSource<T>,
    ctx: &AccumulatorContext<T>,
    runtime: tokio::runtime::Handle,
) -> Result<(), AccumulatorError> {
    let source = ctx.source().clone();
    let fail = |message: String| AccumulatorError::Failed {
        source_name: source.clone(),
        message,
    };
    if ctx.position_reader().is_some() {
        // A restarted instance: the boundaries earlier instances sent must be recorded
        // before the ledger's positions are read, or they would be read (and recorded) again.
        let deadline = Instant::now() + src.pacing.close_timeout;
        while ctx.delivered().get() < ctx.metrics().boundaries()
            && Instant::now() < deadline
            && !ctx.is_shutdown()
        {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    if let Some(link) = &src.exactly_once {
        // The sink must see every firing from the first (it counts them).
        while !link.sink_attached() && !ctx.is_shutdown() {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let window = src.pacing.max_in_flight.map(|max| InFlightWindow { max });
    let consumer = connect(src, ctx, runtime).map_err(&fail)?;
    if let Some(link) = &src.exactly_once {
        link.register_source(consumer.context().clone());
    }
    let dead_letters = match &src.dead_letter_topic {
        Some(topic) => Some(DeadLetters::new(&src.brokers, topic).map_err(&fail)?),
        None => None,
    };
    let shared = consumer.context().clone();
    let mut held: VecDeque<Held<T>> = VecDeque::new();
    let mut paused = false;
    let mut backed_up: Option<Instant> = None;
    let mut live = false;
    let mut last_commit = Instant::now();
    let mut seen_rebalances = 0u64;
    // Set when a commit was refused because the group is rebalancing: records taken from
    // now on could not be committed before their partitions move (a coordinator may refuse
    // every commit until the new generation forms), so the new owner would fire them again.
    // They are held, and the partitions paused, until this member's rebalance callback runs
    // (or a commit goes through again).
    let mut rebalance_hold: Option<Instant> = None;
    // librdkafka keeps a partition's pause across a revoke and a later assignment: after a
    // rebalance the pause state is applied to the new assignment whatever it was before.
    let mut reapply_pause = false;
    // Records taken since the clock was last read / the event counter last published.
    let mut unclocked = 0u32;
    let mut uncounted = Uncounted {
        metrics: ctx.metrics(),
        events: 0,
    };
    // The last non-blocking poll found nothing: the next poll may block.
    let mut quiet = false;
    loop {
        if ctx.is_shutdown() {
            break;
        }
        if src.exactly_once.as_ref().is_some_and(|l| l.failed()) {
            consumer.unsubscribe();
            return Err(fail(
                "the exactly-once sink aborted a transaction; restart the pipeline".into(),
            ));
        }
        let clock_due = unclocked >= CLOCK_EVERY || !held.is_empty() || rebalance_hold.is_some();
        if clock_due {
            unclocked = 0;
            uncounted.publish();
        }
        if clock_due && last_commit.elapsed() >= src.pacing.commit_every {
            match shared.commit(&consumer) {
                Commit::Failed { rebalancing: true } => {
                    if rebalance_hold.is_none() {
                        rebalance_hold = Some(Instant::now());
                        shared.stats.rebalance_holds.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(source = %source, "group rebalancing: holding records until the partitions move");
                    }
                }
                Commit::Done => rebalance_hold = None,
                Commit::NothingDue | Commit::Failed { rebalancing: false } => {}
            }
            last_commit = Instant::now();
        }
        if rebalance_hold.is_some_and(|since| since.elapsed() >= REBALANCE_HOLD_MAX) {
            rebalance_hold = None;
        }
        let holding = rebalance_hold.is_some();
        // Backpressure: offer what is held before taking more, waiting (parked, woken as
        // soon as the reactor makes room) up to HOLD_WAIT for each.
        // (Not while a rebalance hold lasts.)
        if !holding {
            while let Some(front) = held.pop_front() {
                if let Some(back) = offer(ctx, &shared, front, HOLD_WAIT, window.as_ref())? {
                    held.push_front(back);
                    break;
                }
            }
        }
        // Records held back since `backed_up` (the reactor had no room for them): once that
        // lasts PAUSE_AFTER, the reactor is well behind. Pause the partitions so librdkafka
        // stops fetching too (bounded memory on both sides); resume once every held record
        // is in. Until then the loop takes at most one more record per HOLD_WAIT. Not at
        // once: a pause drops what librdkafka prefetched for the partitions (fetched again
        // on resume), a waste when the reactor is only briefly slow (a ledger flush).
        // A rebalance hold pauses them too.
        if held.is_empty() {
            backed_up = None;
        } else if backed_up.is_none() {
            backed_up = Some(Instant::now());
        }
        let behind = backed_up.is_some_and(|since| paused || since.elapsed() >= PAUSE_AFTER);
        let want_paused = holding || behind;
        if want_paused != paused || reapply_pause {
            set_paused(&consumer, want_paused)?;
            if want_paused && !paused && !holding {
                shared.stats.pauses.fetch_add(1, Ordering::Relaxed);
            }
            paused = want_paused;
            reapply_pause = false;
        }
        // Still full after waiting: only serve the client (callbacks, rebalances) now.
        let wait = if held.is_empty() || holding {
            POLL
        } else {
            Duration::ZERO
        };
        // A burst: records already fetched are taken together (up to BURST) and offered
        // together at the top of the next turn, so the reactor is woken once per burst, not
        // once per record. Only while nothing is held back (memory stays bounded under
        // backpressure), and it ends at a rebalance (its records are then checked below).
        let burst_max = if held.is_empty() && !holding {
            BURST
        } else {
            1
        };
        let mut burst = 0;
        while burst < burst_max {
            // Before blocking, a non-blocking poll: if nothing is waiting, the loop goes
            // round (reading the clock: a commit may be due) and blocks on the next poll.
            // So a record that had to be waited for is always followed by a clock read:
            // only records that were already there when asked for (a burst) share one.
            let polled = if burst > 0 {
                consumer.poll(Duration::ZERO)
            } else if wait.is_zero() || quiet {
                quiet = false;
                consumer.poll(wait)
            } else {
                let polled = consumer.poll(Duration::ZERO);
                quiet = polled.is_none();
                polled
            };
            match polled {
                // Idle (or the burst is over): read the clock and publish the counters
                // next turn.
                None => {
                    unclocked = CLOCK_EVERY;
                    break;
                }
                Some(Err(e)) => {
                    unclocked = CLOCK_EVERY;
                    tracing::warn!(source = %source, error = %e, "kafka consume error");
                    break;
                }
                Some(Ok(msg)) => {
                    unclocked += 1;
                    uncounted.events += 1;
                    let (item, dead) = take(src, &shared, dead_letters.as_ref(), &msg);
                    held.push_back(item);
                    burst += 1;
                    if dead {
                        // A dead letter may wait for its topic's acknowledgement: a run of
                        // them must not hold off the commit clock, shutdown or the burst's
                        // offer.
                        unclocked = CLOCK_EVERY;
                        break;
                    }
                }
            }
            if shared.stats.rebalances.load(Ordering::Relaxed) != seen_rebalances {
                break;
            }
        }
        // Records held for partitions revoked meanwhile are the new owner's now (checked only
        // after a rebalance: a scan per record would cost O(held) each).
        let rebalances = shared.stats.rebalances.load(Ordering::Relaxed);
        if rebalances != seen_rebalances {
            // This member's rebalance callback ran: the hold has done its job. Records
            // still held (checked below) start a new wait for room.
            rebalance_hold = None;
            reapply_pause = true;
            backed_up = None;
        }
        if rebalances != seen_rebalances && !held.is_empty() {
            let tracker = shared.tracker();
            held.retain(|h| match h {
                Held::Value {
                    slot, generation, ..
                }
                | Held::Skip {
                    slot, generation, ..
                } => tracker.is_current(*slot, *generation),
            });
        }
        seen_rebalances = rebalances;
        let down = shared.brokers_down.load(Ordering::Acquire);
        let health = if down {
            AccumulatorHealth::Disconnected
        } else {
            AccumulatorHealth::Live
        };
        if down || !live {
            ctx.set_health(health);
            live = !down;
        }
    }
    uncounted.publish();
    close(src, ctx, &consumer, &shared);
    Ok(())
}

/// Pauses or resumes every assigned partition.
fn set_paused(consumer: &BaseConsumer<SourceContext>, pause: bool) -> Result<(), AccumulatorError> {
    let assignment = consumer
        .assignment()
        .map_err(|e| AccumulatorError::Failed {
            source_name: consumer.context().source.as_str().into(),
            message: format!("cannot read the assignment: {e}"),
        })?;
    let result = if pause {
        consumer.pause(&assignment)
    } else {
        consumer.resume(&assignment)
    };
    result.map_err(|e| AccumulatorError::Failed {
        source_name: consumer.context().source.as_str().into(),
        message: format!(
            "cannot {} partitions: {e}",
            if pause { "pause" } else { "resume" }
        ),
    })
}

/// Creates the consumer, checks the brokers and topics, subscribes.
fn connect<T: Send + Sync + 'static>(
    src: &KafkaSource<T>,
    ctx: &AccumulatorContext<T>,
    runtime: tokio::runtime::Handle,
) -> Result<BaseConsumer<SourceContext>, String> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &src.brokers)
        .set("group.id", &src.group_id)
        .set(
            "auto.offset.reset",
            match src.start {
                StartFrom::Earliest => "earliest",
                StartFrom::Latest => "latest",
            },
        );
    // librdkafka backs a partition's fetcher off for `fetch.queue.backoff.ms` (1 s by default)
    // once its local queue is past the thresholds: a consumer slower than the fetcher (any
    // consumer doing work) then drains the queue and idles for the rest of that second. 10 ms
    // keeps the queue bounded without the stall (measured: 170k -> see kafka_bench).
    config.set("fetch.queue.backoff.ms", "10");
    for (key, value) in &src.settings {
        config.set(key, value);
    }
    // Commit-after-fire owns the offsets.
    config
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false");
    let context = SourceContext {
        // The watermark counts every boundary of this source since the reactor started;
        // earlier instances (before a restart) have finished sending theirs.
        tracker: Mutex::new(OffsetTracker::after(ctx.metrics().boundaries())),
        delivered: Arc::clone(ctx.delivered()),
        brokers_down: AtomicBool::new(false),
        stats: Arc::clone(&src.stats),
        source: ctx.source().to_string(),
        positions: ctx.position_reader().map(|reader| (reader, runtime)),
        settle_timeout: src.pacing.close_timeout,
        transactional: src.exactly_once.is_some(),
        group: Mutex::new(None),
        revocations: std::sync::atomic::AtomicU64::new(0),
    };
    let consumer: BaseConsumer<SourceContext> = config
        .create_with_context(context)
        .map_err(|e| format!("bad Kafka configuration: {e}"))?;
    for topic in src.topics.iter().filter(|t| !t.starts_with('^')) {
        let metadata = consumer
            .fetch_metadata(Some(topic), src.pacing.connect_timeout)
            .map_err(|e| format!("cannot reach the brokers `{}`: {e}", src.brokers))?;
        let known = metadata
            .topics()
            .iter()
            .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty());
        if !known {
            return Err(format!(
                "topic `{topic}` does not exist on `{}`",
                src.brokers
            ));
        }
    }
    let topics: Vec<&str> = src.topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .map_err(|e| format!("cannot subscribe to {topics:?}: {e}"))?;
    Ok(consumer)
}

/// Waits (bounded) for the records in flight to be done, commits them, leaves the group.
fn close<T: Send + Sync + 'static>(
    src: &KafkaSource<T>,
    ctx: &AccumulatorContext<T>,
    consumer: &BaseConsumer<SourceContext>,
    shared: &SourceContext,
) {
    let deadline = Instant::now() + src.pacing.close_timeout;
    loop {
        let in_flight = {
            let mut tracker = shared.tracker();
            if shared.transactional {
                // Exactly-once: the sink retires records and commits them in its
                // transactions; wait until it has committed everything taken.
                tracker.in_flight() + tracker.due().len()
            } else {
                tracker.delivered(shared.delivered.get());
                tracker.in_flight()
            }
        };
        if in_flight == 0 || Instant::now() >= deadline {
            if in_flight > 0 {
                tracing::warn!(source = %ctx.source(), in_flight, "closing with records not done; they are read again on restart");
            }
            break;
        }
        // Keeps the group membership alive while the reactor finishes.
        let _ = consumer.poll(Duration::from_millis(5));
    }
    // The last commit may meet a rebalance in progress (another member joining or leaving):
    // serve the client and try again, or the next owner repeats what already fired.
    for attempt in 1..=CLOSE_COMMIT_ATTEMPTS {
        if matches!(shared.commit(consumer), Commit::Done | Commit::NothingDue) {
            break;
        }
        if attempt == CLOSE_COMMIT_ATTEMPTS {
            tracing::warn!(source = %ctx.source(), "final offset commit failed; the next owner reads the uncommitted records again");
            break;
        }
        let _ = consumer.poll(Duration::from_millis(100));
    }
    consumer.unsubscribe();
    ctx.set_health(AccumulatorHealth::Stopped);
}
