//! Lead event v1, "Lead Received": what leadpipe tells the world about a new lead, once per
//! lead (its first write). On AWS it is an EventBridge event's `detail` (`source`
//! `leadpipe`, `detail-type` `Lead Received`); locally it is the body of each forwarded POST.
//! The JSON Schema is `schemas/lead-received.v1.json`; docs/leads-out.md says how it flows.
//!
//! And the deliver use case: stream records of first writes in, one event each out through an
//! [`EventPublisher`], with failed entries retried and the rest reported so the stream
//! retries from the first one that could not be published.

use crate::ports::LeadSourceKind;
pub use crate::readable::{Answer, Contact};
use crate::record::LeadRecord;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// EventBridge `source`.
pub const EVENT_SOURCE: &str = "leadpipe";
/// EventBridge `detail-type`.
pub const DETAIL_TYPE: &str = "Lead Received";
/// The event's `version`.
pub const VERSION: &str = "1";

/// One checkbox of a form's custom disclaimer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DisclaimerAnswer {
    /// The checkbox's key.
    pub checkbox_key: String,
    /// Whether the person ticked it.
    pub is_checked: bool,
}

/// Lead event v1. `Debug` names the lead, never its answers.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeadReceived {
    /// Always [`VERSION`].
    pub version: String,
    /// The lead's Graph id; receivers de-duplicate on it.
    pub lead_id: String,
    /// RFC 3339 UTC, to the second.
    pub created_time: String,
    /// The page.
    pub page_id: String,
    /// The form; absent for an ad lead with no form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub form_id: Option<String>,
    /// The ad.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ad_id: Option<String>,
    /// The ad's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ad_name: Option<String>,
    /// The ad set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adset_id: Option<String>,
    /// The ad set's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adset_name: Option<String>,
    /// The campaign.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign_id: Option<String>,
    /// The campaign's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign_name: Option<String>,
    /// `fb`, `ig`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// Whether it came without an ad.
    pub is_organic: bool,
    /// Each question's name and every value given, in order.
    pub fields: BTreeMap<String, Vec<String>>,
    /// The form's custom disclaimer answers.
    pub custom_disclaimer_responses: Vec<DisclaimerAnswer>,
    /// How it came in.
    pub source: LeadSourceKind,
    /// When it was first stored, RFC 3339 UTC.
    pub ingested_at: String,
    /// The form's name, when leadpipe knew the form (added in v1: receivers ignore what
    /// they do not know; docs/leads-out.md, "Compatibility").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub form_name: Option<String>,
    /// Each answer under its question's label, in the form's order, option keys shown as
    /// the choices' text. `fields` stays as Meta gave it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub answers: Vec<Answer>,
    /// The person, normalised: each part only when the form asked.
    #[serde(default, skip_serializing_if = "Contact::is_empty")]
    pub contact: Contact,
}

impl std::fmt::Debug for LeadReceived {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeadReceived")
            .field("lead_id", &self.lead_id)
            .field("form_id", &self.form_id)
            .field("fields", &self.fields.len())
            .finish_non_exhaustive()
    }
}

impl LeadReceived {
    /// The event of a stored lead's record.
    pub fn from_record(record: &LeadRecord<'_>) -> Self {
        let optional = |name: &str| {
            record
                .optional
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        };
        Self {
            version: VERSION.to_owned(),
            lead_id: record.lead_id.to_owned(),
            created_time: record.created_time.clone(),
            page_id: record.page_id.to_owned(),
            form_id: record.form_id.map(str::to_owned),
            ad_id: optional("ad_id"),
            ad_name: optional("ad_name"),
            adset_id: optional("adset_id"),
            adset_name: optional("adset_name"),
            campaign_id: optional("campaign_id"),
            campaign_name: optional("campaign_name"),
            platform: optional("platform"),
            is_organic: record.is_organic,
            fields: record
                .fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.iter().map(|s| (*s).to_owned()).collect()))
                .collect(),
            custom_disclaimer_responses: record
                .disclaimers
                .iter()
                .map(|(key, checked)| DisclaimerAnswer {
                    checkbox_key: (*key).to_owned(),
                    is_checked: *checked,
                })
                .collect(),
            source: match record.source {
                "backfill" => LeadSourceKind::Backfill,
                _ => LeadSourceKind::Webhook,
            },
            ingested_at: record.ingested_at.clone(),
            form_name: record.readable.form_name.clone(),
            answers: record.readable.answers.clone(),
            contact: record.readable.contact.clone(),
        }
    }

    /// The event of a lead read back from a store (`forward`'s replay): the same event
    /// deliver and serve made at its first write.
    pub fn from_row(row: &crate::lead_row::LeadRow) -> Self {
        let optional = |name: &str| row.optional.get(name).cloned();
        Self {
            version: VERSION.to_owned(),
            lead_id: row.lead_id.clone(),
            created_time: row.created_time.clone(),
            page_id: row.page_id.clone(),
            form_id: row.form_id.clone(),
            ad_id: optional("ad_id"),
            ad_name: optional("ad_name"),
            adset_id: optional("adset_id"),
            adset_name: optional("adset_name"),
            campaign_id: optional("campaign_id"),
            campaign_name: optional("campaign_name"),
            platform: optional("platform"),
            is_organic: row.is_organic,
            fields: row.fields.clone(),
            custom_disclaimer_responses: serde_json::from_value(
                row.custom_disclaimer_responses.clone(),
            )
            .unwrap_or_default(),
            source: row.source,
            ingested_at: row.ingested_at.clone(),
            form_name: row.readable.form_name.clone(),
            answers: row.readable.answers.clone(),
            contact: row.readable.contact.clone(),
        }
    }

    /// The JSON body (EventBridge `detail`, or the forwarded POST's body).
    pub fn to_json(&self) -> String {
        // Strings, bools, maps and lists of strings: encoding cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

// ---- deliver ---------------------------------------------------------------------------------

/// Why one event could not be published. Never carries the event's contents.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct PublishError {
    /// The bus's error code (e.g. `ThrottlingException`), or `Unavailable` when the call failed.
    pub code: String,
    /// Its message.
    pub message: String,
}

/// Where lead events go: EventBridge on AWS.
pub trait EventPublisher {
    /// Publishes up to 10 events in one call; one result per event, in order.
    fn publish(
        &self,
        events: &[LeadReceived],
    ) -> impl Future<Output = Vec<Result<(), PublishError>>> + Send;

    /// Waits before a retry (the core has no timer of its own; the adapter's runtime has).
    fn pause(&self, wait: Duration) -> impl Future<Output = ()> + Send;
}

/// What a stream record is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamChange {
    /// A first write: one event.
    Insert(Box<LeadReceived>),
    /// An update or a removal (TTL, `forget`): no event.
    Other,
    /// A first write whose image is not a lead as leadpipe writes it; the reason names
    /// attributes, never values.
    Unreadable(String),
}

/// One record of the leads table's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRecord {
    /// The record's sequence number: what a batch item failure names.
    pub sequence: String,
    /// What it is.
    pub change: StreamChange,
}

/// How deliver retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliverSettings {
    /// Calls for the entries of one chunk that failed, after the first.
    pub retries: u32,
    /// The wait before the first retry; doubled each time.
    pub first_wait: Duration,
}

impl Default for DeliverSettings {
    fn default() -> Self {
        Self {
            retries: 3,
            first_wait: Duration::from_millis(100),
        }
    }
}

/// What one batch came to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliverReport {
    /// Events published.
    pub published: usize,
    /// Records that were not first writes.
    pub skipped: usize,
    /// Inserts whose image could not be read, as `(sequence, reason)`.
    pub unreadable: Vec<(String, String)>,
    /// Publishing failures seen (retried ones included), by the bus's code.
    pub publish_failures: BTreeMap<String, usize>,
    /// The first record not delivered: the stream retries from here. Records after it were
    /// not attempted, so a retry publishes none of them twice.
    pub retry_from: Option<String>,
}

impl DeliverReport {
    /// The counts the edges emit as metrics.
    pub fn metrics(&self) -> [(&'static str, u64); 4] {
        [
            ("LeadEventsPublished", self.published as u64),
            (
                "LeadEventPublishFailures",
                self.publish_failures.values().sum::<usize>() as u64,
            ),
            ("UnreadableStreamRecords", self.unreadable.len() as u64),
            (
                "DeliverBatchesRetried",
                u64::from(self.retry_from.is_some()),
            ),
        ]
    }
}

/// PutEvents' limits: entries per request, and their total size.
pub const MAX_REQUEST_ENTRIES: usize = 10;
/// See [`MAX_REQUEST_ENTRIES`]: 256 KB, counted as AWS counts an entry.
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;

/// An entry's size as EventBridge counts it: the UTF-8 bytes of `Source`, `DetailType`,
/// `Detail` and each resource, plus 14 for the time it stamps.
pub fn entry_bytes(event: &LeadReceived) -> usize {
    EVENT_SOURCE.len()
        + DETAIL_TYPE.len()
        + event.to_json().len()
        + "lead/".len()
        + event.lead_id.len()
        + 14
}

/// Publishes one event per first write, in stream order, ten at a time (fewer when ten
/// would pass the request's 256 KB). A chunk's failed
/// entries are retried (with a doubling wait); if some still fail, the batch stops there and
/// [`DeliverReport::retry_from`] names the first failed record, so the stream hands it (and
/// what follows) over again. Entries of that chunk published after the failed one are the
/// only ones a retry can publish twice; receivers de-duplicate on `lead_id`
/// (docs/leads-out.md, "Exactly once").
pub async fn deliver_batch<P: EventPublisher>(
    publisher: &P,
    records: &[StreamRecord],
    settings: &DeliverSettings,
) -> DeliverReport {
    let mut report = DeliverReport::default();
    let mut pending: Vec<(&str, &LeadReceived)> = Vec::new();
    let mut chunks: Vec<Vec<(&str, &LeadReceived)>> = Vec::new();
    let mut pending_bytes = 0;
    for record in records {
        match &record.change {
            StreamChange::Insert(event) => {
                // A request holds at most 10 entries and 256 KB of them.
                let bytes = entry_bytes(event);
                if !pending.is_empty() && pending_bytes + bytes > MAX_REQUEST_BYTES {
                    chunks.push(std::mem::take(&mut pending));
                    pending_bytes = 0;
                }
                pending.push((record.sequence.as_str(), event));
                pending_bytes += bytes;
                if pending.len() == MAX_REQUEST_ENTRIES {
                    chunks.push(std::mem::take(&mut pending));
                    pending_bytes = 0;
                }
            }
            StreamChange::Other => report.skipped += 1,
            StreamChange::Unreadable(reason) => {
                // It blocks where it stands, as a failed publish does: nothing after it is
                // delivered now; the stream retries from it, bisects, and finally sends it to
                // the on-failure destination.
                tracing::error!(sequence = %record.sequence, reason = %reason, "a stream record is not a lead leadpipe wrote");
                report
                    .unreadable
                    .push((record.sequence.clone(), reason.clone()));
                break;
            }
        }
    }
    if !pending.is_empty() {
        chunks.push(pending);
    }
    for chunk in chunks {
        let mut left: Vec<(&str, &LeadReceived)> = chunk;
        let mut wait = settings.first_wait;
        for attempt in 0..=settings.retries {
            let events: Vec<LeadReceived> = left.iter().map(|(_, e)| (*e).clone()).collect();
            let results = publisher.publish(&events).await;
            let mut failed = Vec::new();
            for (i, entry) in left.iter().enumerate() {
                match results.get(i) {
                    Some(Ok(())) => report.published += 1,
                    Some(Err(e)) => {
                        *report.publish_failures.entry(e.code.clone()).or_default() += 1;
                        failed.push(*entry);
                    }
                    None => {
                        *report
                            .publish_failures
                            .entry("NoResult".into())
                            .or_default() += 1;
                        failed.push(*entry);
                    }
                }
            }
            left = failed;
            if left.is_empty() {
                break;
            }
            if attempt < settings.retries {
                tracing::warn!(
                    failed = left.len(),
                    attempt = attempt + 1,
                    "lead events not accepted by the bus; retrying them"
                );
                publisher.pause(wait).await;
                wait *= 2;
            }
        }
        if let Some((seq, _)) = left.first() {
            report.retry_from = Some((*seq).to_owned());
            return report;
        }
    }
    report.retry_from = report.unreadable.first().map(|(s, _)| s.clone());
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::StoredLead;
    use std::sync::Mutex;

    fn event(id: &str) -> LeadReceived {
        let lead = leadpipe_graph::Lead::from_json(&format!(
            r#"{{"id":"{id}","created_time":"2026-11-30T04:00:00+0000","form_id":"55","ad_id":"6","platform":"ig",
                "field_data":[{{"name":"email","values":["p@example.org"]}},{{"name":"services","values":["a","b"]}}],
                "custom_disclaimer_responses":[{{"checkbox_key":"terms","is_checked":"1"}}]}}"#
        ))
        .unwrap();
        let form: crate::forms::Form = serde_json::from_value(serde_json::json!({
            "id": "55", "name": "Solar quote", "locale": "en_US", "fetched_at": 0,
            "questions": [
                {"key": "services", "label": "Which services?", "type": "CUSTOM",
                 "options": [{"key": "a", "value": "Solar panels"}, {"key": "b", "value": "Battery"}]},
                {"key": "email", "label": "Email", "type": "EMAIL"}]
        }))
        .unwrap();
        let stored = StoredLead {
            readable: crate::readable::Readable::of(&lead.field_data, Some(&form)),
            lead,
            page_id: "77".into(),
            form_id: Some("55".into()),
            source: LeadSourceKind::Webhook,
            ingested_at: time::macros::datetime!(2026-11-30 04:00:02 UTC),
        };
        LeadReceived::from_record(&stored.record())
    }

    fn insert(seq: u64, id: &str) -> StreamRecord {
        StreamRecord {
            sequence: seq.to_string(),
            change: StreamChange::Insert(Box::new(event(id))),
        }
    }

    /// A bus that refuses the listed lead ids a given number of times each.
    #[derive(Default)]
    struct FlakyBus {
        refuse: Mutex<BTreeMap<String, u32>>,
        published: Mutex<Vec<String>>,
        calls: Mutex<Vec<usize>>,
    }

    impl EventPublisher for FlakyBus {
        async fn publish(&self, events: &[LeadReceived]) -> Vec<Result<(), PublishError>> {
            self.calls.lock().unwrap().push(events.len());
            events
                .iter()
                .map(|e| {
                    let mut refuse = self.refuse.lock().unwrap();
                    match refuse.get_mut(&e.lead_id) {
                        Some(n) if *n > 0 => {
                            *n -= 1;
                            Err(PublishError {
                                code: "ThrottlingException".into(),
                                message: "Rate exceeded".into(),
                            })
                        }
                        _ => {
                            self.published.lock().unwrap().push(e.lead_id.clone());
                            Ok(())
                        }
                    }
                })
                .collect()
        }

        async fn pause(&self, _wait: Duration) {}
    }

    fn quick() -> DeliverSettings {
        DeliverSettings {
            retries: 2,
            first_wait: Duration::from_millis(1),
        }
    }

    #[test]
    fn the_event_is_the_contract_without_raw() {
        let json: serde_json::Value = serde_json::from_str(&event("1").to_json()).unwrap();
        assert_eq!(json["version"], "1");
        assert_eq!(json["lead_id"], "1");
        assert_eq!(json["created_time"], "2026-11-30T04:00:00Z");
        assert_eq!(json["fields"]["services"], serde_json::json!(["a", "b"]));
        assert_eq!(
            json["custom_disclaimer_responses"],
            serde_json::json!([{"checkbox_key": "terms", "is_checked": true}])
        );
        assert_eq!(json["source"], "webhook");
        assert!(json.get("raw").is_none() && json.get("adset_id").is_none());
        assert!(!format!("{:?}", event("1")).contains("p@example.org"));
    }

    #[test]
    fn events_match_the_published_schema() {
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../../../schemas/lead-received.v1.json")).unwrap();
        let validator = jsonschema::validator_for(&schema).unwrap();
        let full = event("1");
        let mut bare = event("2");
        (bare.form_id, bare.ad_id, bare.platform) = (None, None, None);
        bare.fields.clear();
        bare.custom_disclaimer_responses.clear();
        bare.source = LeadSourceKind::Backfill;
        (bare.form_name, bare.answers) = (None, Vec::new());
        bare.contact = Default::default();
        assert_eq!(full.form_name.as_deref(), Some("Solar quote"));
        assert_eq!(full.answers[0].values, ["Solar panels", "Battery"]);
        let before_readable_parts = serde_json::json!({
            "version": "1", "lead_id": "9", "created_time": "2026-11-30T04:00:00Z",
            "page_id": "77", "is_organic": false, "fields": {}, "custom_disclaimer_responses": [],
            "source": "webhook", "ingested_at": "2026-11-30T04:00:00Z"});
        assert!(
            validator.is_valid(&before_readable_parts),
            "an event without the new parts is still v1"
        );
        let bare_json: serde_json::Value = serde_json::from_str(&bare.to_json()).unwrap();
        for part in ["form_name", "answers", "contact"] {
            assert!(
                bare_json.get(part).is_none(),
                "{part} is left out when empty"
            );
        }
        for e in [full, bare] {
            let json: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
            let errors: Vec<String> = validator
                .iter_errors(&json)
                .map(|e| e.to_string())
                .collect();
            assert!(errors.is_empty(), "{errors:?}");
        }
        // And the schema refuses what the contract forbids.
        let mut with_raw: serde_json::Value = serde_json::from_str(&event("3").to_json()).unwrap();
        with_raw["raw"] = serde_json::json!("{}");
        assert!(!validator.is_valid(&with_raw));
        let mut empty_form: serde_json::Value =
            serde_json::from_str(&event("4").to_json()).unwrap();
        empty_form["form_id"] = serde_json::json!("");
        assert!(!validator.is_valid(&empty_form));
        let mut both: serde_json::Value = serde_json::from_str(&event("5").to_json()).unwrap();
        both["contact"]["phone"] = serde_json::json!("+12125550123");
        both["contact"]["phone_as_given"] = serde_json::json!("212 555");
        assert!(
            !validator.is_valid(&both),
            "a phone is read or kept as given, not both"
        );
    }

    #[tokio::test]
    async fn one_event_per_insert_in_chunks_of_ten_and_updates_are_skipped() {
        let bus = FlakyBus::default();
        let mut records: Vec<StreamRecord> =
            (0..23).map(|i| insert(100 + i, &format!("L{i}"))).collect();
        records.insert(
            5,
            StreamRecord {
                sequence: "99".into(),
                change: StreamChange::Other,
            },
        );
        let report = deliver_batch(&bus, &records, &quick()).await;
        assert_eq!(report.published, 23);
        assert_eq!(report.skipped, 1);
        assert_eq!(report.retry_from, None);
        assert_eq!(*bus.calls.lock().unwrap(), [10, 10, 3]);
    }

    #[tokio::test]
    async fn requests_are_cut_by_size_as_well_as_by_count() {
        let bus = FlakyBus::default();
        // Eight leads of about 40 KB: ten would fit the count, not PutEvents' 256 KB.
        let records: Vec<StreamRecord> = (0..8)
            .map(|i| {
                let mut e = event(&format!("L{i}"));
                e.fields.insert("notes".into(), vec!["x".repeat(40 * 1024)]);
                StreamRecord {
                    sequence: (100 + i).to_string(),
                    change: StreamChange::Insert(Box::new(e)),
                }
            })
            .collect();
        let report = deliver_batch(&bus, &records, &quick()).await;
        assert_eq!(report.published, 8);
        assert_eq!(*bus.calls.lock().unwrap(), [6, 2]);
        let sizes: Vec<usize> = records
            .iter()
            .map(|r| match &r.change {
                StreamChange::Insert(e) => entry_bytes(e),
                _ => 0,
            })
            .collect();
        assert!(sizes[..6].iter().sum::<usize>() <= MAX_REQUEST_BYTES);
        assert!(sizes[..7].iter().sum::<usize>() > MAX_REQUEST_BYTES);
    }

    #[tokio::test]
    async fn failed_entries_are_retried_alone_and_nothing_is_doubled() {
        let bus = FlakyBus::default();
        bus.refuse.lock().unwrap().insert("L3".into(), 2);
        bus.refuse.lock().unwrap().insert("L7".into(), 1);
        let records: Vec<StreamRecord> =
            (0..10).map(|i| insert(100 + i, &format!("L{i}"))).collect();
        let report = deliver_batch(&bus, &records, &quick()).await;
        assert_eq!(report.published, 10);
        assert_eq!(report.retry_from, None);
        assert_eq!(report.publish_failures["ThrottlingException"], 3);
        let published = bus.published.lock().unwrap().clone();
        let unique: std::collections::BTreeSet<_> = published.iter().collect();
        assert_eq!(
            unique.len(),
            published.len(),
            "no event twice: {published:?}"
        );
        assert_eq!(*bus.calls.lock().unwrap(), [10, 2, 1]);
    }

    #[tokio::test]
    async fn a_lasting_failure_stops_the_batch_at_the_first_failed_record() {
        let bus = FlakyBus::default();
        bus.refuse.lock().unwrap().insert("L12".into(), 99);
        let records: Vec<StreamRecord> =
            (0..25).map(|i| insert(100 + i, &format!("L{i}"))).collect();
        let report = deliver_batch(&bus, &records, &quick()).await;
        assert_eq!(report.retry_from.as_deref(), Some("112"));
        // The first chunk and the failed chunk's others; the third chunk is never tried.
        assert_eq!(report.published, 19);
        assert!(!bus.published.lock().unwrap().contains(&"L20".to_owned()));
    }

    #[tokio::test]
    async fn an_unreadable_image_is_reported_and_nothing_after_it_is_published() {
        let bus = FlakyBus::default();
        let mut records: Vec<StreamRecord> =
            (0..25).map(|i| insert(100 + i, &format!("L{i}"))).collect();
        records[21] = StreamRecord {
            sequence: "121".into(),
            change: StreamChange::Unreadable("fields is not a map".into()),
        };
        let report = deliver_batch(&bus, &records, &quick()).await;
        assert_eq!(report.retry_from.as_deref(), Some("121"));
        assert_eq!(report.unreadable.len(), 1);
        // 100 to 120 are published; 122 to 124 wait for the retry from 121.
        assert_eq!(report.published, 21);
        assert!(!bus.published.lock().unwrap().contains(&"L22".to_owned()));
    }
}
