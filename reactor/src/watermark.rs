//! Delivery watermarks: tells each source's senders how many of its boundaries are done
//! (the contract is described on [`cloacina_accumulators::Delivered`]).
//!
//! Sans-IO: the loop reports firings on the live cache ([`Watermarks::fired`]), and either
//! publishes at once (no ledger) or says how far its records were handed to the ledger writer
//! and how far the writer has settled; nothing here awaits. Pending positions live in one
//! flat ring buffer (position, then one value per source), so steady state allocates nothing.

use std::collections::VecDeque;
use std::sync::Arc;

use cloacina_accumulators::Delivered;

/// The reactor's side of its sources' delivery watermarks.
#[derive(Debug)]
pub(crate) struct Watermarks {
    marks: Arc<[Arc<Delivered>]>,
    /// Per source: consumed as of the last firing on the live cache.
    consumed: Vec<u64>,
    /// `consumed` moved since it was last queued or published.
    moved: bool,
    /// Ledger: entries of `1 + sources` values: the writer position the entry waits for,
    /// then the consumed count per source.
    pending: VecDeque<u64>,
    /// A ledger batch was given up: nothing more is published in this life.
    frozen: bool,
}

impl Watermarks {
    pub(crate) fn new(marks: Arc<[Arc<Delivered>]>) -> Self {
        let sources = marks.len();
        Self {
            marks,
            consumed: vec![0; sources],
            moved: false,
            pending: VecDeque::new(),
            frozen: false,
        }
    }

    /// A firing on the live cache completed (or failed and was dead-lettered) on every
    /// boundary `applied` counts.
    pub(crate) fn fired(&mut self, applied: &[u64]) {
        if self.consumed.as_slice() != applied {
            self.consumed.clear();
            self.consumed.extend_from_slice(applied);
            self.moved = true;
        }
    }

    /// No ledger: what was consumed is done.
    pub(crate) fn publish_now(&mut self) {
        if self.moved {
            self.moved = false;
            for (mark, done) in self.marks.iter().zip(&self.consumed) {
                mark.advance(*done);
            }
        }
    }

    /// Ledger: every record so far (the firings' included) was handed to the writer, whose
    /// position is now `handed`; then publishes what the writer has `settled`. `lost`: the
    /// writer has given records up (read after `settled`, so a loss inside `settled` is seen).
    pub(crate) fn recorded(&mut self, handed: u64, settled: u64, lost: bool) {
        if lost {
            if !self.frozen {
                tracing::warn!("ledger records were lost: delivery watermarks stop here");
            }
            self.frozen = true;
            self.pending.clear();
            return;
        }
        if self.frozen {
            return;
        }
        if self.moved {
            self.moved = false;
            self.pending.push_back(handed);
            self.pending.extend(self.consumed.iter().copied());
        }
        let width = 1 + self.marks.len();
        while self.pending.front().is_some_and(|pos| *pos <= settled) {
            // Later entries carry higher counts: publishing each in turn is publishing the last.
            let _ = self.pending.pop_front();
            for mark in self.marks.iter() {
                if let Some(done) = self.pending.pop_front() {
                    mark.advance(done);
                }
            }
            debug_assert!(self.pending.len() % width == 0);
        }
    }

    /// The writer position the oldest pending entry waits for.
    pub(crate) fn waiting_for(&self) -> Option<u64> {
        self.pending.front().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marks(n: usize) -> Arc<[Arc<Delivered>]> {
        (0..n).map(|_| Delivered::new()).collect()
    }

    fn read(m: &Arc<[Arc<Delivered>]>) -> Vec<u64> {
        m.iter().map(|d| d.get()).collect()
    }

    #[test]
    fn without_a_ledger_a_firing_is_published_at_once() {
        let m = marks(2);
        let mut w = Watermarks::new(Arc::clone(&m));
        w.fired(&[3, 1]);
        assert_eq!(read(&m), [0, 0], "nothing before the turn ends");
        w.publish_now();
        assert_eq!(read(&m), [3, 1]);
    }

    #[test]
    fn with_a_ledger_it_waits_until_the_writer_settled_the_records() {
        let m = marks(2);
        let mut w = Watermarks::new(Arc::clone(&m));
        w.fired(&[3, 1]);
        w.recorded(10, 4, false);
        assert_eq!(read(&m), [0, 0]);
        assert_eq!(w.waiting_for(), Some(10));
        w.fired(&[5, 2]);
        w.recorded(14, 9, false);
        assert_eq!(read(&m), [0, 0]);
        w.recorded(14, 10, false);
        assert_eq!(read(&m), [3, 1]);
        w.recorded(14, 14, false);
        assert_eq!(read(&m), [5, 2]);
        assert_eq!(w.waiting_for(), None);
    }

    #[test]
    fn a_lost_batch_stops_the_watermarks_for_good() {
        let m = marks(1);
        let mut w = Watermarks::new(Arc::clone(&m));
        w.fired(&[3]);
        w.recorded(5, 5, false);
        assert_eq!(read(&m), [3]);
        w.fired(&[7]);
        w.recorded(9, 9, true);
        w.fired(&[8]);
        w.recorded(10, 10, false);
        assert_eq!(read(&m), [3], "nothing after a loss is published");
        assert_eq!(w.waiting_for(), None);
    }
}
