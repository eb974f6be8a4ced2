//! Cron schedules: registered in the store (shared by every runner on it), fired by each
//! runner's scheduler, each instant **exactly once** across all of them.
//!
//! A schedule lives in the store as a checkpoint of owner [`SCHEDULES_OWNER`], keyed by
//! its name (JSON). Every runner reads the list about once a second and fires the instants
//! as they come. The fire of instant `t` of schedule `s` is an execution whose id is
//! derived from `(s, t)` ([`fire_id`]): every runner that fires it writes the same start,
//! the store keeps the first (its owner is the runner that drives it), and the others see
//! that it is not theirs. That start is the audit record, written durably before anything
//! runs; if its runner dies before or while running it, the execution stays unfinished in
//! the store and the next runner start on the store resumes it (that runner's restart at
//! once, another runner's once the lease expired): the fire is never lost.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use cloacina_ledger::{now_unix_us, CheckpointRecord, Record};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{DefaultRunner, Inner, RunnerError};
use crate::cron::CronSpec;
use crate::Context;

/// The checkpoint owner under which schedules are stored.
pub const SCHEDULES_OWNER: &str = "cloacina/schedules";

/// How often a runner reads the schedules from the store (registrations, enables and
/// deletes made by other runners are seen within this).
const REFRESH: Duration = Duration::from_secs(1);

/// The most missed instants a [`CatchUp::RunMissed`] schedule may ask for.
pub const MAX_CATCH_UP: u32 = 1_000;

/// What a schedule does about instants that passed while no runner was firing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum CatchUp {
    /// They are not fired (the default): a runner fires the instants from when it starts.
    #[default]
    Skip,
    /// The latest `max` of them (at most [`MAX_CATCH_UP`]) that no runner fired are fired
    /// when a runner starts firing the schedule, oldest first, then the schedule goes on.
    RunMissed {
        /// At most this many.
        max: u32,
    },
}

/// A cron schedule: run `workflow` at each instant `expression` names in `time_zone`.
///
/// `expression`: five fields (`min hour day-of-month month day-of-week`), or six with
/// seconds first, or seven with a year. Each execution's input is the schedule's `input`
/// plus `schedule` (its name) and `scheduled_for` (the instant, RFC 3339 UTC).
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    /// Unique name in the store.
    pub name: String,
    /// The workflow it runs.
    pub workflow: String,
    /// The cron expression.
    pub expression: String,
    /// IANA time zone name (default `UTC`).
    pub time_zone: String,
    /// Missed instants (default [`CatchUp::Skip`]).
    pub catch_up: CatchUp,
    /// The input context of each execution (default empty).
    pub input: Context<Value>,
}

impl Schedule {
    /// A schedule `name` running `workflow` at the instants of `expression` (UTC).
    pub fn new(
        name: impl Into<String>,
        workflow: impl Into<String>,
        expression: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            workflow: workflow.into(),
            expression: expression.into(),
            time_zone: "UTC".into(),
            catch_up: CatchUp::Skip,
            input: Context::new(),
        }
    }

    /// The time zone the expression's times are read in (`Europe/Paris`).
    pub fn time_zone(mut self, zone: impl Into<String>) -> Self {
        self.time_zone = zone.into();
        self
    }

    /// What to do about missed instants.
    pub fn catch_up(mut self, catch_up: CatchUp) -> Self {
        self.catch_up = catch_up;
        self
    }

    /// The input context of each execution.
    pub fn input(mut self, input: Context<Value>) -> Self {
        self.input = input;
        self
    }
}

/// A stored schedule as [`DefaultRunner::schedules`] lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleInfo {
    /// The schedule.
    pub schedule: Schedule,
    /// Whether it fires.
    pub enabled: bool,
    /// Its next instant, if enabled.
    pub next: Option<SystemTime>,
}

/// What the store holds per schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Stored {
    workflow: String,
    expression: String,
    time_zone: String,
    catch_up: CatchUp,
    input: Value,
    enabled: bool,
    deleted: bool,
    registered_at_unix_us: i64,
}

impl Stored {
    fn schedule(&self, name: &str) -> Schedule {
        Schedule {
            name: name.to_owned(),
            workflow: self.workflow.clone(),
            expression: self.expression.clone(),
            time_zone: self.time_zone.clone(),
            catch_up: self.catch_up,
            input: Context::from_json(self.input.clone()).unwrap_or_default(),
        }
    }

    /// Everything but the enabled and registration stamps: a re-registration with the
    /// same definition changes nothing.
    fn same_definition(&self, other: &Stored) -> bool {
        (
            &self.workflow,
            &self.expression,
            &self.time_zone,
            self.catch_up,
            &self.input,
        ) == (
            &other.workflow,
            &other.expression,
            &other.time_zone,
            other.catch_up,
            &other.input,
        )
    }
}

/// The execution id of the fire of `schedule` at `instant_us`: in `2^62 .. 2^63`, above
/// every id the store's sequence hands out, the same in every runner (SHA-256 of both;
/// two fires meet on one id with a probability of about 2^-62 per pair).
pub(crate) fn fire_id(schedule: &str, instant_us: i64) -> u64 {
    derived_id(b"cloacina-cron", schedule, &instant_us.to_be_bytes())
}

/// An execution id in `2^62 .. 2^63` derived from `(kind, name, at)`: the same in every
/// runner, never one the store's sequence hands out.
pub(crate) fn derived_id(kind: &[u8], name: &str, at: &[u8]) -> u64 {
    let mut hash = Sha256::new();
    hash.update(kind);
    hash.update([0]);
    hash.update(name.as_bytes());
    hash.update([0]);
    hash.update(at);
    let digest = hash.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (1u64 << 62) | (u64::from_be_bytes(first) >> 2)
}

fn invalid(name: &str, reason: impl Into<String>) -> RunnerError {
    RunnerError::InvalidSchedule {
        name: name.to_owned(),
        reason: reason.into(),
    }
}

impl DefaultRunner {
    /// Registers `schedule` in the store, enabled; every runner on the store fires it
    /// from now on (within about a second). Registering the same definition again (every
    /// runner of a deployment at its start) changes nothing; another definition under the
    /// same name replaces it. An invalid expression or time zone, or an unknown workflow,
    /// is an error that says which.
    pub async fn register_schedule(&self, schedule: Schedule) -> Result<(), RunnerError> {
        let name = &schedule.name;
        if name.is_empty() || name.contains('\0') {
            return Err(invalid(name, "the name is empty or contains NUL"));
        }
        CronSpec::parse(&schedule.expression, &schedule.time_zone)
            .map_err(|reason| invalid(name, reason))?;
        if let CatchUp::RunMissed { max } = schedule.catch_up {
            if max > MAX_CATCH_UP {
                return Err(invalid(
                    name,
                    format!("RunMissed {{ max: {max} }}: at most {MAX_CATCH_UP} missed instants"),
                ));
            }
        }
        self.resolve(&schedule.workflow)?;
        let stored = Stored {
            workflow: schedule.workflow.clone(),
            expression: schedule.expression.clone(),
            time_zone: schedule.time_zone.clone(),
            catch_up: schedule.catch_up,
            input: schedule.input.to_json()?,
            enabled: true,
            deleted: false,
            registered_at_unix_us: now_unix_us(),
        };
        if let Some(old) = self.read_schedule(name).await? {
            if !old.deleted && old.same_definition(&stored) {
                return Ok(());
            }
        }
        self.write_schedule(name, &stored).await
    }

    /// The schedules in the store, by name.
    pub async fn schedules(&self) -> Result<Vec<ScheduleInfo>, RunnerError> {
        let now = Utc::now();
        Ok(read_all(&self.inner)
            .await?
            .into_iter()
            .map(|(name, stored)| {
                let next = stored
                    .enabled
                    .then(|| CronSpec::parse(&stored.expression, &stored.time_zone).ok())
                    .flatten()
                    .and_then(|spec| spec.next_after(now))
                    .map(SystemTime::from);
                ScheduleInfo {
                    schedule: stored.schedule(&name),
                    enabled: stored.enabled,
                    next,
                }
            })
            .collect())
    }

    /// Lets schedule `name` fire again, from now (a [`CatchUp::RunMissed`] schedule first
    /// fires the instants it missed that no runner fired, as at a runner's start).
    pub async fn enable_schedule(&self, name: &str) -> Result<(), RunnerError> {
        self.set_schedule(name, |s| s.enabled = true).await
    }

    /// Stops schedule `name` firing, on every runner (within about a second).
    pub async fn disable_schedule(&self, name: &str) -> Result<(), RunnerError> {
        self.set_schedule(name, |s| s.enabled = false).await
    }

    /// Removes schedule `name` (its past executions stay in the store).
    pub async fn delete_schedule(&self, name: &str) -> Result<(), RunnerError> {
        self.set_schedule(name, |s| {
            s.deleted = true;
            s.enabled = false;
        })
        .await
    }

    async fn set_schedule(
        &self,
        name: &str,
        change: impl FnOnce(&mut Stored),
    ) -> Result<(), RunnerError> {
        let mut stored = match self.read_schedule(name).await? {
            Some(s) if !s.deleted => s,
            _ => return Err(RunnerError::UnknownSchedule(name.to_owned())),
        };
        change(&mut stored);
        self.write_schedule(name, &stored).await
    }

    async fn read_schedule(&self, name: &str) -> Result<Option<Stored>, RunnerError> {
        let Some(record) = self.inner.ledger.checkpoint(SCHEDULES_OWNER, name).await? else {
            return Ok(None);
        };
        Ok(serde_json::from_slice(&record.value).ok())
    }

    async fn write_schedule(&self, name: &str, stored: &Stored) -> Result<(), RunnerError> {
        let value = serde_json::to_vec(stored).map_err(|e| invalid(name, e.to_string()))?;
        let record = Record::Checkpoint(CheckpointRecord {
            owner: SCHEDULES_OWNER.into(),
            key: name.to_owned(),
            value,
            at_unix_us: now_unix_us(),
        });
        self.inner
            .ledger
            .append(&[record], cloacina_ledger::Commit::Durable)
            .await?;
        self.inner.schedules_changed.notify_one();
        Ok(())
    }

    /// Fires instant `at` of schedule `name` unless some runner did: writes its start
    /// (the store keeps the first) and drives it if the start is this runner's. `false`:
    /// not done (the store failed, or the runner is stopping); to be tried again.
    async fn fire(&self, name: &str, stored: &Stored, at: DateTime<Utc>) -> bool {
        if !self
            .inner
            .accepting
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return false;
        }
        let instant_us = at.timestamp_micros();
        let id = fire_id(name, instant_us);
        if super::lock(&self.inner.live).contains_key(&id) {
            return true;
        }
        match self.inner.store.execution(id).await {
            Ok(Some(_)) => return true,
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(schedule = name, error = %e, "cannot check a schedule's fire; tried again in a second");
                return false;
            }
        }
        // Activation checked that this runner has the workflow.
        let Ok(workflow) = self.resolve(&stored.workflow) else {
            return false;
        };
        let mut input = Context::from_json(stored.input.clone()).unwrap_or_default();
        input.insert_or_update("schedule", Value::from(name));
        input.insert_or_update(
            "scheduled_for",
            Value::from(at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        );
        // The first start written wins: only its runner drives it. An error leaves the
        // instant to the next pass, which finds the start if it was written.
        match self.start_once(id, workflow, input).await {
            Ok(true) => {
                tracing::info!(schedule = name, execution = id, scheduled_for = %at, "schedule fired");
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(schedule = name, error = %e, "cannot record a schedule's fire; tried again in a second");
                return false;
            }
        }
        true
    }
}

async fn read_all(inner: &Inner) -> Result<Vec<(String, Stored)>, RunnerError> {
    let records = inner.ledger.checkpoints(SCHEDULES_OWNER).await?;
    Ok(records
        .into_iter()
        .filter_map(|r| {
            let stored: Stored = match serde_json::from_slice(&r.value) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(schedule = %r.key, error = %e, "stored schedule does not decode; skipped");
                    return None;
                }
            };
            (!stored.deleted).then_some((r.key, stored))
        })
        .collect())
}

/// A schedule this runner fires: its definition and the last instant it handled.
struct Active {
    stored: Stored,
    spec: CronSpec,
    cursor: DateTime<Utc>,
}

/// Each runner's scheduler: reads the schedules, fires their instants as they come.
pub(super) async fn scheduler(inner: std::sync::Weak<Inner>) {
    let mut active: HashMap<String, Active> = HashMap::new();
    let mut refreshed: Option<tokio::time::Instant> = None;
    let mut read_failures = 0u64;
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let runner = DefaultRunner { inner: strong };
        if !runner
            .inner
            .accepting
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return;
        }
        if refreshed.is_none_or(|at| at.elapsed() >= REFRESH) {
            refreshed = Some(tokio::time::Instant::now());
            match read_all(&runner.inner).await {
                Ok(all) => {
                    read_failures = 0;
                    refresh(&runner, &mut active, all).await;
                }
                Err(e) => {
                    // Logged at the first failure and once a minute after.
                    if read_failures % 60 == 0 {
                        tracing::warn!(error = %e, failures = read_failures + 1, "cannot read the schedules");
                    }
                    read_failures += 1;
                }
            }
        }
        // Fire what is due, in order; an instant not done is tried again after a pause.
        let now = Utc::now();
        let mut stalled = false;
        let names: Vec<String> = active.keys().cloned().collect();
        for name in names {
            while let Some(a) = active.get(&name) {
                let Some(next) = a.spec.next_after(a.cursor).filter(|t| *t <= now) else {
                    break;
                };
                let stored = a.stored.clone();
                if !runner.fire(&name, &stored, next).await {
                    stalled = true;
                    break;
                }
                if let Some(a) = active.get_mut(&name) {
                    a.cursor = next;
                }
            }
        }
        // Sleep until the next instant (at once if one is overdue; a pause after a
        // failure), the next refresh, or a local change.
        let until_refresh =
            REFRESH.saturating_sub(refreshed.map_or(Duration::ZERO, |r| r.elapsed()));
        let wait = if stalled {
            REFRESH
        } else {
            active
                .values()
                .filter_map(|a| a.spec.next_after(a.cursor))
                .min()
                .map_or(until_refresh, |t| {
                    (t - Utc::now())
                        .to_std()
                        .unwrap_or(Duration::ZERO)
                        .min(until_refresh)
                })
        };
        // Only the weak reference is held while waiting: a dropped runner's store closes.
        let changed = Arc::clone(&runner.inner.schedules_changed);
        drop(runner);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = changed.notified() => refreshed = None,
        }
    }
}

/// Brings the active set in line with the store: new or changed schedules whose workflow
/// this runner has start from now (firing their missed instants first, if their catch-up
/// says so), disabled and deleted ones stop.
async fn refresh(
    runner: &DefaultRunner,
    active: &mut HashMap<String, Active>,
    all: Vec<(String, Stored)>,
) {
    let now = Utc::now();
    let enabled: HashMap<String, Stored> = all.into_iter().filter(|(_, s)| s.enabled).collect();
    active.retain(|name, a| {
        enabled.get(name).is_some_and(|s| {
            s.same_definition(&a.stored)
                && s.registered_at_unix_us == a.stored.registered_at_unix_us
        })
    });
    for (name, stored) in enabled {
        if active.contains_key(&name) {
            continue;
        }
        let spec = match CronSpec::parse(&stored.expression, &stored.time_zone) {
            Ok(spec) => spec,
            Err(reason) => {
                tracing::error!(schedule = %name, %reason, "stored schedule is invalid; not fired");
                continue;
            }
        };
        // Fired here only once this runner has the workflow (registered, or declared):
        // until then, tried again at each refresh.
        if runner.resolve(&stored.workflow).is_err() {
            continue;
        }
        if let CatchUp::RunMissed { max } = stored.catch_up {
            let floor =
                DateTime::<Utc>::from_timestamp_micros(stored.registered_at_unix_us).unwrap_or(now);
            let mut done = true;
            for at in spec.last_before(now, floor, max.min(MAX_CATCH_UP) as usize) {
                if !runner.fire(&name, &stored, at).await {
                    done = false;
                    break;
                }
            }
            if !done {
                // Activated at a later refresh, its catch-up tried again then.
                continue;
            }
        }
        active.insert(
            name,
            Active {
                stored,
                spec,
                cursor: now,
            },
        );
    }
}
