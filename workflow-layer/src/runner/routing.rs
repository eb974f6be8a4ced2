//! Where a task attempt gets its slot, and when an execution may start its tasks.
//!
//! - **Executor pools** ([`ExecutorPool`]): named sets of task slots with their own limit.
//!   A task goes to the first pool one of whose patterns matches its qualified name
//!   `workflow::task`; a task no pool claims takes a slot of the default pool
//!   ([`RunnerConfig::concurrency`](super::RunnerConfig::concurrency)). Each attempt holds
//!   one slot of exactly one pool.
//! - **Per-key limits** ([`KeyLimit`]): at most `max` executions of a workflow run their
//!   tasks at once per value of one key of their input context. Further executions with
//!   that value are recorded as usual and wait, in arrival order, before their first task.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::{oneshot, Semaphore};

use super::RunnerError;
use crate::Context;

/// A named pool of task slots with its own concurrency limit, for the tasks whose qualified
/// name `workflow::task` matches one of its glob patterns (`*` any run of characters, `?`
/// one, `[abc]` one of a set): `ExecutorPool::new("gpu", 2, ["*::train_*"])`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutorPool {
    /// The pool's name (unique; `default` is the runner's own pool).
    pub name: String,
    /// Task attempts of this pool running at once (at least 1).
    pub concurrency: usize,
    /// Glob patterns on `workflow::task`; the first pool with a match takes the task.
    pub patterns: Vec<String>,
}

impl ExecutorPool {
    /// A pool named `name` running up to `concurrency` attempts of the tasks matching
    /// `patterns`.
    pub fn new(
        name: impl Into<String>,
        concurrency: usize,
        patterns: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Self {
            name: name.into(),
            concurrency,
            patterns: patterns.into_iter().map(Into::into).collect(),
        }
    }
}

/// At most `max` executions of `workflow` run their tasks at once for each value of the
/// input context's `key` (a string value as is, any other JSON value as its JSON text).
/// Executions without the key (or with `null`) are not limited. The limit holds within
/// one runner process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLimit {
    /// The workflow's name.
    pub workflow: String,
    /// The input context key whose value groups executions.
    pub key: String,
    /// Executions per value running at once (at least 1).
    pub max: usize,
}

impl KeyLimit {
    /// At most `max` running executions of `workflow` per value of context key `key`.
    pub fn new(workflow: impl Into<String>, key: impl Into<String>, max: usize) -> Self {
        Self {
            workflow: workflow.into(),
            key: key.into(),
            max,
        }
    }
}

/// A pool's figures now (see [`DefaultRunner::pools`](super::DefaultRunner::pools)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolUsage {
    /// The pool (`default` for the runner's own).
    pub name: String,
    /// Its limit.
    pub concurrency: usize,
    /// Slots held by running attempts.
    pub running: usize,
}

/// A key value's figures now (see [`DefaultRunner::key_usage`](super::DefaultRunner::key_usage)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyUsage {
    /// The workflow.
    pub workflow: String,
    /// The context key.
    pub key: String,
    /// The key's value.
    pub value: String,
    /// Executions with this value running their tasks.
    pub running: usize,
    /// Executions with this value waiting for one of them to end.
    pub waiting: usize,
}

/// The name of the runner's own pool.
pub(crate) const DEFAULT_POOL: &str = "default";

struct Pool {
    name: String,
    concurrency: usize,
    patterns: Vec<glob::Pattern>,
    slots: Arc<Semaphore>,
}

/// The executor pools, the default one last.
pub(crate) struct Pools {
    pools: Vec<Pool>,
}

impl Pools {
    /// Checks `routed` and builds the pools (`default_concurrency` for the default pool).
    pub(crate) fn new(
        default_concurrency: usize,
        routed: &[ExecutorPool],
    ) -> Result<Self, RunnerError> {
        let invalid = |reason: String| RunnerError::InvalidConfig { reason };
        if default_concurrency == 0 {
            return Err(invalid("concurrency must be at least 1".into()));
        }
        let mut pools = Vec::with_capacity(routed.len() + 1);
        for pool in routed {
            if pool.name.is_empty() || pool.name == DEFAULT_POOL {
                return Err(invalid(format!(
                    "executor pool name `{}` is empty or reserved",
                    pool.name
                )));
            }
            if pools.iter().any(|p: &Pool| p.name == pool.name) {
                return Err(invalid(format!(
                    "executor pool `{}` is declared twice",
                    pool.name
                )));
            }
            if pool.concurrency == 0 {
                return Err(invalid(format!(
                    "executor pool `{}`: concurrency must be at least 1",
                    pool.name
                )));
            }
            if pool.patterns.is_empty() {
                return Err(invalid(format!(
                    "executor pool `{}` has no task patterns",
                    pool.name
                )));
            }
            let patterns = pool
                .patterns
                .iter()
                .map(|p| {
                    glob::Pattern::new(p).map_err(|e| {
                        invalid(format!(
                            "executor pool `{}`: task pattern `{p}` is invalid: {e}",
                            pool.name
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            pools.push(Pool {
                name: pool.name.clone(),
                concurrency: pool.concurrency,
                patterns,
                slots: semaphore(pool.concurrency),
            });
        }
        pools.push(Pool {
            name: DEFAULT_POOL.into(),
            concurrency: default_concurrency,
            patterns: Vec::new(),
            slots: semaphore(default_concurrency),
        });
        Ok(Self { pools })
    }

    /// The slots of the pool that runs `workflow`'s task `task`.
    pub(crate) fn slots_for(&self, workflow: &str, task: &str) -> &Arc<Semaphore> {
        let routed = &self.pools[..self.pools.len() - 1];
        if !routed.is_empty() {
            let qualified = format!("{workflow}::{task}");
            if let Some(pool) = routed
                .iter()
                .find(|p| p.patterns.iter().any(|pat| pat.matches(&qualified)))
            {
                return &pool.slots;
            }
        }
        &self.default().slots
    }

    /// The pool `workflow::task` is routed to, by name.
    pub(crate) fn pool_name(&self, workflow: &str, task: &str) -> &str {
        let slots = self.slots_for(workflow, task);
        self.pools
            .iter()
            .find(|p| Arc::ptr_eq(&p.slots, slots))
            .map_or(DEFAULT_POOL, |p| p.name.as_str())
    }

    fn default(&self) -> &Pool {
        // `new` always pushes the default pool last.
        &self.pools[self.pools.len() - 1]
    }

    pub(crate) fn usage(&self) -> Vec<PoolUsage> {
        self.pools
            .iter()
            .map(|p| PoolUsage {
                name: p.name.clone(),
                concurrency: p.concurrency,
                running: p.concurrency.saturating_sub(p.slots.available_permits()),
            })
            .collect()
    }
}

fn semaphore(n: usize) -> Arc<Semaphore> {
    Arc::new(Semaphore::new(n.min(Semaphore::MAX_PERMITS)))
}

/// One key value's running executions and the ones waiting, in arrival order.
#[derive(Default)]
struct Gate {
    running: usize,
    queue: VecDeque<oneshot::Sender<()>>,
}

impl Gate {
    fn waiting(&self) -> usize {
        self.queue.iter().filter(|w| !w.is_closed()).count()
    }
}

/// The per-key limits and the key values in use.
pub(crate) struct KeyGates {
    limits: HashMap<String, KeyLimit>,
    gates: Mutex<HashMap<(String, String), Gate>>,
}

impl KeyGates {
    pub(crate) fn new(limits: &[KeyLimit]) -> Result<Self, RunnerError> {
        let mut by_workflow = HashMap::new();
        for limit in limits {
            let invalid = |what: &str| RunnerError::InvalidConfig {
                reason: format!("key limit of workflow `{}`: {what}", limit.workflow),
            };
            if limit.max == 0 {
                return Err(invalid("max must be at least 1"));
            }
            if limit.key.is_empty() {
                return Err(invalid("the context key is empty"));
            }
            if by_workflow
                .insert(limit.workflow.clone(), limit.clone())
                .is_some()
            {
                return Err(invalid("declared twice"));
            }
        }
        Ok(Self {
            limits: by_workflow,
            gates: Mutex::new(HashMap::new()),
        })
    }

    /// The limited key value of an execution of `workflow` on `input`, if any.
    pub(crate) fn key_of(&self, workflow: &str, input: &Context<Value>) -> Option<String> {
        let limit = self.limits.get(workflow)?;
        match input.get(&limit.key)? {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        }
    }

    /// The context key of `workflow`'s limit (empty without one).
    pub(crate) fn key_name(&self, workflow: &str) -> String {
        self.limits
            .get(workflow)
            .map(|l| l.key.clone())
            .unwrap_or_default()
    }

    /// Whether `workflow` has a key limit.
    pub(crate) fn limits(&self, workflow: &str) -> bool {
        self.limits.contains_key(workflow)
    }

    /// Joins the executions of `workflow` with key value `value`, behind those that joined
    /// before: the ticket gets a place at once if fewer than the limit are running, else
    /// when one ends; it keeps it until dropped.
    pub(crate) fn ticket(self: &Arc<Self>, workflow: &str, value: String) -> Option<KeyTicket> {
        let max = self.limits.get(workflow)?.max;
        let id = (workflow.to_owned(), value);
        let place = {
            let mut gates = lock(&self.gates);
            let gate = gates.entry(id.clone()).or_default();
            if gate.running < max {
                gate.running += 1;
                Place::Granted
            } else {
                let (tx, rx) = oneshot::channel();
                gate.queue.push_back(tx);
                Place::Waiting(rx)
            }
        };
        Some(KeyTicket {
            gates: Arc::clone(self),
            id,
            place,
        })
    }

    pub(crate) fn usage(&self) -> Vec<KeyUsage> {
        let gates = lock(&self.gates);
        let mut usage: Vec<KeyUsage> = gates
            .iter()
            .filter_map(|((workflow, value), gate)| {
                let limit = self.limits.get(workflow)?;
                Some(KeyUsage {
                    workflow: workflow.clone(),
                    key: limit.key.clone(),
                    value: value.clone(),
                    running: gate.running,
                    waiting: gate.waiting(),
                })
            })
            .collect();
        usage.sort_by(|a, b| (&a.workflow, &a.value).cmp(&(&b.workflow, &b.value)));
        usage
    }
}

enum Place {
    Granted,
    Waiting(oneshot::Receiver<()>),
}

/// An execution's place for its key value: [`KeyTicket::wait`] waits until it may run;
/// dropping the ticket passes its place to the next in line (or forgets the value once
/// nobody uses it).
pub(crate) struct KeyTicket {
    gates: Arc<KeyGates>,
    id: (String, String),
    place: Place,
}

impl KeyTicket {
    /// Whether it may run now.
    pub(crate) fn try_take(&mut self) -> bool {
        if let Place::Waiting(rx) = &mut self.place {
            if rx.try_recv().is_err() {
                return false;
            }
            self.place = Place::Granted;
        }
        true
    }

    /// Waits until it may run. Cancel-safe.
    pub(crate) async fn wait(&mut self) {
        if let Place::Waiting(rx) = &mut self.place {
            // The sender is dropped unsent only once this receiver is closed (see `Drop`).
            let _ = rx.await;
            self.place = Place::Granted;
        }
    }

    /// The key value.
    pub(crate) fn value(&self) -> &str {
        &self.id.1
    }
}

impl Drop for KeyTicket {
    fn drop(&mut self) {
        let mut gates = lock(&self.gates.gates);
        let Some(gate) = gates.get_mut(&self.id) else {
            return;
        };
        let granted = match &mut self.place {
            Place::Granted => true,
            // Closed under the lock: no place can be handed to it any more; one handed
            // before is passed on below.
            Place::Waiting(rx) => {
                rx.close();
                rx.try_recv().is_ok()
            }
        };
        if granted {
            // The place goes to the first in line still waiting.
            let mut passed = false;
            while let Some(next) = gate.queue.pop_front() {
                if next.send(()).is_ok() {
                    passed = true;
                    break;
                }
            }
            if !passed {
                gate.running = gate.running.saturating_sub(1);
            }
        }
        if gate.running == 0 && gate.waiting() == 0 {
            gates.remove(&self.id);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Single inserts and removes: consistent even after a panic elsewhere.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_matching_pool_takes_the_task_and_the_rest_go_to_the_default() {
        let pools = Pools::new(
            8,
            &[
                ExecutorPool::new("gpu", 2, ["*::train_*"]),
                ExecutorPool::new("io", 4, ["etl::*", "*::train_small"]),
            ],
        )
        .expect("valid pools");
        assert_eq!(pools.pool_name("ml", "train_big"), "gpu");
        assert_eq!(
            pools.pool_name("ml", "train_small"),
            "gpu",
            "first match wins"
        );
        assert_eq!(pools.pool_name("etl", "load"), "io");
        assert_eq!(pools.pool_name("ml", "report"), DEFAULT_POOL);
        let usage = pools.usage();
        let names: Vec<_> = usage
            .iter()
            .map(|u| (u.name.as_str(), u.concurrency))
            .collect();
        assert_eq!(names, [("gpu", 2), ("io", 4), ("default", 8)]);
    }

    #[test]
    fn bad_pools_and_limits_are_refused_naming_what_is_wrong() {
        let err = |pools: &[ExecutorPool]| match Pools::new(4, pools) {
            Err(RunnerError::InvalidConfig { reason }) => reason,
            Err(other) => panic!("unexpected {other}"),
            Ok(_) => panic!("accepted {pools:?}"),
        };
        assert!(err(&[ExecutorPool::new("p", 1, ["a[b"])]).contains("`a[b` is invalid"));
        assert!(err(&[ExecutorPool::new("p", 0, ["*"])]).contains("at least 1"));
        assert!(err(&[ExecutorPool::new("default", 1, ["*"])]).contains("reserved"));
        assert!(
            err(&[ExecutorPool::new("p", 1, Vec::<String>::new())]).contains("no task patterns")
        );
        assert!(err(&[
            ExecutorPool::new("p", 1, ["*"]),
            ExecutorPool::new("p", 1, ["*"])
        ])
        .contains("twice"));
        assert!(matches!(
            KeyGates::new(&[KeyLimit::new("w", "k", 0)]),
            Err(RunnerError::InvalidConfig { .. })
        ));
        assert!(matches!(
            KeyGates::new(&[KeyLimit::new("w", "k", 1), KeyLimit::new("w", "j", 1)]),
            Err(RunnerError::InvalidConfig { .. })
        ));
    }

    #[test]
    fn key_values_come_from_the_input_context() {
        let gates = KeyGates::new(&[KeyLimit::new("w", "customer", 1)]).expect("valid");
        let mut ctx = Context::new();
        assert_eq!(gates.key_of("w", &ctx), None, "no key: not limited");
        ctx.insert_or_update("customer", Value::from("acme"));
        assert_eq!(gates.key_of("w", &ctx).as_deref(), Some("acme"));
        ctx.insert_or_update("customer", Value::from(42));
        assert_eq!(gates.key_of("w", &ctx).as_deref(), Some("42"));
        ctx.insert_or_update("customer", Value::Null);
        assert_eq!(gates.key_of("w", &ctx), None);
        assert_eq!(
            gates.key_of("other", &ctx),
            None,
            "other workflows are not limited"
        );
    }

    #[tokio::test]
    async fn a_key_admits_max_executions_in_order_and_forgets_idle_values() {
        let gates = Arc::new(KeyGates::new(&[KeyLimit::new("w", "k", 2)]).expect("valid"));
        let mut a = gates.ticket("w", "x".into()).expect("limited");
        let mut b = gates.ticket("w", "x".into()).expect("limited");
        let mut c = gates.ticket("w", "x".into()).expect("limited");
        let mut other = gates.ticket("w", "y".into()).expect("limited");
        assert!(a.try_take() && b.try_take());
        assert!(!c.try_take(), "a third execution of `x` waits");
        assert!(other.try_take(), "another value is not held back");
        let waiter = tokio::spawn(async move {
            c.wait().await;
            c
        });
        tokio::task::yield_now().await;
        let usage = gates.usage();
        assert_eq!(usage[0].value, "x");
        assert_eq!((usage[0].running, usage[0].waiting), (2, 1));
        drop(a);
        let c = waiter.await.expect("the waiter gets the freed slot");
        assert_eq!(c.value(), "x");
        drop((b, c, other));
        assert!(gates.usage().is_empty(), "idle values are forgotten");
    }
}
