//! Progress bars on standard error, for the transfers of every command.

use std::io::IsTerminal as _;
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};

use domain_client::client::Progress;

/// Items from this size up get a progress bar (when standard error is a terminal).
const PROGRESS_FROM: u64 = 16 << 20;

/// A progress bar for `len` bytes, or a hidden one when the item is small or standard error
/// is not a terminal.
fn progress_bar(len: u64, verb: &'static str, name: &str) -> ProgressBar {
    if len < PROGRESS_FROM || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len)
        .with_prefix(verb)
        .with_message(name.escape_debug().to_string());
    if let Ok(style) = ProgressStyle::with_template(
        "{prefix} {msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// One progress bar per item, drawn on standard error while the item moves.
#[derive(Debug)]
pub struct Bars {
    verb: &'static str,
    current: Mutex<ProgressBar>,
}

impl Bars {
    /// Bars that label each item with `verb` ("upload", "download").
    #[must_use]
    pub fn new(verb: &'static str) -> Self {
        Self {
            verb,
            current: Mutex::new(ProgressBar::hidden()),
        }
    }

    fn with_bar(&self, f: impl FnOnce(&mut ProgressBar)) {
        // A panic elsewhere while drawing leaves a bar behind, nothing worse.
        let mut bar = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut bar);
    }
}

impl Progress for Bars {
    fn started(&self, name: &str, size: u64) {
        self.with_bar(|bar| {
            bar.finish_and_clear();
            *bar = progress_bar(size, self.verb, name);
        });
    }

    fn advanced(&self, bytes: u64) {
        self.with_bar(|bar| bar.inc(bytes));
    }

    fn finished(&self, _name: &str) {
        self.with_bar(|bar| bar.finish_and_clear());
    }

    fn resumed(&self, name: &str, offset: u64) {
        self.with_bar(|bar| {
            bar.println(format!(
                "{name}: resumed after the {} the node kept",
                indicatif::HumanBytes(offset)
            ));
        });
    }

    fn rewound(&self, offset: u64) {
        self.with_bar(|bar| bar.set_position(offset));
    }
}
