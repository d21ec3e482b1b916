//! `domain jobs --manager M [--follow]`: the jobs this client may watch, from the manager's
//! `/monitor/v1` stream, one line per job: its id, name, and each task as
//! `name:STATUS@receiver` (with `--json`, one object per job with every field of its tasks
//! but their tokens). With `--follow`, each change after that too, until interrupted.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use domain_proto::task::Job;

use crate::output::{JobRecord, Output, OutputArgs};
use crate::remote::{RemoteArgs, runtime};

/// Without `--follow`, the listing ends once the stream has been quiet this long: the
/// manager sends its jobs at once (the running ones and the last finished), then only changes.
pub const QUIET: Duration = Duration::from_millis(500);

/// Arguments of `domain jobs`.
#[derive(Debug, Clone, clap::Args)]
pub struct JobsArgs {
    /// Keep printing each job as it changes, until interrupted.
    #[arg(long, short)]
    pub follow: bool,
    /// Text or JSON.
    #[command(flatten)]
    pub output: OutputArgs,
    /// How to reach the manager.
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// Runs `domain jobs`, one line per job (or change) on `out`.
pub fn run(args: &JobsArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    if args.remote.direct().is_some() {
        bail!("domain jobs asks the manager: pass --manager");
    }
    runtime()?.block_on(async {
        let client = args.remote.start_client("jobs").await?;
        let mut jobs = client
            .jobs()
            .await
            .context("following the manager's jobs")?;
        let interrupted = crate::watch::interrupted();
        tokio::pin!(interrupted);
        let outcome = loop {
            let quiet = async {
                if args.follow {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(QUIET).await;
            };
            let job = tokio::select! {
                signal = &mut interrupted => break signal,
                () = quiet => break Ok(()),
                job = jobs.next() => job,
            };
            match job {
                Ok(Some(job)) => {
                    let line = match args.output.output() {
                        Output::Json => Output::json_line(out, &JobRecord::new(&job)),
                        Output::Text => writeln!(out, "{}", job_line(&job))
                            .context("writing to standard output"),
                    }
                    .and_then(|()| out.flush().context("writing to standard output"));
                    if let Err(error) = line {
                        break Err(error);
                    }
                }
                Ok(None) => break Ok(()),
                Err(error) => break Err(error).context("the manager's job stream"),
            }
        };
        let _ = client.shutdown().await;
        outcome.map(|()| ExitCode::SUCCESS)
    })
}

/// `<job id>  <name>  <task>:<STATUS>[@<receiver>] ...`, text escaped.
#[must_use]
pub fn job_line(job: &Job) -> String {
    let tasks: Vec<String> = job
        .tasks
        .iter()
        .map(|task| {
            let status = task.status().as_str_name();
            match task.receiver.as_deref() {
                Some(receiver) => format!("{}:{status}@{receiver}", task.name.escape_debug()),
                None => format!("{}:{status}", task.name.escape_debug()),
            }
        })
        .collect();
    format!(
        "{}  {}  {}",
        job.id.escape_debug(),
        job.name.escape_debug(),
        tasks.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use domain_proto::task::{Status, Task};

    use super::*;

    #[test]
    fn a_job_line_shows_each_task_with_its_status_and_receiver() {
        let job = Job {
            id: "j1".into(),
            name: "upload".into(),
            tasks: vec![
                Task {
                    name: "upload".into(),
                    status: Status::Done as i32,
                    receiver: Some("node-a".into()),
                    ..Task::default()
                },
                Task {
                    name: "copy\n".into(),
                    status: Status::Pending as i32,
                    ..Task::default()
                },
            ],
        };
        assert_eq!(
            job_line(&job),
            "j1  upload  upload:DONE@node-a copy\\n:PENDING"
        );
    }
}
