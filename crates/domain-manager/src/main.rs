//! `domain-manager`: runs a domain manager, or manages its domains. Parses arguments, loads the
//! configuration, and hands over to [`domain_manager`].

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use domain_cluster::PeerId;
use domain_etcd::{Etcd, EtcdConfig};
use domain_manager::{ControlStore, DomainPolicy, Manager, ManagerConfig, ManagerSettings};
use domain_settings::parse_duration;

/// The domain manager of a domain cluster.
#[derive(Debug, Parser)]
#[command(name = "domain-manager", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    logs: domain_telemetry::LogArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the manager; prints `listening <addr>` lines (and `metrics <ip:port>` with
    /// --metrics), then `ready <tcp addr>`.
    Run(RunArgs),
    /// Create or list the manager's domains.
    #[command(subcommand)]
    Domain(DomainCommand),
    /// Admit, revoke, list or invite the nodes that may join.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Issue task tokens for scripts.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Print the manager's peer id (creating its identity if it has none yet): the end of
    /// the address nodes and clients are given (`/ip4/…/tcp/4001/p2p/PEER_ID`).
    Id {
        /// The manager's data folder.
        #[arg(long, value_name = "DIR", env = "DOMAIN_MANAGER_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// Write the man page or a shell's completions (for packaging).
    #[command(hide = true)]
    Generate(domain_settings::generate::GenerateArgs),
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Print a task token that lets SENDER open ENDPOINT on NODE for DOMAIN, as `domain
    /// upload|download|rm --node ADDR --token TOKEN` uses it. Refused for a sender the
    /// domain's allow-list does not name.
    Issue(IssueArgs),
}

#[derive(Debug, clap::Args)]
struct IssueArgs {
    /// The domain whose data the token opens.
    #[arg(long)]
    domain: domain_proto::DomainId,
    /// The peer id that will open the stream (`domain id` prints a client's).
    #[arg(long, value_name = "PEER_ID")]
    sender: PeerId,
    /// The peer id of the node that will accept it (`domain-node id` prints it).
    #[arg(long, value_name = "PEER_ID")]
    node: PeerId,
    /// The protocol the token opens.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(domain_proto::protocols::TASK_PROTOCOLS))]
    endpoint: String,
    /// How long the token stays valid, at most 1h.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10m")]
    ttl: std::time::Duration,
    /// The job id the token names [default: a fresh UUID].
    #[arg(long, value_name = "ID")]
    job: Option<String>,
    /// The task name the token names.
    #[arg(long, value_name = "NAME", default_value = domain_manager::tokens::DEFAULT_TASK_NAME)]
    task: String,
    /// Where the domains are declared, and the data folder that holds the domain's key.
    #[command(flatten)]
    state: StateArgs,
    /// Also the domains declared in this configuration file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// Admit a node by its peer id; a running manager accepts it at its next join.
    Allow {
        /// The node's peer id (`domain-node id` prints it).
        peer_id: PeerId,
        #[command(flatten)]
        state: StateArgs,
    },
    /// Revoke a node: a running manager refuses its next join, drops it and gives its
    /// tasks to others.
    Revoke {
        /// The node's peer id.
        peer_id: PeerId,
        #[command(flatten)]
        state: StateArgs,
    },
    /// List the admitted nodes, one peer id per line.
    Ls {
        #[command(flatten)]
        state: StateArgs,
        /// Also the nodes admitted in this configuration file.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Print a one-use invite for a node whose peer id is not known yet: `domain-node run
    /// --invite INVITE` admits that node at its first join.
    Invite {
        #[command(flatten)]
        state: StateArgs,
        /// How long the invite stays valid, e.g. `24h`.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "24h")]
        ttl: std::time::Duration,
    },
}

/// Where the operator's state is: the manager's data folder, or the managers' etcd.
#[derive(Debug, clap::Args)]
struct StateArgs {
    /// The manager's data folder.
    #[arg(long, value_name = "DIR", required_unless_present = "etcd")]
    data_dir: Option<PathBuf>,
    /// An etcd endpoint of managers that share their state (repeatable): change it there,
    /// for all of them.
    #[arg(
        long = "etcd",
        value_name = "URL",
        env = "DOMAIN_MANAGER_ETCD",
        value_delimiter = ','
    )]
    etcd: Vec<String>,
    /// Where in etcd the managers keep their keys [default: /domain-cluster/].
    #[arg(long, value_name = "PREFIX", env = "DOMAIN_MANAGER_ETCD_PREFIX")]
    etcd_prefix: Option<String>,
}

impl StateArgs {
    /// The store these arguments name: etcd when given, else the folder.
    fn store(&self) -> anyhow::Result<ControlStore> {
        if self.etcd.is_empty() {
            let dir = self
                .data_dir
                .clone()
                .context("no --data-dir and no --etcd")?;
            return Ok(ControlStore::Folder(dir));
        }
        let mut config = EtcdConfig::new(self.etcd.clone());
        if let Some(prefix) = &self.etcd_prefix {
            config.prefix.clone_from(prefix);
        }
        // The client's connections live on the runtime that `block_on` runs.
        let _runtime = commands_runtime()?.enter();
        Ok(ControlStore::Etcd(Box::new(
            Etcd::connect(&config).context("connecting to etcd")?,
        )))
    }

    /// Where the store is, for messages.
    fn describe(&self) -> String {
        match &self.data_dir {
            _ if !self.etcd.is_empty() => format!("etcd {}", self.etcd.join(",")),
            Some(dir) => dir.display().to_string(),
            None => String::new(),
        }
    }
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
        /// Where the domain is declared, and the data folder that keeps its key (with
        /// etcd: the key etcd publishes, imported first, or a new one etcd publishes).
        #[command(flatten)]
        state: StateArgs,
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
        #[command(flatten)]
        state: StateArgs,
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
    cli.logs.init("info");
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
        Command::Domain(DomainCommand::Create { id, state, allow }) => {
            let data_dir = state.data_dir.as_deref().context(
                "the domain's key is kept in the manager's data folder: pass --data-dir",
            )?;
            let store = state.store()?;
            let key = block_on(domain_manager::create_domain_in(
                &store, data_dir, &id, &allow,
            ))?
            .with_context(|| format!("creating domain {id:?} in {}", state.describe()))?;
            if allow.is_empty() {
                tracing::warn!(domain = %id, "no peer may submit jobs to this domain yet: add one with --allow");
            }
            println!("{key}");
            Ok(())
        }
        Command::Domain(DomainCommand::List { state, config }) => list(&state, config),
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
        Command::Id { data_dir } => {
            println!("{}", domain_manager::manager_identity(&data_dir)?.peer_id());
            Ok(())
        }
        Command::Generate(args) => {
            let command = <Cli as clap::CommandFactory>::command();
            domain_settings::generate::write(command, args.what, &mut std::io::stdout().lock())?;
            Ok(())
        }
        Command::Token(TokenCommand::Issue(args)) => {
            let token = issue_token(args)?;
            println!("{token}");
            Ok(())
        }
    }
}

fn issue_token(args: IssueArgs) -> anyhow::Result<String> {
    let data_dir = args
        .state
        .data_dir
        .as_deref()
        .context("the domain's key is kept in the manager's data folder: pass --data-dir")?;
    let store = args.state.store()?;
    let mut specs = block_on(store.domains())??.domain;
    if let Some(path) = &args.config {
        specs.extend(ManagerSettings::load(path)?.domain);
    }
    let policy = DomainPolicy::from_specs(&specs)?;
    let published = block_on(store.published_key(args.domain.as_str()))??;
    let request = domain_manager::tokens::TokenRequest {
        ttl: args.ttl,
        job_id: args.job,
        task_name: Some(args.task),
        ..domain_manager::tokens::TokenRequest::new(
            args.domain,
            args.sender,
            args.node,
            &args.endpoint,
        )
    };
    domain_manager::tokens::issue_token(
        &policy,
        &domain_keys(data_dir)?,
        published.as_deref(),
        &request,
        std::time::SystemTime::now(),
    )
    .with_context(|| {
        format!(
            "issuing a {} token of domain {} for {}",
            request.endpoint, request.domain, request.sender
        )
    })
}

fn node(command: NodeCommand) -> anyhow::Result<()> {
    match command {
        NodeCommand::Allow { peer_id, state } => {
            let store = state.store()?;
            let admitted = block_on(store.update_nodes(|file| {
                let new = file.admit(&peer_id);
                (new, new)
            }))??;
            if !admitted {
                tracing::info!(node = %peer_id, "already admitted");
            }
        }
        NodeCommand::Revoke { peer_id, state } => {
            let store = state.store()?;
            let revoked = block_on(store.update_nodes(|file| {
                let removed = file.revoke(&peer_id);
                (removed, removed)
            }))??;
            if !revoked {
                bail!("node {peer_id} is not admitted in {}", state.describe());
            }
        }
        NodeCommand::Ls { state, config } => {
            let store = state.store()?;
            let mut admitted = block_on(store.admitted())??;
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
        NodeCommand::Invite { state, ttl } => {
            let store = state.store()?;
            let invite = block_on(domain_manager::create_invite_in(&store, ttl))??;
            println!("{invite}");
        }
    }
    Ok(())
}

/// The runtime of the commands' calls to etcd, on this thread.
fn commands_runtime() -> anyhow::Result<&'static tokio::runtime::Runtime> {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    if let Some(runtime) = RUNTIME.get() {
        return Ok(runtime);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    Ok(RUNTIME.get_or_init(|| runtime))
}

/// Runs `future` to its end on the commands' runtime.
fn block_on<F: std::future::Future>(future: F) -> anyhow::Result<F::Output> {
    Ok(commands_runtime()?.block_on(future))
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
        if let Some(addr) = manager.metrics_addr() {
            writeln!(out, "metrics {addr}")?;
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

fn list(state: &StateArgs, config: Option<PathBuf>) -> anyhow::Result<()> {
    let store = state.store()?;
    let mut specs = block_on(store.domains())??.domain;
    if let Some(path) = config {
        specs.extend(ManagerSettings::load(path)?.domain);
    }
    let policy = DomainPolicy::from_specs(&specs)?;
    let keys = state.data_dir.as_deref().map(domain_keys).transpose()?;
    let mut out = std::io::stdout().lock();
    for domain in policy.domains() {
        // The key this manager signs with; with etcd and no data folder, the one published.
        let key = match &keys {
            Some(keys) if keys.key_path(domain).exists() => {
                keys.key(domain)?.public_key().to_string()
            }
            _ => block_on(store.published_key(domain))??.unwrap_or_else(|| "-".to_owned()),
        };
        let allowed: Vec<String> = policy.allowed(domain).map(ToString::to_string).collect();
        writeln!(out, "{domain}\t{key}\t{}", allowed.join(","))?;
    }
    Ok(())
}
