//! Records built on the writer's task rather than by the code that hands them over.
//!
//! A reactor recording every boundary and firing would otherwise encode and allocate each
//! record (names, inputs, encoded values: about nine allocations per boundary and firing)
//! on its hot path, and the writer would free them on another thread, where glibc's
//! allocator makes the two threads contend for its arena lock. With a [`RecordBuilder`] the
//! reactor hands over what it holds anyway (shared values, no copies) and the writer builds
//! the records just before it appends them, and frees them on the same thread.

use crate::Record;

/// A group of records the writer builds itself, just before appending them (see the
/// module documentation). Handed over with [`crate::LedgerWriter::write_all_built`].
pub trait RecordBuilder: Send {
    /// Exactly how many records [`RecordBuilder::build`] accounts for: built, or counted as
    /// not built. The writer's positions ([`crate::LedgerWriter::handed`],
    /// [`crate::LedgerWriter::settled`]) move by this much.
    fn count(&self) -> usize;

    /// Pushes the records onto `out`, in order; returns how many of the
    /// [`RecordBuilder::count`] could not be built (each one logged by the builder). The
    /// writer counts those as lost records.
    fn build(self: Box<Self>, out: &mut Vec<Record>) -> usize;
}

/// What one queue entry carries.
pub(super) enum Payload {
    /// A record built by the sender.
    Record(Record),
    /// Records the writer builds, with the places they took in the writer's room for
    /// built records (given back when the writer takes the entry).
    Built {
        builder: Box<dyn RecordBuilder>,
        places: u32,
    },
}

impl Payload {
    /// Records this entry stands for.
    pub(super) fn count(&self) -> usize {
        match self {
            Payload::Record(_) => 1,
            Payload::Built { builder, .. } => builder.count(),
        }
    }

    /// Places this entry holds in the writer's room for built records.
    pub(super) fn places(&self) -> u32 {
        match self {
            Payload::Record(_) => 0,
            Payload::Built { places, .. } => *places,
        }
    }

    /// Moves the records onto `out`; returns how many could not be built.
    pub(super) fn build(self, out: &mut Vec<Record>) -> usize {
        match self {
            Payload::Record(r) => {
                out.push(r);
                0
            }
            Payload::Built { builder, .. } => builder.build(out),
        }
    }
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Payload::Record(r) => f.write_str(&r.describe()),
            Payload::Built { builder, .. } => {
                write!(f, "{} records built by the writer", builder.count())
            }
        }
    }
}
