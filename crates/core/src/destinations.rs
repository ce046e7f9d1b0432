//! Destinations (DESIGN.md, "Destinations"; docs/destinations.md): where a stored lead goes
//! after leadpipe (HubSpot, Salesforce, Pipedrive, Slack, a signed webhook), written once
//! for both deployments. This module holds the rules: the destinations file (TOML) read and
//! checked, a mapping from the lead event to a service's properties with defaults per kind,
//! and the forwarder: per destination and lead its own state (pending, delivered, dead with
//! the service's reason, lead values scrubbed from it), retries with backoff that honour a
//! service's own wait, a destination paused whole while its budget is spent. The services
//! are behind [`Destination`] (adapters in `leadpipe-crm`), the states behind
//! [`DeliveryLedger`].

use crate::dead_letter::DeadLetterClass;
use crate::failure::{Cause, StoreError};
use crate::lead_received::LeadReceived;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

#[cfg(test)]
mod tests;

/// A destination's name: 1 to 64 of `a-z`, `0-9`, `_`, `-`; the secret's
/// `destinations.<name>` holds its credentials.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct DestinationName(String);

impl DestinationName {
    /// `name`, when it is one.
    pub fn parse(name: &str) -> Result<Self, ConfigError> {
        let ok = (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if ok {
            Ok(Self(name.to_owned()))
        } else {
            Err(ConfigError::Name(name.chars().take(64).collect()))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for DestinationName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The services leadpipe delivers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DestinationKind {
    /// Contacts upserted by email (batch upsert, dated paths).
    Hubspot,
    /// A `Lead` upserted on an external id field holding the Meta lead id.
    Salesforce,
    /// A person found by email or created, then a lead linked to them.
    Pipedrive,
    /// A short message through an incoming webhook.
    Slack,
    /// The lead event, signed, to a URL of the business's own.
    Webhook,
}

impl DestinationKind {
    /// The kind's name in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hubspot => "hubspot",
            Self::Salesforce => "salesforce",
            Self::Pipedrive => "pipedrive",
            Self::Slack => "slack",
            Self::Webhook => "webhook",
        }
    }

    /// The secret's keys under `destinations.<name>` this kind needs.
    pub fn credentials(self) -> &'static [&'static str] {
        match self {
            Self::Hubspot | Self::Pipedrive => &["token"],
            Self::Salesforce => &["client_id", "client_secret"],
            Self::Slack => &["webhook_url"],
            Self::Webhook => &["key"],
        }
    }

    /// How many leads one call may carry (HubSpot's batch upsert takes 100).
    pub fn batch(self) -> usize {
        match self {
            Self::Hubspot => 100,
            _ => 1,
        }
    }

    /// The mapping a file with no `map` gets: the service's standard properties only, so a
    /// file with just a name, a kind and a credential works.
    pub fn default_map(self) -> Mapping {
        let pairs: &[(&str, &str)] = match self {
            Self::Hubspot => &[
                ("email", "contact.email"),
                ("phone", "contact.phone"),
                ("firstname", "contact.first_name"),
                ("lastname", "contact.last_name"),
                ("city", "contact.city"),
                ("state", "contact.state"),
                ("zip", "contact.zip"),
                ("country", "contact.country"),
            ],
            Self::Salesforce => &[
                ("Email", "contact.email"),
                ("Phone", "contact.phone"),
                ("FirstName", "contact.first_name"),
                ("LastName", "contact.last_name"),
                ("City", "contact.city"),
                ("State", "contact.state"),
                ("PostalCode", "contact.zip"),
                ("Country", "contact.country"),
                ("Company", "'[not provided]'"),
            ],
            Self::Pipedrive => &[
                ("name", "contact.full_name"),
                ("email", "contact.email"),
                ("phone", "contact.phone"),
            ],
            Self::Slack | Self::Webhook => &[],
        };
        Mapping(
            pairs
                .iter()
                .filter_map(|(t, s)| Source::parse(s).ok().map(|s| ((*t).to_owned(), s)))
                .collect(),
        )
    }
}

/// Where a mapped property's value comes from (DESIGN.md's list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The Meta lead id.
    LeadId,
    /// The form's id.
    FormId,
    /// The form's name, when known.
    FormName,
    /// The page's id.
    PageId,
    /// When Meta says the lead was created (RFC 3339).
    CreatedTime,
    /// The campaign's name.
    CampaignName,
    /// The ad's name.
    AdName,
    /// `fb`, `ig`, ...
    Platform,
    /// A part of the normalised contact (`contact.email`, `contact.phone`, ...).
    Contact(String),
    /// An answer's shown values by its key, joined by ", ".
    Answer(String),
    /// A field's values as Meta sent them, joined by ", ".
    Field(String),
    /// A literal, written `'in single quotes'`.
    Literal(String),
}

impl Source {
    /// A source as written in the file.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::Source(text.chars().take(80).collect());
        if let Some(inner) = text.strip_prefix('\'').and_then(|t| t.strip_suffix('\'')) {
            return Ok(Self::Literal(inner.to_owned()));
        }
        let key = |rest: &str| {
            (!rest.is_empty() && rest.chars().all(|c| !c.is_control()))
                .then(|| rest.to_owned())
                .ok_or_else(bad)
        };
        Ok(match text {
            "lead_id" => Self::LeadId,
            "form_id" => Self::FormId,
            "form_name" => Self::FormName,
            "page_id" => Self::PageId,
            "created_time" => Self::CreatedTime,
            "campaign_name" => Self::CampaignName,
            "ad_name" => Self::AdName,
            "platform" => Self::Platform,
            other => {
                if let Some(part) = other.strip_prefix("contact.") {
                    if !crate::readable::Contact::PARTS.contains(&part) {
                        return Err(bad());
                    }
                    Self::Contact(part.to_owned())
                } else if let Some(rest) = other.strip_prefix("answers.") {
                    Self::Answer(key(rest)?)
                } else if let Some(rest) = other.strip_prefix("fields.") {
                    Self::Field(key(rest)?)
                } else {
                    return Err(bad());
                }
            }
        })
    }

    /// The value for `lead`; `None` when the lead has none.
    pub fn value(&self, lead: &LeadReceived) -> Option<String> {
        let joined = |values: &[String]| (!values.is_empty()).then(|| values.join(", "));
        match self {
            Self::LeadId => Some(lead.lead_id.clone()),
            Self::FormId => lead.form_id.clone(),
            Self::FormName => lead.form_name.clone(),
            Self::PageId => Some(lead.page_id.clone()),
            Self::CreatedTime => Some(lead.created_time.clone()),
            Self::CampaignName => lead.campaign_name.clone(),
            Self::AdName => lead.ad_name.clone(),
            Self::Platform => lead.platform.clone(),
            Self::Contact(part) => lead.contact.part(part).map(str::to_owned),
            Self::Answer(key) => lead
                .answers
                .iter()
                .find(|a| &a.key == key)
                .and_then(|a| joined(&a.values)),
            Self::Field(key) => lead.fields.get(key).and_then(|v| joined(v)),
            Self::Literal(text) => Some(text.clone()),
        }
    }

    /// Whether the value is the person's own (contact, answers, fields): what a refusal's
    /// reason must never repeat.
    pub fn is_personal(&self) -> bool {
        matches!(self, Self::Contact(_) | Self::Answer(_) | Self::Field(_))
    }
}

/// Target property ← source, in the file's order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mapping(pub Vec<(String, Source)>);

impl Mapping {
    /// The properties `lead` has values for, in order.
    pub fn apply(&self, lead: &LeadReceived) -> Vec<(String, String)> {
        self.0
            .iter()
            .filter_map(|(target, source)| source.value(lead).map(|v| (target.clone(), v)))
            .collect()
    }

    /// Every value of the lead a reason could echo: the person's own values and the mapped
    /// ones, each of at least 3 characters.
    pub fn private_values(&self, lead: &LeadReceived) -> Vec<String> {
        let mut values: Vec<String> = self
            .0
            .iter()
            .filter(|(_, s)| s.is_personal())
            .filter_map(|(_, s)| s.value(lead))
            .collect();
        values.extend(lead.contact.parts().map(|(_, v)| v.to_owned()));
        values.extend(lead.fields.values().flatten().cloned());
        values.extend(lead.answers.iter().flat_map(|a| a.values.iter().cloned()));
        values.retain(|v| v.chars().count() >= 3);
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values.dedup();
        values
    }
}

/// A service's words about a lead, with the lead's values taken out (`…`), cut to 300
/// characters and one line: what a dead letter's reason keeps.
pub fn scrub(reason: &str, private: &[String]) -> String {
    let mut text = reason.replace(['\n', '\r', '\t'], " ");
    for value in private.iter().filter(|v| !v.is_empty()) {
        // Services echo values in another case (emails upper-cased): matched without ASCII
        // case, which keeps byte offsets, so the original text is cut at the same places.
        let needle = value.to_ascii_lowercase();
        let mut out = String::with_capacity(text.len());
        let mut rest = text.as_str();
        while let Some(at) = rest.to_ascii_lowercase().find(&needle) {
            out.push_str(&rest[..at]);
            out.push('…');
            rest = &rest[at + needle.len()..];
        }
        out.push_str(rest);
        text = out;
    }
    let mut cut: String = text.chars().filter(|c| !c.is_control()).take(300).collect();
    if text.chars().count() > 300 {
        cut.push('…');
    }
    cut
}

/// One destination as the file gives it, defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationConfig {
    /// Unique in the file.
    pub name: DestinationName,
    /// The service.
    pub kind: DestinationKind,
    /// The service's base URL (tests point it at stand-ins); each kind has its own default.
    pub base_url: Option<String>,
    /// Only these forms' leads (empty: every lead).
    pub forms: BTreeSet<String>,
    /// Target ← source: the file's `map` over the kind's defaults.
    pub map: Mapping,
    /// Salesforce: the Lead's external id field holding the Meta lead id.
    pub external_id_field: String,
    /// Salesforce: the REST API version (`v67.0`).
    pub api_version: String,
    /// Salesforce: the org's My Domain URL (`https://acme.my.salesforce.com`).
    pub login_url: Option<String>,
    /// Pipedrive: the deal custom field's key that holds the Meta lead id.
    pub lead_id_field: Option<String>,
    /// Slack: put the answers in the message (personal data in a chat: off by default).
    pub include_answers: bool,
    /// Webhook: where the signed lead event goes.
    pub url: Option<String>,
}

impl DestinationConfig {
    /// Whether this destination takes `lead` (its form is one of `forms`, or `forms` is
    /// empty).
    pub fn wants(&self, lead: &LeadReceived) -> bool {
        self.forms.is_empty()
            || lead
                .form_id
                .as_ref()
                .is_some_and(|f| self.forms.contains(f))
    }
}

/// Why the destinations file cannot be used; each names the destination and the key,
/// never a credential (the file holds none).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Not TOML, or not the file's shape.
    #[error("the destinations file is not valid: {0}")]
    Toml(String),
    /// A name that is not `a-z0-9_-` (1 to 64).
    #[error("destination name {0:?} is not 1 to 64 of a-z, 0-9, _ and -")]
    Name(String),
    /// Two destinations with one name.
    #[error("two destinations are named {0}")]
    Duplicate(String),
    /// A mapping source that is none of DESIGN.md's.
    #[error(
        "{0:?} is not a source: use lead_id, form_id, form_name, page_id, created_time, campaign_name, ad_name, platform, contact.<part>, answers.<key>, fields.<key> or 'a literal'"
    )]
    Source(String),
    /// A destination lacks a setting its kind needs, or has one that is wrong.
    #[error("destination {name}: {what}")]
    Setting {
        /// The destination.
        name: String,
        /// What is missing or wrong.
        what: String,
    },
}

/// The file's shape, as serde reads it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileShape {
    #[serde(default)]
    destination: Vec<EntryShape>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryShape {
    name: String,
    kind: DestinationKind,
    base_url: Option<String>,
    #[serde(default)]
    forms: Vec<String>,
    #[serde(default)]
    map: BTreeMap<String, String>,
    external_id_field: Option<String>,
    api_version: Option<String>,
    login_url: Option<String>,
    lead_id_field: Option<String>,
    #[serde(default)]
    include_answers: bool,
    url: Option<String>,
}

/// Salesforce's REST version when the file names none (Summer '26).
pub const SALESFORCE_API_VERSION: &str = "v67.0";
/// The Lead's external id field when the file names none.
pub const SALESFORCE_EXTERNAL_ID_FIELD: &str = "FB_Lead_Id__c";

/// Reads the destinations file.
pub fn parse_file(text: &str) -> Result<Vec<DestinationConfig>, ConfigError> {
    let shape: FileShape = toml::from_str(text).map_err(|e| {
        // toml's message quotes the line; the file holds no credential, so it may.
        ConfigError::Toml(e.message().to_owned())
    })?;
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for entry in shape.destination {
        let name = DestinationName::parse(&entry.name)?;
        if !seen.insert(name.clone()) {
            return Err(ConfigError::Duplicate(name.0));
        }
        let setting = |what: String| ConfigError::Setting {
            name: name.0.clone(),
            what,
        };
        let mut map = entry.kind.default_map();
        for (target, source) in &entry.map {
            if target.is_empty() || target.chars().any(char::is_control) {
                return Err(setting(format!("the map's key {target:?} is no property")));
            }
            let source = Source::parse(source)?;
            match map.0.iter_mut().find(|(t, _)| t == target) {
                Some(slot) => slot.1 = source,
                None => map.0.push((target.clone(), source)),
            }
        }
        for url in [&entry.base_url, &entry.login_url, &entry.url]
            .into_iter()
            .flatten()
        {
            let parsed =
                url::Url::parse(url).map_err(|e| setting(format!("{url:?} is not a URL: {e}")))?;
            let loopback = matches!(parsed.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
            match parsed.scheme() {
                "https" => {}
                // Leads are personal data: plain http only to this machine (stand-ins).
                "http" if loopback => {}
                "http" => {
                    return Err(setting(format!(
                        "{url:?} is plain http to another host: use https (leads are personal data)"
                    )));
                }
                _ => return Err(setting(format!("{url:?} is not an http(s) URL"))),
            }
        }
        match entry.kind {
            DestinationKind::Salesforce
                if entry.login_url.is_none() && entry.base_url.is_none() =>
            {
                return Err(setting(
                    "salesforce needs login_url, the org's My Domain (https://NAME.my.salesforce.com): login.salesforce.com refuses the client credentials flow".into(),
                ));
            }
            DestinationKind::Pipedrive if entry.lead_id_field.is_none() => {
                return Err(setting(
                    "pipedrive needs lead_id_field, the key of a text deal field holding the Meta lead id (Pipedrive has no upsert: leadpipe looks the lead up by it)".into(),
                ));
            }
            DestinationKind::Pipedrive if entry.base_url.is_none() => {
                return Err(setting(
                    "pipedrive needs base_url, the company's https://COMPANY.pipedrive.com".into(),
                ));
            }
            DestinationKind::Webhook if entry.url.is_none() => {
                return Err(setting("webhook needs url".into()));
            }
            _ => {}
        }
        out.push(DestinationConfig {
            kind: entry.kind,
            base_url: entry.base_url,
            forms: entry.forms.into_iter().collect(),
            map,
            external_id_field: entry
                .external_id_field
                .unwrap_or_else(|| SALESFORCE_EXTERNAL_ID_FIELD.to_owned()),
            api_version: entry
                .api_version
                .unwrap_or_else(|| SALESFORCE_API_VERSION.to_owned()),
            login_url: entry.login_url,
            lead_id_field: entry.lead_id_field,
            include_answers: entry.include_answers,
            url: entry.url,
            name,
        });
    }
    Ok(out)
}

/// A lead ready for one destination: the event, and its properties by the mapping.
#[derive(Clone, PartialEq, Eq)]
pub struct MappedLead {
    /// The lead event.
    pub lead: LeadReceived,
    /// Target property → value, in the mapping's order.
    pub properties: Vec<(String, String)>,
}

/// Names the lead, never its values.
impl std::fmt::Debug for MappedLead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedLead")
            .field("lead_id", &self.lead.lead_id)
            .field("properties", &self.properties.len())
            .finish()
    }
}

impl MappedLead {
    /// The property `target`'s value.
    pub fn property(&self, target: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|(t, _)| t == target)
            .map(|(_, v)| v.as_str())
    }
}

/// What a service answered for one lead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Taken; the service's record id when it gave one.
    Delivered(Option<String>),
    /// Not now (a 5xx, a time-out, a short rate limit): again after at least `after`.
    Retry {
        /// The service's own wait, when it said one.
        after: Option<Duration>,
        /// For the log and the last error: no lead value.
        reason: String,
    },
    /// The destination's budget is spent (a daily limit): nothing goes there until `for_`
    /// has passed.
    Pause {
        /// How long.
        for_: Duration,
        /// The service's words.
        reason: String,
    },
    /// Refused for good (a 4xx that a retry would not change): a dead letter.
    Refused {
        /// The service's words (scrubbed before it is kept).
        reason: String,
    },
    /// The credential or its rights were refused (a 401, a revoked webhook, a missing
    /// scope): this lead is a dead letter of `class` (`token` or `permission`), and the
    /// destination pauses for [`DENIED_PAUSE`] so a bad key does not dead-letter every lead;
    /// after the fix, `redrive --reason-class token` sends it again.
    Denied {
        /// `token` or `permission`.
        class: DeadLetterClass,
        /// The service's words.
        reason: String,
    },
}

/// How long a destination whose credential was refused waits before it tries again.
pub const DENIED_PAUSE: Duration = Duration::from_secs(300);

/// A service leads are delivered to (adapters in `leadpipe-crm`).
pub trait Destination: Send + Sync {
    /// Delivers `leads` (at most the kind's [`batch`](DestinationKind::batch)); one outcome
    /// per lead, in order. An adapter never fails whole: a lead it could not try is
    /// `Retry`.
    fn deliver(&self, leads: &[MappedLead]) -> impl Future<Output = Vec<Outcome>> + Send;

    /// One harmless authenticated call (`destinations check --live`): `Err` with the
    /// service's own words when the credential or the setup is wrong.
    fn check(&self) -> impl Future<Output = Result<String, String>> + Send;
}

/// A lead due for a destination, as the ledger hands it out (leased).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// The lead event.
    pub lead: LeadReceived,
    /// Tries so far.
    pub attempts: u32,
    /// When it was first queued for this destination (unix ms).
    pub queued_at_ms: i64,
}

/// Per destination and lead: pending, delivered or dead; and each destination's pause.
pub trait DeliveryLedger: Send + Sync {
    /// Leads due for `destination` at `now_ms`, at most `max`, each leased for `lease` (a
    /// crash leaves it due again after it), the oldest first.
    fn due(
        &self,
        destination: &DestinationName,
        now_ms: i64,
        max: usize,
        lease: Duration,
    ) -> impl Future<Output = Result<Vec<Due>, StoreError>> + Send;

    /// Records each lead's new state.
    fn record(
        &self,
        destination: &DestinationName,
        states: &[(String, DeliveryState)],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Until when (unix ms) the destination is paused, if it is.
    fn paused_until(
        &self,
        destination: &DestinationName,
    ) -> impl Future<Output = Result<Option<i64>, StoreError>> + Send;

    /// Pauses the destination until `until_ms` with the service's reason.
    fn pause(
        &self,
        destination: &DestinationName,
        until_ms: i64,
        reason: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// A lead's state at one destination after a try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryState {
    /// Taken by the service (its record id when given): never sent there again, except by
    /// `forward`.
    Delivered(Option<String>),
    /// Due again at `at_ms` (unix ms), after `attempts` tries; `reason` is the last one.
    Pending {
        /// Tries so far.
        attempts: u32,
        /// When it is due.
        at_ms: i64,
        /// The last failure (no lead value).
        reason: Option<String>,
    },
    /// A dead letter: `refused` (the service said no) or `exhausted` (too many tries, too
    /// old).
    Dead {
        /// The class.
        class: DeadLetterClass,
        /// The service's words, scrubbed.
        reason: String,
    },
}

/// The forwarder's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardLimits {
    /// Tries before a lead is `exhausted`.
    pub max_attempts: u32,
    /// Age (from first queued) after which a lead is `exhausted`.
    pub max_age: Duration,
    /// The first retry's wait; each next one doubles.
    pub first_backoff: Duration,
    /// The longest wait, a service's own included.
    pub max_backoff: Duration,
    /// How long a claimed lead stays leased: a process killed mid-round leaves its leads
    /// due again after it.
    pub lease: Duration,
    /// Leads per round.
    pub per_round: usize,
}

impl Default for ForwardLimits {
    fn default() -> Self {
        Self {
            max_attempts: 12,
            max_age: Duration::from_secs(86_400),
            first_backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(600),
            lease: Duration::from_secs(300),
            per_round: 100,
        }
    }
}

/// What one round did at one destination.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RoundReport {
    /// Delivered.
    pub delivered: usize,
    /// Due again later.
    pub retried: usize,
    /// Dead letters made.
    pub dead: usize,
    /// Whether the destination is paused (before or during the round).
    pub paused: bool,
}

/// Why a round could not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the delivery ledger: {0}")]
pub struct ForwardError(#[from] pub StoreError);

/// One round at one destination: the due leads, mapped, delivered in the kind's batches,
/// each outcome recorded. A pause stops the round and leaves the rest due when it ends.
pub async fn forward_round<L: DeliveryLedger, D: Destination>(
    ledger: &L,
    config: &DestinationConfig,
    destination: &D,
    limits: &ForwardLimits,
    now_ms: i64,
) -> Result<RoundReport, ForwardError> {
    let mut report = RoundReport::default();
    if ledger
        .paused_until(&config.name)
        .await?
        .is_some_and(|until| until > now_ms)
    {
        report.paused = true;
        return Ok(report);
    }
    // A round of one-lead calls is kept to five, so it ends within its lease even when each
    // call (up to four for Pipedrive) runs to its 15 s time-out.
    let per_round = limits.per_round.min(config.kind.batch().max(1) * 5);
    let due = ledger
        .due(&config.name, now_ms, per_round, limits.lease)
        .await?;
    let mut states: Vec<(String, DeliveryState)> = Vec::new();
    let mut rest = due.as_slice();
    while !rest.is_empty() {
        let (chunk, after) = rest.split_at(rest.len().min(config.kind.batch().max(1)));
        rest = after;
        let mapped: Vec<MappedLead> = chunk
            .iter()
            .map(|d| MappedLead {
                properties: config.map.apply(&d.lead),
                lead: d.lead.clone(),
            })
            .collect();
        let outcomes = destination.deliver(&mapped).await;
        let mut pause: Option<(Duration, String)> = None;
        for (i, due) in chunk.iter().enumerate() {
            let outcome = outcomes.get(i).cloned().unwrap_or(Outcome::Retry {
                after: None,
                reason: "the destination gave no answer for this lead".into(),
            });
            let private = config.map.private_values(&due.lead);
            let state = match outcome {
                Outcome::Delivered(record) => {
                    report.delivered += 1;
                    DeliveryState::Delivered(record)
                }
                Outcome::Refused { reason } => {
                    report.dead += 1;
                    DeliveryState::Dead {
                        class: DeadLetterClass::Refused,
                        reason: scrub(&reason, &private),
                    }
                }
                Outcome::Denied { class, reason } => {
                    let reason = scrub(&reason, &private);
                    report.dead += 1;
                    pause = Some((DENIED_PAUSE, reason.clone()));
                    DeliveryState::Dead { class, reason }
                }
                // A wait the service asked for is the destination's, not this lead's: the
                // whole destination waits it out, and no try is spent.
                Outcome::Retry {
                    after: Some(wait),
                    reason,
                } if !wait.is_zero() => {
                    let reason = scrub(&reason, &private);
                    let wait = wait.min(limits.max_backoff);
                    pause = Some((wait, reason.clone()));
                    held_state(due, wait, reason, limits, now_ms, &mut report)
                }
                Outcome::Retry { after, reason } => retry_state(
                    due,
                    after,
                    &scrub(&reason, &private),
                    limits,
                    now_ms,
                    &mut report,
                ),
                Outcome::Pause { for_, reason } => {
                    let reason = scrub(&reason, &private);
                    pause = Some((for_, reason.clone()));
                    // Not the lead's fault: no try is spent; it is due when the pause ends.
                    held_state(due, for_, reason, limits, now_ms, &mut report)
                }
            };
            states.push((due.lead.lead_id.clone(), state));
        }
        if let Some((for_, reason)) = pause {
            let until = now_ms.saturating_add(millis(for_.min(limits.max_age)));
            report.paused = true;
            // The rest of the round waits too, without a try.
            for due in rest {
                states.push((
                    due.lead.lead_id.clone(),
                    DeliveryState::Pending {
                        attempts: due.attempts,
                        at_ms: until,
                        reason: Some(reason.clone()),
                    },
                ));
            }
            // What was done is recorded before the pause: a pause that cannot be written
            // must not make delivered leads go again.
            ledger.record(&config.name, &states).await?;
            ledger.pause(&config.name, until, &reason).await?;
            return Ok(report);
        }
    }
    ledger.record(&config.name, &states).await?;
    Ok(report)
}

/// A lead held back by the destination's own wait: due when it ends, no try spent, unless
/// it is older than the limit (then `exhausted`, so a service that never stops asking to
/// wait cannot hold a lead forever).
fn held_state(
    due: &Due,
    wait: Duration,
    reason: String,
    limits: &ForwardLimits,
    now_ms: i64,
    report: &mut RoundReport,
) -> DeliveryState {
    if now_ms.saturating_sub(due.queued_at_ms) >= millis(limits.max_age) {
        report.dead += 1;
        return DeliveryState::Dead {
            class: DeadLetterClass::Exhausted,
            reason: format!("gave up after a day of waits: {reason}"),
        };
    }
    report.retried += 1;
    DeliveryState::Pending {
        attempts: due.attempts,
        at_ms: now_ms.saturating_add(millis(wait.min(limits.max_age))),
        reason: Some(reason),
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A failed try: due again after the backoff (or the service's longer wait, capped), or
/// `exhausted` when the tries or the age are used up.
fn retry_state(
    due: &Due,
    after: Option<Duration>,
    reason: &str,
    limits: &ForwardLimits,
    now_ms: i64,
    report: &mut RoundReport,
) -> DeliveryState {
    let attempts = due.attempts.saturating_add(1);
    let age = now_ms.saturating_sub(due.queued_at_ms);
    if attempts >= limits.max_attempts || age >= millis(limits.max_age) {
        report.dead += 1;
        return DeliveryState::Dead {
            class: DeadLetterClass::Exhausted,
            reason: format!("gave up after {attempts} tries: {reason}"),
        };
    }
    let backoff = limits
        .first_backoff
        .saturating_mul(1u32 << attempts.saturating_sub(1).min(20));
    let wait = backoff
        .max(after.unwrap_or_default())
        .min(limits.max_backoff);
    report.retried += 1;
    DeliveryState::Pending {
        attempts,
        at_ms: now_ms.saturating_add(millis(wait)),
        reason: Some(reason.to_owned()),
    }
}

/// A destination that cannot be reached or built: a cause for the ledger's errors.
pub fn unavailable(what: impl Into<String>) -> StoreError {
    StoreError::Unavailable(Cause::from(what.into()))
}

// ---- on a queue (the stack's destinations function) -------------------------------------

/// What a destination did with a lead, as the stack records it (the state table's
/// `delivery#<destination>#<lead id>` items): SQS holds the retries, this holds what is
/// done, so a message delivered again (at least once) sends nothing twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// Taken by the service.
    Delivered,
    /// Refused, and dead-lettered alone for that destination.
    Refused,
}

/// The stack's record of what each destination did with each lead.
pub trait DeliveryMarks: Send + Sync {
    /// The mark of `lead_id` at `destination`, if any.
    fn mark(
        &self,
        destination: &DestinationName,
        lead_id: &str,
    ) -> impl Future<Output = Result<Option<Mark>, StoreError>> + Send;

    /// Records `mark` (and the service's record id).
    fn set_mark(
        &self,
        destination: &DestinationName,
        lead_id: &str,
        mark: Mark,
        record: Option<&str>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// One message of the destinations queue.
#[derive(Debug, Clone, Copy)]
pub struct QueueMessage<'a> {
    /// SQS's message id (what a partial batch failure names).
    pub message_id: &'a str,
    /// The body: a `Lead Received` event as the rule delivers it (every destination), or
    /// a dead letter brought back (`{"destination", "event"}`: that destination only).
    pub body: &'a str,
}

/// A destination's dead letter: the one destination it is for, and the event.
#[derive(Debug, Serialize, Deserialize)]
pub struct DestinationLetter {
    /// The destination that refused it.
    pub destination: String,
    /// The lead event.
    pub event: LeadReceived,
}

/// What one batch of the destinations queue did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueBatchReport {
    /// (destination, lead) pairs delivered.
    pub delivered: usize,
    /// Pairs a mark said were done already.
    pub already: usize,
    /// Pairs refused (each dead-lettered for its destination).
    pub refused: usize,
    /// Messages that could not be read (dead-lettered `malformed`).
    pub malformed: usize,
    /// Messages SQS must deliver again (a retry, a pause, a mark or letter not written).
    pub failed: Vec<String>,
}

/// Reads a destinations queue message: the event, and the one destination it is for when
/// it is a dead letter brought back.
pub fn read_queue_message(body: &str) -> Result<(LeadReceived, Option<String>), String> {
    let value: serde_json::Value = serde_json::from_str(body)
        .map_err(|e| format!("not JSON ({})", crate::json_error::JsonError::from(e)))?;
    if let Some(destination) = value.get("destination").and_then(|d| d.as_str()) {
        let event = serde_json::from_value(value.get("event").cloned().unwrap_or_default())
            .map_err(|e| {
                format!(
                    "not a destination letter ({})",
                    crate::json_error::JsonError::from(e)
                )
            })?;
        return Ok((event, Some(destination.to_owned())));
    }
    let detail = match value.get("detail") {
        Some(detail) if value.get("detail-type").is_some() => detail.clone(),
        _ => value,
    };
    serde_json::from_value(detail)
        .map(|event| (event, None))
        .map_err(|e| {
            format!(
                "not a lead event ({})",
                crate::json_error::JsonError::from(e)
            )
        })
}

/// One SQS batch: each lead to each destination that takes it and has not had it; a
/// refusal dead-letters that (destination, lead) alone; a retry or a pause fails the
/// message, so SQS brings it back and the destinations already done are skipped. A
/// destination that asked to wait (a rate limit, a spent budget, a refused credential) is
/// not called again in this batch; past `deadline` nothing more is tried, so an
/// invocation ends with its partial answer rather than its time-out.
pub async fn deliver_queue_batch<M, D, Q>(
    marks: &M,
    destinations: &[(DestinationConfig, D)],
    queue: &Q,
    messages: &[QueueMessage<'_>],
    deadline: Option<std::time::Instant>,
) -> QueueBatchReport
where
    M: DeliveryMarks,
    D: Destination,
    Q: crate::ports::QueueControl,
{
    use crate::ports::DeadLetterReason;
    let mut report = QueueBatchReport::default();
    let mut waiting: BTreeSet<String> = BTreeSet::new();
    for message in messages {
        if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            report.failed.push(message.message_id.to_owned());
            continue;
        }
        let (event, only) = match read_queue_message(message.body) {
            Ok(read) => read,
            Err(why) => {
                report.malformed += 1;
                let reason = DeadLetterReason {
                    class: DeadLetterClass::Malformed,
                    detail: why,
                };
                if queue.dead_letter(message.body, &reason).await.is_err() {
                    report.failed.push(message.message_id.to_owned());
                }
                continue;
            }
        };
        // A letter for a destination no longer in the file waits again, saying so.
        if let Some(name) = &only
            && !destinations.iter().any(|(c, _)| c.name.as_str() == name)
        {
            report.refused += 1;
            let reason = DeadLetterReason {
                class: DeadLetterClass::Refused,
                detail: format!("destination {name} is not in the destinations file"),
            };
            if queue.dead_letter(message.body, &reason).await.is_err() {
                report.failed.push(message.message_id.to_owned());
            }
            continue;
        }
        let mut retry = false;
        for (config, destination) in destinations {
            let chosen = match &only {
                Some(name) => name == config.name.as_str(),
                None => config.wants(&event),
            };
            if !chosen {
                continue;
            }
            let mark = match marks.mark(&config.name, &event.lead_id).await {
                Ok(mark) => mark,
                Err(_) => {
                    retry = true;
                    continue;
                }
            };
            // A brought-back letter tries its refused destination again; a delivered one
            // never goes twice.
            match (mark, &only) {
                (Some(Mark::Delivered), _) | (Some(Mark::Refused), None) => {
                    report.already += 1;
                    continue;
                }
                _ => {}
            }
            if waiting.contains(config.name.as_str()) {
                retry = true;
                continue;
            }
            let mapped = MappedLead {
                properties: config.map.apply(&event),
                lead: event.clone(),
            };
            let outcome = destination
                .deliver(std::slice::from_ref(&mapped))
                .await
                .into_iter()
                .next()
                .unwrap_or(Outcome::Retry {
                    after: None,
                    reason: "no answer".into(),
                });
            let private = config.map.private_values(&event);
            let (class, reason) = match outcome {
                Outcome::Delivered(record) => {
                    report.delivered += 1;
                    if marks
                        .set_mark(
                            &config.name,
                            &event.lead_id,
                            Mark::Delivered,
                            record.as_deref(),
                        )
                        .await
                        .is_err()
                    {
                        retry = true;
                    }
                    continue;
                }
                Outcome::Refused { reason } => (DeadLetterClass::Refused, reason),
                Outcome::Denied { class, reason } => {
                    waiting.insert(config.name.to_string());
                    (class, reason)
                }
                Outcome::Retry { after, reason } => {
                    if after.is_some_and(|a| !a.is_zero()) {
                        waiting.insert(config.name.to_string());
                    }
                    tracing::info!(destination = %config.name, lead_id = %event.lead_id, reason = %scrub(&reason, &private), "destination: try again");
                    retry = true;
                    continue;
                }
                Outcome::Pause { reason, .. } => {
                    waiting.insert(config.name.to_string());
                    tracing::info!(destination = %config.name, reason = %scrub(&reason, &private), "destination: waits");
                    retry = true;
                    continue;
                }
            };
            report.refused += 1;
            let letter = DestinationLetter {
                destination: config.name.to_string(),
                event: event.clone(),
            };
            let reason = DeadLetterReason {
                class,
                detail: format!("destination {}: {}", config.name, scrub(&reason, &private)),
            };
            let body = serde_json::to_string(&letter).unwrap_or_default();
            let written = queue.dead_letter(&body, &reason).await.is_ok()
                && marks
                    .set_mark(&config.name, &event.lead_id, Mark::Refused, None)
                    .await
                    .is_ok();
            retry |= !written;
        }
        if retry {
            report.failed.push(message.message_id.to_owned());
        }
    }
    report
}
