//! Meta's webhook payload for `object: "page"`, field `leadgen`.
//!
//! One POST may carry several entries, each with several changes. Changes of other fields
//! are skipped and counted; a `leadgen` change whose value cannot be read is counted as
//! invalid rather than failing the whole post, so one odd change never holds back the rest
//! (the backfill recovers anything a webhook could not carry).

use crate::event::LeadEvent;
use crate::ids::{flexible_id, flexible_unix_seconds, optional_flexible_id};
use serde::Deserialize;
use time::OffsetDateTime;

/// The `field` of the changes leadpipe acts on.
pub const LEADGEN_FIELD: &str = "leadgen";
/// The `object` of the posts leadpipe acts on.
pub const PAGE_OBJECT: &str = "page";

/// A JSON error that says where the input broke and what kind of break, never the input
/// itself: serde's own messages quote values, and values may be a customer's email.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{category} JSON at line {line}, column {column}{}", missing_field.as_ref().map(|f| format!(" (missing field `{f}`)")).unwrap_or_default())]
pub struct JsonError {
    pub category: &'static str,
    pub line: usize,
    pub column: usize,
    /// A field name is the schema's, not the input's, so it is safe to say.
    pub missing_field: Option<String>,
}

impl From<serde_json::Error> for JsonError {
    fn from(err: serde_json::Error) -> Self {
        let category = match err.classify() {
            serde_json::error::Category::Io => "unreadable",
            serde_json::error::Category::Syntax => "malformed",
            serde_json::error::Category::Data => "unexpected shape of",
            serde_json::error::Category::Eof => "truncated",
        };
        let message = err.to_string();
        let missing_field = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
            .map(str::to_owned);
        Self {
            category,
            line: err.line(),
            column: err.column(),
            missing_field,
        }
    }
}

#[derive(Debug, Deserialize)]
struct Payload {
    object: String,
    #[serde(default)]
    entry: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
struct Entry {
    #[serde(default, deserialize_with = "optional_flexible_id")]
    id: Option<String>,
    #[serde(default, deserialize_with = "flexible_unix_seconds")]
    time: Option<i64>,
    #[serde(default)]
    changes: Vec<Change>,
}

#[derive(Debug, Deserialize)]
struct Change {
    #[serde(default)]
    field: String,
    #[serde(default)]
    value: serde_json::Value,
}

#[derive(Debug, Deserialize)]
struct LeadgenValue {
    #[serde(deserialize_with = "flexible_id")]
    leadgen_id: String,
    #[serde(default, deserialize_with = "optional_flexible_id")]
    page_id: Option<String>,
    #[serde(deserialize_with = "flexible_id")]
    form_id: String,
    #[serde(default, deserialize_with = "optional_flexible_id")]
    ad_id: Option<String>,
    #[serde(default, deserialize_with = "optional_flexible_id")]
    adgroup_id: Option<String>,
    #[serde(default, deserialize_with = "flexible_unix_seconds")]
    created_time: Option<i64>,
}

/// What one webhook post held, ready to queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The post's `object`; only `page` posts carry leads.
    pub object: String,
    pub entries: usize,
    pub changes: usize,
    /// Changes of a field other than `leadgen`.
    pub skipped_changes: usize,
    /// `leadgen` changes without a readable leadgen id, form id or time.
    pub invalid_changes: usize,
    pub events: Vec<LeadEvent>,
}

impl Delivery {
    /// Whether this post is one leadpipe acts on at all.
    pub fn is_page_object(&self) -> bool {
        self.object == PAGE_OBJECT
    }
}

/// Parses a webhook body (already signature-checked) into lead events.
///
/// Fails only when the body is not JSON of the webhook's outer shape; see the module docs
/// for how odd changes inside a good body are treated.
pub fn parse_delivery(body: &[u8], received_at: OffsetDateTime) -> Result<Delivery, JsonError> {
    let payload: Payload = serde_json::from_slice(body)?;
    let mut delivery = Delivery {
        object: payload.object,
        entries: payload.entry.len(),
        changes: 0,
        skipped_changes: 0,
        invalid_changes: 0,
        events: Vec::new(),
    };
    if !delivery.is_page_object() {
        delivery.changes = payload.entry.iter().map(|e| e.changes.len()).sum();
        delivery.skipped_changes = delivery.changes;
        return Ok(delivery);
    }
    for entry in payload.entry {
        for change in entry.changes {
            delivery.changes += 1;
            if change.field != LEADGEN_FIELD {
                delivery.skipped_changes += 1;
                continue;
            }
            match lead_event(change.value, &entry.id, entry.time, received_at) {
                Some(event) => delivery.events.push(event),
                None => delivery.invalid_changes += 1,
            }
        }
    }
    Ok(delivery)
}

fn lead_event(
    value: serde_json::Value,
    entry_id: &Option<String>,
    entry_time: Option<i64>,
    received_at: OffsetDateTime,
) -> Option<LeadEvent> {
    let value: LeadgenValue = serde_json::from_value(value).ok()?;
    // The entry id is the page id; Meta sends both, but either alone is enough.
    let page_id = value.page_id.or_else(|| entry_id.clone())?;
    let created_time = value.created_time.or(entry_time)?;
    Some(LeadEvent {
        leadgen_id: value.leadgen_id,
        page_id,
        form_id: value.form_id,
        ad_id: value.ad_id,
        adgroup_id: value.adgroup_id,
        created_time,
        received_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-11-29 05:00:00 UTC);

    /// Meta's own sample from "Retrieving Leads" (numeric ids), as JSON.
    const META_DOC_SAMPLE: &str = r#"{"object":"page","entry":[{"id":153125381133,"time":1438292065,
        "changes":[
          {"field":"leadgen","value":{"leadgen_id":123123123123,"page_id":123123123,"form_id":12312312312,
            "adgroup_id":12312312312,"ad_id":12312312312,"created_time":1440120384}},
          {"field":"leadgen","value":{"leadgen_id":123123123124,"page_id":123123123,"form_id":12312312312,
            "adgroup_id":12312312312,"ad_id":12312312312,"created_time":1440120384}}]}]}"#;

    #[test]
    fn meta_doc_sample_with_numeric_ids() {
        let delivery = parse_delivery(META_DOC_SAMPLE.as_bytes(), NOW).unwrap();
        assert_eq!(delivery.entries, 1);
        assert_eq!(delivery.changes, 2);
        assert_eq!(delivery.events.len(), 2);
        let first = &delivery.events[0];
        assert_eq!(first.leadgen_id, "123123123123");
        assert_eq!(first.page_id, "123123123");
        assert_eq!(first.form_id, "12312312312");
        assert_eq!(first.ad_id.as_deref(), Some("12312312312"));
        assert_eq!(first.adgroup_id.as_deref(), Some("12312312312"));
        assert_eq!(first.created_time, 1_440_120_384);
        assert_eq!(first.received_at, NOW);
        assert_eq!(delivery.events[1].leadgen_id, "123123123124");
    }

    #[test]
    fn real_format_with_string_ids_and_unknown_fields() {
        let body = r#"{"object":"page","entry":[{"id":"1111","time":1700000000,"extra":{"x":1},
            "changes":[{"field":"leadgen","value":{"leadgen_id":"4444","page_id":"1111",
            "form_id":"2222","ad_id":"3333","adgroup_id":"5555","created_time":1700000000,
            "something_new":"ignored"}}]}]}"#;
        let delivery = parse_delivery(body.as_bytes(), NOW).unwrap();
        assert_eq!(delivery.events.len(), 1);
        assert_eq!(delivery.events[0].leadgen_id, "4444");
        assert_eq!(delivery.events[0].ad_id.as_deref(), Some("3333"));
    }

    #[test]
    fn several_entries_with_several_changes_and_a_non_leadgen_change() {
        let body = r#"{"object":"page","entry":[
            {"id":"1","time":10,"changes":[
               {"field":"leadgen","value":{"leadgen_id":"a1","page_id":"1","form_id":"f","created_time":10}},
               {"field":"feed","value":{"item":"status","verb":"add"}},
               {"field":"leadgen","value":{"leadgen_id":"a2","page_id":"1","form_id":"f","created_time":11}}]},
            {"id":"2","time":12,"changes":[
               {"field":"leadgen","value":{"leadgen_id":"b1","page_id":"2","form_id":"g","created_time":12}}]}]}"#;
        let delivery = parse_delivery(body.as_bytes(), NOW).unwrap();
        assert_eq!(delivery.entries, 2);
        assert_eq!(delivery.changes, 4);
        assert_eq!(delivery.skipped_changes, 1);
        assert_eq!(delivery.invalid_changes, 0);
        let ids: Vec<_> = delivery
            .events
            .iter()
            .map(|e| e.leadgen_id.as_str())
            .collect();
        assert_eq!(ids, ["a1", "a2", "b1"]);
        assert_eq!(delivery.events[2].page_id, "2");
    }

    #[test]
    fn organic_lead_without_ad_and_page_id_from_entry() {
        let body = r#"{"object":"page","entry":[{"id":"77","time":99,"changes":[
            {"field":"leadgen","value":{"leadgen_id":"9","form_id":"8"}}]}]}"#;
        let delivery = parse_delivery(body.as_bytes(), NOW).unwrap();
        let event = &delivery.events[0];
        assert_eq!(event.page_id, "77");
        assert_eq!(event.created_time, 99);
        assert_eq!(event.ad_id, None);
        assert_eq!(event.adgroup_id, None);
    }

    #[test]
    fn unreadable_leadgen_change_is_counted_not_fatal() {
        let body = r#"{"object":"page","entry":[{"id":"1","changes":[
            {"field":"leadgen","value":{"page_id":"1","form_id":"f","created_time":1}},
            {"field":"leadgen","value":{"leadgen_id":-5,"page_id":"1","form_id":"f","created_time":1}},
            {"field":"leadgen","value":"not an object"},
            {"field":"leadgen","value":{"leadgen_id":"ok","page_id":"1","form_id":"f","created_time":1}}]}]}"#;
        let delivery = parse_delivery(body.as_bytes(), NOW).unwrap();
        assert_eq!(delivery.invalid_changes, 3);
        assert_eq!(delivery.events.len(), 1);
        assert_eq!(delivery.events[0].leadgen_id, "ok");
    }

    #[test]
    fn other_objects_are_read_but_yield_nothing() {
        let body = r#"{"object":"instagram","entry":[{"id":"1","changes":[
            {"field":"leadgen","value":{"leadgen_id":"x","page_id":"1","form_id":"f","created_time":1}}]}]}"#;
        let delivery = parse_delivery(body.as_bytes(), NOW).unwrap();
        assert!(!delivery.is_page_object());
        assert!(delivery.events.is_empty());
        assert_eq!(delivery.skipped_changes, 1);
    }

    #[test]
    fn malformed_json_is_an_error_that_quotes_nothing() {
        for body in [
            &b"{\"object\":\"page\",\"entry\":[{\"changes\":[{\"field\":\"leadgen\",\"value\":{"[..],
            b"not json at all",
            b"{\"object\":42}",
            b"{\"entry\":[]}",
            b"",
            b"{\"object\":\"secret@example.com\",\"entry\":7}",
        ] {
            let err = parse_delivery(body, NOW).unwrap_err();
            assert!(!err.to_string().contains("secret@example.com"), "{err}");
        }
    }
}
