//! `domain list --domain D --manager M [--id I]... [--name N]... [--type T]... [--name-regex R] [--type-regex R]`:
//! the items of a domain on a node of the cluster, one per line: id, root, size, data type,
//! name (tab-separated, as `domain store ls`).

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use domain_datastore::DomainId;

use super::remote::{RemoteArgs, runtime};
use super::store::{QueryArgs, write_listing};

/// Arguments of `domain list`.
#[derive(Debug, Clone, clap::Args)]
pub struct ListArgs {
    /// The domain to list.
    #[arg(long)]
    pub domain: DomainId,
    /// Which items.
    #[command(flatten)]
    pub query: QueryArgs,
    /// How to reach the cluster.
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// Runs `domain list`, one line per item on `out`.
pub fn run(args: &ListArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    if args.remote.direct().is_some() {
        bail!("domain list goes through the manager: pass --manager MULTIADDR");
    }
    let query = args.query.to_query(true);
    let items = runtime()?.block_on(async {
        let client = args.remote.start_client().await?;
        let items = client.list(&args.domain, &query).await;
        let _ = client.shutdown().await;
        items.context("listing")
    })?;
    write_listing(&items, out)?;
    Ok(ExitCode::SUCCESS)
}
