//! How long-running commands report progress without printing from the library: the binary
//! implements [`Ui`] with progress bars; tests use [`Quiet`].

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
