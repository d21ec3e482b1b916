//! `domain rm --domain D --id I...`: removes items from every node that holds them,
//! printing each removed id; an id no node holds is reported on standard error and
//! makes the command partly done (or failed, when none was removed). A registered holder
//! that does not answer fails the command (after printing what the others removed): it
//! still lists the items until the manager removes them there.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context as _;
use domain_client::client::ClientError;
use domain_proto::DomainId;

use crate::remote::{RemoteArgs, runtime};

/// Arguments of `domain rm`.
#[derive(Debug, Clone, clap::Args)]
pub struct DeleteArgs {
    /// The domain to remove items from.
    #[arg(long)]
    pub domain: DomainId,
    /// An item to remove; repeat for more.
    #[arg(long = "id", value_name = "ID", required = true)]
    pub ids: Vec<String>,
    /// How to reach the cluster.
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// Runs `domain rm`: removed ids on `out`, one per line; ids not found on `err`.
pub fn run(
    args: &DeleteArgs,
    out: &mut impl Write,
    err: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let answer = runtime()?.block_on(async {
        let client = args.remote.start_client("delete").await?;
        let answer = match args.remote.direct() {
            Some(direct) => client.delete_direct(&direct, &args.domain, &args.ids).await,
            None => client.delete(&args.domain, &args.ids).await,
        };
        let _ = client.shutdown().await;
        anyhow::Ok(answer)
    })?;
    let answer = match answer {
        Ok(answer) => answer,
        Err(ClientError::DeleteIncomplete {
            answered,
            unanswered,
        }) => {
            // What was removed is printed all the same: it is gone from the holders that
            // answered.
            for id in &answered.deleted {
                writeln!(out, "{id}")?;
            }
            return Err(anyhow::Error::new(ClientError::DeleteIncomplete {
                answered,
                unanswered,
            }))
            .context("removing items");
        }
        Err(error) => return Err(anyhow::Error::new(error)).context("removing items"),
    };
    for id in &answer.deleted {
        writeln!(out, "{id}")?;
    }
    for id in &answer.missing {
        writeln!(
            err,
            "domain: no node holds item {id} in domain {}",
            args.domain
        )?;
    }
    Ok(crate::output::outcome(
        answer.deleted.len(),
        answer.missing.len(),
    ))
}
