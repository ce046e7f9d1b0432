//! In-memory adapters, for unit tests and benchmarks of the use cases.

use crate::event::LeadEvent;
use crate::ports::{EventQueue, QueueError, StoreError};
use std::sync::Mutex;

/// A queue that keeps events in a `Vec`, and can be told to fail.
#[derive(Debug, Default)]
pub struct MemoryQueue {
    events: Mutex<Vec<LeadEvent>>,
    failing: Mutex<bool>,
}

impl MemoryQueue {
    /// An empty queue.
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
    too_large: Mutex<std::collections::HashSet<String>>,
}

impl MemoryLeadStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every later write fail (or succeed again).
    pub fn set_failing(&self, failing: bool) {
        if let Ok(mut flag) = self.failing.lock() {
            *flag = failing;
        }
    }

    /// Makes these leads fail as the DynamoDB store fails a lead over 400 KB without raw.
    pub fn set_too_large(&self, lead_ids: &[&str]) {
        if let Ok(mut set) = self.too_large.lock() {
            set.extend(lead_ids.iter().map(|id| (*id).to_owned()));
        }
    }

    /// Leads stored.
    pub fn len(&self) -> usize {
        self.leads.lock().map(|l| l.len()).unwrap_or(0)
    }

    /// Whether no lead is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The stored lead with this id.
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
        let too_large = self
            .too_large
            .lock()
            .map_err(|_| StoreError::Unavailable("memory store poisoned".into()))?;
        Ok(leads
            .iter()
            .map(|lead| {
                if too_large.contains(&lead.lead.id) {
                    PutOutcome::TooLarge { bytes: 500_000 }
                } else if stored.contains_key(&lead.lead.id) {
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
    /// Every dead letter sent: `(body, reason)`.
    pub dead_letters: Mutex<Vec<(String, crate::ports::DeadLetterReason)>>,
    /// Every delay asked: `(receipt handle, delay)`.
    pub delays: Mutex<Vec<(String, std::time::Duration)>>,
    /// When set, dead-lettering fails (the DLQ unreachable).
    pub failing: Mutex<bool>,
}

impl crate::ports::QueueControl for MemoryQueueControl {
    async fn dead_letter(
        &self,
        body: &str,
        reason: &crate::ports::DeadLetterReason,
    ) -> Result<(), QueueError> {
        if self.failing.lock().map(|f| *f).unwrap_or(true) {
            return Err(QueueError::Unavailable("memory DLQ set to fail".into()));
        }
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

/// Graph as a map from lead id to what reading it gives; ids it does not hold are gone
/// (not found). Counts its calls.
#[derive(Debug, Default)]
pub struct MemoryFetcher {
    answers: Mutex<
        std::collections::HashMap<String, Result<leadpipe_graph::Lead, leadpipe_graph::GraphError>>,
    >,
    page_failure: Mutex<Option<leadpipe_graph::GraphError>>,
    /// `(page_id, ids asked)` of every call.
    pub calls: Mutex<Vec<(String, Vec<String>)>>,
}

impl MemoryFetcher {
    /// Reading `lead_id` gives `answer`.
    pub fn set(
        &self,
        lead_id: &str,
        answer: Result<leadpipe_graph::Lead, leadpipe_graph::GraphError>,
    ) {
        if let Ok(mut answers) = self.answers.lock() {
            answers.insert(lead_id.to_owned(), answer);
        }
    }

    /// Every call fails as a whole with `error` (or works again with `None`).
    pub fn fail_every_call(&self, error: Option<leadpipe_graph::GraphError>) {
        if let Ok(mut failure) = self.page_failure.lock() {
            *failure = error;
        }
    }
}

impl crate::ports::LeadFetcher for MemoryFetcher {
    async fn fetch(
        &self,
        page_id: &str,
        lead_ids: &[String],
    ) -> Result<Vec<crate::ports::FetchedLead>, leadpipe_graph::GraphError> {
        use crate::ports::FetchedLead;
        use leadpipe_graph::{ErrorClass, GraphError};
        if let Ok(mut calls) = self.calls.lock() {
            calls.push((page_id.to_owned(), lead_ids.to_vec()));
        }
        if let Some(err) = self.page_failure.lock().ok().and_then(|f| f.clone()) {
            return Err(err);
        }
        let answers = self
            .answers
            .lock()
            .map_err(|_| GraphError::local("memory".into(), ErrorClass::Transient, "poisoned"))?;
        Ok(lead_ids
            .iter()
            .map(|id| FetchedLead {
                lead_id: id.clone(),
                result: answers.get(id).cloned().unwrap_or_else(|| {
                    Err(GraphError::local(
                        format!("GET /{id}"),
                        ErrorClass::NotFound,
                        "no such lead",
                    ))
                }),
            })
            .collect())
    }
}

/// The state table in a map, with the real stores' rule: a checkpoint never moves back.
#[derive(Debug, Default)]
pub struct MemoryCheckpoints {
    checkpoints: Mutex<std::collections::HashMap<String, i64>>,
}

impl MemoryCheckpoints {
    /// The checkpoint under `key`.
    pub fn get(&self, key: &str) -> Option<i64> {
        self.checkpoints
            .lock()
            .ok()
            .and_then(|c| c.get(key).copied())
    }
}

impl crate::ports::CheckpointStore for MemoryCheckpoints {
    async fn checkpoint(&self, key: &str) -> Result<Option<i64>, crate::ports::StoreError> {
        Ok(self.get(key))
    }

    async fn save_checkpoint(
        &self,
        key: &str,
        checkpoint: i64,
        _facts: &crate::ports::RunFacts,
    ) -> Result<(), crate::ports::StoreError> {
        let mut all = self
            .checkpoints
            .lock()
            .map_err(|_| crate::ports::StoreError::Unavailable("poisoned".into()))?;
        let slot = all.entry(key.to_owned()).or_insert(checkpoint);
        *slot = (*slot).max(checkpoint);
        Ok(())
    }
}

/// Graph as backfill sees it, in memory: per page its lead access and forms, per form or
/// ad its leads (filtered by the query's `time_created` clauses, one page per query), its
/// unreadable items, or an error.
#[derive(Debug, Default)]
pub struct MemoryBackfillSource {
    /// page id -> lead access (Err: that error), forms.
    pub pages: std::collections::BTreeMap<
        String,
        (
            Result<leadpipe_graph::HasLeadAccess, leadpipe_graph::GraphError>,
            Vec<leadpipe_graph::LeadgenForm>,
        ),
    >,
    /// form or ad id -> its leads.
    pub leads: std::collections::BTreeMap<String, Vec<leadpipe_graph::Lead>>,
    /// form or ad id -> items Graph returned that do not parse, with the time whose slice
    /// returns them.
    pub unreadable: std::collections::BTreeMap<String, Vec<(i64, leadpipe_graph::ParseError)>>,
    /// form or ad id -> the error reading its leads gives.
    pub lead_errors: std::collections::BTreeMap<String, leadpipe_graph::GraphError>,
    /// form or ad ids whose every page says its next page is itself (a hostile Graph).
    pub looping: std::collections::BTreeSet<String>,
    /// Pages read after a first one.
    pub pages_after: std::sync::atomic::AtomicUsize,
    /// page id -> what `debug_token` says of its token (absent: valid, never expires).
    pub token_infos: std::collections::BTreeMap<
        String,
        Result<leadpipe_graph::TokenInfo, leadpipe_graph::GraphError>,
    >,
}

impl crate::ports::BackfillSource for MemoryBackfillSource {
    async fn token_info(
        &self,
        page_id: &str,
    ) -> Result<leadpipe_graph::TokenInfo, leadpipe_graph::GraphError> {
        match self.token_infos.get(page_id) {
            Some(info) => info.clone(),
            None => Ok(leadpipe_graph::TokenInfo {
                is_valid: true,
                ..Default::default()
            }),
        }
    }

    async fn lead_access(
        &self,
        page_id: &str,
    ) -> Result<leadpipe_graph::HasLeadAccess, leadpipe_graph::GraphError> {
        match self.pages.get(page_id) {
            Some((access, _)) => access.clone(),
            None => Err(leadpipe_graph::GraphError::local(
                format!("GET /{page_id}"),
                leadpipe_graph::ErrorClass::NotFound,
                "no such page",
            )),
        }
    }

    async fn forms(
        &self,
        page_id: &str,
    ) -> Result<Vec<leadpipe_graph::LeadgenForm>, leadpipe_graph::GraphError> {
        Ok(self
            .pages
            .get(page_id)
            .map(|(_, forms)| forms.clone())
            .unwrap_or_default())
    }

    async fn lead_page(
        &self,
        _page_id: &str,
        node_id: &str,
        window: &crate::ports::TimeWindow,
    ) -> Result<crate::ports::LeadPage, leadpipe_graph::GraphError> {
        if let Some(err) = self.lead_errors.get(node_id) {
            return Err(err.clone());
        }
        let within = |t: i64| (window.start..window.end).contains(&t);
        let leads = self
            .leads
            .get(node_id)
            .map(|leads| {
                leads
                    .iter()
                    .filter(|l| within(l.created_time.unix_timestamp()))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let unreadable = self
            .unreadable
            .get(node_id)
            .map(|bad| {
                bad.iter()
                    .filter(|(t, _)| within(*t))
                    .map(|(_, e)| e.clone())
                    .collect()
            })
            .unwrap_or_default();
        Ok(crate::ports::LeadPage {
            leads,
            unreadable,
            next: self
                .looping
                .contains(node_id)
                .then(|| crate::ports::PageCursor::new(format!("{node_id}/loop"))),
        })
    }

    async fn lead_page_after(
        &self,
        _page_id: &str,
        next: &crate::ports::PageCursor,
    ) -> Result<crate::ports::LeadPage, leadpipe_graph::GraphError> {
        self.pages_after
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(crate::ports::LeadPage {
            next: next.as_str().ends_with("/loop").then(|| next.clone()),
            ..crate::ports::LeadPage::default()
        })
    }
}

/// Graph's forms, by id; a form it does not hold is "does not exist" (code 100).
#[derive(Debug, Default)]
pub struct MemoryFormReader {
    forms: std::collections::HashMap<String, leadpipe_graph::LeadgenForm>,
    reads: std::sync::atomic::AtomicU64,
}

impl MemoryFormReader {
    /// A reader that knows these forms.
    pub fn with_forms(forms: impl IntoIterator<Item = leadpipe_graph::LeadgenForm>) -> Self {
        Self {
            forms: forms.into_iter().map(|f| (f.id.clone(), f)).collect(),
            reads: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Reads asked of it.
    pub fn reads(&self) -> u64 {
        self.reads.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl crate::forms::FormReader for MemoryFormReader {
    async fn read_form(
        &self,
        _page_id: &str,
        form_id: &str,
    ) -> Result<leadpipe_graph::LeadgenForm, leadpipe_graph::GraphError> {
        self.reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.forms.get(form_id).cloned().ok_or_else(|| {
            leadpipe_graph::GraphError::local(
                format!("GET /{form_id}"),
                leadpipe_graph::ErrorClass::NotFound,
                "Unsupported get request. Object does not exist",
            )
        })
    }
}

/// A catalog store in memory; clones share it (a second "process" over the same state).
#[derive(Debug, Clone, Default)]
pub struct MemoryFormStore {
    forms: std::sync::Arc<Mutex<std::collections::HashMap<String, crate::forms::Form>>>,
}

impl MemoryFormStore {
    /// Forms kept.
    pub fn len(&self) -> usize {
        self.forms.lock().map(|f| f.len()).unwrap_or(0)
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl crate::forms::FormStore for MemoryFormStore {
    async fn load_form(
        &self,
        form_id: &str,
    ) -> Result<Option<crate::forms::Form>, crate::ports::StoreError> {
        Ok(self.forms.lock().ok().and_then(|f| f.get(form_id).cloned()))
    }

    async fn save_forms(
        &self,
        forms: &[crate::forms::Form],
    ) -> Result<(), crate::ports::StoreError> {
        if let Ok(mut kept) = self.forms.lock() {
            for form in forms {
                kept.insert(form.id.clone(), form.clone());
            }
        }
        Ok(())
    }
}

/// The leads stages are checked against, by id.
#[derive(Debug, Default)]
pub struct MemoryStageLeads {
    leads: Mutex<std::collections::BTreeMap<String, crate::stages::StageLead>>,
}

impl MemoryStageLeads {
    /// Holds `lead`.
    pub fn insert(&self, lead_id: &str, lead: crate::stages::StageLead) {
        if let Ok(mut leads) = self.leads.lock() {
            leads.insert(lead_id.to_owned(), lead);
        }
    }
}

impl crate::stages::StageLeads for MemoryStageLeads {
    async fn stage_leads(
        &self,
        lead_ids: &[String],
    ) -> Result<
        std::collections::BTreeMap<String, crate::stages::StageLead>,
        crate::ports::StoreError,
    > {
        let leads = self.leads.lock().map_err(|_| {
            crate::ports::StoreError::Unavailable("memory stage leads poisoned".into())
        })?;
        Ok(lead_ids
            .iter()
            .filter_map(|id| leads.get(id).map(|l| (id.clone(), l.clone())))
            .collect())
    }
}

/// The stages sent, by event id.
#[derive(Debug, Default)]
pub struct MemoryStageLedger {
    sent: Mutex<std::collections::HashSet<String>>,
}

impl MemoryStageLedger {
    /// How many stages are recorded as sent.
    pub fn len(&self) -> usize {
        self.sent.lock().map(|s| s.len()).unwrap_or(0)
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl crate::stages::StageLedger for MemoryStageLedger {
    async fn already_sent(
        &self,
        event_ids: &[String],
    ) -> Result<std::collections::HashSet<String>, crate::ports::StoreError> {
        let sent = self
            .sent
            .lock()
            .map_err(|_| crate::ports::StoreError::Unavailable("memory ledger poisoned".into()))?;
        Ok(event_ids
            .iter()
            .filter(|id| sent.contains(*id))
            .cloned()
            .collect())
    }

    async fn record_sent(
        &self,
        stages: &[crate::stages::StageChange],
        _at: i64,
    ) -> Result<(), crate::ports::StoreError> {
        if let Ok(mut sent) = self.sent.lock() {
            sent.extend(stages.iter().map(crate::stages::StageChange::event_id));
        }
        Ok(())
    }
}

/// The Conversions API with Meta's whole-request rules (`../shared/reference/
/// conversions-api-crm.md`, section 4): one event older than 7 days, or one lead id Meta
/// does not know, fails the request and nothing in it is taken.
#[derive(Debug, Default)]
pub struct MemoryConversions {
    /// Lead ids Meta refuses.
    pub unknown_to_meta: Mutex<std::collections::HashSet<String>>,
    /// Requests to answer with this error before any is taken.
    pub fail_next: Mutex<Vec<leadpipe_graph::GraphError>>,
    /// The clock Meta checks the 7 days against.
    pub now: std::sync::atomic::AtomicI64,
    /// Events taken.
    pub taken: Mutex<Vec<crate::stages::ConversionEvent>>,
    /// Requests made.
    pub requests: std::sync::atomic::AtomicU64,
}

impl MemoryConversions {
    /// Events taken, cloned.
    pub fn taken(&self) -> Vec<crate::stages::ConversionEvent> {
        self.taken.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// Requests made.
    pub fn requests(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl crate::stages::ConversionsApi for MemoryConversions {
    async fn send(
        &self,
        events: &[crate::stages::ConversionEvent],
    ) -> Result<u64, leadpipe_graph::GraphError> {
        use leadpipe_graph::{ErrorClass, GraphError};
        self.requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let refuse = |code: i64, sub: Option<i64>, class: ErrorClass, message: &str| GraphError {
            code: Some(code),
            subcode: sub,
            status: Some(400),
            ..GraphError::local("POST /dataset/events".into(), class, message)
        };
        if let Some(error) = self.fail_next.lock().ok().and_then(|mut f| f.pop()) {
            return Err(error);
        }
        let now = self.now.load(std::sync::atomic::Ordering::Relaxed);
        let unknown = self
            .unknown_to_meta
            .lock()
            .map(|u| u.clone())
            .unwrap_or_default();
        for event in events {
            if now - event.event_time > crate::stages::MAX_AGE_SECONDS {
                return Err(refuse(
                    100,
                    Some(2_804_003),
                    ErrorClass::BadRequest,
                    "Event Timestamp Too Old",
                ));
            }
            if unknown.contains(&event.user_data.lead_id) {
                return Err(refuse(
                    100,
                    None,
                    ErrorClass::BadRequest,
                    "Invalid parameter: lead_id",
                ));
            }
        }
        if let Ok(mut taken) = self.taken.lock() {
            taken.extend(events.iter().cloned());
        }
        Ok(events.len() as u64)
    }
}

/// Stored leads for `export`'s rule: filtered as the stores filter, and made to fail on
/// demand.
#[derive(Debug, Default)]
pub struct MemoryLeadScan {
    rows: Vec<crate::lead_row::LeadRow>,
    forms: Vec<crate::forms::Form>,
    failing: std::sync::atomic::AtomicBool,
    field_name_reads: std::sync::atomic::AtomicUsize,
}

impl MemoryLeadScan {
    /// These rows, in this order, and no forms.
    pub fn new(rows: Vec<crate::lead_row::LeadRow>) -> Self {
        Self {
            rows,
            ..Default::default()
        }
    }

    /// From now on every read fails as an unreachable store.
    pub fn fail(&self) {
        self.failing
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// How many field-name passes were read.
    pub fn field_name_reads(&self) -> usize {
        self.field_name_reads
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Unavailable("the scan is down".into()));
        }
        Ok(())
    }

    fn selected<'a>(
        &'a self,
        filter: &'a crate::lead_row::LeadFilter,
    ) -> impl Iterator<Item = &'a crate::lead_row::LeadRow> {
        self.rows.iter().filter(move |r| {
            filter
                .form_id
                .as_ref()
                .is_none_or(|f| r.form_id.as_ref() == Some(f))
                && filter.since.as_ref().is_none_or(|s| &r.created_time >= s)
                && filter.until.as_ref().is_none_or(|u| &r.created_time < u)
        })
    }
}

impl crate::export::LeadScan for MemoryLeadScan {
    async fn field_names(
        &self,
        filter: &crate::lead_row::LeadFilter,
    ) -> Result<std::collections::BTreeSet<String>, StoreError> {
        self.check()?;
        self.field_name_reads
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(self
            .selected(filter)
            .flat_map(|r| r.fields.keys().cloned())
            .collect())
    }

    async fn catalog(&self) -> Result<Vec<crate::forms::Form>, StoreError> {
        self.check()?;
        Ok(self.forms.clone())
    }

    async fn each_lead<E: From<StoreError> + Send>(
        &self,
        filter: &crate::lead_row::LeadFilter,
        mut each: impl FnMut(crate::lead_row::LeadRow) -> Result<(), E> + Send,
    ) -> Result<usize, E> {
        self.check()?;
        let mut seen = 0;
        for row in self.selected(filter) {
            seen += 1;
            each(row.clone())?;
        }
        Ok(seen)
    }
}

/// Dead letters in three piles, for `redrive`'s rule: what was moved back is kept apart, a
/// pile can fail whole, or refuse each move.
#[derive(Debug, Default)]
pub struct MemoryDeadLetters {
    piles: Mutex<std::collections::HashMap<PileKey, MemoryPile>>,
}

type PileKey = &'static str;

#[derive(Debug, Default)]
struct MemoryPile {
    waiting: Vec<(Option<crate::dead_letter::DeadLetterClass>, String)>,
    back: Vec<String>,
    asked: usize,
    failing: bool,
    refusing: bool,
}

impl MemoryDeadLetters {
    fn with<T>(
        &self,
        pile: crate::redrive::Pile,
        f: impl FnOnce(&mut MemoryPile) -> T,
    ) -> Option<T> {
        self.piles
            .lock()
            .ok()
            .map(|mut piles| f(piles.entry(pile.as_str()).or_default()))
    }

    /// A dead letter of `class` (`None`: one this build does not know) in `pile`.
    pub fn add(
        &self,
        pile: crate::redrive::Pile,
        class: Option<crate::dead_letter::DeadLetterClass>,
        body: &str,
    ) {
        self.with(pile, |p| p.waiting.push((class, body.to_owned())));
    }

    /// The bodies moved back from `pile`, in order.
    pub fn back(&self, pile: crate::redrive::Pile) -> Vec<String> {
        self.with(pile, |p| p.back.clone()).unwrap_or_default()
    }

    /// How many dead letters wait in `pile`.
    pub fn waiting(&self, pile: crate::redrive::Pile) -> usize {
        self.with(pile, |p| p.waiting.len()).unwrap_or_default()
    }

    /// How often `pile` was asked to move.
    pub fn asked(&self, pile: crate::redrive::Pile) -> usize {
        self.with(pile, |p| p.asked).unwrap_or_default()
    }

    /// Every later move of `pile` fails whole.
    pub fn fail(&self, pile: crate::redrive::Pile) {
        self.with(pile, |p| p.failing = true);
    }

    /// Every later move of a dead letter of `pile` fails, each staying where it is.
    pub fn refuse_moves(&self, pile: crate::redrive::Pile) {
        self.with(pile, |p| p.refusing = true);
    }
}

impl crate::redrive::DeadLetterPiles for MemoryDeadLetters {
    async fn move_back(
        &self,
        pile: crate::redrive::Pile,
        pick: &crate::redrive::Pick<'_>,
        dry_run: bool,
    ) -> Result<crate::redrive::Moved, crate::failure::Cause> {
        self.with(pile, |p| {
            p.asked += 1;
            if p.failing {
                return Err("the pile is down".into());
            }
            let mut moved = crate::redrive::Moved::default();
            let mut stay = Vec::new();
            for (class, body) in std::mem::take(&mut p.waiting) {
                if !pick.picks(class, &body) {
                    moved.left += 1;
                    stay.push((class, body));
                } else if dry_run {
                    moved.moved += 1;
                    stay.push((class, body));
                } else if p.refusing {
                    moved.failed += 1;
                    moved.left += 1;
                    stay.push((class, body));
                } else {
                    moved.moved += 1;
                    p.back.push(body);
                }
            }
            p.waiting = stay;
            Ok(moved)
        })
        .unwrap_or_else(|| Err("the piles are poisoned".into()))
    }
}

/// A leasing queue with its dead letters, by the same rules as the SQLite file's.
#[derive(Debug, Default)]
pub struct MemoryLeaseQueue {
    state: Mutex<LeaseState>,
}

#[derive(Debug, Default)]
struct LeaseState {
    next_id: u64,
    /// `(id, body, visible at, receives)`.
    messages: Vec<(u64, String, std::time::Instant, u32)>,
    /// `(class, body)`.
    dead: Vec<(crate::dead_letter::DeadLetterClass, String)>,
}

impl MemoryLeaseQueue {
    fn state(&self) -> Result<std::sync::MutexGuard<'_, LeaseState>, QueueError> {
        self.state
            .lock()
            .map_err(|_| QueueError::Unavailable("memory queue poisoned".into()))
    }
}

impl LeaseState {
    fn push(&mut self, body: String) {
        self.next_id += 1;
        let id = self.next_id;
        self.messages.push((id, body, std::time::Instant::now(), 0));
    }
}

impl crate::ports::LeaseQueue for MemoryLeaseQueue {
    async fn send(&self, bodies: &[String]) -> Result<(), QueueError> {
        let mut state = self.state()?;
        for body in bodies {
            state.push(body.clone());
        }
        Ok(())
    }

    async fn lease(
        &self,
        max: usize,
        visibility: std::time::Duration,
        max_receives: u32,
    ) -> Result<Vec<crate::ports::LeasedMessage>, QueueError> {
        let now = std::time::Instant::now();
        let mut state = self.state()?;
        let (spent, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut state.messages)
            .into_iter()
            .partition(|(_, _, visible, receives)| *visible <= now && *receives >= max_receives);
        state.messages = kept;
        for (_, body, _, _) in spent {
            state
                .dead
                .push((crate::dead_letter::DeadLetterClass::Exhausted, body));
        }
        let mut leased = Vec::new();
        for (id, body, visible, receives) in state.messages.iter_mut() {
            if leased.len() == max || *visible > now {
                continue;
            }
            *visible = now + visibility;
            *receives += 1;
            leased.push(crate::ports::LeasedMessage {
                receipt: id.to_string(),
                body: body.clone(),
                receive_count: *receives,
            });
        }
        Ok(leased)
    }

    async fn ack(&self, receipts: &[String]) -> Result<(), QueueError> {
        let mut state = self.state()?;
        state
            .messages
            .retain(|(id, ..)| !receipts.contains(&id.to_string()));
        Ok(())
    }
}

impl crate::redrive::DeadLetterPiles for MemoryLeaseQueue {
    async fn move_back(
        &self,
        pile: crate::redrive::Pile,
        pick: &crate::redrive::Pick<'_>,
        dry_run: bool,
    ) -> Result<crate::redrive::Moved, crate::failure::Cause> {
        let mut moved = crate::redrive::Moved::default();
        if pile != crate::redrive::Pile::Leads {
            return Ok(moved);
        }
        let mut state = self.state().map_err(crate::failure::Cause::from_error)?;
        for (class, body) in std::mem::take(&mut state.dead) {
            if !pick.picks(Some(class), &body) {
                moved.left += 1;
                state.dead.push((class, body));
            } else if dry_run {
                moved.moved += 1;
                state.dead.push((class, body));
            } else {
                moved.moved += 1;
                state.push(body);
            }
        }
        Ok(moved)
    }
}

/// Per destination and lead, the forwarder's states, on a clock the test gives.
#[derive(Debug, Default)]
pub struct MemoryDeliveries {
    state: Mutex<DeliveriesState>,
}

#[derive(Debug, Default)]
struct DeliveriesState {
    /// `(destination, lead id)` → entry, in queueing order.
    entries: Vec<((String, String), DeliveryEntry)>,
    pauses: std::collections::HashMap<String, i64>,
}

#[derive(Debug)]
struct DeliveryEntry {
    lead: crate::lead_received::LeadReceived,
    queued_at_ms: i64,
    leased_until: i64,
    state: crate::destinations::DeliveryState,
}

impl MemoryDeliveries {
    fn with<T>(&self, f: impl FnOnce(&mut DeliveriesState) -> T) -> Option<T> {
        self.state.lock().ok().map(|mut s| f(&mut s))
    }

    fn entry<'a>(
        state: &'a mut DeliveriesState,
        destination: &str,
        lead_id: &str,
    ) -> Option<&'a mut DeliveryEntry> {
        state
            .entries
            .iter_mut()
            .find(|((d, l), _)| d == destination && l == lead_id)
            .map(|(_, e)| e)
    }

    /// Queues `leads` for `destination` at `now_ms` (again, for a replay: a fresh start).
    pub fn queue(
        &self,
        destination: &crate::destinations::DestinationName,
        leads: &[crate::lead_received::LeadReceived],
        now_ms: i64,
    ) {
        self.with(|state| {
            for lead in leads {
                let fresh = DeliveryEntry {
                    lead: lead.clone(),
                    queued_at_ms: now_ms,
                    leased_until: 0,
                    state: crate::destinations::DeliveryState::Pending {
                        attempts: 0,
                        at_ms: now_ms,
                        reason: None,
                    },
                };
                match Self::entry(state, destination.as_str(), &lead.lead_id) {
                    Some(entry) => *entry = fresh,
                    None => state
                        .entries
                        .push(((destination.to_string(), lead.lead_id.clone()), fresh)),
                }
            }
        });
    }

    /// `(attempts, due at)` of a pending lead.
    pub fn pending(
        &self,
        destination: &crate::destinations::DestinationName,
        lead_id: &str,
    ) -> Option<(u32, i64)> {
        self.with(
            |state| match Self::entry(state, destination.as_str(), lead_id) {
                Some(DeliveryEntry {
                    state:
                        crate::destinations::DeliveryState::Pending {
                            attempts, at_ms, ..
                        },
                    ..
                }) => Some((*attempts, *at_ms)),
                _ => None,
            },
        )
        .flatten()
    }

    /// `(class, reason)` of a dead lead.
    pub fn dead(
        &self,
        destination: &crate::destinations::DestinationName,
        lead_id: &str,
    ) -> Option<(crate::dead_letter::DeadLetterClass, String)> {
        self.with(
            |state| match Self::entry(state, destination.as_str(), lead_id) {
                Some(DeliveryEntry {
                    state: crate::destinations::DeliveryState::Dead { class, reason },
                    ..
                }) => Some((*class, reason.clone())),
                _ => None,
            },
        )
        .flatten()
    }

    /// The leads delivered to `destination`.
    pub fn delivered(&self, destination: &crate::destinations::DestinationName) -> Vec<String> {
        self.with(|state| {
            state
                .entries
                .iter()
                .filter(|((d, _), e)| {
                    d == destination.as_str()
                        && matches!(e.state, crate::destinations::DeliveryState::Delivered(_))
                })
                .map(|((_, l), _)| l.clone())
                .collect()
        })
        .unwrap_or_default()
    }
}

impl crate::destinations::DeliveryLedger for MemoryDeliveries {
    async fn due(
        &self,
        destination: &crate::destinations::DestinationName,
        now_ms: i64,
        max: usize,
        lease: std::time::Duration,
    ) -> Result<Vec<crate::destinations::Due>, StoreError> {
        let lease = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        self.with(|state| {
            let mut due = Vec::new();
            for ((d, _), entry) in state.entries.iter_mut() {
                if due.len() == max || d != destination.as_str() || entry.leased_until > now_ms {
                    continue;
                }
                if let crate::destinations::DeliveryState::Pending {
                    attempts, at_ms, ..
                } = entry.state
                    && at_ms <= now_ms
                {
                    entry.leased_until = now_ms.saturating_add(lease);
                    due.push(crate::destinations::Due {
                        lead: entry.lead.clone(),
                        attempts,
                        queued_at_ms: entry.queued_at_ms,
                    });
                }
            }
            due
        })
        .ok_or_else(|| crate::destinations::unavailable("the deliveries are poisoned"))
    }

    async fn record(
        &self,
        destination: &crate::destinations::DestinationName,
        states: &[(String, crate::destinations::DeliveryState)],
    ) -> Result<(), StoreError> {
        self.with(|state| {
            for (lead_id, new) in states {
                if let Some(entry) = Self::entry(state, destination.as_str(), lead_id) {
                    entry.state = new.clone();
                    entry.leased_until = 0;
                }
            }
        })
        .ok_or_else(|| crate::destinations::unavailable("the deliveries are poisoned"))
    }

    async fn paused_until(
        &self,
        destination: &crate::destinations::DestinationName,
    ) -> Result<Option<i64>, StoreError> {
        Ok(self
            .with(|state| state.pauses.get(destination.as_str()).copied())
            .flatten())
    }

    async fn pause(
        &self,
        destination: &crate::destinations::DestinationName,
        until_ms: i64,
        _reason: &str,
    ) -> Result<(), StoreError> {
        self.with(|state| state.pauses.insert(destination.to_string(), until_ms));
        Ok(())
    }
}

/// A destination that answers what the test scripted, in order (then `Delivered`), and
/// counts each call's leads.
#[derive(Debug, Default)]
pub struct ScriptedDestination {
    answers: Mutex<std::collections::VecDeque<crate::destinations::Outcome>>,
    calls: Mutex<Vec<usize>>,
}

impl ScriptedDestination {
    /// Answers these outcomes, lead by lead, then delivers.
    pub fn answering(answers: Vec<crate::destinations::Outcome>) -> Self {
        Self {
            answers: Mutex::new(answers.into()),
            calls: Mutex::default(),
        }
    }

    /// Each call's number of leads.
    pub fn calls(&self) -> Vec<usize> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

impl crate::destinations::Destination for ScriptedDestination {
    async fn deliver(
        &self,
        leads: &[crate::destinations::MappedLead],
    ) -> Vec<crate::destinations::Outcome> {
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(leads.len());
        }
        let mut answers = self.answers.lock().ok();
        leads
            .iter()
            .map(|_| {
                answers
                    .as_mut()
                    .and_then(|a| a.pop_front())
                    .unwrap_or(crate::destinations::Outcome::Delivered(None))
            })
            .collect()
    }

    async fn check(&self) -> Result<String, String> {
        Ok("scripted".into())
    }
}

/// The stack's delivery marks, in a map.
#[derive(Debug, Default)]
pub struct MemoryMarks {
    marks: Mutex<std::collections::HashMap<(String, String), crate::destinations::Mark>>,
}

impl MemoryMarks {
    /// The mark of `lead_id` at `destination`.
    pub fn get(&self, destination: &str, lead_id: &str) -> Option<crate::destinations::Mark> {
        self.marks.lock().ok().and_then(|m| {
            m.get(&(destination.to_owned(), lead_id.to_owned()))
                .copied()
        })
    }
}

impl crate::destinations::DeliveryMarks for MemoryMarks {
    async fn mark(
        &self,
        destination: &crate::destinations::DestinationName,
        lead_id: &str,
    ) -> Result<Option<crate::destinations::Mark>, StoreError> {
        Ok(self.get(destination.as_str(), lead_id))
    }

    async fn set_mark(
        &self,
        destination: &crate::destinations::DestinationName,
        lead_id: &str,
        mark: crate::destinations::Mark,
        _record: Option<&str>,
    ) -> Result<(), StoreError> {
        if let Ok(mut marks) = self.marks.lock() {
            marks.insert((destination.to_string(), lead_id.to_owned()), mark);
        }
        Ok(())
    }
}
