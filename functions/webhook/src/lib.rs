//! The webhook Lambda: lambda_http in front of [`leadpipe_core::accept`].
//!
//! Works behind a Lambda Function URL and an API Gateway HTTP API (payload 2.0) alike;
//! lambda_http has already base64-decoded the body, and the signature is checked over
//! exactly those bytes.

#![warn(missing_docs)]
use lambda_http::{Body, Request, RequestExt, Response};
use leadpipe_core::accept::{WebhookRequest, WebhookSecrets, handle_webhook_request};
use leadpipe_core::ports::EventQueue;
use leadpipe_core::secrets::SecretsError;
use leadpipe_core::settings::{Env, SecretSource, SettingsError};
use leadpipe_core::signature::SIGNATURE_HEADER;
use time::OffsetDateTime;
use tracing::Instrument;

/// The webhook's settings, read once at start.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// `QUEUE_URL`: where lead events go.
    pub queue_url: String,
    /// `STAGES_QUEUE_URL`: where `POST /stages` queues stages (unset: the route answers 503).
    pub stages_queue_url: Option<String>,
    /// Where the secret comes from.
    pub secret_source: SecretSource,
}

impl WebhookSettings {
    /// Reads and checks every setting once, at start.
    pub fn from_env<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Self, SettingsError> {
        Ok(Self {
            queue_url: env.required("QUEUE_URL", "the URL of the SQS queue lead events go to")?,
            stages_queue_url: env.optional("STAGES_QUEUE_URL"),
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
    /// The secret cannot be read or lacks the verify token.
    #[error(transparent)]
    Secrets(#[from] SecretsError),
}

/// Everything a request needs, built once per container.
pub struct WebhookApp<Q> {
    secrets: WebhookSecrets,
    queue: Q,
    /// `POST /stages`: the keys (the secret's `stage_keys`) and the stage queue.
    stage_keys: Vec<secrecy::SecretString>,
    stages: Option<Q>,
}

impl WebhookApp<leadpipe_aws::SqsEventQueue> {
    /// Reads settings and secrets and builds the SQS client: the function's whole start-up.
    pub async fn from_env() -> Result<Self, StartError> {
        let settings = WebhookSettings::from_env(&Env::process())?;
        let config = leadpipe_aws::sdk_config().await;
        let all = leadpipe_aws::load_secrets(&config, &settings.secret_source).await?;
        let secrets = WebhookSecrets::try_from(&all)?;
        let stages = settings
            .stages_queue_url
            .map(|url| leadpipe_aws::SqsEventQueue::new(&config, url));
        Ok(Self::new(
            secrets,
            leadpipe_aws::SqsEventQueue::new(&config, settings.queue_url),
        )
        .with_stages(all.stage_keys, stages))
    }
}

impl<Q: EventQueue + leadpipe_core::stages::StageQueue> WebhookApp<Q> {
    /// The function over these ports.
    pub fn new(secrets: WebhookSecrets, queue: Q) -> Self {
        Self {
            secrets,
            queue,
            stage_keys: Vec::new(),
            stages: None,
        }
    }

    /// The same function also taking `POST /stages` with `keys`, into `stages`.
    pub fn with_stages(mut self, keys: Vec<secrecy::SecretString>, stages: Option<Q>) -> Self {
        self.stage_keys = keys;
        self.stages = stages;
        self
    }

    /// Answers one HTTP request. Never fails: every failure is an HTTP status for Meta.
    pub async fn handle(
        &self,
        request: Request,
    ) -> Result<Response<Body>, std::convert::Infallible> {
        let query = request.query_string_parameters();
        let method = request.method().as_str().to_owned();
        let signature = request
            .headers()
            .get(SIGNATURE_HEADER)
            .map(|value| value.to_str().unwrap_or("non-ascii"));
        let body: &[u8] = request.body().as_ref();
        let span = leadpipe_telemetry::invocation_span(
            request
                .lambda_context_ref()
                .map(|c| c.request_id.as_str())
                .unwrap_or_default(),
        );
        // The stages route of the same Function URL (docs/stages.md, "In, over HTTPS").
        if request
            .uri()
            .path()
            .trim_end_matches('/')
            .ends_with("/stages")
        {
            let answer = if method == "POST" {
                let given = request
                    .headers()
                    .get("x-leadpipe-key")
                    .and_then(|v| v.to_str().ok());
                let now = OffsetDateTime::now_utc().unix_timestamp();
                leadpipe_core::stages::accept_stages(
                    self.stages.as_ref(),
                    &self.stage_keys,
                    given,
                    body,
                    now,
                )
                .instrument(span)
                .await
            } else {
                leadpipe_core::stages::StagesAnswer {
                    status: 405,
                    body: serde_json::json!({"error": "POST only"}),
                    accepted: 0,
                }
            };
            leadpipe_telemetry::emf::emit(&[("StagesAccepted", answer.accepted as u64)]);
            let mut response = Response::new(Body::Text(answer.body.to_string()));
            *response.status_mut() = lambda_http::http::StatusCode::from_u16(answer.status)
                .unwrap_or(lambda_http::http::StatusCode::INTERNAL_SERVER_ERROR);
            response.headers_mut().insert(
                lambda_http::http::header::CONTENT_TYPE,
                lambda_http::http::HeaderValue::from_static("application/json"),
            );
            return Ok(response);
        }
        let answer = handle_webhook_request(
            &self.secrets,
            &self.queue,
            WebhookRequest {
                method: &method,
                hub_mode: query.first("hub.mode"),
                hub_verify_token: query.first("hub.verify_token"),
                hub_challenge: query.first("hub.challenge"),
                signature,
                body,
            },
            OffsetDateTime::now_utc(),
        )
        .instrument(span)
        .await;
        leadpipe_telemetry::emf::emit(&answer.metrics);
        let mut response = Response::new(Body::Text(answer.body));
        *response.status_mut() = lambda_http::http::StatusCode::from_u16(answer.status)
            .unwrap_or(lambda_http::http::StatusCode::INTERNAL_SERVER_ERROR);
        response.headers_mut().insert(
            lambda_http::http::header::CONTENT_TYPE,
            lambda_http::http::HeaderValue::from_static(answer.content_type),
        );
        Ok(response)
    }
}
