//! # cloacina-workflow-layer
//!
//! DAG workflows (tasks, retries, trigger rules, deferral) run durably over the ledger's
//! workflow store. The layer has:
//!
//! - [`Context`] (`Context<serde_json::Value>` by default): the data tasks share, by key;
//! - [`Task`] (and [`FnTask`] for closures) with [`TaskError`], whose `From` impls let a
//!   task use `?` on context and graph operations;
//! - [`Workflow`] / [`Workflow::builder`]: a DAG of tasks validated by the same topology
//!   code as computation graphs (duplicate ids, unknown dependencies, cycles with their
//!   path), with a deterministic order and a content-based version;
//! - [`ExecutionState`]: the sans-IO core of an execution (which tasks are ready, each
//!   task's input, what a failure skips), and [`Workflow::run`], which drives it in this
//!   process without recording anything, returning a [`WorkflowExecutionResult`];
//! - [`invoke_graph`]: runs a trigger-less computation graph on a context: each source the
//!   graph reads is taken from the context key of the same name (absent key: the entry node
//!   sees `None`), and each terminal output is written back under its node's name.
//!
//! - [`DefaultRunner`]: runs workflows durably on a ledger URL (sled, SQLite, PostgreSQL,
//!   memory): each task's outcome is recorded (group commit) before its dependants start,
//!   and a restarted runner resumes interrupted executions without re-running completed
//!   tasks; execute / schedule / wait / status / cancel / pause / resume, execution events,
//!   [`TaskHandle::defer_until`];
//! - the registry of `#[workflow]` declarations ([`declared_workflow`]), which the runner
//!   consults by name.
//!
//! Cron schedules, triggers and several runners on one store come with the scheduling issue.
//!
//! ```
//! use std::sync::Arc;
//! use cloacina_graph_core::{source, GraphBuilder};
//! use cloacina_workflow_layer::{invoke_graph, Context};
//!
//! fn total(prices: Option<&Vec<f64>>) -> f64 { prices.map_or(0.0, |p| p.iter().sum()) }
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let graph = Arc::new(GraphBuilder::new("sum").node("total", (source::<Vec<f64>>("prices"),), total).build()?);
//! let mut ctx = Context::new();
//! ctx.insert("prices", serde_json::json!([1.5, 2.5]))?;
//! invoke_graph(&graph, &mut ctx).await?;
//! assert_eq!(ctx.get("total"), Some(&serde_json::json!(4.0)));
//! # Ok::<(), Box<dyn std::error::Error>>(()) }).unwrap();
//! ```

mod context;
mod cron;
mod declared;
mod defer;
mod execution;
mod invoke;
mod retry;
mod run;
mod runner;
mod task;
mod trigger;
mod workflow;

pub use context::{Context, ContextError};
pub use declared::{
    declared_schedules, declared_workflow, declared_workflows, DeclaredSchedule, Site,
    WorkflowEntry,
};
pub use defer::TaskHandle;
pub use execution::{ExecutionState, TaskState, WorkflowStatus};
pub use invoke::{invoke_graph, InvokeError};
pub use retry::{BackoffStrategy, RetryCondition, RetryPolicy, RetryPolicyBuilder};
pub use run::{TaskResult, WorkflowExecutionResult};
pub use runner::{
    CatchUp, ClaimStats, DefaultRunner, ExecutionEvent, ExecutionEventKind, ExecutorPool,
    FiringSink, KeyLimit, KeyUsage, PollingTrigger, PoolUsage, ReactorSubscription, RecordedEvent,
    RunnerBuilder, RunnerConfig, RunnerError, Schedule, ScheduleInfo, TriggerError, TriggerInfo,
    TriggerResult, WorkflowDurability, MAX_CATCH_UP, MIN_POLL_INTERVAL, SCHEDULES_OWNER,
    SUBSCRIPTIONS_OWNER, TRIGGERS_OWNER,
};
pub use task::{FnTask, Task, TaskError, TaskFuture};
pub use trigger::{
    all, always, any, context_value, none, task_failed, task_skipped, task_success, TriggerRule,
    ValueOperator,
};
pub use workflow::{Workflow, WorkflowBuilder, WorkflowError};

/// inventory, for the entries `#[workflow]` submits.
#[doc(hidden)]
pub use inventory;
/// serde_json, for code `#[task]` generates (context values are `serde_json::Value`).
#[doc(hidden)]
pub use serde_json;
