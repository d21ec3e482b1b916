//! `domain id [--identity FILE]`: prints the peer id of the client's identity, creating the
//! identity when it is missing: what an operator puts on a domain's allow-list
//! (`domain-manager domain create --allow`) or in a token (`domain-manager token issue
//! --sender`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

use crate::config;
use crate::remote::load_identity;

/// Arguments of `domain id`.
#[derive(Debug, Clone, clap::Args)]
pub struct IdArgs {
    /// The client's identity key file (created when missing) [default: the settings file's
    /// `identity`, else $XDG_CONFIG_HOME/domain/identity.key or ~/.config/domain/identity.key].
    #[arg(long, value_name = "FILE", env = "DOMAIN_IDENTITY")]
    pub identity: Option<PathBuf>,
    /// The settings file [default: $XDG_CONFIG_HOME/domain/config.toml or
    /// ~/.config/domain/config.toml, when it exists].
    #[arg(long, value_name = "FILE", env = "DOMAIN_CONFIG")]
    pub config: Option<PathBuf>,
}

/// Runs `domain id`: the peer id on one line of `out`.
pub fn run(args: &IdArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let flags = config::Settings {
        identity: args.identity.clone(),
        ..config::Settings::default()
    };
    let settings = config::merged(&flags, args.config.as_deref())?;
    let identity = load_identity(settings.identity.as_deref())?;
    writeln!(out, "{}", identity.peer_id())
        .and_then(|()| out.flush())
        .context("writing to standard output")?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peer_id_is_made_once_and_printed_the_same_each_time() {
        let dir = tempfile::tempdir().unwrap();
        let args = IdArgs {
            identity: Some(dir.path().join("me").join("identity.key")),
            config: Some(dir.path().join("absent-is-an-error.toml")),
        };
        assert!(
            run(&args, &mut Vec::new()).is_err(),
            "a named settings file must exist"
        );
        let args = IdArgs {
            config: None,
            ..args
        };
        let (mut first, mut second) = (Vec::new(), Vec::new());
        run(&args, &mut first).unwrap();
        run(&args, &mut second).unwrap();
        assert_eq!(first, second);
        let peer: domain_cluster::PeerId =
            std::str::from_utf8(&first).unwrap().trim().parse().unwrap();
        let stored = domain_cluster::identity::Identity::load_or_create(
            dir.path().join("me").join("identity.key"),
        )
        .unwrap();
        assert_eq!(peer, stored.peer_id());
    }
}
