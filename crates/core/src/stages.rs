//! Lead stages back to Meta through the Conversions API ("Conversion Leads"): the contract
//! in docs/stages.md, the facts in `../shared/reference/conversions-api-crm.md`.
//!
//! Meta fails a whole request for one bad event and says nothing per event, and it drops a
//! stage dated before its lead without a word. So every stage is checked here before it is
//! sent ([`check`]), a refused request is split until the refused event stands alone
//! ([`send_stages`]), and a stage sent is recorded so the same (lead, stage) is one event.

use crate::ports::{DeadLetterClass, StoreError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;

/// Meta refuses a request with any event older than this (CA/parameters/server-event).
pub const MAX_AGE_SECONDS: i64 = 7 * 86_400;
/// A stage checked now is sent within this, so one closer than this to the 7 days is
/// refused here rather than risk sinking the request it would be sent in.
pub const AGE_MARGIN_SECONDS: i64 = 10 * 60;
/// A stage time this far ahead of our clock is a clock's skew, not the future.
pub const FUTURE_SKEW_SECONDS: i64 = 5 * 60;
/// Events per request at most: Meta allows 1,000; why this many is in BENCHMARKS.md
/// ("Stages: events per request").
pub const EVENTS_PER_REQUEST: usize = 100;
/// Stages in one `POST /stages` body at most (docs/stages.md).
pub const MAX_STAGES_PER_POST: usize = 1_000;

/// A stage's name as the CRM calls it (`Qualified`, `Converted`): 1 to 100 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StageName(String);

impl StageName {
    /// The name, trimmed; refused when empty, over 100 characters or holding a control
    /// character.
    pub fn parse(name: &str) -> Result<Self, StageInputError> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
            return Err(StageInputError::Stage);
        }
        Ok(Self(name.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for StageName {
    type Error = StageInputError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<StageName> for String {
    fn from(value: StageName) -> Self {
        value.0
    }
}

impl std::fmt::Display for StageName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a stage given to leadpipe is refused at the door. The reason names the field and
/// what it must be, never the value (a stage name is the business's data).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StageInputError {
    /// The item is not a JSON object.
    #[error("the stage is not a JSON object")]
    NotAnObject,
    /// `lead_id` is missing or not a Graph id.
    #[error("lead_id must be the lead's id (digits)")]
    LeadId,
    /// `stage` is missing, empty, too long or holds a control character.
    #[error("stage must be a name of 1 to 100 characters")]
    Stage,
    /// `stage_time` is missing or not a time.
    #[error("stage_time must be RFC 3339 or unix seconds")]
    StageTime,
    /// The stage time is in the future.
    #[error("stage_time is in the future")]
    Future,
    /// `value` is not a finite number.
    #[error("value must be a number")]
    Value,
    /// `currency` is not an ISO 4217 code, or `value` came without one.
    #[error("currency must be an ISO 4217 code (three letters) and is required with value")]
    Currency,
}

/// One lead's stage changing: the `detail` of `Lead Stage Changed`, one item of `POST
/// /stages`, one CSV row; also the stage queue's message body (`stage_time` as unix
/// seconds there).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageChange {
    /// The Meta lead id (`leadgen_id`).
    pub lead_id: String,
    /// The stage it reached.
    pub stage: StageName,
    /// When it reached it, unix seconds.
    pub stage_time: i64,
    /// The stage's value, with `currency`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// ISO 4217, upper case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
}

impl StageChange {
    /// Reads one stage as a CRM sends it (docs/stages.md): `stage_time` RFC 3339 or unix
    /// seconds (a number or a string of digits); refused when more than a clock's skew
    /// ahead of `now`.
    pub fn from_json(item: &serde_json::Value, now: i64) -> Result<Self, StageInputError> {
        let object = item.as_object().ok_or(StageInputError::NotAnObject)?;
        let lead_id = match object.get("lead_id") {
            Some(serde_json::Value::String(id)) => id.trim().to_owned(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            _ => return Err(StageInputError::LeadId),
        };
        let stage = match object.get("stage") {
            Some(serde_json::Value::String(name)) => StageName::parse(name)?,
            _ => return Err(StageInputError::Stage),
        };
        let stage_time = match object.get("stage_time") {
            Some(serde_json::Value::Number(n)) => n.as_i64().ok_or(StageInputError::StageTime)?,
            Some(serde_json::Value::String(text)) => parse_stage_time(text)?,
            _ => return Err(StageInputError::StageTime),
        };
        let value = match object.get("value") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::Number(n)) => Some(
                n.as_f64()
                    .filter(|v| v.is_finite())
                    .ok_or(StageInputError::Value)?,
            ),
            Some(_) => return Err(StageInputError::Value),
        };
        let currency = match object.get("currency") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(code)) => Some(code.clone()),
            Some(_) => return Err(StageInputError::Currency),
        };
        Self::new(lead_id, stage, stage_time, value, currency.as_deref(), now)
    }

    /// A stage from its parts, checked as [`StageChange::from_json`] checks them.
    pub fn new(
        lead_id: String,
        stage: StageName,
        stage_time: i64,
        value: Option<f64>,
        currency: Option<&str>,
        now: i64,
    ) -> Result<Self, StageInputError> {
        if !crate::ids::is_graph_id(&lead_id) {
            return Err(StageInputError::LeadId);
        }
        if stage_time <= 0 {
            return Err(StageInputError::StageTime);
        }
        if stage_time > now.saturating_add(FUTURE_SKEW_SECONDS) {
            return Err(StageInputError::Future);
        }
        if value.is_some_and(|v| !v.is_finite()) {
            return Err(StageInputError::Value);
        }
        let currency = match currency.map(str::trim) {
            None | Some("") if value.is_some() => return Err(StageInputError::Currency),
            None | Some("") => None,
            Some(code) if code.len() == 3 && code.chars().all(|c| c.is_ascii_alphabetic()) => {
                Some(code.to_ascii_uppercase())
            }
            Some(_) => return Err(StageInputError::Currency),
        };
        Ok(Self {
            lead_id,
            stage,
            stage_time,
            value,
            currency,
        })
    }

    /// The lead's first stage, at its creation time (the initial stage of docs/stages.md).
    pub fn initial(lead_id: &str, stage: &StageName, created_time: i64) -> Self {
        Self {
            lead_id: lead_id.to_owned(),
            stage: stage.clone(),
            stage_time: created_time,
            value: None,
            currency: None,
        }
    }

    /// The event id Meta deduplicates on, stable per (lead, stage): the same stage of the
    /// same lead sent twice is one event.
    pub fn event_id(&self) -> String {
        event_id(&self.lead_id, &self.stage)
    }

    /// The queue message body.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// `stage_time` as text: RFC 3339 or unix seconds.
pub fn parse_stage_time(text: &str) -> Result<i64, StageInputError> {
    let text = text.trim();
    if let Ok(unix) = text.parse::<i64>() {
        return Ok(unix);
    }
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|_| StageInputError::StageTime)
}

/// `lp-` and 32 hex digits of SHA-256 over the lead id and the stage's name.
pub fn event_id(lead_id: &str, stage: &StageName) -> String {
    let mut hash = Sha256::new();
    hash.update(lead_id.as_bytes());
    hash.update([0u8]);
    hash.update(stage.as_str().as_bytes());
    let digest = hash.finalize();
    format!("lp-{}", hex::encode(&digest[..16]))
}

/// A `POST /stages` body read item by item: the good ones, and a reason per bad one.
#[derive(Debug, Default)]
pub struct StagesBody {
    /// The stages to queue.
    pub stages: Vec<StageChange>,
    /// `(index, reason)` of each item refused.
    pub refused: Vec<(usize, StageInputError)>,
}

/// Why a whole `POST /stages` body is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StagesBodyError {
    /// Not JSON, or neither a stage nor `{"stages":[…]}`.
    #[error("the body must be one stage object or {{\"stages\": [...]}}")]
    Shape,
    /// More stages than one body may hold.
    #[error("at most 1000 stages in one body")]
    TooMany,
}

/// Reads a `POST /stages` body: one stage object, or `{"stages":[…]}`.
pub fn read_stages_body(body: &[u8], now: i64) -> Result<StagesBody, StagesBodyError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| StagesBodyError::Shape)?;
    let items = match value {
        serde_json::Value::Object(ref object) if object.contains_key("stages") => {
            match object.get("stages") {
                Some(serde_json::Value::Array(items)) => items.clone(),
                _ => return Err(StagesBodyError::Shape),
            }
        }
        serde_json::Value::Object(_) => vec![value],
        _ => return Err(StagesBodyError::Shape),
    };
    if items.len() > MAX_STAGES_PER_POST {
        return Err(StagesBodyError::TooMany);
    }
    let mut read = StagesBody::default();
    for (index, item) in items.iter().enumerate() {
        match StageChange::from_json(item, now) {
            Ok(stage) => read.stages.push(stage),
            Err(why) => read.refused.push((index, why)),
        }
    }
    Ok(read)
}

/// Whether `given` is one of `keys`, compared in constant time per key (the header
/// `X-Leadpipe-Key` against the secret's `stage_keys`).
pub fn key_matches(given: &str, keys: &[secrecy::SecretString]) -> bool {
    use secrecy::ExposeSecret;
    use subtle::ConstantTimeEq;
    let given = Sha256::digest(given.as_bytes());
    let mut found = subtle::Choice::from(0);
    for key in keys {
        let key = key.expose_secret();
        if key.is_empty() {
            continue;
        }
        found |= given.ct_eq(&Sha256::digest(key.as_bytes()));
    }
    found.into()
}

/// Where accepted stages wait to be sent: the SQLite file's `stages` table, or the stack's
/// stage queue.
pub trait StageQueue: Send + Sync {
    /// Queues every stage durably, or fails (then some may be queued: a repeat is one
    /// event).
    fn queue_stages(
        &self,
        stages: &[StageChange],
    ) -> impl Future<Output = Result<(), crate::ports::QueueError>> + Send;
}

/// `POST /stages`' answer: status and JSON body (docs/stages.md, "In, over HTTPS").
#[derive(Debug, Clone, PartialEq)]
pub struct StagesAnswer {
    /// 202, 400, 401, 413 or 503.
    pub status: u16,
    /// The JSON body.
    pub body: serde_json::Value,
    /// Stages queued.
    pub accepted: usize,
}

/// `POST /stages`, on `serve` and on the stack's Function URL alike: the key (constant
/// time, any of `keys`), then the body item by item; 202 only once every good stage is
/// queued, 400 with a reason per refused item (the good ones still queued).
pub async fn accept_stages<Q: StageQueue>(
    queue: Option<&Q>,
    keys: &[secrecy::SecretString],
    given_key: Option<&str>,
    body: &[u8],
    now: i64,
) -> StagesAnswer {
    let answer = |status: u16, body: serde_json::Value| StagesAnswer {
        status,
        body,
        accepted: 0,
    };
    if keys.is_empty() {
        return answer(
            503,
            serde_json::json!({"error": "stages are off: the secret has no stage_keys"}),
        );
    }
    if !key_matches(given_key.unwrap_or_default(), keys) {
        return answer(
            401,
            serde_json::json!({"error": "X-Leadpipe-Key is missing or not one of the secret's stage_keys"}),
        );
    }
    let Some(queue) = queue else {
        return answer(
            503,
            serde_json::json!({"error": "stages are off: no Conversions API dataset is configured (CONVERSIONS_DATASET_ID)"}),
        );
    };
    if body.len() > MAX_BODY_BYTES {
        return answer(413, serde_json::json!({"error": "the body is over 1 MiB"}));
    }
    let read = match read_stages_body(body, now) {
        Ok(read) => read,
        Err(why) => {
            return answer(
                400,
                serde_json::json!({"accepted": 0, "error": why.to_string()}),
            );
        }
    };
    if !read.stages.is_empty()
        && let Err(err) = queue.queue_stages(&read.stages).await
    {
        tracing::error!(error = %err, stages = read.stages.len(), "stages could not be queued");
        return answer(
            503,
            serde_json::json!({"accepted": 0, "error": "the stages could not be queued: send them again"}),
        );
    }
    let accepted = read.stages.len();
    if read.refused.is_empty() {
        return StagesAnswer {
            status: 202,
            body: serde_json::json!({"accepted": accepted}),
            accepted,
        };
    }
    let refused: Vec<serde_json::Value> = read
        .refused
        .iter()
        .map(|(index, why)| serde_json::json!({"index": index, "reason": why.to_string()}))
        .collect();
    StagesAnswer {
        status: 400,
        body: serde_json::json!({"accepted": accepted, "refused": refused}),
        accepted,
    }
}

/// A `POST /stages` body at most.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// What the store knows of a lead that a stage needs: when it was created and the contact
/// to hash.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StageLead {
    /// The lead's creation, unix seconds.
    pub created_time: i64,
    /// Normalised email (`contact.email`).
    pub email: Option<String>,
    /// E.164 phone (`contact.phone`).
    pub phone: Option<String>,
}

/// The leads, as stages need them.
pub trait StageLeads: Send + Sync {
    /// Each lead of `lead_ids` the store holds.
    fn stage_leads(
        &self,
        lead_ids: &[String],
    ) -> impl Future<Output = Result<BTreeMap<String, StageLead>, StoreError>> + Send;
}

/// The stages sent: what makes the same (lead, stage) one event.
pub trait StageLedger: Send + Sync {
    /// Which of `event_ids` were sent already.
    fn already_sent(
        &self,
        event_ids: &[String],
    ) -> impl Future<Output = Result<HashSet<String>, StoreError>> + Send;

    /// Records stages Meta accepted.
    fn record_sent(
        &self,
        sent: &[StageChange],
        at: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// One event as the Conversions API takes it (the reference's section 2).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConversionEvent {
    /// The stage.
    pub event_name: String,
    /// The stage time, unix seconds.
    pub event_time: i64,
    /// Always `system_generated` for CRM stages.
    pub action_source: &'static str,
    /// Stable per (lead, stage).
    pub event_id: String,
    /// The lead id (never hashed) and the hashed contact.
    pub user_data: UserData,
    /// `event_source: crm` and the tool's name.
    pub custom_data: CustomData,
}

/// `user_data`: the lead id as a string; `em`, `ph` SHA-256 of the normalised values.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UserData {
    /// The `leadgen_id`, a string.
    pub lead_id: String,
    /// SHA-256 hex of the trimmed, lower-case email.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub em: Vec<String>,
    /// SHA-256 hex of the phone's digits with its country code.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ph: Vec<String>,
}

/// `custom_data`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CustomData {
    /// Always `crm`.
    pub event_source: &'static str,
    /// The setting `LEAD_EVENT_SOURCE`.
    pub lead_event_source: String,
    /// The stage's value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// Its currency.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
}

/// SHA-256 hex of `text`.
fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

impl ConversionEvent {
    /// The event for `stage` of `lead`: em and ph normalised as the reference's section 3
    /// says (the stored contact is normalised already; `+` and symbols go from the phone).
    pub fn of(stage: &StageChange, lead: &StageLead, lead_event_source: &str) -> Self {
        let em = lead
            .email
            .as_deref()
            .and_then(crate::contact::normalise_email)
            .map(|e| vec![sha256_hex(&e)])
            .unwrap_or_default();
        let ph = lead
            .phone
            .as_deref()
            .map(|p| p.chars().filter(char::is_ascii_digit).collect::<String>())
            .map(|digits| digits.trim_start_matches('0').to_owned())
            .filter(|digits| !digits.is_empty())
            .map(|digits| vec![sha256_hex(&digits)])
            .unwrap_or_default();
        Self {
            event_name: stage.stage.as_str().to_owned(),
            event_time: stage.stage_time,
            action_source: "system_generated",
            event_id: stage.event_id(),
            user_data: UserData {
                lead_id: stage.lead_id.clone(),
                em,
                ph,
            },
            custom_data: CustomData {
                event_source: "crm",
                lead_event_source: lead_event_source.to_owned(),
                value: stage.value,
                currency: stage.currency.clone(),
            },
        }
    }
}

/// `POST /{dataset-id}/events`: the whole request is taken (`events_received`) or refused.
pub trait ConversionsApi: Send + Sync {
    /// Sends `events` in one request.
    fn send(
        &self,
        events: &[ConversionEvent],
    ) -> impl Future<Output = Result<u64, leadpipe_graph::GraphError>> + Send;
}

/// What the stage rules need from the settings (docs/stages.md, "Settings").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageSettings {
    /// `custom_data.lead_event_source` (`LEAD_EVENT_SOURCE`, default `leadpipe`).
    pub lead_event_source: String,
    /// Events per request.
    pub events_per_request: usize,
}

impl Default for StageSettings {
    fn default() -> Self {
        Self {
            lead_event_source: "leadpipe".into(),
            events_per_request: EVENTS_PER_REQUEST,
        }
    }
}

/// Why a stage is never sent: a dead letter with its class and a reason for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageRefusal {
    /// `unknown_lead`, `before_lead`, `expired`, or Meta's (`token`, `permission`,
    /// `bad_request`, `not_found`).
    pub class: DeadLetterClass,
    /// What failed and what to do; never a stage name, value or contact.
    pub reason: String,
}

/// What became of one stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StageOutcome {
    /// Meta took the request it was in.
    Sent,
    /// The same (lead, stage) was sent before (or earlier in this batch): not sent again.
    AlreadySent,
    /// Never sent: a dead letter.
    Refused(StageRefusal),
    /// Not sent this time (Meta or the store was unavailable, or asked to wait): keep it
    /// queued and try again after `after` when given.
    Retry {
        /// Why, for the log (Meta's class and code, never the stage).
        reason: String,
        /// How long Meta asked to wait.
        after: Option<std::time::Duration>,
    },
}

/// The checks before sending (docs/stages.md, "Checked before sending").
pub fn check(stage: &StageChange, lead: Option<&StageLead>, now: i64) -> Result<(), StageRefusal> {
    let Some(lead) = lead else {
        return Err(StageRefusal {
            class: DeadLetterClass::UnknownLead,
            reason: "the lead is not in the store: backfill it or check the lead id".into(),
        });
    };
    if stage.stage_time < lead.created_time {
        return Err(StageRefusal {
            class: DeadLetterClass::BeforeLead,
            reason: format!(
                "the stage time is {} s before the lead was created: Meta drops such a stage",
                lead.created_time - stage.stage_time
            ),
        });
    }
    if now - stage.stage_time > MAX_AGE_SECONDS - AGE_MARGIN_SECONDS {
        return Err(StageRefusal {
            class: DeadLetterClass::Expired,
            reason: format!(
                "the stage is {} h old: Meta refuses any request with an event older than 7 days",
                (now - stage.stage_time) / 3_600
            ),
        });
    }
    if stage.stage_time > now + FUTURE_SKEW_SECONDS {
        return Err(StageRefusal {
            class: DeadLetterClass::Malformed,
            reason: "the stage time is in the future".into(),
        });
    }
    Ok(())
}

/// What one call to [`send_stages`] did, for metrics and the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StagesReport {
    /// Stages Meta took.
    pub sent: u64,
    /// Stages sent before.
    pub already_sent: u64,
    /// Stages refused, by class.
    pub refused: BTreeMap<DeadLetterClass, u64>,
    /// Stages left for later.
    pub retried: u64,
    /// Requests made to Meta (splits included).
    pub requests: u64,
}

impl StagesReport {
    /// Counts `outcomes`.
    fn count(&mut self, outcomes: &[StageOutcome]) {
        for outcome in outcomes {
            match outcome {
                StageOutcome::Sent => self.sent += 1,
                StageOutcome::AlreadySent => self.already_sent += 1,
                StageOutcome::Refused(r) => *self.refused.entry(r.class).or_default() += 1,
                StageOutcome::Retry { .. } => self.retried += 1,
            }
        }
    }

    /// Stages refused, every class.
    pub fn refused_total(&self) -> u64 {
        self.refused.values().sum()
    }
}

/// Sends `stages`: each checked, the good ones in requests of `events_per_request`, a
/// refused request split until the refused event stands alone, the sent ones recorded.
/// One outcome per stage, in order. A store that cannot be read leaves every stage for
/// later.
pub async fn send_stages<L, R, A>(
    leads: &L,
    ledger: &R,
    api: &A,
    settings: &StageSettings,
    stages: &[StageChange],
    now: i64,
) -> (Vec<StageOutcome>, StagesReport)
where
    L: StageLeads,
    R: StageLedger,
    A: ConversionsApi,
{
    let mut report = StagesReport::default();
    let retry_all = |reason: String| {
        stages
            .iter()
            .map(|_| StageOutcome::Retry {
                reason: reason.clone(),
                after: None,
            })
            .collect::<Vec<_>>()
    };
    let ids: Vec<String> = stages.iter().map(StageChange::event_id).collect();
    // Each key once: a store's batch read refuses a key twice (DynamoDB's BatchGetItem).
    let mut unique_ids = ids.clone();
    unique_ids.sort();
    unique_ids.dedup();
    let sent_before = match ledger.already_sent(&unique_ids).await {
        Ok(sent) => sent,
        Err(e) => {
            let outcomes = retry_all(e.to_string());
            report.count(&outcomes);
            return (outcomes, report);
        }
    };
    let mut lead_ids: Vec<String> = stages.iter().map(|s| s.lead_id.clone()).collect();
    lead_ids.sort();
    lead_ids.dedup();
    let known = match leads.stage_leads(&lead_ids).await {
        Ok(known) => known,
        Err(e) => {
            let outcomes = retry_all(e.to_string());
            report.count(&outcomes);
            return (outcomes, report);
        }
    };
    let mut outcomes: Vec<Option<StageOutcome>> = vec![None; stages.len()];
    // Checked first, then one copy per event id among the stages that pass: a copy a CRM
    // corrected in the same batch is the one sent, not the first one given.
    let mut first_of: HashMap<&str, usize> = HashMap::new();
    let mut copy_of: Vec<Option<usize>> = vec![None; stages.len()];
    let mut to_send: Vec<(usize, ConversionEvent)> = Vec::new();
    for (index, stage) in stages.iter().enumerate() {
        let id = ids[index].as_str();
        if sent_before.contains(id) {
            outcomes[index] = Some(StageOutcome::AlreadySent);
            continue;
        }
        let lead = known.get(&stage.lead_id);
        if let Err(refusal) = check(stage, lead, now) {
            outcomes[index] = Some(StageOutcome::Refused(refusal));
            continue;
        }
        if let Some(first) = first_of.get(id) {
            copy_of[index] = Some(*first);
            continue;
        }
        first_of.insert(id, index);
        if let Some(lead) = lead {
            to_send.push((
                index,
                ConversionEvent::of(stage, lead, &settings.lead_event_source),
            ));
        }
    }
    let per_request = settings.events_per_request.clamp(1, 1_000);
    // Each chunk, then its halves when Meta refused it for something one event can cause;
    // a stack, not recursion (an async fn cannot recurse without boxing).
    let mut pending: Vec<&[(usize, ConversionEvent)]> = to_send.chunks(per_request).rev().collect();
    while let Some(group) = pending.pop() {
        let events: Vec<ConversionEvent> = group.iter().map(|(_, e)| e.clone()).collect();
        report.requests += 1;
        match api.send(&events).await {
            Ok(_received) => {
                for (index, _) in group {
                    outcomes[*index] = Some(StageOutcome::Sent);
                }
                // Recorded per request, at once: a crash loses at most this request's
                // record (its stable event ids are what Meta deduplicates on).
                let sent: Vec<StageChange> = group
                    .iter()
                    .map(|(index, _)| stages[*index].clone())
                    .collect();
                if let Err(e) = ledger.record_sent(&sent, now).await {
                    tracing::warn!(stages = sent.len(), error = %e, "sent stages could not be recorded");
                }
            }
            Err(e) => {
                use leadpipe_graph::ErrorClass as G;
                // Only a bad request can be one event's doing. A missing dataset (100/33),
                // a token or a permission is the whole request's, whatever is in it.
                if e.class == G::BadRequest && group.len() > 1 {
                    let (first, second) = group.split_at(group.len() / 2);
                    pending.push(second);
                    pending.push(first);
                    continue;
                }
                let outcome = match e.class {
                    G::Transient | G::RateLimited => StageOutcome::Retry {
                        reason: format!("Meta: {} ({})", e.class, code_of(&e)),
                        after: e.retry_after(),
                    },
                    G::Token => StageOutcome::Refused(StageRefusal {
                        class: DeadLetterClass::Token,
                        reason: format!(
                            "Meta refused the conversions token ({}): set a new one with `leadpipe connect --dataset ID` and LEADPIPE_CONVERSIONS_TOKEN, then redrive",
                            code_of(&e)
                        ),
                    }),
                    G::Permission => StageOutcome::Refused(StageRefusal {
                        class: DeadLetterClass::Permission,
                        reason: format!(
                            "the conversions token cannot write to the dataset ({}): check it with `leadpipe connect --dataset ID`, then redrive",
                            code_of(&e)
                        ),
                    }),
                    G::NotFound => StageOutcome::Refused(StageRefusal {
                        class: DeadLetterClass::NotFound,
                        reason: format!(
                            "the dataset does not exist or this token cannot see it ({}): check CONVERSIONS_DATASET_ID with `leadpipe connect --dataset ID`, then redrive",
                            code_of(&e)
                        ),
                    }),
                    // Meta's code only: its message can quote what was sent.
                    other => StageOutcome::Refused(StageRefusal {
                        class: DeadLetterClass::of_graph(other)
                            .unwrap_or(DeadLetterClass::BadRequest),
                        reason: format!("Meta refused this event alone ({})", code_of(&e)),
                    }),
                };
                let stop = matches!(outcome, StageOutcome::Retry { .. });
                for (index, _) in group {
                    outcomes[*index] = Some(outcome.clone());
                }
                if stop {
                    // Meta is down or asks to wait: the rest waits too, unsent.
                    for rest in pending.drain(..) {
                        for (index, _) in rest {
                            outcomes[*index] = Some(outcome.clone());
                        }
                    }
                }
            }
        }
    }
    // A copy takes its first's fate; a refused copy of a stage sent here was sent.
    let sent_here: HashSet<&str> = (0..stages.len())
        .filter(|i| matches!(outcomes[*i], Some(StageOutcome::Sent)))
        .map(|i| ids[i].as_str())
        .collect();
    for index in 0..stages.len() {
        if let Some(first) = copy_of[index] {
            outcomes[index] = Some(match &outcomes[first] {
                Some(StageOutcome::Sent) => StageOutcome::AlreadySent,
                Some(other) => other.clone(),
                None => StageOutcome::Retry {
                    reason: "not sent".into(),
                    after: None,
                },
            });
        } else if matches!(outcomes[index], Some(StageOutcome::Refused(_)))
            && sent_here.contains(ids[index].as_str())
        {
            outcomes[index] = Some(StageOutcome::AlreadySent);
        }
    }
    let outcomes: Vec<StageOutcome> = outcomes
        .into_iter()
        .map(|o| {
            o.unwrap_or(StageOutcome::Retry {
                reason: "not sent".into(),
                after: None,
            })
        })
        .collect();
    report.count(&outcomes);
    (outcomes, report)
}

/// The `detail-type` of a stage on the stack's bus.
pub const STAGE_DETAIL_TYPE: &str = "Lead Stage Changed";

/// One stage queue message: an EventBridge event of [`STAGE_DETAIL_TYPE`] as the rule
/// delivers it (the whole envelope, the stage in `detail`), or a stage as `POST /stages`
/// and deliver queue it (the stage itself).
pub fn read_stage_message(body: &str, now: i64) -> Result<StageChange, StageInputError> {
    let value: serde_json::Value =
        serde_json::from_str(body).map_err(|_| StageInputError::NotAnObject)?;
    match value.get("detail") {
        Some(detail) if value.get("detail-type").is_some() => StageChange::from_json(detail, now),
        _ => StageChange::from_json(&value, now),
    }
}

/// One message of a stage queue batch.
#[derive(Debug, Clone, Copy)]
pub struct StageMessage<'a> {
    /// SQS's message id (what a partial batch failure names).
    pub message_id: &'a str,
    /// The body.
    pub body: &'a str,
}

/// What one batch of the stage queue did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StageBatchReport {
    /// The stages' outcomes, counted.
    pub stages: StagesReport,
    /// Messages that could not be read (dead-lettered `malformed`).
    pub malformed: u64,
    /// Messages SQS must deliver again (not sent yet, or a dead letter not written).
    pub failed: Vec<String>,
}

impl StageBatchReport {
    /// `StagesSent`, `StagesRefused` (malformed messages count as refused).
    pub fn metrics(&self) -> [(&'static str, u64); 2] {
        [
            ("StagesSent", self.stages.sent),
            (
                "StagesRefused",
                self.stages.refused_total() + self.malformed,
            ),
        ]
    }

    /// `StagesRefused` by class, for the metric's `ReasonClass` dimension.
    pub fn refused_by_class(&self) -> Vec<(&'static str, u64)> {
        let mut by: Vec<(&'static str, u64)> = self
            .stages
            .refused
            .iter()
            .map(|(class, n)| (class.as_str(), *n))
            .collect();
        if self.malformed > 0 {
            by.push((DeadLetterClass::Malformed.as_str(), self.malformed));
        }
        by
    }
}

/// A stage queue batch (the stages function on AWS): each message read, the stages sent
/// ([`send_stages`]), a refused one dead-lettered with its class and reason, one not sent
/// yet left for SQS to deliver again (after its `maxReceiveCount`, SQS moves it to the DLQ:
/// `exhausted`).
pub async fn stage_batch<L, R, A, Q>(
    leads: &L,
    ledger: &R,
    api: &A,
    queue: &Q,
    settings: &StageSettings,
    messages: &[StageMessage<'_>],
    now: i64,
) -> StageBatchReport
where
    L: StageLeads,
    R: StageLedger,
    A: ConversionsApi,
    Q: crate::ports::QueueControl,
{
    use crate::ports::DeadLetterReason;
    let mut report = StageBatchReport::default();
    let mut read = Vec::with_capacity(messages.len());
    for message in messages {
        match read_stage_message(message.body, now) {
            Ok(stage) => read.push((message, stage)),
            Err(why) => {
                let reason = DeadLetterReason {
                    class: DeadLetterClass::Malformed,
                    detail: format!("not a stage: {why}"),
                };
                report.malformed += 1;
                if queue.dead_letter(message.body, &reason).await.is_err() {
                    report.failed.push(message.message_id.to_owned());
                }
            }
        }
    }
    let stages: Vec<StageChange> = read.iter().map(|(_, s)| s.clone()).collect();
    let (outcomes, sent) = send_stages(leads, ledger, api, settings, &stages, now).await;
    report.stages = sent;
    for ((message, stage), outcome) in read.iter().zip(outcomes) {
        match outcome {
            StageOutcome::Sent | StageOutcome::AlreadySent => {}
            StageOutcome::Refused(refusal) => {
                tracing::warn!(lead_id = %stage.lead_id, class = %refusal.class, reason = %refusal.reason, "stage refused");
                let reason = DeadLetterReason {
                    class: refusal.class,
                    detail: refusal.reason,
                };
                if queue.dead_letter(message.body, &reason).await.is_err() {
                    report.failed.push(message.message_id.to_owned());
                }
            }
            StageOutcome::Retry { reason, .. } => {
                tracing::warn!(lead_id = %stage.lead_id, reason = %reason, "stage not sent yet: SQS delivers it again");
                report.failed.push(message.message_id.to_owned());
            }
        }
    }
    report
}

/// Whether a lead created at `created_time` can still have its initial stage sent: one
/// older than the 7 days (a backfill of old leads) would only be refused `expired`.
pub fn initial_stage_in_time(created_time: i64, now: i64) -> bool {
    now - created_time <= MAX_AGE_SECONDS - AGE_MARGIN_SECONDS
}

/// Each new lead's initial stage, from the leads table's stream (deliver on AWS): one per
/// first write, at the lead's creation time; none for a lead too old to send it for.
pub fn initial_stages(
    records: &[crate::lead_received::StreamRecord],
    name: &StageName,
    now: i64,
) -> Vec<StageChange> {
    records
        .iter()
        .filter_map(|record| match &record.change {
            crate::lead_received::StreamChange::Insert(event) => {
                let created = time::OffsetDateTime::parse(
                    &event.created_time,
                    &time::format_description::well_known::Rfc3339,
                )
                .ok()?
                .unix_timestamp();
                if !initial_stage_in_time(created, now) {
                    return None;
                }
                Some(StageChange::initial(&event.lead_id, name, created))
            }
            _ => None,
        })
        .collect()
}

/// `code 100/2804003` or `HTTP 503`: what to quote of Meta's answer.
fn code_of(e: &leadpipe_graph::GraphError) -> String {
    match (e.code, e.subcode, e.status) {
        (Some(code), Some(sub), _) => format!("code {code}/{sub}"),
        (Some(code), None, _) => format!("code {code}"),
        (None, _, Some(status)) => format!("HTTP {status}"),
        _ => "no answer".into(),
    }
}

#[cfg(test)]
mod tests;
