//! A task owned by a fixture: aborted when the fixture is dropped.

/// Aborts its task when dropped. Put it first in a fixture's fields so the
/// task is aborted before the rest of the fixture drops.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
