//! [`SourceName`]: the key that ties an accumulator, a reactor's cache slot and a graph entry
//! input together.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

/// Name of an input source (an accumulator's output, a cache slot, a graph entry input).
///
/// Cheap to clone (a shared `Arc<str>`); compares by content.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceName(Arc<str>);

impl SourceName {
    /// Creates a source name.
    pub fn new(name: impl AsRef<str>) -> Self {
        Self(Arc::from(name.as_ref()))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SourceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for SourceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for SourceName {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

impl From<String> for SourceName {
    fn from(s: String) -> Self {
        Self(Arc::from(s))
    }
}

impl From<&String> for SourceName {
    fn from(s: &String) -> Self {
        Self::new(s)
    }
}

impl Borrow<str> for SourceName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for SourceName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // CG-D-15
    #[test]
    fn from_and_new_agree() {
        assert_eq!(SourceName::from("x"), SourceName::new("x"));
        assert_eq!(SourceName::from(String::from("x")).as_str(), "x");
        assert_ne!(SourceName::from("x"), SourceName::from("y"));
        assert_eq!(format!("{}", SourceName::from("abc")), "abc");
    }
}
