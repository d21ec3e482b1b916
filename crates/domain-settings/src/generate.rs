//! What a binary says about itself for packaging: its man page and its shell completions,
//! made from the same clap definitions as its `--help`, so that they never drift.
//!
//! Each binary has a hidden `generate` subcommand taking [`GenerateArgs`];
//! `cargo xtask dist` runs it to fill `dist/man` and `dist/completions`.
//!
//! ```
//! use clap::{CommandFactory, Parser};
//! use domain_settings::generate::{Generate, write};
//!
//! /// A tool.
//! #[derive(Parser)]
//! #[command(name = "tool")]
//! struct Cli {
//!     /// How loud.
//!     #[arg(long)]
//!     verbose: bool,
//! }
//!
//! let mut page = Vec::new();
//! write(Cli::command(), Generate::Man, &mut page)?;
//! assert!(String::from_utf8_lossy(&page).contains("verbose"));
//! let mut bash = Vec::new();
//! write(Cli::command(), Generate::Complete { shell: clap_complete::Shell::Bash }, &mut bash)?;
//! assert!(String::from_utf8_lossy(&bash).contains("--verbose"));
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io::{self, Write};

/// The hidden `generate` subcommand of every binary.
#[derive(Debug, Clone, clap::Args)]
pub struct GenerateArgs {
    /// What to write to standard output.
    #[command(subcommand)]
    pub what: Generate,
}

/// What `generate` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Subcommand)]
pub enum Generate {
    /// The man page (roff), section 1.
    Man,
    /// The completion script for a shell.
    Complete {
        /// The shell: bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

/// Writes what `what` asks for of `command` (a binary's `Cli::command()`) to `out`.
///
/// # Errors
/// When `out` cannot be written.
pub fn write(mut command: clap::Command, what: Generate, out: &mut impl Write) -> io::Result<()> {
    match what {
        Generate::Man => clap_mangen::Man::new(command).render(out),
        Generate::Complete { shell } => {
            let name = command.get_name().to_owned();
            clap_complete::generate(shell, &mut command, name, out);
            Ok(())
        }
    }
}
