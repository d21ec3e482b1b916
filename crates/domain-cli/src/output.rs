//! What the commands print, and how: lines for people, or with `--json` one JSON object per
//! line with every field, for scripts; and the exit status ([`outcome`]).
//!
//! The JSON forms are the types of this module, serialized with serde: an item
//! ([`ItemRecord`]: its metadata, and the local file of an upload or download), a job
//! ([`JobRecord`]), a file's root ([`HashRecord`]), and a failure of one input
//! ([`FailureRecord`]). Paths that are not UTF-8 are printed lossily; task tokens are never
//! printed.
//!
//! ```
//! use domain_cli::output::{Output, ItemRecord};
//! use domain_proto::domain_data::Metadata;
//!
//! let item = Metadata { id: "i1".into(), name: "scan".into(), data_type: "ply".into(), size: 5, ..Default::default() };
//! let mut out = Vec::new();
//! Output::Json.items(&[item], &mut out)?;
//! let line: serde_json::Value = serde_json::from_slice(&out)?;
//! assert_eq!(line["name"], "scan");
//! assert_eq!(line["size"], 5);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use domain_proto::domain_data::Metadata;
use domain_proto::task::{Job, Task};
use serde::Serialize;

/// The exit status of a command that did some of its inputs and failed the others.
pub const PARTLY_DONE: u8 = 3;

/// What `domain --help` says of the exit status.
pub const EXIT_STATUS_HELP: &str = "\
Exit status:
  0  done
  1  failed
  2  usage: the arguments were refused (see the message)
  3  partly done: some inputs failed (each named on standard error), the others are done
     (hash, download, rm)";

/// The exit status of a command that did `done` of its inputs and failed `failed`:
/// success, [`PARTLY_DONE`], or failure when nothing was done.
#[must_use]
pub fn outcome(done: usize, failed: usize) -> ExitCode {
    match (done, failed) {
        (_, 0) => ExitCode::SUCCESS,
        (0, _) => ExitCode::FAILURE,
        _ => ExitCode::from(PARTLY_DONE),
    }
}

/// The `--json` flag.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct OutputArgs {
    /// Print one JSON object per line, with every field, instead of text.
    #[arg(long)]
    pub json: bool,
}

impl OutputArgs {
    /// The form the flag asks for.
    #[must_use]
    pub fn output(self) -> Output {
        if self.json {
            Output::Json
        } else {
            Output::Text
        }
    }
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Lines for people (tab- or two-space-separated fields, text escaped).
    Text,
    /// One JSON object per line.
    Json,
}

/// An item as `--json` prints it: every stored field of its metadata, and the local file
/// an upload read or a download wrote.
#[derive(Debug, Serialize)]
pub struct ItemRecord<'a> {
    /// The item's id.
    pub id: &'a str,
    /// Its name.
    pub name: &'a str,
    /// Its data type.
    pub data_type: &'a str,
    /// Its size in bytes.
    pub size: u32,
    /// Its Merkle root, hex (absent when a node did not say).
    pub hash: Option<&'a str>,
    /// Its properties.
    pub properties: &'a BTreeMap<String, String>,
    /// The local file (uploads and downloads only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<Cow<'a, str>>,
}

impl<'a> ItemRecord<'a> {
    /// The record of `item`, with `path` when the command moved it from or to a file.
    #[must_use]
    pub fn new(item: &'a Metadata, path: Option<&'a Path>) -> Self {
        Self {
            id: &item.id,
            name: &item.name,
            data_type: &item.data_type,
            size: item.size,
            hash: item.hash.as_deref(),
            properties: &item.properties,
            path: path.map(Path::to_string_lossy),
        }
    }
}

/// A job as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct JobRecord<'a> {
    /// The job id.
    pub id: &'a str,
    /// Its name.
    pub name: &'a str,
    /// Its tasks (on a change, those that changed).
    pub tasks: Vec<TaskRecord<'a>>,
}

/// A task of a [`JobRecord`]: every field but the access token.
#[derive(Debug, Serialize)]
pub struct TaskRecord<'a> {
    /// The task's name within its job.
    pub name: &'a str,
    /// Its status (`PENDING`, `STARTED`, `DONE`, …).
    pub status: &'static str,
    /// The peer that opens the task's stream.
    pub sender: &'a str,
    /// The node it was assigned to, once assigned.
    pub receiver: Option<&'a str>,
    /// The protocol of its stream.
    pub endpoint: &'a str,
    /// Its output, when the task reported one: the type and the bytes, hex.
    pub output: Option<TaskOutput<'a>>,
}

/// A task's output.
#[derive(Debug, Serialize)]
pub struct TaskOutput<'a> {
    /// The output's message type.
    pub type_url: &'a str,
    /// Its bytes, hex.
    pub value: String,
}

impl<'a> JobRecord<'a> {
    /// The record of `job`.
    #[must_use]
    pub fn new(job: &'a Job) -> Self {
        Self {
            id: &job.id,
            name: &job.name,
            tasks: job.tasks.iter().map(TaskRecord::new).collect(),
        }
    }
}

impl<'a> TaskRecord<'a> {
    fn new(task: &'a Task) -> Self {
        Self {
            name: &task.name,
            status: task.status().as_str_name(),
            sender: &task.sender,
            receiver: task.receiver.as_deref(),
            endpoint: &task.endpoint,
            output: task.output.as_ref().map(|output| TaskOutput {
                type_url: &output.type_url,
                value: hex::encode(&output.value),
            }),
        }
    }
}

/// A file's Merkle root as `domain hash --json` prints it.
#[derive(Debug, Serialize)]
pub struct HashRecord<'a> {
    /// The file as named on the command line (`-` for standard input).
    pub path: &'a str,
    /// Its Merkle root, hex.
    pub root: String,
}

/// One input that failed, as `--json` prints it beside the others (the message is on
/// standard error too).
#[derive(Debug, Serialize)]
pub struct FailureRecord<'a> {
    /// The file, as named on the command line (when the input was a file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<&'a str>,
    /// The item id (when the input was an item).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a str>,
    /// What went wrong.
    pub error: String,
}

impl Output {
    /// Writes `record` as one JSON line.
    ///
    /// # Errors
    /// When `out` cannot be written.
    pub fn json_line(out: &mut impl Write, record: &impl Serialize) -> anyhow::Result<()> {
        serde_json::to_writer(&mut *out, record)
            .map_err(std::io::Error::from)
            .and_then(|()| out.write_all(b"\n"))
            .context("writing to standard output")
    }

    /// Writes the listing of `items` (`domain ls`, `watch`, `store ls`): in text, one line
    /// each, `id  root  size  data type  name` separated by tabs, text escaped.
    ///
    /// # Errors
    /// When `out` cannot be written.
    pub fn items(self, items: &[Metadata], out: &mut impl Write) -> anyhow::Result<()> {
        for item in items {
            match self {
                Self::Json => Self::json_line(out, &ItemRecord::new(item, None))?,
                Self::Text => writeln!(
                    out,
                    "{}\t{}\t{}\t{}\t{}",
                    item.id,
                    item.hash.as_deref().unwrap_or_default(),
                    item.size,
                    item.data_type.escape_debug(),
                    item.name.escape_debug()
                )
                .context("writing to standard output")?,
            }
        }
        out.flush().context("writing to standard output")
    }

    /// Writes the items an upload or a download moved, each with its local file: in text,
    /// `id  root  path` per line.
    ///
    /// # Errors
    /// When `out` cannot be written.
    pub fn transfers<'a>(
        self,
        moved: impl IntoIterator<Item = (&'a Metadata, &'a Path)>,
        out: &mut impl Write,
    ) -> anyhow::Result<()> {
        for (item, path) in moved {
            match self {
                Self::Json => Self::json_line(out, &ItemRecord::new(item, Some(path)))?,
                Self::Text => writeln!(
                    out,
                    "{}  {}  {}",
                    item.id,
                    item.hash.as_deref().unwrap_or_default(),
                    path.display()
                )
                .context("writing to standard output")?,
            }
        }
        out.flush().context("writing to standard output")
    }
}

#[cfg(test)]
mod tests {
    use domain_proto::task::{Any, Status};

    use super::*;

    fn json_lines(bytes: &[u8]) -> Vec<serde_json::Value> {
        std::str::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    #[test]
    fn the_exit_status_tells_done_from_partly_done_from_failed() {
        assert_eq!(outcome(3, 0), ExitCode::SUCCESS);
        assert_eq!(outcome(0, 0), ExitCode::SUCCESS);
        assert_eq!(outcome(0, 2), ExitCode::FAILURE);
        assert_eq!(outcome(1, 2), ExitCode::from(PARTLY_DONE));
    }

    #[test]
    fn an_item_in_json_carries_every_stored_field_on_one_line() {
        let item = Metadata {
            id: "i\n1".into(),
            name: "scan\t\"room\"".into(),
            data_type: "ply".into(),
            size: 7,
            hash: Some("ab".repeat(32)),
            properties: [("site".to_owned(), "lab".to_owned())].into(),
            content_offset: Some(3),
        };
        let mut out = Vec::new();
        Output::Json
            .transfers([(&item, Path::new("/tmp/x"))], &mut out)
            .unwrap();
        assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1);
        let record = &json_lines(&out)[0];
        assert_eq!(record["id"], "i\n1");
        assert_eq!(record["name"], "scan\t\"room\"");
        assert_eq!(record["data_type"], "ply");
        assert_eq!(record["size"], 7);
        assert_eq!(record["hash"], "ab".repeat(32));
        assert_eq!(record["properties"]["site"], "lab");
        assert_eq!(record["path"], "/tmp/x");
        assert!(
            record.get("content_offset").is_none(),
            "a transport field, never stored"
        );

        let mut listing = Vec::new();
        Output::Json.items(&[item], &mut listing).unwrap();
        assert!(json_lines(&listing)[0].get("path").is_none());
    }

    #[test]
    fn a_job_in_json_has_its_tasks_and_never_a_token() {
        let job = Job {
            id: "j1".into(),
            name: "upload".into(),
            tasks: vec![Task {
                name: "upload".into(),
                receiver: Some("node-a".into()),
                endpoint: "/store/v1".into(),
                access_token: Some("secret.token.here".into()),
                job_id: "j1".into(),
                sender: "client".into(),
                status: Status::Done as i32,
                output: Some(Any {
                    type_url: "Out".into(),
                    value: vec![1, 255],
                }),
            }],
        };
        let mut out = Vec::new();
        Output::json_line(&mut out, &JobRecord::new(&job)).unwrap();
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(!text.contains("secret"), "{text}");
        let record = &json_lines(&out)[0];
        let task = &record["tasks"][0];
        assert_eq!(task["status"], "DONE");
        assert_eq!(task["receiver"], "node-a");
        assert_eq!(task["sender"], "client");
        assert_eq!(task["endpoint"], "/store/v1");
        assert_eq!(task["output"]["value"], "01ff");
    }
}
