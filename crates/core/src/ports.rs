//! The narrow traits that adapters (SQS, SQLite, memory) implement.

pub use crate::dead_letter::{DeadLetterClass, DeadLetterReason};
use crate::event::LeadEvent;
pub use crate::failure::{Cause, StoreError};
use std::future::Future;

/// Why events could not all be queued. The webhook answers 5xx on any of these so that
/// Meta delivers the post again; nothing is acknowledged that is not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// The queue did not answer (network, credentials, outage).
    #[error("the queue could not be reached: {0}")]
    Unavailable(#[source] Cause),
    /// The queue answered but took only some of the events.
    #[error("the queue refused {failed} of {total} events: {reason}")]
    Rejected {
        /// Events refused.
        failed: usize,
        /// Events sent.
        total: usize,
        /// The queue's reason, for the log.
        reason: String,
    },
}

/// Where accepted lead events go to be ingested.
pub trait EventQueue: Send + Sync {
    /// Queues every event, or fails. On failure some events may have been queued already;
    /// that is safe because ingest is idempotent and Meta will deliver the post again.
    fn enqueue(&self, events: &[LeadEvent]) -> impl Future<Output = Result<(), QueueError>> + Send;
}

/// Where a lead came from into the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeadSourceKind {
    /// Read because a webhook announced it.
    Webhook,
    /// Found by a backfill run.
    Backfill,
}

impl LeadSourceKind {
    /// The `source` attribute's value (docs/architecture.md: `webhook` | `backfill`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Webhook => "webhook",
            Self::Backfill => "backfill",
        }
    }

    /// The source named `name` (`webhook` or `backfill`), if it is one.
    pub fn parse(name: &str) -> Option<Self> {
        [Self::Webhook, Self::Backfill]
            .into_iter()
            .find(|s| s.as_str() == name)
    }
}

/// A lead as the store keeps it: Graph's lead plus what only leadpipe knows.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredLead {
    /// The lead as Graph returned it.
    pub lead: leadpipe_graph::Lead,
    /// The page it came from (its token read it).
    pub page_id: String,
    /// The lead's form: Graph's `form_id`, or the webhook's when Graph left it out; `None`
    /// for an ad lead with no form (stored without the attribute: `by_form` refuses `""`).
    pub form_id: Option<String>,
    /// How it came in.
    pub source: LeadSourceKind,
    /// When it was first written.
    pub ingested_at: time::OffsetDateTime,
    /// The lead read against its form's version at this time (`crate::readable`).
    pub readable: crate::readable::Readable,
}

/// What writing one lead did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// A new item.
    Inserted,
    /// The lead was there already; its first ingest's item is kept as it was.
    AlreadyPresent,
    /// The lead cannot be stored even without `raw` (DynamoDB's 400 KB item limit): a
    /// permanent failure of this lead alone (class `too_large`).
    TooLarge {
        /// The item's size without `raw`.
        bytes: usize,
    },
}

/// The leads table: idempotent writes keyed by lead id.
pub trait LeadStore: Send + Sync {
    /// Writes each lead unless it is there already. The result has one entry per lead, in
    /// order; an `Err` means none of the leads can be assumed written (some may be: a
    /// retry is safe because writes are idempotent).
    fn put_leads(
        &self,
        leads: &[StoredLead],
    ) -> impl Future<Output = Result<Vec<PutOutcome>, StoreError>> + Send;
}

/// One lead asked for by id, and what reading it gave.
#[derive(Debug)]
pub struct FetchedLead {
    /// The lead asked for.
    pub lead_id: String,
    /// The lead, or why it could not be read (classified: see docs/architecture.md).
    pub result: Result<leadpipe_graph::Lead, leadpipe_graph::GraphError>,
}

/// Reads leads from Graph with as few round trips as it can.
pub trait LeadFetcher: Send + Sync {
    /// Fetches leads of one page (the page decides the token), one result per id. An `Err`
    /// is a failure of the whole call.
    fn fetch(
        &self,
        page_id: &str,
        lead_ids: &[String],
    ) -> impl Future<Output = Result<Vec<FetchedLead>, leadpipe_graph::GraphError>> + Send;
}

/// Which leads of a form or an ad to read: created in `[start, end)` (unix seconds),
/// `page_size` to a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeWindow {
    /// Unix seconds, included.
    pub start: i64,
    /// Unix seconds, excluded.
    pub end: i64,
    /// Leads per Graph page.
    pub page_size: u32,
}

/// Where the next page of a read is. Opaque to the core: only the adapter that made it
/// reads it, and only within the run (cursors are not for long-term storage).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PageCursor(String);

impl PageCursor {
    /// Wraps the adapter's own marker.
    pub fn new(opaque: String) -> Self {
        Self(opaque)
    }

    /// The adapter's marker, for the adapter.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One page of a form's or an ad's leads.
#[derive(Debug, Clone, Default)]
pub struct LeadPage {
    /// The leads of this page that could be read.
    pub leads: Vec<leadpipe_graph::Lead>,
    /// Items of this page that could not be read: their place and id, never their content.
    pub unreadable: Vec<leadpipe_graph::ParseError>,
    /// The next page, when there is one.
    pub next: Option<PageCursor>,
}

/// A queue message handed to a consumer, hidden from the others until its lease ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeasedMessage {
    /// What [`LeaseQueue::ack`] takes.
    pub receipt: String,
    /// The message body.
    pub body: String,
    /// How often it was leased, this time included.
    pub receive_count: u32,
}

/// A queue a consumer leases from (the SQLite file's, as `serve` drains it; SQS's receive
/// keeps the same contract, `crate::contract::a_queue_keeps_its_leases`).
pub trait LeaseQueue: Send + Sync {
    /// Queues each body as a message, visible at once.
    fn send(&self, bodies: &[String]) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Up to `max` visible messages, each hidden for `visibility`. A visible message already
    /// leased `max_receives` times is dead-lettered (`exhausted`) instead of handed out.
    fn lease(
        &self,
        max: usize,
        visibility: std::time::Duration,
        max_receives: u32,
    ) -> impl Future<Output = Result<Vec<LeasedMessage>, QueueError>> + Send;

    /// Deletes handled messages; a receipt already deleted is no error.
    fn ack(&self, receipts: &[String]) -> impl Future<Output = Result<(), QueueError>> + Send;
}

/// The queue operations ingest needs besides receiving: park a message, or dead-letter it.
pub trait QueueControl: Send + Sync {
    /// Sends `body` to the dead-letter queue with its reason as message attributes.
    fn dead_letter(
        &self,
        body: &str,
        reason: &DeadLetterReason,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Makes the message invisible for `delay` (rate limits), so it comes back after it.
    fn delay(
        &self,
        receipt_handle: &str,
        delay: std::time::Duration,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;
}

/// What backfill reads from Graph, per page (the page decides the token).
pub trait BackfillSource: Send + Sync {
    /// Whether this page's leads can be read with its token, with Meta's reasons if not.
    fn lead_access(
        &self,
        page_id: &str,
    ) -> impl Future<Output = Result<leadpipe_graph::HasLeadAccess, leadpipe_graph::GraphError>> + Send;

    /// `debug_token` of the page's token (valid, expiry, scopes), for the token's health.
    fn token_info(
        &self,
        page_id: &str,
    ) -> impl Future<Output = Result<leadpipe_graph::TokenInfo, leadpipe_graph::GraphError>> + Send;

    /// Every lead form of the page.
    fn forms(
        &self,
        page_id: &str,
    ) -> impl Future<Output = Result<Vec<leadpipe_graph::LeadgenForm>, leadpipe_graph::GraphError>> + Send;

    /// The first page of a form's or an ad's leads created within `window`.
    fn lead_page(
        &self,
        page_id: &str,
        node_id: &str,
        window: &TimeWindow,
    ) -> impl Future<Output = Result<LeadPage, leadpipe_graph::GraphError>> + Send;

    /// The page at `next`.
    fn lead_page_after(
        &self,
        page_id: &str,
        next: &PageCursor,
    ) -> impl Future<Output = Result<LeadPage, leadpipe_graph::GraphError>> + Send;
}

/// Facts about the run that moved a checkpoint, kept beside it for operators.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunFacts {
    /// Leads Graph returned in the slice.
    pub leads_read: u64,
    /// Leads stored first.
    pub new: u64,
    /// Leads stored already.
    pub already_present: u64,
}

/// The state table: one checkpoint (unix seconds) per form or ad.
pub trait CheckpointStore: Send + Sync {
    /// The checkpoint under `key` (`form#<id>`, `ad#<id>`), if any.
    fn checkpoint(&self, key: &str)
    -> impl Future<Output = Result<Option<i64>, StoreError>> + Send;

    /// Moves the checkpoint forward (never back) and records the run's facts.
    fn save_checkpoint(
        &self,
        key: &str,
        checkpoint: i64,
        facts: &RunFacts,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Keeps each page token's health as the run found it (`status` shows it).
    fn save_token_health(
        &self,
        health: &[crate::tokens::PageTokenHealth],
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let _ = health;
        async { Ok(()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn a_port_failure_keeps_its_source() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let err = StoreError::Unavailable(Cause::described("DynamoDB: could not connect", io));
        assert_eq!(
            err.to_string(),
            "the lead store could not be reached: DynamoDB: could not connect"
        );
        let cause = err.source().unwrap();
        assert_eq!(cause.to_string(), "DynamoDB: could not connect");
        assert_eq!(cause.source().unwrap().to_string(), "refused");
        let plain = QueueError::Unavailable("memory queue set to fail".into());
        assert!(plain.source().unwrap().source().is_none());
    }
}
