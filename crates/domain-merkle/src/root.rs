//! [`Root`]: the 32-byte Merkle root and its canonical text form.

use std::fmt;
use std::str::FromStr;

/// Length of a [`Root`] in bytes.
pub const ROOT_LEN: usize = 32;

/// Length of a [`Root`]'s text form: two lowercase hex digits per byte.
pub const ROOT_HEX_LEN: usize = 2 * ROOT_LEN;

/// The root of the Merkle tree of a blob (docs/design.md §4).
///
/// It travels as 64 lowercase hex characters in `Metadata.hash` and names blob
/// files on disk. [`Display`](fmt::Display) writes that form and
/// [`FromStr`] reads it back.
///
/// Parsing accepts **lowercase hex only**: the text form is canonical, so two
/// strings name the same root exactly when they are equal. Accepting uppercase
/// would let one blob answer to several names (and several file names on a
/// case-sensitive disk) and would hide a peer that does not follow the
/// protocol, so `"AB…"` is refused with [`ParseRootError::InvalidChar`].
///
/// ```
/// use domain_merkle::{Root, root_of};
///
/// let root = root_of(b"hello");
/// let text = root.to_string();
/// assert_eq!(text.len(), 64);
/// assert_eq!(text.parse::<Root>()?, root);
/// assert!(text.to_uppercase().parse::<Root>().is_err());
/// # Ok::<(), domain_merkle::ParseRootError>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Root([u8; ROOT_LEN]);

impl Root {
    /// Wraps 32 raw bytes, as stored or received in binary form.
    #[must_use]
    pub const fn from_bytes(bytes: [u8; ROOT_LEN]) -> Self {
        Self(bytes)
    }

    /// The 32 raw bytes.
    #[must_use]
    pub const fn as_bytes(&self) -> &[u8; ROOT_LEN] {
        &self.0
    }
}

impl From<[u8; ROOT_LEN]> for Root {
    fn from(bytes: [u8; ROOT_LEN]) -> Self {
        Self(bytes)
    }
}

impl From<Root> for [u8; ROOT_LEN] {
    fn from(root: Root) -> Self {
        root.0
    }
}

impl AsRef<[u8]> for Root {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Display for Root {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad` rather than `write_str`, so width and alignment flags work in tables.
        f.pad(blake3::Hash::from_bytes(self.0).to_hex().as_str())
    }
}

impl fmt::Debug for Root {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Root({self})")
    }
}

/// Why a string is not a [`Root`]'s text form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseRootError {
    /// The string does not hold exactly 64 characters.
    #[error("a Merkle root is {ROOT_HEX_LEN} lowercase hex characters, got {len} bytes")]
    WrongLength {
        /// Length of the rejected string, in bytes.
        len: usize,
    },
    /// A character is not a lowercase hex digit (`0-9`, `a-f`).
    #[error(
        "a Merkle root is lowercase hex, found {found:?} at byte {position} (uppercase is refused: the text form is canonical)"
    )]
    InvalidChar {
        /// The offending character.
        found: char,
        /// Its byte offset in the string.
        position: usize,
    },
}

impl FromStr for Root {
    type Err = ParseRootError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.len() != ROOT_HEX_LEN {
            return Err(ParseRootError::WrongLength { len: text.len() });
        }
        let mut bytes = [0_u8; ROOT_LEN];
        for (position, found) in text.char_indices() {
            let nibble = match found {
                '0'..='9' | 'a'..='f' => found.to_digit(16).and_then(|n| u8::try_from(n).ok()),
                _ => None,
            };
            let Some(nibble) = nibble else {
                return Err(ParseRootError::InvalidChar { found, position });
            };
            // Every character before this one was a one-byte hex digit, so `position`
            // counts nibbles and stays below 64.
            let shift = if position % 2 == 0 { 4 } else { 0 };
            bytes[position / 2] |= nibble << shift;
        }
        Ok(Self(bytes))
    }
}
