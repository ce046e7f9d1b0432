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

/// A lead store in a `HashMap`, with the same first-write-wins rule as the real ones.
#[derive(Debug, Default)]
pub struct MemoryLeadStore {
    leads: Mutex<std::collections::HashMap<String, crate::ports::StoredLead>>,
    failing: Mutex<bool>,
}

impl MemoryLeadStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every later write fail (or succeed again).
    pub fn set_failing(&self, failing: bool) {
        if let Ok(mut flag) = self.failing.lock() {
            *flag = failing;
        }
    }

    pub fn len(&self) -> usize {
        self.leads.lock().map(|l| l.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, lead_id: &str) -> Option<crate::ports::StoredLead> {
        self.leads.lock().ok().and_then(|l| l.get(lead_id).cloned())
    }
}

impl crate::ports::LeadStore for MemoryLeadStore {
    async fn put_leads(
        &self,
        leads: &[crate::ports::StoredLead],
    ) -> Result<Vec<crate::ports::PutOutcome>, crate::ports::StoreError> {
        use crate::ports::{PutOutcome, StoreError};
        if self.failing.lock().map(|f| *f).unwrap_or(true) {
            return Err(StoreError::Unavailable("memory store set to fail".into()));
        }
        let mut stored = self
            .leads
            .lock()
            .map_err(|_| StoreError::Unavailable("memory store poisoned".into()))?;
        Ok(leads
            .iter()
            .map(|lead| {
                if stored.contains_key(&lead.lead.id) {
                    PutOutcome::AlreadyPresent
                } else {
                    stored.insert(lead.lead.id.clone(), lead.clone());
                    PutOutcome::Inserted
                }
            })
            .collect())
    }
}

/// Queue control that records what it was asked to do.
#[derive(Debug, Default)]
pub struct MemoryQueueControl {
    pub dead_letters: Mutex<Vec<(String, crate::ports::DeadLetterReason)>>,
    pub delays: Mutex<Vec<(String, std::time::Duration)>>,
}

impl crate::ports::QueueControl for MemoryQueueControl {
    async fn dead_letter(
        &self,
        body: &str,
        reason: &crate::ports::DeadLetterReason,
    ) -> Result<(), QueueError> {
        self.dead_letters
            .lock()
            .map_err(|_| QueueError::Unavailable("poisoned".into()))?
            .push((body.to_owned(), reason.clone()));
        Ok(())
    }

    async fn delay(
        &self,
        receipt_handle: &str,
        delay: std::time::Duration,
    ) -> Result<(), QueueError> {
        self.delays
            .lock()
            .map_err(|_| QueueError::Unavailable("poisoned".into()))?
            .push((receipt_handle.to_owned(), delay));
        Ok(())
    }
}
