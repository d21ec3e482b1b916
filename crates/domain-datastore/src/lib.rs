//! Domain data storage.
//!
//! (crate docs are written with the crate's content)

pub mod merkle;
