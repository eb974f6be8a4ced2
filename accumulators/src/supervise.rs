//! Accumulator supervision: start instances from a factory, restart a failed one alone with
//! exponential backoff, give up after a run of failures.
//!
//! Each instance goes through the same phases: **restore** ([`Accumulator::restore`], e.g.
//! read a checkpoint or the ledger's offsets), **run** ([`Accumulator::run`]), and **close**
//! (the end of `run` after shutdown: commit, flush, disconnect; it must deliver everything it
//! accepted before returning). An instance that returns an error or panics in any phase is
//! dropped; the source shows [`AccumulatorHealth::Restarting`] (the reactor turns Degraded and
//! keeps firing on its other sources), and after the backoff a fresh instance is made. A
//! failure right after an instance had emitted something starts the count again: only
//! failures without progress in between are consecutive. After
//! [`RestartPolicy::max_failures`] consecutive failures the source is
//! [`AccumulatorHealth::Failed`] and stays so. Restarts are counted
//! ([`AccumulatorMetrics::restarts`], metric `cloacina_accumulator_restarts_total{source}`)
//! and logged at `warn`.

use std::time::Duration;

use cloacina_graph_core::catch_panic;

use crate::context::{Accumulator, AccumulatorContext, AccumulatorError};
use crate::health::AccumulatorHealth;

#[cfg(doc)]
use crate::context::AccumulatorMetrics;

/// How a failing accumulator is restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Pause before the first restart (default 1 s); doubled after each failure.
    pub initial_backoff: Duration,
    /// Longest pause (default 60 s).
    pub max_backoff: Duration,
    /// Consecutive failures after which the source is marked Failed (default 5).
    pub max_failures: u32,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            max_failures: 5,
        }
    }
}

impl RestartPolicy {
    /// Never restarts: the first failure marks the source Failed.
    pub fn never() -> Self {
        Self {
            max_failures: 1,
            ..Self::default()
        }
    }
}

/// Makes accumulator instances: one at start, and a fresh one after each failure.
///
/// Any `FnMut() -> A` is a factory; [`Once`] wraps a single instance (not restartable).
pub trait AccumulatorFactory: Send + 'static {
    /// What it makes.
    type Accumulator: Accumulator;

    /// A fresh instance, or `None` if it cannot make another (the source then fails).
    fn create(&mut self) -> Option<Self::Accumulator>;
}

impl<F, A> AccumulatorFactory for F
where
    F: FnMut() -> A + Send + 'static,
    A: Accumulator,
{
    type Accumulator = A;

    fn create(&mut self) -> Option<A> {
        Some(self())
    }
}

/// A factory of exactly one instance: a failure cannot be restarted and fails the source.
#[derive(Debug)]
pub struct Once<A>(Option<A>);

impl<A> Once<A> {
    /// Wraps `acc`.
    pub fn new(acc: A) -> Self {
        Self(Some(acc))
    }
}

impl<A: Accumulator> AccumulatorFactory for Once<A> {
    type Accumulator = A;

    fn create(&mut self) -> Option<A> {
        self.0.take()
    }
}

/// Runs instances of `factory` under `policy` until shutdown, an instance that returns `Ok`,
/// the reactor closing, or too many consecutive failures (then the last error is returned).
pub async fn supervise<F: AccumulatorFactory>(
    mut factory: F,
    ctx: AccumulatorContext<<F::Accumulator as Accumulator>::Output>,
    policy: RestartPolicy,
) -> Result<(), AccumulatorError> {
    let source = ctx.source().clone();
    let restarts = metrics::counter!("cloacina_accumulator_restarts_total", "source" => source.as_str().to_owned());
    let mut backoff = policy.initial_backoff;
    let mut failures = 0u32;
    let mut last_error: Option<AccumulatorError> = None;
    loop {
        let emitted_before = ctx.metrics().boundaries();
        let instance_ctx = ctx.duplicate();
        let outcome = catch_panic(async {
            let Some(mut acc) = factory.create() else {
                return Ok(None);
            };
            acc.restore(&instance_ctx).await?;
            acc.run(instance_ctx).await.map(Some)
        })
        .await;
        let error = match outcome {
            Ok(Ok(Some(()))) => return Ok(()),
            Ok(Ok(None)) => {
                let error = AccumulatorError::Failed {
                    source_name: source.clone(),
                    message: "its factory cannot make another instance (register it with a \
                              factory to make it restartable)"
                        .into(),
                };
                tracing::error!(source = %source, %error, "accumulator not restartable");
                ctx.set_health(AccumulatorHealth::Failed);
                return Err(last_error.unwrap_or(error));
            }
            Ok(Err(e @ AccumulatorError::ReactorClosed { .. })) => return Err(e),
            Ok(Err(e)) => e,
            Err(panic) => AccumulatorError::Failed {
                source_name: source.clone(),
                message: format!("panicked: {panic}"),
            },
        };
        tracing::warn!(source = %source, %error, "accumulator failed");
        ctx.metrics().record_failure();
        if ctx.is_shutdown() {
            ctx.set_health(AccumulatorHealth::Stopped);
            return Err(error);
        }
        if ctx.metrics().boundaries() > emitted_before {
            // It made progress before failing: a new run of failures starts here.
            failures = 0;
            backoff = policy.initial_backoff;
        }
        failures += 1;
        if failures >= policy.max_failures.max(1) {
            tracing::error!(source = %source, failures, %error, "accumulator failed too often; giving up");
            ctx.set_health(AccumulatorHealth::Failed);
            return Err(error);
        }
        ctx.set_health(AccumulatorHealth::Restarting);
        ctx.metrics().record_restart();
        restarts.increment(1);
        tracing::warn!(source = %source, failures, backoff_ms = backoff.as_millis() as u64, "restarting accumulator after a backoff");
        last_error = Some(error);
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = ctx.shutdown_requested() => {
                ctx.set_health(AccumulatorHealth::Stopped);
                return Err(last_error.unwrap_or(AccumulatorError::Failed { source_name: source, message: "stopped while restarting".into() }));
            }
        }
        backoff = backoff.saturating_mul(2).min(policy.max_backoff);
    }
}
