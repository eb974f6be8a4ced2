//! Firing: runs the graph on the live cache (or on supplied inputs), applies the failure
//! policy, counts and traces it, queues its ledger record and delivers it to subscribers.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;

use cloacina_graph_core::{Collect, Execution, Executor, GraphResult, InputCache};
use cloacina_ledger::FiringTrigger;
use tracing::Instrument;

use crate::config::FailurePolicy;
use crate::core::Core;
use crate::error::ReactorError;
use crate::firing::{Firing, FiringInput};

impl Core {
    /// Fires once on the live cache, or on `inputs` (a `fire_with`, which leaves the live
    /// cache and its dirty flags alone). Returns the firing when somebody asked for it.
    pub(crate) async fn fire(
        &mut self,
        manual: bool,
        inputs: Option<InputCache>,
    ) -> Option<Arc<Firing>> {
        let trigger = match (&inputs, manual) {
            (Some(_), _) => FiringTrigger::Supplied,
            (None, true) => FiringTrigger::Forced,
            (None, false) => FiringTrigger::Criteria,
        };
        if inputs.is_none() {
            self.trigger.clear_dirty();
            if !self.recorder.is_recording() {
                // Before a firing that may take long, what earlier ones consumed is
                // published (cheap: only if it moved; no clock read, no allocation).
                self.signals.watermarks.publish_now();
            }
        }
        let id = self.counters.next_id;
        self.counters.next_id += 1;
        let cache = inputs.as_ref().unwrap_or(self.trigger.cache());
        let wanted = manual || !self.subscribers.is_empty() || self.recorder.is_recording();
        let collect = if wanted {
            Collect::Outputs
        } else {
            Collect::Nothing
        };
        // The span costs nothing to skip, but wrapping the firing in a disabled one is not free
        // on the hot path (tracing's `log` bridge checks on every poll): only when enabled.
        let span = tracing::enabled!(tracing::Level::DEBUG)
            .then(|| tracing::debug_span!("firing", reactor = %self.name, firing = id, manual));
        let execution = {
            let run = run_graph(&mut self.executor, cache, collect, span.as_ref());
            let mut run = std::pin::pin!(run);
            match std::future::poll_fn(|cx| Poll::Ready(run.as_mut().poll(cx))).await {
                Poll::Ready(execution) => execution,
                Poll::Pending => {
                    // The graph waits (an async node is not ready): what earlier firings
                    // left held goes to the subscribers now, not after this one (see
                    // `delivery.rs`), while the graph runs on (a subscriber slow to make
                    // room must not eat into the firing's deadline).
                    let send = self
                        .subscribers
                        .send(&self.name, &self.stats, &self.metrics);
                    let ((), execution) = tokio::join!(send, run);
                    execution
                }
            }
        };
        let Execution {
            mut outcome,
            started,
            mut completed,
        } = execution;
        let mut attempts = 1;
        if let FailurePolicy::Retry {
            attempts: max,
            backoff,
        } = self.failure_policy
        {
            while attempts < max {
                let Err(error) = &outcome else { break };
                tracing::warn!(reactor = %self.name, attempt = attempts, node = error.node(), %error, "firing failed; retrying on the same inputs");
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
                self.subscribers
                    .send(&self.name, &self.stats, &self.metrics)
                    .await;
                tokio::time::sleep(backoff).await;
                let again = run_graph(&mut self.executor, cache, collect, span.as_ref()).await;
                (outcome, completed) = (again.outcome, again.completed);
                attempts += 1;
            }
        }
        let took = completed.saturating_duration_since(started);
        self.stats.firing_duration.record(took);
        self.metrics.firing(outcome.is_ok(), took);
        self.stats.fires.fetch_add(1, Ordering::Relaxed);
        if manual {
            self.stats.manual_fires.fetch_add(1, Ordering::Relaxed);
        }
        if inputs.is_none() {
            // Completed or dead-lettered (both failure policies record a failure with its
            // inputs): what the live cache held is consumed.
            self.signals.watermarks.fired(self.trigger.applied());
        }
        match &outcome {
            Ok(_) => {
                for notify in &self.signals.after_fire {
                    notify.notify_one();
                }
            }
            Err(error) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(reactor = %self.name, firing = id, node = error.node(), %error, "firing failed");
            }
        }
        if !wanted {
            if inputs.is_none() {
                self.publish_if_due(completed).await;
            }
            return None;
        }
        let firing = Arc::new(Firing {
            reactor: Arc::clone(&self.name),
            id,
            manual,
            attempts,
            inputs: cache
                .iter()
                .map(|(source, b)| FiringInput {
                    source: source.clone(),
                    seq: b.seq(),
                })
                .collect(),
            fired_at: self.intake.clock.wall_at(started),
            started,
            completed,
            result: match outcome {
                Ok(outputs) => GraphResult::Completed { outputs },
                Err(e) => GraphResult::Error(e),
            },
        });
        self.record(&firing, trigger);
        // A firing somebody asked for goes to the subscribers at once; others may be held
        // for a run of them (see `delivery.rs`).
        self.subscribers
            .deliver(&self.name, &firing, manual, &self.stats, &self.metrics)
            .await;
        if inputs.is_none() {
            self.publish_if_due(completed).await;
        }
        Some(firing)
    }

    /// Queues a firing's record (handed over with the batch's boundary records, after them;
    /// built by the ledger writer).
    fn record(&mut self, firing: &Arc<Firing>, trigger: FiringTrigger) {
        self.recorder.firing(firing, trigger);
    }

    /// Checks a `fire_with` cache against the graph's sources (names and types) and aligns it.
    pub(crate) fn manual_inputs(&self, cache: &InputCache) -> Result<InputCache, ReactorError> {
        for (source, boundary) in cache.iter() {
            let decl = self
                .graph
                .source_index(source.as_str())
                .and_then(|i| self.graph.sources().get(i))
                .ok_or_else(|| ReactorError::UnknownSource {
                    reactor: self.name.to_string(),
                    source_name: source.clone(),
                })?;
            let value: &(dyn std::any::Any + Send + Sync) = &**boundary.value();
            if value.type_id() != decl.type_id {
                return Err(ReactorError::SourceType {
                    reactor: self.name.to_string(),
                    source_name: source.clone(),
                    expected: decl.type_name,
                    requested: boundary.type_name(),
                });
            }
        }
        let mut inputs = self.graph.new_cache();
        inputs.replace_all(cache);
        Ok(inputs)
    }
}

/// Runs the graph once, inside `span` if tracing wants one.
async fn run_graph(
    executor: &mut Executor,
    cache: &InputCache,
    collect: Collect,
    span: Option<&tracing::Span>,
) -> Execution {
    match span {
        None => executor.execute_timed(cache, collect).await,
        Some(span) => {
            executor
                .execute_timed(cache, collect)
                .instrument(span.clone())
                .await
        }
    }
}
