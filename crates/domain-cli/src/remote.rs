//! What the network commands share: how to reach the cluster, from flags, the
//! environment and the settings file ([`crate::config`]).

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use domain_cluster::Multiaddr;
use domain_cluster::identity::Identity;

use crate::config;
use crate::progress::Bars;
use domain_client::client::{Client, ClientConfig, Direct, default_identity_path};

/// Where to send a transfer: through the manager, or straight to a node with a token.
#[derive(Debug, Clone, clap::Args)]
pub struct RemoteArgs {
    /// What the settings file may also say: `--manager`, `--identity`, `--task-timeout`.
    #[command(flatten)]
    pub settings: config::Settings,
    /// A node's address, ending with `/p2p/<peer id>`: skip the manager and use `--token`.
    #[arg(
        long,
        value_name = "MULTIADDR",
        conflicts_with = "manager",
        requires = "token"
    )]
    pub node: Option<Multiaddr>,
    /// The task token for `--node`, issued to this client's identity.
    #[arg(long, value_name = "TOKEN", requires = "node")]
    pub token: Option<String>,
    /// The settings file [default: $XDG_CONFIG_HOME/domain/config.toml or
    /// ~/.config/domain/config.toml, when it exists].
    #[arg(long, value_name = "FILE", env = "DOMAIN_CONFIG")]
    pub config: Option<PathBuf>,
}

impl RemoteArgs {
    /// The node and token of the direct form, when given.
    #[must_use]
    pub fn direct(&self) -> Option<Direct> {
        match (&self.node, &self.token) {
            (Some(node), Some(token)) => Some(Direct {
                node: node.clone(),
                token: token.clone(),
            }),
            _ => None,
        }
    }

    /// Loads (or creates) the identity and starts the client's peer, with flags,
    /// environment and settings file merged.
    ///
    /// # Errors
    /// When the settings file is invalid, no manager is named anywhere (and no node is
    /// given), the identity cannot be had, or the peer cannot start.
    /// Transfers draw progress bars labelled with `verb` on standard error when it is a
    /// terminal.
    pub async fn start_client(&self, verb: &'static str) -> anyhow::Result<Client> {
        let settings = config::merged(&self.settings, self.config.as_deref())?;
        let identity = load_identity(settings.identity.as_deref())?;
        let managers = if self.direct().is_some() {
            Vec::new()
        } else if settings.manager.is_empty() {
            bail!(
                "no manager: pass --manager MULTIADDR (or set DOMAIN_MANAGER, or `manager` \
                 in the settings file), or --node MULTIADDR --token TOKEN"
            )
        } else {
            settings.manager
        };
        let mut client_config = ClientConfig::default();
        client_config.task_timeout = settings.task_timeout.unwrap_or(client_config.task_timeout);
        let client = Client::start(identity, managers, client_config)
            .await
            .context("starting the client")?;
        Ok(client.with_progress(std::sync::Arc::new(Bars::new(verb))))
    }
}

/// The client's identity from `path`, or from the default path when `None`; created (in
/// a private folder) when missing.
///
/// # Errors
/// When there is no home folder to find the default path in, or the identity can be
/// neither read nor created.
pub fn load_identity(path: Option<&std::path::Path>) -> anyhow::Result<Identity> {
    let path = match path {
        Some(path) => path.to_path_buf(),
        None => default_identity_path()
            .context("no home folder for the identity: pass --identity FILE")?,
    };
    if let Some(folder) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        domain_auth::create_private_dir(folder)
            .with_context(|| format!("creating {}", folder.display()))?;
    }
    Identity::load_or_create(&path)
        .with_context(|| format!("loading the identity {}", path.display()))
}

/// The runtime of the network commands.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Wrapper {
        #[command(flatten)]
        remote: RemoteArgs,
    }

    const MANAGER: &str =
        "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWD51SR7iHbeSZk8CrZ3YpqgpXkJRUhU2s5es5mSL9vxyR";

    fn parse(args: &[&str]) -> Result<RemoteArgs, clap::Error> {
        Wrapper::try_parse_from(std::iter::once("domain").chain(args.iter().copied()))
            .map(|w| w.remote)
    }

    #[test]
    fn a_node_needs_a_token_and_excludes_the_manager() {
        // No manager on the command line is fine: it may come from the settings file.
        assert!(parse(&[]).unwrap().settings.manager.is_empty());
        assert!(parse(&["--node", MANAGER]).is_err(), "--node needs --token");
        assert!(parse(&["--token", "t"]).is_err(), "--token needs --node");
        assert!(parse(&["--manager", MANAGER, "--node", MANAGER, "--token", "t"]).is_err());
        assert!(parse(&["--manager", "not an address"]).is_err());

        let through_manager = parse(&["--manager", MANAGER]).unwrap();
        assert!(through_manager.direct().is_none());
        let direct = parse(&["--node", MANAGER, "--token", "t"])
            .unwrap()
            .direct()
            .unwrap();
        assert_eq!(direct.node.to_string(), MANAGER);
        assert_eq!(direct.token, "t");
    }
}
