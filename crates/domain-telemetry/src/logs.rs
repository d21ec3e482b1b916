//! Logs on standard error, as text or JSON lines.
//!
//! The level filter is `RUST_LOG` when set (tracing-subscriber's `EnvFilter` syntax), else
//! the binary's default. Text gets colours only when standard error is a terminal. JSON is
//! one object per line: `timestamp`, `level`, `target`, the event's fields (`message`
//! among them) at the top level, and `span`, the fields of the span the event happened in
//! (for a task: `job`, `task`, `peer`).

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// How log lines are written.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Lines for people.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The logging flag every binary takes: `--log-format text|json` (or `DOMAIN_LOG_FORMAT`),
/// after any subcommand too.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct LogArgs {
    /// How log lines on standard error are written: text for people, or one JSON object
    /// per line (levels: RUST_LOG).
    #[arg(
        long,
        global = true,
        value_enum,
        value_name = "FORMAT",
        env = "DOMAIN_LOG_FORMAT",
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,
}

impl LogArgs {
    /// [`init`] with the format these flags name.
    pub fn init(self, default: &str) {
        init(self.log_format, default);
    }
}

/// The filter: `RUST_LOG` when it is set and valid, else `default` (`"info"`, `"warn"`).
#[must_use]
pub fn filter(default: &str) -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default))
}

/// A subscriber writing `format` lines that `filter` lets through to `writer`, without
/// colours.
pub fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    build(format, filter, writer, false)
}

fn build<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
    ansi: bool,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => Box::new(builder.with_ansi(ansi).finish()),
        LogFormat::Json => Box::new(
            builder
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                .finish(),
        ),
    }
}

/// Sends the process's logs to standard error in `format`, at the levels `RUST_LOG` (or
/// `default`) lets through. Call it once, first thing in `main`; a second call changes
/// nothing.
pub fn init(format: LogFormat, default: &str) {
    // Only fails when a subscriber is already set, which then stays.
    // Colours only for a person: a log file or a pipe gets plain text.
    let ansi = format == LogFormat::Text && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let subscriber = build(format, filter(default), std::io::stderr, ansi);
    let _ = tracing::subscriber::set_global_default(subscriber);
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex, PoisonError};

    use super::*;

    /// Lines written by the subscriber under test.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn log_a_task_event(format: LogFormat) -> String {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = subscriber(format, EnvFilter::new("info"), move || writer.clone());
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("task", job = "j1", task = "upload", peer = "12D3KooW");
            let _in_task = span.enter();
            tracing::info!(items = 3, "task stream done");
            tracing::debug!("below the default level");
        });
        let bytes = captured
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        String::from_utf8(bytes).unwrap_or_default()
    }

    #[test]
    fn a_json_line_has_the_event_and_its_tasks_fields_at_the_top() {
        let text = log_a_task_event(LogFormat::Json);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        let line: serde_json::Value = serde_json::from_str(lines[0]).unwrap_or_default();
        assert_eq!(line["level"], "INFO", "{text}");
        assert_eq!(line["message"], "task stream done", "{text}");
        assert_eq!(line["items"], 3, "{text}");
        assert_eq!(line["span"]["job"], "j1", "{text}");
        assert_eq!(line["span"]["task"], "upload", "{text}");
        assert_eq!(line["span"]["peer"], "12D3KooW", "{text}");
        assert!(line["timestamp"].is_string(), "{text}");
    }

    #[test]
    fn a_text_line_names_the_span_and_the_event() {
        let text = log_a_task_event(LogFormat::Text);
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(
            text.contains("job=\"j1\"") || text.contains("job=j1"),
            "{text}"
        );
        assert!(text.contains("task stream done items=3"), "{text}");
    }

    #[test]
    fn the_format_reads_from_a_flag_or_a_settings_file() {
        use clap::ValueEnum as _;
        assert_eq!(LogFormat::from_str("json", false), Ok(LogFormat::Json));
        #[derive(serde::Deserialize)]
        struct File {
            log_format: LogFormat,
        }
        let file: File = serde_json::from_str(r#"{"log_format": "text"}"#).unwrap_or(File {
            log_format: LogFormat::Json,
        });
        assert_eq!(file.log_format, LogFormat::Text);
    }
}
