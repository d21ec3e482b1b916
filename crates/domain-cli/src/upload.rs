//! `domain upload PATH... --domain D (--manager M | --node N --token T)`: store files in a
//! domain on a node of the cluster; a folder stands for every file under it. Prints
//! `<id>  <root>  <path>` per file, once the node's root matched the one computed here
//! (with `--json`, one object per file with every field of its metadata).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use domain_proto::DomainId;

use crate::output::OutputArgs;
use crate::remote::{RemoteArgs, runtime};
use crate::store::parse_property;
use domain_client::client::Upload;

/// The data type of a file without extension, when `--type` is absent.
pub const DEFAULT_DATA_TYPE: &str = "application/octet-stream";

/// Most files one command uploads, so that a folder given by mistake (`/`) is refused
/// before anything is sent rather than walked for ever.
pub const MAX_FILES: usize = 100_000;

/// Arguments of `domain upload`.
#[derive(Debug, Clone, clap::Args)]
pub struct UploadArgs {
    /// The files to upload; a folder uploads every file under it, named by its path
    /// inside the folder. All go in one task to one node.
    #[arg(required = true, value_name = "PATH")]
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
    /// A property of every item, `key=value`; repeat for more.
    #[arg(long = "prop", value_name = "KEY=VALUE", value_parser = parse_property)]
    pub properties: Vec<(String, String)>,
    /// Text or JSON.
    #[command(flatten)]
    pub output: OutputArgs,
    /// How to reach the cluster.
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// One file to upload: where it is and the name it gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileToUpload {
    /// The file.
    pub path: PathBuf,
    /// The item's name.
    pub name: String,
}

/// Runs `domain upload`, one line per stored file on `out`.
pub fn run(args: &UploadArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let files = collect_files(&args.files)?;
    if args.name.is_some() && files.len() > 1 {
        bail!("--name names one item; {} files were given", files.len());
    }
    let properties: BTreeMap<String, String> = args.properties.iter().cloned().collect();
    let uploads: Vec<Upload> = files
        .iter()
        .map(|file| {
            let name = args.name.clone().unwrap_or_else(|| file.name.clone());
            let data_type = args
                .data_type
                .clone()
                .unwrap_or_else(|| data_type(&file.path));
            let mut upload = Upload::file(&file.path, &name, &data_type);
            upload.metadata.properties.clone_from(&properties);
            upload
        })
        .collect();
    let stored = runtime()?.block_on(async {
        let client = args.remote.start_client("upload").await?;
        let stored = match args.remote.direct() {
            Some(direct) => client.upload_direct(&direct, &args.domain, &uploads).await,
            None => client.upload(&args.domain, &uploads).await,
        };
        let _ = client.shutdown().await;
        stored.context("uploading")
    })?;
    args.output.output().transfers(
        stored
            .iter()
            .zip(files.iter().map(|file| file.path.as_path())),
        out,
    )?;
    Ok(ExitCode::SUCCESS)
}

/// The files the arguments stand for, in order: a file as itself, named by its file name;
/// a folder as every file under it (sorted, symbolic links not followed), named by its
/// path inside the folder with `/` between the parts.
///
/// # Errors
/// When a path cannot be read, holds nothing to upload, or the total passes [`MAX_FILES`].
pub fn collect_files(paths: &[PathBuf]) -> anyhow::Result<Vec<FileToUpload>> {
    let mut files = Vec::new();
    for path in paths {
        let metadata =
            std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
        if metadata.is_dir() {
            let before = files.len();
            walk(path, "", &mut files)?;
            if files.len() == before {
                bail!("{} holds no file to upload", path.display());
            }
        } else {
            push(&mut files, path.clone(), file_name(path))?;
        }
    }
    Ok(files)
}

fn walk(dir: &Path, prefix: &str, files: &mut Vec<FileToUpload>) -> anyhow::Result<()> {
    let mut entries = std::fs::read_dir(dir)
        .with_context(|| format!("reading the folder {}", dir.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("reading the folder {}", dir.display()))?;
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for entry in entries {
        let path = entry.path();
        let kind = entry
            .file_type()
            .with_context(|| format!("reading {}", path.display()))?;
        let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
        if kind.is_dir() {
            walk(&path, &format!("{name}/"), files)?;
        } else if kind.is_file() {
            push(files, path, name)?;
        }
    }
    Ok(())
}

fn push(files: &mut Vec<FileToUpload>, path: PathBuf, name: String) -> anyhow::Result<()> {
    if files.len() == MAX_FILES {
        bail!("more than {MAX_FILES} files to upload; upload the folder in parts");
    }
    files.push(FileToUpload { path, name });
    Ok(())
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
    fn a_folder_stands_for_every_file_under_it_named_by_its_inner_path() {
        let dir = tempfile::tempdir().unwrap();
        let scans = dir.path().join("scans");
        std::fs::create_dir_all(scans.join("room/empty")).unwrap();
        std::fs::write(scans.join("b.ply"), b"b").unwrap();
        std::fs::write(scans.join("a.ply"), b"a").unwrap();
        std::fs::write(scans.join("room/mesh.obj"), b"m").unwrap();
        let single = dir.path().join("pose.json");
        std::fs::write(&single, b"{}").unwrap();

        let files = collect_files(&[scans.clone(), single.clone()]).unwrap();
        let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["a.ply", "b.ply", "room/mesh.obj", "pose.json"]);
        assert_eq!(files[2].path, scans.join("room/mesh.obj"));
        assert_eq!(files[3].path, single);
    }

    #[test]
    fn an_empty_folder_or_a_missing_path_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let error = collect_files(&[dir.path().to_path_buf()]).unwrap_err();
        assert!(error.to_string().contains("no file"), "{error}");
        assert!(collect_files(&[dir.path().join("absent")]).is_err());
    }

    #[test]
    fn one_name_for_several_files_is_refused_before_anything_is_sent() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.ply"), dir.path().join("b.ply"));
        std::fs::write(&a, b"a").unwrap();
        std::fs::write(&b, b"b").unwrap();
        let manager =
            "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWD51SR7iHbeSZk8CrZ3YpqgpXkJRUhU2s5es5mSL9vxyR";
        let cli = crate::Cli::try_parse_from([
            "domain",
            "upload",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            "--domain",
            "d",
            "--name",
            "scan",
            "--manager",
            manager,
        ])
        .unwrap();
        let crate::Command::Upload(args) = cli.command else {
            panic!("parsed as another command");
        };
        let error = run(&args, &mut Vec::new()).unwrap_err();
        assert!(error.to_string().contains("--name"), "{error}");
    }

    #[test]
    fn properties_apply_to_every_item() {
        let cli = crate::Cli::try_parse_from([
            "domain", "upload", "a", "--domain", "d", "--prop", "site=lab", "--prop", "floor=2",
        ])
        .unwrap();
        let crate::Command::Upload(args) = cli.command else {
            panic!("parsed as another command");
        };
        assert_eq!(
            args.properties,
            [("site".into(), "lab".into()), ("floor".into(), "2".into())]
        );
    }
}
