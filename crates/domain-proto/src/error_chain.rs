//! An error and its causes on one line: what logs and answers to peers show.
//!
//! Every error type of the workspace says in its `Display` what failed at its own level
//! and returns the cause from `source()`, never both. Printing only the top error drops
//! the why; [`ErrorChain`] prints the whole chain, each cause once, joined by `": "` (as
//! `anyhow`'s `{:#}` does in the binaries).
//!
//! ```
//! use domain_proto::ErrorChain;
//!
//! #[derive(Debug, thiserror::Error)]
//! #[error("cannot open the store")]
//! struct Open {
//!     source: std::io::Error,
//! }
//!
//! let error = Open { source: std::io::Error::other("disk full") };
//! assert_eq!(ErrorChain(&error).to_string(), "cannot open the store: disk full");
//! ```

use std::error::Error;
use std::fmt;

/// Displays an error and each of its causes, joined by `": "`.
#[derive(Debug, Clone, Copy)]
pub struct ErrorChain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(next) = cause {
            write!(f, ": {next}")?;
            cause = next.source();
        }
        Ok(())
    }
}
