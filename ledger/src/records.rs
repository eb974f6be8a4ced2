//! The record kinds a ledger stores, and the queries that read them back.
//!
//! Every record is plain data (names, sequence numbers, times, encoded bytes): the ledger
//! knows nothing of graphs. Backends encode records with the one codec
//! ([`cloacina_codec`], bincode with a format-version byte) where they store them whole.

use serde::{Deserialize, Serialize};

use crate::LedgerError;

/// A boundary a reactor received, in the order it received it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoundaryRecord {
    /// Reactor name.
    pub reactor: String,
    /// Sequence number, increasing by one per boundary across all of the reactor's sources.
    /// Record id: `(reactor, seq)`.
    pub seq: u64,
    /// The source it came from.
    pub source: String,
    /// Wall-clock receive time, microseconds since the Unix epoch.
    pub received_at_unix_us: i64,
    /// The value, encoded with the source's codec.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

/// What started a firing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FiringTrigger {
    /// The reaction criteria were met.
    Criteria,
    /// `force_fire`: on the live cache, ignoring criteria.
    Forced,
    /// `fire_with`: on a cache the caller supplied; the live cache was not used or changed.
    Supplied,
}

impl FiringTrigger {
    /// Whether the firing ran on the live cache (and so cleared its dirty flags).
    pub fn on_live_cache(self) -> bool {
        !matches!(self, Self::Supplied)
    }

    /// Whether somebody asked for it (forced or supplied).
    pub fn manual(self) -> bool {
        !matches!(self, Self::Criteria)
    }
}

/// How a firing ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FiringOutcome {
    /// Completed; terminal outputs as `(node, encoded value)`.
    Completed {
        /// Encoded terminal outputs.
        outputs: Vec<(String, Vec<u8>)>,
    },
    /// Failed at `node`.
    Failed {
        /// The failing node.
        node: String,
        /// The error message.
        error: String,
    },
}

/// One firing of a reactor. Record id: `(reactor, firing_id)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FiringRecord {
    /// Reactor name.
    pub reactor: String,
    /// Firing id, increasing per reactor.
    pub firing_id: u64,
    /// What started it.
    pub trigger: FiringTrigger,
    /// `(source, sequence number)` of every input the firing saw.
    pub inputs: Vec<(String, u64)>,
    /// Wall-clock start, microseconds since the Unix epoch.
    pub fired_at_unix_us: i64,
    /// How long the graph ran.
    pub duration_ns: u64,
    /// Result or failure.
    pub outcome: FiringOutcome,
}

/// A named checkpoint of an accumulator (an offset, a cursor, a buffer). Record id:
/// `(owner, key)`; a later checkpoint replaces an earlier one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    /// Who owns it, e.g. `reactor/accumulator`.
    pub owner: String,
    /// What it is, e.g. `offsets/topic/3`.
    pub key: String,
    /// The encoded state.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// When it was taken, microseconds since the Unix epoch.
    pub at_unix_us: i64,
}

/// A reactor's state at one moment: enough to restart from without the boundaries before it.
/// Record id: `reactor`; a later snapshot replaces an earlier one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// Reactor name.
    pub reactor: String,
    /// Sequence number of the last boundary received before the snapshot.
    pub last_seq: u64,
    /// The id the next firing gets.
    pub next_firing_id: u64,
    /// When it was taken, microseconds since the Unix epoch.
    pub taken_at_unix_us: i64,
    /// The cache: the newest applied boundary of each source that has one.
    pub cache: Vec<BoundaryRecord>,
    /// Sources whose boundary arrived after the last firing on the live cache.
    pub dirty: Vec<String>,
    /// Boundaries received and not yet applied (Sequential), oldest first.
    pub queue: Vec<BoundaryRecord>,
}

/// A record a reactor (or an accumulator) appends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// A boundary received.
    Boundary(BoundaryRecord),
    /// A firing and its result.
    Firing(FiringRecord),
    /// An accumulator checkpoint.
    Checkpoint(CheckpointRecord),
    /// A reactor state snapshot.
    Snapshot(SnapshotRecord),
}

impl Record {
    /// A short description naming the record, for messages: `boundary 7 of reactor `r``.
    pub fn describe(&self) -> String {
        match self {
            Self::Boundary(b) => format!("boundary {} of reactor `{}`", b.seq, b.reactor),
            Self::Firing(f) => format!("firing {} of reactor `{}`", f.firing_id, f.reactor),
            Self::Checkpoint(c) => format!("checkpoint `{}` of `{}`", c.key, c.owner),
            Self::Snapshot(s) => format!("snapshot of reactor `{}`", s.reactor),
        }
    }
}

/// How durable an append must be when it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Commit {
    /// Applied and visible to readers; made durable later by [`crate::Ledger::flush`] or the
    /// store's own schedule (sled: its background flush; SQLite: WAL with
    /// `synchronous=NORMAL`; PostgreSQL: `synchronous_commit=off`).
    #[default]
    Buffered,
    /// On stable storage (fsync or the server's synchronous commit) before it returns.
    Durable,
}

/// Which firings to read: one reactor's, oldest first, optionally narrowed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FiringQuery {
    /// Reactor name.
    pub reactor: String,
    /// Only firings with `firing_id >= from_id`.
    pub from_id: Option<u64>,
    /// Only firings that started at or after this time (µs since the epoch).
    pub since_unix_us: Option<i64>,
    /// Only firings that started before this time (µs since the epoch).
    pub until_unix_us: Option<i64>,
    /// At most this many (the oldest that match).
    pub limit: Option<usize>,
    /// Return what is there even if ids inside the result are missing (see
    /// [`FiringQuery::allow_gaps`]).
    pub allow_gaps: bool,
}

impl FiringQuery {
    /// Every firing of `reactor`.
    pub fn reactor(reactor: impl Into<String>) -> Self {
        Self {
            reactor: reactor.into(),
            ..Self::default()
        }
    }

    /// Reads past holes instead of failing on them. A reactor numbers its firings
    /// contiguously, so by default a read by id (no time bound) whose result skips ids fails
    /// with [`LedgerError::Gap`] naming them, rather than silently returning fewer records.
    /// Set this to read a store with a known loss (a batch its writer gave up and counted).
    pub fn allow_gaps(mut self) -> Self {
        self.allow_gaps = true;
        self
    }

    /// Fails with [`LedgerError::Gap`] if `found` (in id order) skips ids and this query
    /// asked for an id range; every backend calls it on what it read.
    pub fn check_gaps(
        &self,
        backend: &'static str,
        found: &[FiringRecord],
    ) -> Result<(), LedgerError> {
        let checked =
            !self.allow_gaps && self.since_unix_us.is_none() && self.until_unix_us.is_none();
        first_gap_error(
            backend,
            checked,
            &self.reactor,
            "firing",
            found.iter().map(|f| f.firing_id),
        )
    }

    /// Whether `f` matches (the reactor is matched by the backend's key).
    pub fn matches(&self, f: &FiringRecord) -> bool {
        self.from_id.is_none_or(|id| f.firing_id >= id)
            && self.since_unix_us.is_none_or(|t| f.fired_at_unix_us >= t)
            && self.until_unix_us.is_none_or(|t| f.fired_at_unix_us < t)
    }
}

/// Which boundaries to read: one reactor's, in sequence order, optionally narrowed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BoundaryQuery {
    /// Reactor name.
    pub reactor: String,
    /// Only boundaries with `seq >= from_seq`.
    pub from_seq: Option<u64>,
    /// Only boundaries with `seq <= through_seq`.
    pub through_seq: Option<u64>,
    /// Only boundaries received at or after this time (µs since the epoch).
    pub since_unix_us: Option<i64>,
    /// Only boundaries received before this time (µs since the epoch).
    pub until_unix_us: Option<i64>,
    /// At most this many (the oldest that match).
    pub limit: Option<usize>,
    /// Return what is there even if seqs inside the result are missing (see
    /// [`BoundaryQuery::allow_gaps`]).
    pub allow_gaps: bool,
}

impl BoundaryQuery {
    /// Every boundary of `reactor`.
    pub fn reactor(reactor: impl Into<String>) -> Self {
        Self {
            reactor: reactor.into(),
            ..Self::default()
        }
    }

    /// Reads past holes instead of failing on them. A reactor numbers its boundaries
    /// contiguously, so by default a read by seq (no time bound) whose result skips seqs
    /// fails with [`LedgerError::Gap`] naming them, rather than silently returning fewer
    /// records. Set this to read a store with a known loss (a batch its writer gave up and
    /// counted).
    pub fn allow_gaps(mut self) -> Self {
        self.allow_gaps = true;
        self
    }

    /// Fails with [`LedgerError::Gap`] if `found` (in seq order) skips seqs and this query
    /// asked for a seq range; every backend calls it on what it read.
    pub fn check_gaps(
        &self,
        backend: &'static str,
        found: &[BoundaryRecord],
    ) -> Result<(), LedgerError> {
        let checked =
            !self.allow_gaps && self.since_unix_us.is_none() && self.until_unix_us.is_none();
        first_gap_error(
            backend,
            checked,
            &self.reactor,
            "boundary",
            found.iter().map(|b| b.seq),
        )
    }

    /// Whether `b` matches (the reactor is matched by the backend's key).
    pub fn matches(&self, b: &BoundaryRecord) -> bool {
        self.from_seq.is_none_or(|s| b.seq >= s)
            && self.through_seq.is_none_or(|s| b.seq <= s)
            && self
                .since_unix_us
                .is_none_or(|t| b.received_at_unix_us >= t)
            && self.until_unix_us.is_none_or(|t| b.received_at_unix_us < t)
    }
}

/// Which old records of a reactor [`crate::Ledger::retain`] may remove. A record goes if it
/// is past either limit *and* not protected: boundaries after the reactor's latest snapshot
/// (all of them, if it has none) and firings from the snapshot's `next_firing_id` on (all,
/// if none) are what a restart needs, and are always kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    /// Keep at most this many of the newest boundaries and of the newest firings.
    pub keep_last: Option<u64>,
    /// Remove records older than this (µs since the epoch).
    pub older_than_unix_us: Option<i64>,
}

/// What [`crate::Ledger::retain`] removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetainReport {
    /// Boundary records removed.
    pub boundaries_removed: u64,
    /// Firing records removed.
    pub firings_removed: u64,
}

/// The id bounds [`Retention`] works out for one reactor, given its newest ids and snapshot;
/// shared by every backend so they all remove the same records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionCut {
    /// Boundaries with `seq <= this` may go (if past a limit). Reactors number boundaries
    /// and firings from 1, so 0 keeps every record they write.
    pub boundary_protect: u64,
    /// Boundaries with `seq <= this` are past the count limit.
    pub boundary_count_cut: u64,
    /// Firings with `id <= this` may go (if past a limit); see `boundary_protect` for 0.
    pub firing_protect: u64,
    /// Firings with `id <= this` are past the count limit.
    pub firing_count_cut: u64,
    /// Records older than this are past the age limit (`i64::MIN`: no age limit).
    pub older_than_unix_us: i64,
}

impl Retention {
    /// Works out the bounds for a reactor whose newest boundary is `max_seq`, newest firing
    /// `max_firing_id`, and latest snapshot `snapshot` (`(last_seq, next_firing_id)`).
    pub fn cut(
        &self,
        max_seq: u64,
        max_firing_id: u64,
        snapshot: Option<(u64, u64)>,
    ) -> RetentionCut {
        let (boundary_protect, firing_protect) = match snapshot {
            Some((last_seq, next_firing_id)) => (last_seq, next_firing_id.saturating_sub(1)),
            None => (0, 0),
        };
        let count_cut = |max: u64| self.keep_last.map_or(0, |keep| max.saturating_sub(keep));
        RetentionCut {
            boundary_protect,
            boundary_count_cut: count_cut(max_seq),
            firing_protect,
            firing_count_cut: count_cut(max_firing_id),
            older_than_unix_us: self.older_than_unix_us.unwrap_or(i64::MIN),
        }
    }
}

impl RetentionCut {
    /// Whether a boundary goes.
    pub fn removes_boundary(&self, seq: u64, received_at_unix_us: i64) -> bool {
        seq <= self.boundary_protect
            && (seq <= self.boundary_count_cut || received_at_unix_us < self.older_than_unix_us)
    }

    /// Whether a firing goes.
    pub fn removes_firing(&self, firing_id: u64, fired_at_unix_us: i64) -> bool {
        firing_id <= self.firing_protect
            && (firing_id <= self.firing_count_cut || fired_at_unix_us < self.older_than_unix_us)
    }
}

/// What [`crate::Ledger::verify`] found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VerifyReport {
    /// Records read and checksum-verified.
    pub records_checked: u64,
    /// Damage found: a failed structural check, a checksum mismatch, an undecodable record,
    /// a missing table. Empty for a healthy store.
    pub problems: Vec<String>,
    /// Interior holes in a reactor's ids. Not counted as damage: a writer that gave a batch
    /// up (`WriterStatus::lost_records`) leaves one, and callers of `append` may number
    /// sparsely. A reactor numbers its boundaries and firings contiguously, so a hole it did
    /// not report as lost points at damage. (Retention removes a prefix: never a hole.)
    pub gaps: Vec<IdGap>,
}

impl VerifyReport {
    /// Whether no damage was found (gaps are not damage; see [`VerifyReport::gaps`]).
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// Notes the holes in `ids` (ascending) of `reactor`'s `kind` records.
    pub(crate) fn note_gaps(&mut self, reactor: &str, kind: &'static str, ids: &[u64]) {
        self.gaps.extend(gaps(reactor, kind, ids.iter().copied()));
    }
}

/// `Err(Gap)` for the first hole in `ids` if `checked`; the one check both queries run.
fn first_gap_error(
    backend: &'static str,
    checked: bool,
    reactor: &str,
    kind: &'static str,
    ids: impl Iterator<Item = u64>,
) -> Result<(), LedgerError> {
    if !checked {
        return Ok(());
    }
    gaps(reactor, kind, ids)
        .next()
        .map_or(Ok(()), |gap| Err(LedgerError::Gap { backend, gap }))
}

/// The holes in `ids` (ascending): each pair of neighbours more than 1 apart.
fn gaps<'a>(
    reactor: &'a str,
    kind: &'static str,
    ids: impl Iterator<Item = u64> + 'a,
) -> impl Iterator<Item = IdGap> + 'a {
    let mut prev: Option<u64> = None;
    ids.filter_map(move |id| {
        let gap = prev
            .filter(|&p| id > p.saturating_add(1))
            .map(|after| IdGap {
                reactor: reactor.to_owned(),
                kind,
                after,
                before: id,
            });
        prev = Some(id);
        gap
    })
}

/// Ids missing between two stored records of one reactor: `after + 1 ..= before - 1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdGap {
    /// Reactor name.
    pub reactor: String,
    /// `"boundary"` or `"firing"`.
    pub kind: &'static str,
    /// The last id stored before the hole.
    pub after: u64,
    /// The first id stored after it.
    pub before: u64,
}

impl std::fmt::Display for IdGap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (first, last) = (self.after.saturating_add(1), self.before.saturating_sub(1));
        if first == last {
            write!(
                f,
                "{} {first} of reactor `{}` missing",
                self.kind, self.reactor
            )
        } else {
            let kinds = match self.kind {
                "boundary" => "boundaries",
                _ => "firings",
            };
            write!(
                f,
                "{kinds} {first}..={last} of reactor `{}` missing",
                self.reactor
            )
        }
    }
}
