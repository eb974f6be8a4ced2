//! # cloacina-workflow-layer
//!
//! DAG workflows (tasks, retries, trigger rules, cron, triggers) run as trigger-less graph
//! invocations over the ledger. This crate holds what exists of that layer so far: the
//! workflow [`Context`] and [`invoke_graph`], which runs a trigger-less computation graph on
//! a context: each source the graph reads is taken from the context key of the same name
//! (absent key: the entry node sees `None`), and each terminal output is written back under
//! its node's name. Tasks, the runner and the scheduler come with the workflow issues.
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

use std::sync::Arc;
use std::time::SystemTime;

use cloacina_graph_core::{Boundary, CompiledGraph, GraphError, InputCache, TerminalOutputs};
use serde_json::{Map, Value};

/// A context operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ContextError {
    /// `insert` of a key that is already there.
    #[error("context key `{0}` already exists (use update or insert_or_update)")]
    KeyExists(String),
    /// `update` of a key that is not there.
    #[error("context key `{0}` does not exist (use insert or insert_or_update)")]
    KeyNotFound(String),
    /// `from_json` of something that is not a JSON object.
    #[error("a context is a JSON object: {0}")]
    NotAnObject(String),
}

/// The data a workflow's tasks share: JSON values by key, in key order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Context {
    values: Map<String, Value>,
}

impl Context {
    /// An empty context.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `key`; an error if it is already there.
    pub fn insert(&mut self, key: impl Into<String>, value: Value) -> Result<(), ContextError> {
        let key = key.into();
        if self.values.contains_key(&key) {
            return Err(ContextError::KeyExists(key));
        }
        self.values.insert(key, value);
        Ok(())
    }

    /// Replaces `key`; an error if it is not there.
    pub fn update(&mut self, key: impl Into<String>, value: Value) -> Result<(), ContextError> {
        let key = key.into();
        match self.values.get_mut(&key) {
            Some(slot) => {
                *slot = value;
                Ok(())
            }
            None => Err(ContextError::KeyNotFound(key)),
        }
    }

    /// Sets `key` whether or not it is there.
    pub fn insert_or_update(&mut self, key: impl Into<String>, value: Value) {
        self.values.insert(key.into(), value);
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.values.get(key)
    }

    /// Removes and returns `key`.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        self.values.remove(key)
    }

    /// Keys, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> + '_ {
        self.values.keys().map(String::as_str)
    }

    /// The context as one JSON object.
    pub fn to_json(&self) -> Value {
        Value::Object(self.values.clone())
    }

    /// A context from a JSON object.
    pub fn from_json(value: Value) -> Result<Self, ContextError> {
        match value {
            Value::Object(values) => Ok(Self { values }),
            other => Err(ContextError::NotAnObject(other.to_string())),
        }
    }
}

/// Invoking a graph on a context failed; the context is unchanged.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InvokeError {
    /// A context value could not be read as the type the graph reads from that source.
    #[error("graph `{graph}`: context key `{key}` {message}")]
    Input {
        /// Graph.
        graph: String,
        /// Context key (= source name).
        key: String,
        /// What was wrong.
        message: String,
    },
    /// The graph failed (names the node).
    #[error("graph `{graph}`: {error}")]
    Graph {
        /// Graph.
        graph: String,
        /// The failure.
        error: GraphError,
    },
    /// A terminal output could not be rendered as JSON.
    #[error("graph `{graph}`: {message}")]
    Output {
        /// Graph.
        graph: String,
        /// What was wrong.
        message: String,
    },
}

/// Runs a trigger-less graph on `ctx`: sources come from the context keys of the same name,
/// terminal outputs are written back under their node's name (replacing earlier values).
/// On any error the context is left as it was.
pub async fn invoke_graph(
    graph: &Arc<CompiledGraph>,
    ctx: &mut Context,
) -> Result<TerminalOutputs, InvokeError> {
    let name = graph.name().to_owned();
    let mut cache: InputCache = graph.new_cache();
    let now = SystemTime::now();
    for decl in graph.sources() {
        let Some(json) = ctx.get(decl.name.as_str()) else {
            continue;
        };
        let codec = decl.codec.ok_or_else(|| InvokeError::Input {
            graph: name.clone(),
            key: decl.name.to_string(),
            message: "has a type with no codec".into(),
        })?;
        let value = (codec.from_json)(json).map_err(|message| InvokeError::Input {
            graph: name.clone(),
            key: decl.name.to_string(),
            message: format!("is {message}"),
        })?;
        cache.insert(
            decl.name.clone(),
            Boundary::from_erased(1, now, value, decl.type_name),
        );
    }
    let outputs = match graph.fire(&cache).await {
        cloacina_graph_core::GraphResult::Completed { outputs } => outputs,
        cloacina_graph_core::GraphResult::Error(error) => {
            return Err(InvokeError::Graph { graph: name, error })
        }
    };
    let json = outputs.to_json().map_err(|message| InvokeError::Output {
        graph: name.clone(),
        message,
    })?;
    for (node, value) in json {
        ctx.insert_or_update(node, value);
    }
    Ok(outputs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn context_api_follows_the_spec() {
        let mut ctx = Context::new();
        ctx.insert("a", json!(1)).expect("new key");
        assert_eq!(
            ctx.insert("a", json!(2)),
            Err(ContextError::KeyExists("a".into()))
        );
        assert_eq!(
            ctx.update("b", json!(2)),
            Err(ContextError::KeyNotFound("b".into()))
        );
        ctx.update("a", json!(3)).expect("existing key");
        ctx.insert_or_update("b", json!("x"));
        assert_eq!(ctx.keys().collect::<Vec<_>>(), ["a", "b"]);
        let round = Context::from_json(ctx.to_json()).expect("object");
        assert_eq!(round, ctx);
        assert_eq!(ctx.remove("a"), Some(json!(3)));
        assert!(ctx.get("a").is_none());
        assert!(matches!(
            Context::from_json(json!([1])),
            Err(ContextError::NotAnObject(_))
        ));
    }
}
