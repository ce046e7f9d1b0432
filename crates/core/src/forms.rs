//! The forms catalog: each lead form's name, status, locale, page, privacy policy and
//! questions, so a lead can be read by a person (docs/leads-out.md, "Readable parts").
//!
//! Kept where the pipeline keeps its state (the state table's `formdef#<id>` items on AWS,
//! the `forms` table of the SQLite file), refreshed by every backfill run from the page's
//! `leadgen_forms`, and read once from Graph (`GET /{form-id}`) when ingest meets a form the
//! store does not hold. [`FormCatalog`] is that rule, over a [`FormReader`] (Graph) and a
//! [`FormStore`] (the state), with a per-process cache so a warm function makes no extra
//! call per lead. What a lead was answered against is copied into the lead when it is
//! stored (`crate::readable`), so a form edited later does not relabel old leads.

use crate::failure::StoreError;
use leadpipe_graph::{GraphError, LeadgenForm};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// After a failed read, how long a form is not asked for again (a form Graph will not give
/// must not cost a call per lead).
pub const RETRY_AFTER_MISS: Duration = Duration::from_secs(60);

/// How long a process keeps a form before loading it from the store again: backfill
/// refreshes the store each run, so an edited form reaches warm ingest processes within
/// this (one store read per form per period; Graph is not asked).
pub const CACHE_FOR: Duration = Duration::from_secs(15 * 60);

/// A question's type, as Meta names it (`EMAIL`, `PHONE`, `CUSTOM`, ...). The types the
/// contact is read from are their own variants; the rest keep Meta's name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum QuestionKind {
    /// A question the advertiser wrote (short answer, multiple choice, conditional).
    Custom,
    /// `EMAIL`.
    Email,
    /// `WORK_EMAIL`.
    WorkEmail,
    /// `PHONE`.
    Phone,
    /// `WORK_PHONE_NUMBER`.
    WorkPhone,
    /// `FULL_NAME`.
    FullName,
    /// `FIRST_NAME`.
    FirstName,
    /// `LAST_NAME`.
    LastName,
    /// `CITY`.
    City,
    /// `STATE`.
    State,
    /// `PROVINCE`.
    Province,
    /// `ZIP`.
    Zip,
    /// `POST_CODE`.
    PostCode,
    /// `COUNTRY`.
    Country,
    /// `DATE_TIME` (an appointment).
    DateTime,
    /// `STORE_LOOKUP` and `STORE_LOOKUP_WITH_TYPEAHEAD` (the store's number is the answer).
    StoreLookup,
    /// Any other of Meta's types, by its name.
    Other(String),
}

impl QuestionKind {
    /// Meta's name of the type.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Custom => "CUSTOM",
            Self::Email => "EMAIL",
            Self::WorkEmail => "WORK_EMAIL",
            Self::Phone => "PHONE",
            Self::WorkPhone => "WORK_PHONE_NUMBER",
            Self::FullName => "FULL_NAME",
            Self::FirstName => "FIRST_NAME",
            Self::LastName => "LAST_NAME",
            Self::City => "CITY",
            Self::State => "STATE",
            Self::Province => "PROVINCE",
            Self::Zip => "ZIP",
            Self::PostCode => "POST_CODE",
            Self::Country => "COUNTRY",
            Self::DateTime => "DATE_TIME",
            Self::StoreLookup => "STORE_LOOKUP",
            Self::Other(name) => name,
        }
    }
}

impl From<String> for QuestionKind {
    fn from(name: String) -> Self {
        match name.trim().to_ascii_uppercase().as_str() {
            "CUSTOM" | "" => Self::Custom,
            "EMAIL" => Self::Email,
            "WORK_EMAIL" => Self::WorkEmail,
            "PHONE" | "PHONE_OTP" | "USER_PROVIDED_PHONE_NUMBER" => Self::Phone,
            "WORK_PHONE_NUMBER" => Self::WorkPhone,
            "FULL_NAME" => Self::FullName,
            "FIRST_NAME" => Self::FirstName,
            "LAST_NAME" => Self::LastName,
            "CITY" => Self::City,
            "STATE" => Self::State,
            "PROVINCE" => Self::Province,
            "ZIP" => Self::Zip,
            "POST_CODE" => Self::PostCode,
            "COUNTRY" => Self::Country,
            "DATE_TIME" => Self::DateTime,
            "STORE_LOOKUP" | "STORE_LOOKUP_WITH_TYPEAHEAD" => Self::StoreLookup,
            _ => Self::Other(name),
        }
    }
}

impl From<QuestionKind> for String {
    fn from(kind: QuestionKind) -> Self {
        kind.as_str().to_owned()
    }
}

/// One choice of a multiple-choice question: the key a lead's answer carries and the text
/// the person saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuestionOption {
    /// What `field_data` carries.
    pub key: String,
    /// What the person saw.
    pub value: String,
}

/// One question of a form, in the form's order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Question {
    /// The field name a lead's `field_data` carries.
    pub key: String,
    /// The text the person saw (the key when Meta gave none).
    pub label: String,
    /// Meta's type.
    #[serde(rename = "type")]
    pub kind: QuestionKind,
    /// The choices, for a multiple-choice question.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<QuestionOption>,
}

/// A form's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum FormStatus {
    /// Collecting leads.
    Active,
    /// Archived.
    Archived,
    /// Deleted.
    Deleted,
    /// Not yet published.
    Draft,
    /// Another of Meta's names.
    Other(String),
}

impl From<String> for FormStatus {
    fn from(name: String) -> Self {
        match name.as_str() {
            "ACTIVE" => Self::Active,
            "ARCHIVED" => Self::Archived,
            "DELETED" => Self::Deleted,
            "DRAFT" => Self::Draft,
            _ => Self::Other(name),
        }
    }
}

impl From<FormStatus> for String {
    fn from(status: FormStatus) -> Self {
        match status {
            FormStatus::Active => "ACTIVE".into(),
            FormStatus::Archived => "ARCHIVED".into(),
            FormStatus::Deleted => "DELETED".into(),
            FormStatus::Draft => "DRAFT".into(),
            FormStatus::Other(name) => name,
        }
    }
}

/// One form of the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Form {
    /// The form's Graph id.
    pub id: String,
    /// Its name, as the advertiser named it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `ACTIVE`, `ARCHIVED`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<FormStatus>,
    /// `en_US`, `pt_BR`, ...: the country of phone numbers written without `+`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    /// The page it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_id: Option<String>,
    /// The form's privacy policy link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy_policy_url: Option<String>,
    /// Its questions, in the form's order, a conditional question's dependents after it.
    #[serde(default)]
    pub questions: Vec<Question>,
    /// When this version was read from Graph, unix seconds.
    pub fetched_at: i64,
}

impl Form {
    /// The catalog's form of Graph's answer; `page_id` stands in when Graph left `page` out.
    pub fn from_graph(form: &LeadgenForm, page_id: Option<&str>, fetched_at: i64) -> Self {
        let mut questions = Vec::new();
        for question in &form.questions {
            push_question(&mut questions, question, 0);
        }
        let page = form
            .page
            .as_ref()
            .and_then(|p| match p {
                Value::Object(o) => o.get("id").and_then(text_of),
                other => text_of(other),
            })
            .or_else(|| page_id.map(str::to_owned));
        Self {
            id: form.id.clone(),
            name: form.name.clone().filter(|n| !n.trim().is_empty()),
            status: form.status.clone().map(FormStatus::from),
            locale: form.locale.clone().filter(|l| !l.is_empty()),
            page_id: page,
            privacy_policy_url: form.privacy_policy_url.clone(),
            questions,
            fetched_at,
        }
    }

    /// The question a field name answers.
    pub fn question(&self, key: &str) -> Option<&Question> {
        self.questions.iter().find(|q| q.key == key)
    }
}

fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// One of Graph's question objects, and its conditional dependents after it (nested at most
/// a few levels in practice; deeper ones are not followed).
fn push_question(into: &mut Vec<Question>, question: &Value, depth: usize) {
    let field = |name: &str| question.get(name).and_then(text_of);
    let Some(key) = field("key").or_else(|| field("field_key")) else {
        return;
    };
    let options = question
        .get("options")
        .and_then(Value::as_array)
        .map(|options| {
            options
                .iter()
                .filter_map(|o| {
                    let key = o.get("key").and_then(text_of)?;
                    let value = o
                        .get("value")
                        .and_then(text_of)
                        .unwrap_or_else(|| key.clone());
                    Some(QuestionOption { key, value })
                })
                .collect()
        })
        .unwrap_or_default();
    if !into.iter().any(|q| q.key == key) {
        into.push(Question {
            label: field("label").unwrap_or_else(|| key.clone()),
            kind: QuestionKind::from(field("type").unwrap_or_default()),
            key,
            options,
        });
    }
    if depth < 4
        && let Some(dependents) = question
            .get("dependent_conditional_questions")
            .and_then(Value::as_array)
    {
        for dependent in dependents {
            push_question(into, dependent, depth + 1);
        }
    }
}

/// A form a lead names, with the page whose token reads it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FormRef {
    /// The page.
    pub page_id: String,
    /// The form.
    pub form_id: String,
}

/// Forms by id.
pub type FormMap = HashMap<String, Arc<Form>>;

/// Reads one form from Graph (`GET /{form-id}` with the page's token).
pub trait FormReader: Send + Sync {
    /// The form, as Graph gives it.
    fn read_form(
        &self,
        page_id: &str,
        form_id: &str,
    ) -> impl Future<Output = Result<LeadgenForm, GraphError>> + Send;
}

/// Where the catalog is kept.
pub trait FormStore: Send + Sync {
    /// The kept version of a form.
    fn load_form(
        &self,
        form_id: &str,
    ) -> impl Future<Output = Result<Option<Form>, StoreError>> + Send;

    /// Keeps these versions, replacing the ones held.
    fn save_forms(&self, forms: &[Form]) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// What the use cases ask of the catalog.
pub trait FormLookup: Send + Sync {
    /// The forms asked for that could be found, by form id. Never fails: a form that cannot
    /// be found now leaves its leads readable by key (docs/leads-out.md).
    fn forms(&self, wanted: &[FormRef]) -> impl Future<Output = FormMap> + Send;

    /// Takes the forms a backfill run listed as the current versions, and keeps them.
    fn refresh(&self, forms: Vec<Form>) -> impl Future<Output = ()> + Send;
}

/// No catalog: every lead readable by key only (tools that read no form).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoForms;

impl FormLookup for NoForms {
    async fn forms(&self, _wanted: &[FormRef]) -> FormMap {
        FormMap::new()
    }

    async fn refresh(&self, _forms: Vec<Form>) {}
}

/// The catalog rule: the process's cache, then the store, then Graph (and the store keeps
/// what Graph gave).
pub struct FormCatalog<R, S> {
    reader: R,
    store: S,
    cache: Mutex<HashMap<String, (Arc<Form>, Instant)>>,
    missed: Mutex<HashMap<String, Instant>>,
    /// One read per form at a time: concurrent callers (serve's ingest workers) wait for
    /// the first one's answer instead of asking Graph again.
    reading: Mutex<HashMap<String, Arc<futures::lock::Mutex<()>>>>,
    graph_reads: std::sync::atomic::AtomicU64,
    now: fn() -> i64,
}

impl<R, S> std::fmt::Debug for FormCatalog<R, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FormCatalog")
            .field(
                "graph_reads",
                &self.graph_reads.load(std::sync::atomic::Ordering::Relaxed),
            )
            .finish_non_exhaustive()
    }
}

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl<R: FormReader, S: FormStore> FormCatalog<R, S> {
    /// A catalog over Graph and the store, with an empty cache.
    pub fn new(reader: R, store: S) -> Self {
        Self {
            reader,
            store,
            cache: Mutex::new(HashMap::new()),
            missed: Mutex::new(HashMap::new()),
            reading: Mutex::new(HashMap::new()),
            graph_reads: std::sync::atomic::AtomicU64::new(0),
            now: unix_now,
        }
    }

    /// Forms read from Graph by this process (the figure the docs give per warm process).
    pub fn graph_reads(&self) -> u64 {
        self.graph_reads.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The store behind the catalog.
    pub fn store(&self) -> &S {
        &self.store
    }

    fn cached(&self, form_id: &str) -> Option<Arc<Form>> {
        let cache = self.cache.lock().ok()?;
        let (form, at) = cache.get(form_id)?;
        (at.elapsed() < CACHE_FOR).then(|| form.clone())
    }

    fn remember(&self, form: Form) -> Arc<Form> {
        let form = Arc::new(form);
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(form.id.clone(), (form.clone(), Instant::now()));
        }
        form
    }

    fn recently_missed(&self, form_id: &str) -> bool {
        self.missed
            .lock()
            .ok()
            .and_then(|m| m.get(form_id).copied())
            .is_some_and(|at| at.elapsed() < RETRY_AFTER_MISS)
    }

    fn missed(&self, form_id: &str) {
        if let Ok(mut missed) = self.missed.lock() {
            missed.insert(form_id.to_owned(), Instant::now());
        }
    }

    async fn one(&self, wanted: &FormRef) -> Option<Arc<Form>> {
        if let Some(form) = self.cached(&wanted.form_id) {
            return Some(form);
        }
        let gate = self
            .reading
            .lock()
            .ok()
            .map(|mut reading| reading.entry(wanted.form_id.clone()).or_default().clone());
        let _turn = match &gate {
            Some(gate) => Some(gate.lock().await),
            None => None,
        };
        // Whoever held the turn before may have read it.
        if let Some(form) = self.cached(&wanted.form_id) {
            return Some(form);
        }
        if self.recently_missed(&wanted.form_id) {
            return None;
        }
        match self.store.load_form(&wanted.form_id).await {
            Ok(Some(form)) => return Some(self.remember(form)),
            Ok(None) => {}
            Err(err) => {
                tracing::warn!(form_id = %wanted.form_id, error = %err, "the forms catalog could not be read; asking Graph");
            }
        }
        self.graph_reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match self
            .reader
            .read_form(&wanted.page_id, &wanted.form_id)
            .await
        {
            Ok(graph) => {
                let form = Form::from_graph(&graph, Some(&wanted.page_id), (self.now)());
                if let Err(err) = self.store.save_forms(std::slice::from_ref(&form)).await {
                    tracing::warn!(form_id = %form.id, error = %err, "the form could not be kept in the catalog");
                }
                Some(self.remember(form))
            }
            Err(err) => {
                tracing::warn!(form_id = %wanted.form_id, page_id = %wanted.page_id, error = %err,
                    "the form could not be read: its leads are stored with answers by key until it can");
                self.missed(&wanted.form_id);
                None
            }
        }
    }
}

impl<R: FormReader, S: FormStore> FormLookup for FormCatalog<R, S> {
    async fn forms(&self, wanted: &[FormRef]) -> FormMap {
        let mut distinct: Vec<&FormRef> = Vec::new();
        for w in wanted {
            if !distinct.iter().any(|d| d.form_id == w.form_id) {
                distinct.push(w);
            }
        }
        let found = futures::future::join_all(distinct.iter().map(|w| self.one(w))).await;
        found
            .into_iter()
            .flatten()
            .map(|form| (form.id.clone(), form))
            .collect()
    }

    async fn refresh(&self, forms: Vec<Form>) {
        if forms.is_empty() {
            return;
        }
        if let Err(err) = self.store.save_forms(&forms).await {
            tracing::warn!(forms = forms.len(), error = %err, "the forms catalog could not be refreshed");
        }
        for form in forms {
            if let Ok(mut missed) = self.missed.lock() {
                missed.remove(&form.id);
            }
            self.remember(form);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{MemoryFormReader, MemoryFormStore};

    fn graph_form(id: &str) -> LeadgenForm {
        serde_json::from_value(serde_json::json!({
            "id": id, "name": "Solar quote", "status": "ACTIVE", "locale": "pt_BR",
            "page": {"id": "77", "name": "Sunny"},
            "privacy_policy_url": "https://example.org/privacy",
            "questions": [
                {"key": "email", "label": "E-mail", "type": "EMAIL"},
                {"key": "which_services", "label": "Which services?", "type": "CUSTOM",
                 "options": [{"key": "solar", "value": "Solar panels"}, {"key": "battery", "value": "Home battery"}],
                 "dependent_conditional_questions": [
                    {"key": "roof_type", "label": "Roof type", "type": "CUSTOM",
                     "options": [{"key": "flat", "value": "Flat"}]}]},
                {"key": "appointment", "label": "Pick a time", "type": "DATE_TIME"},
                {"key": "selected_dealer", "label": "Nearest store", "type": "STORE_LOOKUP"},
                {"key": "phone_number", "label": "Telefone", "type": "PHONE"},
                {"label": "no key: skipped"}
            ]
        }))
        .unwrap()
    }

    #[test]
    fn a_graph_form_becomes_a_catalog_form() {
        let form = Form::from_graph(&graph_form("5"), None, 100);
        assert_eq!(form.name.as_deref(), Some("Solar quote"));
        assert_eq!(form.status, Some(FormStatus::Active));
        assert_eq!(form.page_id.as_deref(), Some("77"));
        let keys: Vec<&str> = form.questions.iter().map(|q| q.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "email",
                "which_services",
                "roof_type",
                "appointment",
                "selected_dealer",
                "phone_number"
            ],
            "the form's order, a conditional question's dependents after it"
        );
        assert_eq!(form.questions[1].options[0].value, "Solar panels");
        assert_eq!(form.questions[3].kind, QuestionKind::DateTime);
        assert_eq!(form.questions[4].kind, QuestionKind::StoreLookup);
        let kept: Form = serde_json::from_str(&serde_json::to_string(&form).unwrap()).unwrap();
        assert_eq!(kept, form, "the stored form reads back the same");
        let unknown = QuestionKind::from("SLIDER".to_owned());
        assert_eq!(unknown.as_str(), "SLIDER");
    }

    #[tokio::test]
    async fn graph_is_asked_once_per_form_per_process() {
        let reader = MemoryFormReader::with_forms([graph_form("5"), graph_form("6")]);
        let catalog = FormCatalog::new(reader, MemoryFormStore::default());
        let want = |f: &str| FormRef {
            page_id: "77".into(),
            form_id: f.into(),
        };
        for _ in 0..50 {
            let found = catalog.forms(&[want("5"), want("5"), want("6")]).await;
            assert_eq!(found.len(), 2);
        }
        assert_eq!(catalog.graph_reads(), 2, "one read per new form");
        assert_eq!(catalog.store().len(), 2, "kept for the next process");

        // A new process over the same store reads no form from Graph.
        let reader = MemoryFormReader::with_forms([]);
        let next = FormCatalog::new(reader, catalog.store().clone());
        assert_eq!(next.forms(&[want("5")]).await.len(), 1);
        assert_eq!(next.graph_reads(), 0);
    }

    /// Graph taking its time, so concurrent callers overlap.
    struct SlowReader(MemoryFormReader);

    impl FormReader for SlowReader {
        async fn read_form(&self, page_id: &str, form_id: &str) -> Result<LeadgenForm, GraphError> {
            tokio::time::sleep(Duration::from_millis(20)).await;
            self.0.read_form(page_id, form_id).await
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_share_one_read() {
        let catalog = Arc::new(FormCatalog::new(
            SlowReader(MemoryFormReader::with_forms([graph_form("5")])),
            MemoryFormStore::default(),
        ));
        let want = [FormRef {
            page_id: "77".into(),
            form_id: "5".into(),
        }];
        let callers: Vec<_> = (0..8)
            .map(|_| {
                let catalog = catalog.clone();
                let want = want.clone();
                tokio::spawn(async move { catalog.forms(&want).await.len() })
            })
            .collect();
        for caller in callers {
            assert_eq!(caller.await.unwrap(), 1);
        }
        assert_eq!(catalog.graph_reads(), 1);
    }

    #[tokio::test]
    async fn a_form_graph_will_not_give_is_not_asked_for_each_lead() {
        let catalog =
            FormCatalog::new(MemoryFormReader::with_forms([]), MemoryFormStore::default());
        let want = [FormRef {
            page_id: "77".into(),
            form_id: "9".into(),
        }];
        for _ in 0..10 {
            assert!(catalog.forms(&want).await.is_empty());
        }
        assert_eq!(catalog.graph_reads(), 1);
        // A backfill run that lists it makes it known at once.
        catalog
            .refresh(vec![Form::from_graph(&graph_form("9"), None, 5)])
            .await;
        assert_eq!(catalog.forms(&want).await.len(), 1);
        assert_eq!(catalog.store().len(), 1);
    }
}
