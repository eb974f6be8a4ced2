//! What a reactor records in its ledger, and how it rebuilds its state from it on restart.
//!
//! With [`Durability::Batched`] or [`Durability::Sync`] a reactor records every boundary it
//! accepts (reactor-wide sequence number, source, encoded value) before the firing that uses
//! it, every firing, and a snapshot of its state (cache, dirty flags, Sequential queue) every
//! so many boundaries and at shutdown. All go through one FIFO writer, so what the ledger
//! holds after a crash is a prefix of what happened, unless the writer gave a batch up (every
//! append attempt failed: counted in `ledger_lost`, reactor `Degraded`); later batches are
//! still appended, and recovery then skips the hole. Recovery replays the prefix:
//! the snapshot, then the boundaries after it, then the last firing on the live cache after
//! it, whose inputs' sequence numbers say which boundaries it had consumed.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cloacina_graph_core::{Boundary, SourceDecl};
use cloacina_ledger::{BoundaryQuery, BoundaryRecord, FiringQuery, Ledger};

use crate::config::InputStrategy;

/// How much of a reactor's life its ledger records, and when a sender's `send` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Firings are recorded (for audit) but not boundaries or state: a restarted reactor
    /// starts empty. No per-boundary ledger work.
    None,
    /// Every boundary, firing and state snapshot is recorded through a background writer
    /// (group commit, bounded queue); the reactor waits only when that queue is full, and a
    /// `send` returns once the boundary is queued. A crash loses at most what was queued or
    /// not yet flushed (see the README for the measured window per backend).
    #[default]
    Batched,
    /// As `Batched`, and every append is durable (fsync or synchronous commit) before it
    /// returns; a `send` returns only once its boundary is durable. Many senders share one
    /// flush.
    Sync,
}

impl Durability {
    /// Whether boundaries and state are recorded (and restored on restart).
    pub fn records_state(self) -> bool {
        !matches!(self, Self::None)
    }
}

/// How much of its history a reactor keeps in its ledger: applied after every state snapshot,
/// in the background. Never removes what a restart needs (see `cloacina_ledger::Retention`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetentionPolicy {
    /// Keep at most this many of the newest boundaries and of the newest firings.
    pub keep_last: Option<u64>,
    /// Remove records older than this.
    pub max_age: Option<Duration>,
}

impl RetentionPolicy {
    /// The ledger's form of the policy, as of `now`.
    pub(crate) fn at(self, now: SystemTime) -> cloacina_ledger::Retention {
        cloacina_ledger::Retention {
            keep_last: self.keep_last,
            older_than_unix_us: self
                .max_age
                .map(|age| unix_us(now.checked_sub(age).unwrap_or(UNIX_EPOCH))),
        }
    }
}

/// Why a reactor could not rebuild its state from its ledger.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("reactor `{reactor}`: cannot recover from the ledger: {reason}")]
pub struct RecoveryError {
    /// Reactor.
    pub reactor: String,
    /// What went wrong.
    pub reason: String,
}

/// State rebuilt from a ledger.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    pub(crate) cache: Vec<Option<Boundary>>,
    pub(crate) dirty: Vec<bool>,
    pub(crate) queue: VecDeque<(usize, Boundary)>,
    pub(crate) last_seq: u64,
    pub(crate) next_id: u64,
    /// Boundaries restored into the cache or queue.
    pub(crate) boundaries: u64,
}

pub(crate) fn unix_us(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

fn from_unix_us(us: i64) -> SystemTime {
    match u64::try_from(us) {
        Ok(us) => UNIX_EPOCH + Duration::from_micros(us),
        Err(_) => UNIX_EPOCH,
    }
}

/// Encodes one boundary of source `index` for the ledger.
pub(crate) fn boundary_record(
    reactor: &str,
    decl: &SourceDecl,
    boundary: &Boundary,
) -> Result<BoundaryRecord, String> {
    let codec = decl
        .codec
        .as_ref()
        .ok_or_else(|| format!("source `{}` has no codec", decl.name))?;
    let value = (codec.encode)(&**boundary.value())
        .map_err(|e| format!("cannot encode a boundary of source `{}`: {e}", decl.name))?;
    Ok(BoundaryRecord {
        reactor: reactor.to_owned(),
        seq: boundary.seq(),
        source: decl.name.as_str().to_owned(),
        received_at_unix_us: unix_us(boundary.received_at()),
        value,
    })
}

/// Decodes a recorded boundary with its source's codec: `(source index, boundary)`.
pub(crate) fn decode(
    reactor: &str,
    sources: &[SourceDecl],
    record: &BoundaryRecord,
) -> Result<(usize, Boundary), RecoveryError> {
    let fail = |reason: String| RecoveryError {
        reactor: reactor.to_owned(),
        reason,
    };
    let index = sources
        .iter()
        .position(|s| s.name.as_str() == record.source)
        .ok_or_else(|| {
            fail(format!(
                "boundary {} is for source `{}`, which the graph does not read",
                record.seq, record.source
            ))
        })?;
    let decl = &sources[index];
    let codec = decl
        .codec
        .as_ref()
        .ok_or_else(|| fail(format!("source `{}` has no codec", decl.name)))?;
    let value = (codec.decode)(&record.value).map_err(|e| {
        fail(format!(
            "boundary {} of source `{}` does not decode as {}: {e}",
            record.seq, record.source, decl.type_name
        ))
    })?;
    Ok((
        index,
        Boundary::from_erased(
            record.seq,
            from_unix_us(record.received_at_unix_us),
            value,
            decl.type_name,
        ),
    ))
}

/// Rebuilds `reactor`'s state from `ledger`.
pub(crate) async fn recover(
    ledger: &dyn Ledger,
    reactor: &str,
    sources: &[SourceDecl],
    strategy: InputStrategy,
) -> Result<Recovered, RecoveryError> {
    let fail = |reason: String| RecoveryError {
        reactor: reactor.to_owned(),
        reason,
    };
    let n = sources.len();
    let mut state = Recovered {
        cache: vec![None; n],
        dirty: vec![false; n],
        next_id: 1,
        ..Recovered::default()
    };
    let snapshot = ledger
        .snapshot(reactor)
        .await
        .map_err(|e| fail(e.to_string()))?;
    if let Some(snap) = &snapshot {
        for record in &snap.cache {
            let (i, b) = decode(reactor, sources, record)?;
            state.cache[i] = Some(b);
        }
        for name in &snap.dirty {
            if let Some(i) = sources.iter().position(|s| s.name.as_str() == *name) {
                state.dirty[i] = true;
            }
        }
        for record in &snap.queue {
            state.queue.push_back(decode(reactor, sources, record)?);
        }
        state.last_seq = snap.last_seq;
        state.next_id = snap.next_firing_id.max(1);
    }
    // Recovery reads past a hole (a batch a writer gave up and counted as lost must not stop
    // the reactor from ever starting again) but says so: the hole is named in a warning.
    let after_snapshot = BoundaryQuery {
        from_seq: Some(state.last_seq + 1),
        ..BoundaryQuery::reactor(reactor)
    };
    let later = ledger
        .boundaries(&after_snapshot.clone().allow_gaps())
        .await
        .map_err(|e| fail(e.to_string()))?;
    if let Err(gap) = after_snapshot.check_gaps(ledger.backend(), &later) {
        tracing::warn!(reactor, error = %gap, "recovering past missing boundaries");
    }
    for record in &later {
        let (i, b) = decode(reactor, sources, record)?;
        state.last_seq = state.last_seq.max(b.seq());
        match strategy {
            InputStrategy::Latest => {
                state.cache[i] = Some(b);
                state.dirty[i] = true;
            }
            InputStrategy::Sequential => state.queue.push_back((i, b)),
        }
    }
    let firings = ledger
        .firings(
            &FiringQuery {
                from_id: Some(state.next_id),
                ..FiringQuery::reactor(reactor)
            }
            .allow_gaps(),
        )
        .await
        .map_err(|e| fail(e.to_string()))?;
    if let Some(last) = firings.last() {
        state.next_id = state.next_id.max(last.firing_id + 1);
    }
    // The last firing on the live cache consumed every boundary up to its newest input.
    if let Some(live) = firings.iter().rev().find(|f| f.trigger.on_live_cache()) {
        let horizon = live.inputs.iter().map(|(_, seq)| *seq).max().unwrap_or(0);
        match strategy {
            InputStrategy::Latest => {
                for (dirty, slot) in state.dirty.iter_mut().zip(&state.cache) {
                    *dirty = slot.as_ref().is_some_and(|b| b.seq() > horizon);
                }
            }
            InputStrategy::Sequential => {
                while state.queue.front().is_some_and(|(_, b)| b.seq() <= horizon) {
                    if let Some((i, b)) = state.queue.pop_front() {
                        state.cache[i] = Some(b);
                    }
                }
                state.dirty.iter_mut().for_each(|d| *d = false);
            }
        }
    }
    state.boundaries = (state.cache.iter().flatten().count() + state.queue.len()) as u64;
    Ok(state)
}
