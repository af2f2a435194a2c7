//! Optimistic concurrency: the version a writer expects a stream to be at.

use std::fmt;

/// The version an append expects the stream to be at.
///
/// ```
/// use pupsource::ExpectedVersion;
///
/// assert_eq!(ExpectedVersion::Exact(0), ExpectedVersion::NoStream);
/// assert_ne!(ExpectedVersion::Exact(1), ExpectedVersion::Any);
/// ```
#[derive(Debug, Clone, Copy, Eq)]
pub enum ExpectedVersion {
    /// Append whatever the stream's version is.
    Any,
    /// The stream must not exist yet (same as `Exact(0)`).
    NoStream,
    /// The stream must be exactly at this version.
    Exact(u64),
}

impl ExpectedVersion {
    /// The exact version expected, if any: `NoStream` is `Some(0)`, `Any` is `None`.
    pub fn exact(self) -> Option<u64> {
        match self {
            ExpectedVersion::Any => None,
            ExpectedVersion::NoStream => Some(0),
            ExpectedVersion::Exact(v) => Some(v),
        }
    }
}

impl PartialEq for ExpectedVersion {
    fn eq(&self, other: &Self) -> bool {
        self.exact() == other.exact()
    }
}

impl std::hash::Hash for ExpectedVersion {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.exact().hash(state);
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.exact() {
            None => f.write_str("any version"),
            Some(0) => f.write_str("no stream"),
            Some(v) => write!(f, "version {v}"),
        }
    }
}
