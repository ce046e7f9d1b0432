//! The queue message: one per lead, as docs/architecture.md's contract spells it.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// One lead announced by a webhook, as it travels on the queue.
///
/// Serialized field order and names are a contract (docs/architecture.md, "Queue message"):
/// `leadgen_id, page_id, form_id?, ad_id?, adgroup_id?, created_time?, received_at`.
/// `form_id` and `created_time` are absent when the webhook did not carry them; ingest
/// takes both from Graph.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeadEvent {
    /// The lead's Graph id.
    pub leadgen_id: String,
    /// The page the lead came from (the change's, else the entry's id).
    pub page_id: String,
    /// The lead's form, when the webhook said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub form_id: Option<String>,
    /// The ad, for a paid lead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ad_id: Option<String>,
    /// The ad group (ad set), for a paid lead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adgroup_id: Option<String>,
    /// When Meta says the lead was created, in unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_time: Option<i64>,
    /// When leadpipe accepted the webhook, RFC 3339 UTC.
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
}

impl LeadEvent {
    /// The queue message body.
    pub fn to_message_body(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }

    /// Parses a queue message body; the error names where the JSON broke, never what it held.
    pub fn from_message_body(body: &str) -> Result<Self, crate::json_error::JsonError> {
        serde_json::from_str(body).map_err(crate::json_error::JsonError::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn serializes_exactly_as_the_contract() {
        let event = LeadEvent {
            leadgen_id: "4444".into(),
            page_id: "1111".into(),
            form_id: Some("2222".into()),
            ad_id: Some("3333".into()),
            adgroup_id: Some("5555".into()),
            created_time: Some(1_440_120_384),
            received_at: datetime!(2026-11-29 04:50:01.5 UTC),
        };
        assert_eq!(
            event.to_message_body().unwrap(),
            r#"{"leadgen_id":"4444","page_id":"1111","form_id":"2222","ad_id":"3333","adgroup_id":"5555","created_time":1440120384,"received_at":"2026-11-29T04:50:01.5Z"}"#
        );
    }

    #[test]
    fn organic_lead_leaves_out_ad_fields_and_round_trips() {
        let event = LeadEvent {
            leadgen_id: "4444".into(),
            page_id: "1111".into(),
            form_id: Some("2222".into()),
            ad_id: None,
            adgroup_id: None,
            created_time: Some(1),
            received_at: datetime!(2026-11-29 04:50:01 UTC),
        };
        let body = event.to_message_body().unwrap();
        assert_eq!(
            body,
            r#"{"leadgen_id":"4444","page_id":"1111","form_id":"2222","created_time":1,"received_at":"2026-11-29T04:50:01Z"}"#
        );
        assert_eq!(LeadEvent::from_message_body(&body).unwrap(), event);
    }

    #[test]
    fn a_lead_without_form_or_time_still_travels() {
        let event = LeadEvent {
            leadgen_id: "4444".into(),
            page_id: "1111".into(),
            form_id: None,
            ad_id: None,
            adgroup_id: None,
            created_time: None,
            received_at: datetime!(2026-11-29 04:50:01 UTC),
        };
        let body = event.to_message_body().unwrap();
        assert_eq!(
            body,
            r#"{"leadgen_id":"4444","page_id":"1111","received_at":"2026-11-29T04:50:01Z"}"#
        );
        assert_eq!(LeadEvent::from_message_body(&body).unwrap(), event);
    }

    #[test]
    fn malformed_body_error_does_not_echo_values() {
        let err = LeadEvent::from_message_body(r#"{"leadgen_id":"jane@example.com"}"#).unwrap_err();
        assert!(!err.to_string().contains("jane@example.com"), "{err}");
    }
}
