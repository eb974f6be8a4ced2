//! Which offsets may be committed: the sans-IO core of commit-after-fire.
//!
//! Every record the consumer took is noted in order: with a boundary (sent to the reactor)
//! or without (filtered by the decoder, or dead-lettered). The reactor's delivery watermark
//! says how many of the boundaries are done; records leave the front of the in-flight queue
//! as the watermark covers them (a record without a boundary leaves as soon as everything
//! before it has), and each partition's committable offset moves to one past its last record
//! that left. A partition revoked and assigned again starts a new generation: records of an
//! earlier assignment still in flight never move the new one's offset.

use std::collections::VecDeque;

/// One in-flight record: its partition slot, that slot's generation, its offset, and whether
/// it was sent as a boundary.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    slot: u32,
    generation: u32,
    offset: i64,
    boundary: bool,
}

/// One topic-partition this consumer has seen.
#[derive(Debug)]
struct Partition {
    topic: String,
    partition: i32,
    /// Its lane id in the ledger's source positions.
    lane: u64,
    generation: u32,
    assigned: bool,
    /// One past the last record done (what a commit stores), if any is.
    committable: Option<i64>,
    /// What was last committed (or found committed), if anything.
    committed: Option<i64>,
}

/// Offsets of the records in flight, and what each partition may commit.
#[derive(Debug, Default)]
pub(crate) struct OffsetTracker {
    partitions: Vec<Partition>,
    in_flight: VecDeque<InFlight>,
    /// Boundaries the watermark has covered so far.
    done: u64,
}

impl OffsetTracker {
    /// A tracker for a consumer whose first boundary follows `boundaries` that earlier
    /// instances of its source sent: the delivery watermark counts those too (it lives as
    /// long as the reactor), so they are not this consumer's to retire.
    pub(crate) fn after(boundaries: u64) -> Self {
        Self {
            done: boundaries,
            ..Self::default()
        }
    }

    /// The slot of `topic`/`partition` (made on first sight; partitions are few, so a scan).
    pub(crate) fn slot(&mut self, topic: &str, partition: i32) -> u32 {
        if let Some(i) = self
            .partitions
            .iter()
            .position(|p| p.partition == partition && p.topic == topic)
        {
            return i as u32;
        }
        self.partitions.push(Partition {
            topic: topic.to_owned(),
            partition,
            lane: cloacina_accumulators::lane_id(topic, partition),
            generation: 0,
            assigned: true,
            committable: None,
            committed: None,
        });
        (self.partitions.len() - 1) as u32
    }

    /// The partition was assigned (again): a new generation.
    pub(crate) fn assigned(&mut self, topic: &str, partition: i32) {
        let slot = self.slot(topic, partition) as usize;
        if let Some(p) = self.partitions.get_mut(slot) {
            p.generation = p.generation.wrapping_add(1);
            p.assigned = true;
            p.committable = None;
            p.committed = None;
        }
    }

    /// The partition was revoked: nothing more is committed for it until it is assigned.
    pub(crate) fn revoked(&mut self, topic: &str, partition: i32) {
        let slot = self.slot(topic, partition) as usize;
        if let Some(p) = self.partitions.get_mut(slot) {
            p.assigned = false;
        }
    }

    /// Records of `topic`/`partition` taken (in any assignment) and not done yet.
    pub(crate) fn in_flight_of(&self, topic: &str, partition: i32) -> usize {
        match self
            .partitions
            .iter()
            .position(|p| p.partition == partition && p.topic == topic)
        {
            Some(slot) => self
                .in_flight
                .iter()
                .filter(|r| r.slot as usize == slot)
                .count(),
            None => 0,
        }
    }

    /// The partition (just assigned) resumes at `next`, past records the ledger already
    /// holds: they may be committed (the reactor fires them from the ledger after a crash).
    pub(crate) fn resumed(&mut self, topic: &str, partition: i32, next: i64) {
        let slot = self.slot(topic, partition) as usize;
        if let Some(p) = self.partitions.get_mut(slot) {
            p.committable = Some(p.committable.map_or(next, |c| c.max(next)));
        }
    }

    /// The slot's lane id (see `cloacina_accumulators::SourcePosition`).
    pub(crate) fn lane(&self, slot: u32) -> u64 {
        self.partitions.get(slot as usize).map_or(0, |p| p.lane)
    }

    /// The slot's current generation.
    pub(crate) fn generation(&self, slot: u32) -> u32 {
        self.partitions
            .get(slot as usize)
            .map_or(0, |p| p.generation)
    }

    /// Whether `slot` is assigned and still in `generation`.
    pub(crate) fn is_current(&self, slot: u32, generation: u32) -> bool {
        self.partitions
            .get(slot as usize)
            .is_some_and(|p| p.assigned && p.generation == generation)
    }

    /// Notes a record taken from `slot`; `boundary`: it was sent to the reactor.
    pub(crate) fn took(&mut self, slot: u32, offset: i64, boundary: bool) {
        let generation = self
            .partitions
            .get(slot as usize)
            .map_or(0, |p| p.generation);
        self.in_flight.push_back(InFlight {
            slot,
            generation,
            offset,
            boundary,
        });
    }

    /// The watermark now reads `done` boundaries: retire what it covers.
    pub(crate) fn delivered(&mut self, done: u64) {
        while let Some(front) = self.in_flight.front().copied() {
            if front.boundary {
                if self.done >= done {
                    break;
                }
                self.done += 1;
            }
            let _ = self.in_flight.pop_front();
            if let Some(p) = self.partitions.get_mut(front.slot as usize) {
                if p.generation == front.generation {
                    p.committable = Some(
                        p.committable
                            .map_or(front.offset + 1, |c| c.max(front.offset + 1)),
                    );
                }
            }
        }
    }

    /// Records taken whose boundaries are not done yet.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Assigned partitions whose committable offset is past what was committed, with that
    /// offset: what a commit should store now.
    pub(crate) fn due(&self) -> Vec<(String, i32, i64)> {
        self.partitions
            .iter()
            .filter(|p| p.assigned)
            .filter_map(|p| match (p.committable, p.committed) {
                (Some(c), Some(done)) if c <= done => None,
                (Some(c), _) => Some((p.topic.clone(), p.partition, c)),
                (None, _) => None,
            })
            .collect()
    }

    /// A commit of these offsets succeeded.
    pub(crate) fn committed(&mut self, offsets: &[(String, i32, i64)]) {
        for (topic, partition, offset) in offsets {
            if let Some(p) = self
                .partitions
                .iter_mut()
                .find(|p| p.partition == *partition && p.topic == *topic)
            {
                p.committed = Some(p.committed.map_or(*offset, |c| c.max(*offset)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_follow_the_watermark_across_partitions() {
        let mut t = OffsetTracker::default();
        let (a, b) = (t.slot("t", 0), t.slot("t", 1));
        t.took(a, 10, true);
        t.took(b, 5, true);
        t.took(a, 11, false); // filtered: no boundary
        t.took(a, 12, true);
        assert!(t.due().is_empty());
        t.delivered(1);
        assert_eq!(t.due(), [("t".into(), 0, 11)]);
        t.delivered(2);
        // b's record, then a's filtered one, leave; a's 12 still waits.
        assert_eq!(t.due(), [("t".into(), 0, 12), ("t".into(), 1, 6)]);
        t.committed(&t.due());
        assert!(t.due().is_empty());
        t.delivered(3);
        assert_eq!(t.due(), [("t".into(), 0, 13)]);
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn a_restarted_consumer_retires_only_its_own_boundaries() {
        // An earlier instance sent 5 boundaries; the watermark reads 5 once they are done.
        let mut t = OffsetTracker::after(5);
        let a = t.slot("t", 0);
        t.took(a, 40, true);
        t.took(a, 41, true);
        t.delivered(5);
        assert!(
            t.due().is_empty(),
            "the earlier instance's boundaries retire nothing here"
        );
        t.delivered(6);
        assert_eq!(t.due(), [("t".into(), 0, 41)]);
        assert_eq!(t.in_flight(), 1);
    }

    #[test]
    fn a_revoked_partition_commits_nothing_and_a_new_assignment_ignores_old_records() {
        let mut t = OffsetTracker::default();
        let a = t.slot("t", 0);
        t.took(a, 100, true);
        t.revoked("t", 0);
        t.delivered(1);
        assert!(t.due().is_empty(), "not ours any more");
        t.assigned("t", 0);
        t.took(a, 50, true); // the new owner's position (another process committed 50)
        t.took(a, 101, true);
        t.revoked("t", 0);
        t.assigned("t", 0);
        t.delivered(3);
        assert!(
            t.due().is_empty(),
            "records of earlier assignments move nothing"
        );
    }
}
