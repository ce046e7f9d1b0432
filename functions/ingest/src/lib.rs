//! The ingest Lambda: an SQS batch in, a `SqsBatchResponse` naming only the messages SQS
//! must keep. The rules live in [`leadpipe_core::ingest`]; this crate wires AWS to them.

#![warn(missing_docs)]
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::LambdaEvent;
use leadpipe_aws::{DynamoFormStore, DynamoLeadStore, SecretReloader, SqsQueueControl};
use leadpipe_core::forms::{FormCatalog, FormLookup, NoForms};
use leadpipe_core::ingest::{IngestReport, QueuedMessage, ingest_batch};
use leadpipe_core::ports::{LeadFetcher, LeadStore, QueueControl};
use leadpipe_core::secrets::SecretsError;
use leadpipe_core::settings::{Env, SecretSource, SettingsError};
use leadpipe_core::tokens::{NoRefresh, SecretsRefresher, TokenRefresh};
use leadpipe_graph::{GraphClient, GraphError};
use leadpipe_graph_source::{GraphLeadFetcher, graph_config};
use time::OffsetDateTime;
use tracing::Instrument;

/// The ingest function's settings, read once at start.
#[derive(Debug, Clone)]
pub struct IngestSettings {
    /// `QUEUE_URL`: the queue ingest consumes (rate-limited messages are delayed on it).
    pub queue_url: String,
    /// `DLQ_URL`: where permanent failures go with their reason.
    pub dead_letter_queue_url: String,
    /// `LEADS_TABLE`.
    pub leads_table: String,
    /// `STATE_TABLE`: where the forms catalog is kept (`formdef#<id>` items).
    pub state_table: String,
    /// Where the secret comes from.
    pub secret_source: SecretSource,
}

impl IngestSettings {
    /// Reads and checks every setting once, at start.
    pub fn from_env<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Self, SettingsError> {
        Ok(Self {
            queue_url: env.required(
                "QUEUE_URL",
                "the URL of the SQS queue ingest consumes (to delay rate-limited messages)",
            )?,
            dead_letter_queue_url: env.required(
                "DLQ_URL",
                "the URL of the dead-letter queue permanent failures go to",
            )?,
            leads_table: env.required("LEADS_TABLE", "the DynamoDB table leads are written to")?,
            state_table: env.required(
                "STATE_TABLE",
                "the DynamoDB table the forms catalog is kept in (the backfill state table)",
            )?,
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

/// The forms catalog as ingest runs it on AWS: the state table, then Graph, cached for the
/// warm container.
pub type Catalog = FormCatalog<GraphLeadFetcher, DynamoFormStore>;

/// The secret read again when a page's token is refused: the warm container heals without
/// a restart (`leadpipe_core::tokens`).
pub type Refresher = SecretsRefresher<SecretReloader>;

/// Clients and secrets, built once per container.
pub struct IngestApp<F, S, C, K = NoForms, T = NoRefresh> {
    fetcher: F,
    store: S,
    queue: C,
    forms: K,
    tokens: T,
}

impl IngestApp<GraphLeadFetcher, DynamoLeadStore, SqsQueueControl, Catalog, Refresher> {
    /// Reads settings and secrets and builds every client.
    pub async fn from_env() -> Result<Self, StartError> {
        let env = Env::process();
        let settings = IngestSettings::from_env(&env)?;
        let config = leadpipe_aws::sdk_config().await;
        let secrets = leadpipe_aws::load_secrets(&config, &settings.secret_source).await?;
        let graph = GraphClient::new(graph_config(&env, &secrets)?)?;
        // Lookup keys for `forget` and the retention expiry (docs/operate.md).
        let policy =
            leadpipe_core::privacy::LeadPolicy::from_env(&env, secrets.lookup_key.clone())?;
        // The phone-number data, loaded during init rather than on the first lead.
        leadpipe_core::contact::prepare();
        let sqs = aws_sdk_sqs::Client::new(&config);
        let fetcher = GraphLeadFetcher::new(graph, secrets);
        let tokens = SecretsRefresher::new(
            SecretReloader::watching_versions(&config, settings.secret_source.clone()),
            fetcher.book().clone(),
        );
        let forms = FormCatalog::new(
            fetcher.clone(),
            DynamoFormStore::from_client(
                leadpipe_aws::DynamoClient::new(&config),
                settings.state_table,
            ),
        );
        Ok(IngestApp::new(
            fetcher,
            DynamoLeadStore::new(&config, settings.leads_table).with_policy(policy),
            SqsQueueControl::new(sqs, settings.queue_url, settings.dead_letter_queue_url),
        )
        .with_forms(forms)
        .with_tokens(tokens))
    }
}

impl<F: LeadFetcher, S: LeadStore, C: QueueControl> IngestApp<F, S, C> {
    /// The function over these ports, reading no form (its leads readable by key only) and
    /// never reading the secret again.
    pub fn new(fetcher: F, store: S, queue: C) -> Self {
        Self {
            fetcher,
            store,
            queue,
            forms: NoForms,
            tokens: NoRefresh,
        }
    }
}

impl<F, S, C, K, T> IngestApp<F, S, C, K, T> {
    /// The same function reading each lead against its form through `forms`.
    pub fn with_forms<K2: FormLookup>(self, forms: K2) -> IngestApp<F, S, C, K2, T> {
        IngestApp {
            fetcher: self.fetcher,
            store: self.store,
            queue: self.queue,
            forms,
            tokens: self.tokens,
        }
    }

    /// The same function reading the secret again through `tokens` when a token is refused.
    pub fn with_tokens<T2: TokenRefresh>(self, tokens: T2) -> IngestApp<F, S, C, K, T2> {
        IngestApp {
            fetcher: self.fetcher,
            store: self.store,
            queue: self.queue,
            forms: self.forms,
            tokens,
        }
    }
}

impl<F, S, C, K, T> IngestApp<F, S, C, K, T>
where
    F: LeadFetcher,
    S: LeadStore,
    C: QueueControl,
    K: FormLookup,
    T: TokenRefresh,
{
    /// The catalog (for the figure of forms read per warm container).
    pub fn forms(&self) -> &K {
        &self.forms
    }

    /// Ingests one SQS batch.
    pub async fn ingest(&self, event: &SqsEvent) -> IngestReport {
        let messages: Vec<QueuedMessage<'_>> = event
            .records
            .iter()
            .map(|record| QueuedMessage {
                message_id: record.message_id.as_deref().unwrap_or_default(),
                receipt_handle: record.receipt_handle.as_deref(),
                body: record.body.as_deref().unwrap_or_default(),
            })
            .collect();
        let report = ingest_batch(
            &self.fetcher,
            &self.store,
            &self.forms,
            &self.tokens,
            &self.queue,
            &messages,
            OffsetDateTime::now_utc(),
        )
        .await;
        leadpipe_telemetry::emf::emit(&report.metrics());
        leadpipe_telemetry::emf::emit_graph_errors(report.graph_errors());
        let (created, received): (Vec<u64>, Vec<u64>) = report
            .latencies
            .iter()
            .map(|l| (l.since_created_ms, l.since_received_ms))
            .unzip();
        leadpipe_telemetry::emf::emit_latencies(&created, &received);
        report
    }

    /// The Lambda handler.
    pub async fn handle(
        &self,
        event: LambdaEvent<SqsEvent>,
    ) -> Result<SqsBatchResponse, std::convert::Infallible> {
        let span = leadpipe_telemetry::invocation_span(&event.context.request_id);
        let report = self.ingest(&event.payload).instrument(span).await;
        let mut response = SqsBatchResponse::default();
        for id in report.failed_message_ids() {
            response.add_failure(id);
        }
        Ok(response)
    }
}
