//! `domain store --dir D <put|get|ls|rm>`: a local datastore folder from the command line.
//!
//! - `put FILE --domain X --name N --type T [--prop k=v]... [--replace ID]` stores a file and
//!   prints `<id> <root>`;
//! - `get ID --domain X [-o FILE]` writes an item's content (standard output by default),
//!   checking it against its Merkle root on the way;
//! - `ls --domain X [--id I]... [--name N]... [--type T]... [--name-regex R] [--type-regex R]`
//!   prints one line per matching item: id, root, size, data type, name (tab-separated);
//! - `rm ID... --domain X` removes items.
//!
//! Puts and gets of large items show a progress bar when standard error is a terminal.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use domain_datastore::{Datastore, LocalDatastore};
use domain_merkle::HashingReader;
use domain_proto::DomainId;
use domain_proto::domain_data::{Metadata, Query, UpsertMetadata};
use tokio::io::{AsyncRead, AsyncWriteExt};

use crate::output::OutputArgs;
use crate::progress::Bars;
use domain_client::client::{Counted, Progress as _};

/// Copy buffer of `get`: large reads and writes, never chunk-sized ones.
const COPY_BUFFER: usize = 1 << 20;

/// Arguments of `domain store`.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// The store's folder (created if missing).
    #[arg(long, value_name = "DIR", env = "DOMAIN_STORE_DIR")]
    pub dir: PathBuf,
    /// What to do in it.
    #[command(subcommand)]
    pub command: StoreCommand,
}

/// The subcommands of `domain store`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum StoreCommand {
    /// Store a file as an item; prints its id and Merkle root.
    Put(PutArgs),
    /// Write an item's content to a file or standard output.
    Get(GetArgs),
    /// List the items that match a query.
    Ls(LsArgs),
    /// Remove items.
    Rm(RmArgs),
}

/// Arguments of `domain store put`.
#[derive(Debug, Clone, clap::Args)]
pub struct PutArgs {
    /// The file to store.
    pub file: PathBuf,
    /// The domain to store it in.
    #[arg(long)]
    pub domain: DomainId,
    /// The item's name.
    #[arg(long)]
    pub name: String,
    /// The item's data type.
    #[arg(long = "type", value_name = "TYPE")]
    pub data_type: String,
    /// A property, `key=value`; repeat for more.
    #[arg(long = "prop", value_name = "KEY=VALUE", value_parser = parse_property)]
    pub properties: Vec<(String, String)>,
    /// Replace the item with this id instead of adding a new one.
    #[arg(long, value_name = "ID")]
    pub replace: Option<String>,
}

/// Arguments of `domain store get`.
#[derive(Debug, Clone, clap::Args)]
pub struct GetArgs {
    /// The item's id.
    pub id: String,
    /// The domain it is in.
    #[arg(long)]
    pub domain: DomainId,
    /// Where to write the content; standard output when absent or `-`. A file appears only
    /// once the content is complete and verified.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// Arguments of `domain store ls`.
#[derive(Debug, Clone, clap::Args)]
pub struct LsArgs {
    /// The domain to list.
    #[arg(long)]
    pub domain: DomainId,
    /// Which items.
    #[command(flatten)]
    pub query: QueryArgs,
    /// Text or JSON.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// The flags that select items: the fields of a `domain_data.Query`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct QueryArgs {
    /// Only this id; repeat for more.
    #[arg(long = "id", value_name = "ID")]
    pub ids: Vec<String>,
    /// Only this exact name; repeat for more.
    #[arg(long = "name", value_name = "NAME")]
    pub names: Vec<String>,
    /// Only this exact data type; repeat for more.
    #[arg(long = "type", value_name = "TYPE")]
    pub data_types: Vec<String>,
    /// Only names matching this regular expression (anywhere unless anchored).
    #[arg(long, value_name = "REGEX", visible_alias = "name-re")]
    pub name_regex: Option<String>,
    /// Only data types matching this regular expression (anywhere unless anchored).
    #[arg(long, value_name = "REGEX", visible_alias = "type-re")]
    pub type_regex: Option<String>,
    /// Only items with this property, `key=value`; repeat for items with all of them.
    #[arg(long = "prop", value_name = "KEY=VALUE", value_parser = parse_property)]
    pub properties: Vec<(String, String)>,
}

impl QueryArgs {
    /// The query these flags describe.
    #[must_use]
    pub fn to_query(&self, metadata_only: bool) -> Query {
        Query {
            ids: self.ids.clone(),
            name_regexp: self.name_regex.clone(),
            data_type_regexp: self.type_regex.clone(),
            names: self.names.clone(),
            data_types: self.data_types.clone(),
            metadata_only,
            properties: self.properties.iter().cloned().collect(),
        }
    }
}

/// Arguments of `domain store rm`.
#[derive(Debug, Clone, clap::Args)]
pub struct RmArgs {
    /// The ids of the items to remove.
    #[arg(required = true)]
    pub ids: Vec<String>,
    /// The domain they are in.
    #[arg(long)]
    pub domain: DomainId,
}

pub(crate) fn parse_property(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{arg:?} is not KEY=VALUE")),
    }
}

/// Runs `domain store`, writing results to `out` (one line per item for `put` and `ls`,
/// the content for `get` without `-o`).
pub fn run(args: &StoreArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let store = LocalDatastore::open(&args.dir)
            .await
            .with_context(|| format!("opening the store in {}", args.dir.display()))?;
        let report = store.repair_report();
        if !report.is_clean() {
            eprintln!("domain: repaired the store at open: {report:?}");
        }
        match &args.command {
            StoreCommand::Put(put_args) => put(&store, put_args, out).await,
            StoreCommand::Get(get_args) => get(&store, get_args, out).await,
            StoreCommand::Ls(ls_args) => ls(&store, ls_args, out).await,
            StoreCommand::Rm(rm_args) => rm(&store, rm_args).await,
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn put(store: &LocalDatastore, args: &PutArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let file = tokio::fs::File::open(&args.file)
        .await
        .with_context(|| format!("opening {}", args.file.display()))?;
    let len = file
        .metadata()
        .await
        .with_context(|| format!("reading the size of {}", args.file.display()))?
        .len();
    let Ok(size) = u32::try_from(len) else {
        bail!(
            "{} is {len} bytes; an item holds at most {} bytes",
            args.file.display(),
            u32::MAX
        );
    };
    let item = UpsertMetadata {
        name: args.name.clone(),
        data_type: args.data_type.clone(),
        size,
        is_new: args.replace.is_none(),
        id: args.replace.clone().unwrap_or_default(),
        properties: args.properties.iter().cloned().collect::<BTreeMap<_, _>>(),
        replica: None,
        resume_key: None,
    };
    let bars = Bars::new("put");
    bars.started(&args.name, len);
    let stored = store
        .put(&args.domain, item, Counted::new(file, Some(&bars)))
        .await
        .with_context(|| format!("storing {}", args.file.display()))?;
    bars.finished(&args.name);
    writeln!(
        out,
        "{} {}",
        stored.id,
        stored.hash.as_deref().unwrap_or_default()
    )
    .context("writing to standard output")?;
    Ok(())
}

async fn get(store: &LocalDatastore, args: &GetArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let (item, content) = store
        .get(&args.domain, &args.id)
        .await
        .with_context(|| format!("reading item {}", args.id))?;
    let bars = Bars::new("get");
    bars.started(&item.name, u64::from(item.size));
    let mut reader = HashingReader::new(Counted::new(content, Some(&bars)));
    match args.output.as_deref() {
        None => copy_to_writer(&mut reader, out).await?,
        Some(path) if path.as_os_str() == "-" => copy_to_writer(&mut reader, out).await?,
        Some(path) => copy_to_file(&mut reader, path, &item).await?,
    }
    bars.finished(&item.name);
    check_root(&reader, &item)
}

fn check_root<R>(reader: &HashingReader<R>, item: &Metadata) -> anyhow::Result<()> {
    let root = reader.root().to_string();
    if reader.bytes_read() != u64::from(item.size) || item.hash.as_deref() != Some(root.as_str()) {
        bail!(
            "item {} is damaged: read {} bytes with root {root}, stored as {} bytes with root {}",
            item.id,
            reader.bytes_read(),
            item.size,
            item.hash.as_deref().unwrap_or("(none)")
        );
    }
    Ok(())
}

async fn copy_to_writer(
    reader: &mut (impl AsyncRead + Unpin),
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mut buf = vec![0_u8; COPY_BUFFER];
    loop {
        let n = tokio::io::AsyncReadExt::read(reader, &mut buf)
            .await
            .context("reading the content")?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])
            .context("writing to standard output")?;
    }
    out.flush().context("writing to standard output")
}

/// Writes the content next to `path`, verifies it, then renames it into place, so that
/// `path` never holds partial or damaged content.
async fn copy_to_file<R: AsyncRead + Unpin>(
    reader: &mut HashingReader<R>,
    path: &Path,
    item: &Metadata,
) -> anyhow::Result<()> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(format!(".part-{}", std::process::id()));
    let partial = PathBuf::from(partial);
    let result = async {
        let file = tokio::fs::File::create(&partial)
            .await
            .with_context(|| format!("creating {}", partial.display()))?;
        let mut file = tokio::io::BufWriter::with_capacity(COPY_BUFFER, file);
        tokio::io::copy_buf(
            &mut tokio::io::BufReader::with_capacity(COPY_BUFFER, &mut *reader),
            &mut file,
        )
        .await
        .with_context(|| format!("writing {}", partial.display()))?;
        file.flush()
            .await
            .with_context(|| format!("writing {}", partial.display()))?;
        file.get_ref()
            .sync_all()
            .await
            .with_context(|| format!("syncing {}", partial.display()))?;
        check_root(reader, item)?;
        tokio::fs::rename(&partial, path)
            .await
            .with_context(|| format!("renaming {} to {}", partial.display(), path.display()))
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&partial).await;
    }
    result
}

async fn ls(store: &LocalDatastore, args: &LsArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let items = store
        .query(&args.domain, &args.query.to_query(true))
        .await
        .context("querying the store")?;
    args.output.output().items(&items, out)
}

async fn rm(store: &LocalDatastore, args: &RmArgs) -> anyhow::Result<()> {
    for id in &args.ids {
        store
            .delete(&args.domain, id)
            .await
            .with_context(|| format!("removing item {id}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Wrapper {
        #[command(flatten)]
        store: StoreArgs,
    }

    #[test]
    fn properties_must_be_key_equals_value() {
        assert_eq!(parse_property("k=v=w"), Ok(("k".into(), "v=w".into())));
        assert_eq!(parse_property("k="), Ok(("k".into(), String::new())));
        assert!(parse_property("=v").is_err());
        assert!(parse_property("kv").is_err());
    }

    #[test]
    fn an_unsafe_domain_id_is_refused_while_parsing() {
        let parsed = Wrapper::try_parse_from(["store", "--dir", "d", "ls", "--domain", "../etc"]);
        assert!(parsed.is_err());
    }
}
