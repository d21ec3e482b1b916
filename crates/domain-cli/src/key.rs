//! `domain key --domain D --manager M`: the domain's Ed25519 public key, the one that
//! verifies its task tokens, as 64 hex digits.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use domain_proto::DomainId;

use crate::remote::{RemoteArgs, runtime};

/// Arguments of `domain key`.
#[derive(Debug, Clone, clap::Args)]
pub struct KeyArgs {
    /// The domain.
    #[arg(long)]
    pub domain: DomainId,
    /// How to reach the manager.
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// Runs `domain key`, the key on one line of `out`.
pub fn run(args: &KeyArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    if args.remote.direct().is_some() {
        bail!("domain key asks the manager: pass --manager");
    }
    let key = runtime()?.block_on(async {
        let client = args.remote.start_client("key").await?;
        let key = client.public_key(&args.domain).await;
        let _ = client.shutdown().await;
        key.with_context(|| format!("asking the manager for the key of {}", args.domain))
    })?;
    writeln!(out, "{}", hex::encode(key)).context("writing to standard output")?;
    Ok(ExitCode::SUCCESS)
}
