//! The `domain` command's settings file: defaults for the flags every network command
//! shares. Flags win over the environment, which wins over the file.
//!
//! ```toml
//! # ~/.config/domain/config.toml (or --config FILE, or DOMAIN_CONFIG)
//! manager = "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooW..."
//! identity = "/home/me/.config/domain/identity.key"
//! task-timeout = "10m"
//! ```
//!
//! `config/domain.example.toml` in the repository lists every key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use domain_cluster::Multiaddr;
use domain_settings::parse_duration;
use serde::{Deserialize, Serialize};

/// The settings every network command shares, declared once: its flags (some also read
/// from the environment) and the keys of the settings file. Every one is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Settings {
    /// A manager's address, ending with `/p2p/<peer id>`; repeat it (or separate with
    /// commas) for several managers on one etcd: the client follows whichever leads.
    #[arg(
        long,
        value_name = "MULTIADDR",
        env = "DOMAIN_MANAGER",
        value_delimiter = ','
    )]
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "domain_settings::one_or_many"
    )]
    pub manager: Vec<Multiaddr>,
    /// The client's identity key file (created when missing) [default:
    /// $XDG_CONFIG_HOME/domain/identity.key or ~/.config/domain/identity.key].
    #[arg(long, value_name = "FILE", env = "DOMAIN_IDENTITY")]
    pub identity: Option<PathBuf>,
    /// How long each transfer task may run before the manager assigns it again, at most a
    /// week [default: 10m].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    // The first releases spelt the key with an underscore.
    #[serde(with = "domain_settings::duration", alias = "task_timeout")]
    pub task_timeout: Option<Duration>,
}

/// Where the settings file is looked for when neither `--config` nor `DOMAIN_CONFIG`
/// names one: `$XDG_CONFIG_HOME/domain/config.toml`, or `~/.config/domain/config.toml`.
#[must_use]
pub fn default_path() -> Option<PathBuf> {
    domain_client::client::default_identity_path()
        .and_then(|identity| identity.parent().map(|dir| dir.join("config.toml")))
}

/// Reads the settings file: `path` when given (it must exist), else [`default_path`] when
/// that file exists, else none.
///
/// # Errors
/// When the file cannot be read or is not valid settings (an unknown key included).
pub fn load(path: Option<&Path>) -> anyhow::Result<Settings> {
    let path = match path {
        Some(path) => path.to_path_buf(),
        None => match default_path().filter(|p| p.exists()) {
            Some(path) => path,
            None => return Ok(Settings::default()),
        },
    };
    Ok(domain_settings::load(&path)?)
}

/// The flags and the environment (`flags`) over the settings file at `path` ([`load`]).
///
/// # Errors
/// Those of [`load`], and a value of the command line that cannot be merged.
pub fn merged(flags: &Settings, path: Option<&Path>) -> anyhow::Result<Settings> {
    let file = load(path)?;
    domain_settings::layer(&file, flags).context("merging the settings")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    fn parse(text: &str) -> anyhow::Result<Settings> {
        Ok(toml::from_str(text)?)
    }

    fn flags(args: &[&str]) -> Settings {
        #[derive(clap::Parser)]
        struct Command {
            #[command(flatten)]
            settings: Settings,
        }
        let args = std::iter::once("domain").chain(args.iter().copied());
        Command::try_parse_from(args).unwrap().settings
    }

    const EXAMPLE: &str = include_str!("../../../config/domain.example.toml");

    #[test]
    fn every_key_is_optional_and_unknown_keys_are_refused() {
        assert_eq!(parse("").unwrap(), Settings::default());
        let settings = parse(
            "manager = \"/ip4/127.0.0.1/tcp/4001\"\nidentity = \"/k\"\ntask-timeout = \"1m 30s\"\n",
        )
        .unwrap();
        assert_eq!(settings.manager[0].to_string(), "/ip4/127.0.0.1/tcp/4001");
        assert_eq!(settings.identity.unwrap(), PathBuf::from("/k"));
        assert_eq!(settings.task_timeout, Some(Duration::from_secs(90)));
        assert!(
            parse("managr = \"x\"").is_err(),
            "a typo must not pass silently"
        );
        assert!(parse("manager = \"not an address\"").is_err());
        let several = parse("manager = [\"/ip4/127.0.0.1/tcp/4001\", \"/ip4/127.0.0.1/tcp/4002\"]");
        assert_eq!(several.unwrap().manager.len(), 2);
        assert_eq!(
            flags(&[
                "--manager",
                "/ip4/127.0.0.1/tcp/1,/ip4/127.0.0.1/tcp/2",
                "--manager",
                "/ip4/127.0.0.1/tcp/3"
            ])
            .manager
            .len(),
            3
        );
        assert!(parse("task-timeout = \"0s\"").is_err());
    }

    #[test]
    fn the_underscore_spelling_of_the_first_releases_still_reads() {
        let settings = parse("task_timeout = \"5m\"").unwrap();
        assert_eq!(settings.task_timeout, Some(Duration::from_secs(300)));
    }

    #[test]
    fn the_example_in_the_repository_parses_and_no_flags_leave_it_as_it_is() {
        let mut file = parse(EXAMPLE).unwrap();
        file.identity = Some("/k".into());
        assert_eq!(
            toml::Table::try_from(&file).unwrap().len(),
            3,
            "a key of Settings is not in this test"
        );
        assert_eq!(domain_settings::layer(&file, &flags(&[])).unwrap(), file);
        let over = domain_settings::layer(&file, &flags(&["--task-timeout", "2h"])).unwrap();
        assert_eq!(over.task_timeout, Some(Duration::from_secs(7200)));
        assert_eq!(over.manager, file.manager);
    }

    #[test]
    fn a_named_file_that_is_missing_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(Some(&dir.path().join("absent.toml"))).is_err());
    }
}
