//! The reactor's records as the ledger writer builds them (see
//! [`cloacina_ledger::RecordBuilder`]): the loop keeps the boundaries and firings it holds
//! anyway (shared, not copied) and the writer's task encodes them into records just before
//! it appends them. Encoding and the allocations of every record (names, inputs, encoded
//! values) leave the hot path, and are freed on the thread that made them.

use std::sync::Arc;

use cloacina_graph_core::{Boundary, GraphResult, SourceDecl, TerminalOutputs};
use cloacina_ledger::{FiringOutcome, FiringRecord, FiringTrigger, Record, RecordBuilder};

use crate::durable::{boundary_record, unix_us};
use crate::firing::Firing;

/// Boundaries and firings waiting for the next hand-over, in the order they happened.
#[derive(Default)]
pub(crate) struct Unbuilt {
    boundaries: Vec<(u32, Boundary)>,
    firings: Vec<(Arc<Firing>, FiringTrigger)>,
}

impl Unbuilt {
    pub(crate) fn boundary(&mut self, source: u32, boundary: &Boundary) {
        self.boundaries.push((source, boundary.clone()));
    }

    pub(crate) fn firing(&mut self, firing: &Arc<Firing>, trigger: FiringTrigger) {
        self.firings.push((Arc::clone(firing), trigger));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.boundaries.is_empty() && self.firings.is_empty()
    }

    pub(crate) fn clear(&mut self) {
        self.boundaries.clear();
        self.firings.clear();
    }

    /// Takes what is waiting as a builder for the writer (the next turn's lists start at
    /// this turn's size, so steady state grows nothing).
    pub(crate) fn take(&mut self, reactor: &Arc<str>, decls: &Arc<[SourceDecl]>) -> Built {
        let boundaries = Vec::with_capacity(self.boundaries.len());
        let firings = Vec::with_capacity(self.firings.len());
        Built {
            reactor: Arc::clone(reactor),
            decls: Arc::clone(decls),
            boundaries: std::mem::replace(&mut self.boundaries, boundaries),
            firings: std::mem::replace(&mut self.firings, firings),
        }
    }
}

/// One hand-over's boundaries and firings, built into records by the writer.
pub(crate) struct Built {
    reactor: Arc<str>,
    decls: Arc<[SourceDecl]>,
    boundaries: Vec<(u32, Boundary)>,
    firings: Vec<(Arc<Firing>, FiringTrigger)>,
}

impl RecordBuilder for Built {
    fn count(&self) -> usize {
        self.boundaries.len() + self.firings.len()
    }

    fn build(self: Box<Self>, out: &mut Vec<Record>) -> usize {
        let mut failed = 0;
        out.reserve(self.count());
        for (source, boundary) in &self.boundaries {
            let record = self
                .decls
                .get(*source as usize)
                .ok_or_else(|| format!("source index {source} out of range"))
                .and_then(|decl| boundary_record(&self.reactor, decl, boundary));
            match record {
                Ok(record) => out.push(Record::Boundary(record)),
                Err(reason) => {
                    failed += 1;
                    tracing::error!(reactor = %self.reactor, seq = boundary.seq(), %reason, "boundary not recorded");
                }
            }
        }
        for (firing, trigger) in &self.firings {
            out.push(Record::Firing(firing_record(
                &self.reactor,
                firing,
                *trigger,
            )));
        }
        failed
    }
}

/// The ledger record of a firing.
pub(crate) fn firing_record(
    reactor: &str,
    firing: &Firing,
    trigger: FiringTrigger,
) -> FiringRecord {
    let outcome = match &firing.result {
        GraphResult::Completed { outputs } => FiringOutcome::Completed {
            outputs: encode_outputs(reactor, outputs),
        },
        GraphResult::Error(e) => FiringOutcome::Failed {
            node: e.node().to_owned(),
            error: e.to_string(),
        },
    };
    FiringRecord {
        reactor: reactor.to_owned(),
        firing_id: firing.id,
        trigger,
        inputs: firing
            .inputs
            .iter()
            .map(|i| (i.source.as_str().to_owned(), i.seq))
            .collect(),
        fired_at_unix_us: unix_us(firing.fired_at),
        duration_ns: u64::try_from(firing.duration().as_nanos()).unwrap_or(u64::MAX),
        outcome,
    }
}

/// Encodes a firing's terminal outputs for its ledger record (outputs without a codec are
/// skipped, and logged).
fn encode_outputs(reactor: &str, outputs: &TerminalOutputs) -> Vec<(String, Vec<u8>)> {
    outputs
        .iter()
        .filter_map(|o| match o.encode() {
            Ok(bytes) => Some((o.node().to_owned(), bytes)),
            Err(e) => {
                tracing::error!(reactor, node = o.node(), error = %e, "cannot encode output for the ledger");
                None
            }
        })
        .collect()
}
