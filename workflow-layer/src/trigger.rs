//! [`TriggerRule`]: whether a task whose dependencies are all final runs or is skipped.

use serde_json::Value;

use crate::{Context, TaskState};

/// How [`TriggerRule::ContextValue`] compares a context value with its operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum ValueOperator {
    /// Equal JSON values (numbers compared as f64).
    Equals,
    /// Not equal (an absent key is not equal).
    NotEquals,
    /// Both numbers and the value is greater.
    GreaterThan,
    /// Both numbers and the value is less.
    LessThan,
    /// A string containing the operand (a string), or an array containing it.
    Contains,
    /// The value is present and does not contain the operand.
    NotContains,
    /// The key is present.
    Exists,
    /// The key is absent.
    NotExists,
}

/// A condition on the states of a task's dependencies and on its input context, evaluated
/// once every dependency is final (Completed, Failed or Skipped): true, the task runs;
/// false, it is Skipped. A task without a rule runs only if every dependency completed;
/// a task with a rule runs whenever its rule holds (`always` runs even after a failure).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum TriggerRule {
    /// Always true.
    Always,
    /// Every rule holds (empty: true).
    All(Vec<TriggerRule>),
    /// Some rule holds (empty: false).
    Any(Vec<TriggerRule>),
    /// No rule holds (empty: true).
    None(Vec<TriggerRule>),
    /// The task (a dependency) completed.
    TaskSuccess(String),
    /// The task (a dependency) failed.
    TaskFailed(String),
    /// The task (a dependency) was skipped.
    TaskSkipped(String),
    /// A comparison on the task's input context.
    ContextValue {
        /// The context key.
        key: String,
        /// The comparison.
        op: ValueOperator,
        /// The operand (ignored by `Exists` / `NotExists`).
        value: Value,
    },
}

/// `all(rules)`: every rule holds.
pub fn all(rules: impl IntoIterator<Item = TriggerRule>) -> TriggerRule {
    TriggerRule::All(rules.into_iter().collect())
}

/// `any(rules)`: some rule holds.
pub fn any(rules: impl IntoIterator<Item = TriggerRule>) -> TriggerRule {
    TriggerRule::Any(rules.into_iter().collect())
}

/// `none(rules)`: no rule holds.
pub fn none(rules: impl IntoIterator<Item = TriggerRule>) -> TriggerRule {
    TriggerRule::None(rules.into_iter().collect())
}

/// `always()`: runs whatever its dependencies did.
pub fn always() -> TriggerRule {
    TriggerRule::Always
}

/// `task_success(id)`: the dependency `id` completed.
pub fn task_success(id: impl Into<String>) -> TriggerRule {
    TriggerRule::TaskSuccess(id.into())
}

/// `task_failed(id)`: the dependency `id` failed.
pub fn task_failed(id: impl Into<String>) -> TriggerRule {
    TriggerRule::TaskFailed(id.into())
}

/// `task_skipped(id)`: the dependency `id` was skipped.
pub fn task_skipped(id: impl Into<String>) -> TriggerRule {
    TriggerRule::TaskSkipped(id.into())
}

/// `context_value(key, op, value)`: a comparison on the input context.
pub fn context_value(key: impl Into<String>, op: ValueOperator, value: Value) -> TriggerRule {
    TriggerRule::ContextValue {
        key: key.into(),
        op,
        value,
    }
}

impl TriggerRule {
    /// Evaluates the rule: `state` gives a task's state by id, `ctx` is the task's input.
    pub fn evaluate(
        &self,
        state: &dyn Fn(&str) -> Option<TaskState>,
        ctx: &Context<Value>,
    ) -> bool {
        match self {
            TriggerRule::Always => true,
            TriggerRule::All(rules) => rules.iter().all(|r| r.evaluate(state, ctx)),
            TriggerRule::Any(rules) => rules.iter().any(|r| r.evaluate(state, ctx)),
            TriggerRule::None(rules) => !rules.iter().any(|r| r.evaluate(state, ctx)),
            TriggerRule::TaskSuccess(id) => state(id) == Some(TaskState::Completed),
            TriggerRule::TaskFailed(id) => state(id) == Some(TaskState::Failed),
            TriggerRule::TaskSkipped(id) => state(id) == Some(TaskState::Skipped),
            TriggerRule::ContextValue { key, op, value } => compare(ctx.get(key), *op, value),
        }
    }

    /// The task ids the rule refers to (each must be a dependency of the task).
    pub fn referenced_tasks(&self) -> Vec<&str> {
        let mut ids = Vec::new();
        self.collect_tasks(&mut ids);
        ids
    }

    fn collect_tasks<'a>(&'a self, ids: &mut Vec<&'a str>) {
        match self {
            TriggerRule::All(rules) | TriggerRule::Any(rules) | TriggerRule::None(rules) => {
                for r in rules {
                    r.collect_tasks(ids);
                }
            }
            TriggerRule::TaskSuccess(id)
            | TriggerRule::TaskFailed(id)
            | TriggerRule::TaskSkipped(id) => ids.push(id),
            TriggerRule::Always | TriggerRule::ContextValue { .. } => {}
        }
    }
}

fn compare(found: Option<&Value>, op: ValueOperator, operand: &Value) -> bool {
    let numbers = |a: &Value, b: &Value| Some((a.as_f64()?, b.as_f64()?));
    let equal = |a: &Value| match numbers(a, operand) {
        Some((x, y)) => x == y,
        None => a == operand,
    };
    let contains = |a: &Value| match (a, operand) {
        (Value::String(s), Value::String(needle)) => s.contains(needle.as_str()),
        (Value::Array(items), needle) => items.iter().any(|i| i == needle),
        _ => false,
    };
    match op {
        ValueOperator::Exists => found.is_some(),
        ValueOperator::NotExists => found.is_none(),
        ValueOperator::Equals => found.is_some_and(equal),
        ValueOperator::NotEquals => !found.is_some_and(equal),
        ValueOperator::GreaterThan => found
            .and_then(|v| numbers(v, operand))
            .is_some_and(|(x, y)| x > y),
        ValueOperator::LessThan => found
            .and_then(|v| numbers(v, operand))
            .is_some_and(|(x, y)| x < y),
        ValueOperator::Contains => found.is_some_and(contains),
        ValueOperator::NotContains => found.is_some_and(|v| !contains(v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx(v: Value) -> Context {
        Context::from_json(v).expect("object")
    }

    #[test]
    fn context_operators() {
        let c = ctx(json!({"score": 81, "name": "alpha beta", "tags": ["x", "y"]}));
        let states = |_: &str| None;
        let holds = |rule: TriggerRule| rule.evaluate(&states, &c);
        assert!(holds(context_value(
            "score",
            ValueOperator::GreaterThan,
            json!(80)
        )));
        assert!(!holds(context_value(
            "score",
            ValueOperator::GreaterThan,
            json!(81)
        )));
        assert!(holds(context_value(
            "score",
            ValueOperator::LessThan,
            json!(81.5)
        )));
        assert!(holds(context_value(
            "score",
            ValueOperator::Equals,
            json!(81.0)
        )));
        assert!(holds(context_value(
            "score",
            ValueOperator::NotEquals,
            json!(80)
        )));
        assert!(holds(context_value(
            "absent",
            ValueOperator::NotEquals,
            json!(80)
        )));
        assert!(holds(context_value(
            "name",
            ValueOperator::Contains,
            json!("beta")
        )));
        assert!(holds(context_value(
            "tags",
            ValueOperator::Contains,
            json!("y")
        )));
        assert!(holds(context_value(
            "tags",
            ValueOperator::NotContains,
            json!("z")
        )));
        assert!(!holds(context_value(
            "absent",
            ValueOperator::NotContains,
            json!("z")
        )));
        assert!(holds(context_value(
            "tags",
            ValueOperator::Exists,
            Value::Null
        )));
        assert!(holds(context_value(
            "absent",
            ValueOperator::NotExists,
            Value::Null
        )));
        assert!(!holds(context_value(
            "name",
            ValueOperator::GreaterThan,
            json!(1)
        )));
    }

    #[test]
    fn combinators_and_task_states() {
        let c = Context::new();
        let states = |id: &str| match id {
            "a" => Some(TaskState::Failed),
            "b" => Some(TaskState::Completed),
            "c" => Some(TaskState::Skipped),
            _ => None,
        };
        let holds = |rule: TriggerRule| rule.evaluate(&states, &c);
        assert!(holds(all([
            task_failed("a"),
            task_success("b"),
            task_skipped("c")
        ])));
        assert!(!holds(all([task_success("a"), task_success("b")])));
        assert!(holds(any([task_success("a"), task_success("b")])));
        assert!(holds(none([task_success("a"), task_skipped("b")])));
        assert!(holds(all([])) && !holds(any([])) && holds(none([])));
        assert!(holds(always()));
        let rule = any([task_failed("a"), all([task_success("b")])]);
        assert_eq!(rule.referenced_tasks(), ["a", "b"]);
    }
}
