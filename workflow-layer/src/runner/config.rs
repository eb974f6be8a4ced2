//! [`RunnerConfig`] and [`RunnerBuilder`].

use std::time::Duration;

use cloacina_ledger::Commit;

use super::{DefaultRunner, ExecutorPool, KeyLimit, RunnerError};

/// How durable a record is when the runner goes on (to a task's dependants, or returns an
/// execution id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WorkflowDurability {
    /// Written to the store and visible before dependants start, made durable by the
    /// store's own schedule (sled: its flush every 500 ms; SQLite: WAL, `synchronous=NORMAL`;
    /// PostgreSQL: `synchronous_commit=off`). A crash of the machine (sled: of the process)
    /// can lose the last moments' records: those tasks run again on resume.
    #[default]
    Batched,
    /// On stable storage (fsync, or the server's synchronous commit) before dependants
    /// start. A crash re-runs only the tasks that were running.
    Sync,
}

impl WorkflowDurability {
    pub(crate) fn commit(self) -> Commit {
        match self {
            Self::Batched => Commit::Buffered,
            Self::Sync => Commit::Durable,
        }
    }
}

/// A runner's settings.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Task attempts running at once in the default pool: every task no [`ExecutorPool`]
    /// claims (default 64). A task waiting for a retry holds no slot.
    pub concurrency: usize,
    /// Named pools with limits of their own, for the tasks their patterns match (first
    /// match wins; default none).
    pub pools: Vec<ExecutorPool>,
    /// Per-key limits on running executions, at most one per workflow (default none).
    pub key_limits: Vec<KeyLimit>,
    /// When records are durable (default [`WorkflowDurability::Batched`]).
    pub durability: WorkflowDurability,
    /// This runner's name in the store's claims (default `"local"`). A runner restarted
    /// with the same name resumes its executions at once. Two processes running at the same
    /// time on one store must have distinct names: with the same name, each would resume
    /// the other's unfinished executions (and run their remaining tasks twice).
    pub runner_id: String,
    /// How long a claim holds without renewal (default 30 s; renewed every third of it).
    /// Another runner takes over an execution whose lease expired.
    pub lease: Duration,
    /// Events a slow subscriber may fall behind before it misses some (default 4,096).
    pub event_capacity: usize,
    /// Whether this runner claims work from the store (default `true`): executions
    /// submitted with [`DefaultRunner::submit`] by any process, and executions whose
    /// runner's lease expired, while it drives fewer than twice `concurrency` executions.
    /// A runner that only submits (a client) sets it `false`.
    pub takes_work: bool,
    /// How often a runner that takes work looks for expired leases and submitted work it
    /// was not told of (default 5 s). New work on PostgreSQL is announced at once
    /// (`LISTEN`/`NOTIFY`); this sweep is the slow fallback.
    pub sweep_interval: Duration,
    /// Takeovers after which an execution is abandoned instead of run again (default 3):
    /// it ends Failed with an `ABANDONED:` error. Caps an execution whose tasks kill every
    /// runner that takes it.
    pub max_takeovers: u32,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            concurrency: 64,
            pools: Vec::new(),
            key_limits: Vec::new(),
            durability: WorkflowDurability::Batched,
            runner_id: "local".into(),
            lease: Duration::from_secs(30),
            event_capacity: 4_096,
            takes_work: true,
            sweep_interval: Duration::from_secs(5),
            max_takeovers: 3,
        }
    }
}

impl RunnerConfig {
    pub(crate) fn lease_us(&self) -> i64 {
        i64::try_from(self.lease.as_micros()).unwrap_or(i64::MAX)
    }
}

/// Builds a [`DefaultRunner`]: `DefaultRunner::builder().url("sqlite://wf.db").concurrency(32).build().await`.
#[derive(Debug, Clone, Default)]
pub struct RunnerBuilder {
    url: Option<String>,
    tenant: Option<String>,
    config: RunnerConfig,
}

impl RunnerBuilder {
    /// The ledger URL (default `sled://./cloacina-data`).
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = Some(url.into());
        self
    }

    /// A tenant's store at the URL (see [`DefaultRunner::with_schema`]).
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// Task attempts running at once in the default pool.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.config.concurrency = n;
        self
    }

    /// A named pool of `concurrency` task slots for the tasks whose `workflow::task` name
    /// matches one of `patterns` (see [`ExecutorPool`]).
    pub fn pool(
        mut self,
        name: impl Into<String>,
        concurrency: usize,
        patterns: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        self.config
            .pools
            .push(ExecutorPool::new(name, concurrency, patterns));
        self
    }

    /// At most `max` executions of `workflow` running their tasks at once per value of the
    /// input context's `key` (see [`KeyLimit`]).
    pub fn limit_per_key(
        mut self,
        workflow: impl Into<String>,
        key: impl Into<String>,
        max: usize,
    ) -> Self {
        self.config
            .key_limits
            .push(KeyLimit::new(workflow, key, max));
        self
    }

    /// When records are durable.
    pub fn durability(mut self, durability: WorkflowDurability) -> Self {
        self.config.durability = durability;
        self
    }

    /// This runner's name in claims.
    pub fn runner_id(mut self, id: impl Into<String>) -> Self {
        self.config.runner_id = id.into();
        self
    }

    /// How long a claim holds without renewal.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.config.lease = lease;
        self
    }

    /// Events a slow subscriber may fall behind.
    pub fn event_capacity(mut self, n: usize) -> Self {
        self.config.event_capacity = n;
        self
    }

    /// Whether this runner claims work from the store (see [`RunnerConfig::takes_work`]).
    pub fn takes_work(mut self, takes: bool) -> Self {
        self.config.takes_work = takes;
        self
    }

    /// How often to sweep for expired leases and unannounced work.
    pub fn sweep_interval(mut self, every: Duration) -> Self {
        self.config.sweep_interval = every;
        self
    }

    /// Takeovers after which an execution is abandoned.
    pub fn max_takeovers(mut self, n: u32) -> Self {
        self.config.max_takeovers = n;
        self
    }

    /// Opens the store and starts the runner.
    pub async fn build(self) -> Result<DefaultRunner, RunnerError> {
        let url = self.url.unwrap_or_else(|| "sled://./cloacina-data".into());
        let ledger = match &self.tenant {
            Some(tenant) => cloacina_ledger::open_tenant(&url, tenant).await?,
            None => cloacina_ledger::open(&url).await?,
        };
        DefaultRunner::from_ledger(ledger, self.config).await
    }
}
