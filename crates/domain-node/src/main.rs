//! `domain-node`: a node of a domain cluster. See the domain-node library.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use domain_cluster::addr::first_plain_tcp;
use domain_node::{Node, NodeSettings, node_identity};

/// A node of a domain cluster: joins the manager and serves `/store/v1` and
/// `/load/v1` from its local datastore.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    logs: domain_telemetry::LogArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the node until Ctrl-C or SIGTERM. Prints `listening <multiaddr>`
    /// per address (and `metrics <ip:port>` with --metrics), then `ready <tcp multiaddr>`
    /// once it has joined the manager.
    Run(Box<RunArgs>),
    /// Prints the node's peer id (creating its identity if it has none yet), for the
    /// manager's operator to admit (`domain-manager node allow PEER_ID`).
    Id {
        /// Holds identity.key.
        #[arg(long, value_name = "DIR", env = "DOMAIN_NODE_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// Write the man page or a shell's completions (for packaging).
    #[command(hide = true)]
    Generate(domain_settings::generate::GenerateArgs),
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    settings: NodeSettings,
    /// A TOML file with the same keys as these flags (flags and the environment win).
    #[arg(long, value_name = "FILE", env = "DOMAIN_NODE_CONFIG")]
    config: Option<PathBuf>,
}

impl RunArgs {
    /// The flags and the environment over the file.
    fn settings(&self) -> anyhow::Result<NodeSettings> {
        let Some(path) = &self.config else {
            return Ok(self.settings.clone());
        };
        let file = NodeSettings::load(path)?;
        Ok(domain_settings::layer(&file, &self.settings)?)
    }
}

fn main() -> ExitCode {
    // Before any thread: the store, its database and its temporary files are the node's
    // alone, whatever umask it was started with.
    domain_auth::keep_new_files_private();
    let cli = Cli::parse();
    cli.logs.init("info");
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("domain-node: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match cli.command {
        Command::Run(args) => runtime.block_on(run_node(*args)),
        Command::Id { data_dir } => {
            println!("{}", node_identity(&data_dir)?.peer_id());
            Ok(())
        }
        Command::Generate(args) => {
            let command = <Cli as clap::CommandFactory>::command();
            domain_settings::generate::write(command, args.what, &mut std::io::stdout().lock())?;
            Ok(())
        }
    }
}

async fn run_node(args: RunArgs) -> anyhow::Result<()> {
    let config = args.settings()?.into_config()?;
    let data_dir = config.data_dir.clone();
    let node = Node::start(config)
        .await
        .with_context(|| format!("cannot start the node in {}", data_dir.display()))?;
    let addrs = node.listen_addrs().await.context("no listen address")?;
    let ready = first_plain_tcp(&addrs).context("the node listens on no TCP address")?;
    let signal = shutdown_signal()?;
    tokio::pin!(signal);
    {
        let mut out = std::io::stdout().lock();
        for addr in &addrs {
            writeln!(out, "listening {addr}").context("cannot write to stdout")?;
        }
        if let Some(addr) = node.metrics_addr() {
            writeln!(out, "metrics {addr}").context("cannot write to stdout")?;
        }
        out.flush().context("cannot write to stdout")?;
    }
    tokio::select! {
        joined = node.joined() => {
            joined?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "ready {ready}").context("cannot write to stdout")?;
            out.flush().context("cannot write to stdout")?;
            drop(out);
            signal.await;
        }
        () = &mut signal => {}
    }
    tracing::info!("shutting down");
    let report = node.shutdown().await.context("cannot shut down cleanly")?;
    if report.streams_cut > 0 {
        tracing::warn!(streams = report.streams_cut, "task streams were cut short");
    }
    Ok(())
}

/// Ctrl-C or SIGTERM. The handlers are installed by this call, not when the future is
/// first polled: called before `ready` is printed, a signal sent right after that line
/// stops the process cleanly instead of killing it.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
        let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for Ctrl-C")?;
        Ok(async move {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}
