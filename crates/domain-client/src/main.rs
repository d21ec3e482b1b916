//! The `domain` command: parses the arguments and turns the outcome into an exit status.
//! The commands live in [`domain_client::cli`].

use std::process::ExitCode;

use clap::Parser;
use domain_client::cli::{self, Cli};

fn main() -> ExitCode {
    match cli::run(Cli::parse()) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("domain: {error:#}");
            ExitCode::FAILURE
        }
    }
}
