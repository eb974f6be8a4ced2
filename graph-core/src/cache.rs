//! [`InputCache`]: the latest boundary per source, as a firing sees it.
//!
//! The cache is copy-on-write: [`InputCache::snapshot`] is a reference-count increment, and a
//! later update of the original copies the slot table only if a snapshot is still alive. A
//! reactor that drops each firing's snapshot before the next update therefore never copies.
//!
//! A cache made by [`crate::CompiledGraph::new_cache`] is *aligned* with that graph: slot `k`
//! holds the graph's source `k`, so a firing reads its entry inputs by index. Any other cache is
//! read by name (the manual `fire_with` path).

use std::sync::Arc;
use std::time::SystemTime;

use crate::boundary::Boundary;
use crate::source::SourceName;

#[derive(Clone, Debug)]
struct Slot {
    source: SourceName,
    boundary: Option<Boundary>,
}

/// A cached value was not of the requested type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("source `{source_name}` holds a {found}, not a {expected}")]
pub struct CacheTypeError {
    /// The source read.
    pub source_name: SourceName,
    /// Type requested.
    pub expected: &'static str,
    /// Type stored.
    pub found: &'static str,
}

/// Latest boundary per source. See the module docs.
#[derive(Clone, Debug, Default)]
pub struct InputCache {
    slots: Arc<Vec<Slot>>,
    layout: u64,
}

impl InputCache {
    /// An empty, unaligned cache.
    pub fn new() -> Self {
        Self::default()
    }

    pub(crate) fn aligned(layout: u64, sources: &[SourceName]) -> Self {
        Self {
            slots: Arc::new(
                sources
                    .iter()
                    .map(|s| Slot {
                        source: s.clone(),
                        boundary: None,
                    })
                    .collect(),
            ),
            layout,
        }
    }

    pub(crate) fn layout(&self) -> u64 {
        self.layout
    }

    /// Stores `value` as the newest boundary of `source` (sequence = previous + 1).
    pub fn update<T: Send + Sync + 'static>(&mut self, source: impl Into<SourceName>, value: T) {
        let source = source.into();
        let seq = self.boundary(source.as_str()).map_or(1, |b| b.seq() + 1);
        self.insert(source, Boundary::new(seq, value));
    }

    /// Stores a boundary for `source`, replacing any earlier one.
    pub fn insert(&mut self, source: impl Into<SourceName>, boundary: Boundary) {
        let source = source.into();
        let slots = Arc::make_mut(&mut self.slots);
        match slots.iter_mut().find(|s| s.source == source) {
            Some(slot) => slot.boundary = Some(boundary),
            None => slots.push(Slot {
                source,
                boundary: Some(boundary),
            }),
        }
    }

    /// Stores a boundary in slot `index` (aligned caches; the reactor's hot path).
    /// Returns `false` if there is no such slot.
    pub fn set_at(&mut self, index: usize, boundary: Boundary) -> bool {
        match Arc::make_mut(&mut self.slots).get_mut(index) {
            Some(slot) => {
                slot.boundary = Some(boundary);
                true
            }
            None => false,
        }
    }

    /// The boundary in slot `index`, if any.
    pub fn at(&self, index: usize) -> Option<&Boundary> {
        self.slots.get(index).and_then(|s| s.boundary.as_ref())
    }

    /// The typed value of `source`: `None` if never received, `Some(Err)` if it holds another
    /// type.
    pub fn get<T: 'static>(&self, source: &str) -> Option<Result<&T, CacheTypeError>> {
        let slot = self.slots.iter().find(|s| s.source.as_str() == source)?;
        let boundary = slot.boundary.as_ref()?;
        Some(boundary.get::<T>().ok_or_else(|| CacheTypeError {
            source_name: slot.source.clone(),
            expected: std::any::type_name::<T>(),
            found: boundary.type_name(),
        }))
    }

    /// The boundary of `source`, whatever its type.
    pub fn boundary(&self, source: &str) -> Option<&Boundary> {
        self.slots
            .iter()
            .find(|s| s.source.as_str() == source)
            .and_then(|s| s.boundary.as_ref())
    }

    /// Whether `source` holds a value.
    pub fn has(&self, source: &str) -> bool {
        self.boundary(source).is_some()
    }

    /// An isolated, immutable view: later updates of `self` do not change it.
    pub fn snapshot(&self) -> InputCache {
        self.clone()
    }

    /// Number of sources holding a value.
    pub fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.boundary.is_some()).count()
    }

    /// Whether no source holds a value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Names of the sources holding a value, in slot order.
    pub fn sources(&self) -> impl Iterator<Item = &SourceName> + '_ {
        self.slots
            .iter()
            .filter(|s| s.boundary.is_some())
            .map(|s| &s.source)
    }

    /// Iterates `(source, boundary)` over the sources holding a value.
    pub fn iter(&self) -> impl Iterator<Item = (&SourceName, &Boundary)> + '_ {
        self.slots
            .iter()
            .filter_map(|s| s.boundary.as_ref().map(|b| (&s.source, b)))
    }

    /// Replaces every value with those of `other` (no merge): sources absent from `other` become
    /// empty. Alignment of `self` is kept.
    pub fn replace_all(&mut self, other: &InputCache) {
        let slots = Arc::make_mut(&mut self.slots);
        for slot in slots.iter_mut() {
            slot.boundary = None;
        }
        for (source, boundary) in other.iter() {
            match slots.iter_mut().find(|s| &s.source == source) {
                Some(slot) => slot.boundary = Some(boundary.clone()),
                None => slots.push(Slot {
                    source: source.clone(),
                    boundary: Some(boundary.clone()),
                }),
            }
        }
    }

    /// Receive time of the newest boundary, if any.
    pub fn newest(&self) -> Option<SystemTime> {
        self.iter().map(|(_, b)| b.received_at()).max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // CG-D-14
    #[test]
    fn snapshot_is_isolated_from_later_updates() {
        let mut cache = InputCache::new();
        assert!(cache.is_empty());
        cache.update("a", 1u32);
        let snap = cache.snapshot();
        cache.update("a", 2u32);
        cache.update("b", "x".to_string());
        assert_eq!(snap.get::<u32>("a"), Some(Ok(&1)));
        assert!(!snap.has("b"));
        assert_eq!(cache.get::<u32>("a"), Some(Ok(&2)));
        assert_eq!(cache.boundary("a").map(Boundary::seq), Some(2));
        assert_eq!(cache.len(), 2);
        assert_eq!(
            cache.sources().map(SourceName::as_str).collect::<Vec<_>>(),
            ["a", "b"]
        );
    }

    #[test]
    fn wrong_type_is_an_error_not_a_panic() {
        let mut cache = InputCache::new();
        cache.update("a", 1u32);
        let err = cache
            .get::<String>("a")
            .expect("present")
            .expect_err("type");
        assert_eq!(err.source_name.as_str(), "a");
        assert!(err.to_string().contains("u32"), "{err}");
        assert!(cache.get::<u32>("missing").is_none());
    }

    #[test]
    fn replace_all_does_not_merge() {
        let mut cache = InputCache::aligned(7, &["a".into(), "b".into()]);
        cache.update("a", 1u32);
        cache.update("b", 2u32);
        let mut other = InputCache::new();
        other.update("a", 10u32);
        cache.replace_all(&other);
        assert_eq!(cache.get::<u32>("a"), Some(Ok(&10)));
        assert!(!cache.has("b"));
        assert_eq!(cache.layout(), 7);
        assert!(cache.set_at(1, Boundary::new(5, 3u32)));
        assert!(!cache.set_at(2, Boundary::new(5, 3u32)));
        assert_eq!(cache.at(1).and_then(|b| b.get::<u32>()), Some(&3));
    }
}
