//! Meta's webhook payload for `object: "page"`, field `leadgen`.
//!
//! One POST may carry several entries, each with several changes. Changes of other fields
//! are skipped and counted. The rule (docs/architecture.md, "Contracts"): a post answered 200
//! has every readable leadgen id queued. A `leadgen` change without `form_id` or without any
//! time is still queued (ingest reads both from Graph); only a change with no readable
//! leadgen id or no page id at all is left out, counted and reported by names, never values
//! (the backfill recovers what a webhook could not carry).

use crate::event::LeadEvent;
use crate::ids::{lenient_id, lenient_unix_seconds};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use time::OffsetDateTime;

/// The `field` of the changes leadpipe acts on.
pub const LEADGEN_FIELD: &str = "leadgen";
/// The `object` of the posts leadpipe acts on.
pub const PAGE_OBJECT: &str = "page";

pub use crate::json_error::JsonError;

// The post is read in two steps: the outer shape strictly (a body that is not a webhook
// payload is refused with 400), then every entry and change leniently, each value on its
// own, so one out-of-range number (`"time": 1e400`) or one odd change never costs the
// other changes of the post. Raw values are only scanned, never converted, until a field
// is asked for.
#[derive(Debug, Deserialize)]
struct Payload<'a> {
    object: String,
    #[serde(default, borrow)]
    entry: Vec<&'a RawValue>,
}

#[derive(Debug, Default, Deserialize)]
struct Entry<'a> {
    #[serde(default, borrow)]
    id: Option<&'a RawValue>,
    #[serde(default, borrow)]
    time: Option<&'a RawValue>,
    #[serde(default, borrow)]
    changes: Option<&'a RawValue>,
}

#[derive(Debug, Default, Deserialize)]
struct Change<'a> {
    #[serde(default, borrow)]
    field: Option<&'a RawValue>,
    #[serde(default, borrow)]
    value: Option<&'a RawValue>,
}

/// A `leadgen` change's value, every member optional and read on its own.
#[derive(Debug, Default, Deserialize)]
struct LeadgenValue<'a> {
    #[serde(default, borrow)]
    leadgen_id: Option<&'a RawValue>,
    #[serde(default, borrow)]
    page_id: Option<&'a RawValue>,
    #[serde(default, borrow)]
    form_id: Option<&'a RawValue>,
    #[serde(default, borrow)]
    ad_id: Option<&'a RawValue>,
    #[serde(default, borrow)]
    adgroup_id: Option<&'a RawValue>,
    #[serde(default, borrow)]
    created_time: Option<&'a RawValue>,
}

/// An id, when the raw value holds one (see [`crate::ids::lenient_id`]).
fn id_of(raw: Option<&RawValue>) -> Option<String> {
    raw.and_then(|r| lenient_id(r.get()))
}

/// Unix seconds, when the raw value holds a usable time (see [`crate::ids::lenient_unix_seconds`]).
fn time_of(raw: Option<&RawValue>) -> Option<i64> {
    raw.and_then(|r| lenient_unix_seconds(r.get()))
}

/// The names of an object's members (never their values), for a log line about a change
/// that could not be queued.
fn member_names(raw: Option<&RawValue>) -> Vec<String> {
    raw.and_then(|r| serde_json::from_str::<BTreeMap<String, serde::de::IgnoredAny>>(r.get()).ok())
        .map(|m| m.into_keys().collect())
        .unwrap_or_default()
}

/// A `leadgen` change that carried no readable leadgen id (or no page id at all): nothing
/// to queue. Names only, never values, so it can be logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidChange {
    /// The entry's id, when it had a readable one.
    pub entry_id: Option<String>,
    /// The member names the change's value had.
    pub value_fields: Vec<String>,
    /// What was missing.
    pub missing: &'static str,
}

/// What one webhook post held, ready to queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The post's `object`; only `page` posts carry leads.
    pub object: String,
    /// Entries in the post.
    pub entries: usize,
    /// Changes in all entries.
    pub changes: usize,
    /// Changes of a field other than `leadgen`.
    pub skipped_changes: usize,
    /// `leadgen` changes without a readable leadgen id or page id; see [`InvalidChange`].
    pub invalid: Vec<InvalidChange>,
    /// One queue message per readable leadgen id.
    pub events: Vec<LeadEvent>,
}

impl Delivery {
    /// Whether this post is one leadpipe acts on at all.
    pub fn is_page_object(&self) -> bool {
        self.object == PAGE_OBJECT
    }

    /// `leadgen` changes that could not be queued.
    pub fn invalid_changes(&self) -> usize {
        self.invalid.len()
    }
}

/// Parses a webhook body (already signature-checked) into lead events.
///
/// Fails only when the body is not JSON of the webhook's outer shape (an object with a
/// string `object` and an `entry` array). Inside it, every `leadgen` change with a readable
/// leadgen id and a page id (its own, or the entry's) becomes an event, whatever else it
/// lacks: `form_id` and `created_time` are optional on the queue, and ingest reads them from
/// Graph. See the module docs for the rest.
pub fn parse_delivery(body: &[u8], received_at: OffsetDateTime) -> Result<Delivery, JsonError> {
    let payload: Payload<'_> = serde_json::from_slice(body)?;
    let mut delivery = Delivery {
        object: payload.object,
        entries: payload.entry.len(),
        changes: 0,
        skipped_changes: 0,
        invalid: Vec::new(),
        events: Vec::new(),
    };
    let page_object = delivery.is_page_object();
    for raw_entry in payload.entry {
        let entry: Entry<'_> = serde_json::from_str(raw_entry.get()).unwrap_or_default();
        let entry_id = id_of(entry.id);
        let entry_time = time_of(entry.time);
        let changes: Vec<&RawValue> = entry
            .changes
            .and_then(|c| serde_json::from_str(c.get()).ok())
            .unwrap_or_default();
        for raw_change in changes {
            delivery.changes += 1;
            let change: Change<'_> = serde_json::from_str(raw_change.get()).unwrap_or_default();
            let field: Option<String> = change
                .field
                .and_then(|f| serde_json::from_str(f.get()).ok());
            if !page_object || field.as_deref() != Some(LEADGEN_FIELD) {
                delivery.skipped_changes += 1;
                continue;
            }
            match lead_event(change.value, &entry_id, entry_time, received_at) {
                Ok(event) => delivery.events.push(event),
                Err(missing) => delivery.invalid.push(InvalidChange {
                    entry_id: entry_id.clone(),
                    value_fields: member_names(change.value),
                    missing,
                }),
            }
        }
    }
    Ok(delivery)
}

fn lead_event(
    value: Option<&RawValue>,
    entry_id: &Option<String>,
    entry_time: Option<i64>,
    received_at: OffsetDateTime,
) -> Result<LeadEvent, &'static str> {
    let value: LeadgenValue<'_> = value
        .and_then(|v| serde_json::from_str(v.get()).ok())
        .unwrap_or_default();
    let leadgen_id = id_of(value.leadgen_id).ok_or("a readable leadgen_id")?;
    // The entry id is the page id; Meta sends both, but either alone is enough.
    let page_id = id_of(value.page_id)
        .or_else(|| entry_id.clone())
        .ok_or("a page id (value.page_id or entry.id)")?;
    Ok(LeadEvent {
        leadgen_id,
        page_id,
        form_id: id_of(value.form_id),
        ad_id: id_of(value.ad_id),
        adgroup_id: id_of(value.adgroup_id),
        created_time: time_of(value.created_time).or(entry_time),
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
        assert_eq!(first.form_id.as_deref(), Some("12312312312"));
        assert_eq!(first.ad_id.as_deref(), Some("12312312312"));
        assert_eq!(first.adgroup_id.as_deref(), Some("12312312312"));
        assert_eq!(first.created_time, Some(1_440_120_384));
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
        assert_eq!(delivery.invalid_changes(), 0);
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
        assert_eq!(event.created_time, Some(99));
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
        assert_eq!(delivery.invalid_changes(), 3);
        assert_eq!(delivery.events.len(), 1);
        assert_eq!(delivery.events[0].leadgen_id, "ok");
        // What a log line may say about them: entry id and member names, never values.
        assert_eq!(delivery.invalid[0].entry_id.as_deref(), Some("1"));
        assert_eq!(
            delivery.invalid[0].value_fields,
            ["created_time", "form_id", "page_id"]
        );
        assert!(delivery.invalid[2].value_fields.is_empty());
    }

    #[test]
    fn a_readable_leadgen_id_is_queued_without_form_or_time() {
        // Hardening item 1: these were dropped and answered 200, so Meta never resent them.
        let body = r#"{"object":"page","entry":[{"id":"77","changes":[
            {"field":"leadgen","value":{"leadgen_id":"1"}},
            {"field":"leadgen","value":{"leadgen_id":"2","page_id":"77","created_time":5}},
            {"field":"leadgen","value":{"leadgen_id":"3","form_id":"8","ad_id":0,"adgroup_id":"0"}}]}]}"#;
        let delivery = parse_delivery(body.as_bytes(), NOW).unwrap();
        assert_eq!(delivery.invalid_changes(), 0);
        let events = &delivery.events;
        assert_eq!(events.len(), 3);
        assert_eq!(
            (events[0].form_id.as_deref(), events[0].created_time),
            (None, None)
        );
        assert_eq!(events[0].page_id, "77");
        assert_eq!(events[1].created_time, Some(5));
        assert_eq!(events[2].form_id.as_deref(), Some("8"));
        assert_eq!(
            (events[2].ad_id.as_deref(), events[2].adgroup_id.as_deref()),
            (None, None),
            "ids sent as 0 are left out"
        );
        assert_eq!(
            events[0].to_message_body().unwrap(),
            format!(
                r#"{{"leadgen_id":"1","page_id":"77","received_at":"{}"}}"#,
                "2026-11-29T05:00:00Z"
            )
        );
    }

    #[test]
    fn one_out_of_range_number_costs_only_its_own_value() {
        // Hardening item 2: `entry.time` 2^63 or 1e400 used to fail the whole post (400).
        let body = r#"{"object":"page","entry":[
            {"id":"1","time":9223372036854775808,"changes":[
               {"field":"leadgen","value":{"leadgen_id":"a","form_id":"f"}}]},
            {"id":"2","time":1e400,"changes":[
               {"field":"leadgen","value":{"leadgen_id":"b","form_id":"f","created_time":1e400}}]},
            {"id":1e400,"time":7,"changes":[
               {"field":"leadgen","value":{"leadgen_id":1e400,"page_id":"3"}},
               {"field":"leadgen","value":{"leadgen_id":"c","page_id":"3"}}]},
            {"id":"4","time":10,"changes":[
               {"field":"leadgen","value":{"leadgen_id":"d","page_id":"4","created_time":11}}]},
            "not an entry",
            {"id":"5","changes":"not a list"}]}"#;
        let delivery = parse_delivery(body.as_bytes(), NOW).unwrap();
        let events: Vec<(&str, &str, Option<i64>)> = delivery
            .events
            .iter()
            .map(|e| (e.leadgen_id.as_str(), e.page_id.as_str(), e.created_time))
            .collect();
        assert_eq!(
            events,
            [
                ("a", "1", None),
                ("b", "2", None),
                ("c", "3", Some(7)),
                ("d", "4", Some(11))
            ]
        );
        assert_eq!(delivery.invalid_changes(), 1, "the 1e400 leadgen id");
        assert_eq!(delivery.entries, 6);
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
