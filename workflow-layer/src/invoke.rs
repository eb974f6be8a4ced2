//! [`invoke_graph`]: a trigger-less computation graph run on a workflow [`Context`].

use std::sync::Arc;
use std::time::SystemTime;

use cloacina_graph_core::{Boundary, CompiledGraph, GraphError, InputCache, TerminalOutputs};

use crate::Context;

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
