//! `domain-manager`: runs a domain manager, or manages its domains. Parses arguments, loads the
//! configuration, and hands over to [`domain_manager`].

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use domain_cluster::PeerId;
use domain_manager::{
    DomainPolicy, DomainsFile, Manager, ManagerConfig, ManagerSettings, NodesFile,
};
use domain_settings::parse_duration;

/// The domain manager of a domain cluster.
#[derive(Debug, Parser)]
#[command(name = "domain-manager", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the manager; prints `listening <addr>` lines, then `ready <tcp addr>`.
    Run(RunArgs),
    /// Create or list the manager's domains.
    #[command(subcommand)]
    Domain(DomainCommand),
    /// Admit, revoke, list or invite the nodes that may join.
    #[command(subcommand)]
    Node(NodeCommand),
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// Admit a node by its peer id; a running manager accepts it at its next join.
    Allow {
        /// The node's peer id (`domain-node id` prints it).
        peer_id: PeerId,
        /// The manager's data folder.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
    },
    /// Revoke a node: a running manager refuses its next join, drops it and gives its
    /// tasks to others.
    Revoke {
        /// The node's peer id.
        peer_id: PeerId,
        /// The manager's data folder.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
    },
    /// List the admitted nodes, one peer id per line.
    Ls {
        /// The manager's data folder.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// Also the nodes admitted in this configuration file.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Print a one-use invite for a node whose peer id is not known yet: `domain-node run
    /// --invite INVITE` admits that node at its first join.
    Invite {
        /// The manager's data folder.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// How long the invite stays valid, e.g. `24h`.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "24h")]
        ttl: std::time::Duration,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    #[command(flatten)]
    settings: ManagerSettings,
    /// TOML settings file with the same keys as these flags, and the nodes and domains;
    /// flags and the environment override it.
    #[arg(long, value_name = "FILE", env = "DOMAIN_MANAGER_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum DomainCommand {
    /// Create a domain (its key, its allow-list); prints its public key in hex.
    Create {
        /// The domain id.
        id: String,
        /// The manager's data folder.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// Peer id of a client allowed to submit jobs; repeat for more.
        #[arg(long, value_name = "PEER_ID")]
        allow: Vec<PeerId>,
    },
    /// Print a domain's private key (PKCS#8 PEM), for another manager of the same domains
    /// to import: managers that share their state in etcd must sign with the same keys.
    /// It is the secret that signs the domain's tokens: pipe it straight to the other
    /// manager (`... | ssh other domain-manager domain import ID --data-dir DIR`).
    Export {
        /// The domain id.
        id: String,
        /// The manager's data folder.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
    },
    /// Store a domain's private key exported by another manager (from FILE, or standard
    /// input); prints its public key. A domain that has another key here is left alone.
    /// Then `domain create` (which keeps the key) declares the domain and its allow-list.
    Import {
        /// The domain id.
        id: String,
        /// The manager's data folder.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// The exported key [default: standard input].
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
    },
    /// List the domains: id, public key, allowed peers.
    List {
        /// The manager's data folder.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// Also the domains declared in this configuration file.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    // Before any thread: keys, state and admissions are the manager's alone, whatever
    // umask it was started with.
    domain_auth::keep_new_files_private();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours only for a person: a log file or a pipe gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("domain-manager: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => {
            let config = run_config(args)?;
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?
                .block_on(serve(config))
        }
        Command::Domain(DomainCommand::Create {
            id,
            data_dir,
            allow,
        }) => {
            let key = domain_manager::create_domain(&data_dir, &id, &allow)
                .with_context(|| format!("creating domain {id:?} in {}", data_dir.display()))?;
            if allow.is_empty() {
                tracing::warn!(domain = %id, "no peer may submit jobs to this domain yet: add one with --allow");
            }
            println!("{key}");
            Ok(())
        }
        Command::Domain(DomainCommand::List { data_dir, config }) => list(&data_dir, config),
        Command::Domain(DomainCommand::Export { id, data_dir }) => {
            let pem = domain_keys(&data_dir)?
                .export(&id)
                .with_context(|| format!("exporting the key of domain {id:?}"))?;
            if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                tracing::warn!(
                    "this is the private key of domain {id:?}: whoever reads it can issue its tokens"
                );
            }
            let mut out = std::io::stdout().lock();
            out.write_all(pem.as_bytes())?;
            out.flush()?;
            Ok(())
        }
        Command::Domain(DomainCommand::Import { id, data_dir, file }) => {
            let pem = read_key(file.as_deref())?;
            let key = domain_keys(&data_dir)?
                .import(&id, &pem)
                .with_context(|| format!("importing the key of domain {id:?}"))?;
            println!("{}", key.public_key());
            Ok(())
        }
        Command::Node(command) => node(command),
    }
}

fn node(command: NodeCommand) -> anyhow::Result<()> {
    match command {
        NodeCommand::Allow { peer_id, data_dir } => {
            if !domain_manager::admit_node(&data_dir, &peer_id)? {
                tracing::info!(node = %peer_id, "already admitted");
            }
        }
        NodeCommand::Revoke { peer_id, data_dir } => {
            if !domain_manager::revoke_node(&data_dir, &peer_id)? {
                bail!("node {peer_id} is not admitted in {}", data_dir.display());
            }
        }
        NodeCommand::Ls { data_dir, config } => {
            let mut admitted = NodesFile::load(&data_dir)?.admitted;
            if let Some(path) = config {
                admitted.extend(ManagerSettings::load(path)?.nodes);
            }
            admitted.sort();
            admitted.dedup();
            let mut out = std::io::stdout().lock();
            for peer in admitted {
                writeln!(out, "{peer}")?;
            }
        }
        NodeCommand::Invite { data_dir, ttl } => {
            let invite = domain_manager::create_invite(&data_dir, ttl)?;
            println!("{invite}");
        }
    }
    Ok(())
}

/// The flags and the environment over the file.
fn run_config(args: RunArgs) -> anyhow::Result<ManagerConfig> {
    let settings = match &args.config {
        Some(path) => domain_settings::layer(&ManagerSettings::load(path)?, &args.settings)?,
        None => args.settings,
    };
    Ok(settings.into_config()?)
}

async fn serve(config: ManagerConfig) -> anyhow::Result<()> {
    let data_dir = config.data_dir.clone();
    let mut manager = Manager::start(config)
        .await
        .with_context(|| format!("starting the manager in {}", data_dir.display()))?;
    let signal = shutdown_signal()?;
    {
        let mut out = std::io::stdout().lock();
        for addr in manager.listen_addrs() {
            writeln!(out, "listening {addr}")?;
        }
        let ready = manager
            .tcp_addr()
            .or_else(|| manager.listen_addrs().first())
            .context("the manager listens on no address")?;
        writeln!(out, "ready {ready}")?;
        out.flush()?;
    }
    let stopped = tokio::select! {
        () = signal => None,
        outcome = manager.stopped() => Some(outcome),
    };
    match stopped {
        None => {
            tracing::info!("stopping");
            manager.shutdown().await?;
            Ok(())
        }
        Some(outcome) => {
            let _ = manager.shutdown().await;
            outcome.context("the manager stopped")
        }
    }
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

fn domain_keys(data_dir: &Path) -> anyhow::Result<domain_auth::DomainKeyStore> {
    domain_auth::DomainKeyStore::open(domain_manager::config::keys_dir(data_dir))
        .context("opening the domain keys")
}

/// An exported key from `file` or standard input: a few hundred bytes, so more than
/// 64 KiB is no key and is not read whole.
fn read_key(file: Option<&Path>) -> anyhow::Result<zeroize::Zeroizing<String>> {
    const LIMIT: u64 = 64 * 1024;
    let mut pem = zeroize::Zeroizing::new(String::new());
    let read = match file {
        Some(path) => std::fs::File::open(path)
            .and_then(|f| std::io::Read::read_to_string(&mut f.take(LIMIT + 1), &mut pem))
            .with_context(|| format!("reading {}", path.display()))?,
        None => {
            std::io::Read::read_to_string(&mut std::io::stdin().lock().take(LIMIT + 1), &mut pem)
                .context("reading standard input")?
        }
    };
    if read as u64 > LIMIT {
        bail!("more than {LIMIT} bytes: no exported key is that long");
    }
    Ok(pem)
}

fn list(data_dir: &Path, config: Option<PathBuf>) -> anyhow::Result<()> {
    let mut specs = DomainsFile::load(data_dir)?.domain;
    if let Some(path) = config {
        specs.extend(ManagerSettings::load(path)?.domain);
    }
    let policy = DomainPolicy::from_specs(&specs)?;
    let keys = domain_keys(data_dir)?;
    let mut out = std::io::stdout().lock();
    for domain in policy.domains() {
        let key = if keys.key_path(domain).exists() {
            keys.key(domain)?.public_key().to_string()
        } else {
            "-".to_owned()
        };
        let allowed: Vec<String> = policy.allowed(domain).map(ToString::to_string).collect();
        writeln!(out, "{domain}\t{key}\t{}", allowed.join(","))?;
    }
    Ok(())
}
