//! The `domain` command: parses the arguments and turns the outcome into an exit status.
//! The commands live in [`domain_cli`].

use std::process::ExitCode;

use clap::Parser;
use domain_cli::Cli;

fn main() -> ExitCode {
    // Logs go to standard error, so that standard output stays the command's result.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        // Colours only for a person: a log file or a pipe gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match domain_cli::run(Cli::parse()) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("domain: {error:#}");
            ExitCode::FAILURE
        }
    }
}
