//! `domain download --domain D [--id I]... [--name N]... [--type T]... [--name-re R]
//! [--type-re R] [--metadata-only] [--out DIR] [--overwrite] (--manager M | --node N --token T)`:
//! fetch the matching items of every node into `DIR/<id>`, each checked against its
//! Merkle root; prints `<id>  <root>  <path>` per item (with `--json`, one object each, and
//! one per id not found). With `--metadata-only`, prints the listing of `domain ls` instead
//! and writes nothing.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use domain_proto::DomainId;

use crate::output::{FailureRecord, Output, OutputArgs, outcome};
use crate::remote::{RemoteArgs, runtime};
use crate::store::QueryArgs;

/// Arguments of `domain download`.
#[derive(Debug, Clone, clap::Args)]
pub struct DownloadArgs {
    /// The domain the items are in.
    #[arg(long)]
    pub domain: DomainId,
    /// Which items; with none of these, every item of the domain.
    #[command(flatten)]
    pub query: QueryArgs,
    /// Print the matching items' metadata (as `domain ls`) instead of fetching content.
    #[arg(long)]
    pub metadata_only: bool,
    /// The folder to write the items to, each as `<id>` (created if missing).
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub out: PathBuf,
    /// Replace files already in the folder under an item's id; without it such an item
    /// fails and the file stays as it was.
    #[arg(long)]
    pub overwrite: bool,
    /// Text or JSON.
    #[command(flatten)]
    pub output: OutputArgs,
    /// How to reach the cluster.
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// Runs `domain download`, one line per item on `out`; ids asked for and found nowhere
/// are reported on `err` (and, in JSON, on `out`) and make the command partly done.
pub fn run(
    args: &DownloadArgs,
    out: &mut impl Write,
    err: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let query = args.query.to_query(args.metadata_only);
    let output = args.output.output();
    if args.metadata_only {
        let items = crate::list::list(&args.domain, &query, &args.remote)?;
        output.items(&items, out)?;
        return Ok(ExitCode::SUCCESS);
    }
    let downloads = runtime()?.block_on(async {
        let client = args
            .remote
            .start_client("download")
            .await?
            .with_overwrite(args.overwrite);
        let downloads = match args.remote.direct() {
            Some(direct) => {
                client
                    .download_matching_direct(&direct, &args.domain, &query, &args.out)
                    .await
            }
            None => {
                client
                    .download_matching(&args.domain, &query, &args.out)
                    .await
            }
        };
        let _ = client.shutdown().await;
        downloads.context("downloading")
    })?;
    output.transfers(
        downloads
            .items
            .iter()
            .map(|item| (&item.metadata, item.path.as_path())),
        out,
    )?;
    for id in &downloads.missing {
        let error = format!("item {id} not found in domain {}", args.domain);
        let _ = writeln!(err, "domain: {error}");
        if output == Output::Json {
            let record = FailureRecord {
                path: None,
                id: Some(id),
                error,
            };
            Output::json_line(out, &record)?;
        }
    }
    out.flush().context("writing to standard output")?;
    Ok(outcome(downloads.items.len(), downloads.missing.len()))
}
