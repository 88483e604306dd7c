//! A progress bar over a benchmark's configurations, drawn on stderr only when it is a
//! terminal; otherwise the same lines are printed plainly, as a log.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress(ProgressBar);

impl Progress {
    pub fn new(steps: u64) -> Progress {
        let bar = ProgressBar::with_draw_target(Some(steps), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} ({elapsed}, ~{eta} left)") {
            bar.set_style(style);
        }
        Progress(bar)
    }

    /// A line for the log: above the bar on a terminal, plain on stderr otherwise.
    pub fn line(&self, text: &str) {
        if self.0.is_hidden() {
            eprintln!("{text}");
        } else {
            self.0.println(text);
        }
    }

    /// Start a step: shown as the bar's message, and logged.
    pub fn step(&self, text: &str) {
        self.0.set_message(text.to_owned());
        self.line(text);
    }

    pub fn done_one(&self) {
        self.0.inc(1);
    }

    pub fn finish(&self) {
        self.0.finish_and_clear();
    }
}
