//! In-memory adapters, for unit tests and benchmarks of the use cases.

use crate::event::LeadEvent;
use crate::ports::{EventQueue, QueueError};
use std::sync::Mutex;

/// A queue that keeps events in a `Vec`, and can be told to fail.
#[derive(Debug, Default)]
pub struct MemoryQueue {
    events: Mutex<Vec<LeadEvent>>,
    failing: Mutex<bool>,
}

impl MemoryQueue {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every later `enqueue` fail (or succeed again).
    pub fn set_failing(&self, failing: bool) {
        if let Ok(mut flag) = self.failing.lock() {
            *flag = failing;
        }
    }

    /// A copy of every event queued so far.
    pub fn events(&self) -> Vec<LeadEvent> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// Removes and returns every event queued so far.
    pub fn drain(&self) -> Vec<LeadEvent> {
        self.events
            .lock()
            .map(|mut e| std::mem::take(&mut *e))
            .unwrap_or_default()
    }
}

impl EventQueue for MemoryQueue {
    async fn enqueue(&self, events: &[LeadEvent]) -> Result<(), QueueError> {
        if self.failing.lock().map(|f| *f).unwrap_or(true) {
            return Err(QueueError::Unavailable("memory queue set to fail".into()));
        }
        self.events
            .lock()
            .map_err(|_| QueueError::Unavailable("memory queue poisoned".into()))?
            .extend_from_slice(events);
        Ok(())
    }
}
