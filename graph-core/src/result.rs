//! [`GraphResult`]: what one firing produced.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use smallvec::SmallVec;

use crate::codec::CodecError;
use crate::node::{AnyValue, OutputCodec};
use crate::source::SourceName;

/// Why a firing failed. Every variant names the node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GraphError {
    /// The node panicked; the panic was caught.
    #[error("node `{node}` panicked: {message}")]
    NodePanicked {
        /// The node.
        node: Arc<str>,
        /// The panic message.
        message: String,
    },
    /// The firing exceeded its timeout while this node ran.
    #[error("node `{node}` exceeded the firing timeout of {timeout:?}")]
    NodeTimedOut {
        /// The node.
        node: Arc<str>,
        /// The per-firing timeout.
        timeout: Duration,
    },
    /// A cache source held a value of another type than the node declared.
    #[error(
        "node `{node}` expects source `{source_name}` to hold {expected}, but it holds {found}"
    )]
    InputType {
        /// The node.
        node: Arc<str>,
        /// The source.
        source_name: SourceName,
        /// Declared type.
        expected: &'static str,
        /// Type found in the cache.
        found: &'static str,
    },
    /// An engine invariant broke (a bug; reported, never a panic).
    #[error("internal error at node `{node}`: {detail}")]
    Internal {
        /// The node.
        node: Arc<str>,
        /// What went wrong.
        detail: String,
    },
}

impl GraphError {
    /// The node the error is about.
    pub fn node(&self) -> &str {
        match self {
            GraphError::NodePanicked { node, .. }
            | GraphError::NodeTimedOut { node, .. }
            | GraphError::InputType { node, .. }
            | GraphError::Internal { node, .. } => node,
        }
    }
}

/// One terminal node's output.
pub struct TerminalOutput {
    node: Arc<str>,
    value: Box<AnyValue>,
    type_name: &'static str,
    encode: Option<OutputCodec>,
}

impl TerminalOutput {
    pub(crate) fn new(
        node: Arc<str>,
        value: Box<AnyValue>,
        type_name: &'static str,
        encode: Option<OutputCodec>,
    ) -> Self {
        Self {
            node,
            value,
            type_name,
            encode,
        }
    }

    /// The node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The value, if it is a `T`.
    pub fn get<T: 'static>(&self) -> Option<&T> {
        self.value.downcast_ref::<T>()
    }

    /// The erased value.
    pub fn value(&self) -> &AnyValue {
        &*self.value
    }

    /// Rust type name of the value.
    pub fn type_name(&self) -> &'static str {
        self.type_name
    }

    /// Encodes the value with the engine codec.
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        match self.encode {
            // A user `Serialize` impl may panic: that is an encoding error, not a crash.
            Some(codec) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                (codec.encode)(&*self.value)
            }))
            .unwrap_or_else(|payload| {
                Err(CodecError::Encode {
                    type_name: self.type_name,
                    message: format!(
                        "serializer panicked: {}",
                        crate::node::panic_message(payload)
                    ),
                })
            }),
            None => Err(CodecError::Encode {
                type_name: self.type_name,
                message: "type has no codec".into(),
            }),
        }
    }

    /// The value as JSON (a panicking `Serialize` impl is an error too).
    pub fn to_json(&self) -> Result<serde_json::Value, String> {
        let codec = self
            .encode
            .ok_or_else(|| format!("{} has no codec", self.type_name))?;
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            (codec.to_json)(&*self.value)
        }))
        .unwrap_or_else(|payload| {
            Err(format!(
                "serializer panicked: {}",
                crate::node::panic_message(payload)
            ))
        })
    }
}

impl fmt::Debug for TerminalOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TerminalOutput")
            .field("node", &self.node)
            .field("type", &self.type_name)
            .finish()
    }
}

/// The outputs of the terminal nodes that ran in a firing, in topological order.
#[derive(Debug, Default)]
pub struct TerminalOutputs {
    /// Inline for the usual one or two terminal nodes: no allocation per firing.
    items: SmallVec<[TerminalOutput; 2]>,
}

impl TerminalOutputs {
    pub(crate) fn with_capacity(n: usize) -> Self {
        Self {
            items: SmallVec::with_capacity(n),
        }
    }

    pub(crate) fn push(&mut self, out: TerminalOutput) {
        self.items.push(out);
    }

    /// The output of terminal `node`, if it ran and is a `T`.
    pub fn get<T: 'static>(&self, node: &str) -> Option<&T> {
        self.items
            .iter()
            .find(|o| &*o.node == node)
            .and_then(|o| o.get::<T>())
    }

    /// Whether terminal `node` ran.
    pub fn contains(&self, node: &str) -> bool {
        self.items.iter().any(|o| &*o.node == node)
    }

    /// Number of outputs.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether no terminal ran.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Iterates the outputs.
    pub fn iter(&self) -> std::slice::Iter<'_, TerminalOutput> {
        self.items.iter()
    }

    /// Every output as JSON, keyed by node name (CG-D-8's `outputs_json`).
    pub fn to_json(&self) -> Result<serde_json::Map<String, serde_json::Value>, String> {
        self.items
            .iter()
            .map(|o| {
                o.to_json()
                    .map(|v| (o.node().to_owned(), v))
                    .map_err(|e| format!("output of `{}`: {e}", o.node()))
            })
            .collect()
    }

    /// Names of the terminals that ran.
    pub fn nodes(&self) -> impl Iterator<Item = &str> + '_ {
        self.items.iter().map(|o| o.node())
    }
}

/// What one firing produced.
#[derive(Debug)]
pub enum GraphResult {
    /// Every node that was due ran; the terminal outputs are keyed by node name.
    Completed {
        /// Outputs of the terminals that ran.
        outputs: TerminalOutputs,
    },
    /// A node failed; the firing stopped there.
    Error(GraphError),
}

impl GraphResult {
    /// A completed result with the given outputs.
    pub fn completed(outputs: TerminalOutputs) -> Self {
        GraphResult::Completed { outputs }
    }

    /// A completed result with no outputs.
    pub fn completed_empty() -> Self {
        GraphResult::Completed {
            outputs: TerminalOutputs::default(),
        }
    }

    /// A failed result.
    pub fn error(error: GraphError) -> Self {
        GraphResult::Error(error)
    }

    /// Whether the firing completed.
    pub fn is_completed(&self) -> bool {
        matches!(self, GraphResult::Completed { .. })
    }

    /// Whether the firing failed.
    pub fn is_error(&self) -> bool {
        matches!(self, GraphResult::Error(_))
    }

    /// The outputs, if completed.
    pub fn outputs(&self) -> Option<&TerminalOutputs> {
        match self {
            GraphResult::Completed { outputs } => Some(outputs),
            GraphResult::Error(_) => None,
        }
    }

    /// The error, if failed.
    pub fn err(&self) -> Option<&GraphError> {
        match self {
            GraphResult::Completed { .. } => None,
            GraphResult::Error(e) => Some(e),
        }
    }

    /// The output of terminal `node`, if completed and it ran and is a `T`.
    pub fn output<T: 'static>(&self, node: &str) -> Option<&T> {
        self.outputs().and_then(|o| o.get::<T>(node))
    }
}
