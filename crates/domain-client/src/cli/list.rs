//! `domain list --domain D (--manager M | --node N --token T) [--name N]... [--type T]...`:
//! the items of a domain on a node of the cluster, one per line: id, root, size, data type,
//! name (tab-separated, as `domain store ls`).

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use domain_datastore::DomainId;
use domain_proto::domain_data::Query;

use super::remote::{RemoteArgs, runtime};

/// Arguments of `domain list`.
#[derive(Debug, Clone, clap::Args)]
pub struct ListArgs {
    /// The domain to list.
    #[arg(long)]
    pub domain: DomainId,
    /// Only this exact name; repeat for more.
    #[arg(long = "name", value_name = "NAME")]
    pub names: Vec<String>,
    /// Only this exact data type; repeat for more.
    #[arg(long = "type", value_name = "TYPE")]
    pub data_types: Vec<String>,
    /// Only names matching this regular expression (anywhere unless anchored).
    #[arg(long, value_name = "REGEX")]
    pub name_regex: Option<String>,
    /// How to reach the cluster.
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// Runs `domain list`, one line per item on `out`.
pub fn run(args: &ListArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    if args.remote.direct().is_some() {
        bail!("domain list goes through the manager: pass --manager MULTIADDR");
    }
    let query = Query {
        name_regexp: args.name_regex.clone(),
        names: args.names.clone(),
        data_types: args.data_types.clone(),
        metadata_only: true,
        ..Query::default()
    };
    let items = runtime()?.block_on(async {
        let client = args.remote.start_client().await?;
        let items = client.list(&args.domain, &query).await;
        let _ = client.shutdown().await;
        items.context("listing")
    })?;
    for item in items {
        writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}",
            item.id,
            item.hash.as_deref().unwrap_or_default(),
            item.size,
            item.data_type.escape_debug(),
            item.name.escape_debug()
        )
        .context("writing to standard output")?;
    }
    out.flush().context("writing to standard output")?;
    Ok(ExitCode::SUCCESS)
}
