//! The narrow traits that adapters (SQS, SQLite, memory) implement.

use crate::event::LeadEvent;
use std::future::Future;

/// Why events could not all be queued. The webhook answers 5xx on any of these so that
/// Meta delivers the post again; nothing is acknowledged that is not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    #[error("the queue could not be reached: {0}")]
    Unavailable(String),
    #[error("the queue refused {failed} of {total} events: {reason}")]
    Rejected {
        failed: usize,
        total: usize,
        reason: String,
    },
}

/// Where accepted lead events go to be ingested.
pub trait EventQueue: Send + Sync {
    /// Queues every event, or fails. On failure some events may have been queued already;
    /// that is safe because ingest is idempotent and Meta will deliver the post again.
    fn enqueue(&self, events: &[LeadEvent]) -> impl Future<Output = Result<(), QueueError>> + Send;
}
