//! `domain watch --domain D [query flags]`: the matching items already stored, then each
//! new one as it is stored on any node, one line each as `domain ls` prints them, until
//! interrupted (Ctrl-C or SIGTERM), when the subscription is ended cleanly. With `--json`,
//! one object per item.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context as _;
use domain_proto::DomainId;

use crate::output::OutputArgs;
use crate::remote::{RemoteArgs, runtime};
use crate::store::QueryArgs;

/// Arguments of `domain watch`.
#[derive(Debug, Clone, clap::Args)]
pub struct WatchArgs {
    /// The domain to watch.
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

/// Runs `domain watch`, one line per item on `out` as it arrives; failures of one node's
/// stream go to `err` and the others go on.
pub fn run(
    args: &WatchArgs,
    out: &mut impl Write,
    err: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    if args.remote.direct().is_some() {
        anyhow::bail!("domain watch follows every node through the manager: pass --manager");
    }
    let output = args.output.output();
    runtime()?.block_on(async {
        let client = args.remote.start_client("watch").await?;
        let mut subscription = client
            .subscribe(&args.domain, &args.query.to_query(true))
            .await
            .context("subscribing")?;
        let interrupted = interrupted();
        tokio::pin!(interrupted);
        let outcome = loop {
            let next = tokio::select! {
                signal = &mut interrupted => break signal,
                next = subscription.next() => next,
            };
            match next {
                Some(Ok(item)) => {
                    if let Err(error) = output.items(std::slice::from_ref(&item), out) {
                        break Err(error);
                    }
                }
                Some(Err(error)) => {
                    let _ = writeln!(err, "domain: {}", domain_proto::ErrorChain(&error));
                }
                None => break Err(anyhow::anyhow!("the subscription stopped")),
            }
        };
        subscription.unsubscribe().await;
        let _ = client.shutdown().await;
        outcome.map(|()| ExitCode::SUCCESS)
    })
}

/// Resolves on Ctrl-C or SIGTERM: the ordinary end of a watch.
pub(crate) async fn interrupted() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("listening for SIGTERM")?;
        tokio::select! {
            signal = tokio::signal::ctrl_c() => signal.context("listening for Ctrl-C"),
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("listening for Ctrl-C")
}
