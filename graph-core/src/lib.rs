//! # cloacina-graph-core
//!
//! The in-process heart of cloacina's computation graphs: everything from a boundary arriving
//! to a graph's result, with no I/O and no knowledge of Kafka, SQL or workflows.
//!
//! Flow: **boundary -> cache -> firing -> result** (-> ledger, elsewhere).
//!
//! - A [`Boundary`] is one typed value for a [`SourceName`], stamped with a per-source sequence
//!   number and receive time. In process it travels as `Arc<T>`; the [`codec`] encodes it only
//!   when a ledger or a process boundary asks.
//! - The [`InputCache`] keeps the latest boundary per source; snapshots are immutable and cost
//!   a reference-count increment.
//! - A graph is declared with [`GraphBuilder`]: nodes are plain or async functions; entry nodes
//!   take `Option<&T>` per cache source, other nodes `&T` of their upstreams; routing nodes
//!   return an enum and only the taken variant's branch runs. [`GraphBuilder::build`] rejects
//!   cycles, unknown names, graphs without an entry node and edges joining different types,
//!   naming the culprit ([`BuildError`]); the rules live in `cloacina-topology`, shared with
//!   the `#[computation_graph]` macro.
//! - [`CompiledGraph`] is the validated topology resolved into slots; an [`Executor`] fires it
//!   with no name lookups and no graph walking; independent async branches of a firing run
//!   concurrently in the firing's task, plain nodes inline. A panicking node or one past the
//!   per-firing timeout yields [`GraphResult::Error`] naming the node; nothing else is
//!   affected.
//!
//! ```
//! use std::sync::Arc;
//! use cloacina_graph_core::{source, upstream, GraphBuilder, Route};
//!
//! enum Decision { Trade(f64), Hold(String) }
//!
//! fn decide(bid: Option<&f64>, ask: Option<&f64>) -> Decision {
//!     match (bid, ask) {
//!         (Some(b), Some(a)) if a - b < 0.2 => Decision::Trade((a + b) / 2.0),
//!         _ => Decision::Hold("spread too wide or no quote".into()),
//!     }
//! }
//! async fn execute(price: &f64) -> String { format!("buy at {price:.2}") }
//! fn audit(reason: &String) -> String { format!("hold: {reason}") }
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let graph = Arc::new(
//!     GraphBuilder::new("market_maker")
//!         .router("decide", (source::<f64>("bid"), source::<f64>("ask")), decide, [
//!             Route::new("Trade", "execute", |d: &Decision| match d { Decision::Trade(p) => Some(p), _ => None }),
//!             Route::new("Hold", "audit", |d: &Decision| match d { Decision::Hold(r) => Some(r), _ => None }),
//!         ])
//!         .async_node("execute", (upstream::<f64>("decide"),), execute)
//!         .node("audit", (upstream::<String>("decide"),), audit)
//!         .build()?,
//! );
//! let mut cache = graph.new_cache();
//! cache.update("bid", 100.0_f64);
//! cache.update("ask", 100.1_f64);
//! let result = graph.fire(&cache).await;
//! assert_eq!(result.output::<String>("execute").map(String::as_str), Some("buy at 100.05"));
//! assert!(!result.outputs().unwrap().contains("audit")); // only the taken branch ran
//! # Ok::<(), cloacina_graph_core::BuildError>(()) }).unwrap();
//! ```

pub mod boundary;
pub use cloacina_codec as codec;
pub mod builder;
pub mod cache;
pub mod compiled;
pub mod node;
pub mod result;
pub mod source;

pub use boundary::{Boundary, BoundaryValue};
pub use builder::{BuildError, GraphBuilder, Route};
pub use cache::{CacheTypeError, InputCache};
pub use codec::CodecError;
pub use compiled::{Collect, CompiledGraph, Execution, Executor, SourceDecl};
pub use node::{catch_panic, panic_message, source, upstream, Source, Upstream};
pub use result::{GraphError, GraphResult, TerminalOutput, TerminalOutputs};
pub use source::SourceName;
