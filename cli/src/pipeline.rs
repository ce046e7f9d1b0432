//! The local pipeline: the webhook over HTTP, ingest workers over the SQLite queue, and
//! backfill, all on one [`LocalDb`].

use crate::CliError;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::IntoResponse;
use leadpipe_core::accept::{WebhookRequest, WebhookSecrets, handle_webhook_request};
use leadpipe_core::backfill::{
    BackfillPlan, BackfillPorts, BackfillSettings, BackfillSummary, InstantDeadline, run_backfill,
};
use leadpipe_core::forms::FormCatalog;
use leadpipe_core::ingest::{QueuedMessage, ingest_batch};
use leadpipe_core::privacy::LeadPolicy;
use leadpipe_core::secrets::AppSecrets;
use leadpipe_core::settings::Env;
use leadpipe_core::tokens::{SecretsRefresher, TokenBook};
use leadpipe_graph::{GraphClient, GraphConfig};
use leadpipe_graph_source::{GraphBackfillSource, GraphLeadFetcher, graph_config};
use leadpipe_local::{LocalDb, LocalQueueControl};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Queue behaviour of the local pipeline.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    /// How long a leased message stays invisible (SQS's visibility timeout).
    pub visibility: Duration,
    /// Deliveries before a message goes to the dead letters.
    pub max_receives: i64,
    /// The longest a rate-limited message is parked.
    pub max_delay: Duration,
    /// Keep every new lead's speed to lead for [`Pipeline::latencies`] (the demo's table).
    /// Off for `serve`, which runs for months: the list would only grow.
    pub record_latencies: bool,
    /// How backfill reads (the `BACKFILL_*` settings).
    pub backfill: BackfillSettings,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            visibility: Duration::from_secs(30),
            max_receives: 5,
            max_delay: Duration::from_secs(15 * 60),
            record_latencies: false,
            backfill: BackfillSettings::default(),
        }
    }
}

/// The secret read again for the token re-read: the secret file when there is one (what
/// `connect --secret-file` writes), else the environment's stand-ins as they were.
pub struct LocalSecrets {
    file: Option<PathBuf>,
    inline: AppSecrets,
    /// The file's modification time at the last read: a newer one means `connect` wrote it.
    seen: std::sync::Mutex<Option<std::time::SystemTime>>,
}

impl LocalSecrets {
    fn modified(&self) -> Option<std::time::SystemTime> {
        modified(self.file.as_ref()?)
    }
}

/// A file's modification time, when it can be read.
fn modified(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl leadpipe_core::tokens::SecretsLoader for LocalSecrets {
    async fn load(&self) -> Result<AppSecrets, leadpipe_core::secrets::SecretsError> {
        match &self.file {
            Some(path) => {
                let modified = self.modified();
                let secrets = crate::load_secrets(Some(path))
                    .map_err(|e| leadpipe_core::secrets::SecretsError::Fetch(e.to_string()))?;
                if let Ok(mut seen) = self.seen.lock() {
                    *seen = modified;
                }
                Ok(secrets)
            }
            None => Ok(self.inline.clone()),
        }
    }

    async fn changed(&self) -> bool {
        let Some(now) = self.modified() else {
            return false;
        };
        self.seen
            .lock()
            .is_ok_and(|seen| seen.is_some_and(|at| now > at))
    }
}

/// Everything the local pipeline needs, built once.
pub struct Pipeline {
    /// The SQLite file.
    pub db: LocalDb,
    secrets: AppSecrets,
    /// The tokens the Graph readers use, replaced when the secret is read again.
    book: TokenBook,
    tokens: SecretsRefresher<LocalSecrets>,
    webhook: Option<WebhookSecrets>,
    graph: GraphClient,
    /// The Graph settings, for the Conversions API's own client.
    graph_config: GraphConfig,
    /// Stages back to Meta, when a dataset is configured (`CONVERSIONS_DATASET_ID`).
    stages: Option<leadpipe_core::settings::StagesConfig>,
    tuning: Tuning,
    /// Speed to lead of every lead ingest stored first, for the demo's table.
    latencies: std::sync::Mutex<Vec<leadpipe_core::ingest::LeadLatency>>,
    /// The forms catalog, in the SQLite file and cached for the process (shared by the
    /// ingest workers and backfill).
    forms: FormCatalog<GraphLeadFetcher, LocalDb>,
}

impl Pipeline {
    /// Opens the SQLite file and builds the Graph client from the environment's
    /// `GRAPH_API_BASE` / `GRAPH_API_VERSION`.
    /// The `BACKFILL_*` settings of the environment replace `tuning.backfill`, as on Lambda.
    /// Leads are written with the secret's lookup keys and `LEADS_RETENTION_DAYS`' expiry.
    pub fn open(db: &Path, secrets: AppSecrets, mut tuning: Tuning) -> Result<Self, CliError> {
        let env = Env::process();
        let config = graph_config(&env, &secrets).map_err(|e| CliError::Settings(e.to_string()))?;
        tuning.backfill =
            BackfillSettings::from_env(&env).map_err(|e| CliError::Settings(e.to_string()))?;
        let policy = LeadPolicy::from_env(&env, secrets.lookup_key.clone())?;
        let pipeline = Self::with_graph(db, secrets, config, tuning)?;
        pipeline.db.set_policy(policy);
        Ok(pipeline)
    }

    /// Like [`Pipeline::open`] with an explicit Graph configuration.
    pub fn with_graph(
        db: &Path,
        secrets: AppSecrets,
        graph: GraphConfig,
        tuning: Tuning,
    ) -> Result<Self, CliError> {
        let db = LocalDb::open(db)?;
        let graph_config = graph.clone();
        let graph = GraphClient::new(graph)?;
        let webhook = WebhookSecrets::try_from(&secrets).ok();
        leadpipe_core::contact::prepare();
        let book = TokenBook::new(secrets.clone());
        let forms = FormCatalog::new(
            GraphLeadFetcher::with_book(graph.clone(), book.clone()),
            db.clone(),
        );
        let tokens = SecretsRefresher::new(
            LocalSecrets {
                file: None,
                inline: secrets.clone(),
                seen: std::sync::Mutex::new(None),
            },
            book.clone(),
        );
        Ok(Self {
            db,
            secrets,
            book,
            tokens,
            webhook,
            graph,
            graph_config,
            stages: None,
            tuning,
            latencies: std::sync::Mutex::new(Vec::new()),
            forms,
        })
    }

    /// Reads the secret file again when a page's token is refused (at most once a minute),
    /// so a page `connect` adds or fixes while serve runs works without a restart.
    pub fn reread_secret_file(mut self, path: PathBuf) -> Self {
        self.tokens = SecretsRefresher::new(
            LocalSecrets {
                seen: std::sync::Mutex::new(modified(&path)),
                file: Some(path),
                inline: self.secrets.clone(),
            },
            self.book.clone(),
        );
        self
    }

    /// Turns stages on: each new lead's initial stage is queued with it, and
    /// [`Pipeline::stage_sender`] sends the queued ones.
    pub fn with_stages(mut self, config: Option<leadpipe_core::settings::StagesConfig>) -> Self {
        if let Some(config) = &config {
            self.db.enable_initial_stage(config.initial_stage.clone());
        }
        self.stages = config;
        self
    }

    /// The sender of queued stages, when stages are on.
    pub fn stage_sender(&self) -> Result<Option<crate::stages::StageSender>, CliError> {
        self.stages
            .as_ref()
            .map(|config| {
                crate::stages::StageSender::new(
                    self.db.clone(),
                    config,
                    &self.graph_config,
                    self.book.clone(),
                )
            })
            .transpose()
    }

    /// Forms this process read from Graph (one per new form: the catalog keeps them).
    pub fn forms_read_from_graph(&self) -> u64 {
        self.forms.graph_reads()
    }

    /// The pages the secret has tokens for.
    pub fn configured_pages(&self) -> Vec<String> {
        self.book.current().page_tokens.keys().cloned().collect()
    }

    /// Speed to lead so far, in milliseconds: `(since created, since received)` per new lead.
    pub fn latencies(&self) -> (Vec<u64>, Vec<u64>) {
        self.latencies
            .lock()
            .map(|all| {
                all.iter()
                    .map(|l| (l.since_created_ms, l.since_received_ms))
                    .unzip()
            })
            .unwrap_or_default()
    }

    /// Takes one batch off the queue and ingests it; returns how many messages it took.
    pub async fn ingest_once(
        &self,
        fetcher: &GraphLeadFetcher,
        control: &LocalQueueControl,
    ) -> Result<usize, leadpipe_local::LocalError> {
        let leased = self
            .db
            .lease(10, self.tuning.visibility, self.tuning.max_receives)?;
        if leased.is_empty() {
            return Ok(0);
        }
        let ids: Vec<String> = leased.iter().map(|l| l.id.to_string()).collect();
        let messages: Vec<QueuedMessage<'_>> = leased
            .iter()
            .zip(&ids)
            .map(|(l, id)| QueuedMessage {
                message_id: id,
                receipt_handle: Some(id),
                body: &l.body,
            })
            .collect();
        let report = ingest_batch(
            fetcher,
            &self.db,
            &self.forms,
            &self.tokens,
            control,
            &messages,
            time::OffsetDateTime::now_utc(),
        )
        .await;
        if self.tuning.record_latencies
            && let Ok(mut all) = self.latencies.lock()
        {
            all.extend_from_slice(&report.latencies);
        }
        let failed = report.failed_message_ids();
        let done: Vec<i64> = leased
            .iter()
            .filter(|l| !failed.contains(&l.id.to_string().as_str()))
            .map(|l| l.id)
            .collect();
        self.db.ack(&done)?;
        Ok(leased.len())
    }

    /// Runs ingest workers until `stop` is set.
    pub fn spawn_workers(
        self: &Arc<Self>,
        count: usize,
        stop: Arc<AtomicBool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        (0..count.max(1))
            .map(|_| {
                let pipeline = self.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    let fetcher =
                        GraphLeadFetcher::with_book(pipeline.graph.clone(), pipeline.book.clone());
                    let control = LocalQueueControl {
                        db: pipeline.db.clone(),
                        max_delay: pipeline.tuning.max_delay,
                    };
                    while !stop.load(Ordering::Relaxed) {
                        match pipeline.ingest_once(&fetcher, &control).await {
                            Ok(0) => tokio::time::sleep(Duration::from_millis(50)).await,
                            Ok(_) => {}
                            Err(err) => {
                                tracing::error!(error = %err, "local queue unavailable");
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                        }
                    }
                })
            })
            .collect()
    }

    /// One backfill run of `plan`, with `budget` before it stops starting pages.
    pub async fn backfill_within(&self, plan: &BackfillPlan, budget: Duration) -> BackfillSummary {
        let source = GraphBackfillSource::with_book(self.graph.clone(), self.book.clone());
        let deadline = InstantDeadline {
            at: Instant::now() + budget,
            margin: Duration::ZERO,
        };
        let dead_letters = LocalQueueControl {
            db: self.db.clone(),
            max_delay: self.tuning.max_delay,
        };
        let ports = BackfillPorts {
            source: &source,
            tokens: &self.tokens,
            forms: &self.forms,
            store: &self.db,
            checkpoints: &self.db,
            dead_letters: &dead_letters,
        };
        run_backfill(
            &ports,
            &deadline,
            plan,
            &self.tuning.backfill,
            time::OffsetDateTime::now_utc(),
        )
        .await
    }

    /// One backfill run of `plan` (up to an hour).
    pub async fn backfill(&self, plan: &BackfillPlan) -> BackfillSummary {
        self.backfill_within(plan, Duration::from_secs(3600)).await
    }

    /// Serves the webhook at `/webhook` (and `/`) and `/health` on `listener` until
    /// `shutdown` turns true (or the task is dropped), within `limits`: at most
    /// `max_connections` open at once (the rest wait in the listen backlog), request headers
    /// within `header_timeout` (idle keep-alive connections included), the body within
    /// `body_timeout`. So slow or idle clients cannot hold the sockets Meta's posts need.
    ///
    /// On shutdown it stops accepting, lets every request in flight finish (a post is
    /// answered 200 only once durable), closes idle connections, and then ends: at most
    /// `body_timeout` later.
    pub fn spawn_http(
        self: &Arc<Self>,
        listener: tokio::net::TcpListener,
        limits: ServerLimits,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let state = Http {
            pipeline: self.clone(),
            body_timeout: limits.body_timeout,
        };
        let app = axum::Router::new()
            .route("/webhook", axum::routing::any(webhook))
            .route("/", axum::routing::any(webhook))
            .route("/health", axum::routing::get(health))
            .route("/stages", axum::routing::post(post_stages))
            .with_state(state);
        let max = limits.max_connections.clamp(1, u32::MAX as usize);
        let slots = Arc::new(tokio::sync::Semaphore::new(max));
        tokio::spawn(async move {
            loop {
                let slot = tokio::select! {
                    slot = slots.clone().acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => return,
                    },
                    _ = shutdown.changed() => break,
                };
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    _ = shutdown.changed() => break,
                };
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(err) => {
                        // Out of file descriptors and the like: wait a moment, go on.
                        tracing::warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let service = hyper_util::service::TowerToHyperService::new(app.clone());
                let mut stop = shutdown.clone();
                tokio::spawn(async move {
                    let connection = hyper::server::conn::http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(limits.header_timeout)
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                    let mut connection = std::pin::pin!(connection);
                    let ended = tokio::select! {
                        ended = connection.as_mut() => ended,
                        _ = stop.changed() => {
                            // The request in flight is answered; then the connection closes.
                            connection.as_mut().graceful_shutdown();
                            connection.await
                        }
                    };
                    if let Err(err) = ended {
                        tracing::debug!(error = %err, "connection ended");
                    }
                    drop(slot);
                });
            }
            drop(listener);
            // Every connection has given its slot back: every request in flight is answered.
            let every = u32::try_from(max).unwrap_or(u32::MAX);
            let _ = tokio::time::timeout(
                limits.body_timeout + Duration::from_secs(5),
                slots.acquire_many(every),
            )
            .await;
        })
    }
}

/// The local webhook server's limits: slow or idle clients cannot hold the sockets Meta needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Time for a request's headers to arrive (and for an idle keep-alive connection).
    pub header_timeout: Duration,
    /// Time for a request's body to arrive.
    pub body_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_connections: 512,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Clone)]
struct Http {
    pipeline: Arc<Pipeline>,
    body_timeout: Duration,
}

/// The first value of `name` in a query string, as the Lambda reads it
/// (`query_string_parameters().first`), so both answer a repeated parameter alike.
fn first_query_value(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

async fn health(State(http): State<Http>) -> axum::response::Response {
    // The store's real state for what matters here: a probe committed through the same
    // writer (and in the same group commit) as the posts.
    let unavailable = |why: String| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"status": "unavailable", "store": why})),
        )
            .into_response()
    };
    match tokio::time::timeout(Duration::from_secs(5), http.pipeline.db.probe_posts()).await {
        Ok(Ok(())) => (
            StatusCode::OK,
            axum::Json(serde_json::json!({"status": "ok", "store": "writable"})),
        )
            .into_response(),
        Ok(Err(reason)) => unavailable(reason),
        Err(_) => unavailable("no answer within 5 s".into()),
    }
}

async fn post_stages(
    State(http): State<Http>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> axum::response::Response {
    let limit = crate::stages::MAX_BODY_BYTES + 1;
    let body = match tokio::time::timeout(http.body_timeout, axum::body::to_bytes(body, limit))
        .await
    {
        Ok(Ok(body)) => body,
        Ok(Err(_)) => {
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                axum::Json(serde_json::json!({"error": "the body is over 1 MiB"})),
            )
                .into_response();
        }
        Err(_) => return (StatusCode::REQUEST_TIMEOUT, "request body too slow").into_response(),
    };
    let pipeline = &http.pipeline;
    let keys = pipeline.book.current().stage_keys.clone();
    crate::stages::post_stages(
        &pipeline.db,
        &keys,
        pipeline.stages.is_some(),
        &headers,
        &body,
    )
    .await
}

async fn webhook(
    State(http): State<Http>,
    method: Method,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: axum::body::Body,
) -> axum::response::Response {
    let pipeline = &http.pipeline;
    let Some(secrets) = &pipeline.webhook else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the secret has no verify_token: the webhook is off",
        )
            .into_response();
    };
    // The use case answers 413 itself; let a little more than its limit reach it.
    let limit = leadpipe_core::accept::MAX_BODY_BYTES + 1;
    let body = match tokio::time::timeout(http.body_timeout, axum::body::to_bytes(body, limit))
        .await
    {
        Ok(Ok(body)) => body,
        Ok(Err(_)) => return (StatusCode::PAYLOAD_TOO_LARGE, "payload too large").into_response(),
        Err(_) => return (StatusCode::REQUEST_TIMEOUT, "request body too slow").into_response(),
    };
    let signature = headers
        .get(leadpipe_core::signature::SIGNATURE_HEADER)
        .map(|v| v.to_str().unwrap_or("non-ascii"));
    let query = query.as_deref();
    let (mode, token, challenge) = (
        first_query_value(query, "hub.mode"),
        first_query_value(query, "hub.verify_token"),
        first_query_value(query, "hub.challenge"),
    );
    let answer = handle_webhook_request(
        secrets,
        &pipeline.db,
        WebhookRequest {
            method: method.as_str(),
            hub_mode: mode.as_deref(),
            hub_verify_token: token.as_deref(),
            hub_challenge: challenge.as_deref(),
            signature,
            body: &body,
        },
        time::OffsetDateTime::now_utc(),
    )
    .await;
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(header::CONTENT_TYPE, answer.content_type)],
        answer.body,
    )
        .into_response()
}

/// Arguments of `leadpipe serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The SQLite file (queue, leads, checkpoints, dead letters).
    #[arg(
        long,
        env = "LEADPIPE_DB",
        hide_env_values = true,
        default_value = "leadpipe.db"
    )]
    pub db: PathBuf,
    /// Where the webhook listens.
    #[arg(
        long,
        env = "LEADPIPE_LISTEN",
        hide_env_values = true,
        default_value = "127.0.0.1:8080"
    )]
    pub listen: String,
    /// A JSON secret file in the Secrets Manager shape (else APP_SECRET, VERIFY_TOKEN, ...).
    #[arg(long, env = "LEADPIPE_SECRET_FILE", hide_env_values = true)]
    pub secret_file: Option<PathBuf>,
    /// Ingest workers (1 to 64).
    #[arg(
        long,
        env = "LEADPIPE_WORKERS",
        hide_env_values = true,
        default_value_t = 4,
        value_parser = clap::value_parser!(u64).range(1..=64)
    )]
    pub workers: u64,
    /// Seconds between backfill runs, up to a week; 0 turns the timer off.
    #[arg(
        long,
        env = "LEADPIPE_BACKFILL_EVERY",
        hide_env_values = true,
        default_value_t = 3600,
        value_parser = clap::value_parser!(u64).range(0..=604_800)
    )]
    pub backfill_every: u64,
    /// Seconds a leased message stays invisible (1 to 43200, SQS's 12 hours).
    #[arg(
        long,
        env = "LEADPIPE_VISIBILITY_SECONDS",
        hide_env_values = true,
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(1..=43_200)
    )]
    pub visibility_seconds: u64,
    /// Connections served at once (1 to 65535); more wait until one closes.
    #[arg(
        long,
        env = "LEADPIPE_MAX_CONNECTIONS",
        hide_env_values = true,
        default_value_t = 512,
        value_parser = clap::value_parser!(u64).range(1..=65_535)
    )]
    pub max_connections: u64,
    /// Seconds a client has to send a request's headers, idle keep-alive connections too (1 to 3600).
    #[arg(
        long,
        env = "LEADPIPE_HEADER_TIMEOUT_SECONDS",
        hide_env_values = true,
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..=3_600)
    )]
    pub header_timeout_seconds: u64,
    /// Seconds a client has to send a request's body (1 to 3600).
    #[arg(
        long,
        env = "LEADPIPE_BODY_TIMEOUT_SECONDS",
        hide_env_values = true,
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(1..=3_600)
    )]
    pub body_timeout_seconds: u64,
    /// POST each new lead's event (lead event v1) to this URL, from a durable outbox.
    #[arg(
        long,
        env = "LEADPIPE_FORWARD_TO",
        hide_env_values = true,
        requires = "forward_secret_file"
    )]
    pub forward_to: Option<String>,
    /// The destinations file (docs/destinations.md): HubSpot, Salesforce, Pipedrive, Slack;
    /// their credentials in the secret's `destinations.<name>`.
    #[arg(long, env = "LEADPIPE_DESTINATIONS", hide_env_values = true)]
    pub destinations: Option<PathBuf>,
    /// How long a lead being delivered to a destination stays claimed; after a crash it is
    /// due again once this has passed. Longer than a round: five leads of up to four calls
    /// at their 15 s time-out.
    #[arg(
        long,
        env = "LEADPIPE_DESTINATION_LEASE_SECONDS",
        hide_env_values = true,
        default_value_t = 300,
        value_parser = clap::value_parser!(u64).range(1..=3_600)
    )]
    pub destination_lease_seconds: u64,
    /// The key that signs forwarded posts (X-Leadpipe-Signature-256), in a file.
    #[arg(
        long,
        env = "LEADPIPE_FORWARD_SECRET_FILE",
        hide_env_values = true,
        requires = "forward_to"
    )]
    pub forward_secret_file: Option<PathBuf>,
    /// Delete leads this many days after they were created, checked every hour (0 keeps
    /// them; default LEADS_RETENTION_DAYS, else 0).
    #[arg(long)]
    pub retention_days: Option<u32>,
    /// Allow --forward-to over plain http to another machine (loopback is always allowed).
    #[arg(long)]
    pub allow_http: bool,
    /// The first retry's longest wait, in ms (1 to 600000); doubled per attempt (with jitter) up to 10 min.
    #[arg(
        long,
        env = "LEADPIPE_FORWARD_FIRST_RETRY_MS",
        hide_env_values = true,
        default_value_t = 1000,
        value_parser = clap::value_parser!(u64).range(1..=600_000)
    )]
    pub forward_first_retry_ms: u64,
}

/// The forward URL and key from `serve`'s flags, checked before anything starts.
fn forward_settings(args: &ServeArgs) -> Result<Option<(String, secrecy::SecretString)>, CliError> {
    let (Some(url), Some(key_file)) = (&args.forward_to, &args.forward_secret_file) else {
        return Ok(None);
    };
    let parsed =
        url::Url::parse(url).map_err(|_| CliError::Settings("--forward-to is not a URL".into()))?;
    check_forward_url(&parsed, args.allow_http)?;
    crate::refuse_shared(key_file, "forward key file")?;
    let key = crate::read_small_file(key_file, 4096).map_err(|e| {
        CliError::Settings(format!(
            "the forward key file {} cannot be read: {e}",
            key_file.display()
        ))
    })?;
    let key = check_forward_key(key.trim()).map_err(|why| {
        CliError::Settings(format!("the forward key in {}: {why}", key_file.display()))
    })?;
    Ok(Some((
        url.clone(),
        secrecy::SecretString::from(key.to_owned()),
    )))
}

/// An `https` URL, or `http` to this machine (loopback); `http` elsewhere only with
/// `--allow-http`: leads are personal data, and plain HTTP shows them to every hop.
fn check_forward_url(url: &url::Url, allow_http: bool) -> Result<(), CliError> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if allow_http || is_loopback_host(url) => Ok(()),
        "http" => Err(CliError::Settings(
            "--forward-to is plain http to another machine: leads would cross the network unencrypted. Use https, or add --allow-http if the network between is yours".into(),
        )),
        _ => Err(CliError::Settings(
            "--forward-to must be an http(s) URL".into(),
        )),
    }
}

fn is_loopback_host(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// At least 16 characters (not bytes), none of them a control character.
fn check_forward_key(key: &str) -> Result<&str, String> {
    if key.chars().any(char::is_control) {
        return Err("it holds a control character: use printable characters only".into());
    }
    if key.chars().count() < 16 {
        return Err("it is shorter than 16 characters: use a long random one".into());
    }
    Ok(key)
}

/// Whether `listen` binds every interface (`0.0.0.0`, `[::]`): fine behind TLS, worth a word.
fn listens_everywhere(listen: &str) -> bool {
    listen
        .parse::<std::net::SocketAddr>()
        .is_ok_and(|a| a.ip().is_unspecified())
}

/// `serve`'s hold on its database: one `serve` per file, or two forwarders release each
/// other's claims and every lead is sent twice. An exclusive lock on `<db>.serve.lock`,
/// holding the owner's process id, released when the process ends however it ends.
pub struct ServeLock {
    _file: std::fs::File,
}

impl ServeLock {
    /// Takes the lock, or says which process holds it.
    pub fn take(db: &Path) -> Result<Self, CliError> {
        use std::io::{Read, Seek, Write};
        // One lock per file, however its path is spelled (`./`, a link): the canonical path
        // of the file, or of its directory while the file does not exist yet.
        let db = std::fs::canonicalize(db).unwrap_or_else(|_| {
            let dir = db.parent().filter(|d| !d.as_os_str().is_empty());
            match (
                std::fs::canonicalize(dir.unwrap_or(Path::new("."))),
                db.file_name(),
            ) {
                (Ok(dir), Some(name)) => dir.join(name),
                _ => db.to_path_buf(),
            }
        });
        let path = PathBuf::from(format!("{}.serve.lock", db.display()));
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| {
                CliError::Settings(format!(
                    "the lock file {} cannot be opened: {e}",
                    path.display()
                ))
            })?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(CliError::Settings(format!(
                    "another leadpipe serve (process {}) is using {}: one serve per database",
                    if holder.is_empty() { "unknown" } else { holder },
                    db.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(CliError::Settings(format!(
                    "the lock file {} cannot be locked: {e}",
                    path.display()
                )));
            }
        }
        let _ = file.set_len(0);
        let _ = file.seek(std::io::SeekFrom::Start(0));
        let _ = write!(file, "{}", std::process::id());
        let _ = file.flush();
        Ok(Self { _file: file })
    }
}

/// `leadpipe serve`: runs until interrupted.
pub async fn serve(args: ServeArgs) -> Result<(), CliError> {
    let secrets = crate::load_secrets(args.secret_file.as_ref())?;
    let forward = forward_settings(&args)?;
    // Read and built before anything starts: a wrong file or a missing credential is a
    // refusal to start, not a dead letter per lead.
    let destinations = match &args.destinations {
        Some(path) => Some(crate::destinations::build(
            &crate::destinations::load(path)?,
            &secrets,
        )?),
        None => None,
    };
    let _lock = ServeLock::take(&args.db)?;
    if listens_everywhere(&args.listen) {
        tracing::warn!(listen = %args.listen, "serve listens on every interface: put TLS in front (a reverse proxy), Meta posts only to https");
    }
    let tuning = Tuning {
        visibility: Duration::from_secs(args.visibility_seconds.max(1)),
        ..Tuning::default()
    };
    let lookup_key = secrets.lookup_key.clone();
    let mut pipeline =
        Pipeline::open(&args.db, secrets, tuning)?.with_stages(crate::stages::settings()?);
    if let Some(path) = &args.secret_file {
        pipeline = pipeline.reread_secret_file(path.clone());
    }
    let pipeline = Arc::new(pipeline);
    let mut policy = LeadPolicy::from_env(&Env::process(), lookup_key.clone())?;
    if let Some(days) = args.retention_days {
        policy = LeadPolicy::new(lookup_key, days);
        pipeline.db.set_policy(policy.clone());
    }
    // A file that cannot be written would answer every post 503: refuse to start instead.
    pipeline.db.probe_posts().await.map_err(|reason| {
        CliError::Settings(format!(
            "the database {} is not writable ({reason}): serve needs to write every post it answers",
            args.db.display()
        ))
    })?;
    if pipeline.webhook.is_none() {
        return Err(CliError::Settings(
            "the secret has no verify_token (VERIFY_TOKEN): the webhook cannot answer Meta".into(),
        ));
    }
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| CliError::Settings(format!("cannot listen on {}: {e}", args.listen)))?;
    let address = listener
        .local_addr()
        .map_err(|e| CliError::Failed(e.to_string()))?;
    let stop = Arc::new(AtomicBool::new(false));
    let limits = ServerLimits {
        max_connections: args.max_connections as usize,
        header_timeout: Duration::from_secs(args.header_timeout_seconds.max(1)),
        body_timeout: Duration::from_secs(args.body_timeout_seconds.max(1)),
    };
    // The outbox is on before any worker stores a lead, so every new lead has its event.
    let forwarder = match forward {
        Some((url, key)) => {
            pipeline.db.enable_outbox();
            let forwarder = crate::forward::Forwarder::new(
                pipeline.db.clone(),
                url,
                key,
                crate::forward::ForwardSettings {
                    first_wait: Duration::from_millis(args.forward_first_retry_ms.max(1)),
                    ..crate::forward::ForwardSettings::default()
                },
            )?;
            Some(tokio::spawn(forwarder.run(stop.clone())))
        }
        None => None,
    };
    let stage_sender = pipeline
        .stage_sender()?
        .map(|sender| tokio::spawn(sender.run(stop.clone())));
    // Before any worker stores a lead: every new lead is queued for each destination.
    let (destination_names, destination_senders) = match destinations {
        Some(built) => {
            let senders = crate::destinations::Senders::new(
                pipeline.db.clone(),
                built,
                Duration::from_secs(args.destination_lease_seconds),
            )?;
            (
                senders.names(),
                Some(tokio::spawn(senders.run(stop.clone()))),
            )
        }
        None => {
            // No destinations: none is queued for, by this serve or a backfill beside it.
            pipeline.db.enable_destinations(&[])?;
            (Vec::new(), None)
        }
    };
    let (shutdown, stopping) = tokio::sync::watch::channel(false);
    let server = pipeline.spawn_http(listener, limits, stopping);
    let workers = pipeline.spawn_workers(args.workers as usize, stop.clone());
    tracing::info!(address = %address, db = %args.db.display(), workers = args.workers, "leadpipe serving; webhook at /webhook");
    // A report line, not a duty: a closed stdout must not stop the service.
    let _ = crate::render::print(&format!(
        "leadpipe serving: webhook at http://{address}/webhook, data in {}, {} ingest worker(s), forwarding {}, destinations {}, stages {}, backfill {}\n",
        args.db.display(),
        args.workers,
        forwarding_to(args.forward_to.as_deref()),
        if destination_names.is_empty() {
            "off".to_owned()
        } else {
            destination_names.join(", ")
        },
        match &pipeline.stages {
            Some(config) => format!("to dataset {} (POST /stages)", config.dataset_id),
            None => "off".to_owned(),
        },
        if args.backfill_every == 0 {
            "off".to_owned()
        } else {
            format!(
                "every {}",
                crate::render::duration_ms(args.backfill_every * 1000)
            )
        }
    ));
    if policy.retention_days() > 0 {
        let db = pipeline.db.clone();
        tokio::spawn(async move {
            loop {
                let now = time::OffsetDateTime::now_utc().unix_timestamp();
                match db.purge_expired(now) {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(leads = n, "retention: expired leads deleted"),
                    Err(err) => {
                        tracing::error!(error = %err, "retention: expired leads could not be deleted")
                    }
                }
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
        });
    }
    if args.backfill_every > 0 && pipeline.configured_pages().is_empty() {
        tracing::warn!(
            "the secret has no page_tokens: backfill has nothing to read until `leadpipe connect` adds pages (then restart serve)"
        );
    } else if args.backfill_every > 0 {
        let pipeline = pipeline.clone();
        let every = Duration::from_secs(args.backfill_every);
        tokio::spawn(async move {
            loop {
                let plan = BackfillPlan::scheduled(&pipeline.configured_pages());
                let _summary = pipeline.backfill_within(&plan, every).await;
                tokio::time::sleep(every).await;
            }
        });
    }
    let signal = stop_signal().await;
    let _ = crate::render::print(&format!(
        "leadpipe stopping ({signal}): answering the posts in flight, then finishing ingest and forwarding (a second signal stops at once)\n"
    ));
    // A second signal ends the process at once: whatever was answered is in the file.
    tokio::spawn(async {
        let again = stop_signal().await;
        let _ = crate::render::print(&format!("leadpipe stopped at once ({again})\n"));
        std::process::exit(130);
    });
    // First the webhook: no new post is taken, each in flight is answered (and so durable);
    // then the workers finish their batches and the forwarder its calls. Each stage is
    // bounded so the whole stop stays within a service manager's stop timeout (90 s in
    // infra/local/leadpipe.service): what a cut stage held is redone at the next start.
    let _ = shutdown.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(30), server).await;
    stop.store(true, Ordering::Relaxed);
    let _ = tokio::time::timeout(
        Duration::from_secs(40),
        futures::future::join(futures::future::join_all(workers), async {
            if let Some(forwarder) = forwarder {
                let _ = forwarder.await;
            }
            if let Some(sender) = stage_sender {
                let _ = sender.await;
            }
            if let Some(senders) = destination_senders {
                let _ = senders.await;
            }
        }),
    )
    .await;
    let _ = crate::render::print(&format!(
        "leadpipe stopped: every post answered 200 is in {}\n",
        args.db.display()
    ));
    Ok(())
}

/// Waits for Ctrl-C or SIGTERM (systemd, Docker, Kubernetes stop a service with it); says
/// which came.
async fn stop_signal() -> &'static str {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(err) => {
            tracing::warn!(error = %err, "SIGTERM cannot be caught; stop serve with Ctrl-C");
            let _ = tokio::signal::ctrl_c().await;
            return "interrupted";
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "interrupted",
        _ = term.recv() => "SIGTERM",
    }
}

/// Where forwarding goes, for the start line: the scheme and host only (a URL may hold a
/// key in its user part or query).
fn forwarding_to(url: Option<&str>) -> String {
    match url.and_then(|u| url::Url::parse(u).ok()) {
        Some(url) => format!(
            "to {}://{}{}",
            url.scheme(),
            url.host_str().unwrap_or("?"),
            url.port().map(|p| format!(":{p}")).unwrap_or_default()
        ),
        None => "off".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_urls_and_keys_are_checked() {
        let url = |u: &str| url::Url::parse(u).unwrap();
        assert!(check_forward_url(&url("https://crm.example/in"), false).is_ok());
        assert!(check_forward_url(&url("http://127.0.0.1:9/in"), false).is_ok());
        assert!(check_forward_url(&url("http://localhost:9/in"), false).is_ok());
        assert!(check_forward_url(&url("http://[::1]:9/in"), false).is_ok());
        assert!(check_forward_url(&url("http://crm.example/in"), false).is_err());
        assert!(check_forward_url(&url("http://crm.example/in"), true).is_ok());
        assert!(check_forward_url(&url("ftp://crm.example/in"), true).is_err());
        // Characters, not bytes; no control characters.
        assert!(check_forward_key(&"é".repeat(9)).is_err());
        assert!(check_forward_key(&"\0".repeat(16)).is_err());
        assert!(check_forward_key("abc\u{7}defghijklmnopq").is_err());
        assert!(check_forward_key(&"é".repeat(16)).is_ok());
        assert!(listens_everywhere("0.0.0.0:8080") && listens_everywhere("[::]:80"));
        assert!(!listens_everywhere("127.0.0.1:8080"));
    }

    #[test]
    fn one_serve_per_database() {
        let db = std::env::temp_dir().join(format!("leadpipe-lock-{}.db", std::process::id()));
        let first = ServeLock::take(&db).unwrap();
        let second = ServeLock::take(&db).err().unwrap().to_string();
        assert!(second.contains(&std::process::id().to_string()), "{second}");
        // The same file by another spelling of its path is the same lock.
        let dir = db.parent().unwrap().to_path_buf();
        let spelled = dir.join(".").join(db.file_name().unwrap());
        assert!(ServeLock::take(&spelled).is_err(), "{}", spelled.display());
        drop(first);
        assert!(ServeLock::take(&db).is_ok(), "released with its holder");
        let canonical = std::fs::canonicalize(&dir)
            .unwrap()
            .join(db.file_name().unwrap());
        let _ = std::fs::remove_file(format!("{}.serve.lock", canonical.display()));
    }
}
