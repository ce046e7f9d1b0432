//! The deliver Lambda: the leads table's DynamoDB stream (NEW_IMAGE) in, one EventBridge
//! "Lead Received" event per first write out (docs/leads-out.md). The rules live in
//! [`leadpipe_core::lead_received::deliver_batch`]; this crate reads Lambda's stream event
//! and answers with the batch item failure the stream retries from.

#![warn(missing_docs)]
use lambda_runtime::LambdaEvent;
use leadpipe_aws::EventBridgePublisher;
use leadpipe_core::lead_received::{
    DeliverReport, DeliverSettings, EventPublisher, StreamRecord, deliver_batch,
};
use leadpipe_core::settings::{Env, SettingsError};
use serde::Deserialize;
use serde_json::Value;
use tracing::Instrument;

/// The deliver function's settings, read once at start.
#[derive(Debug, Clone)]
pub struct DeliverFunctionSettings {
    /// `EVENT_BUS_NAME`: the stack's own event bus.
    pub event_bus: String,
    /// `STAGES_QUEUE_URL` with `CONVERSIONS_DATASET_ID` set: where each new lead's initial
    /// stage goes (docs/stages.md), with its name (`INITIAL_STAGE_NAME`).
    pub initial_stage: Option<(String, leadpipe_core::stages::StageName)>,
}

impl DeliverFunctionSettings {
    /// Reads and checks every setting once, at start.
    pub fn from_env<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Self, SettingsError> {
        Ok(Self {
            event_bus: env.required("EVENT_BUS_NAME", "the event bus lead events go to")?,
            initial_stage: match (env.stages()?, env.optional("STAGES_QUEUE_URL")) {
                (Some(stages), Some(url)) => Some((url, stages.initial_stage)),
                _ => None,
            },
        })
    }
}

/// Why the function could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting is missing or unusable.
    #[error(transparent)]
    Settings(#[from] SettingsError),
}

/// Lambda's DynamoDB stream event: only what deliver reads.
#[derive(Debug, Deserialize)]
pub struct StreamEvent {
    /// The records, in stream order.
    #[serde(rename = "Records", default)]
    pub records: Vec<StreamEventRecord>,
}

/// One record of [`StreamEvent`].
#[derive(Debug, Deserialize)]
pub struct StreamEventRecord {
    /// `INSERT`, `MODIFY` or `REMOVE`.
    #[serde(rename = "eventName", default)]
    pub event_name: String,
    /// The change.
    pub dynamodb: StreamData,
}

/// The `dynamodb` part of a record.
#[derive(Debug, Deserialize)]
pub struct StreamData {
    /// What a batch item failure names.
    #[serde(rename = "SequenceNumber")]
    pub sequence_number: String,
    /// The item after the change, in DynamoDB's JSON.
    #[serde(rename = "NewImage", default)]
    pub new_image: Option<Value>,
}

/// The publisher, built once per container.
pub struct DeliverApp<P> {
    publisher: P,
    settings: DeliverSettings,
    initial_stage: Option<(
        leadpipe_aws::SqsEventQueue,
        leadpipe_core::stages::StageName,
    )>,
}

impl DeliverApp<EventBridgePublisher> {
    /// Reads settings and builds the EventBridge client.
    pub async fn from_env() -> Result<Self, StartError> {
        let settings = DeliverFunctionSettings::from_env(&Env::process())?;
        let config = leadpipe_aws::sdk_config().await;
        let mut app = Self::new(
            EventBridgePublisher::new(&config, settings.event_bus),
            DeliverSettings::default(),
        );
        app.initial_stage = settings
            .initial_stage
            .map(|(url, name)| (leadpipe_aws::SqsEventQueue::new(&config, url), name));
        Ok(app)
    }
}

impl<P: EventPublisher> DeliverApp<P> {
    /// The function over this publisher.
    pub fn new(publisher: P, settings: DeliverSettings) -> Self {
        Self {
            publisher,
            settings,
            initial_stage: None,
        }
    }

    /// Delivers one stream batch.
    pub async fn deliver(&self, event: &StreamEvent) -> DeliverReport {
        let records: Vec<StreamRecord> = event
            .records
            .iter()
            .map(|r| StreamRecord {
                sequence: r.dynamodb.sequence_number.clone(),
                change: leadpipe_aws::events::stream_change(
                    &r.event_name,
                    r.dynamodb.new_image.as_ref(),
                ),
            })
            .collect();
        // Initial stages first. The lead events matter more: when the stage queue cannot
        // take them, the leads are still delivered and the stages are said lost (log line,
        // metric InitialStagesNotQueued); `leadpipe stage` can send one by hand.
        let mut not_queued = 0u64;
        if let Some((queue, name)) = &self.initial_stage {
            use leadpipe_core::stages::StageQueue as _;
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let stages = leadpipe_core::stages::initial_stages(&records, name, now);
            if !stages.is_empty()
                && let Err(err) = queue.queue_stages(&stages).await
            {
                not_queued = stages.len() as u64;
                let lead_ids: Vec<&str> = stages.iter().map(|s| s.lead_id.as_str()).collect();
                tracing::error!(error = %err, stages = stages.len(), lead_ids = ?lead_ids, "initial stages could not be queued: these leads' first stage is not sent");
            }
        }
        leadpipe_telemetry::emf::emit(&[("InitialStagesNotQueued", not_queued)]);
        let report = deliver_batch(&self.publisher, &records, &self.settings).await;
        leadpipe_telemetry::emf::emit(&report.metrics());
        if let Some(from) = &report.retry_from {
            tracing::warn!(retry_from = %from, published = report.published, "lead events not all delivered; the stream retries from this record");
        }
        report
    }

    /// The Lambda handler: `{"batchItemFailures":[{"itemIdentifier": <sequence>}]}` naming the
    /// first record not delivered, or none.
    pub async fn handle(
        &self,
        event: LambdaEvent<StreamEvent>,
    ) -> Result<Value, std::convert::Infallible> {
        let span = leadpipe_telemetry::invocation_span(&event.context.request_id);
        let report = self.deliver(&event.payload).instrument(span).await;
        let failures: Vec<Value> = report
            .retry_from
            .iter()
            .map(|seq| serde_json::json!({ "itemIdentifier": seq }))
            .collect();
        Ok(serde_json::json!({ "batchItemFailures": failures }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use leadpipe_core::lead_received::{LeadReceived, PublishError};
    use std::sync::Mutex;
    use std::time::Duration;

    #[derive(Default)]
    struct Bus {
        published: Mutex<Vec<String>>,
        refuse: Option<String>,
    }

    impl EventPublisher for Bus {
        async fn publish(&self, events: &[LeadReceived]) -> Vec<Result<(), PublishError>> {
            events
                .iter()
                .map(|e| {
                    if self.refuse.as_deref() == Some(e.lead_id.as_str()) {
                        return Err(PublishError {
                            code: "InternalFailure".into(),
                            message: "x".into(),
                        });
                    }
                    self.published
                        .lock()
                        .map(|mut p| p.push(e.lead_id.clone()))
                        .ok();
                    Ok(())
                })
                .collect()
        }

        async fn pause(&self, _: Duration) {}
    }

    fn image(id: &str) -> Value {
        serde_json::json!({"lead_id": {"S": id}, "created_time": {"S": "2026-11-30T04:00:00Z"},
            "page_id": {"S": "7"}, "form_id": {"S": "5"}, "is_organic": {"BOOL": true},
            "fields": {"M": {"email": {"L": [{"S": "p@example.org"}]}}},
            "custom_disclaimer_responses": {"L": []}, "raw": {"S": "{}"},
            "source": {"S": "webhook"}, "ingested_at": {"S": "2026-11-30T04:00:01Z"}})
    }

    /// A stream batch as Lambda sends it (the shape of `sam local generate-event dynamodb update`).
    fn event(records: &[(&str, &str, Option<Value>)]) -> StreamEvent {
        let records: Vec<Value> = records
            .iter()
            .map(|(name, seq, image)| {
                let mut dynamodb = serde_json::json!({"Keys": {"lead_id": {"S": "x"}}, "SequenceNumber": seq,
                    "SizeBytes": 26, "StreamViewType": "NEW_IMAGE", "ApproximateCreationDateTime": 1764475200});
                if let Some(image) = image {
                    dynamodb["NewImage"] = image.clone();
                }
                serde_json::json!({"eventID": "1", "eventName": name, "eventVersion": "1.1",
                    "eventSource": "aws:dynamodb", "awsRegion": "us-east-1", "dynamodb": dynamodb,
                    "eventSourceARN": "arn:aws:dynamodb:us-east-1:123456789012:table/leads/stream/2026-11-30T00:00:00.000"})
            })
            .collect();
        serde_json::from_value(serde_json::json!({ "Records": records })).unwrap_or(StreamEvent {
            records: Vec::new(),
        })
    }

    fn settings() -> DeliverSettings {
        DeliverSettings {
            retries: 1,
            first_wait: Duration::from_millis(1),
        }
    }

    #[tokio::test]
    async fn inserts_are_published_and_updates_and_removals_are_not() {
        let app = DeliverApp::new(Bus::default(), settings());
        let batch = event(&[
            ("INSERT", "100", Some(image("1"))),
            ("MODIFY", "101", Some(image("1"))),
            ("REMOVE", "102", None),
            ("INSERT", "103", Some(image("2"))),
        ]);
        assert_eq!(batch.records.len(), 4);
        let report = app.deliver(&batch).await;
        assert_eq!(report.published, 2);
        assert_eq!(report.skipped, 2);
        assert_eq!(report.retry_from, None);
        assert_eq!(
            *app.publisher
                .published
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
            ["1", "2"]
        );
    }

    #[tokio::test]
    async fn a_lasting_failure_is_the_batch_item_failure() {
        let app = DeliverApp::new(
            Bus {
                refuse: Some("2".into()),
                ..Bus::default()
            },
            settings(),
        );
        let batch = event(&[
            ("INSERT", "100", Some(image("1"))),
            ("INSERT", "101", Some(image("2"))),
        ]);
        let report = app.deliver(&batch).await;
        assert_eq!(report.retry_from.as_deref(), Some("101"));
    }
}
