//! The stages Lambda: an SQS batch of stages (the stack's `Lead Stage Changed` events as
//! the rule delivers them, `POST /stages` items and deliver's initial stages as queued) in,
//! a `SqsBatchResponse` naming only the stages not sent yet. The rules live in
//! [`leadpipe_core::stages`]; this crate wires AWS to them.

#![warn(missing_docs)]
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::LambdaEvent;
use leadpipe_aws::{DynamoStages, SqsQueueControl};
use leadpipe_core::secrets::SecretsError;
use leadpipe_core::settings::{Env, SecretSource, SettingsError, StagesConfig};
use leadpipe_core::stages::{StageBatchReport, StageMessage, StageSettings, stage_batch};
use leadpipe_core::tokens::TokenBook;
use leadpipe_graph::GraphError;
use leadpipe_graph_source::{GraphConversions, conversions_client, graph_config};
use tracing::Instrument;

/// The stages function's settings, read once at start.
#[derive(Debug, Clone)]
pub struct StagesFunctionSettings {
    /// `DLQ_URL`: the stages' dead-letter queue (refused stages, with their class).
    pub dead_letter_queue_url: String,
    /// `LEADS_TABLE`: where each stage's lead is looked up.
    pub leads_table: String,
    /// `STATE_TABLE`: the ledger of stages sent (`stage#<event id>` items).
    pub state_table: String,
    /// The dataset and the event's settings.
    pub stages: StagesConfig,
    /// Where the secret (`conversions_token`) comes from.
    pub secret_source: SecretSource,
}

impl StagesFunctionSettings {
    /// Reads and checks every setting once, at start.
    pub fn from_env<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Self, SettingsError> {
        Ok(Self {
            dead_letter_queue_url: env.required(
                "DLQ_URL",
                "the URL of the stages' dead-letter queue refused stages go to",
            )?,
            leads_table: env.required("LEADS_TABLE", "the DynamoDB table leads are kept in")?,
            state_table: env.required(
                "STATE_TABLE",
                "the DynamoDB table the stages sent are recorded in",
            )?,
            stages: env.stages()?.ok_or(SettingsError::Missing {
                name: "CONVERSIONS_DATASET_ID",
                purpose: "the Conversions API dataset stages are sent to (Events Manager); the stack parameter ConversionsDatasetId",
            })?,
            secret_source: env.secret_source()?,
        })
    }
}

/// Why the function could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting is missing or unusable.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The secret cannot be read or lacks a value.
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    /// The Graph client could not be built.
    #[error("the Graph client could not be built: {0}")]
    Graph(#[from] GraphError),
}

/// Clients and secrets, built once per container.
pub struct StagesApp {
    store: DynamoStages,
    api: GraphConversions,
    queue: SqsQueueControl,
    settings: StageSettings,
}

impl StagesApp {
    /// Reads settings and secrets and builds every client.
    pub async fn from_env() -> Result<Self, StartError> {
        let env = Env::process();
        let settings = StagesFunctionSettings::from_env(&env)?;
        let config = leadpipe_aws::sdk_config().await;
        let secrets = leadpipe_aws::load_secrets(&config, &settings.secret_source).await?;
        if secrets.conversions_token.is_none() {
            // Said at start, not per stage: each would be a `token` dead letter.
            tracing::warn!(
                "the secret has no conversions_token: stages are dead-lettered `token` until `leadpipe connect --dataset` stores one"
            );
        }
        let client = conversions_client(&graph_config(&env, &secrets)?)?;
        let api = GraphConversions::new(
            client,
            TokenBook::new(secrets),
            settings.stages.dataset_id.clone(),
            settings.stages.test_event_code.clone(),
        );
        let dynamo = leadpipe_aws::DynamoClient::new(&config);
        Ok(Self {
            store: DynamoStages::new(dynamo, settings.leads_table, settings.state_table),
            api,
            queue: SqsQueueControl::dead_letters_only(
                aws_sdk_sqs::Client::new(&config),
                settings.dead_letter_queue_url,
            ),
            settings: settings.stages.rules(),
        })
    }

    /// Sends one SQS batch of stages.
    pub async fn send(&self, event: &SqsEvent) -> StageBatchReport {
        let messages: Vec<StageMessage<'_>> = event
            .records
            .iter()
            .map(|record| StageMessage {
                message_id: record.message_id.as_deref().unwrap_or_default(),
                body: record.body.as_deref().unwrap_or_default(),
            })
            .collect();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let report = stage_batch(
            &self.store,
            &self.store,
            &self.api,
            &self.queue,
            &self.settings,
            &messages,
            now,
        )
        .await;
        leadpipe_telemetry::emf::emit(&report.metrics());
        leadpipe_telemetry::emf::emit_refused_stages(report.refused_by_class());
        tracing::info!(
            sent = report.stages.sent,
            already_sent = report.stages.already_sent,
            refused = report.stages.refused_total() + report.malformed,
            retried = report.failed.len(),
            requests = report.stages.requests,
            "stages sent to the Conversions API"
        );
        report
    }

    /// The Lambda handler.
    pub async fn handle(
        &self,
        event: LambdaEvent<SqsEvent>,
    ) -> Result<SqsBatchResponse, std::convert::Infallible> {
        let span = leadpipe_telemetry::invocation_span(&event.context.request_id);
        let report = self.send(&event.payload).instrument(span).await;
        let mut response = SqsBatchResponse::default();
        for id in report.failed {
            response.add_failure(id);
        }
        Ok(response)
    }
}
