//! [`Task`]: one step of a workflow, and [`TaskError`], how it fails.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde_json::Value;

use crate::{Context, ContextError, InvokeError, RetryPolicy, TriggerRule};

/// Why a task failed. `?` on a [`ContextError`] or an [`InvokeError`] inside a task gives
/// one of these.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError {
    /// The task found its input unacceptable.
    #[error("validation failed: {message}")]
    ValidationFailed {
        /// What was wrong.
        message: String,
    },
    /// The task's work failed.
    #[error("execution failed: {message}")]
    ExecutionFailed {
        /// What went wrong.
        message: String,
    },
    /// The task ran past its timeout and was stopped.
    #[error("timed out after {after:?}")]
    Timeout {
        /// The timeout.
        after: Duration,
    },
    /// The task panicked (the panic is caught: only this task fails).
    #[error("panicked: {message}")]
    Panicked {
        /// The panic's message.
        message: String,
    },
    /// A context operation failed.
    #[error(transparent)]
    Context(#[from] ContextError),
    /// A graph the task invoked failed.
    #[error(transparent)]
    Graph(#[from] InvokeError),
}

impl TaskError {
    /// An [`ExecutionFailed`](TaskError::ExecutionFailed) error.
    pub fn failed(message: impl Into<String>) -> Self {
        TaskError::ExecutionFailed {
            message: message.into(),
        }
    }

    /// A [`ValidationFailed`](TaskError::ValidationFailed) error.
    pub fn invalid(message: impl Into<String>) -> Self {
        TaskError::ValidationFailed {
            message: message.into(),
        }
    }
}

/// What [`Task::execute`] returns: a boxed future borrowing the task and the context.
pub type TaskFuture<'a> = Pin<Box<dyn Future<Output = Result<(), TaskError>> + Send + 'a>>;

/// One step of a [`Workflow`](crate::Workflow): an id unique in its workflow, the ids of the
/// tasks it depends on (in declaration order: their outputs are merged into its input in that
/// order, later wins), and the work, which reads and writes the context it is given. What
/// the context holds when the work returns `Ok` is the task's output.
///
/// `#[task]` implements this for an `async fn(&mut Context<Value>) -> Result<(), TaskError>`;
/// [`FnTask`] does for a closure.
pub trait Task: Send + Sync + 'static {
    /// The task's id, unique in its workflow.
    fn id(&self) -> &str;

    /// Ids of the tasks this one runs after, in declaration order.
    fn dependencies(&self) -> &[String];

    /// Runs the task on `ctx` (its input; what `ctx` holds on `Ok` is its output; on `Err`
    /// what it holds is not used).
    fn execute<'a>(&'a self, ctx: &'a mut Context<Value>) -> TaskFuture<'a>;

    /// A fingerprint of the task's code, folded into the workflow's version (`#[task]`
    /// hashes the function's source; `None` leaves the version to ids and dependencies).
    fn code_fingerprint(&self) -> Option<&str> {
        None
    }

    /// How a failure is retried (default: one attempt, no retry).
    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy::default()
    }

    /// When the task runs once its dependencies are final (default, `None`: only if every
    /// dependency completed; otherwise it is Skipped).
    fn trigger_rule(&self) -> Option<&TriggerRule> {
        None
    }

    /// How long one attempt may run before it is stopped and fails with
    /// [`TaskError::Timeout`] (default: no limit).
    fn timeout(&self) -> Option<Duration> {
        None
    }
}

type BoxedFn = dyn Fn(Context<Value>) -> Pin<Box<dyn Future<Output = Result<Context<Value>, TaskError>> + Send>>
    + Send
    + Sync;

/// A [`Task`] made from a closure that takes the input context and returns the output one:
/// how code without macros writes a task.
///
/// ```
/// use cloacina_workflow_layer::{Context, FnTask, Task};
/// let load = FnTask::new("load", ["extract"], |mut ctx: Context| async move {
///     ctx.insert("loaded", serde_json::json!(true))?;
///     Ok(ctx)
/// });
/// assert_eq!(load.dependencies(), ["extract"]);
/// ```
pub struct FnTask {
    id: String,
    dependencies: Vec<String>,
    fingerprint: Option<String>,
    retry: RetryPolicy,
    rule: Option<TriggerRule>,
    timeout: Option<Duration>,
    run: Box<BoxedFn>,
}

impl FnTask {
    /// A task `id` running after `dependencies`, doing `run`.
    pub fn new<D, S, F, Fut>(id: impl Into<String>, dependencies: D, run: F) -> Self
    where
        D: IntoIterator<Item = S>,
        S: Into<String>,
        F: Fn(Context<Value>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Context<Value>, TaskError>> + Send + 'static,
    {
        Self {
            id: id.into(),
            dependencies: dependencies.into_iter().map(Into::into).collect(),
            fingerprint: None,
            retry: RetryPolicy::default(),
            rule: None,
            timeout: None,
            run: Box::new(move |ctx| Box::pin(run(ctx))),
        }
    }

    /// Sets the code fingerprint folded into the workflow's version (change it when the
    /// closure's behaviour changes).
    pub fn fingerprint(mut self, fingerprint: impl Into<String>) -> Self {
        self.fingerprint = Some(fingerprint.into());
        self
    }

    /// Sets the retry policy.
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Sets the trigger rule.
    pub fn trigger_rule(mut self, rule: TriggerRule) -> Self {
        self.rule = Some(rule);
        self
    }

    /// Sets the per-attempt timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

impl std::fmt::Debug for FnTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FnTask")
            .field("id", &self.id)
            .field("dependencies", &self.dependencies)
            .finish_non_exhaustive()
    }
}

impl Task for FnTask {
    fn id(&self) -> &str {
        &self.id
    }

    fn dependencies(&self) -> &[String] {
        &self.dependencies
    }

    fn execute<'a>(&'a self, ctx: &'a mut Context<Value>) -> TaskFuture<'a> {
        Box::pin(async move {
            // On failure the context is left empty: a failed task has no output.
            *ctx = (self.run)(std::mem::take(ctx)).await?;
            Ok(())
        })
    }

    fn code_fingerprint(&self) -> Option<&str> {
        self.fingerprint.as_deref()
    }

    fn retry_policy(&self) -> RetryPolicy {
        self.retry.clone()
    }

    fn trigger_rule(&self) -> Option<&TriggerRule> {
        self.rule.as_ref()
    }

    fn timeout(&self) -> Option<Duration> {
        self.timeout
    }
}
