//! `domain download --domain D --id I... --out DIR (--manager M | --node N --token T)`:
//! fetch items by id into `DIR/<id>`, each checked against its Merkle root; prints
//! `<id>  <root>  <path>` per item.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use domain_datastore::DomainId;

use super::remote::{RemoteArgs, runtime};

/// Arguments of `domain download`.
#[derive(Debug, Clone, clap::Args)]
pub struct DownloadArgs {
    /// The domain the items are in.
    #[arg(long)]
    pub domain: DomainId,
    /// An item's id; repeat for more.
    #[arg(long = "id", value_name = "ID", required = true)]
    pub ids: Vec<String>,
    /// The folder to write the items to, each as `<id>` (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// How to reach the cluster.
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// Runs `domain download`, one line per item on `out`; ids not found are reported on
/// `err` and make the command fail.
pub fn run(
    args: &DownloadArgs,
    out: &mut impl Write,
    err: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let downloads = runtime()?.block_on(async {
        let client = args.remote.start_client().await?;
        let downloads = match args.remote.direct() {
            Some(direct) => {
                client
                    .download_direct(&direct, &args.domain, &args.ids, &args.out)
                    .await
            }
            None => client.download(&args.domain, &args.ids, &args.out).await,
        };
        let _ = client.shutdown().await;
        downloads.context("downloading")
    })?;
    for item in &downloads.items {
        writeln!(
            out,
            "{}  {}  {}",
            item.metadata.id,
            item.metadata.hash.as_deref().unwrap_or_default(),
            item.path.display()
        )
        .context("writing to standard output")?;
    }
    out.flush().context("writing to standard output")?;
    for id in &downloads.missing {
        let _ = writeln!(err, "domain: item {id} not found in domain {}", args.domain);
    }
    Ok(if downloads.missing.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
