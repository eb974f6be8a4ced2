//! Reactor-started workflows: a durable subscription of a workflow to a reactor's firings.
//!
//! A [`ReactorSubscription`] names a reactor, a workflow and how a firing becomes the
//! workflow's input (or is passed over). [`DefaultRunner::subscribe_reactor`] stores it
//! (checkpoint owner [`SUBSCRIPTIONS_OWNER`], key its name, with its **position**: the last
//! firing id handled) and returns a [`FiringSink`]:
//! - [`FiringSink::catch_up`] reads the reactor's firings after the position from the
//!   runner's ledger (where the reactor records them, if it shares the ledger) and starts
//!   an execution for each;
//! - [`FiringSink::deliver`] takes a firing pushed from the reactor in this process.
//!
//! The execution of firing `f` has an id derived from `(subscription, f)`, so a firing
//! handled twice (a replay after a restart overlapping what was already started) starts
//! once: at-least-once delivery, one execution per firing. The facade's
//! `cloacina::subscribe_workflow` wires a reactor's subscription stream to a sink.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cloacina_ledger::{
    now_unix_us, CheckpointRecord, FiringOutcome, FiringQuery, FiringRecord, Record,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::schedules::derived_id;
use super::{DefaultRunner, RunnerError};
use crate::Context;

/// The checkpoint owner under which subscriptions and their positions are stored.
pub const SUBSCRIPTIONS_OWNER: &str = "cloacina/subscriptions";

/// How far behind the stored position may lag the firings handled (a restart replays at
/// most this long's firings, each starting nothing new).
const SAVE_EVERY: Duration = Duration::from_millis(100);

/// Firings read from the ledger per catch-up query.
const CATCH_UP_BATCH: usize = 1_000;

/// Decides whether a firing starts the workflow, and with what input.
type Select = Arc<dyn Fn(&FiringRecord) -> Option<Context<Value>> + Send + Sync>;

/// A workflow subscribed to a reactor's firings. By default every completed firing starts
/// the workflow (failed ones do not), with an input holding only the keys every execution
/// gets: `reactor_name`, `reactor_firing_id` and `reactor_fired_at` (RFC 3339 UTC).
#[derive(Clone)]
pub struct ReactorSubscription {
    /// Unique name in the store (one live sink per name).
    pub name: String,
    /// The reactor.
    pub reactor: String,
    /// The workflow started.
    pub workflow: String,
    select: Select,
}

impl std::fmt::Debug for ReactorSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReactorSubscription")
            .field("name", &self.name)
            .field("reactor", &self.reactor)
            .field("workflow", &self.workflow)
            .finish_non_exhaustive()
    }
}

impl ReactorSubscription {
    /// `workflow` started by each completed firing of `reactor`.
    pub fn new(
        name: impl Into<String>,
        reactor: impl Into<String>,
        workflow: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            reactor: reactor.into(),
            workflow: workflow.into(),
            select: Arc::new(|firing: &FiringRecord| {
                matches!(firing.outcome, FiringOutcome::Completed { .. }).then(Context::new)
            }),
        }
    }

    /// Only the firings `filter` accepts start the workflow (failed ones included if it
    /// accepts them); the input is as by default.
    pub fn when(self, filter: impl Fn(&FiringRecord) -> bool + Send + Sync + 'static) -> Self {
        self.select(move |firing| filter(firing).then(Context::new))
    }

    /// `select` decides per firing: `Some(input)` starts the workflow on `input` (plus the
    /// reactor keys), `None` passes the firing over (as does a panic in it, logged).
    /// Outputs are in the record as the ledger encodes them
    /// (`cloacina::graph::codec::decode` reads one back).
    pub fn select(
        mut self,
        select: impl Fn(&FiringRecord) -> Option<Context<Value>> + Send + Sync + 'static,
    ) -> Self {
        self.select = Arc::new(select);
        self
    }
}

/// What the store holds per subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Stored {
    reactor: String,
    workflow: String,
    /// The last firing handled: its id and when it fired.
    position: u64,
    position_fired_at_unix_us: i64,
}

/// A subscription's delivery end in this runner: takes firings (pushed, or read back
/// from the ledger) and starts one execution per accepted firing.
pub struct FiringSink {
    subscription: ReactorSubscription,
    position: u64,
    position_fired_at: i64,
    saved: (u64, i64),
    saved_at: Instant,
    /// The last `deliver` failed: the next checks the store before starting.
    failed: bool,
    /// Other runners may handle this subscription too ([`DefaultRunner::follow_reactor`]):
    /// each start is written durably and read back, and driven only if this runner's was
    /// kept. Otherwise (the in-process push) starts go through the group commit.
    shared: bool,
    /// The runner, and the subscription's name held in it.
    hold: SinkName,
}

impl std::fmt::Debug for FiringSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FiringSink")
            .field("subscription", &self.subscription.name)
            .field("position", &self.position)
            .finish_non_exhaustive()
    }
}

impl DefaultRunner {
    /// Stores `subscription` and returns its sink. A subscription stored before for the
    /// same reactor and workflow keeps its position; a new one starts after the reactor's
    /// last firing in the runner's ledger (no backfill of older firings). One sink per name
    /// may be open in a runner; an unknown workflow is an error.
    pub async fn subscribe_reactor(
        &self,
        subscription: ReactorSubscription,
    ) -> Result<FiringSink, RunnerError> {
        let name = subscription.name.clone();
        let invalid = |reason: &str| RunnerError::InvalidSubscription {
            name: name.clone(),
            reason: reason.to_owned(),
        };
        if name.is_empty() || name.contains('\0') {
            return Err(invalid("the name is empty or contains NUL"));
        }
        self.resolve(&subscription.workflow)?;
        if !super::lock(&self.inner.sinks).insert(name.clone()) {
            return Err(invalid("a sink for it is already open in this runner"));
        }
        // From here the name is held; the sink (or this guard, on an error) frees it.
        let hold = SinkName {
            runner: self.clone(),
            name: name.clone(),
        };
        let stored = self
            .inner
            .ledger
            .checkpoint(SUBSCRIPTIONS_OWNER, &name)
            .await?
            .and_then(|r| serde_json::from_slice::<Stored>(&r.value).ok())
            .filter(|s| s.reactor == subscription.reactor && s.workflow == subscription.workflow);
        let (position, position_fired_at) = match stored {
            Some(s) => (s.position, s.position_fired_at_unix_us),
            None => match self.inner.ledger.last_firing(&subscription.reactor).await? {
                Some(last) => (last.firing_id, last.fired_at_unix_us),
                None => (0, i64::MIN),
            },
        };
        let mut sink = FiringSink {
            subscription,
            position,
            position_fired_at,
            saved: (u64::MAX, i64::MIN),
            saved_at: Instant::now(),
            failed: false,
            shared: false,
            hold,
        };
        sink.save().await?;
        Ok(sink)
    }
}

/// Frees a subscription's name in its runner when its sink goes.
struct SinkName {
    runner: DefaultRunner,
    name: String,
}

impl Drop for SinkName {
    fn drop(&mut self) {
        super::lock(&self.runner.inner.sinks).remove(&self.name);
    }
}

/// How long a pushed firing waits for the firings before it (missed by the stream) to
/// reach the ledger before they are given up, logged as not started.
const GAP_WAIT: Duration = Duration::from_secs(30);

impl FiringSink {
    /// The last firing id handled.
    pub fn position(&self) -> u64 {
        self.position
    }

    fn runner(&self) -> &DefaultRunner {
        &self.hold.runner
    }

    /// Starts the executions of the firings the runner's ledger holds past the position
    /// (what the stream did not bring: before subscribing, after a restart or a lag),
    /// including those of a reactor that numbered its firings again since the position
    /// (read by time); returns how many firings it handled.
    pub async fn catch_up(&mut self) -> Result<usize, RunnerError> {
        let mut handled = self.catch_up_ids().await?;
        if self.position_fired_at > i64::MIN {
            // Firings that fired after the position whatever their id (a reactor that
            // lost unwritten firings in a crash numbers from its ledger's last again).
            let mut since = self.position_fired_at;
            loop {
                let query = FiringQuery {
                    since_unix_us: Some(since),
                    limit: Some(CATCH_UP_BATCH),
                    ..FiringQuery::reactor(self.subscription.reactor.clone())
                };
                let firings = self.runner().inner.ledger.firings(&query).await?;
                for firing in &firings {
                    if self.handled_already(firing) {
                        continue;
                    }
                    self.handle(firing, true).await?;
                    handled += 1;
                }
                match firings.last() {
                    Some(last) if firings.len() == CATCH_UP_BATCH => {
                        since = (last.fired_at_unix_us).max(since.saturating_add(1));
                    }
                    _ => break,
                }
            }
        }
        self.save().await?;
        Ok(handled)
    }

    /// The firings the ledger holds past the position, by id.
    async fn catch_up_ids(&mut self) -> Result<usize, RunnerError> {
        let mut handled = 0;
        loop {
            let query = FiringQuery {
                from_id: Some(self.position.saturating_add(1)),
                limit: Some(CATCH_UP_BATCH),
                ..FiringQuery::reactor(self.subscription.reactor.clone())
            }
            .allow_gaps();
            let firings = self.runner().inner.ledger.firings(&query).await?;
            for firing in &firings {
                self.handle(firing, true).await?;
                handled += 1;
            }
            if firings.len() < CATCH_UP_BATCH {
                return Ok(handled);
            }
        }
    }

    /// Handles a firing pushed from the reactor: starts its execution unless the firing was
    /// handled already (at or before the position) or the subscription passes it over.
    /// Firings between the position and this one that the stream did not bring are read
    /// from the ledger first (waiting up to 30 s for its writer). A firing numbered at or
    /// below the position that fired after it is a new one (a reactor without a ledger
    /// numbers its firings from the start again when it restarts): it is handled, and the
    /// position follows it. After a failed call the next one checks the store before
    /// starting (the failed start may have been written).
    pub async fn deliver(&mut self, firing: &FiringRecord) -> Result<(), RunnerError> {
        if firing.reactor != self.subscription.reactor {
            return Err(RunnerError::InvalidSubscription {
                name: self.subscription.name.clone(),
                reason: format!(
                    "firing of reactor `{}` delivered to a subscription of `{}`",
                    firing.reactor, self.subscription.reactor
                ),
            });
        }
        if self.handled_already(firing) {
            return Ok(());
        }
        // A firing numbered at or below the position is a renumbered one: no gap to fill.
        if firing.firing_id > self.position.saturating_add(1) {
            self.fill_gap(firing.firing_id).await?;
        }
        let checked = self.failed;
        self.failed = true;
        self.handle(firing, checked).await?;
        self.failed = false;
        if self.saved_at.elapsed() >= SAVE_EVERY {
            self.save().await?;
        }
        Ok(())
    }

    /// Whether `firing` is at or before the position: numbered at or below it and fired
    /// no later (a lower number that fired later is a renumbered, new firing).
    fn handled_already(&self, firing: &FiringRecord) -> bool {
        firing.firing_id <= self.position && firing.fired_at_unix_us <= self.position_fired_at
    }

    /// Reads the firings before `id` (after the position) from the ledger, waiting for its
    /// writer; gives up (logged) if the ledger holds none of the reactor's firings, or
    /// after [`GAP_WAIT`].
    async fn fill_gap(&mut self, id: u64) -> Result<(), RunnerError> {
        let started = Instant::now();
        loop {
            self.catch_up_ids().await?;
            if self.position.saturating_add(1) >= id {
                return Ok(());
            }
            let recorded = self
                .runner()
                .inner
                .ledger
                .last_firing(&self.subscription.reactor)
                .await?
                .is_some();
            if !recorded || started.elapsed() >= GAP_WAIT {
                tracing::error!(subscription = %self.subscription.name,
                    from = self.position + 1, to = id - 1, recorded,
                    "firings missed by the stream are not in the ledger: not started");
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Writes the position to the store (if it moved). The facade's task calls it every
    /// 100 ms and at its end.
    pub async fn save(&mut self) -> Result<(), RunnerError> {
        let now = (self.position, self.position_fired_at);
        if self.saved == now {
            return Ok(());
        }
        let stored = Stored {
            reactor: self.subscription.reactor.clone(),
            workflow: self.subscription.workflow.clone(),
            position: self.position,
            position_fired_at_unix_us: self.position_fired_at,
        };
        let value = serde_json::to_vec(&stored).map_err(|e| RunnerError::InvalidSubscription {
            name: self.subscription.name.clone(),
            reason: e.to_string(),
        })?;
        self.hold
            .runner
            .inner
            .ledger
            .append(
                &[Record::Checkpoint(CheckpointRecord {
                    owner: SUBSCRIPTIONS_OWNER.into(),
                    key: self.subscription.name.clone(),
                    value,
                    at_unix_us: now_unix_us(),
                })],
                cloacina_ledger::Commit::Buffered,
            )
            .await?;
        self.saved = now;
        self.saved_at = Instant::now();
        Ok(())
    }

    /// Starts the execution of `firing` (once: `checked` looks for one started before, as
    /// a replay must) and moves the position past it.
    async fn handle(&mut self, firing: &FiringRecord, checked: bool) -> Result<(), RunnerError> {
        if !self
            .hold
            .runner
            .inner
            .accepting
            .load(std::sync::atomic::Ordering::Acquire)
        {
            // Not handled: the position stays, a later catch-up starts it.
            return Err(RunnerError::ShuttingDown);
        }
        let sub = &self.subscription;
        // A panicking `select` is reported and the firing passed over (never fatal).
        let selected =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (sub.select)(firing)))
                .unwrap_or_else(|payload| {
                    tracing::error!(subscription = %sub.name, firing = firing.firing_id,
                panic = %cloacina_graph_core::panic_message(payload),
                "the subscription's select panicked; firing passed over");
                    None
                });
        if let Some(mut input) = selected {
            // The firing's id and time: the same whether pushed or read back, and unique
            // even across a reactor that numbers its firings again.
            let mut key = [0u8; 16];
            key[..8].copy_from_slice(&firing.firing_id.to_be_bytes());
            key[8..].copy_from_slice(&firing.fired_at_unix_us.to_be_bytes());
            let id = derived_id(b"cloacina-reactor", &sub.name, &key);
            let runner = &self.hold.runner;
            let started = checked && runner.inner.store.execution(id).await?.is_some();
            if !started && !super::lock(&runner.inner.live).contains_key(&id) {
                input.insert_or_update("reactor_name", Value::from(firing.reactor.as_str()));
                input.insert_or_update("reactor_firing_id", Value::from(firing.firing_id));
                let fired_at =
                    chrono::DateTime::<chrono::Utc>::from_timestamp_micros(firing.fired_at_unix_us)
                        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
                        .unwrap_or_default();
                input.insert_or_update("reactor_fired_at", Value::from(fired_at));
                let workflow = runner.resolve(&sub.workflow)?;
                if self.shared {
                    // Another runner following the same subscription may start it too:
                    // one start is kept, and only its runner drives it.
                    runner.start_once(id, workflow, input).await?;
                } else {
                    runner.start_as(id, workflow, input).await?;
                }
            }
        }
        self.position = firing.firing_id;
        self.position_fired_at = firing.fired_at_unix_us;
        Ok(())
    }
}

impl DefaultRunner {
    /// Follows a reactor that runs in another process, through the store: the reactor
    /// records its firings into the ledger this runner shares (PostgreSQL, for processes
    /// on several machines), and every `poll` this task reads the firings past the
    /// subscription's position and starts the workflow for each it accepts, as
    /// [`FiringSink::catch_up`] does (one execution per firing, its id derived from the
    /// firing; the position saved after each read). The in-process push
    /// (`cloacina::subscribe_workflow`) is faster; this is for a reactor this process does
    /// not run. Store errors are retried at the next poll; the task ends when the runner
    /// begins to shut down, or on an error retrying cannot fix (logged).
    pub async fn follow_reactor(
        &self,
        subscription: ReactorSubscription,
        poll: Duration,
    ) -> Result<tokio::task::JoinHandle<()>, RunnerError> {
        if poll.is_zero() {
            return Err(RunnerError::InvalidSubscription {
                name: subscription.name.clone(),
                reason: "the poll interval must be more than zero".into(),
            });
        }
        let mut sink = self.subscribe_reactor(subscription).await?;
        sink.shared = true;
        let runner = self.clone();
        Ok(tokio::spawn(async move {
            let stopping = runner.shutting_down();
            tokio::pin!(stopping);
            loop {
                match sink.catch_up().await {
                    Ok(_) => {}
                    Err(e @ (RunnerError::Ledger(_) | RunnerError::Store(_))) => {
                        tracing::warn!(error = %e, "following a reactor through the store: read failed; next poll tries again");
                    }
                    Err(RunnerError::ShuttingDown) => break,
                    Err(e) => {
                        tracing::error!(error = %e, "following a reactor through the store stopped");
                        break;
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(poll) => {}
                    () = &mut stopping => break,
                }
            }
            if let Err(e) = sink.save().await {
                tracing::warn!(error = %e, "cannot save the workflow subscription's position");
            }
        }))
    }
}
