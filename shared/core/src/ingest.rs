//! The ingest use case: a batch of queued lead events becomes stored leads.
//!
//! Each message is judged alone: a malformed body, a deleted lead or a rate-limited page
//! affects only its own messages. Leads are fetched per page (the page decides the token)
//! with one batch call, and written with one idempotent store call.
//!
//! What happens to a message:
//! * stored (new or already there): done, SQS deletes it;
//! * transient failure (Graph 5xx, time-out, store down): reported failed, SQS redelivers;
//! * rate limited: its visibility is pushed out by what the usage headers ask, then
//!   reported failed, so it comes back after the window instead of hammering the page;
//! * permanent (malformed body, lead gone, permission, token): sent to the dead-letter queue
//!   with its reason as attributes, then done; if that send fails it is reported failed.

use crate::event::LeadEvent;
use crate::ids::is_graph_id;
use crate::ports::{
    DeadLetterClass, DeadLetterReason, LeadFetcher, LeadSourceKind, LeadStore, PutOutcome,
    QueueControl, StoredLead,
};
use leadpipe_graph::{ErrorClass, GraphError, Lead};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;
use time::OffsetDateTime;

/// SQS allows at most 12 hours of invisibility.
const MAX_DELAY: Duration = Duration::from_secs(12 * 60 * 60);

/// One message of an SQS batch, as the use case reads it.
#[derive(Debug, Clone, Copy)]
pub struct QueuedMessage<'a> {
    pub message_id: &'a str,
    pub receipt_handle: Option<&'a str>,
    pub body: &'a str,
}

/// Why a message is left on the queue to come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryCause {
    /// Graph failed transiently (5xx, time-out, codes 1 and 2).
    Transient,
    /// Graph rate-limited the page.
    RateLimited,
    /// The lead store could not be written.
    StoreUnavailable,
    /// The store answered for other leads than were written.
    StoreAnswer,
    /// Graph's batch answer had nothing for this lead.
    NoAnswer,
    /// A permanent failure could not be sent to the dead-letter queue.
    DeadLetterUnavailable,
}

impl RetryCause {
    /// A stable name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Transient => "transient",
            Self::RateLimited => "rate_limited",
            Self::StoreUnavailable => "store_unavailable",
            Self::StoreAnswer => "store",
            Self::NoAnswer => "no_answer",
            Self::DeadLetterUnavailable => "dead_letter_unavailable",
        }
    }

    /// The Graph error class behind it, when Graph was the cause.
    fn graph_class(self) -> Option<ErrorClass> {
        match self {
            Self::Transient => Some(ErrorClass::Transient),
            Self::RateLimited => Some(ErrorClass::RateLimited),
            _ => None,
        }
    }
}

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// The lead is in the store; `new` is true for exactly one message per lead this batch
    /// inserted (a lead id repeated in the batch is a duplicate from its second message on).
    Stored { lead_id: String, new: bool },
    /// Sent to the dead-letter queue with this class.
    DeadLettered {
        lead_id: Option<String>,
        class: DeadLetterClass,
    },
    /// Left on the queue to come back; `delay` when its visibility was pushed out.
    Retry {
        lead_id: Option<String>,
        cause: RetryCause,
        delay: Option<Duration>,
    },
}

/// The outcome of a batch, message by message, in the order received.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngestReport {
    pub outcomes: Vec<(String, Disposition)>,
}

impl IngestReport {
    /// The ids of the messages SQS must keep (ReportBatchItemFailures).
    pub fn failed_message_ids(&self) -> Vec<&str> {
        self.outcomes
            .iter()
            .filter(|(_, d)| matches!(d, Disposition::Retry { .. }))
            .map(|(id, _)| id.as_str())
            .collect()
    }

    fn count(&self, pick: impl Fn(&Disposition) -> bool) -> usize {
        self.outcomes.iter().filter(|(_, d)| pick(d)).count()
    }

    /// Leads this batch inserted (each counted once).
    pub fn stored_new(&self) -> usize {
        self.count(|d| matches!(d, Disposition::Stored { new: true, .. }))
    }

    /// Messages whose lead was stored already (earlier, or by an earlier message of this batch).
    pub fn duplicates(&self) -> usize {
        self.count(|d| matches!(d, Disposition::Stored { new: false, .. }))
    }

    pub fn dead_lettered(&self) -> usize {
        self.count(|d| matches!(d, Disposition::DeadLettered { .. }))
    }

    pub fn retried(&self) -> usize {
        self.count(|d| matches!(d, Disposition::Retry { .. }))
    }

    /// True when the batch had messages and none of them got anywhere: every one is left
    /// for SQS to deliver again. A store or Graph outage looks like this; the invocation
    /// itself succeeds (the failures are reported per item), so this is what an alarm watches
    /// (`BatchesFullyFailed`).
    pub fn fully_failed(&self) -> bool {
        !self.outcomes.is_empty() && self.retried() == self.outcomes.len()
    }

    /// Messages per Graph error class (transient, rate_limited, token, ...).
    pub fn graph_errors(&self) -> BTreeMap<&'static str, u64> {
        let mut by_class = BTreeMap::new();
        for (_, disposition) in &self.outcomes {
            let class = match disposition {
                Disposition::Retry { cause, .. } => cause.graph_class(),
                Disposition::DeadLettered { class, .. } => match class {
                    DeadLetterClass::Token => Some(ErrorClass::Token),
                    DeadLetterClass::Permission => Some(ErrorClass::Permission),
                    DeadLetterClass::NotFound => Some(ErrorClass::NotFound),
                    DeadLetterClass::BadRequest => Some(ErrorClass::BadRequest),
                    DeadLetterClass::Unreadable => Some(ErrorClass::Unreadable),
                    DeadLetterClass::Malformed | DeadLetterClass::TooLarge => None,
                },
                Disposition::Stored { .. } => None,
            };
            if let Some(class) = class {
                *by_class.entry(class.as_str()).or_insert(0) += 1;
            }
        }
        by_class
    }

    /// Writes the batch's metrics as CloudWatch EMF lines.
    pub fn emit_metrics(&self) {
        crate::metrics::emit(&[
            ("LeadsStored", self.stored_new() as u64),
            ("DuplicatesSkipped", self.duplicates() as u64),
            ("MessagesDeadLettered", self.dead_lettered() as u64),
            ("MessagesRetried", self.retried() as u64),
            ("BatchesFullyFailed", u64::from(self.fully_failed())),
        ]);
        crate::metrics::emit_graph_errors(self.graph_errors());
    }
}

enum Judgement {
    Pending(LeadEvent),
    Done(Disposition),
}

/// Ingests one batch. Never fails as a whole: every message gets a [`Disposition`].
pub async fn ingest_batch<F: LeadFetcher, S: LeadStore, C: QueueControl>(
    fetcher: &F,
    store: &S,
    queue: &C,
    messages: &[QueuedMessage<'_>],
    now: OffsetDateTime,
) -> IngestReport {
    // 1. Parse each body on its own; ids that are not Graph ids fail their message alone.
    let mut judgements: Vec<Judgement> = Vec::with_capacity(messages.len());
    for message in messages {
        let malformed = match LeadEvent::from_message_body(message.body) {
            Ok(event) if is_graph_id(&event.leadgen_id) && is_graph_id(&event.page_id) => {
                judgements.push(Judgement::Pending(event));
                continue;
            }
            Ok(_) => "the message's leadgen_id or page_id is not a Graph id".to_owned(),
            Err(err) => format!("the message body is not a lead event: {err}"),
        };
        tracing::warn!(message_id = message.message_id, reason = %malformed, "malformed queue message");
        let reason = DeadLetterReason {
            class: DeadLetterClass::Malformed,
            detail: malformed,
        };
        judgements.push(Judgement::Done(
            dead_letter(queue, message, None, reason).await,
        ));
    }

    // 2. Fetch per page, each distinct lead once.
    let mut by_page: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for judgement in &judgements {
        if let Judgement::Pending(event) = judgement {
            by_page
                .entry(&event.page_id)
                .or_default()
                .insert(&event.leadgen_id);
        }
    }
    let fetches = by_page.iter().map(|(page_id, ids)| {
        let ids: Vec<String> = ids.iter().map(|id| (*id).to_owned()).collect();
        async move { (*page_id, fetcher.fetch(page_id, &ids).await) }
    });
    let fetched = futures::future::join_all(fetches).await;
    let mut results: HashMap<(String, String), Result<Lead, GraphError>> = HashMap::new();
    let mut page_failures: HashMap<String, GraphError> = HashMap::new();
    for (page_id, outcome) in fetched {
        match outcome {
            Ok(items) => {
                for item in items {
                    results.insert((page_id.to_owned(), item.lead_id), item.result);
                }
            }
            Err(err) => {
                page_failures.insert(page_id.to_owned(), err);
            }
        }
    }
    for (page_id, err) in &page_failures {
        if err.class() == ErrorClass::Token {
            tracing::error!(page_id = %page_id, code = ?err.code, subcode = ?err.subcode, error = %err,
                "ACCESS TOKEN REFUSED for this page: leads cannot be read until a new token is put in the secret");
        }
    }
    let mut token_pages_logged: BTreeSet<String> = page_failures
        .iter()
        .filter(|(_, e)| e.class() == ErrorClass::Token)
        .map(|(p, _)| p.clone())
        .collect();

    // 3. Store every lead that was read, once.
    let mut to_store: Vec<StoredLead> = Vec::new();
    let mut seen = BTreeSet::new();
    for judgement in &judgements {
        if let Judgement::Pending(event) = judgement
            && let Some(Ok(lead)) = results.get(&(event.page_id.clone(), event.leadgen_id.clone()))
            && seen.insert(lead.id.clone())
        {
            to_store.push(StoredLead {
                form_id: lead.form_id.clone().or_else(|| event.form_id.clone()),
                lead: lead.clone(),
                page_id: event.page_id.clone(),
                source: LeadSourceKind::Webhook,
                ingested_at: now,
            });
        }
    }
    let stored: Result<HashMap<String, PutOutcome>, String> = if to_store.is_empty() {
        Ok(HashMap::new())
    } else {
        match store.put_leads(&to_store).await {
            Ok(outcomes) => Ok(to_store
                .iter()
                .map(|s| s.lead.id.clone())
                .zip(outcomes)
                .collect()),
            Err(err) => {
                tracing::error!(leads = to_store.len(), error = %err, "lead store write failed; the batch will be redelivered");
                Err(err.to_string())
            }
        }
    };

    // 4. Judge each message.
    let mut report = IngestReport::default();
    let mut counted_new: BTreeSet<String> = BTreeSet::new();
    for (message, judgement) in messages.iter().zip(judgements) {
        let disposition = match judgement {
            Judgement::Done(done) => done,
            Judgement::Pending(event) => {
                let span = tracing::info_span!("ingest_message", message_id = message.message_id, leadgen_id = %event.leadgen_id, page_id = %event.page_id);
                let _entered = span.enter();
                let key = (event.page_id.clone(), event.leadgen_id.clone());
                match (results.get(&key), page_failures.get(&event.page_id)) {
                    (Some(Ok(_)), _) => match &stored {
                        Ok(outcomes) => match outcomes.get(&event.leadgen_id) {
                            Some(PutOutcome::Inserted) => Disposition::Stored {
                                lead_id: event.leadgen_id.clone(),
                                // Count what the store did: one new lead, however many
                                // messages of this batch carried it.
                                new: counted_new.insert(event.leadgen_id.clone()),
                            },
                            Some(PutOutcome::AlreadyPresent) => Disposition::Stored {
                                lead_id: event.leadgen_id.clone(),
                                new: false,
                            },
                            Some(PutOutcome::TooLarge { bytes }) => {
                                let reason = DeadLetterReason {
                                    class: DeadLetterClass::TooLarge,
                                    detail: format!(
                                        "the lead needs {bytes} bytes as a DynamoDB item even without raw, over the 400 KB limit"
                                    ),
                                };
                                dead_letter(queue, message, Some(&event), reason).await
                            }
                            // Graph answered for another id than asked; try again later.
                            None => retry(Some(&event), RetryCause::StoreAnswer, None),
                        },
                        Err(_) => retry(Some(&event), RetryCause::StoreUnavailable, None),
                    },
                    (Some(Err(err)), _) | (None, Some(err)) => {
                        if err.class() == ErrorClass::Token
                            && token_pages_logged.insert(event.page_id.clone())
                        {
                            tracing::error!(page_id = %event.page_id, error = %err,
                                "ACCESS TOKEN REFUSED for this page: leads cannot be read until a new token is put in the secret");
                        }
                        judge_error(queue, message, &event, err).await
                    }
                    (None, None) => retry(Some(&event), RetryCause::NoAnswer, None),
                }
            }
        };
        report
            .outcomes
            .push((message.message_id.to_owned(), disposition));
    }
    if report.fully_failed() {
        tracing::error!(
            messages = messages.len(),
            "every message of the batch failed; SQS delivers them again (BatchesFullyFailed)"
        );
    }
    tracing::info!(
        messages = messages.len(),
        stored_new = report.stored_new(),
        duplicates = report.duplicates(),
        dead_lettered = report.dead_lettered(),
        retried = report.retried(),
        "ingest batch"
    );
    report.emit_metrics();
    report
}

fn retry(event: Option<&LeadEvent>, cause: RetryCause, delay: Option<Duration>) -> Disposition {
    Disposition::Retry {
        lead_id: event.map(|e| e.leadgen_id.clone()),
        cause,
        delay,
    }
}

async fn judge_error<C: QueueControl>(
    queue: &C,
    message: &QueuedMessage<'_>,
    event: &LeadEvent,
    err: &GraphError,
) -> Disposition {
    let class = err.class();
    if let Some(dead) = DeadLetterClass::of_graph(class) {
        let reason = DeadLetterReason {
            class: dead,
            detail: err.to_string(),
        };
        return dead_letter(queue, message, Some(event), reason).await;
    }
    if class != ErrorClass::RateLimited {
        tracing::warn!(class = %class, error = %err, "transient Graph failure; the message will be redelivered");
        return retry(Some(event), RetryCause::Transient, None);
    }
    let wait = err
        .retry_after()
        .unwrap_or(Duration::from_secs(60))
        .min(MAX_DELAY);
    let delay = match message.receipt_handle {
        Some(handle) => match queue.delay(handle, wait).await {
            Ok(()) => Some(wait),
            Err(e) => {
                tracing::warn!(error = %e, "could not delay a rate-limited message; it comes back after the queue's visibility timeout");
                None
            }
        },
        None => None,
    };
    tracing::warn!(class = %class, code = ?err.code, delay_s = wait.as_secs(), "rate limited; the message is parked");
    retry(Some(event), RetryCause::RateLimited, delay)
}

async fn dead_letter<C: QueueControl>(
    queue: &C,
    message: &QueuedMessage<'_>,
    event: Option<&LeadEvent>,
    reason: DeadLetterReason,
) -> Disposition {
    match queue.dead_letter(message.body, &reason).await {
        Ok(()) => {
            tracing::warn!(message_id = message.message_id, leadgen_id = event.map(|e| e.leadgen_id.as_str()), class = %reason.class, detail = %reason.detail, "message dead-lettered");
            Disposition::DeadLettered {
                lead_id: event.map(|e| e.leadgen_id.clone()),
                class: reason.class,
            }
        }
        Err(err) => {
            tracing::error!(message_id = message.message_id, error = %err, "could not dead-letter the message; it will be redelivered");
            retry(event, RetryCause::DeadLetterUnavailable, None)
        }
    }
}
