//! Source positions waiting to be recorded with the boundaries they belong to (sans-IO).
//!
//! A stream accumulator sends each boundary with its [`SourcePosition`]. The recorder notes
//! the newest one per `(source, lane)` while boundaries gather in its outbox and, when it
//! hands the outbox to the writer, ends the group with one checkpoint per lane that moved
//! (owner `reactor/source`, key `positions/<lane>`). The writer appends a group atomically,
//! so the ledger's position of a lane is always exactly past its last recorded boundary.

use std::collections::HashMap;

use cloacina_accumulators::{checkpoint_owner, position_key, SourcePosition};
use cloacina_graph_core::{codec, SourceName};
use cloacina_ledger::{AckSender, CheckpointRecord, Record};

/// Positions noted since the last hand-over.
pub(crate) struct PendingPositions {
    /// Checkpoint owner of each source, by source index.
    owners: Vec<String>,
    /// Newest `next` per `(source index, lane)`.
    pending: HashMap<(u32, u64), i64>,
}

impl PendingPositions {
    pub(crate) fn new(reactor: &str, sources: &[SourceName]) -> Self {
        Self {
            owners: sources
                .iter()
                .map(|s| checkpoint_owner(reactor, s.as_str()))
                .collect(),
            pending: HashMap::new(),
        }
    }

    /// Notes the position of a boundary just queued for recording.
    pub(crate) fn note(&mut self, source: u32, position: SourcePosition) {
        self.pending.insert((source, position.lane), position.next);
    }

    /// Forgets what was noted (the records were not handed over).
    pub(crate) fn clear(&mut self) {
        self.pending.clear();
    }

    /// Appends one checkpoint per lane that moved to `outbox`, behind the boundaries.
    pub(crate) fn drain_into(
        &mut self,
        reactor: &str,
        outbox: &mut Vec<(Record, Option<AckSender>)>,
    ) {
        if self.pending.is_empty() {
            return;
        }
        let at_unix_us = cloacina_ledger::now_unix_us();
        for ((source, lane), next) in self.pending.drain() {
            let Some(owner) = self.owners.get(source as usize) else {
                continue;
            };
            match codec::encode(&next) {
                Ok(value) => outbox.push((
                    Record::Checkpoint(CheckpointRecord {
                        owner: owner.clone(),
                        key: position_key(lane),
                        value,
                        at_unix_us,
                    }),
                    None,
                )),
                Err(e) => {
                    tracing::error!(reactor, owner = %owner, lane, error = %e, "source position not recorded");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_position_per_lane_is_recorded_once() {
        let mut p = PendingPositions::new("r", &["a".into(), "b".into()]);
        p.note(0, SourcePosition { lane: 7, next: 10 });
        p.note(0, SourcePosition { lane: 7, next: 11 });
        p.note(1, SourcePosition { lane: 7, next: 3 });
        let mut outbox = Vec::new();
        p.drain_into("r", &mut outbox);
        let mut got: Vec<(String, String, i64)> = outbox
            .iter()
            .map(|(r, _)| match r {
                Record::Checkpoint(c) => (
                    c.owner.clone(),
                    c.key.clone(),
                    codec::decode::<i64>(&c.value).expect("an i64"),
                ),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                ("r/a".into(), position_key(7), 11),
                ("r/b".into(), position_key(7), 3)
            ]
        );
        outbox.clear();
        p.drain_into("r", &mut outbox);
        assert!(outbox.is_empty(), "nothing moved since");
    }
}
