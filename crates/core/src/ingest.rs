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
use crate::forms::{FormLookup, FormRef};
use crate::ids::is_graph_id;
use crate::ports::{
    DeadLetterClass, DeadLetterReason, LeadFetcher, LeadSourceKind, LeadStore, PutOutcome,
    QueueControl, StoredLead,
};
use crate::readable::Readable;
use crate::tokens::TokenRefresh;
use leadpipe_graph::{ErrorClass, GraphError, Lead};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;
use time::OffsetDateTime;

/// SQS allows at most 12 hours of invisibility.
const MAX_DELAY: Duration = Duration::from_secs(12 * 60 * 60);

/// One message of an SQS batch, as the use case reads it.
#[derive(Debug, Clone, Copy)]
pub struct QueuedMessage<'a> {
    /// SQS's message id (what a batch failure names).
    pub message_id: &'a str,
    /// What delays the message; absent where the queue has none.
    pub receipt_handle: Option<&'a str>,
    /// The queue message body.
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
    /// Stored; `new` for the one message that stored it first.
    Stored {
        /// The lead.
        lead_id: String,
        /// Whether this message's lead was inserted by this batch (counted once).
        new: bool,
    },
    /// Sent to the dead-letter queue with this class.
    DeadLettered {
        /// The lead, when the body named one.
        lead_id: Option<String>,
        /// The reason class it carries.
        class: DeadLetterClass,
    },
    /// Left on the queue to come back; `delay` when its visibility was pushed out.
    Retry {
        /// The lead, when the body named one.
        lead_id: Option<String>,
        /// Why it is retried.
        cause: RetryCause,
        /// How long it was made invisible, when it was.
        delay: Option<Duration>,
    },
}

/// The outcome of a batch, message by message, in the order received.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngestReport {
    /// `(message id, disposition)` for each message.
    pub outcomes: Vec<(String, Disposition)>,
    /// Speed to lead of each lead this batch stored first.
    pub latencies: Vec<LeadLatency>,
}

/// How long a lead took to reach the store: what a sales team feels (the first minutes
/// decide whether a lead is reached). Milliseconds, never negative.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeadLatency {
    /// From Meta's `created_time` to stored.
    pub since_created_ms: u64,
    /// From the webhook's receipt (`received_at`) to stored.
    pub since_received_ms: u64,
}

fn millis_between(earlier: OffsetDateTime, later: OffsetDateTime) -> u64 {
    u64::try_from((later - earlier).whole_milliseconds()).unwrap_or(0)
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

    /// Messages sent to the dead-letter queue.
    pub fn dead_lettered(&self) -> usize {
        self.count(|d| matches!(d, Disposition::DeadLettered { .. }))
    }

    /// Messages left for SQS to deliver again.
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
                    DeadLetterClass::Malformed
                    | DeadLetterClass::TooLarge
                    | DeadLetterClass::Exhausted
                    | DeadLetterClass::Refused
                    | DeadLetterClass::UnknownLead
                    | DeadLetterClass::BeforeLead
                    | DeadLetterClass::Expired => None,
                },
                Disposition::Stored { .. } => None,
            };
            if let Some(class) = class {
                *by_class.entry(class.as_str()).or_insert(0) += 1;
            }
        }
        by_class
    }

    /// The batch's counts, for the edge to turn into metrics (with [`Self::graph_errors`]
    /// by class).
    pub fn metrics(&self) -> [(&'static str, u64); 5] {
        [
            ("LeadsStored", self.stored_new() as u64),
            ("DuplicatesSkipped", self.duplicates() as u64),
            ("MessagesDeadLettered", self.dead_lettered() as u64),
            ("MessagesRetried", self.retried() as u64),
            ("BatchesFullyFailed", u64::from(self.fully_failed())),
        ]
    }
}

enum Judgement {
    Pending(LeadEvent),
    Done(Disposition),
}

/// Ingests one batch. Never fails as a whole: every message gets a [`Disposition`].
///
/// Each stored lead is read against its form (`forms`: the catalog, one Graph read per new
/// form per process); a form that cannot be read leaves the lead readable by key only.
///
/// A page whose reads are refused for a token or permission reason makes `tokens` read the
/// secret again (`crate::tokens`: at most once a minute, shared); when it did, that page's
/// leads are read once more with what the secret now holds, and only what still fails is
/// dead-lettered.
pub async fn ingest_batch<F, S, C, K, T>(
    fetcher: &F,
    store: &S,
    forms: &K,
    tokens: &T,
    queue: &C,
    messages: &[QueuedMessage<'_>],
    now: OffsetDateTime,
) -> IngestReport
where
    F: LeadFetcher,
    S: LeadStore,
    C: QueueControl,
    K: FormLookup,
    T: TokenRefresh,
{
    let judgements = parse_messages(queue, messages).await;
    let seen = tokens.generation();
    let mut fetched = fetch_by_page(fetcher, &judgements, None).await;
    let refused = refused_pages(&fetched);
    if !refused.is_empty() && tokens.refresh(seen).await {
        let again = fetch_by_page(fetcher, &judgements, Some(&refused)).await;
        for page in &refused {
            fetched.page_failures.remove(page);
            fetched.results.retain(|(p, _), _| p != page);
        }
        fetched.results.extend(again.results);
        fetched.page_failures.extend(again.page_failures);
    }
    for (page_id, err) in &fetched.page_failures {
        if err.class() == ErrorClass::Token {
            tracing::error!(page_id = %page_id, code = ?err.code, subcode = ?err.subcode, error = %err,
                "ACCESS TOKEN REFUSED for this page: leads cannot be read until a new token is put in the secret");
            fetched.token_pages_logged.insert(page_id.clone());
        }
    }
    let stored = store_read_leads(store, forms, &judgements, &fetched.results, now).await;

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
                match (
                    fetched.results.get(&key),
                    fetched.page_failures.get(&event.page_id),
                ) {
                    (Some(Ok(lead)), _) => match &stored {
                        Ok(outcomes) => match outcomes.get(&event.leadgen_id) {
                            Some(PutOutcome::Inserted) => {
                                // Count what the store did: one new lead, however many
                                // messages of this batch carried it.
                                let new = counted_new.insert(event.leadgen_id.clone());
                                if new {
                                    report.latencies.push(LeadLatency {
                                        since_created_ms: millis_between(lead.created_time, now),
                                        since_received_ms: millis_between(event.received_at, now),
                                    });
                                }
                                Disposition::Stored {
                                    lead_id: event.leadgen_id.clone(),
                                    new,
                                }
                            }
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
                            && fetched.token_pages_logged.insert(event.page_id.clone())
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
            "every message of the batch failed; the queue delivers them again (BatchesFullyFailed)"
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
    report
}

/// Step 1: each body parsed on its own; ids that are not Graph ids fail their message alone
/// (dead-lettered `malformed` at once).
async fn parse_messages<C: QueueControl>(
    queue: &C,
    messages: &[QueuedMessage<'_>],
) -> Vec<Judgement> {
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
    judgements
}

/// What step 2 read: each `(page, lead)`'s result, and the pages whose whole call failed.
struct Fetched {
    results: HashMap<(String, String), Result<Lead, GraphError>>,
    page_failures: HashMap<String, GraphError>,
    /// Pages whose refused token was logged already (once per page per batch).
    token_pages_logged: BTreeSet<String>,
}

/// The pages whose reads were refused for a reason a new token or a grant can fix.
fn refused_pages(fetched: &Fetched) -> BTreeSet<String> {
    let heals =
        |err: &GraphError| matches!(err.class(), ErrorClass::Token | ErrorClass::Permission);
    let mut pages: BTreeSet<String> = fetched
        .page_failures
        .iter()
        .filter(|(_, err)| heals(err))
        .map(|(page, _)| page.clone())
        .collect();
    pages.extend(
        fetched
            .results
            .iter()
            .filter(|(_, result)| result.as_ref().is_err_and(heals))
            .map(|((page, _), _)| page.clone()),
    );
    pages
}

/// Step 2: the leads read per page (the page decides the token), each distinct lead once,
/// the pages at once; `only` these pages when given (the retry after a re-read).
async fn fetch_by_page<F: LeadFetcher>(
    fetcher: &F,
    judgements: &[Judgement],
    only: Option<&BTreeSet<String>>,
) -> Fetched {
    let mut by_page: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for judgement in judgements {
        if let Judgement::Pending(event) = judgement
            && only.is_none_or(|pages| pages.contains(&event.page_id))
        {
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
    let mut fetched = Fetched {
        results: HashMap::new(),
        page_failures: HashMap::new(),
        token_pages_logged: BTreeSet::new(),
    };
    for (page_id, outcome) in futures::future::join_all(fetches).await {
        match outcome {
            Ok(items) => {
                for item in items {
                    fetched
                        .results
                        .insert((page_id.to_owned(), item.lead_id), item.result);
                }
            }
            Err(err) => {
                fetched.page_failures.insert(page_id.to_owned(), err);
            }
        }
    }
    fetched
}

/// Step 3: every lead that was read, stored once (one store call for the batch). The
/// store's answer per lead id, or why the whole write failed.
async fn store_read_leads<S: LeadStore, K: FormLookup>(
    store: &S,
    forms: &K,
    judgements: &[Judgement],
    results: &HashMap<(String, String), Result<Lead, GraphError>>,
    now: OffsetDateTime,
) -> Result<HashMap<String, PutOutcome>, String> {
    let mut to_store: Vec<StoredLead> = Vec::new();
    let mut seen = BTreeSet::new();
    for judgement in judgements {
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
                readable: Readable::default(),
            });
        }
    }
    if to_store.is_empty() {
        return Ok(HashMap::new());
    }
    let wanted: Vec<FormRef> = to_store
        .iter()
        .filter_map(|s| {
            s.form_id.as_ref().map(|form_id| FormRef {
                page_id: s.page_id.clone(),
                form_id: form_id.clone(),
            })
        })
        .collect();
    let known = forms.forms(&wanted).await;
    for lead in &mut to_store {
        let form = lead.form_id.as_ref().and_then(|f| known.get(f));
        lead.readable = Readable::of(&lead.lead.field_data, form.map(|f| &**f));
    }
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

#[cfg(test)]
mod tests {
    //! Every disposition against in-memory ports: no AWS, no HTTP, a few milliseconds.
    use super::*;
    use crate::forms::FormCatalog;
    use crate::memory::{
        MemoryFetcher, MemoryFormReader, MemoryFormStore, MemoryLeadStore, MemoryQueueControl,
    };
    use leadpipe_graph::GraphError;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-11-30 05:00:00 UTC);

    fn lead(id: &str, form: Option<&str>) -> Lead {
        let form = form
            .map(|f| format!(r#","form_id":"{f}""#))
            .unwrap_or_default();
        Lead::from_json(&format!(
            r#"{{"id":"{id}","created_time":"2026-11-30T04:00:00+0000"{form},"field_data":[{{"name":"email","values":["p{id}@example.org"]}}]}}"#
        ))
        .unwrap()
    }

    fn body(lead_id: &str) -> String {
        format!(
            r#"{{"leadgen_id":"{lead_id}","page_id":"77","form_id":"9","created_time":1,"received_at":"2026-11-30T04:59:00Z"}}"#
        )
    }

    struct World {
        fetcher: MemoryFetcher,
        store: MemoryLeadStore,
        forms: FormCatalog<MemoryFormReader, MemoryFormStore>,
        queue: MemoryQueueControl,
    }

    fn graph_form(id: &str) -> leadpipe_graph::LeadgenForm {
        serde_json::from_value(serde_json::json!({
            "id": id, "name": format!("Form {id}"), "locale": "en_US",
            "questions": [{"key": "email", "label": "Your e-mail", "type": "EMAIL"}]
        }))
        .unwrap()
    }

    impl World {
        fn new() -> Self {
            Self {
                fetcher: MemoryFetcher::default(),
                store: MemoryLeadStore::new(),
                forms: FormCatalog::new(
                    MemoryFormReader::with_forms([graph_form("9")]),
                    MemoryFormStore::default(),
                ),
                queue: MemoryQueueControl::default(),
            }
        }

        async fn ingest(&self, bodies: &[String]) -> IngestReport {
            let ids: Vec<String> = (0..bodies.len()).map(|i| format!("m{i}")).collect();
            let messages: Vec<QueuedMessage<'_>> = bodies
                .iter()
                .zip(&ids)
                .map(|(body, id)| QueuedMessage {
                    message_id: id,
                    receipt_handle: Some(id),
                    body,
                })
                .collect();
            ingest_batch(
                &self.fetcher,
                &self.store,
                &self.forms,
                &crate::tokens::NoRefresh,
                &self.queue,
                &messages,
                NOW,
            )
            .await
        }

        fn dead_letter_classes(&self) -> Vec<DeadLetterClass> {
            self.queue
                .dead_letters
                .lock()
                .unwrap()
                .iter()
                .map(|(_, r)| r.class)
                .collect()
        }
    }

    fn graph_error(class: ErrorClass) -> GraphError {
        GraphError::local("GET /x".into(), class, "as the table says")
    }

    #[tokio::test]
    async fn every_graph_answer_has_its_disposition() {
        let world = World::new();
        world.fetcher.set("1", Ok(lead("1", Some("9"))));
        world
            .fetcher
            .set("2", Err(graph_error(ErrorClass::Transient)));
        world
            .fetcher
            .set("3", Err(graph_error(ErrorClass::RateLimited)));
        world.fetcher.set("4", Err(graph_error(ErrorClass::Token)));
        world
            .fetcher
            .set("5", Err(graph_error(ErrorClass::Permission)));
        // 6 is unknown to the fetcher: not found.
        world
            .fetcher
            .set("7", Err(graph_error(ErrorClass::BadRequest)));
        world
            .fetcher
            .set("8", Err(graph_error(ErrorClass::Unreadable)));
        let bodies: Vec<String> = (1..=8).map(|i| body(&i.to_string())).collect();
        let report = world.ingest(&bodies).await;
        let got: Vec<&Disposition> = report.outcomes.iter().map(|(_, d)| d).collect();
        let retry = |cause, delay| Disposition::Retry {
            lead_id: None,
            cause,
            delay,
        };
        let dead = |class| Disposition::DeadLettered {
            lead_id: None,
            class,
        };
        let strip = |d: &Disposition| match d.clone() {
            Disposition::Retry { cause, delay, .. } => retry(cause, delay),
            Disposition::DeadLettered { class, .. } => dead(class),
            stored => stored,
        };
        let got: Vec<Disposition> = got.into_iter().map(strip).collect();
        assert_eq!(
            got,
            [
                Disposition::Stored {
                    lead_id: "1".into(),
                    new: true
                },
                retry(RetryCause::Transient, None),
                retry(RetryCause::RateLimited, Some(Duration::from_secs(60))),
                dead(DeadLetterClass::Token),
                dead(DeadLetterClass::Permission),
                dead(DeadLetterClass::NotFound),
                dead(DeadLetterClass::BadRequest),
                dead(DeadLetterClass::Unreadable),
            ]
        );
        assert_eq!(report.failed_message_ids(), ["m1", "m2"]);
        assert_eq!(
            world.queue.delays.lock().unwrap().as_slice(),
            [("m2".to_owned(), Duration::from_secs(60))]
        );
        assert_eq!(world.store.len(), 1);
        assert!(!report.fully_failed());
    }

    #[tokio::test]
    async fn one_bad_id_dead_letters_alone_and_never_reaches_graph() {
        // Hardening item 2: one id Graph's client refused used to fail the whole page.
        let world = World::new();
        world.fetcher.set("10", Ok(lead("10", Some("9"))));
        world.fetcher.set("11", Ok(lead("11", Some("9"))));
        let report = world
            .ingest(&[
                body("10"),
                body("../me"),
                "not json".to_owned(),
                body("11"),
                r#"{"leadgen_id":"12","page_id":"7 7","received_at":"2026-11-30T04:59:00Z"}"#
                    .to_owned(),
            ])
            .await;
        assert_eq!(report.stored_new(), 2);
        assert_eq!(report.dead_lettered(), 3);
        assert_eq!(world.dead_letter_classes(), [DeadLetterClass::Malformed; 3]);
        let asked: Vec<String> = world
            .fetcher
            .calls
            .lock()
            .unwrap()
            .iter()
            .flat_map(|(_, ids)| ids.clone())
            .collect();
        assert_eq!(asked, ["10", "11"]);
    }

    #[tokio::test]
    async fn a_lead_repeated_in_one_batch_counts_as_stored_once() {
        // Hardening item 5: LeadsStored said 7 for 5 new items.
        let world = World::new();
        for id in ["1", "2", "3"] {
            world.fetcher.set(id, Ok(lead(id, Some("9"))));
        }
        world.ingest(&[body("3")]).await;
        let report = world
            .ingest(&[
                body("1"),
                body("1"),
                body("2"),
                body("1"),
                body("2"),
                body("3"),
            ])
            .await;
        assert_eq!(report.stored_new(), 2, "{report:?}");
        assert_eq!(report.duplicates(), 4);
        assert_eq!(world.store.len(), 3);
    }

    #[tokio::test]
    async fn speed_to_lead_is_measured_once_per_new_lead() {
        let world = World::new();
        world.fetcher.set("1", Ok(lead("1", Some("9"))));
        world.fetcher.set("2", Ok(lead("2", Some("9"))));
        world.ingest(&[body("2")]).await;
        let report = world.ingest(&[body("1"), body("1"), body("2")]).await;
        // Lead 1 is new (one latency for its two messages); lead 2 was stored already.
        assert_eq!(
            report.latencies,
            [LeadLatency {
                // created 04:00, stored at NOW 05:00; received 04:59.
                since_created_ms: 3_600_000,
                since_received_ms: 60_000,
            }]
        );
    }

    #[tokio::test]
    async fn a_batch_where_every_message_failed_says_so() {
        // Hardening item 6: a store outage looked like a healthy invocation.
        let world = World::new();
        world.fetcher.set("1", Ok(lead("1", Some("9"))));
        world.fetcher.set("2", Ok(lead("2", Some("9"))));
        world.store.set_failing(true);
        let report = world.ingest(&[body("1"), body("2")]).await;
        assert!(report.fully_failed());
        assert_eq!(report.failed_message_ids(), ["m0", "m1"]);
        world.store.set_failing(false);
        let report = world.ingest(&[body("1"), body("2")]).await;
        assert!(!report.fully_failed());
        assert!(
            !IngestReport::default().fully_failed(),
            "an empty batch is not a failure"
        );
    }

    #[tokio::test]
    async fn a_lead_too_large_for_the_store_is_dead_lettered_with_its_class() {
        let world = World::new();
        world.fetcher.set("1", Ok(lead("1", Some("9"))));
        world.fetcher.set("2", Ok(lead("2", Some("9"))));
        world.store.set_too_large(&["2"]);
        let report = world.ingest(&[body("1"), body("2")]).await;
        assert_eq!(report.stored_new(), 1);
        assert!(
            report.failed_message_ids().is_empty(),
            "not retried forever"
        );
        assert_eq!(world.dead_letter_classes(), [DeadLetterClass::TooLarge]);
        let detail = world.queue.dead_letters.lock().unwrap()[0].1.detail.clone();
        assert!(detail.contains("400 KB"), "{detail}");
    }

    #[tokio::test]
    async fn a_message_without_form_or_time_takes_them_from_graph() {
        let world = World::new();
        world.fetcher.set("1", Ok(lead("1", Some("9"))));
        world.fetcher.set("2", Ok(lead("2", None)));
        let bare = |id: &str| {
            format!(
                r#"{{"leadgen_id":"{id}","page_id":"77","received_at":"2026-11-30T04:59:00Z"}}"#
            )
        };
        let report = world.ingest(&[bare("1"), bare("2")]).await;
        assert_eq!(report.stored_new(), 2);
        assert_eq!(world.store.get("1").unwrap().form_id.as_deref(), Some("9"));
        assert_eq!(world.store.get("2").unwrap().form_id, None, "never \"\"");
        assert_eq!(
            world.store.get("1").unwrap().lead.created_time,
            datetime!(2026-11-30 04:00:00 UTC)
        );
    }

    #[tokio::test]
    async fn a_page_wide_failure_judges_each_message_by_its_class() {
        let world = World::new();
        world
            .fetcher
            .fail_every_call(Some(graph_error(ErrorClass::Token)));
        let report = world.ingest(&[body("1"), body("2")]).await;
        assert_eq!(report.dead_lettered(), 2);
        assert_eq!(world.dead_letter_classes(), [DeadLetterClass::Token; 2]);
        world
            .fetcher
            .fail_every_call(Some(graph_error(ErrorClass::Transient)));
        let report = world.ingest(&[body("1")]).await;
        assert!(report.fully_failed());
    }

    #[tokio::test]
    async fn each_lead_is_stored_readable_and_graph_is_asked_once_per_form() {
        let world = World::new();
        let mut bodies = Vec::new();
        for i in 0..30 {
            let id = format!("{}", 500 + i);
            // Form 9 is known to Graph; form 8 is not (its leads keep answers by key).
            let form = if i % 3 == 0 { "8" } else { "9" };
            world.fetcher.set(&id, Ok(lead(&id, Some(form))));
            bodies.push(body(&id));
            if bodies.len() == 10 {
                let report = world.ingest(&bodies).await;
                assert_eq!(report.stored_new(), 10);
                bodies.clear();
            }
        }
        assert_eq!(
            world.forms.graph_reads(),
            2,
            "one read per new form, however many leads and batches"
        );
        let known = world.store.get("501").unwrap();
        assert_eq!(known.readable.form_name.as_deref(), Some("Form 9"));
        assert_eq!(known.readable.answers[0].label, "Your e-mail");
        assert_eq!(
            known.readable.contact.email.as_deref(),
            Some("p501@example.org")
        );
        let unknown = world.store.get("500").unwrap();
        assert_eq!(unknown.readable.form_name, None);
        assert_eq!(unknown.readable.answers[0].label, "email", "by key");
        assert_eq!(
            unknown.readable.contact.email.as_deref(),
            Some("p500@example.org"),
            "the contact still comes from Meta's standard keys"
        );
    }

    /// Graph as the book's token for page 77 makes it: `old` is refused (190/460, the
    /// password changed), any other reads the leads.
    struct TokenGraph {
        book: crate::tokens::TokenBook,
        inner: MemoryFetcher,
    }

    impl LeadFetcher for TokenGraph {
        async fn fetch(
            &self,
            page_id: &str,
            lead_ids: &[String],
        ) -> Result<Vec<crate::ports::FetchedLead>, GraphError> {
            use secrecy::ExposeSecret;
            let secrets = self.book.current();
            let token = secrets
                .page_tokens
                .get(page_id)
                .map(|t| t.expose_secret().to_owned());
            if token.as_deref() != Some("new") {
                return Err(GraphError::local(
                    format!("POST / (page {page_id})"),
                    ErrorClass::Token,
                    "Error validating access token: The session has been invalidated because the user changed their password",
                ));
            }
            self.inner.fetch(page_id, lead_ids).await
        }
    }

    /// The secret's store: what `connect` last wrote there.
    struct SecretStore(std::sync::Mutex<&'static str>);

    impl crate::tokens::SecretsLoader for std::sync::Arc<SecretStore> {
        async fn load(&self) -> Result<crate::secrets::AppSecrets, crate::secrets::SecretsError> {
            Ok(secrets_with(*self.0.lock().unwrap()))
        }
    }

    fn secrets_with(token: &str) -> crate::secrets::AppSecrets {
        crate::secrets::AppSecrets {
            app_secret: secrecy::SecretString::from("s"),
            verify_token: None,
            access_token: None,
            page_tokens: [("77".to_owned(), secrecy::SecretString::from(token))].into(),
            lookup_key: None,
            conversions_token: None,
            stage_keys: Vec::new(),
            destinations: Default::default(),
            destinations_file: None,
        }
    }

    #[tokio::test]
    async fn a_refused_token_makes_the_secret_read_again_before_anything_is_dead_lettered() {
        use crate::tokens::{SecretsRefresher, TokenBook};
        let book = TokenBook::new(secrets_with("old"));
        let graph = TokenGraph {
            book: book.clone(),
            inner: MemoryFetcher::default(),
        };
        for id in ["801", "802", "803"] {
            graph.inner.set(id, Ok(lead(id, Some("9"))));
        }
        // `connect` has put a new token in the secret; this warm process still holds the old.
        let store = std::sync::Arc::new(SecretStore(std::sync::Mutex::new("new")));
        let refresher = SecretsRefresher::new(store.clone(), book.clone());
        let world = World::new();
        // A batch through this Graph and this refresher (the world's other ports).
        let ingest = |bodies: Vec<String>| {
            let (graph, world, refresher) = (&graph, &world, &refresher);
            async move {
                let ids: Vec<String> = (0..bodies.len()).map(|i| format!("m{i}")).collect();
                let messages: Vec<QueuedMessage<'_>> = bodies
                    .iter()
                    .zip(&ids)
                    .map(|(body, id)| QueuedMessage {
                        message_id: id,
                        receipt_handle: Some(id),
                        body,
                    })
                    .collect();
                ingest_batch(
                    graph,
                    &world.store,
                    &world.forms,
                    refresher,
                    &world.queue,
                    &messages,
                    NOW,
                )
                .await
            }
        };
        let report = ingest(vec![body("801"), body("802")]).await;
        assert_eq!(
            report.stored_new(),
            2,
            "healed without a restart: {report:?}"
        );
        assert_eq!(report.dead_lettered(), 0);
        assert_eq!(refresher.reads(), 1);

        // The token dies again and nobody has fixed it: within the minute the secret is not
        // read again, and the lead is dead-lettered `token` at once.
        book.replace(secrets_with("old"));
        *store.0.lock().unwrap() = "old";
        let report = ingest(vec![body("803")]).await;
        assert_eq!(report.dead_lettered(), 1);
        assert_eq!(world.dead_letter_classes(), [DeadLetterClass::Token]);
        assert_eq!(refresher.reads(), 1, "at most one read a minute");
    }
}
