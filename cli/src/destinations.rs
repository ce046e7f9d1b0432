//! The destinations on one machine (docs/destinations.md): `destinations check FILE
//! [--live]`, `forward --destination NAME (--lead ID | --since TIME)`, and the senders
//! `serve --destinations FILE` runs. The rules are core's (`leadpipe_core::destinations`),
//! the services `leadpipe-crm`'s, the states the SQLite file's; this file reads the flags,
//! builds them, and says what happened by ids and counts only.

use crate::CliError;
use leadpipe_core::destinations::{
    Destination, DestinationConfig, DestinationName, ForwardLimits, forward_round, parse_file,
};
use leadpipe_core::secrets::AppSecrets;
use leadpipe_crm::AnyDestination;
use leadpipe_local::LocalDb;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The most a destinations file may be.
const MAX_FILE_BYTES: u64 = 256 * 1024;

/// Reads and checks the destinations file.
pub fn load(path: &Path) -> Result<Vec<DestinationConfig>, CliError> {
    let text = crate::read_small_file(path, MAX_FILE_BYTES).map_err(|e| {
        CliError::Settings(format!(
            "the destinations file {} cannot be read: {e}",
            path.display()
        ))
    })?;
    parse_file(&text).map_err(|e| CliError::Settings(format!("{}: {e}", path.display())))
}

/// Each destination built with its credentials from the secret.
pub fn build(
    configs: &[DestinationConfig],
    secrets: &AppSecrets,
) -> Result<Vec<(DestinationConfig, AnyDestination)>, CliError> {
    configs
        .iter()
        .map(|config| {
            AnyDestination::build(config, secrets.destinations.get(config.name.as_str()))
                .map(|d| (config.clone(), d))
                .map_err(|e| CliError::Settings(e.to_string()))
        })
        .collect()
}

fn now_ms() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000)
        .unwrap_or(i64::MAX)
}

/// `serve --destinations`: a round per destination every half second, each lead
/// delivered once, until `stop`.
pub struct Senders {
    db: LocalDb,
    destinations: Vec<(DestinationConfig, AnyDestination)>,
    limits: ForwardLimits,
}

impl Senders {
    /// The senders over `db`; the file queues each new lead for them from now on. `lease`
    /// is how long a lead being delivered stays claimed (a `kill -9` leaves it due after).
    pub fn new(
        db: LocalDb,
        destinations: Vec<(DestinationConfig, AnyDestination)>,
        lease: Duration,
    ) -> Result<Self, CliError> {
        let configs: Vec<DestinationConfig> = destinations.iter().map(|(c, _)| c.clone()).collect();
        db.enable_destinations(&configs)?;
        Ok(Self {
            db,
            destinations,
            limits: ForwardLimits {
                lease,
                ..ForwardLimits::default()
            },
        })
    }

    /// The destinations' names, for the start line.
    pub fn names(&self) -> Vec<String> {
        self.destinations
            .iter()
            .map(|(c, _)| format!("{} ({})", c.name, c.kind.as_str()))
            .collect()
    }

    /// One round at every destination; whether any did something.
    pub async fn round(&self) -> bool {
        let mut busy = false;
        for (config, destination) in &self.destinations {
            let span = tracing::info_span!("destination", name = %config.name);
            let _entered = span.enter();
            match forward_round(&self.db, config, destination, &self.limits, now_ms()).await {
                Ok(report) => {
                    if report.delivered + report.retried + report.dead > 0 {
                        busy = true;
                        tracing::info!(
                            delivered = report.delivered,
                            retried = report.retried,
                            dead = report.dead,
                            paused = report.paused,
                            "destination round"
                        );
                    }
                }
                Err(err) => tracing::error!(error = %err, "destination round failed"),
            }
        }
        busy
    }

    /// Rounds until `stop`; the round in flight finishes.
    pub async fn run(self, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::Relaxed) {
            if !self.round().await {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

// ---- destinations check -----------------------------------------------------------------

/// Arguments of `leadpipe destinations`.
#[derive(Debug, clap::Args)]
pub struct DestinationsArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: DestinationsCommand,
}

/// `destinations` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum DestinationsCommand {
    /// Read the file and say what each destination maps; with --live, one harmless call each.
    Check(CheckArgs),
}

/// Arguments of `leadpipe destinations check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The destinations file (TOML).
    pub file: PathBuf,
    /// Make one authenticated call per destination that changes nothing.
    #[arg(long)]
    pub live: bool,
    /// A JSON secret file with `destinations.<name>` (else the secret in the environment).
    #[arg(long, env = "LEADPIPE_SECRET_FILE", hide_env_values = true)]
    pub secret_file: Option<PathBuf>,
}

/// `leadpipe destinations ...`.
pub async fn run(args: DestinationsArgs) -> Result<(), CliError> {
    match args.command {
        DestinationsCommand::Check(args) => check(args).await,
    }
}

async fn check(args: CheckArgs) -> Result<(), CliError> {
    let configs = load(&args.file)?;
    let secrets = crate::load_secrets(args.secret_file.as_ref()).ok();
    let mut problems = 0;
    for config in &configs {
        println!(
            "destination {} ({}){}",
            config.name,
            config.kind.as_str(),
            if config.forms.is_empty() {
                String::new()
            } else {
                format!(
                    ", forms {}",
                    config.forms.iter().cloned().collect::<Vec<_>>().join(", ")
                )
            }
        );
        for (target, source) in &config.map.0 {
            println!(
                "  {target} ← {}",
                crate::render::line(&format!("{source:?}"))
            );
        }
        let secret = secrets
            .as_ref()
            .and_then(|s| s.destinations.get(config.name.as_str()));
        let missing: Vec<&str> = config
            .kind
            .credentials()
            .iter()
            .copied()
            .filter(|k| secret.and_then(|s| s.get(k)).is_none())
            .collect();
        if !missing.is_empty() {
            problems += 1;
            println!(
                "✘ the secret has no {}",
                missing
                    .iter()
                    .map(|k| format!("destinations.{}.{k}", config.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            continue;
        }
        if !args.live {
            println!("✔ the file and the secret have what it needs (add --live to call it)");
            continue;
        }
        match AnyDestination::build(config, secret) {
            Ok(destination) => match destination.check().await {
                Ok(said) => println!("✔ {}", crate::render::line(&said)),
                Err(said) => {
                    problems += 1;
                    println!("✘ {}", crate::render::outside_text(&said, 300));
                }
            },
            Err(e) => {
                problems += 1;
                println!("✘ {}", crate::render::line(&e.to_string()));
            }
        }
    }
    if problems > 0 {
        return Err(CliError::Failed(format!(
            "{problems} destination(s) need a fix (see above)"
        )));
    }
    println!("{} destination(s) ready", configs.len());
    Ok(())
}

// ---- forward ----------------------------------------------------------------------------

/// Arguments of `leadpipe forward`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["lead", "since"])))]
pub struct ForwardArgs {
    /// The SQLite file.
    #[arg(long, env = "LEADPIPE_DB", hide_env_values = true)]
    pub db: PathBuf,
    /// The destinations file.
    #[arg(long)]
    pub destinations: PathBuf,
    /// The destination to send to (its name in the file).
    #[arg(long)]
    pub destination: String,
    /// One lead, by id.
    #[arg(long)]
    pub lead: Option<String>,
    /// Every lead created since (a date, a span like 24h, RFC 3339).
    #[arg(long)]
    pub since: Option<String>,
    /// With --since: only this form's leads.
    #[arg(long, requires = "since")]
    pub form: Option<String>,
    /// Say how many would be sent; send nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// A JSON secret file with `destinations.<name>` (else the secret in the environment).
    #[arg(long, env = "LEADPIPE_SECRET_FILE", hide_env_values = true)]
    pub secret_file: Option<PathBuf>,
}

/// Sends stored leads to a destination again (after a fix, or leads stored before it
/// existed): they are queued afresh and delivered now; a lead the destination already has
/// stays one record where the service upserts.
pub async fn forward(args: ForwardArgs) -> Result<(), CliError> {
    let configs = load(&args.destinations)?;
    let name =
        DestinationName::parse(&args.destination).map_err(|e| CliError::Settings(e.to_string()))?;
    let config = configs
        .iter()
        .find(|c| c.name == name)
        .cloned()
        .ok_or_else(|| {
            CliError::Settings(format!(
                "{} names no destination {name}",
                args.destinations.display()
            ))
        })?;
    if !args.db.exists() {
        return Err(CliError::Settings(format!(
            "{} does not exist",
            args.db.display()
        )));
    }
    let since = args
        .since
        .as_deref()
        .map(|v| crate::export::contract_time_arg("--since", v))
        .transpose()?;
    let db = if args.dry_run {
        LocalDb::open_existing_read_only(&args.db)?
    } else {
        LocalDb::open_existing(&args.db)?
    };
    let filter = leadpipe_local::LeadFilter {
        form_id: args.form.clone(),
        since,
        until: None,
    };
    let mut events = Vec::new();
    db.each_lead(&filter, |row| {
        if args.lead.as_ref().is_none_or(|id| &row.lead_id == id) {
            let event = leadpipe_core::lead_received::LeadReceived::from_row(&row);
            if config.wants(&event) {
                events.push(event);
            }
        }
        Ok::<_, CliError>(())
    })?;
    if let Some(id) = &args.lead
        && events.is_empty()
    {
        return Err(CliError::Failed(format!(
            "lead {} is not stored, or is not one of {name}'s forms",
            crate::render::line(id)
        )));
    }
    if args.dry_run {
        println!("would send {} lead(s) to {name}", events.len());
        return Ok(());
    }
    let secrets = crate::load_secrets(args.secret_file.as_ref())?;
    let destination = AnyDestination::build(&config, secrets.destinations.get(name.as_str()))
        .map_err(|e| CliError::Settings(e.to_string()))?;
    let queued = db.requeue(&name, &events)?;
    let limits = ForwardLimits::default();
    let (mut delivered, mut dead, mut retried) = (0, 0, 0);
    // Rounds until nothing is due now: what waits (a retry, a pause) serve sends later.
    loop {
        let report = forward_round(&db, &config, &destination, &limits, now_ms())
            .await
            .map_err(|e| CliError::Unreachable(e.to_string()))?;
        delivered += report.delivered;
        dead += report.dead;
        retried += report.retried;
        // Nothing left now, a pause, or only retries (due later): serve goes on from here.
        if report.paused || report.delivered + report.dead == 0 {
            break;
        }
    }
    println!(
        "queued {queued} lead(s) for {name}: {delivered} delivered, {dead} refused, {retried} to try again (serve sends them)"
    );
    if dead > 0 {
        return Err(CliError::Failed(format!(
            "{dead} lead(s) were refused by {name}: `leadpipe status` shows the reason; fix it, then `leadpipe redrive --reason-class refused`"
        )));
    }
    Ok(())
}
