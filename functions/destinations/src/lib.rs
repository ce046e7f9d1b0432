//! The destinations Lambda (docs/destinations.md): an SQS batch of `Lead Received` events
//! (a rule on the stack's bus, through its own queue, so SQS holds the retries and the DLQ)
//! in; each lead to each destination of the destinations file that takes it and has not
//! had it; a `SqsBatchResponse` naming only the messages to try again. The file's text
//! and the credentials are in the stack's secret (`destinations_file`,
//! `destinations.<name>`). The rules live in [`leadpipe_core::destinations`].

#![warn(missing_docs)]
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::LambdaEvent;
use leadpipe_aws::{DynamoMarks, SqsQueueControl};
use leadpipe_core::destinations::{
    ConfigError, DestinationConfig, QueueBatchReport, QueueMessage, deliver_queue_batch, parse_file,
};
use leadpipe_core::secrets::SecretsError;
use leadpipe_core::settings::{Env, SecretSource, SettingsError};
use leadpipe_crm::{AnyDestination, BuildError};
use tracing::Instrument;

/// Why the function could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting is missing or unusable.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The secret cannot be read or lacks a value.
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    /// The secret has no destinations file.
    #[error(
        "the secret has no destinations_file: put the destinations file's text there (docs/destinations.md)"
    )]
    NoFile,
    /// The destinations file is wrong.
    #[error(transparent)]
    File(#[from] ConfigError),
    /// A destination cannot be built (a credential missing).
    #[error(transparent)]
    Build(#[from] BuildError),
}

/// Clients, the file and the secrets, built once per container.
pub struct DestinationsApp {
    marks: DynamoMarks,
    queue: SqsQueueControl,
    destinations: Vec<(DestinationConfig, AnyDestination)>,
}

impl DestinationsApp {
    /// Reads settings, the secret and the file, and builds every destination.
    pub async fn from_env() -> Result<Self, StartError> {
        let env = Env::process();
        let dlq = env.required(
            "DLQ_URL",
            "the URL of the destinations' dead-letter queue refused leads go to",
        )?;
        let state_table = env.required(
            "STATE_TABLE",
            "the DynamoDB table what each destination did is recorded in",
        )?;
        let source: SecretSource = env.secret_source()?;
        let config = leadpipe_aws::sdk_config().await;
        let secrets = leadpipe_aws::load_secrets(&config, &source).await?;
        let file = secrets
            .destinations_file
            .as_deref()
            .ok_or(StartError::NoFile)?;
        let mut destinations = Vec::new();
        for destination in parse_file(file)? {
            let built = AnyDestination::build(
                &destination,
                secrets.destinations.get(destination.name.as_str()),
            )?;
            destinations.push((destination, built));
        }
        Ok(Self {
            marks: DynamoMarks::new(leadpipe_aws::DynamoClient::new(&config), state_table),
            queue: SqsQueueControl::dead_letters_only(aws_sdk_sqs::Client::new(&config), dlq),
            destinations,
        })
    }

    /// Delivers one SQS batch; past `deadline` the rest is left to SQS.
    pub async fn deliver(
        &self,
        event: &SqsEvent,
        deadline: Option<std::time::Instant>,
    ) -> QueueBatchReport {
        let messages: Vec<QueueMessage<'_>> = event
            .records
            .iter()
            .map(|record| QueueMessage {
                message_id: record.message_id.as_deref().unwrap_or_default(),
                body: record.body.as_deref().unwrap_or_default(),
            })
            .collect();
        let report = deliver_queue_batch(
            &self.marks,
            &self.destinations,
            &self.queue,
            &messages,
            deadline,
        )
        .await;
        tracing::info!(
            delivered = report.delivered,
            already = report.already,
            refused = report.refused,
            malformed = report.malformed,
            retried = report.failed.len(),
            "leads delivered to destinations"
        );
        report
    }

    /// The Lambda handler.
    pub async fn handle(
        &self,
        event: LambdaEvent<SqsEvent>,
    ) -> Result<SqsBatchResponse, std::convert::Infallible> {
        let span = leadpipe_telemetry::invocation_span(&event.context.request_id);
        // The invocation's own deadline, less room for the answer and a call in flight
        // (15 s time-out): what is not tried by then goes back to SQS, not to a time-out.
        let left = event
            .context
            .deadline()
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        let deadline =
            std::time::Instant::now() + left.saturating_sub(std::time::Duration::from_secs(20));
        let report = self
            .deliver(&event.payload, Some(deadline))
            .instrument(span)
            .await;
        let mut response = SqsBatchResponse::default();
        for id in report.failed {
            response.add_failure(id);
        }
        Ok(response)
    }
}
