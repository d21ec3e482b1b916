//! Domain ids: validated once, where they enter, and carried as [`DomainId`] from there.
//!
//! A domain id names a domain on the wire (`JobRequest.domain_id`, the task handshake,
//! `/public-key/v1`), in task tokens, in the manager's settings and in a node's store
//! (folders and tables). One rule serves all of them, so an id one part accepts is never
//! refused by another.

use std::fmt;

/// Longest domain id accepted, in bytes.
pub const MAX_DOMAIN_ID_LEN: usize = 256;

/// A domain id that is safe to use as a file or table name.
///
/// Accepted: 1 to [`MAX_DOMAIN_ID_LEN`] bytes of ASCII letters, digits, `.`, `_` and `-`,
/// not starting with `.` (so `.`, `..` and hidden names are impossible). Anything else,
/// including `/`, `\`, spaces and non-ASCII text, is refused with [`InvalidDomainId`].
///
/// ```
/// use domain_proto::DomainId;
///
/// assert!(DomainId::new("scans-2024.v1").is_ok());
/// assert!(DomainId::new("../etc").is_err());
/// assert!(DomainId::new("").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DomainId(String);

impl DomainId {
    /// Validates `id` as a domain id.
    pub fn new(id: impl Into<String>) -> Result<Self, InvalidDomainId> {
        let id = id.into();
        if id.is_empty() {
            return Err(InvalidDomainId::Empty);
        }
        if id.len() > MAX_DOMAIN_ID_LEN {
            return Err(InvalidDomainId::TooLong {
                len: id.len(),
                max: MAX_DOMAIN_ID_LEN,
            });
        }
        if id.starts_with('.') {
            return Err(InvalidDomainId::LeadingDot { id });
        }
        if let Some(c) = id
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(InvalidDomainId::BadCharacter { id, character: c });
        }
        Ok(Self(id))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DomainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DomainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DomainId({:?})", self.0)
    }
}

impl AsRef<str> for DomainId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for DomainId {
    type Err = InvalidDomainId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for DomainId {
    type Error = InvalidDomainId;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

/// Why a string is not a [`DomainId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidDomainId {
    /// The id is the empty string.
    #[error("domain id is empty")]
    Empty,
    /// The id is longer than the limit.
    #[error("domain id is {len} bytes long, the limit is {max}")]
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The id starts with a dot.
    #[error("domain id {id:?} starts with '.'")]
    LeadingDot {
        /// The refused id.
        id: String,
    },
    /// The id holds a character outside `[A-Za-z0-9._-]`.
    #[error("domain id {id:?} contains {character:?}; allowed are A-Z a-z 0-9 . _ -")]
    BadCharacter {
        /// The refused id.
        id: String,
        /// The first character that is not allowed.
        character: char,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_id_accepts_safe_names() {
        for ok in ["a", "my-domain", "Scans_2024.v1", "x..y", &"a".repeat(256)] {
            assert!(DomainId::new(ok).is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn domain_id_refuses_paths_and_odd_text() {
        assert_eq!(DomainId::new(""), Err(InvalidDomainId::Empty));
        assert!(matches!(
            DomainId::new("a".repeat(257)),
            Err(InvalidDomainId::TooLong { len: 257, .. })
        ));
        for bad in [".", "..", ".hidden", "../x"] {
            assert!(
                matches!(DomainId::new(bad), Err(InvalidDomainId::LeadingDot { .. })),
                "{bad:?}"
            );
        }
        for bad in ["/etc/passwd", "x/../y", "a/b", "a\\b", "a b", "é", "a\0b"] {
            assert!(
                matches!(
                    DomainId::new(bad),
                    Err(InvalidDomainId::BadCharacter { .. })
                ),
                "{bad:?}"
            );
        }
    }
}
