//! [`RunnerError`]: what a runner refuses or cannot do.

use std::sync::Arc;

use cloacina_ledger::LedgerError;

use crate::{ContextError, WorkflowError};

/// What the runner refused or could not do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunnerError {
    /// Opening or using the store failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// A record could not be written (the store's error, shared by every execution in the
    /// failed batch). The execution stays unfinished in the store and resumes when a
    /// runner restarts on it.
    #[error("recording failed: {0}")]
    Store(Arc<LedgerError>),
    /// The ledger given keeps no workflows.
    #[error("the {backend} ledger keeps no workflow store")]
    NoWorkflowStore {
        /// Its backend.
        backend: &'static str,
    },
    /// No workflow of that name is registered or declared.
    #[error("no workflow `{name}` is registered or declared (known: {known})")]
    UnknownWorkflow {
        /// The name asked for.
        name: String,
        /// The names that are known.
        known: String,
    },
    /// A declared workflow is invalid, or two different workflows were registered under
    /// one name.
    #[error(transparent)]
    Workflow(#[from] WorkflowError),
    /// Another workflow with this name (a different version) is registered already.
    #[error("workflow `{name}` is registered already with version {registered}; refusing version {offered}")]
    AlreadyRegistered {
        /// The name.
        name: String,
        /// The version registered.
        registered: String,
        /// The version offered.
        offered: String,
    },
    /// The input context could not be stored as JSON.
    #[error("input context: {0}")]
    Context(#[from] ContextError),
    /// The runner's settings are invalid (an executor pool, a key limit, a concurrency of 0).
    #[error("invalid runner configuration: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },
    /// A schedule's expression, time zone or name is invalid.
    #[error("schedule `{name}`: {reason}")]
    InvalidSchedule {
        /// The schedule.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A reactor subscription is invalid (its name, or the reactor it names).
    #[error("reactor subscription `{name}`: {reason}")]
    InvalidSubscription {
        /// The subscription.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A polling trigger is invalid (its name, interval or workflow), or one of that name
    /// is registered already.
    #[error("trigger `{name}`: {reason}")]
    InvalidTrigger {
        /// The trigger.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// No schedule of that name is in the store.
    #[error("no schedule `{0}` in the store")]
    UnknownSchedule(String),
    /// The runner is shutting down and takes no new executions.
    #[error("the runner is shutting down")]
    ShuttingDown,
    /// The store holds no execution with this id.
    #[error("no execution {0} in the store")]
    UnknownExecution(u64),
    /// The execution is not running in this runner (another runner holds it, or its
    /// workflow is not known here), so it cannot be controlled or awaited from here.
    #[error("execution {id} is not running in this runner ({reason})")]
    NotHere {
        /// The execution.
        id: u64,
        /// Why.
        reason: String,
    },
}
