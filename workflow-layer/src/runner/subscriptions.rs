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
    /// reactor keys), `None` passes the firing over. Outputs are in the record as the
    /// ledger encodes them (`cloacina::codec::decode` reads one back).
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
    runner: DefaultRunner,
    subscription: ReactorSubscription,
    position: u64,
    position_fired_at: i64,
    saved: (u64, i64),
    saved_at: Instant,
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
    /// Stores `subscription` (keeping its position if it was stored before for the same
    /// reactor and workflow) and returns its sink. An unknown workflow is an error.
    pub async fn subscribe_reactor(
        &self,
        subscription: ReactorSubscription,
    ) -> Result<FiringSink, RunnerError> {
        let name = &subscription.name;
        if name.is_empty() || name.contains('\0') {
            return Err(RunnerError::InvalidSubscription {
                name: name.clone(),
                reason: "the name is empty or contains NUL".into(),
            });
        }
        self.resolve(&subscription.workflow)?;
        let stored = self
            .inner
            .ledger
            .checkpoint(SUBSCRIPTIONS_OWNER, name)
            .await?
            .and_then(|r| serde_json::from_slice::<Stored>(&r.value).ok())
            .filter(|s| s.reactor == subscription.reactor && s.workflow == subscription.workflow);
        let (position, position_fired_at) =
            stored.map_or((0, i64::MIN), |s| (s.position, s.position_fired_at_unix_us));
        let mut sink = FiringSink {
            runner: self.clone_handle(),
            subscription,
            position,
            position_fired_at,
            saved: (u64::MAX, i64::MIN),
            saved_at: Instant::now(),
        };
        sink.save().await?;
        Ok(sink)
    }

    fn clone_handle(&self) -> DefaultRunner {
        DefaultRunner {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl FiringSink {
    /// The last firing id handled.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Starts the executions of the firings the runner's ledger holds after the position
    /// (what a restart missed); returns how many firings it handled.
    pub async fn catch_up(&mut self) -> Result<usize, RunnerError> {
        let mut handled = 0;
        loop {
            let query = FiringQuery {
                from_id: Some(self.position.saturating_add(1)),
                limit: Some(CATCH_UP_BATCH),
                ..FiringQuery::reactor(self.subscription.reactor.clone())
            }
            .allow_gaps();
            let firings = self.runner.inner.ledger.firings(&query).await?;
            let n = firings.len();
            for firing in &firings {
                self.handle(firing, true).await?;
                handled += 1;
            }
            if n < CATCH_UP_BATCH {
                break;
            }
        }
        self.save().await?;
        Ok(handled)
    }

    /// Handles a firing pushed from the reactor: starts its execution unless the firing was
    /// handled already (at or before the position) or the subscription passes it over. A
    /// firing numbered at or below the position that fired after it is a new one (a
    /// reactor without a ledger numbers its firings from the start again when it
    /// restarts): it is handled, and the position follows it.
    pub async fn deliver(&mut self, firing: &FiringRecord) -> Result<(), RunnerError> {
        if firing.firing_id <= self.position && firing.fired_at_unix_us <= self.position_fired_at {
            return Ok(());
        }
        self.handle(firing, false).await?;
        if self.saved_at.elapsed() >= SAVE_EVERY {
            self.save().await?;
        }
        Ok(())
    }

    /// Writes the position to the store (if it moved).
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
        self.runner
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
            .runner
            .inner
            .accepting
            .load(std::sync::atomic::Ordering::Acquire)
        {
            // Not handled: the position stays, a later catch-up starts it.
            return Err(RunnerError::ShuttingDown);
        }
        let sub = &self.subscription;
        if let Some(mut input) = (sub.select)(firing) {
            // The firing's id and time: the same whether pushed or read back, and unique
            // even across a reactor that numbers its firings again.
            let mut key = [0u8; 16];
            key[..8].copy_from_slice(&firing.firing_id.to_be_bytes());
            key[8..].copy_from_slice(&firing.fired_at_unix_us.to_be_bytes());
            let id = derived_id(b"cloacina-reactor", &sub.name, &key);
            let started = checked && self.runner.inner.store.execution(id).await?.is_some();
            if !started && !super::lock(&self.runner.inner.live).contains_key(&id) {
                input.insert_or_update("reactor_name", Value::from(firing.reactor.as_str()));
                input.insert_or_update("reactor_firing_id", Value::from(firing.firing_id));
                let fired_at =
                    chrono::DateTime::<chrono::Utc>::from_timestamp_micros(firing.fired_at_unix_us)
                        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
                        .unwrap_or_default();
                input.insert_or_update("reactor_fired_at", Value::from(fired_at));
                let workflow = self.runner.resolve(&sub.workflow)?;
                self.runner.start_as(id, workflow, input).await?;
            }
        }
        self.position = firing.firing_id;
        self.position_fired_at = firing.fired_at_unix_us;
        Ok(())
    }
}
