//! Stages back to Meta, locally (docs/stages.md): `serve`'s `POST /stages` and its sender,
//! `leadpipe stage` and `leadpipe stages import`. The rules are core's (`leadpipe_core::stages`);
//! the queue, ledger and dead letters are the SQLite file's `stages` table.

use crate::CliError;
use crate::operate::{Target, TargetArgs};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use leadpipe_core::settings::{Env, StagesConfig};
use leadpipe_core::stages::{self, StageChange, StageName, StageOutcome};
use leadpipe_graph_source::GraphConversions;
use leadpipe_local::LocalDb;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long a claimed stage stays hidden: a `kill -9` mid-send leaves it due after this.
const LEASE: Duration = Duration::from_secs(60);
/// A `POST /stages` body at most (docs/stages.md).
pub const MAX_BODY_BYTES: usize = stages::MAX_BODY_BYTES;

/// Sends the file's due stages to the Conversions API until stopped.
pub struct StageSender {
    db: LocalDb,
    api: GraphConversions,
    settings: leadpipe_core::stages::StageSettings,
}

impl StageSender {
    /// A sender over `db` to the dataset of `config`, with the tokens of `book`.
    pub fn new(
        db: LocalDb,
        config: &StagesConfig,
        graph: &leadpipe_graph::GraphConfig,
        book: leadpipe_core::tokens::TokenBook,
    ) -> Result<Self, CliError> {
        let client = leadpipe_graph_source::conversions_client(graph)?;
        Ok(Self {
            db,
            api: GraphConversions::new(
                client,
                book,
                config.dataset_id.clone(),
                config.test_event_code.clone(),
            ),
            settings: config.rules(),
        })
    }

    /// One round: the due stages, sent; what became of each, written. Returns the report.
    pub async fn send_due(&self) -> Result<stages::StagesReport, CliError> {
        let claimed = self
            .db
            .claim_stages(self.settings.events_per_request * 5, LEASE)?;
        if claimed.is_empty() {
            return Ok(stages::StagesReport::default());
        }
        let batch: Vec<StageChange> = claimed.iter().map(|c| c.stage.clone()).collect();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let (outcomes, report) =
            stages::send_stages(&self.db, &self.db, &self.api, &self.settings, &batch, now).await;
        self.db.stages_done(&claimed, &outcomes)?;
        for (claim, outcome) in claimed.iter().zip(&outcomes) {
            if let StageOutcome::Refused(refusal) = outcome {
                // Ids and the class, never the stage's name or value.
                tracing::warn!(lead_id = %claim.stage.lead_id, event_id = %claim.event_id, class = %refusal.class, reason = %refusal.reason, "stage refused");
            }
        }
        tracing::info!(
            sent = report.sent,
            already_sent = report.already_sent,
            refused = report.refused_total(),
            retried = report.retried,
            requests = report.requests,
            "stages sent to the Conversions API"
        );
        Ok(report)
    }

    /// Rounds until `stop`; a quiet file is looked at twice a second.
    pub async fn run(self, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::Relaxed) {
            match self.send_due().await {
                Ok(report) if report == stages::StagesReport::default() => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::error!(error = %err, "stages could not be sent");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
    }
}

/// `POST /stages`, as core answers it (`leadpipe_core::stages::accept_stages`).
pub async fn post_stages(
    db: &LocalDb,
    keys: &[secrecy::SecretString],
    enabled: bool,
    headers: &HeaderMap,
    body: &[u8],
) -> axum::response::Response {
    let given = headers.get("x-leadpipe-key").and_then(|v| v.to_str().ok());
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let answer = stages::accept_stages(enabled.then_some(db), keys, given, body, now).await;
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(answer.body)).into_response()
}

/// Arguments of `leadpipe stage`.
#[derive(Debug, clap::Args)]
pub struct StageArgs {
    /// Where.
    #[command(flatten)]
    pub target: TargetArgs,
    /// The lead's id.
    #[arg(long)]
    pub lead: String,
    /// The stage it reached (`Qualified`, `Converted`, ...).
    #[arg(long)]
    pub stage: String,
    /// When (default now): unix seconds, RFC 3339, a date or a span back (`2h`).
    #[arg(long)]
    pub at: Option<String>,
    /// The stage's value (with --currency).
    #[arg(long, requires = "currency")]
    pub value: Option<f64>,
    /// ISO 4217 currency of --value.
    #[arg(long)]
    pub currency: Option<String>,
    /// One JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `leadpipe stages`.
#[derive(Debug, clap::Args)]
pub struct StagesArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: StagesCommand,
}

/// `leadpipe stages ...`.
#[derive(Debug, clap::Subcommand)]
pub enum StagesCommand {
    /// Queue the stages of a CSV file (`lead_id,stage,stage_time`), a result per row.
    Import(ImportArgs),
}

/// Arguments of `leadpipe stages import`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// Where.
    #[command(flatten)]
    pub target: TargetArgs,
    /// The CSV file: a header row with `lead_id`, `stage`, `stage_time` (and optional
    /// `value`, `currency`).
    pub file: std::path::PathBuf,
    /// Check every row; queue nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// One JSON line per row refused and a summary object, on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Where `stage` and `stages import` queue: the local file's `stages` table, or the
/// stack's stage queue (output `StagesQueueUrl`), which its stages function drains.
enum StageTarget {
    Local(LocalDb),
    Stack(leadpipe_aws::SqsEventQueue),
}

impl StageTarget {
    async fn resolve(target: &TargetArgs) -> Result<Self, CliError> {
        match target.resolve().await? {
            Target::Local(path) => Ok(Self::Local(LocalDb::open_existing(&path)?)),
            Target::Aws(config, names) => {
                let url = names.stages_queue_url.ok_or_else(|| {
                    CliError::Settings(
                        "the stack has no StagesQueueUrl output (deploy this version's template), or give --db".into(),
                    )
                })?;
                Ok(Self::Stack(leadpipe_aws::SqsEventQueue::new(&config, url)))
            }
        }
    }

    /// Queues `stages` durably: `(queued, queued or sent already)`. The stack's queue cannot
    /// tell a repeat at the door; its stages function sends it once.
    async fn queue(&self, stages: &[StageChange]) -> Result<(usize, usize), CliError> {
        match self {
            Self::Local(db) => {
                let done = db.queue_stages(stages)?;
                Ok((done.queued, done.already))
            }
            Self::Stack(queue) => {
                use leadpipe_core::stages::StageQueue as _;
                queue
                    .queue_stages(stages)
                    .await
                    .map_err(|e| CliError::Unreachable(e.to_string()))?;
                Ok((stages.len(), 0))
            }
        }
    }
}

/// `leadpipe stage`: one stage queued (sent by `serve`).
pub async fn stage(args: StageArgs) -> Result<(), CliError> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let at = match &args.at {
        None => now,
        Some(text) => leadpipe_core::when::parse_time(text, now).ok_or_else(|| {
            CliError::Settings(format!(
                "--at is not a time: use {}",
                leadpipe_core::when::ACCEPTED
            ))
        })?,
    };
    let name =
        StageName::parse(&args.stage).map_err(|e| CliError::Settings(format!("--stage: {e}")))?;
    let stage = StageChange::new(
        args.lead.trim().to_owned(),
        name,
        at,
        args.value,
        args.currency.as_deref(),
        now,
    )
    .map_err(|e| CliError::Settings(e.to_string()))?;
    let target = StageTarget::resolve(&args.target).await?;
    let (queued, _) = target.queue(std::slice::from_ref(&stage)).await?;
    if args.json {
        crate::render::print(&format!(
            "{}\n",
            serde_json::json!({"lead_id": stage.lead_id, "event_id": stage.event_id(), "queued": queued == 1})
        ))?;
    } else if queued == 1 {
        crate::render::print(&format!(
            "queued: lead {} at {}; `leadpipe serve` or the stack's stages function sends it (status shows it)\n",
            stage.lead_id,
            crate::render::unix_time(stage.stage_time)
        ))?;
    } else {
        crate::render::print(&format!(
            "lead {}: this stage is queued or sent already (one event per lead and stage)\n",
            stage.lead_id
        ))?;
    }
    Ok(())
}

/// `leadpipe stages ...`.
pub async fn run(args: StagesArgs) -> Result<(), CliError> {
    match args.command {
        StagesCommand::Import(args) => import(args).await,
    }
}

/// Rows queued per transaction: one fsync per chunk, not per row.
const IMPORT_CHUNK: usize = 1_000;

async fn import(args: ImportArgs) -> Result<(), CliError> {
    let target = StageTarget::resolve(&args.target).await?;
    let file = std::fs::File::open(&args.file)
        .map_err(|e| CliError::Settings(format!("{} cannot be read: {e}", args.file.display())))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(true)
        .from_reader(file);
    let headers = reader
        .headers()
        .map_err(|e| CliError::Settings(format!("{}: no header row ({e})", args.file.display())))?
        .clone();
    let column = |name: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(name));
    let (Some(lead_col), Some(stage_col), Some(time_col)) =
        (column("lead_id"), column("stage"), column("stage_time"))
    else {
        return Err(CliError::Settings(format!(
            "{}: the header row must name lead_id, stage and stage_time",
            args.file.display()
        )));
    };
    let (value_col, currency_col) = (column("value"), column("currency"));
    let progress = if args.json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(size)
    };
    progress.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut chunk = Vec::with_capacity(IMPORT_CHUNK);
    let (mut rows, mut queued, mut already, mut refused) = (0u64, 0u64, 0u64, 0u64);
    let mut record = csv::StringRecord::new();
    loop {
        let more = match reader.read_record(&mut record) {
            Ok(more) => more,
            Err(e) => {
                // What was read before the bad place is queued and said; then the error.
                if !args.dry_run && !chunk.is_empty() {
                    let (new, seen) = target.queue(&chunk).await?;
                    queued += new as u64;
                    already += seen as u64;
                }
                progress.finish_and_clear();
                crate::render::print(&format!(
                    "{rows} row(s) read: queued {queued}, {already} queued or sent already, {refused} refused; then the file could not be read on\n"
                ))?;
                return Err(CliError::Settings(format!("{}: {e}", args.file.display())));
            }
        };
        if more {
            rows += 1;
            // Row numbers as a spreadsheet shows them: the header is row 1.
            let row = rows + 1;
            let field =
                |col: Option<usize>| col.and_then(|c| record.get(c)).filter(|v| !v.is_empty());
            let parsed = (|| {
                let name = StageName::parse(field(Some(stage_col)).unwrap_or_default())?;
                let at = stages::parse_stage_time(field(Some(time_col)).unwrap_or_default())?;
                let value = match field(value_col) {
                    None => None,
                    Some(v) => Some(
                        v.parse::<f64>()
                            .map_err(|_| stages::StageInputError::Value)?,
                    ),
                };
                StageChange::new(
                    field(Some(lead_col)).unwrap_or_default().to_owned(),
                    name,
                    at,
                    value,
                    field(currency_col),
                    now,
                )
            })();
            match parsed {
                Ok(stage) => chunk.push(stage),
                Err(why) => {
                    refused += 1;
                    let line = if args.json {
                        serde_json::json!({"row": row, "refused": why.to_string()}).to_string()
                    } else {
                        format!("row {row}: refused: {why}")
                    };
                    progress.suspend(|| crate::render::print(&format!("{line}\n")))?;
                }
            }
            progress.set_position(reader.position().byte());
        }
        if chunk.len() >= IMPORT_CHUNK || (!more && !chunk.is_empty()) {
            if args.dry_run {
                queued += chunk.len() as u64;
            } else {
                let (new, seen) = target.queue(&chunk).await?;
                queued += new as u64;
                already += seen as u64;
            }
            chunk.clear();
            progress.set_message(format!("{queued} queued"));
        }
        if !more {
            break;
        }
    }
    progress.finish_and_clear();
    let verb = if args.dry_run {
        "would queue"
    } else {
        "queued"
    };
    if args.json {
        crate::render::print(&format!(
            "{}\n",
            serde_json::json!({"rows": rows, "queued": queued, "already": already, "refused": refused, "dry_run": args.dry_run})
        ))?;
    } else {
        crate::render::print(&format!(
            "{rows} row(s): {verb} {queued}, {already} queued or sent already, {refused} refused\n"
        ))?;
    }
    if refused > 0 {
        return Err(CliError::Failed(format!(
            "{refused} row(s) refused: see the lines above"
        )));
    }
    Ok(())
}

/// The stage settings of the environment, for `serve` and `demo`.
pub fn settings() -> Result<Option<StagesConfig>, CliError> {
    Ok(Env::process().stages()?)
}
