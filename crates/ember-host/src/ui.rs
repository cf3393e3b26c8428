//! How long-running commands report progress without printing from the library: the binary
//! implements [`Ui`] with progress bars, a daemon logs ([`Logged`]); tests use [`Quiet`].

/// Progress sink.
pub trait Ui: Sync {
    /// A new stage starts; `total` is its number of steps if known.
    fn stage(&self, name: &str, total: Option<u64>);
    /// `done` steps of the current stage are done.
    fn progress(&self, done: u64);
    /// The current stage is over; `summary` says how it went.
    fn finish(&self, summary: &str);
}

/// A [`Ui`] that shows nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct Quiet;

impl Ui for Quiet {
    fn stage(&self, _name: &str, _total: Option<u64>) {}
    fn progress(&self, _done: u64) {}
    fn finish(&self, _summary: &str) {}
}

/// A [`Ui`] for daemons: each stage and its outcome become `tracing` events (at info), tagged
/// with what is being worked on; progress steps are not logged.
#[derive(Debug, Clone)]
pub struct Logged {
    /// What the work is for (a template's name), in every event.
    pub subject: String,
}

impl Ui for Logged {
    fn stage(&self, name: &str, _total: Option<u64>) {
        tracing::info!(subject = %self.subject, stage = name, "working");
    }
    fn progress(&self, _done: u64) {}
    fn finish(&self, summary: &str) {
        tracing::info!(subject = %self.subject, summary, "stage done");
    }
}
