//! `leadpipe demo`: the sandbox Graph, signed webhooks with drops, duplicates and faults,
//! the local pipeline bringing every lead home, and a table that says so.

use crate::CliError;
use crate::pipeline::{Pipeline, Tuning};
use indicatif::{ProgressBar, ProgressStyle};
use leadpipe_core::backfill::{BackfillPlan, BackfillSettings};
use leadpipe_core::secrets::AppSecrets;
use leadpipe_graph::{GraphConfig, RetryPolicy};
use leadpipe_local::LeadFilter;
use leadpipe_sandbox::{Dataset, DatasetSpec, Faults, Sandbox, WebhookSender};
use secrecy::SecretString;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

/// Arguments of `leadpipe demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Leads the sandbox makes (1 to 1000000).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub leads: u64,
    /// Share of leads whose webhook is never sent (0 to 1).
    #[arg(long, default_value_t = 0.1, value_parser = share)]
    pub drop: f64,
    /// Share of posts sent twice (0 to 1).
    #[arg(long, default_value_t = 0.1, value_parser = share)]
    pub duplicate: f64,
    /// Share of Graph lead reads that fail transiently (0 to 0.9: above that nothing is read).
    #[arg(long, default_value_t = 0.05, value_parser = fault_share)]
    pub transient: f64,
    /// Share of Graph lead reads that are rate limited (0 to 0.9).
    #[arg(long, default_value_t = 0.01, value_parser = fault_share)]
    pub rate_limited: f64,
    /// The SQLite file (default: a new one in the temp directory, deleted at the end unless --keep).
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// Keep the temporary database at the end (a --db file is always kept).
    #[arg(long)]
    pub keep: bool,
    /// No progress bars (for logs and tests).
    #[arg(long)]
    pub quiet: bool,
    /// Share of forwarded posts the demo's receiver answers 503, each retried (0 to 0.9).
    #[arg(long, default_value_t = 0.1, value_parser = fault_share)]
    pub forward_fail: f64,
    /// Send the webhooks at this many leads per second, 1 to 100000 (default: as fast as
    /// they are answered, a burst). A steady rate is what the speed-to-lead figures mean in
    /// production.
    #[arg(long, value_parser = rate)]
    pub rate: Option<f64>,
    /// A destinations file (docs/destinations.md): its destinations and mappings run against
    /// the stand-ins of HubSpot, Salesforce, Pipedrive and Slack (and a receiver for the
    /// webhook kind), with the stand-ins' own credentials; nothing leaves this machine.
    #[arg(long)]
    pub destinations: Option<PathBuf>,
}

/// A share from 0 to 1.
fn share(text: &str) -> Result<f64, String> {
    within(text, 0.0, 1.0)
}

/// A share of faults from 0 to 0.9: at 1 every read would fail and the demo could not end.
fn fault_share(text: &str) -> Result<f64, String> {
    within(text, 0.0, 0.9)
}

fn rate(text: &str) -> Result<f64, String> {
    within(text, 1.0, 100_000.0)
}

fn within(text: &str, low: f64, high: f64) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(v) if (low..=high).contains(&v) => Ok(v),
        _ => Err(format!("must be a number from {low} to {high}")),
    }
}

/// The demo's temporary database, removed (with its `-wal` and `-shm`) on every way out:
/// the end, an error, an interrupt.
struct TempDb {
    path: PathBuf,
    keep: bool,
}

impl Drop for TempDb {
    fn drop(&mut self) {
        if !self.keep {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", self.path.display()));
            }
        }
    }
}

impl Default for DemoArgs {
    fn default() -> Self {
        Self {
            leads: 1000,
            drop: 0.1,
            duplicate: 0.1,
            transient: 0.05,
            rate_limited: 0.01,
            db: None,
            keep: false,
            quiet: true,
            forward_fail: 0.1,
            rate: None,
            destinations: None,
        }
    }
}

/// What the demo saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DemoReport {
    /// Leads the sandbox made.
    pub leads: usize,
    /// Webhook posts sent, duplicates included.
    pub posts: usize,
    /// Posts sent twice on purpose.
    pub duplicated_posts: usize,
    /// Leads whose webhook was never sent.
    pub dropped: usize,
    /// Leads stored by ingest.
    pub by_webhook: usize,
    /// Leads stored by backfill.
    pub by_backfill: usize,
    /// Leads stored, once each.
    pub stored: usize,
    /// Sandbox leads not in the store.
    pub missing: usize,
    /// Stored leads whose raw JSON differs from the sandbox's.
    pub mismatched: usize,
    /// Dead letters left.
    pub dead_letters: usize,
    /// The SQLite file.
    pub db: PathBuf,
    /// Wall time, whole seconds.
    pub seconds: u64,
    /// Speed to lead of the webhook's leads, webhook receipt to stored: (p50, p99) ms.
    pub received_to_stored_ms: Option<(u64, u64)>,
    /// Speed to lead of the webhook's leads, Meta's `created_time` to stored: (p50, p99) ms.
    pub created_to_stored_ms: Option<(u64, u64)>,
    /// Leads the demo's receiver got, counted once each (by `Idempotency-Key`).
    pub forwarded: usize,
    /// POSTs the receiver answered, failures included.
    pub forward_calls: usize,
    /// POSTs the receiver failed on purpose (each retried).
    pub forward_failed: usize,
    /// Leads the receiver got more than once (a retry after a lost answer).
    pub forwarded_twice: usize,
    /// Stored to delivered at the receiver: (p50, p99) ms.
    pub stored_to_forwarded_ms: Option<(u64, u64)>,
    /// Leads per second the receiver got, from its first to its last.
    pub forward_rate: Option<u64>,
    /// Stages Meta (the sandbox's dataset) took: each lead's initial stage and the later
    /// ones the demo gives a share of leads (docs/stages.md).
    pub stages_sent: u64,
    /// Events the sandbox's dataset holds (it must match `stages_sent`).
    pub stages_received: usize,
    /// Stages refused and never sent, by class (the demo gives a few bad ones on purpose).
    pub stages_refused: BTreeMap<String, i64>,
    /// The later stages, queued at once, per second to the sandbox's dataset.
    pub stage_rate: Option<u64>,
    /// With `--destinations`: each destination's `(name, kind, delivered, dead)`.
    pub destinations: Vec<(String, &'static str, u64, u64)>,
}

fn bar(quiet: bool, len: usize, message: &'static str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    // `wide_bar` fills the terminal's width (80 columns where it cannot be told), never more.
    let bar = ProgressBar::new(len as u64);
    if let Ok(style) = ProgressStyle::with_template("{msg:>20} [{wide_bar}] {pos}/{len} {rate}") {
        // Whole leads per second: indicatif's own {per_sec} prints four decimals.
        let style = style
            .with_key(
                "rate",
                |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.0}/s", state.per_sec());
                },
            )
            .progress_chars("=> ");
        bar.set_style(style);
    }
    bar.set_message(message);
    bar
}

/// Runs the demo and prints its table; fails when any lead is missing. Ctrl-C ends it
/// early, its temporary database removed.
pub async fn run(args: DemoArgs) -> Result<DemoReport, CliError> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let db = args.db.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("leadpipe-demo-{}-{}.db", std::process::id(), now))
    });
    let _temp = TempDb {
        path: db.clone(),
        keep: args.keep || args.db.is_some(),
    };
    tokio::select! {
        done = demo(args, db) => done,
        _ = tokio::signal::ctrl_c() => Err(CliError::Failed("interrupted; the demo's temporary database was removed".into())),
    }
}

async fn demo(args: DemoArgs, db: PathBuf) -> Result<DemoReport, CliError> {
    let started = Instant::now();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let spec = DatasetSpec {
        pages: 3,
        forms_per_page: 2,
        leads: args.leads as usize,
        newest: now - 120,
        ..DatasetSpec::default()
    };
    let faults = Faults {
        transient_rate: args.transient,
        rate_limited_rate: args.rate_limited,
        ..Faults::default()
    };
    // The sandbox makes and owns the world, each lead's JSON serialized as it is made; the
    // demo keeps what a webhook post names of each lead, so memory per lead stays small.
    let sandbox = Sandbox::generate(&spec, faults)
        .await
        .map_err(|e| CliError::Failed(format!("sandbox: {e}")))?;
    let data = sandbox.leads_by_id();
    let pipeline = Arc::new(local_pipeline(&db, &data, &sandbox)?);
    // 0. Every new lead is forwarded to a receiver that fails some calls on purpose.
    let receiver = Receiver::start(args.forward_fail).await?;
    pipeline.db.enable_outbox();
    let forward_stop = Arc::new(AtomicBool::new(false));
    let forward_latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let forwarder = crate::forward::Forwarder::new(
        pipeline.db.clone(),
        receiver.url.clone(),
        SecretString::from("demo-forward-key-0123456789"),
        crate::forward::ForwardSettings {
            first_wait: Duration::from_millis(20),
            ..crate::forward::ForwardSettings::default()
        },
    )?
    .record_latencies(forward_latencies.clone());
    let forwarding = tokio::spawn(forwarder.run(forward_stop.clone()));
    let stage_sender = pipeline
        .stage_sender()?
        .map(|sender| tokio::spawn(sender.run(forward_stop.clone())));
    // The destinations file, against the stand-ins: queued from each lead's first write on.
    let (stand_ins, destination_senders) = match &args.destinations {
        Some(path) => {
            let (stand_ins, senders) = DemoDestinations::start(path, &pipeline.db).await?;
            (
                Some(stand_ins),
                Some(tokio::spawn(senders.run(forward_stop.clone()))),
            )
        }
        None => (None, None),
    };

    // 1. Meta delivers, imperfectly; 2. ingest drains the queue.
    let sent = deliver_and_ingest(&pipeline, &data, &args).await?;
    // 3. Backfill recovers what the webhooks missed.
    recover(&pipeline, &data, args.quiet).await;
    // 5. The receiver has every lead.
    drain_outbox(&pipeline, &receiver, args.quiet).await?;
    // 5b. Every destination has every lead it takes.
    if stand_ins.is_some() {
        drain_destinations(&pipeline, args.quiet).await?;
    }
    // 6. Stages back to Meta: later stages for a share of leads, and a few bad ones.
    let later = later_stages(&pipeline, &data)?;
    let draining = Instant::now();
    drain_stages(&pipeline, args.quiet).await?;
    let drained = draining.elapsed().as_secs_f64();
    forward_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = forwarding.await;
    if let Some(sender) = stage_sender {
        let _ = sender.await;
    }
    if let Some(senders) = destination_senders {
        let _ = senders.await;
    }
    // 4. Compare with the sandbox, field for field.
    let mut report = compare(&pipeline, &sandbox, data.leads.len(), &sent, &db)?;
    receiver.fill(&mut report);
    let counts = pipeline.db.stage_counts()?;
    report.stages_sent = counts.sent as u64;
    report.stages_refused = counts.refused;
    report.stages_received = sandbox.conversion_events().len();
    report.stage_rate = (later > 100 && drained > 0.0).then(|| (later as f64 / drained) as u64);
    report.stored_to_forwarded_ms = percentiles(
        forward_latencies
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default(),
    );
    if let Some(stand_ins) = &stand_ins {
        let counts = pipeline.db.destination_counts()?;
        report.destinations = stand_ins
            .kinds
            .iter()
            .map(|(name, kind, _)| {
                let c = counts.iter().find(|c| &c.name == name);
                (
                    name.clone(),
                    *kind,
                    c.map(|c| c.delivered).unwrap_or_default(),
                    c.map(|c| c.dead).unwrap_or_default(),
                )
            })
            .collect();
    }
    let takes_all: Vec<&String> = stand_ins
        .iter()
        .flat_map(|s| s.kinds.iter().filter(|(_, _, all)| *all).map(|(n, _, _)| n))
        .collect();
    report.seconds = started.elapsed().as_secs();
    print_report(&report, &db, args.keep || args.db.is_some())?;
    // A destination that takes every lead has every stored one, delivered or refused.
    if let Some((name, _, delivered, dead)) = report
        .destinations
        .iter()
        .find(|(name, _, d, x)| takes_all.contains(&name) && (*d + *x) as usize != report.stored)
    {
        return Err(CliError::Failed(format!(
            "destination {name}: {delivered} delivered and {dead} refused of {} stored",
            report.stored
        )));
    }
    if report.missing > 0 || report.mismatched > 0 || report.forwarded != report.stored {
        return Err(CliError::Failed(format!(
            "{} lead(s) missing, {} differing, {} of {} forwarded",
            report.missing, report.mismatched, report.forwarded, report.stored
        )));
    }
    if report.stages_received as u64 != report.stages_sent {
        return Err(CliError::Failed(format!(
            "{} stage(s) recorded as sent, {} received by the dataset",
            report.stages_sent, report.stages_received
        )));
    }
    Ok(report)
}

/// `demo --destinations`: the file's destinations, each pointed at its stand-in with the
/// stand-in's own credentials (the file's mappings, forms and settings kept).
struct DemoDestinations {
    _crm: leadpipe_sandbox::crm::CrmStandIn,
    _receiver: Receiver,
    /// `(name, kind, takes every lead)`.
    kinds: Vec<(String, &'static str, bool)>,
}

impl DemoDestinations {
    /// The stand-ins, and the senders that deliver to them (the file queues for them).
    async fn start(
        path: &std::path::Path,
        db: &leadpipe_local::LocalDb,
    ) -> Result<(Self, crate::destinations::Senders), CliError> {
        use leadpipe_core::destinations::DestinationKind;
        use leadpipe_sandbox::crm;
        let configs = crate::destinations::load(path)?;
        let stand_in = crm::CrmStandIn::start()
            .await
            .map_err(|e| CliError::Failed(format!("the CRM stand-ins: {e}")))?;
        let receiver = Receiver::start(0.0).await?;
        let base = stand_in.base_url();
        let mut secrets: std::collections::BTreeMap<String, serde_json::Value> = Default::default();
        let mut built = Vec::new();
        let mut kinds = Vec::new();
        for mut config in configs {
            config.base_url = Some(base.clone());
            let credentials = match config.kind {
                DestinationKind::Hubspot => serde_json::json!({"token": crm::HUBSPOT_TOKEN}),
                DestinationKind::Salesforce => {
                    config.login_url = Some(base.clone());
                    config.external_id_field = crm::SALESFORCE_FIELD.to_owned();
                    config.api_version = "v67.0".to_owned();
                    serde_json::json!({"client_id": crm::SALESFORCE_CLIENT_ID, "client_secret": crm::SALESFORCE_CLIENT_SECRET})
                }
                DestinationKind::Pipedrive => {
                    config.lead_id_field = Some(crm::PIPEDRIVE_FIELD.to_owned());
                    serde_json::json!({"token": crm::PIPEDRIVE_TOKEN})
                }
                DestinationKind::Slack => serde_json::json!({"webhook_url": stand_in.slack_url()}),
                DestinationKind::Webhook => {
                    config.url = Some(receiver.url.clone());
                    serde_json::json!({"key": "demo-destination-key-0123456789"})
                }
            };
            secrets.insert(config.name.to_string(), credentials);
            kinds.push((
                config.name.to_string(),
                config.kind.as_str(),
                config.forms.is_empty(),
            ));
            built.push(config);
        }
        let secret: leadpipe_core::secrets::AppSecrets = serde_json::from_value(
            serde_json::json!({"app_secret": "demo", "destinations": secrets}),
        )
        .map_err(|e| CliError::Failed(format!("the stand-ins' credentials: {e}")))?;
        let senders = crate::destinations::Senders::new(
            db.clone(),
            crate::destinations::build(&built, &secret)?,
            Duration::from_secs(30),
        )?;
        Ok((
            Self {
                _crm: stand_in,
                _receiver: receiver,
                kinds,
            },
            senders,
        ))
    }
}

/// Waits until no destination has a pending lead (a stall of two minutes fails it).
async fn drain_destinations(pipeline: &Pipeline, quiet: bool) -> Result<(), CliError> {
    let bar = bar(quiet, 1, "destinations");
    let mut last = (Instant::now(), u64::MAX);
    loop {
        let counts = pipeline.db.destination_counts()?;
        let pending: u64 = counts.iter().map(|c| c.pending).sum();
        let done: u64 = counts.iter().map(|c| c.delivered + c.dead).sum();
        bar.set_length(done + pending);
        bar.set_position(done);
        if pending == 0 {
            bar.finish_and_clear();
            return Ok(());
        }
        if pending != last.1 {
            last = (Instant::now(), pending);
        }
        if last.0.elapsed() > Duration::from_secs(120) {
            return Err(CliError::Failed(format!(
                "{pending} lead(s) still wait for a destination after two minutes without progress"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The demo's stand-in for a CRM: counts each lead by its `Idempotency-Key` and answers 503
/// to a share of calls.
struct Receiver {
    url: String,
    seen: Arc<std::sync::Mutex<ReceiverCounts>>,
    _server: tokio::task::JoinHandle<()>,
}

type ReceiverState = (
    Arc<std::sync::Mutex<ReceiverCounts>>,
    Arc<std::sync::Mutex<fastrand::Rng>>,
);

#[derive(Default)]
struct ReceiverCounts {
    keys: BTreeMap<String, usize>,
    calls: usize,
    failed: usize,
    first_and_last: Option<(Instant, Instant)>,
}

impl Receiver {
    async fn start(fail_rate: f64) -> Result<Self, CliError> {
        let seen = Arc::new(std::sync::Mutex::new(ReceiverCounts::default()));
        let rng = Arc::new(std::sync::Mutex::new(fastrand::Rng::with_seed(5)));
        let state = (seen.clone(), rng);
        let app = axum::Router::new()
            .route(
                "/leads",
                axum::routing::post(
                    move |axum::extract::State((seen, rng)): axum::extract::State<
                        ReceiverState,
                    >,
                          headers: axum::http::HeaderMap| async move {
                        let fail = rng.lock().map(|mut r| r.f64() < fail_rate).unwrap_or(false);
                        let Ok(mut seen) = seen.lock() else {
                            return axum::http::StatusCode::INTERNAL_SERVER_ERROR;
                        };
                        seen.calls += 1;
                        if fail {
                            seen.failed += 1;
                            return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                        }
                        let key = headers
                            .get("idempotency-key")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned();
                        *seen.keys.entry(key).or_default() += 1;
                        let now = Instant::now();
                        seen.first_and_last = Some(match seen.first_and_last {
                            Some((first, _)) => (first, now),
                            None => (now, now),
                        });
                        axum::http::StatusCode::OK
                    },
                ),
            )
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| CliError::Failed(format!("the demo's receiver: {e}")))?;
        let address = listener
            .local_addr()
            .map_err(|e| CliError::Failed(format!("the demo's receiver: {e}")))?;
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            url: format!("http://{address}/leads"),
            seen,
            _server: server,
        })
    }

    fn fill(&self, report: &mut DemoReport) {
        if let Ok(seen) = self.seen.lock() {
            report.forwarded = seen.keys.len();
            report.forward_calls = seen.calls;
            report.forward_failed = seen.failed;
            report.forwarded_twice = seen.keys.values().filter(|n| **n > 1).count();
            report.forward_rate = seen.first_and_last.and_then(|(first, last)| {
                let secs = (last - first).as_secs_f64();
                (secs > 0.0).then(|| (seen.keys.len() as f64 / secs) as u64)
            });
        }
    }
}

/// Waits until the outbox is empty, as long as the receiver keeps getting leads.
async fn drain_outbox(
    pipeline: &Pipeline,
    receiver: &Receiver,
    quiet: bool,
) -> Result<(), CliError> {
    let stored = pipeline.db.lead_count()? as usize;
    let forwarding = bar(quiet, stored, "forwarded");
    let mut last = (Instant::now(), 0usize);
    loop {
        let summary = pipeline.db.outbox_summary()?;
        let got = receiver.seen.lock().map(|s| s.keys.len()).unwrap_or(0);
        forwarding.set_position(got as u64);
        if summary.pending == 0 {
            break;
        }
        if got != last.1 {
            last = (Instant::now(), got);
        } else if last.0.elapsed() > Duration::from_secs(60) {
            return Err(CliError::Failed(format!(
                "forwarding stalled with {} lead event(s) pending",
                summary.pending
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    forwarding.finish();
    Ok(())
}

/// Every fourth lead reaches `Qualified` a moment ago; two stages are bad on purpose, one
/// dated before its lead (`before_lead`) and one for a lead nobody has (`unknown_lead`).
fn later_stages(pipeline: &Pipeline, data: &Dataset) -> Result<usize, CliError> {
    use leadpipe_core::stages::{StageChange, StageName};
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let name = |n: &str| StageName::parse(n).map_err(|e| CliError::Failed(e.to_string()));
    let (qualified, won) = (name("Qualified")?, name("Won")?);
    let mut stages = Vec::new();
    for lead in data.leads.iter().step_by(4) {
        if let Ok(stage) = StageChange::new(
            lead.id.clone(),
            qualified.clone(),
            now - 30,
            None,
            None,
            now,
        ) {
            stages.push(stage);
        }
    }
    if let Some(lead) = data.leads.first()
        && let Ok(stage) = StageChange::new(
            lead.id.clone(),
            won.clone(),
            lead.created_time - 3_600,
            None,
            None,
            now,
        )
    {
        stages.push(stage);
    }
    if let Ok(stage) = StageChange::new("999999999999999".into(), won, now - 30, None, None, now) {
        stages.push(stage);
    }
    Ok(pipeline.db.queue_stages(&stages)?.queued)
}

/// Waits until no stage is queued (the sender sends them), with a bar.
async fn drain_stages(pipeline: &Pipeline, quiet: bool) -> Result<(), CliError> {
    let counts = pipeline.db.stage_counts()?;
    let total = counts.queued + counts.sent + counts.refused.values().sum::<i64>();
    let progress = bar(quiet, total.max(0) as usize, "stages to Meta");
    let mut last = (Instant::now(), -1i64);
    loop {
        let counts = pipeline.db.stage_counts()?;
        let done = total - counts.queued;
        progress.set_position(done.max(0) as u64);
        if counts.queued == 0 {
            break;
        }
        if done != last.1 {
            last = (Instant::now(), done);
        } else if last.0.elapsed() > Duration::from_secs(60) {
            return Err(CliError::Failed(format!(
                "stages stalled with {} queued",
                counts.queued
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    progress.finish();
    Ok(())
}

/// The local pipeline on `db`, reading the sandbox with its page tokens, tuned so the
/// sandbox's faults clear in milliseconds rather than minutes.
fn local_pipeline(db: &Path, data: &Dataset, sandbox: &Sandbox) -> Result<Pipeline, CliError> {
    let secrets = AppSecrets {
        app_secret: SecretString::from(leadpipe_sandbox::server::demo_app_secret()),
        verify_token: Some(SecretString::from("demo-verify-token")),
        lookup_key: Some(SecretString::from(DEMO_LOOKUP_KEY)),
        conversions_token: Some(SecretString::from(leadpipe_sandbox::conversions::TOKEN)),
        stage_keys: Vec::new(),
        destinations: Default::default(),
        destinations_file: None,
        access_token: None,
        page_tokens: leadpipe_sandbox::server::tokens(data)
            .into_iter()
            .map(|(p, t)| (p, SecretString::from(t)))
            .collect::<BTreeMap<_, _>>(),
    };
    let graph = GraphConfig {
        base_url: sandbox.base_url(),
        app_secret: Some(SecretString::from(
            leadpipe_sandbox::server::demo_app_secret(),
        )),
        retry: RetryPolicy {
            max_retries: 2,
            min_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
        },
        ..GraphConfig::default()
    };
    let tuning = Tuning {
        visibility: Duration::from_millis(500),
        max_receives: 20,
        // The sandbox's rate limits clear at once; a real page's take minutes.
        max_delay: Duration::from_millis(500),
        record_latencies: true,
        backfill: BackfillSettings {
            lookback: Duration::from_secs(90 * 86_400),
            page_size: 100,
            ..BackfillSettings::default()
        },
    };
    let policy = leadpipe_core::privacy::LeadPolicy::new(secrets.lookup_key.clone(), 0);
    // Stages back to the sandbox's Conversions API dataset, each new lead's initial one too.
    let stages = leadpipe_core::settings::StagesConfig {
        dataset_id: leadpipe_sandbox::conversions::DATASET_ID.to_owned(),
        initial_stage: leadpipe_core::stages::StageName::parse("Lead")
            .map_err(|e| CliError::Failed(e.to_string()))?,
        lead_event_source: "leadpipe demo".to_owned(),
        test_event_code: None,
    };
    let pipeline = Pipeline::with_graph(db, secrets, graph, tuning)?.with_stages(Some(stages));
    // Lookup keys as a real set-up writes them: `forget --email` works on the demo's data.
    pipeline.db.set_policy(policy);
    Ok(pipeline)
}

/// The demo's `lookup_key`; `forget --email ... --db <demo db>` takes it as `LOOKUP_KEY`
/// (the table's last lines say so).
pub const DEMO_LOOKUP_KEY: &str = "leadpipe-demo-lookup-key";

/// Serves the webhook, sends the sandbox's leads as signed posts (dropped, duplicated,
/// reordered as `args` say), and lets four ingest workers drain the queue.
async fn deliver_and_ingest(
    pipeline: &Arc<Pipeline>,
    data: &Dataset,
    args: &DemoArgs,
) -> Result<leadpipe_sandbox::sender::SendReport, CliError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| CliError::Failed(e.to_string()))?;
    let url = format!(
        "http://{}/webhook",
        listener
            .local_addr()
            .map_err(|e| CliError::Failed(e.to_string()))?
    );
    let (_shutdown, stopping) = tokio::sync::watch::channel(false);
    let server = pipeline.spawn_http(listener, crate::pipeline::ServerLimits::default(), stopping);
    let stop = Arc::new(AtomicBool::new(false));
    let workers = pipeline.spawn_workers(4, stop.clone());

    let sending = bar(args.quiet, data.leads.len(), "webhooks sent");
    let sender = WebhookSender {
        url,
        app_secret: leadpipe_sandbox::server::demo_app_secret().to_owned(),
        drop_rate: args.drop,
        duplicate_rate: args.duplicate,
        changes_per_post: 3,
        seed: 42,
        rate: args.rate,
    };
    let sent = sender
        .send(&data.leads, |n| sending.set_position(n as u64))
        .await;
    sending.finish();

    let ingesting = bar(args.quiet, sent.delivered.len(), "ingested by webhook");
    let deadline = Instant::now() + Duration::from_secs(120);
    while pipeline.db.queue_len()? > 0 && Instant::now() < deadline {
        ingesting.set_position(pipeline.db.lead_count().unwrap_or(0) as u64);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ingesting.set_position(pipeline.db.lead_count().unwrap_or(0) as u64);
    ingesting.finish();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for worker in workers {
        let _ = worker.await;
    }
    server.abort();
    Ok(sent)
}

/// Backfill runs until nothing is left (a transient fault can stop a form; the next run
/// resumes it, as the scheduled runs would), ten at most.
async fn recover(pipeline: &Pipeline, data: &Dataset, quiet: bool) {
    let recovering = bar(quiet, data.leads.len(), "after backfill");
    let plan = BackfillPlan::scheduled(&pipeline.configured_pages());
    for _ in 0..10 {
        let summary = pipeline.backfill(&plan).await;
        recovering.set_position(pipeline.db.lead_count().unwrap_or(0) as u64);
        if pipeline.db.lead_count().unwrap_or(0) as usize >= data.leads.len()
            && summary.graph_errors.is_empty()
        {
            break;
        }
    }
    recovering.finish();
}

/// What the store holds against what the sandbox made, one stored row and one sandbox lead
/// at a time: memory stays one row, not the whole table.
fn compare(
    pipeline: &Pipeline,
    sandbox: &Sandbox,
    made: usize,
    sent: &leadpipe_sandbox::sender::SendReport,
    db: &Path,
) -> Result<DemoReport, CliError> {
    let (created, received) = pipeline.latencies();
    let mut report = DemoReport {
        received_to_stored_ms: percentiles(received),
        created_to_stored_ms: percentiles(created),
        leads: made,
        posts: sent.posts,
        duplicated_posts: sent.duplicated_posts,
        dropped: sent.dropped.len(),
        dead_letters: pipeline.db.dead_letters()?.len(),
        db: db.to_path_buf(),
        ..DemoReport::default()
    };
    let mut found = 0usize;
    pipeline.db.each_lead(&LeadFilter::default(), |row| {
        report.stored += 1;
        match row.source.as_str() {
            "webhook" => report.by_webhook += 1,
            "backfill" => report.by_backfill += 1,
            _ => {}
        }
        if let Some(json) = sandbox.lead_json(&row.lead_id) {
            found += 1;
            let raw: serde_json::Value = serde_json::from_str(&row.raw).unwrap_or_default();
            if raw != json {
                report.mismatched += 1;
            }
        }
        Ok::<_, CliError>(())
    })?;
    report.missing = made.saturating_sub(found);
    Ok(report)
}

/// The median and 99th percentile (nearest rank) of `values`, when there are any.
fn percentiles(mut values: Vec<u64>) -> Option<(u64, u64)> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let rank = |q: f64| {
        let i = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1;
        values.get(i).copied()
    };
    Some((rank(0.50)?, rank(0.99)?))
}

/// The final table, in lines of at most 80 columns.
fn print_report(report: &DemoReport, db: &Path, keep: bool) -> Result<(), CliError> {
    use crate::render::duration_ms;
    use std::fmt::Write;
    let mut t = String::from("\n");
    let mut row = |label: &str, value: String| {
        let _ = writeln!(t, "  {label:<31}{value}");
    };
    row("leads made by the sandbox", format!("{:>7}", report.leads));
    row("webhook posts sent", format!("{:>7}", report.posts));
    row(
        "posts duplicated on purpose",
        format!("{:>7}", report.duplicated_posts),
    );
    row("leads dropped on purpose", format!("{:>7}", report.dropped));
    row("ingested by webhook", format!("{:>7}", report.by_webhook));
    row(
        "recovered by backfill",
        format!("{:>7}", report.by_backfill),
    );
    row("stored (once each)", format!("{:>7}", report.stored));
    row("missing", format!("{:>7}", report.missing));
    row(
        "differing from the sandbox",
        format!("{:>7}", report.mismatched),
    );
    row("dead letters", format!("{:>7}", report.dead_letters));
    let show = |p: Option<(u64, u64)>, none: &str| {
        p.map(|(p50, p99)| format!("p50 {}, p99 {}", duration_ms(p50), duration_ms(p99)))
            .unwrap_or_else(|| none.into())
    };
    row(
        "speed to lead, receipt→stored",
        show(report.received_to_stored_ms, "no lead by webhook"),
    );
    row(
        "speed to lead, created→stored",
        show(report.created_to_stored_ms, "no lead by webhook"),
    );
    row("", "(the sandbox dates its leads up to days back)".into());
    row(
        "forwarded to a receiver",
        format!("{:>7} (once each by Idempotency-Key)", report.forwarded),
    );
    row(
        "",
        format!(
            "{} of {} calls failed on purpose, retried",
            report.forward_failed, report.forward_calls
        ),
    );
    row("received twice", format!("{:>7}", report.forwarded_twice));
    row(
        "stored→forwarded",
        show(report.stored_to_forwarded_ms, "nothing forwarded"),
    );
    if let Some(rate) = report.forward_rate {
        row(
            "forwarding rate",
            format!("{rate:>7} leads/s (bounded by ingest here)"),
        );
    }
    row(
        "stages sent to Meta",
        format!(
            "{:>7} (initial and later; the dataset has {})",
            report.stages_sent, report.stages_received
        ),
    );
    let refused: i64 = report.stages_refused.values().sum();
    row(
        "stages refused, never sent",
        format!(
            "{refused:>7}{}",
            if refused == 0 {
                String::new()
            } else {
                format!(
                    " ({})",
                    report
                        .stages_refused
                        .iter()
                        .map(|(class, n)| format!("{class} {n}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        ),
    );
    if let Some(rate) = report.stage_rate {
        row(
            "stages rate",
            format!("{rate:>7} stages/s (100 an event request, loopback)"),
        );
    }
    for (name, kind, delivered, dead) in &report.destinations {
        row(
            &format!("to {} ({kind})", crate::render::line(name)),
            format!("{delivered:>7} delivered, {dead} refused (a stand-in)"),
        );
    }
    row("time", format!("{:>6}s", report.seconds));
    if keep {
        row("data", db.display().to_string());
        let _ = writeln!(t, "  try: {} --format csv", export_hint(db));
        let _ = writeln!(
            t,
            "  forget by email: LOOKUP_KEY={DEMO_LOOKUP_KEY} leadpipe forget --db ... --email ..."
        );
    } else {
        row("data", "deleted (run with --keep to look at it)".into());
    }
    crate::render::print(&t)
}

/// A command that runs as printed: the binary's own path when it can be told, else the
/// cargo command that builds and runs it.
fn export_hint(db: &std::path::Path) -> String {
    match std::env::current_exe() {
        Ok(exe) if exe.file_name().is_some_and(|n| n == "leadpipe") => {
            format!("{} export --db {}", exe.display(), db.display())
        }
        _ => format!(
            "cargo run --release --bin leadpipe -- export --db {}",
            db.display()
        ),
    }
}
