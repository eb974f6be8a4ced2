//! # cloacina-reactor
//!
//! A reactor owns one compiled graph's [`InputCache`](cloacina_graph_core::InputCache), decides
//! when to fire it, fires it, and hands each result to subscribers and to the ledger.
//!
//! Flow: boundary -> **cache -> firing -> result** -> subscribers, ledger.
//!
//! - **Criteria** ([`ReactionCriteria`]): `when_any` fires when any watched source has a new
//!   boundary since the last firing; `when_all` when every watched source has one. Dirty flags
//!   are cleared *before* the graph runs. A failed firing is reported, counted and recorded
//!   with its inputs' sequence numbers; [`FailurePolicy::Retry`] re-runs it on the same inputs
//!   first.
//! - **Strategies** ([`InputStrategy`]): `Latest` keeps the newest boundary per source and
//!   coalesces what arrives during a firing; `Sequential` queues every boundary and fires once
//!   per boundary, in arrival order.
//! - **Manual control** through [`ReactorHandle`]: `force_fire`, `fire_with`, `pause`,
//!   `resume`, `state`, `health`, `stats`, `shutdown`.
//! - **Backpressure**: the inbound queue is bounded; a full queue makes senders wait. Each
//!   subscriber has its own bounded queue; see [`Overflow`] for what a slow one costs.
//! - **Health** ([`ReactorHealth`]): `Starting` -> `Warming` (no firing until every accumulator
//!   is live) -> `Live` <-> `Degraded` -> `Stopped`.
//! - **Ledger and recovery** ([`Durability`]): with a ledger, firings are recorded; with
//!   `Batched` (the default) or `Sync` durability so are boundaries and state snapshots, and a
//!   reactor started on the same ledger resumes with its cache, dirty flags, Sequential queue
//!   and sequence numbers. `Sync` senders return only once their boundary is durable.
//!   [`replay`] re-runs a graph over recorded boundaries and compares with recorded results.
//!
//! One task runs the loop. A firing runs inline in it: plain nodes are called directly, async
//! nodes awaited; there is no task hop between a boundary arriving and its firing. In the
//! opt-in [`ReactorMode::LowLatency`] the loop runs on a dedicated thread that spins on its
//! inbound queue before parking, so a producer on another thread pays no wake-up.
//!
//! Inside, the loop (`core`) drives a sans-IO `trigger` (criteria, dirty flags, cache,
//! Sequential queue), a `recorder` (ledger records, snapshots, retention, recovery; the
//! records themselves are built by the ledger writer from what `built` hands it) and
//! `delivery` (subscribers). Operators read [`ReactorHandle::stats`] and the `cloacina_*`
//! metrics (through the `metrics` facade; see the `metrics` table in the README); each firing
//! runs in a `firing` tracing span at debug level.
//!
//! ```
//! use std::sync::Arc;
//! use cloacina_graph_core::{source, GraphBuilder};
//! use cloacina_reactor::{InputStrategy, ReactorHandle};
//!
//! fn double(x: Option<&u64>) -> u64 { x.copied().unwrap_or(0) * 2 }
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let graph = Arc::new(GraphBuilder::new("doubler").node("double", (source::<u64>("n"),), double).build()?);
//! let reactor = ReactorHandle::builder(graph).strategy(InputStrategy::Sequential).spawn()?;
//! let mut results = reactor.subscribe();
//! let n = reactor.sender::<u64>("n")?;
//! n.send(21).await.unwrap();
//! let firing = results.recv().await.unwrap().unwrap();
//! assert_eq!(firing.result.output::<u64>("double"), Some(&42));
//! reactor.shutdown().await?;
//! # Ok::<(), Box<dyn std::error::Error>>(()) }).unwrap();
//! ```

mod builder;
mod built;
mod command;
mod config;
mod control;
mod core;
mod delivery;
mod durable;
mod error;
mod fire;
mod firing;
mod handle;
mod health;
mod metrics;
mod positions;
mod recorder;
mod replay;
mod stats;
mod subscription;
mod trigger;
mod watermark;

pub use builder::ReactorBuilder;
pub use config::{
    FailurePolicy, InputStrategy, LowLatency, Overflow, ReactionCriteria, ReactorMode,
    SubscribeOptions,
};
pub use durable::{Durability, RecoveryError, RetentionPolicy};
pub use error::{ReactorError, ReactorState, ShutdownReport};
pub use firing::{Firing, FiringInput, FiringInputs};
pub use handle::ReactorHandle;
pub use health::ReactorHealth;
pub use replay::{replay, ReplayError, ReplayMismatch, ReplayReport};
pub use stats::{DurationHistogram, HistogramSnapshot, ReactorStats, StatsSnapshot};
pub use subscription::{Lagged, Subscription, TryRecvError};
