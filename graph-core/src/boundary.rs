//! [`Boundary`]: one typed value for a source, stamped with its per-source sequence number and
//! receive time.

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

/// A type-erased, shareable boundary value. In process a value travels as `Arc<T>`; it is only
/// encoded when a ledger or a process boundary asks for it.
pub type BoundaryValue = Arc<dyn Any + Send + Sync>;

/// One value received for a source.
#[derive(Clone)]
pub struct Boundary {
    seq: u64,
    received_at: SystemTime,
    value: BoundaryValue,
    type_name: &'static str,
}

impl Boundary {
    /// Wraps a typed value as a boundary with the given sequence number, stamped now.
    pub fn new<T: Send + Sync + 'static>(seq: u64, value: T) -> Self {
        Self::from_arc(seq, SystemTime::now(), Arc::new(value))
    }

    /// Builds a boundary from an already shared value.
    pub fn from_arc<T: Send + Sync + 'static>(
        seq: u64,
        received_at: SystemTime,
        value: Arc<T>,
    ) -> Self {
        Self {
            seq,
            received_at,
            value,
            type_name: std::any::type_name::<T>(),
        }
    }

    /// Builds a boundary from an erased value whose type name is known.
    pub fn from_erased(
        seq: u64,
        received_at: SystemTime,
        value: BoundaryValue,
        type_name: &'static str,
    ) -> Self {
        Self {
            seq,
            received_at,
            value,
            type_name,
        }
    }

    /// Per-source sequence number (1 for the first boundary a reactor received for a source).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Wall-clock time at which the reactor received the value.
    pub fn received_at(&self) -> SystemTime {
        self.received_at
    }

    /// The value, if it is a `T`.
    pub fn get<T: 'static>(&self) -> Option<&T> {
        self.value.downcast_ref::<T>()
    }

    /// The erased value.
    pub fn value(&self) -> &BoundaryValue {
        &self.value
    }

    /// Rust type name of the value (for error messages).
    pub fn type_name(&self) -> &'static str {
        self.type_name
    }
}

impl fmt::Debug for Boundary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Boundary")
            .field("seq", &self.seq)
            .field("received_at", &self.received_at)
            .field("type", &self.type_name)
            .finish()
    }
}
