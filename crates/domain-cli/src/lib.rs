//! The `domain` command line: its arguments and one module per command.
//!
//! The binary only parses arguments into a [`Cli`] and hands it to [`run`], which returns
//! the exit status; each command lives in its own module so that new ones slot in beside
//! [`hash`].
//!
//! ```
//! use clap::Parser;
//! use domain_cli::{Cli, Command};
//!
//! let cli = Cli::try_parse_from(["domain", "hash", "scan.ply", "-"])?;
//! let Command::Hash(args) = cli.command else { panic!("parsed as another command") };
//! assert_eq!(args.files.len(), 2);
//! # Ok::<(), clap::Error>(())
//! ```

pub mod config;
pub mod delete;
pub mod download;
pub mod hash;
pub mod id;
pub mod jobs;
pub mod key;
pub mod list;
pub mod output;
pub mod progress;
pub mod remote;
pub mod store;
pub mod upload;
pub mod watch;

use std::io;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Work with domain data from the command line.
#[derive(Debug, Parser)]
#[command(
    name = "domain",
    version,
    propagate_version = true,
    after_long_help = output::EXIT_STATUS_HELP
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// How logs are written.
    #[command(flatten)]
    pub logs: domain_telemetry::LogArgs,
}

/// The commands of `domain`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the Merkle root of files, as a domain stores them.
    #[command(long_about = hash::LONG_ABOUT)]
    Hash(hash::HashArgs),
    /// Store, list, read and remove items in a local datastore folder.
    Store(store::StoreArgs),
    /// Upload files (or every file in a folder) to a domain, each checked against its
    /// Merkle root.
    Upload(upload::UploadArgs),
    /// Download the matching items of a domain into a folder, each checked against its
    /// Merkle root.
    ///
    /// Each item is written to `.<id>.part` in the folder and renamed to `<id>` once its
    /// content matches its root. A download that is cut leaves that file: the same
    /// command continues from it, and the node sends only the rest.
    Download(download::DownloadArgs),
    /// List the metadata of a domain's matching items, on every node.
    #[command(visible_alias = "list")]
    Ls(list::ListArgs),
    /// Print the matching items of a domain, then each new one as it is stored, until
    /// interrupted.
    Watch(watch::WatchArgs),
    /// Remove items from every node that holds them.
    #[command(visible_alias = "delete")]
    Rm(delete::DeleteArgs),
    /// Print the jobs of the manager (and, with --follow, each change).
    Jobs(jobs::JobsArgs),
    /// Print a domain's public key, which verifies its task tokens.
    Key(key::KeyArgs),
    /// Print this client's peer id (its identity is created when missing).
    Id(id::IdArgs),
    /// Write the man page or a shell's completions (for packaging).
    #[command(hide = true)]
    Generate(domain_settings::generate::GenerateArgs),
}

/// Runs a parsed command line against the process's standard streams.
///
/// Failures that concern one input (a file that cannot be read) are reported on standard
/// error as they happen and turn into a failing or partly-done [`ExitCode`]
/// ([`output::outcome`]); an `Err` means the command could not go on at all (standard
/// output closed, for one).
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Hash(args) => hash::run(&args, &mut io::stdout().lock(), &mut io::stderr()),
        Command::Store(args) => store::run(&args, &mut io::stdout().lock()),
        Command::Upload(args) => upload::run(&args, &mut io::stdout().lock()),
        Command::Download(args) => {
            download::run(&args, &mut io::stdout().lock(), &mut io::stderr())
        }
        Command::Ls(args) => list::run(&args, &mut io::stdout().lock()),
        Command::Watch(args) => watch::run(&args, &mut io::stdout().lock(), &mut io::stderr()),
        Command::Rm(args) => delete::run(&args, &mut io::stdout().lock(), &mut io::stderr()),
        Command::Jobs(args) => jobs::run(&args, &mut io::stdout().lock()),
        Command::Key(args) => key::run(&args, &mut io::stdout().lock()),
        Command::Id(args) => id::run(&args, &mut io::stdout().lock()),
        Command::Generate(args) => {
            let command = <Cli as clap::CommandFactory>::command();
            domain_settings::generate::write(command, args.what, &mut io::stdout().lock())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
