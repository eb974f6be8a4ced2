//! [`Polling`]: an async function called on an interval.

use std::future::Future;
use std::time::Duration;

use cloacina_graph_core::catch_panic;
use tokio::time::{Interval, MissedTickBehavior};

use crate::context::{Accumulator, AccumulatorContext, AccumulatorError};
use crate::health::AccumulatorHealth;

/// Calls `poll` every `interval` (first call after one full interval); `Some(v)` is emitted,
/// `None` means "no change" and emits nothing. An interval too large to add to the clock
/// (`Duration::MAX`) means "never": no timer, no call. A panicking poll is counted as a failure, the
/// accumulator reports `Disconnected` and keeps polling; the next good poll makes it `Live`.
pub struct Polling<F> {
    interval: Duration,
    poll: F,
}

impl<F> std::fmt::Debug for Polling<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Polling")
            .field("interval", &self.interval)
            .finish()
    }
}

impl<F> Polling<F> {
    /// Polls with `poll` every `interval` (at least 1 ms).
    pub fn new(interval: Duration, poll: F) -> Self {
        Self {
            interval: interval.max(Duration::from_millis(1)),
            poll,
        }
    }
}

impl<T, F, Fut> Accumulator for Polling<F>
where
    T: Send + Sync + 'static,
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Option<T>> + Send,
{
    type Output = T;

    async fn run(mut self, ctx: AccumulatorContext<T>) -> Result<(), AccumulatorError> {
        let mut ticks = interval_from_now(self.interval);
        ctx.set_health(AccumulatorHealth::Live);
        loop {
            tokio::select! {
                biased;
                () = ctx.shutdown_requested() => break,
                () = tick(&mut ticks) => {}
            }
            // The call itself runs inside the guarded future, so a poll function that panics
            // before returning its future is caught like one whose future panics.
            match catch_panic(async { (self.poll)().await }).await {
                Ok(Some(value)) => {
                    ctx.metrics().record_events(1);
                    ctx.set_health(AccumulatorHealth::Live);
                    ctx.emit(value).await?;
                }
                Ok(None) => ctx.set_health(AccumulatorHealth::Live),
                Err(message) => {
                    ctx.metrics().record_failure();
                    ctx.set_health(AccumulatorHealth::Disconnected);
                    tracing::error!(source = %ctx.source(), %message, "poll function panicked");
                }
            }
        }
        ctx.set_health(AccumulatorHealth::Stopped);
        Ok(())
    }
}

/// A timer ticking every `every`, first after one full period; `None` ("never") if the first
/// tick is too far to add to the clock. Tokio's own `Instant + Duration` panics on overflow.
pub(crate) fn interval_from_now(every: Duration) -> Option<Interval> {
    let start = tokio::time::Instant::now().checked_add(every)?;
    let mut ticks = tokio::time::interval_at(start, every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    Some(ticks)
}

/// The next tick of `ticks`; never completes without a timer.
pub(crate) async fn tick(ticks: &mut Option<Interval>) {
    match ticks {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}
