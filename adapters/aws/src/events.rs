//! Leads out on AWS (docs/leads-out.md): the leads table's stream images read back as lead
//! event v1, and EventBridge `PutEvents` as the core's [`EventPublisher`].

use crate::describe_sdk_error;
use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use leadpipe_core::lead_received::{
    Answer, Contact, DETAIL_TYPE, DisclaimerAnswer, EVENT_SOURCE, EventPublisher, LeadReceived,
    PublishError, StreamChange, VERSION,
};
use leadpipe_core::ports::LeadSourceKind;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// Publishes lead events to one event bus.
#[derive(Debug, Clone)]
pub struct EventBridgePublisher {
    client: aws_sdk_eventbridge::Client,
    bus: String,
}

impl EventBridgePublisher {
    /// A publisher to `bus` (its name or ARN) with a client built from `config`.
    pub fn new(config: &aws_config::SdkConfig, bus: impl Into<String>) -> Self {
        Self {
            client: aws_sdk_eventbridge::Client::new(config),
            bus: bus.into(),
        }
    }
}

impl EventPublisher for EventBridgePublisher {
    async fn publish(&self, events: &[LeadReceived]) -> Vec<Result<(), PublishError>> {
        let entries: Vec<PutEventsRequestEntry> = events
            .iter()
            .map(|event| {
                PutEventsRequestEntry::builder()
                    .event_bus_name(&self.bus)
                    .source(EVENT_SOURCE)
                    .detail_type(DETAIL_TYPE)
                    .detail(event.to_json())
                    .resources(format!("lead/{}", event.lead_id))
                    .build()
            })
            .collect();
        match self
            .client
            .put_events()
            .set_entries(Some(entries))
            .send()
            .await
        {
            Ok(output) => {
                let results = output.entries();
                (0..events.len())
                    .map(|i| match results.get(i) {
                        Some(entry) if entry.error_code().is_none() => Ok(()),
                        Some(entry) => Err(PublishError {
                            code: entry.error_code().unwrap_or("Failed").to_owned(),
                            message: entry.error_message().unwrap_or_default().to_owned(),
                        }),
                        None => Err(PublishError {
                            code: "NoResult".into(),
                            message: "PutEvents gave fewer results than entries".into(),
                        }),
                    })
                    .collect()
            }
            Err(err) => {
                let message = describe_sdk_error(&err);
                events
                    .iter()
                    .map(|_| {
                        Err(PublishError {
                            code: "Unavailable".into(),
                            message: message.clone(),
                        })
                    })
                    .collect()
            }
        }
    }

    async fn pause(&self, wait: Duration) {
        tokio::time::sleep(wait).await;
    }
}

/// One DynamoDB stream record as Lambda delivers it, read as the core's [`StreamChange`]:
/// `INSERT` with its `NewImage` read back into lead event v1 (the inverse of
/// [`crate::dynamo::lead_item`]), anything else [`StreamChange::Other`].
pub fn stream_change(event_name: &str, new_image: Option<&Value>) -> StreamChange {
    if event_name != "INSERT" {
        return StreamChange::Other;
    }
    // An erasure record written for a lead that was never stored: no lead to announce.
    if new_image.is_some_and(|image| image.get(crate::operate::ERASED_AT).is_some()) {
        return StreamChange::Other;
    }
    match new_image {
        None => StreamChange::Unreadable(
            "no NewImage: the stream must be NEW_IMAGE or NEW_AND_OLD_IMAGES".into(),
        ),
        Some(image) => match lead_from_image(image) {
            Ok(event) => StreamChange::Insert(Box::new(event)),
            Err(why) => StreamChange::Unreadable(why),
        },
    }
}

/// Reads a leads-table item in DynamoDB's JSON (`{"lead_id":{"S":"1"},...}`). The error
/// names an attribute, never a value.
pub fn lead_from_image(image: &Value) -> Result<LeadReceived, String> {
    let s = |name: &str| -> Option<String> {
        image
            .get(name)
            .and_then(|v| v.get("S"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let required = |name: &str| s(name).ok_or_else(|| format!("{name} is missing or not S"));
    // Absent: a lead with no answers. Present, it must be an M of L of S: `{"S":"oops"}` is
    // an unreadable image, never a lead published without its answers.
    let fields = match image.get("fields").map(|v| v.get("M")) {
        Some(Some(Value::Object(map))) => map
            .iter()
            .map(|(name, values)| {
                let list = values
                    .get("L")
                    .and_then(Value::as_array)
                    .ok_or_else(|| "a field of fields is not L".to_owned())?;
                let texts = list
                    .iter()
                    .map(|v| {
                        v.get("S")
                            .and_then(Value::as_str)
                            .map(str::to_owned)
                            .ok_or_else(|| "a field value is not S".to_owned())
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((name.clone(), texts))
            })
            .collect::<Result<BTreeMap<_, _>, String>>()?,
        None => BTreeMap::new(),
        Some(_) => return Err("fields is not M".into()),
    };
    let disclaimers = match image.get("custom_disclaimer_responses").map(|v| v.get("L")) {
        Some(Some(Value::Array(list))) => list
            .iter()
            .map(|item| {
                let m = item
                    .get("M")
                    .ok_or_else(|| "a disclaimer response is not M".to_owned())?;
                Ok(DisclaimerAnswer {
                    checkbox_key: m
                        .get("checkbox_key")
                        .and_then(|v| v.get("S"))
                        .and_then(Value::as_str)
                        .ok_or_else(|| "checkbox_key is not S".to_owned())?
                        .to_owned(),
                    is_checked: m
                        .get("is_checked")
                        .and_then(|v| v.get("BOOL"))
                        .and_then(Value::as_bool)
                        .ok_or_else(|| "is_checked is not BOOL".to_owned())?,
                })
            })
            .collect::<Result<Vec<_>, String>>()?,
        None => Vec::new(),
        Some(_) => return Err("custom_disclaimer_responses is not L".into()),
    };
    let source = match required("source")?.as_str() {
        "webhook" => LeadSourceKind::Webhook,
        "backfill" => LeadSourceKind::Backfill,
        _ => return Err("source is neither webhook nor backfill".into()),
    };
    Ok(LeadReceived {
        version: VERSION.to_owned(),
        lead_id: required("lead_id")?,
        created_time: required("created_time")?,
        page_id: required("page_id")?,
        form_id: s("form_id"),
        ad_id: s("ad_id"),
        ad_name: s("ad_name"),
        adset_id: s("adset_id"),
        adset_name: s("adset_name"),
        campaign_id: s("campaign_id"),
        campaign_name: s("campaign_name"),
        platform: s("platform"),
        is_organic: image
            .get("is_organic")
            .and_then(|v| v.get("BOOL"))
            .and_then(Value::as_bool)
            .unwrap_or(false),
        fields,
        custom_disclaimer_responses: disclaimers,
        source,
        ingested_at: required("ingested_at")?,
        form_name: s("form_name"),
        answers: answers_of_image(image)?,
        contact: contact_of_image(image)?,
    })
}

/// `answers`: absent for a lead stored before they existed; present, an L of M
/// `{key, label, values}`.
fn answers_of_image(image: &Value) -> Result<Vec<Answer>, String> {
    let text = |m: &Value, name: &str| -> Result<String, String> {
        m.get(name)
            .and_then(|v| v.get("S"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| format!("an answer's {name} is not S"))
    };
    match image.get("answers").map(|v| v.get("L")) {
        None => Ok(Vec::new()),
        Some(Some(Value::Array(list))) => list
            .iter()
            .map(|item| {
                let m = item
                    .get("M")
                    .ok_or_else(|| "an answer is not M".to_owned())?;
                let values = m
                    .get("values")
                    .and_then(|v| v.get("L"))
                    .and_then(Value::as_array)
                    .ok_or_else(|| "an answer's values is not L".to_owned())?
                    .iter()
                    .map(|v| {
                        v.get("S")
                            .and_then(Value::as_str)
                            .map(str::to_owned)
                            .ok_or_else(|| "an answer value is not S".to_owned())
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Answer {
                    key: text(m, "key")?,
                    label: text(m, "label")?,
                    values,
                })
            })
            .collect(),
        Some(_) => Err("answers is not L".into()),
    }
}

/// `contact`: absent, or an M of S whose names are the contact's parts.
fn contact_of_image(image: &Value) -> Result<Contact, String> {
    match image.get("contact").map(|v| v.get("M")) {
        None => Ok(Contact::default()),
        Some(Some(Value::Object(parts))) => {
            let mut plain = serde_json::Map::new();
            for (name, value) in parts {
                if !Contact::PARTS.contains(&name.as_str()) {
                    continue;
                }
                let text = value
                    .get("S")
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("contact.{name} is not S"))?;
                plain.insert(name.clone(), Value::String(text.to_owned()));
            }
            serde_json::from_value(Value::Object(plain)).map_err(|_| "contact is unreadable".into())
        }
        Some(_) => Err("contact is not M".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use leadpipe_core::ports::StoredLead;

    /// An SDK attribute value in DynamoDB's JSON, as Lambda's stream events carry it (for a
    /// poller that hands `GetRecords` results to the function, as Lambda's does).
    fn attribute_json(value: &aws_sdk_dynamodb::types::AttributeValue) -> Value {
        use aws_sdk_dynamodb::types::AttributeValue as A;
        match value {
            A::S(s) => serde_json::json!({ "S": s }),
            A::N(n) => serde_json::json!({ "N": n }),
            A::Bool(b) => serde_json::json!({ "BOOL": b }),
            A::Null(_) => serde_json::json!({ "NULL": true }),
            A::L(list) => {
                serde_json::json!({ "L": list.iter().map(attribute_json).collect::<Vec<_>>() })
            }
            A::M(map) => serde_json::json!({ "M": item_json(map) }),
            A::Ss(list) => serde_json::json!({ "SS": list }),
            A::Ns(list) => serde_json::json!({ "NS": list }),
            _ => Value::Null,
        }
    }

    /// An item in DynamoDB's JSON.
    fn item_json(
        item: &std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue>,
    ) -> Value {
        Value::Object(
            item.iter()
                .map(|(k, v)| (k.clone(), attribute_json(v)))
                .collect(),
        )
    }

    /// A form that labels `services` and `email`, with the choices' text.
    fn readable_of(lead: &leadpipe_graph::Lead) -> leadpipe_core::readable::Readable {
        let form: leadpipe_core::forms::Form = serde_json::from_value(serde_json::json!({
            "id": "55", "name": "Solar quote", "locale": "en_US", "fetched_at": 0,
            "questions": [
                {"key": "services", "label": "Which services?", "type": "CUSTOM",
                 "options": [{"key": "a", "value": "Solar"}, {"key": "x", "value": "Battery"}]},
                {"key": "email", "label": "Email", "type": "EMAIL"},
                {"key": "phone_number", "label": "Phone", "type": "PHONE"}]
        }))
        .unwrap();
        leadpipe_core::readable::Readable::of(&lead.field_data, Some(&form))
    }

    #[test]
    fn the_stream_image_of_a_stored_item_is_the_same_event_as_the_record() {
        let lead = leadpipe_graph::Lead::from_json(
            r#"{"id":"9","created_time":"2026-11-30T04:00:00+0000","form_id":"55","ad_id":"6","ad_name":"Ad",
                "campaign_name":"Q4","platform":"ig","is_organic":false,
                "field_data":[{"name":"email","values":["P@Example.org"]},{"name":"services","values":["a","b"]},
                              {"name":"phone_number","values":["call me"]}],
                "custom_disclaimer_responses":[{"checkbox_key":"terms","is_checked":"1"},{"checkbox_key":"news","is_checked":""}]}"#,
        )
        .unwrap();
        let stored = StoredLead {
            readable: readable_of(&lead),
            lead,
            page_id: "77".into(),
            form_id: Some("55".into()),
            source: LeadSourceKind::Backfill,
            ingested_at: time::OffsetDateTime::now_utc(),
        };
        let image = item_json(&crate::dynamo::lead_item(&stored));
        let from_stream = lead_from_image(&image).unwrap();
        assert_eq!(from_stream, LeadReceived::from_record(&stored.record()));
        assert_eq!(from_stream.form_name.as_deref(), Some("Solar quote"));
        assert_eq!(from_stream.answers[0].values, ["Solar", "b"]);
        assert_eq!(from_stream.contact.email.as_deref(), Some("p@example.org"));
        assert_eq!(
            from_stream.contact.phone_as_given.as_deref(),
            Some("call me")
        );
        assert!(matches!(
            stream_change("INSERT", Some(&image)),
            StreamChange::Insert(_)
        ));
        assert_eq!(stream_change("MODIFY", Some(&image)), StreamChange::Other);
        assert_eq!(stream_change("REMOVE", None), StreamChange::Other);
    }

    #[test]
    fn fields_or_disclaimers_of_another_type_make_an_unreadable_image() {
        let stored = StoredLead {
            lead: leadpipe_graph::Lead::from_json(
                r#"{"id":"1","created_time":"2026-11-30T04:00:00+0000","field_data":[{"name":"email","values":["p@example.org"]}]}"#,
            )
            .unwrap(),
            page_id: "7".into(),
            form_id: Some("5".into()),
            source: LeadSourceKind::Webhook,
            ingested_at: time::OffsetDateTime::now_utc(),
            readable: Default::default(),
        };
        let good = item_json(&crate::dynamo::lead_item(&stored));
        for (attribute, odd) in [
            ("fields", serde_json::json!({"S": "oops"})),
            ("custom_disclaimer_responses", serde_json::json!({"M": {}})),
        ] {
            let mut image = good.clone();
            image[attribute] = odd;
            let StreamChange::Unreadable(why) = stream_change("INSERT", Some(&image)) else {
                panic!("{attribute} of another type was published");
            };
            assert!(why.contains(attribute), "{why}");
        }
        // An erasure record announces no lead.
        let record =
            serde_json::json!({"lead_id": {"S": "1"}, "erased_at": {"S": "2026-12-01T00:00:00Z"}});
        assert_eq!(stream_change("INSERT", Some(&record)), StreamChange::Other);
    }

    #[test]
    fn an_image_that_is_not_a_lead_names_the_attribute_not_the_value() {
        let image = serde_json::json!({"lead_id": {"S": "1"}, "fields": {"M": {"email": {"S": "p@example.org"}}}});
        let StreamChange::Unreadable(why) = stream_change("INSERT", Some(&image)) else {
            panic!("read");
        };
        assert!(
            why.contains("not L") && !why.contains("p@example.org"),
            "{why}"
        );
    }
}
