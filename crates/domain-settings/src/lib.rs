//! Settings of the domain cluster's binaries, each declared once (and, in [`generate`],
//! their man pages and shell completions, made from the same declarations).
//!
//! A binary declares its settings as one struct of optional fields that derives both
//! `clap::Args` (the flags, with `env = ...` for the environment) and serde's traits (the
//! keys of its TOML file, named as the flags are). Reading them is then the same three
//! steps for every binary:
//!
//! 1. clap parses the command line and the environment into the struct (flags win over
//!    the environment);
//! 2. [`load`] reads the file named by `--config` into the same struct, refusing unknown
//!    keys and naming the file in every error;
//! 3. [`layer`] puts the first over the second, key by key.
//!
//! Durations everywhere outside the wire take one grammar, humantime's, and are never
//! zero: [`parse_duration`] for clap, [`duration`] for serde.
//!
//! ```
//! use std::time::Duration;
//!
//! #[derive(Debug, Default, PartialEq, clap::Args, serde::Serialize, serde::Deserialize)]
//! #[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
//! struct Settings {
//!     /// Where to keep things.
//!     #[arg(long)]
//!     data_dir: Option<std::path::PathBuf>,
//!     /// How often to look.
//!     #[arg(long, value_parser = domain_settings::parse_duration)]
//!     #[serde(with = "domain_settings::duration")]
//!     interval: Option<Duration>,
//! }
//!
//! #[derive(clap::Parser)]
//! struct Cli {
//!     #[command(flatten)]
//!     settings: Settings,
//! }
//!
//! let file: Settings = toml::from_str("data-dir = \"/srv\"\ninterval = \"1m 30s\"")?;
//! let flags = <Cli as clap::Parser>::try_parse_from(["x", "--interval", "5s"])?.settings;
//! let settings = domain_settings::layer(&file, &flags)?;
//! assert_eq!(settings.data_dir.as_deref(), Some(std::path::Path::new("/srv")));
//! assert_eq!(settings.interval, Some(Duration::from_secs(5)));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A field the command line cannot leave unset in its own type (a list, a switch) is
//! skipped when empty (`#[serde(skip_serializing_if = "Vec::is_empty")]`, `"is_false"`):
//! no flag given must mean no key, or the file's value would be lost. Each binary has a
//! test that its example file comes through empty flags unchanged.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why settings could not be read or merged.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The settings file cannot be read.
    #[error("cannot read the settings file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// The settings file is not TOML, has an unknown key or a value that does not parse.
    #[error("invalid settings file {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Where and what, as the TOML parser saw it.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A value given on the command line or in the environment cannot be merged with the
    /// file (a number beyond TOML's 64-bit signed integers).
    #[error("cannot merge the settings given on the command line with the file")]
    Merge {
        /// The value that did not fit.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Reads the settings file at `path` into `T`.
///
/// # Errors
/// [`SettingsError::Read`] or [`SettingsError::Parse`], naming the file.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<T, SettingsError> {
    let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| SettingsError::Parse {
        path: path.to_owned(),
        source: Box::new(source),
    })
}

/// `over` laid on `under`: every key `over` serializes replaces the same key of `under`,
/// as a whole (a list is not appended to); the others keep `under`'s value.
///
/// A `None` field is no key; a list or switch is no key when the struct skips it empty.
///
/// # Errors
/// [`SettingsError::Merge`] when either side does not serialize to a TOML table.
pub fn layer<T: Serialize + DeserializeOwned>(under: &T, over: &T) -> Result<T, SettingsError> {
    let merge_error =
        |source: Box<dyn std::error::Error + Send + Sync>| SettingsError::Merge { source };
    let mut merged = toml::Table::try_from(under).map_err(|e| merge_error(Box::new(e)))?;
    let over = toml::Table::try_from(over).map_err(|e| merge_error(Box::new(e)))?;
    merged.extend(over);
    merged.try_into().map_err(|e| merge_error(Box::new(e)))
}

/// For `#[serde(skip_serializing_if = "domain_settings::is_false")]` on a switch: an
/// absent flag is no key.
#[must_use]
pub fn is_false(value: &bool) -> bool {
    !*value
}

/// A duration in a setting (a flag, the environment, a settings file) of any of the
/// binaries: humantime's grammar (`"500ms"`, `"30s"`, `"1m 30s"`, `"2h"`), longer than
/// zero, since a zero interval would spin. (Task timeouts on the wire keep posemesh's
/// grammar: `domain_scheduler::parse_timeout`.)
///
/// ```
/// use std::time::Duration;
/// use domain_settings::parse_duration;
///
/// assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
/// assert!(parse_duration("0s").is_err());
/// assert!(parse_duration("soon").is_err());
/// ```
///
/// # Errors
/// The reason, as text (what clap's `value_parser` wants).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(duration) if duration.is_zero() => Err(format!("{text:?} is zero")),
        Ok(duration) => Ok(duration),
        Err(error) => Err(format!("{text:?}: {error}")),
    }
}

pub mod generate;

/// Serde for an optional duration setting, as [`parse_duration`] reads it and humantime
/// writes it: `#[serde(default, with = "domain_settings::duration")]`.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize as _, Deserializer, Serializer};

    /// Writes the duration as text (`"1m 30s"`); `None` writes nothing.
    ///
    /// # Errors
    /// Only the serializer's own.
    pub fn serialize<S: Serializer>(
        value: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(duration) => serializer.collect_str(&humantime::format_duration(*duration)),
            None => serializer.serialize_none(),
        }
    }

    /// Reads a duration in [`parse_duration`](crate::parse_duration)'s grammar.
    ///
    /// # Errors
    /// When the value is not text or not such a duration.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(deserializer)?;
        crate::parse_duration(&text)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}

/// Deserializes a list setting that a file may also give as one value (`manager =
/// "/ip4/…"` as well as `manager = ["/ip4/…", "/ip4/…"]`), so that a file written when the
/// setting took one value still reads: `#[serde(deserialize_with =
/// "domain_settings::one_or_many")]`.
///
/// # Errors
/// When the value is neither a `T` nor a list of them.
pub fn one_or_many<'de, T, D>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    T: serde::Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    use serde::Deserialize as _;

    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum OneOrMany<T> {
        Many(Vec<T>),
        One(T),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::Many(values) => values,
        OneOrMany::One(value) => vec![value],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;
    use serde::Deserialize;

    #[derive(Debug, Default, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
    struct Settings {
        /// A name.
        #[arg(long)]
        name: Option<String>,
        /// A count.
        #[arg(long, allow_negative_numbers = true)]
        count: Option<i32>,
        /// Addresses.
        #[arg(long, value_delimiter = ',')]
        #[serde(skip_serializing_if = "Vec::is_empty")]
        listen: Vec<String>,
        /// A switch.
        #[arg(long)]
        #[serde(skip_serializing_if = "is_false")]
        open: bool,
        /// A period.
        #[arg(long, value_parser = parse_duration)]
        #[serde(with = "duration")]
        every: Option<Duration>,
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        settings: Settings,
    }

    fn flags(args: &[&str]) -> Settings {
        match Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied())) {
            Ok(cli) => cli.settings,
            Err(error) => panic!("{error}"),
        }
    }

    #[test]
    fn a_list_setting_reads_from_one_value_or_a_list() {
        #[derive(Debug, Deserialize)]
        struct Managers {
            #[serde(deserialize_with = "one_or_many")]
            manager: Vec<String>,
        }
        let one: Managers = toml::from_str("manager = \"a\"").unwrap();
        let many: Managers = toml::from_str("manager = [\"a\", \"b\"]").unwrap();
        assert_eq!(
            (one.manager, many.manager),
            (vec!["a".to_owned()], vec!["a".to_owned(), "b".to_owned()])
        );
        assert!(toml::from_str::<Managers>("manager = 3").is_err());
    }

    fn full_file() -> Settings {
        Settings {
            name: Some("file".into()),
            count: Some(-1),
            listen: vec!["a".into(), "b".into()],
            open: true,
            every: Some(Duration::from_secs(90)),
        }
    }

    #[test]
    fn no_flags_keep_every_key_of_the_file() {
        assert_eq!(layer(&full_file(), &flags(&[])).unwrap(), full_file());
    }

    #[test]
    fn a_flag_replaces_its_key_and_only_that_key() {
        let merged = layer(&full_file(), &flags(&["--count", "3", "--listen", "c"])).unwrap();
        assert_eq!(
            merged,
            Settings {
                count: Some(3),
                listen: vec!["c".into()],
                ..full_file()
            }
        );
        let merged = layer(&Settings::default(), &flags(&["--open", "--every", "2h"])).unwrap();
        assert!(merged.open);
        assert_eq!(merged.every, Some(Duration::from_secs(7200)));
    }

    #[test]
    fn durations_round_trip_through_text_and_zero_is_refused() {
        for text in ["1ms", "30s", "1m 30s", "2days", "1h 1ns"] {
            let file: Settings = toml::from_str(&format!("every = \"{text}\"")).unwrap();
            let back = layer(&file, &Settings::default()).unwrap();
            assert_eq!(back.every, file.every, "{text}");
        }
        assert!(toml::from_str::<Settings>("every = \"0s\"").is_err());
        assert!(toml::from_str::<Settings>("every = 5").is_err());
    }

    #[test]
    fn a_file_with_an_unknown_key_is_refused_naming_the_file_and_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.toml");
        std::fs::write(&path, "name = \"n\"\nnmae = \"typo\"\n").unwrap();
        let error = load::<Settings>(&path).unwrap_err();
        assert!(matches!(error, SettingsError::Parse { .. }), "{error}");
        assert!(error.to_string().contains("x.toml"), "{error}");
        let cause = std::error::Error::source(&error).unwrap().to_string();
        assert!(cause.contains("nmae"), "{cause}");
        let missing = load::<Settings>(&dir.path().join("absent.toml")).unwrap_err();
        assert!(matches!(missing, SettingsError::Read { .. }), "{missing}");
    }

    #[test]
    fn a_number_toml_cannot_hold_is_an_error_not_a_wrong_value() {
        #[derive(Debug, Default, Serialize, Deserialize)]
        struct Big {
            bytes: Option<u64>,
        }
        let over = Big {
            bytes: Some(u64::MAX),
        };
        assert!(matches!(
            layer(&Big::default(), &over),
            Err(SettingsError::Merge { .. })
        ));
    }
}
