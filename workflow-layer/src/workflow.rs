//! [`Workflow`]: a validated DAG of [`Task`]s with a content-based version, built with
//! [`Workflow::builder`].

use std::fmt::Write as _;
use std::sync::Arc;

use cloacina_topology::{Dag, DagError, DagNode};
use sha2::{Digest, Sha256};

use crate::Task;

/// A workflow was rejected at build time. Every variant names the workflow and the culprit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WorkflowError {
    /// The workflow name is empty.
    #[error("a workflow needs a name")]
    EmptyName,
    /// No task was added.
    #[error("workflow `{workflow}` has no tasks")]
    NoTasks {
        /// The workflow.
        workflow: String,
    },
    /// Two tasks share an id.
    #[error("workflow `{workflow}`: task `{task}` is declared twice")]
    DuplicateTask {
        /// The workflow.
        workflow: String,
        /// The id.
        task: String,
    },
    /// A task depends on an id no task has.
    #[error("workflow `{workflow}`: task `{task}` depends on unknown task `{dependency}`")]
    UnknownDependency {
        /// The workflow.
        workflow: String,
        /// The task declaring the dependency.
        task: String,
        /// The missing dependency.
        dependency: String,
    },
    /// A trigger rule refers to a task that is not a dependency of its task.
    #[error("workflow `{workflow}`: the trigger rule of `{task}` refers to `{referenced}`, which is not among its dependencies")]
    RuleNotADependency {
        /// The workflow.
        workflow: String,
        /// The task whose rule it is.
        task: String,
        /// The id the rule names.
        referenced: String,
    },
    /// Two `#[workflow]` declarations share the name.
    #[error("workflow `{workflow}` is declared twice ({first} and {second})")]
    DeclaredTwice {
        /// The workflow.
        workflow: String,
        /// Where the first declaration is (file:line:column).
        first: String,
        /// Where the second is.
        second: String,
    },
    /// The dependencies form a cycle.
    #[error("workflow `{workflow}`: dependency cycle {}", path.join(" -> "))]
    Cycle {
        /// The workflow.
        workflow: String,
        /// The cycle as a closed path from a dependency to its dependent (`[a, b, a]`).
        path: Vec<String>,
    },
}

/// A named DAG of tasks, validated when built (no duplicate id, no unknown dependency, no
/// cycle: the same rules, from the same code, as computation graphs' topology), with a
/// deterministic execution order and a content-based [`version`](Workflow::version).
///
/// ```
/// use cloacina_workflow_layer::{Context, FnTask, Workflow};
/// let wf = Workflow::builder("etl")
///     .description("extract then load")
///     .task(FnTask::new("extract", [] as [&str; 0], |ctx: Context| async move { Ok(ctx) }))
///     .task(FnTask::new("load", ["extract"], |ctx: Context| async move { Ok(ctx) }))
///     .build()?;
/// assert_eq!(wf.order().map(|t| t.id()).collect::<Vec<_>>(), ["extract", "load"]);
/// assert_eq!(wf.version().len(), 16);
/// # Ok::<(), cloacina_workflow_layer::WorkflowError>(())
/// ```
#[derive(Clone)]
pub struct Workflow {
    name: String,
    description: String,
    tasks: Vec<Arc<dyn Task>>,
    dag: Dag,
    version: String,
    /// What every execution shares (see [`ExecutionState`](crate::ExecutionState)).
    plan: Arc<crate::execution::Plan>,
}

impl std::fmt::Debug for Workflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workflow")
            .field("name", &self.name)
            .field("version", &self.version)
            .field(
                "tasks",
                &self.tasks.iter().map(|t| t.id()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Workflow {
    pub(crate) fn plan(&self) -> Arc<crate::execution::Plan> {
        Arc::clone(&self.plan)
    }

    /// Starts a workflow named `name`.
    pub fn builder(name: impl Into<String>) -> WorkflowBuilder {
        WorkflowBuilder {
            name: name.into(),
            description: String::new(),
            tasks: Vec::new(),
        }
    }

    /// The workflow's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its description (empty if none was given).
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The content-based version: 16 hex digits of a SHA-256 over the name and, per task in
    /// declaration order (which breaks ties in the execution order, so it is content), its
    /// id, dependencies, code fingerprint, retry policy, trigger rule and timeout. Recorded
    /// with every execution.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The tasks, in declaration order.
    pub fn tasks(&self) -> &[Arc<dyn Task>] {
        &self.tasks
    }

    /// The task `id`.
    pub fn task(&self, id: &str) -> Option<&Arc<dyn Task>> {
        self.index_of(id).map(|i| &self.tasks[i])
    }

    /// The tasks in a deterministic execution order: each after its dependencies, ties in
    /// declaration order.
    pub fn order(&self) -> impl Iterator<Item = &Arc<dyn Task>> + '_ {
        self.dag.order().iter().map(|&i| &self.tasks[i])
    }

    /// The ids of the tasks that depend on `id` directly (empty for an unknown id).
    pub fn dependents(&self, id: &str) -> Vec<&str> {
        self.index_of(id).map_or_else(Vec::new, |i| {
            self.dag
                .dependents(i)
                .iter()
                .map(|&d| self.tasks[d].id())
                .collect()
        })
    }

    /// Tasks grouped by depth: each group depends only on earlier groups, so a group's tasks
    /// can run in parallel.
    pub fn levels(&self) -> Vec<Vec<&str>> {
        self.dag
            .levels()
            .into_iter()
            .map(|level| level.into_iter().map(|i| self.tasks[i].id()).collect())
            .collect()
    }

    fn index_of(&self, id: &str) -> Option<usize> {
        self.tasks.iter().position(|t| t.id() == id)
    }
}

/// Builds a [`Workflow`]; [`build`](WorkflowBuilder::build) validates it.
pub struct WorkflowBuilder {
    name: String,
    description: String,
    tasks: Vec<Arc<dyn Task>>,
}

impl WorkflowBuilder {
    /// Sets the description.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// Adds a task.
    pub fn task(mut self, task: impl Task) -> Self {
        self.tasks.push(Arc::new(task));
        self
    }

    /// Adds a task already shared (a task may belong to several workflows).
    pub fn shared_task(mut self, task: Arc<dyn Task>) -> Self {
        self.tasks.push(task);
        self
    }

    /// Validates the tasks and computes the order and the version.
    pub fn build(self) -> Result<Workflow, WorkflowError> {
        let workflow = self.name;
        if workflow.trim().is_empty() {
            return Err(WorkflowError::EmptyName);
        }
        if self.tasks.is_empty() {
            return Err(WorkflowError::NoTasks { workflow });
        }
        let nodes: Vec<DagNode<'_>> = self
            .tasks
            .iter()
            .map(|t| DagNode::new(t.id(), t.dependencies().iter().map(String::as_str)))
            .collect();
        let dag = Dag::new(&nodes).map_err(|e| match e {
            DagError::DuplicateId { id } => WorkflowError::DuplicateTask {
                workflow: workflow.clone(),
                task: id,
            },
            DagError::UnknownDependency { id, dependency } => WorkflowError::UnknownDependency {
                workflow: workflow.clone(),
                task: id,
                dependency,
            },
            DagError::Cycle { path } => WorkflowError::Cycle {
                workflow: workflow.clone(),
                path,
            },
        })?;
        for task in &self.tasks {
            let Some(rule) = task.trigger_rule() else {
                continue;
            };
            if let Some(referenced) = rule
                .referenced_tasks()
                .into_iter()
                .find(|r| !task.dependencies().iter().any(|d| d == r))
            {
                return Err(WorkflowError::RuleNotADependency {
                    workflow,
                    task: task.id().to_owned(),
                    referenced: referenced.to_owned(),
                });
            }
        }
        let version = version(&workflow, &self.tasks);
        let mut built = Workflow {
            name: workflow,
            description: self.description,
            tasks: self.tasks,
            dag,
            version,
            plan: Arc::new(crate::execution::Plan::default()),
        };
        built.plan = Arc::new(crate::execution::Plan::new(
            &built.tasks,
            built.order().map(|t| t.id()),
        ));
        Ok(built)
    }
}

/// See [`Workflow::version`]. Fields are length-prefixed, so no two contents hash the same
/// bytes.
fn version(name: &str, tasks: &[Arc<dyn Task>]) -> String {
    let mut hasher = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    field(name.as_bytes());
    for task in tasks {
        field(task.id().as_bytes());
        field(&(task.dependencies().len() as u64).to_le_bytes());
        for dep in task.dependencies() {
            field(dep.as_bytes());
        }
        field(task.code_fingerprint().unwrap_or("").as_bytes());
        // Serializing these plain data types cannot fail; an empty field if it ever did.
        let policy = serde_json::to_vec(&task.retry_policy()).unwrap_or_default();
        field(&policy);
        let rule = serde_json::to_vec(&task.trigger_rule()).unwrap_or_default();
        field(&rule);
        let timeout = task.timeout().map_or(u128::MAX, |t| t.as_nanos());
        field(&timeout.to_le_bytes());
    }
    let digest = hasher.finalize();
    let mut hex = String::with_capacity(16);
    for byte in &digest[..8] {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Context, FnTask};

    fn t(id: &str, deps: &[&str]) -> FnTask {
        FnTask::new(id, deps.to_vec(), |ctx: Context| async move { Ok(ctx) })
    }

    #[test]
    fn order_follows_dependencies_and_declaration() {
        let wf = Workflow::builder("w")
            .task(t("load", &["clean", "fetch"]))
            .task(t("fetch", &[]))
            .task(t("clean", &["fetch"]))
            .task(t("audit", &[]))
            .build()
            .expect("valid");
        let order: Vec<&str> = wf.order().map(|t| t.id()).collect();
        assert_eq!(order, ["fetch", "clean", "load", "audit"]);
        assert_eq!(wf.dependents("fetch"), ["load", "clean"]);
        assert_eq!(
            wf.levels(),
            vec![vec!["fetch", "audit"], vec!["clean"], vec!["load"]]
        );
    }

    #[test]
    fn invalid_workflows_name_the_culprit() {
        let err = |b: WorkflowBuilder| b.build().expect_err("invalid").to_string();
        assert_eq!(
            err(Workflow::builder("w")
                .task(t("a", &["b"]))
                .task(t("b", &["a"]))),
            "workflow `w`: dependency cycle a -> b -> a"
        );
        assert_eq!(
            err(Workflow::builder("w").task(t("a", &["ghost"]))),
            "workflow `w`: task `a` depends on unknown task `ghost`"
        );
        assert_eq!(
            err(Workflow::builder("w").task(t("a", &[])).task(t("a", &[]))),
            "workflow `w`: task `a` is declared twice"
        );
        assert_eq!(err(Workflow::builder("w")), "workflow `w` has no tasks");
        assert_eq!(
            err(Workflow::builder("w")
                .task(t("a", &[]))
                .task(t("b", &[]))
                .task(t("c", &["a"]).trigger_rule(crate::task_failed("b")))),
            "workflow `w`: the trigger rule of `c` refers to `b`, which is not among its dependencies"
        );
        assert_eq!(
            err(Workflow::builder(" ").task(t("a", &[]))),
            "a workflow needs a name"
        );
    }

    #[test]
    fn version_is_content_based() {
        let build = |tasks: Vec<FnTask>| {
            let mut b = Workflow::builder("w");
            for task in tasks {
                b = b.task(task);
            }
            b.build().expect("valid").version().to_owned()
        };
        let base = build(vec![t("a", &[]), t("b", &["a"])]);
        assert_eq!(
            base,
            build(vec![t("a", &[]), t("b", &["a"])]),
            "same content"
        );
        assert_ne!(
            base,
            build(vec![t("b", &["a"]), t("a", &[])]),
            "declaration order"
        );
        assert_ne!(
            base,
            build(vec![
                t("a", &[]),
                t("b", &["a"]).timeout(std::time::Duration::from_secs(1))
            ]),
            "a timeout"
        );
        assert_ne!(
            base,
            build(vec![
                t("a", &[]),
                t("b", &["a"]).trigger_rule(crate::always())
            ]),
            "a trigger rule"
        );
        assert_ne!(base, build(vec![t("a", &[]), t("b", &[])]), "a dependency");
        assert_ne!(base, build(vec![t("a", &[]), t("c", &["a"])]), "a task id");
        assert_ne!(
            base,
            build(vec![t("a", &[]).fingerprint("v2"), t("b", &["a"])]),
            "the code"
        );
        let renamed = Workflow::builder("other")
            .task(t("a", &[]))
            .task(t("b", &["a"]))
            .build()
            .expect("valid");
        assert_ne!(base, renamed.version(), "the name");
    }
}
