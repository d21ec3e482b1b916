//! The `domain` command's settings file: defaults for the flags every network command
//! shares. Flags win over the environment, which wins over the file.
//!
//! ```toml
//! # ~/.config/domain/config.toml (or --config FILE, or DOMAIN_CONFIG)
//! manager = "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooW..."
//! identity = "/home/me/.config/domain/identity.key"
//! task_timeout = "10m"
//! ```
//!
//! `config/domain.example.toml` in the repository lists every key.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use domain_cluster::Multiaddr;
use serde::Deserialize;

/// The settings a file may hold; every key is optional.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The manager's address, ending with `/p2p/<peer id>`.
    #[serde(default, deserialize_with = "multiaddr")]
    pub manager: Option<Multiaddr>,
    /// The client's identity key file.
    pub identity: Option<PathBuf>,
    /// The timeout of each task, in the scheduler's syntax ("30s", "10m").
    pub task_timeout: Option<String>,
}

fn multiaddr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Multiaddr>, D::Error> {
    let text: Option<String> = Option::deserialize(d)?;
    text.map(|t| t.parse().map_err(serde::de::Error::custom))
        .transpose()
}

/// Where the settings file is looked for when neither `--config` nor `DOMAIN_CONFIG`
/// names one: `$XDG_CONFIG_HOME/domain/config.toml`, or `~/.config/domain/config.toml`.
#[must_use]
pub fn default_path() -> Option<PathBuf> {
    domain_client::client::default_identity_path()
        .and_then(|identity| identity.parent().map(|dir| dir.join("config.toml")))
}

/// Reads the settings: from `path` when given (it must exist), else from
/// [`default_path`] when that file exists, else none.
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
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading the settings file {}", path.display()))?;
    parse(&text).with_context(|| format!("in the settings file {}", path.display()))
}

/// Parses settings from TOML text.
///
/// # Errors
/// On TOML errors, unknown keys and malformed values (a manager that is no multiaddr).
pub fn parse(text: &str) -> anyhow::Result<Settings> {
    Ok(toml::from_str(text)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_optional_and_unknown_keys_are_refused() {
        assert_eq!(parse("").unwrap(), Settings::default());
        let settings = parse(
            "manager = \"/ip4/127.0.0.1/tcp/4001\"\nidentity = \"/k\"\ntask_timeout = \"5m\"\n",
        )
        .unwrap();
        assert_eq!(
            settings.manager.unwrap().to_string(),
            "/ip4/127.0.0.1/tcp/4001"
        );
        assert_eq!(settings.identity.unwrap(), PathBuf::from("/k"));
        assert_eq!(settings.task_timeout.as_deref(), Some("5m"));
        assert!(
            parse("managr = \"x\"").is_err(),
            "a typo must not pass silently"
        );
        assert!(parse("manager = \"not an address\"").is_err());
    }

    #[test]
    fn the_example_in_the_repository_parses() {
        let example = include_str!("../../../config/domain.example.toml");
        parse(example).unwrap();
    }

    #[test]
    fn a_named_file_that_is_missing_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(Some(&dir.path().join("absent.toml"))).is_err());
    }
}
