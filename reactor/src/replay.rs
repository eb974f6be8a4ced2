//! Replay: re-run a graph over the boundaries a reactor recorded and compare with what it
//! recorded as results.
//!
//! Each recorded firing names its inputs by sequence number; replay reads those boundaries
//! back, decodes them with the graph's source codecs, fires the graph on exactly that cache,
//! and compares the encoded outputs (or the failing node) with the recorded outcome. Firings
//! on a cache the caller supplied (`fire_with`) are skipped: their inputs were not recorded.

use std::collections::HashMap;
use std::sync::Arc;

use cloacina_graph_core::{Collect, CompiledGraph, Executor};
use cloacina_ledger::{BoundaryQuery, FiringOutcome, FiringQuery, FiringTrigger, Ledger};

/// A replay could not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("replay of reactor `{reactor}`: {reason}")]
pub struct ReplayError {
    /// Reactor.
    pub reactor: String,
    /// Why.
    pub reason: String,
}

/// One firing whose replay differed from its record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayMismatch {
    /// The recorded firing.
    pub firing_id: u64,
    /// What differed.
    pub detail: String,
}

/// What a replay found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Firings re-run.
    pub replayed: u64,
    /// Re-runs whose outcome equals the record.
    pub matched: u64,
    /// Re-runs that differ.
    pub mismatched: Vec<ReplayMismatch>,
    /// Firings not re-run: supplied inputs (`fire_with`), or inputs no longer in the ledger
    /// (removed by retention).
    pub skipped: u64,
}

/// Re-runs `graph` for every firing `query` selects (a reactor, optionally a time or id
/// range) on the boundaries it recorded, and compares with the recorded outcomes.
pub async fn replay(
    graph: Arc<CompiledGraph>,
    ledger: &dyn Ledger,
    query: &FiringQuery,
) -> Result<ReplayReport, ReplayError> {
    let fail = |reason: String| ReplayError {
        reactor: query.reactor.clone(),
        reason,
    };
    let firings = ledger
        .firings(query)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let mut report = ReplayReport::default();
    // A plain loop, not an iterator of closures: that would be held across the awaits below
    // and make this future not `Send` (rustc's higher-ranked closure limitation).
    let (mut low, mut high) = (None::<u64>, None::<u64>);
    for f in firings
        .iter()
        .filter(|f| f.trigger != FiringTrigger::Supplied)
    {
        for (_, seq) in &f.inputs {
            low = Some(low.map_or(*seq, |l| l.min(*seq)));
            high = Some(high.map_or(*seq, |h| h.max(*seq)));
        }
    }
    let (Some(low), Some(high)) = (low, high) else {
        report.skipped = firings.len() as u64;
        return Ok(report);
    };
    let boundaries: HashMap<u64, _> = ledger
        .boundaries(
            // A firing whose inputs are missing is counted below, not a failed replay.
            &BoundaryQuery {
                from_seq: Some(low),
                through_seq: Some(high),
                ..BoundaryQuery::reactor(query.reactor.clone())
            }
            .allow_gaps(),
        )
        .await
        .map_err(|e| fail(e.to_string()))?
        .into_iter()
        .map(|b| (b.seq, b))
        .collect();
    let sources = graph.sources();
    let mut executor = Executor::new(Arc::clone(&graph));
    'firings: for firing in &firings {
        if firing.trigger == FiringTrigger::Supplied {
            report.skipped += 1;
            continue;
        }
        let mut cache = graph.new_cache();
        for (source, seq) in &firing.inputs {
            let Some(record) = boundaries.get(seq) else {
                report.skipped += 1;
                continue 'firings;
            };
            let (index, boundary) = crate::durable::decode(&query.reactor, sources, record)
                .map_err(|e| {
                    fail(format!(
                        "firing {} ({source}): {}",
                        firing.firing_id, e.reason
                    ))
                })?;
            cache.set_at(index, boundary);
        }
        report.replayed += 1;
        let outcome = executor.execute(&cache, Collect::Outputs).await;
        let detail = match (&firing.outcome, outcome) {
            (FiringOutcome::Completed { outputs: recorded }, Ok(outputs)) => {
                let mut now: Vec<(String, Vec<u8>)> = Vec::new();
                // Outputs that cannot be encoded were not recorded either: skip them alike.
                for o in outputs.iter() {
                    if let Ok(bytes) = o.encode() {
                        now.push((o.node().to_owned(), bytes));
                    }
                }
                let mut recorded = recorded.clone();
                recorded.sort();
                now.sort();
                (recorded != now).then(|| {
                    let differing: Vec<&str> = now
                        .iter()
                        .filter(|n| !recorded.contains(n))
                        .map(|(node, _)| node.as_str())
                        .collect();
                    format!("outputs differ (nodes {differing:?})")
                })
            }
            (FiringOutcome::Failed { node, .. }, Err(e)) if e.node() == node => None,
            (FiringOutcome::Failed { node, .. }, Err(e)) => Some(format!(
                "recorded a failure at `{node}`, replay failed at `{}`: {e}",
                e.node()
            )),
            (FiringOutcome::Failed { node, .. }, Ok(_)) => {
                Some(format!("recorded a failure at `{node}`, replay completed"))
            }
            (FiringOutcome::Completed { .. }, Err(e)) => {
                Some(format!("recorded a completion, replay failed: {e}"))
            }
        };
        match detail {
            None => report.matched += 1,
            Some(detail) => report.mismatched.push(ReplayMismatch {
                firing_id: firing.firing_id,
                detail,
            }),
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_future_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        let graph = Arc::new(
            cloacina_graph_core::GraphBuilder::new("g")
                .node(
                    "n",
                    (cloacina_graph_core::source::<u64>("x"),),
                    |x: Option<&u64>| x.copied(),
                )
                .build()
                .expect("graph"),
        );
        let ledger = cloacina_ledger::MemoryLedger::new();
        let query = FiringQuery::reactor("g");
        let fut = replay(graph, &ledger, &query);
        assert_send(&fut);
    }
}
