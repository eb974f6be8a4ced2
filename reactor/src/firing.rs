//! [`Firing`]: what subscribers receive, one per firing.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use cloacina_graph_core::{GraphResult, SourceName};
use smallvec::SmallVec;

/// The input a firing saw from one source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FiringInput {
    /// The source.
    pub source: SourceName,
    /// Sequence number of the boundary the firing saw.
    pub seq: u64,
}

/// The inputs a firing saw, one per source holding a value; reads as a slice of
/// [`FiringInput`] (`as_slice`, `iter`, indexing, `to_vec`). Up to four are stored inline
/// (no allocation per firing).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FiringInputs(SmallVec<[FiringInput; 4]>);

impl FiringInputs {
    /// The inputs as a slice.
    pub fn as_slice(&self) -> &[FiringInput] {
        &self.0
    }
}

impl std::ops::Deref for FiringInputs {
    type Target = [FiringInput];

    fn deref(&self) -> &[FiringInput] {
        &self.0
    }
}

impl FromIterator<FiringInput> for FiringInputs {
    fn from_iter<I: IntoIterator<Item = FiringInput>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl<'a> IntoIterator for &'a FiringInputs {
    type Item = &'a FiringInput;
    type IntoIter = std::slice::Iter<'a, FiringInput>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// One firing of a reactor and its result.
#[derive(Debug)]
pub struct Firing {
    /// Reactor name.
    pub reactor: Arc<str>,
    /// Firing id, from 1, increasing per reactor.
    pub id: u64,
    /// Whether it was a manual firing (`force_fire`, `fire_with`).
    pub manual: bool,
    /// Graph runs it took (more than 1 under [`crate::FailurePolicy::Retry`]).
    pub attempts: u32,
    /// Inputs seen, one per source holding a value.
    pub inputs: FiringInputs,
    /// Wall-clock time the firing started.
    pub fired_at: SystemTime,
    /// Monotonic time the graph started.
    pub started: Instant,
    /// Monotonic time the graph finished.
    pub completed: Instant,
    /// The graph's result.
    pub result: GraphResult,
}

impl Firing {
    /// How long the graph ran.
    pub fn duration(&self) -> Duration {
        self.completed.saturating_duration_since(self.started)
    }

    /// The firing as its ledger record says it (outputs encoded with their codecs; the
    /// trigger is `Forced` for a manual firing, `Criteria` otherwise): what a reactor
    /// writes to its ledger, for consumers that handle pushed and stored firings alike.
    pub fn to_record(&self) -> cloacina_ledger::FiringRecord {
        let trigger = if self.manual {
            cloacina_ledger::FiringTrigger::Forced
        } else {
            cloacina_ledger::FiringTrigger::Criteria
        };
        crate::built::firing_record(&self.reactor, self, trigger)
    }

    /// Sequence number of the boundary of `source` this firing saw.
    pub fn input_seq(&self, source: &str) -> Option<u64> {
        self.inputs
            .iter()
            .find(|i| i.source.as_str() == source)
            .map(|i| i.seq)
    }
}

/// The wall clock read as of a monotonic instant, so a firing's wall-clock start is derived
/// from its (already measured) monotonic start instead of a clock read per firing. Set once
/// per batch of boundaries taken in; an anchor older than [`WallClock::FRESH`] is read again,
/// so a wall-clock step (NTP) shows within that long.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WallClock {
    wall: SystemTime,
    at: Instant,
}

impl WallClock {
    /// How long an anchor is trusted.
    const FRESH: Duration = Duration::from_secs(1);

    /// Reads both clocks now.
    pub(crate) fn now() -> Self {
        Self {
            wall: SystemTime::now(),
            at: Instant::now(),
        }
    }

    /// The wall-clock time of the anchor.
    pub(crate) fn wall(&self) -> SystemTime {
        self.wall
    }

    /// The wall-clock time at `instant` (not before the anchor), re-anchoring if it is stale.
    pub(crate) fn wall_at(&mut self, instant: Instant) -> SystemTime {
        if instant.saturating_duration_since(self.at) > Self::FRESH {
            *self = Self::now();
            // `instant` is usually a little before the fresh anchor.
            if let Some(before) = self.at.checked_duration_since(instant) {
                return self.wall.checked_sub(before).unwrap_or(self.wall);
            }
        }
        let since = instant.saturating_duration_since(self.at);
        self.wall.checked_add(since).unwrap_or(self.wall)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_clock_follows_the_monotonic_clock_from_its_anchor() {
        let mut clock = WallClock::now();
        let anchor = clock.wall();
        let later = clock.at + Duration::from_millis(250);
        assert_eq!(clock.wall_at(later), anchor + Duration::from_millis(250));
        // An instant before the anchor maps to the anchor, never earlier.
        assert_eq!(clock.wall_at(clock.at), anchor);
    }

    #[test]
    fn a_stale_anchor_is_read_again() {
        let mut clock = WallClock {
            wall: SystemTime::UNIX_EPOCH,
            at: Instant::now(),
        };
        let stale = clock.at + WallClock::FRESH + Duration::from_millis(1);
        let before = SystemTime::now();
        let wall = clock.wall_at(stale);
        // Re-anchored on the real wall clock (not epoch + 1 s).
        assert!(clock.wall() >= before);
        assert!(wall > SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000));
    }

    #[test]
    fn firing_inputs_read_as_a_slice() {
        let inputs: FiringInputs = (0..6)
            .map(|seq| FiringInput {
                source: SourceName::from("s"),
                seq,
            })
            .collect();
        assert_eq!(inputs.len(), 6);
        assert_eq!(inputs.iter().map(|i| i.seq).sum::<u64>(), 15);
        assert_eq!((&inputs).into_iter().last().map(|i| i.seq), Some(5));
    }
}
