//! The trigger: when a reactor fires.
//!
//! A plain state machine with no I/O and no runtime: the [`InputCache`], a dirty flag per
//! source, the reaction criteria, the Sequential queue, pause and warm-up. The loop in
//! `core.rs` feeds it boundaries and asks it what is due; it never fires anything itself, so
//! it is tested here directly (and by property tests) without tokio.

use std::collections::VecDeque;

use cloacina_graph_core::{Boundary, InputCache};

use crate::config::InputStrategy;

/// What [`Trigger::step`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Nothing applied: the queue is empty, or firing is not allowed now.
    Idle,
    /// One queued boundary went into the cache; `fire` says whether the criteria are met.
    Applied {
        /// Whether the caller must fire now.
        fire: bool,
    },
}

/// Criteria, dirty flags, cache and queue of one reactor.
#[derive(Debug)]
pub(crate) struct Trigger {
    strategy: InputStrategy,
    when_all: bool,
    cache: InputCache,
    dirty: Vec<bool>,
    watched: Vec<bool>,
    dirty_watched: usize,
    n_watched: usize,
    queue: VecDeque<(usize, Boundary)>,
    queue_limit: usize,
    paused: bool,
    warmed: bool,
    /// Per source: boundaries of this life applied to the cache (Latest: taken in;
    /// Sequential: stepped from the queue). What a firing on the live cache consumes.
    applied: Vec<u64>,
    /// Per source: restored (earlier life's) queue entries not stepped yet; not counted.
    restored: Vec<u64>,
}

impl Trigger {
    /// A trigger over `cache` (aligned with the graph's sources); `watched[i]` says whether
    /// source `i` counts for the criteria.
    pub(crate) fn new(
        cache: InputCache,
        watched: Vec<bool>,
        when_all: bool,
        strategy: InputStrategy,
        queue_limit: usize,
    ) -> Self {
        let n_watched = watched.iter().filter(|w| **w).count();
        let sources = watched.len();
        Self {
            strategy,
            when_all,
            cache,
            dirty: vec![false; watched.len()],
            watched,
            dirty_watched: 0,
            n_watched,
            queue: VecDeque::new(),
            queue_limit: queue_limit.max(1),
            paused: false,
            warmed: false,
            applied: vec![0; sources],
            restored: vec![0; sources],
        }
    }

    pub(crate) fn strategy(&self) -> InputStrategy {
        self.strategy
    }

    /// The live cache.
    pub(crate) fn cache(&self) -> &InputCache {
        &self.cache
    }

    /// Dirty flag per source index.
    pub(crate) fn dirty(&self) -> &[bool] {
        &self.dirty
    }

    /// Sequential boundaries not yet applied, oldest first.
    pub(crate) fn queue(&self) -> &VecDeque<(usize, Boundary)> {
        &self.queue
    }

    /// Takes in one accepted boundary: Latest puts it in the cache (newest wins) and marks the
    /// source dirty; Sequential queues it.
    pub(crate) fn offer(&mut self, index: usize, boundary: Boundary) {
        match self.strategy {
            InputStrategy::Latest => {
                self.cache.set_at(index, boundary);
                self.mark_dirty(index);
                self.count_applied(index);
            }
            InputStrategy::Sequential => self.queue.push_back((index, boundary)),
        }
    }

    /// Per source, this life's boundaries applied to the cache so far: what a firing on the
    /// live cache now would consume (the delivery watermark's input).
    pub(crate) fn applied(&self) -> &[u64] {
        &self.applied
    }

    fn count_applied(&mut self, index: usize) {
        match self.restored.get_mut(index) {
            Some(left) if *left > 0 => *left -= 1,
            _ => {
                if let Some(n) = self.applied.get_mut(index) {
                    *n += 1;
                }
            }
        }
    }

    /// Boundaries the loop may take from its inbound queue now (at most `batch`): Sequential
    /// stops taking at its queue limit, unless `draining` (shutdown takes everything).
    pub(crate) fn room(&self, batch: usize, draining: bool) -> usize {
        match self.strategy {
            InputStrategy::Latest => batch,
            InputStrategy::Sequential if draining => batch,
            InputStrategy::Sequential => {
                batch.min(self.queue_limit.saturating_sub(self.queue.len()))
            }
        }
    }

    fn mark_dirty(&mut self, index: usize) {
        if let Some(flag) = self.dirty.get_mut(index) {
            if !*flag {
                *flag = true;
                if self.watched.get(index).copied().unwrap_or(false) {
                    self.dirty_watched += 1;
                }
            }
        }
    }

    /// Clears every dirty flag: a firing on the live cache has taken them.
    pub(crate) fn clear_dirty(&mut self) {
        self.dirty.iter_mut().for_each(|d| *d = false);
        self.dirty_watched = 0;
    }

    /// Whether the criteria hold on the current dirty flags.
    pub(crate) fn criteria_met(&self) -> bool {
        if self.when_all {
            self.dirty_watched == self.n_watched
        } else {
            self.dirty_watched > 0
        }
    }

    /// Not paused, and warmed up.
    pub(crate) fn can_fire(&self) -> bool {
        !self.paused && self.warmed
    }

    /// Latest: whether a firing is due now.
    pub(crate) fn latest_due(&self) -> bool {
        self.strategy == InputStrategy::Latest && self.can_fire() && self.criteria_met()
    }

    /// Sequential: whether queued boundaries wait for firings that may happen now.
    pub(crate) fn owes_firings(&self) -> bool {
        self.strategy == InputStrategy::Sequential && self.can_fire() && !self.queue.is_empty()
    }

    /// Sequential: applies the oldest queued boundary to the cache, if firing is allowed
    /// (`ignore_gate`: even before warm-up, as at shutdown; never while paused).
    pub(crate) fn step(&mut self, ignore_gate: bool) -> Step {
        if self.paused || !(ignore_gate || self.warmed) {
            return Step::Idle;
        }
        let Some((index, boundary)) = self.queue.pop_front() else {
            return Step::Idle;
        };
        self.cache.set_at(index, boundary);
        self.mark_dirty(index);
        self.count_applied(index);
        Step::Applied {
            fire: self.criteria_met(),
        }
    }

    pub(crate) fn pause(&mut self) {
        self.paused = true;
    }

    pub(crate) fn resume(&mut self) {
        self.paused = false;
    }

    pub(crate) fn is_paused(&self) -> bool {
        self.paused
    }

    /// Every accumulator has been ready once: firing may start (it never un-warms).
    pub(crate) fn warm(&mut self) {
        self.warmed = true;
    }

    pub(crate) fn is_warmed(&self) -> bool {
        self.warmed
    }

    /// Puts back state recovered from a ledger.
    pub(crate) fn restore(
        &mut self,
        cache: Vec<Option<Boundary>>,
        dirty: &[bool],
        queue: VecDeque<(usize, Boundary)>,
    ) {
        for (index, slot) in cache.into_iter().enumerate() {
            if let Some(b) = slot {
                self.cache.set_at(index, b);
            }
        }
        self.clear_dirty();
        for (index, d) in dirty.iter().enumerate() {
            if *d {
                self.mark_dirty(index);
            }
        }
        for (index, _) in &queue {
            if let Some(n) = self.restored.get_mut(*index) {
                *n += 1;
            }
        }
        self.queue = queue;
    }

    /// Latest sources holding a value no firing has seen.
    pub(crate) fn dirty_sources(&self) -> usize {
        self.dirty.iter().filter(|d| **d).count()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use cloacina_graph_core::{source, CompiledGraph, GraphBuilder};
    use proptest::prelude::*;

    use super::*;

    fn pair(a: Option<&u64>, b: Option<&u64>) -> (u64, u64) {
        (a.copied().unwrap_or(0), b.copied().unwrap_or(0))
    }

    fn graph() -> Arc<CompiledGraph> {
        Arc::new(
            GraphBuilder::new("t")
                .node("pair", (source::<u64>("a"), source::<u64>("b")), pair)
                .build()
                .expect("graph"),
        )
    }

    fn trigger(strategy: InputStrategy, when_all: bool, limit: usize) -> Trigger {
        let mut t = Trigger::new(
            graph().new_cache(),
            vec![true, true],
            when_all,
            strategy,
            limit,
        );
        t.warm();
        t
    }

    fn value(t: &Trigger, index: usize) -> Option<u64> {
        t.cache().at(index).and_then(|b| b.get::<u64>().copied())
    }

    #[test]
    fn applied_counts_this_lifes_boundaries_only() {
        let mut t = trigger(InputStrategy::Sequential, false, 8);
        let restored: VecDeque<(usize, Boundary)> =
            [(0, Boundary::new(1, 1u64)), (1, Boundary::new(2, 2u64))].into();
        t.restore(vec![None, None], &[false, false], restored);
        t.offer(0, Boundary::new(3, 3u64));
        assert_eq!(t.applied(), [0, 0], "queued is not applied");
        t.step(false);
        t.step(false);
        assert_eq!(
            t.applied(),
            [0, 0],
            "restored entries are an earlier life's"
        );
        t.step(false);
        assert_eq!(t.applied(), [1, 0]);
        let mut l = trigger(InputStrategy::Latest, false, 8);
        l.offer(1, Boundary::new(1, 1u64));
        l.offer(1, Boundary::new(2, 2u64));
        assert_eq!(l.applied(), [0, 2], "Latest: coalesced ones count too");
    }

    #[test]
    fn latest_coalesces_and_fires_on_the_newest() {
        let mut t = trigger(InputStrategy::Latest, false, 8);
        assert!(!t.latest_due());
        t.offer(0, Boundary::new(1, 10u64));
        t.offer(0, Boundary::new(2, 11u64));
        assert!(t.latest_due());
        assert_eq!(value(&t, 0), Some(11));
        t.clear_dirty();
        assert!(!t.latest_due());
    }

    #[test]
    fn when_all_waits_for_every_watched_source() {
        let mut t = trigger(InputStrategy::Latest, true, 8);
        t.offer(0, Boundary::new(1, 1u64));
        t.offer(0, Boundary::new(2, 2u64));
        assert!(!t.criteria_met());
        t.offer(1, Boundary::new(3, 3u64));
        assert!(t.criteria_met());
    }

    #[test]
    fn sequential_applies_in_order_and_respects_pause_and_warmup() {
        let mut t = Trigger::new(
            graph().new_cache(),
            vec![true, true],
            false,
            InputStrategy::Sequential,
            2,
        );
        t.offer(0, Boundary::new(1, 1u64));
        t.offer(1, Boundary::new(2, 2u64));
        assert_eq!(t.room(256, false), 0, "queue limit reached");
        assert_eq!(t.room(256, true), 256, "shutdown takes everything");
        assert_eq!(t.step(false), Step::Idle, "not warmed");
        assert_eq!(t.step(true), Step::Applied { fire: true });
        t.clear_dirty();
        t.warm();
        t.pause();
        assert!(!t.owes_firings());
        assert_eq!(
            t.step(true),
            Step::Idle,
            "paused even when ignoring the gate"
        );
        t.resume();
        assert!(t.owes_firings());
        assert_eq!(t.step(false), Step::Applied { fire: true });
        assert_eq!((value(&t, 0), value(&t, 1)), (Some(1), Some(2)));
        assert_eq!(t.step(false), Step::Idle);
    }

    /// One thing that can happen to a trigger, as the loop drives it.
    #[derive(Debug, Clone)]
    enum Op {
        /// A boundary for source 0 or 1 (the loop numbers them).
        Boundary(usize),
        Pause,
        Resume,
        /// The loop's turn: fire whatever is due (at most `steps` Sequential applications).
        Evaluate(usize),
        /// `force_fire`: fire on the live cache whatever the criteria.
        ForceFire,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0usize..2).prop_map(Op::Boundary),
            1 => Just(Op::Pause),
            1 => Just(Op::Resume),
            3 => (1usize..4).prop_map(Op::Evaluate),
            1 => Just(Op::ForceFire),
        ]
    }

    /// What [`run`] saw: per firing, the sequence number per source the cache held and the
    /// newest sent per source at that moment; and how many boundaries were sent.
    struct Run {
        fired: Vec<([u64; 2], [u64; 2])>,
        sent: u64,
    }

    /// Drives `t` as `core.rs` does.
    fn run(t: &mut Trigger, ops: &[Op]) -> Run {
        let mut seq = 0;
        let mut newest = [0u64; 2];
        let mut fired = Vec::new();
        let fire = |t: &mut Trigger, fired: &mut Vec<([u64; 2], [u64; 2])>, newest: [u64; 2]| {
            t.clear_dirty();
            let seen = [0, 1].map(|i| t.cache().at(i).map_or(0, |b| b.seq()));
            fired.push((seen, newest));
        };
        let drain = |t: &mut Trigger,
                     fired: &mut Vec<_>,
                     newest: [u64; 2],
                     ignore_gate: bool,
                     steps: usize| {
            for _ in 0..steps {
                match t.step(ignore_gate) {
                    Step::Idle => break,
                    Step::Applied { fire: true } => fire(t, fired, newest),
                    Step::Applied { fire: false } => {}
                }
            }
        };
        for op in ops {
            match op {
                Op::Boundary(source) => {
                    seq += 1;
                    newest[*source] = seq;
                    t.offer(*source, Boundary::new(seq, seq));
                }
                Op::Pause => t.pause(),
                Op::Resume => t.resume(),
                Op::Evaluate(steps) => match t.strategy() {
                    InputStrategy::Latest => {
                        if t.latest_due() {
                            fire(t, &mut fired, newest);
                        }
                    }
                    InputStrategy::Sequential => drain(t, &mut fired, newest, false, *steps),
                },
                Op::ForceFire => {
                    // The loop takes in everything queued first (the ordering rule).
                    drain(t, &mut fired, newest, false, usize::MAX);
                    fire(t, &mut fired, newest);
                }
            }
        }
        // Shutdown, not paused: everything still queued fires.
        t.resume();
        match t.strategy() {
            InputStrategy::Latest => {
                if t.criteria_met() {
                    fire(t, &mut fired, newest);
                }
            }
            InputStrategy::Sequential => drain(t, &mut fired, newest, true, usize::MAX),
        }
        Run { fired, sent: seq }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Sequential under when_any: exactly one firing per boundary, in arrival order,
        /// besides forced firings (which re-fire the current cache and consume nothing).
        #[test]
        fn sequential_fires_every_boundary_once_in_order(ops in proptest::collection::vec(op(), 0..200)) {
            let mut t = trigger(InputStrategy::Sequential, false, usize::MAX);
            let r = run(&mut t, &ops);
            // The newest input of each firing is the boundary it was fired for.
            let mut newest: Vec<u64> = r.fired.iter().map(|(seen, _)| seen[0].max(seen[1])).collect();
            newest.dedup(); // a forced firing repeats the previous newest (or 0 before any)
            newest.retain(|s| *s > 0);
            prop_assert_eq!(newest, (1..=r.sent).collect::<Vec<_>>());
            prop_assert!(t.queue().is_empty());
        }

        /// Latest: every firing sees the newest value of every source, and the last boundary
        /// sent is always fired (at the latest at shutdown).
        #[test]
        fn latest_always_fires_the_last_value(ops in proptest::collection::vec(op(), 0..200)) {
            let mut t = trigger(InputStrategy::Latest, false, 8);
            let r = run(&mut t, &ops);
            for (seen, newest) in &r.fired {
                prop_assert_eq!(seen, newest);
            }
            if r.sent > 0 {
                let last = r.fired.last().map(|(seen, _)| seen[0].max(seen[1]));
                prop_assert_eq!(last, Some(r.sent));
            }
        }
    }
}
