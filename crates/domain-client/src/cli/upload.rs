//! `domain upload FILE... --domain D (--manager M | --node N --token T)`: store files in a
//! domain on a node of the cluster; prints `<id>  <root>  <path>` per file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use domain_datastore::DomainId;

use super::remote::{RemoteArgs, runtime};
use crate::client::Upload;

/// The data type of a file without extension, when `--type` is absent.
pub const DEFAULT_DATA_TYPE: &str = "application/octet-stream";

/// Arguments of `domain upload`.
#[derive(Debug, Clone, clap::Args)]
pub struct UploadArgs {
    /// The files to upload, all in one task on one node.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// The domain to store them in.
    #[arg(long)]
    pub domain: DomainId,
    /// The item's name (one file only) [default: the file's name].
    #[arg(long)]
    pub name: Option<String>,
    /// The items' data type [default: the file's extension, or application/octet-stream].
    #[arg(long = "type", value_name = "TYPE")]
    pub data_type: Option<String>,
    /// How to reach the cluster.
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// Runs `domain upload`, one line per stored file on `out`.
pub fn run(args: &UploadArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    if args.name.is_some() && args.files.len() > 1 {
        bail!(
            "--name names one item; {} files were given",
            args.files.len()
        );
    }
    let uploads: Vec<Upload> = args
        .files
        .iter()
        .map(|path| {
            let name = args.name.clone().unwrap_or_else(|| file_name(path));
            let data_type = args.data_type.clone().unwrap_or_else(|| data_type(path));
            Upload::file(path, &name, &data_type)
        })
        .collect();
    let stored = runtime()?.block_on(async {
        let client = args.remote.start_client().await?;
        let stored = match args.remote.direct() {
            Some(direct) => client.upload_direct(&direct, &args.domain, &uploads).await,
            None => client.upload(&args.domain, &uploads).await,
        };
        let _ = client.shutdown().await;
        stored.context("uploading")
    })?;
    for (item, path) in stored.iter().zip(&args.files) {
        writeln!(
            out,
            "{}  {}  {}",
            item.id,
            item.hash.as_deref().unwrap_or_default(),
            path.display()
        )
        .context("writing to standard output")?;
    }
    out.flush().context("writing to standard output")?;
    Ok(ExitCode::SUCCESS)
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

fn data_type(path: &Path) -> String {
    path.extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| DEFAULT_DATA_TYPE.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn names_and_types_default_to_the_file_name_and_extension() {
        assert_eq!(file_name(Path::new("scans/room.PLY")), "room.PLY");
        assert_eq!(data_type(Path::new("scans/room.PLY")), "ply");
        assert_eq!(data_type(Path::new("scans/README")), DEFAULT_DATA_TYPE);
    }

    #[test]
    fn one_name_for_several_files_is_refused_before_anything_is_sent() {
        let manager =
            "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWD51SR7iHbeSZk8CrZ3YpqgpXkJRUhU2s5es5mSL9vxyR";
        let cli = crate::cli::Cli::try_parse_from([
            "domain",
            "upload",
            "a.ply",
            "b.ply",
            "--domain",
            "d",
            "--name",
            "scan",
            "--manager",
            manager,
        ])
        .unwrap();
        let crate::cli::Command::Upload(args) = cli.command else {
            panic!("parsed as another command");
        };
        let error = run(&args, &mut Vec::new()).unwrap_err();
        assert!(error.to_string().contains("--name"), "{error}");
    }
}
