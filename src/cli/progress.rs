//! The one-line progress bar of the commands that take a while (`pipe rollups rebuild`).

/// A one-line progress bar on standard error, drawn only when it is a terminal.
pub(super) struct ProgressBar {
    what: &'static str,
    terminal: bool,
    drawn: bool,
}

impl ProgressBar {
    pub(super) fn new(what: &'static str) -> Self {
        use std::io::IsTerminal;
        Self {
            what,
            terminal: std::io::stderr().is_terminal(),
            drawn: false,
        }
    }

    pub(super) fn show(&mut self, done: usize, total: usize, label: &str) {
        if !self.terminal {
            return;
        }
        const WIDTH: usize = 30;
        let filled = (done * WIDTH).checked_div(total).unwrap_or(WIDTH);
        eprint!(
            "\r{} [{}{}] {done}/{total} {label}",
            self.what,
            "#".repeat(filled),
            ".".repeat(WIDTH - filled)
        );
        self.drawn = true;
    }

    pub(super) fn finish(&self) {
        if self.drawn {
            eprintln!();
        }
    }
}
