//! Shared inputs for the criterion benches of the domain cluster's streaming core.
//!
//! The benches live in `benches/benches/`; run one with
//! `cargo bench -p domain-benches --bench store_paired`. The Merkle core's own bench is in
//! its crate (`cargo bench -p domain-merkle`, or `cargo xtask bench`, which also prints its
//! ratios). Inputs come from here so that every bench measures the same bytes; [`store`] is
//! the setup of the `/store/v1` benches.
//!
//! ```
//! use domain_benches::{MIB, pattern};
//!
//! let data = pattern(MIB);
//! assert_eq!(data.len(), MIB);
//! assert_eq!(&data[250..253], &[250, 0, 1]);
//! ```

pub mod store;

/// One mebibyte.
pub const MIB: usize = 1 << 20;

/// `len` bytes where byte i = i mod 251, the data of the shared Merkle vectors.
///
/// The period is prime to every power of two and to the 7168-byte chunk size, so no two
/// chunks or cache lines hold the same bytes and nothing can be skipped as repeated.
#[must_use]
pub fn pattern(len: usize) -> Vec<u8> {
    (0..=250_u8).cycle().take(len).collect()
}
