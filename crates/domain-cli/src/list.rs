//! `domain ls --domain D [--id I]... [--name N]... [--type T]... [--name-re R] [--type-re R]`:
//! the metadata of a domain's matching items on every node, one per line: id, root, size,
//! data type, name (tab-separated, as `domain store ls`); with `--json`, one object each.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context as _;
use domain_proto::DomainId;
use domain_proto::domain_data::{Metadata, Query};

use crate::output::OutputArgs;
use crate::remote::{RemoteArgs, runtime};
use crate::store::QueryArgs;

/// Arguments of `domain ls`.
#[derive(Debug, Clone, clap::Args)]
pub struct ListArgs {
    /// The domain to list.
    #[arg(long)]
    pub domain: DomainId,
    /// Which items; with none of these, every item.
    #[command(flatten)]
    pub query: QueryArgs,
    /// Text or JSON.
    #[command(flatten)]
    pub output: OutputArgs,
    /// How to reach the cluster.
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// Runs `domain ls`, one line per item on `out`.
pub fn run(args: &ListArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let items = list(&args.domain, &args.query.to_query(true), &args.remote)?;
    args.output.output().items(&items, out)?;
    Ok(ExitCode::SUCCESS)
}

/// The metadata of the items matching `query`, through the manager or from one node.
pub(crate) fn list(
    domain: &DomainId,
    query: &Query,
    remote: &RemoteArgs,
) -> anyhow::Result<Vec<Metadata>> {
    runtime()?.block_on(async {
        let client = remote.start_client("list").await?;
        let items = match remote.direct() {
            Some(direct) => client.list_direct(&direct, domain, query).await,
            None => client.list(domain, query).await,
        };
        let _ = client.shutdown().await;
        items.context("listing")
    })
}
