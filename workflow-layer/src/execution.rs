//! The sans-IO core of running a workflow: which task runs next, with what input, and what
//! a finished task means for its dependants. No clocks, no I/O, no tasks spawned: a driver
//! (in process, [`Workflow::run`](crate::Workflow::run); durably, the `DefaultRunner`) feeds it
//! completions and runs what it hands out.

use serde_json::Value;

use crate::{Context, TriggerRule, Workflow};

/// Where one task of an execution stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum TaskState {
    /// Waiting for its dependencies.
    NotStarted,
    /// Claimed for running, not started yet.
    Pending,
    /// Its dependencies are done; it may start.
    Ready,
    /// Running.
    Running,
    /// Finished with `Ok`; its output is recorded.
    Completed,
    /// Finished with an error (after its retries).
    Failed,
    /// Not run: a dependency failed or was skipped.
    Skipped,
    /// Given up on (a claim that expired too often).
    Abandoned,
}

impl TaskState {
    /// Whether the task will not change state again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskState::Completed | TaskState::Failed | TaskState::Skipped | TaskState::Abandoned
        )
    }
}

/// Where a whole execution stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum WorkflowStatus {
    /// Accepted, not started.
    Pending,
    /// Tasks are running or ready.
    Running,
    /// Every task finished and none failed.
    Completed,
    /// Every task finished and at least one failed.
    Failed,
    /// Cancelled by a caller.
    Cancelled,
    /// Paused by a caller.
    Paused,
}

/// What every execution of one workflow shares: task ids, rules, dependency positions,
/// dependants and the execution order. Computed once, when the workflow is built.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    ids: Vec<String>,
    rules: Vec<Option<TriggerRule>>,
    /// Per task: its dependencies' positions, in declaration order.
    deps: Vec<Vec<usize>>,
    /// Per task: positions of the tasks depending on it.
    dependents: Vec<Vec<usize>>,
    /// Execution order (for deterministic final merges).
    order: Vec<usize>,
}

impl Plan {
    /// The plan of `tasks`, run in `order` (ids, as the DAG sorted them).
    pub(crate) fn new<'a>(
        tasks: &[std::sync::Arc<dyn crate::Task>],
        order: impl Iterator<Item = &'a str>,
    ) -> Self {
        let position = |id: &str| tasks.iter().position(|t| t.id() == id);
        let deps: Vec<Vec<usize>> = tasks
            .iter()
            .map(|t| {
                // A dependency listed twice counts once, at its last place (later wins).
                let mut ds: Vec<usize> = Vec::new();
                for d in t.dependencies().iter().filter_map(|d| position(d)) {
                    ds.retain(|&k| k != d);
                    ds.push(d);
                }
                ds
            })
            .collect();
        let mut dependents = vec![Vec::new(); tasks.len()];
        for (i, ds) in deps.iter().enumerate() {
            for &d in ds {
                dependents[d].push(i);
            }
        }
        Self {
            ids: tasks.iter().map(|t| t.id().to_owned()).collect(),
            rules: tasks.iter().map(|t| t.trigger_rule().cloned()).collect(),
            deps,
            dependents,
            order: order.filter_map(position).collect(),
        }
    }
}

/// The execution state of one run of a workflow (sans-IO).
#[derive(Debug, Clone)]
pub struct ExecutionState {
    initial: Context<Value>,
    plan: std::sync::Arc<Plan>,
    states: Vec<TaskState>,
    outputs: Vec<Option<Context<Value>>>,
    /// Per task: dependencies not final yet.
    waiting: Vec<usize>,
    unfinished: usize,
}

impl ExecutionState {
    /// A fresh execution of `workflow` on `initial`: tasks without dependencies are Ready
    /// (or Skipped, if their trigger rule does not hold on `initial`).
    pub fn new(workflow: &Workflow, initial: Context<Value>) -> Self {
        let plan = workflow.plan();
        let n = plan.ids.len();
        let waiting: Vec<usize> = plan.deps.iter().map(Vec::len).collect();
        let mut state = Self {
            initial,
            plan,
            states: vec![TaskState::NotStarted; n],
            outputs: vec![None; n],
            waiting,
            unfinished: n,
        };
        for i in 0..n {
            if state.waiting[i] == 0 && state.decide(i) {
                state.release(i);
            }
        }
        state
    }

    /// Each task's state, in the workflow's declaration order.
    pub fn states(&self) -> &[TaskState] {
        &self.states
    }

    /// Takes every Ready task (in execution order), marking it Running.
    pub fn start_ready(&mut self) -> Vec<usize> {
        let mut started = Vec::new();
        for &i in &self.plan.order {
            if self.states[i] == TaskState::Ready {
                self.states[i] = TaskState::Running;
                started.push(i);
            }
        }
        started
    }

    /// The input of task `i`: the execution's input merged with its dependencies' outputs
    /// in their declaration order (a later dependency wins on a shared key).
    pub fn input_for(&self, i: usize) -> Context<Value> {
        let mut input = self.initial.clone();
        for &d in self.plan.deps.get(i).map_or(&[][..], Vec::as_slice) {
            if let Some(Some(output)) = self.outputs.get(d) {
                input.merge(output);
            }
        }
        input
    }

    /// Task `i` finished with `Ok`: records its output; dependants whose dependencies are
    /// now all final become Ready (all completed) or Skipped (any not completed).
    pub fn completed(&mut self, i: usize, output: Context<Value>) {
        if self.finish(i, TaskState::Completed) {
            self.outputs[i] = Some(output);
            self.release(i);
        }
    }

    /// Task `i` failed: its dependants are skipped (and theirs, transitively).
    pub fn failed(&mut self, i: usize) {
        if self.finish(i, TaskState::Failed) {
            self.release(i);
        }
    }

    /// Whether every task is final.
    pub fn is_finished(&self) -> bool {
        self.unfinished == 0
    }

    /// Completed when every task is final and none failed or was abandoned; Failed when
    /// every task is final and one did; Running otherwise.
    pub fn status(&self) -> WorkflowStatus {
        if !self.is_finished() {
            WorkflowStatus::Running
        } else if self
            .states
            .iter()
            .any(|s| matches!(s, TaskState::Failed | TaskState::Abandoned))
        {
            WorkflowStatus::Failed
        } else {
            WorkflowStatus::Completed
        }
    }

    /// The execution's input merged with every completed task's output, in execution order.
    pub fn final_context(&self) -> Context<Value> {
        let mut ctx = self.initial.clone();
        for &i in &self.plan.order {
            if let Some(output) = &self.outputs[i] {
                ctx.merge(output);
            }
        }
        ctx
    }

    /// Moves `i` to `state` if it is not final yet; false if it already was (a duplicate
    /// report changes nothing).
    fn finish(&mut self, i: usize, state: TaskState) -> bool {
        match self.states.get_mut(i) {
            Some(s) if !s.is_final() => {
                *s = state;
                self.unfinished -= 1;
                true
            }
            _ => false,
        }
    }

    /// `first` is final: decides each dependant left with no dependency pending, and so on
    /// through the tasks that decision skips (a worklist: no recursion on deep chains).
    fn release(&mut self, first: usize) {
        let mut finished = vec![first];
        while let Some(done) = finished.pop() {
            let plan = std::sync::Arc::clone(&self.plan);
            for &next in &plan.dependents[done] {
                self.waiting[next] -= 1;
                if self.waiting[next] == 0 && self.decide(next) {
                    finished.push(next);
                }
            }
        }
    }

    /// Every dependency of `i` is final: Ready if its trigger rule holds (without a rule:
    /// if every dependency completed), Skipped otherwise. Returns true if it was skipped
    /// (its dependants are to be released).
    fn decide(&mut self, i: usize) -> bool {
        if self.states[i] != TaskState::NotStarted {
            return false;
        }
        let plan = std::sync::Arc::clone(&self.plan);
        let runs = match &plan.rules[i] {
            None => plan.deps[i]
                .iter()
                .all(|&d| self.states[d] == TaskState::Completed),
            Some(rule) => {
                let input = self.input_for(i);
                let state = |id: &str| {
                    plan.ids
                        .iter()
                        .position(|t| t == id)
                        .map(|p| self.states[p])
                };
                rule.evaluate(&state, &input)
            }
        };
        if runs {
            self.states[i] = TaskState::Ready;
            false
        } else {
            self.finish(i, TaskState::Skipped)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FnTask;
    use serde_json::json;

    fn t(id: &str, deps: &[&str]) -> FnTask {
        FnTask::new(id, deps.to_vec(), |ctx: Context| async move { Ok(ctx) })
    }

    fn ctx(pairs: &[(&str, Value)]) -> Context {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    fn diamond() -> Workflow {
        Workflow::builder("d")
            .task(t("a", &[]))
            .task(t("b", &["a"]))
            .task(t("c", &["a"]))
            .task(t("d", &["c", "b"]))
            .build()
            .expect("valid")
    }

    #[test]
    fn a_diamond_runs_in_waves_and_merges_in_dependency_declaration_order() {
        let wf = diamond();
        let mut ex = ExecutionState::new(&wf, Context::new());
        assert_eq!(ex.start_ready(), [0]);
        assert!(ex.start_ready().is_empty(), "a is running");
        ex.completed(0, ctx(&[("k", json!("a"))]));
        assert_eq!(ex.start_ready(), [1, 2], "b and c in parallel");
        ex.completed(2, ctx(&[("k", json!("c")), ("c", json!(1))]));
        ex.completed(1, ctx(&[("k", json!("b")), ("b", json!(1))]));
        assert_eq!(ex.start_ready(), [3]);
        // d declares c then b: b's value wins on the shared key.
        let input = ex.input_for(3);
        assert_eq!(
            input.to_json().expect("json"),
            json!({"k": "b", "b": 1, "c": 1})
        );
        ex.completed(3, ctx(&[("d", json!(1))]));
        assert!(ex.is_finished());
        assert_eq!(ex.status(), WorkflowStatus::Completed);
        assert_eq!(
            ex.final_context().to_json().expect("json"),
            json!({"k": "c", "b": 1, "c": 1, "d": 1}),
            "merged in execution order a, b, c, d"
        );
    }

    #[test]
    fn a_failure_skips_its_dependants_transitively_and_spares_the_rest() {
        let wf = Workflow::builder("f")
            .task(t("a", &[]))
            .task(t("b", &["a"]))
            .task(t("c", &["b"]))
            .task(t("other", &[]))
            .build()
            .expect("valid");
        let mut ex = ExecutionState::new(&wf, Context::new());
        assert_eq!(ex.start_ready(), [0, 3]);
        ex.failed(0);
        assert_eq!(
            ex.states(),
            [
                TaskState::Failed,
                TaskState::Skipped,
                TaskState::Skipped,
                TaskState::Running
            ]
        );
        assert!(!ex.is_finished());
        ex.completed(3, Context::new());
        ex.completed(3, ctx(&[("late", json!(1))])); // a duplicate report changes nothing
        assert!(ex.is_finished());
        assert_eq!(ex.status(), WorkflowStatus::Failed);
        assert!(ex.final_context().is_empty());
    }
}
