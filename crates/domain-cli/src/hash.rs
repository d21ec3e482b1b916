//! `domain hash [FILE]...`: the Merkle root of each file, printed like `b3sum`.
//!
//! Each file is read in [`BATCH_SIZE`] batches and hashed on all cores as it is read, so
//! memory stays constant whatever the size. The root is the one a domain stores the file
//! under and returns in `Metadata.hash` after an upload.

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use domain_merkle::{MerkleBuilder, Root};

use crate::output::{FailureRecord, HashRecord, Output, OutputArgs, outcome};

/// Bytes read before each hashing step: large enough to keep every core busy hashing
/// 7168-byte leaves, small enough to stay in cache.
pub const BATCH_SIZE: usize = MerkleBuilder::READ_BATCH;

/// The long help of `domain hash` (`domain hash --help`).
pub const LONG_ABOUT: &str = "Print the Merkle root of each FILE, as a domain stores it: \
BLAKE3 over 7168-byte chunks, joined in a tree. One line per file, `<root>  <name>`, like \
b3sum; a file of at most one chunk has the root b3sum prints.

With no FILE, or when FILE is -, read standard input. A file that cannot be read is reported \
on standard error and makes the exit status non-zero (3 when other files were hashed); the \
other files are still hashed.

With --json, one JSON object per FILE: {\"path\": ..., \"root\": ...}, or {\"path\": ..., \
\"error\": ...} for a file that cannot be read.";

/// Arguments of `domain hash`.
#[derive(Debug, Clone, clap::Args)]
pub struct HashArgs {
    /// Files to hash; `-` is standard input.
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Text or JSON.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Hashes every input of `args`, writing `<root>  <name>` lines to `out` and one
/// `domain: <name>: <reason>` line to `err` per input that cannot be read.
///
/// With `--json`, one [`HashRecord`] or [`FailureRecord`] per input on `out` instead.
///
/// Returns the [`outcome`] once all inputs have been tried; `Err` only when `out` or `err`
/// cannot be written.
pub fn run(
    args: &HashArgs,
    out: &mut impl Write,
    err: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let stdin_only = [PathBuf::from("-")];
    let inputs = if args.files.is_empty() {
        &stdin_only[..]
    } else {
        &args.files[..]
    };
    let output = args.output.output();
    let mut failed = 0;
    for path in inputs {
        let name = display_name(path);
        match hash_input(path) {
            Ok(root) if output == Output::Json => {
                let record = HashRecord {
                    path: &name,
                    root: root.to_string(),
                };
                Output::json_line(out, &record)?;
            }
            Ok(root) => {
                let line = match escape_name(&name) {
                    Cow::Borrowed(name) => format!("{root}  {name}"),
                    // b3sum's convention: a leading backslash says the name is escaped.
                    Cow::Owned(escaped) => format!("\\{root}  {escaped}"),
                };
                writeln!(out, "{line}").context("writing to standard output")?;
            }
            Err(error) => {
                failed += 1;
                writeln!(err, "domain: {name}: {error}").context("writing to standard error")?;
                if output == Output::Json {
                    let record = FailureRecord {
                        path: Some(&name),
                        id: None,
                        error: error.to_string(),
                    };
                    Output::json_line(out, &record)?;
                }
            }
        }
    }
    out.flush().context("writing to standard output")?;
    Ok(outcome(inputs.len() - failed, failed))
}

/// The Merkle root of a file, or of standard input for `-`.
fn hash_input(path: &Path) -> io::Result<Root> {
    if path.as_os_str() == "-" {
        root_of_reader(io::stdin().lock())
    } else {
        root_of_reader(File::open(path)?)
    }
}

/// The Merkle root of everything `reader` yields, read in [`BATCH_SIZE`] batches that are
/// hashed on all cores.
///
/// ```
/// use domain_cli::hash::root_of_reader;
/// use domain_merkle::root_of;
///
/// let data = vec![3_u8; 3 << 20];
/// assert_eq!(root_of_reader(&data[..])?, root_of(&data));
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// # Errors
///
/// The first read error other than [`io::ErrorKind::Interrupted`].
pub fn root_of_reader(reader: impl Read) -> io::Result<Root> {
    let mut builder = MerkleBuilder::new();
    builder.update_from_reader(reader)?;
    Ok(builder.finalize())
}

/// The name printed for an input: the path as given, `-` for standard input.
fn display_name(path: &Path) -> Cow<'_, str> {
    path.to_string_lossy()
}

/// Escapes `\` and newlines so that every output line names exactly one file, as b3sum does.
fn escape_name(name: &str) -> Cow<'_, str> {
    if name.contains(['\\', '\n']) {
        Cow::Owned(name.replace('\\', "\\\\").replace('\n', "\\n"))
    } else {
        Cow::Borrowed(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_backslashes_or_newlines_are_escaped() {
        assert_eq!(escape_name("plain name.ply"), "plain name.ply");
        assert_eq!(escape_name("a\\b\nc"), "a\\\\b\\nc");
    }
}
