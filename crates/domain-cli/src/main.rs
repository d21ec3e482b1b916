//! The `domain` command: parses the arguments and turns the outcome into an exit status.
//! The commands live in [`domain_cli`].

use std::process::ExitCode;

use clap::Parser;
use domain_cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Logs go to standard error, so that standard output stays the command's result.
    cli.logs.init("warn");
    match domain_cli::run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("domain: {error:#}");
            ExitCode::FAILURE
        }
    }
}
