//! `domain-node`: a node of a domain cluster. See the domain-node library.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use domain_cluster::addr::first_plain_tcp;
use domain_node::{Node, NodeSettings, node_identity};
use tracing_subscriber::EnvFilter;

/// A node of a domain cluster: joins the manager and serves `/store/v1` and
/// `/load/v1` from its local datastore.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the node until Ctrl-C or SIGTERM. Prints `listening <multiaddr>`
    /// per address, then `ready <tcp multiaddr>` once it has joined the manager.
    Run(Box<RunArgs>),
    /// Prints the node's peer id (creating its identity if it has none yet), for the
    /// manager's operator to admit (`domain-manager node allow PEER_ID`).
    Id {
        /// Holds identity.key.
        #[arg(long, value_name = "DIR", env = "DOMAIN_NODE_DATA_DIR")]
        data_dir: PathBuf,
    },
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The manager's multiaddr, ending with /p2p/<manager peer id>.
    #[arg(long, value_name = "MULTIADDR", env = "DOMAIN_MANAGER")]
    manager: Option<String>,
    /// Holds identity.key and the datastore (store/).
    #[arg(long, value_name = "DIR", env = "DOMAIN_NODE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// An address to listen on (repeatable) [default: loopback TCP, QUIC and WebSocket].
    #[arg(
        long,
        value_name = "MULTIADDR",
        env = "DOMAIN_NODE_LISTEN",
        value_delimiter = ','
    )]
    listen: Vec<String>,
    /// The name to register with [default: the peer id].
    #[arg(long, value_name = "N", env = "DOMAIN_NODE_NAME")]
    name: Option<String>,
    /// Concurrent /store/v1 tasks to take, -1 for unlimited [default: 16].
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    store_capacity: Option<i32>,
    /// Concurrent /load/v1 tasks to take, -1 for unlimited [default: 16].
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    load_capacity: Option<i32>,
    /// Time between joins, the node's heartbeat [default: 5s].
    #[arg(long, value_name = "DURATION")]
    join_interval: Option<String>,
    /// How long running task streams may go on after Ctrl-C or SIGTERM [default: 30s].
    #[arg(long, value_name = "DURATION")]
    shutdown_grace: Option<String>,
    /// The limit on each remote wait [default: 30s].
    #[arg(long, value_name = "DURATION")]
    request_timeout: Option<String>,
    /// Task streams served at once; one more is dropped [default: 256].
    #[arg(long, value_name = "N")]
    max_task_streams: Option<usize>,
    /// Task streams one remote peer may have in their handshake at once [default: 32].
    #[arg(long, value_name = "N")]
    max_handshakes_per_peer: Option<usize>,
    /// Store nothing here: serve every task from the cluster of this manager (its
    /// multiaddr with /p2p/<id>), as a gateway in front of its nodes. The node reaches it
    /// as the peer in DIR/upstream.key, which its domains must allow.
    #[arg(long, value_name = "MULTIADDR", env = "DOMAIN_NODE_UPSTREAM")]
    upstream: Option<String>,
    /// Bytes of cut uploads kept for them to resume, all together; the oldest go first
    /// [default: 4 GiB].
    #[arg(long, value_name = "BYTES")]
    resume_bytes: Option<u64>,
    /// How long the bytes of a cut upload are kept [default: 24h].
    #[arg(long, value_name = "DURATION")]
    resume_ttl: Option<String>,
    /// A one-use invite from the manager's operator (`domain-manager node invite`): the
    /// manager admits this node at its first join.
    #[arg(
        long,
        value_name = "INVITE",
        env = "DOMAIN_NODE_INVITE",
        hide_env_values = true
    )]
    invite: Option<String>,
    /// A TOML file with the same keys as these flags (flags and the environment win).
    #[arg(long, value_name = "FILE", env = "DOMAIN_NODE_CONFIG")]
    config: Option<PathBuf>,
}

impl RunArgs {
    fn settings(self) -> anyhow::Result<NodeSettings> {
        let file = match &self.config {
            Some(path) => NodeSettings::load(path)?,
            None => NodeSettings::default(),
        };
        let flags = NodeSettings {
            manager: self.manager,
            data_dir: self.data_dir,
            listen: self.listen,
            name: self.name,
            store_capacity: self.store_capacity,
            load_capacity: self.load_capacity,
            join_interval: self.join_interval,
            shutdown_grace: self.shutdown_grace,
            request_timeout: self.request_timeout,
            max_task_streams: self.max_task_streams,
            max_handshakes_per_peer: self.max_handshakes_per_peer,
            upstream: self.upstream,
            resume_bytes: self.resume_bytes,
            resume_ttl: self.resume_ttl,
            invite: self.invite,
        };
        Ok(file.overridden_by(flags))
    }
}

fn main() -> ExitCode {
    // Before any thread: the store, its database and its temporary files are the node's
    // alone, whatever umask it was started with.
    domain_auth::keep_new_files_private();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        // Colours only for a person: a log file or a pipe gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(Cli::parse()) {
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
