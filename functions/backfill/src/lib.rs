//! The backfill Lambda: a scheduled event (or an on-demand payload) in, a JSON summary out.
//! The rules live in [`leadpipe_core::backfill`].

#![warn(missing_docs)]
use lambda_runtime::LambdaEvent;
use leadpipe_aws::sqs::SqsQueueControl;
use leadpipe_aws::{DynamoCheckpointStore, DynamoFormStore, DynamoLeadStore, SecretReloader};
use leadpipe_core::backfill::{
    BackfillPlan, BackfillPorts, BackfillRequest, BackfillSettings, BackfillSummary, Deadline,
    InstantDeadline, RequestError, run_backfill,
};
use leadpipe_core::forms::{FormCatalog, FormLookup, NoForms};
use leadpipe_core::ports::{BackfillSource, CheckpointStore, LeadStore, QueueControl};
use leadpipe_core::secrets::SecretsError;
use leadpipe_core::settings::{Env, SecretSource, SettingsError};
use leadpipe_core::tokens::{NoRefresh, SecretsRefresher, TokenRefresh};
use leadpipe_graph::{GraphClient, GraphError};
use leadpipe_graph_source::{GraphBackfillSource, graph_config};
use serde_json::Value;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use time::OffsetDateTime;

/// The backfill function's settings, read once at start.
#[derive(Debug, Clone)]
pub struct BackfillFunctionSettings {
    /// `LEADS_TABLE`.
    pub leads_table: String,
    /// Where unreadable and too-large leads go, queue-shaped, for a redrive.
    pub dead_letter_queue_url: String,
    /// `STATE_TABLE`: the checkpoints.
    pub state_table: String,
    /// Where the secret comes from.
    pub secret_source: SecretSource,
    /// The `BACKFILL_*` tuning.
    pub backfill: BackfillSettings,
    /// Stop starting Graph pages this long before the Lambda deadline.
    pub deadline_margin: Duration,
}

impl BackfillFunctionSettings {
    /// Reads and checks every setting once, at start.
    pub fn from_env<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Self, SettingsError> {
        Ok(Self {
            leads_table: env.required("LEADS_TABLE", "the DynamoDB table leads are written to")?,
            dead_letter_queue_url: env.required(
                "DLQ_URL",
                "the URL of the dead-letter queue unreadable and too-large leads go to",
            )?,
            state_table: env.required(
                "STATE_TABLE",
                "the DynamoDB table backfill checkpoints live in",
            )?,
            secret_source: env.secret_source()?,
            backfill: BackfillSettings::from_env(env)?,
            deadline_margin: env
                .seconds("BACKFILL_DEADLINE_MARGIN_SECONDS", Duration::from_secs(20))?,
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

/// Turns an invocation payload into a plan: a scheduled event (EventBridge rule or
/// Scheduler, which may send `{}`) covers every configured page; anything else is an
/// on-demand request and must be one.
pub fn plan_for(
    payload: &Value,
    configured_pages: &[String],
) -> Result<BackfillPlan, RequestError> {
    let scheduled = match payload {
        Value::Null => true,
        Value::Object(map) => {
            map.is_empty()
                || map.contains_key("detail-type")
                || map
                    .get("source")
                    .is_some_and(|s| s == "aws.events" || s == "aws.scheduler")
        }
        _ => false,
    };
    if scheduled {
        return Ok(BackfillPlan::scheduled(configured_pages));
    }
    let request: BackfillRequest = serde_json::from_value(payload.clone())
        .map_err(|e| RequestError(format!("the payload is not a backfill request ({e}); expected {{\"pages\",\"forms\",\"ads\",\"from\",\"to\",\"dry_run\"}}")))?;
    BackfillPlan::from_request(request, configured_pages, OffsetDateTime::now_utc())
}

/// The forms catalog as backfill runs it on AWS: refreshed from each page's listing into
/// the state table.
pub type Catalog = FormCatalog<GraphBackfillSource, DynamoFormStore>;

/// The secret read again when a page's token is refused (`leadpipe_core::tokens`).
pub type Refresher = SecretsRefresher<SecretReloader>;

/// Clients, secrets and settings, built once per container.
pub struct BackfillApp<S, L, C, Q, K = NoForms, T = NoRefresh> {
    source: S,
    forms: K,
    tokens: T,
    store: L,
    checkpoints: C,
    dead_letters: Q,
    pages: Vec<String>,
    settings: BackfillSettings,
    deadline_margin: Duration,
}

impl
    BackfillApp<
        GraphBackfillSource,
        DynamoLeadStore,
        DynamoCheckpointStore,
        SqsQueueControl,
        Catalog,
        Refresher,
    >
{
    /// Reads settings and secrets and builds every client.
    pub async fn from_env() -> Result<Self, StartError> {
        let env = Env::process();
        let settings = BackfillFunctionSettings::from_env(&env)?;
        let config = leadpipe_aws::sdk_config().await;
        let secrets = leadpipe_aws::load_secrets(&config, &settings.secret_source).await?;
        let graph = GraphClient::new(graph_config(&env, &secrets)?)?;
        // Lookup keys for `forget` and the retention expiry (docs/operate.md).
        let policy =
            leadpipe_core::privacy::LeadPolicy::from_env(&env, secrets.lookup_key.clone())?;
        let pages: Vec<String> = secrets.page_tokens.keys().cloned().collect();
        if pages.is_empty() {
            tracing::warn!("the secret has no page_tokens: scheduled runs have no page to cover");
        }
        // The phone-number data, loaded during init rather than on the first lead.
        leadpipe_core::contact::prepare();
        let source = GraphBackfillSource::new(graph, secrets);
        let tokens = SecretsRefresher::new(
            SecretReloader::new(&config, settings.secret_source.clone()),
            source.book().clone(),
        );
        let forms = FormCatalog::new(
            source.clone(),
            DynamoFormStore::from_client(
                leadpipe_aws::DynamoClient::new(&config),
                settings.state_table.clone(),
            ),
        );
        Ok(BackfillApp::new(
            source,
            DynamoLeadStore::new(&config, settings.leads_table).with_policy(policy),
            DynamoCheckpointStore::new(&config, settings.state_table),
            SqsQueueControl::dead_letters_only(
                aws_sdk_sqs::Client::new(&config),
                settings.dead_letter_queue_url,
            ),
            pages,
            settings.backfill,
            settings.deadline_margin,
        )
        .with_forms(forms)
        .with_tokens(tokens))
    }
}

impl<S: BackfillSource, L: LeadStore, C: CheckpointStore, Q: QueueControl> BackfillApp<S, L, C, Q> {
    /// The function over these ports, covering `pages` on a schedule.
    pub fn new(
        source: S,
        store: L,
        checkpoints: C,
        dead_letters: Q,
        pages: Vec<String>,
        settings: BackfillSettings,
        deadline_margin: Duration,
    ) -> Self {
        Self {
            source,
            forms: NoForms,
            tokens: NoRefresh,
            store,
            checkpoints,
            dead_letters,
            pages,
            settings,
            deadline_margin,
        }
    }
}

impl<S, L, C, Q, K, T> BackfillApp<S, L, C, Q, K, T> {
    /// The same function keeping the forms catalog through `forms`.
    pub fn with_forms<K2: FormLookup>(self, forms: K2) -> BackfillApp<S, L, C, Q, K2, T> {
        BackfillApp {
            source: self.source,
            forms,
            tokens: self.tokens,
            store: self.store,
            checkpoints: self.checkpoints,
            dead_letters: self.dead_letters,
            pages: self.pages,
            settings: self.settings,
            deadline_margin: self.deadline_margin,
        }
    }

    /// The same function reading the secret again through `tokens` when a token is refused.
    pub fn with_tokens<T2: TokenRefresh>(self, tokens: T2) -> BackfillApp<S, L, C, Q, K, T2> {
        BackfillApp {
            source: self.source,
            forms: self.forms,
            tokens,
            store: self.store,
            checkpoints: self.checkpoints,
            dead_letters: self.dead_letters,
            pages: self.pages,
            settings: self.settings,
            deadline_margin: self.deadline_margin,
        }
    }
}

impl<S, L, C, Q, K, T> BackfillApp<S, L, C, Q, K, T>
where
    S: BackfillSource,
    L: LeadStore,
    C: CheckpointStore,
    Q: QueueControl,
    K: FormLookup,
    T: TokenRefresh,
{
    /// Runs one backfill with an explicit deadline.
    pub async fn run<D: Deadline>(
        &self,
        payload: &Value,
        deadline: &D,
    ) -> Result<BackfillSummary, RequestError> {
        let plan = plan_for(payload, &self.pages)?;
        let ports = BackfillPorts {
            source: &self.source,
            tokens: &self.tokens,
            forms: &self.forms,
            store: &self.store,
            checkpoints: &self.checkpoints,
            dead_letters: &self.dead_letters,
        };
        let summary = run_backfill(
            &ports,
            deadline,
            &plan,
            &self.settings,
            OffsetDateTime::now_utc(),
        )
        .await;
        leadpipe_telemetry::emf::emit(&summary.metrics());
        leadpipe_telemetry::emf::emit_graph_errors(
            summary.graph_errors.iter().map(|(k, v)| (k.as_str(), *v)),
        );
        Ok(summary)
    }

    /// The Lambda handler: the deadline comes from the invocation context.
    pub async fn handle(
        &self,
        event: LambdaEvent<Value>,
    ) -> Result<BackfillSummary, lambda_runtime::Diagnostic> {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        let remaining = Duration::from_millis(event.context.deadline.saturating_sub(now_ms));
        let deadline = InstantDeadline {
            at: Instant::now() + remaining,
            margin: self.deadline_margin,
        };
        self.run(&event.payload, &deadline).await.map_err(|err| {
            tracing::error!(error = %err, "backfill request refused");
            // A named errorType, not a Rust type path: what an operator filters on.
            lambda_runtime::Diagnostic {
                error_type: "BackfillRequestRefused".to_owned(),
                error_message: err.to_string(),
            }
        })
    }
}
