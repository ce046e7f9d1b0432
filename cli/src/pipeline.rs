//! The local pipeline: the webhook over HTTP, ingest workers over the SQLite queue, and
//! backfill, all on one [`LocalDb`].

use crate::CliError;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::IntoResponse;
use leadpipe_core::accept::{WebhookRequest, WebhookSecrets, handle_webhook_request};
use leadpipe_core::backfill::{
    BackfillPlan, BackfillPorts, BackfillSettings, BackfillSummary, InstantDeadline, run_backfill,
};
use leadpipe_core::graph_source::{GraphBackfillSource, GraphLeadFetcher, graph_config};
use leadpipe_core::ingest::{QueuedMessage, ingest_batch};
use leadpipe_core::secrets::AppSecrets;
use leadpipe_core::settings::Env;
use leadpipe_graph::{GraphClient, GraphConfig};
use leadpipe_local::{LocalDb, LocalQueueControl};
use std::collections::HashMap;
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
    pub backfill: BackfillSettings,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            visibility: Duration::from_secs(30),
            max_receives: 5,
            max_delay: Duration::from_secs(15 * 60),
            backfill: BackfillSettings::default(),
        }
    }
}

/// Everything the local pipeline needs, built once.
pub struct Pipeline {
    pub db: LocalDb,
    secrets: AppSecrets,
    webhook: Option<WebhookSecrets>,
    graph: GraphClient,
    tuning: Tuning,
}

impl Pipeline {
    /// Opens the SQLite file and builds the Graph client from the environment's
    /// `GRAPH_API_BASE` / `GRAPH_API_VERSION`.
    pub fn open(db: &Path, secrets: AppSecrets, tuning: Tuning) -> Result<Self, CliError> {
        let config = graph_config(&Env::process(), &secrets)
            .map_err(|e| CliError::Settings(e.to_string()))?;
        Self::with_graph(db, secrets, config, tuning)
    }

    /// Like [`Pipeline::open`] with an explicit Graph configuration.
    pub fn with_graph(
        db: &Path,
        secrets: AppSecrets,
        graph: GraphConfig,
        tuning: Tuning,
    ) -> Result<Self, CliError> {
        let db = LocalDb::open(db).map_err(|e| CliError::Settings(e.to_string()))?;
        let graph = GraphClient::new(graph).map_err(|e| CliError::Settings(e.to_string()))?;
        let webhook = WebhookSecrets::try_from(&secrets).ok();
        Ok(Self {
            db,
            secrets,
            webhook,
            graph,
            tuning,
        })
    }

    /// The pages the secret has tokens for.
    pub fn configured_pages(&self) -> Vec<String> {
        self.secrets.page_tokens.keys().cloned().collect()
    }

    /// Takes one batch off the queue and ingests it; returns how many messages it took.
    pub async fn ingest_once(
        &self,
        fetcher: &GraphLeadFetcher,
        control: &LocalQueueControl,
    ) -> Result<usize, String> {
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
            control,
            &messages,
            time::OffsetDateTime::now_utc(),
        )
        .await;
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
                        GraphLeadFetcher::new(pipeline.graph.clone(), pipeline.secrets.clone());
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
        let source = GraphBackfillSource::new(self.graph.clone(), self.secrets.clone());
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

    /// Serves the webhook at `/webhook` (and `/`) on `listener` until the task is dropped.
    pub fn spawn_http(
        self: &Arc<Self>,
        listener: tokio::net::TcpListener,
    ) -> tokio::task::JoinHandle<()> {
        let app = axum::Router::new()
            .route("/webhook", axum::routing::any(webhook))
            .route("/", axum::routing::any(webhook))
            .route("/health", axum::routing::get(|| async { "ok" }))
            // The use case answers 413 itself; let a little more than its limit reach it.
            .layer(axum::extract::DefaultBodyLimit::max(
                leadpipe_core::accept::MAX_BODY_BYTES + 1,
            ))
            .with_state(self.clone());
        tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                tracing::error!(error = %err, "webhook server stopped");
            }
        })
    }
}

async fn webhook(
    State(pipeline): State<Arc<Pipeline>>,
    method: Method,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let Some(secrets) = &pipeline.webhook else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the secret has no verify_token: the webhook is off",
        )
            .into_response();
    };
    let signature = headers
        .get(leadpipe_core::signature::SIGNATURE_HEADER)
        .map(|v| v.to_str().unwrap_or("non-ascii"));
    let answer = handle_webhook_request(
        secrets,
        &pipeline.db,
        WebhookRequest {
            method: method.as_str(),
            hub_mode: query.get("hub.mode").map(String::as_str),
            hub_verify_token: query.get("hub.verify_token").map(String::as_str),
            hub_challenge: query.get("hub.challenge").map(String::as_str),
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
    #[arg(long, env = "LEADPIPE_DB", default_value = "leadpipe.db")]
    pub db: PathBuf,
    /// Where the webhook listens.
    #[arg(long, env = "LEADPIPE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// A JSON secret file in the Secrets Manager shape (else APP_SECRET, VERIFY_TOKEN, ...).
    #[arg(long, env = "LEADPIPE_SECRET_FILE")]
    pub secret_file: Option<PathBuf>,
    /// Ingest workers.
    #[arg(long, env = "LEADPIPE_WORKERS", default_value_t = 4)]
    pub workers: usize,
    /// Seconds between backfill runs; 0 turns the timer off.
    #[arg(long, env = "LEADPIPE_BACKFILL_EVERY", default_value_t = 3600)]
    pub backfill_every: u64,
    /// Seconds a leased message stays invisible.
    #[arg(long, env = "LEADPIPE_VISIBILITY_SECONDS", default_value_t = 30)]
    pub visibility_seconds: u64,
}

/// `leadpipe serve`: runs until interrupted.
pub async fn serve(args: ServeArgs) -> Result<(), CliError> {
    let secrets = crate::load_secrets(args.secret_file.as_ref())?;
    let tuning = Tuning {
        visibility: Duration::from_secs(args.visibility_seconds.max(1)),
        ..Tuning::default()
    };
    let pipeline = Arc::new(Pipeline::open(&args.db, secrets, tuning)?);
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
    let server = pipeline.spawn_http(listener);
    let workers = pipeline.spawn_workers(args.workers, stop.clone());
    tracing::info!(address = %address, db = %args.db.display(), workers = args.workers, "leadpipe serving; webhook at /webhook");
    println!(
        "leadpipe serving: webhook at http://{address}/webhook, data in {}",
        args.db.display()
    );
    if args.backfill_every > 0 {
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
    let _ = tokio::signal::ctrl_c().await;
    stop.store(true, Ordering::Relaxed);
    server.abort();
    for worker in workers {
        let _ = worker.await;
    }
    Ok(())
}
