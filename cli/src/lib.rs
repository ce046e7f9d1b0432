//! The `leadpipe` binary: the same use cases as the Lambda functions, on one SQLite file.

pub mod demo;
pub mod export;
pub mod pipeline;

use clap::{Parser, Subcommand};
use leadpipe_core::backfill::{BackfillPlan, BackfillRequest, TimeArg};
use leadpipe_core::secrets::AppSecrets;
use leadpipe_core::settings::{Env, SecretSource};
use std::path::PathBuf;

/// leadpipe on one machine.
#[derive(Debug, Parser)]
#[command(
    name = "leadpipe",
    version,
    about = "Facebook Lead Ads leads into your own store, once, fast and private."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run webhook, ingest workers and a backfill timer on one SQLite file.
    Serve(pipeline::ServeArgs),
    /// A sandbox Graph, signed webhooks with drops and duplicates, and every lead brought home.
    Demo(demo::DemoArgs),
    /// One backfill run now.
    Backfill(BackfillArgs),
    /// Write the stored leads as CSV or JSON lines, one column per form field.
    Export(export::ExportArgs),
    /// Check a real token: expiry, scopes, lead access per page, webhook subscription.
    Doctor(DoctorArgs),
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Settings(String),
    #[error("{0}")]
    Failed(String),
}

/// Arguments of `leadpipe backfill`.
#[derive(Debug, clap::Args)]
pub struct BackfillArgs {
    /// The SQLite file.
    #[arg(long, env = "LEADPIPE_DB", default_value = "leadpipe.db")]
    pub db: PathBuf,
    /// A JSON secret file in the Secrets Manager shape (else APP_SECRET, ACCESS_TOKEN, ...).
    #[arg(long, env = "LEADPIPE_SECRET_FILE")]
    pub secret_file: Option<PathBuf>,
    #[arg(long = "page")]
    pub pages: Vec<String>,
    #[arg(long = "form")]
    pub forms: Vec<String>,
    #[arg(long = "ad")]
    pub ads: Vec<String>,
    /// Unix seconds or RFC 3339.
    #[arg(long)]
    pub from: Option<String>,
    #[arg(long)]
    pub to: Option<String>,
    #[arg(long)]
    pub dry_run: bool,
}

/// Arguments of `leadpipe doctor`.
#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    #[arg(long, env = "LEADPIPE_SECRET_FILE")]
    pub secret_file: Option<PathBuf>,
    /// Pages to check (default: every page in page_tokens).
    #[arg(long = "page")]
    pub pages: Vec<String>,
}

/// The app secrets from `--secret-file`, else the environment (`SECRET_ARN` is the
/// Lambda's way and is not read here).
pub fn load_secrets(secret_file: Option<&PathBuf>) -> Result<AppSecrets, CliError> {
    if let Some(path) = secret_file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            CliError::Settings(format!(
                "the secret file {} cannot be read: {e}",
                path.display()
            ))
        })?;
        return AppSecrets::from_json(&text)
            .map_err(|e| CliError::Settings(format!("the secret file: {e}")));
    }
    match Env::process().secret_source() {
        Ok(SecretSource::Inline(secrets)) => Ok(secrets),
        Ok(SecretSource::SecretsManager { .. }) => Err(CliError::Settings(
            "SECRET_ARN is for the Lambda functions; locally give --secret-file or APP_SECRET/ACCESS_TOKEN".into(),
        )),
        Err(e) => Err(CliError::Settings(e.to_string())),
    }
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    // The demo injects faults on purpose: their warnings would bury the progress bars.
    leadpipe_core::telemetry::init_with_default(match cli.command {
        Command::Demo(_) => tracing::level_filters::LevelFilter::ERROR,
        Command::Export(_) | Command::Doctor(_) => tracing::level_filters::LevelFilter::WARN,
        _ => tracing::level_filters::LevelFilter::INFO,
    });
    match cli.command {
        Command::Serve(args) => pipeline::serve(args).await,
        Command::Demo(args) => demo::run(args).await.map(|_| ()),
        Command::Backfill(args) => backfill(args).await,
        Command::Export(args) => export::run(args),
        Command::Doctor(args) => doctor(args).await,
    }
}

async fn backfill(args: BackfillArgs) -> Result<(), CliError> {
    let secrets = load_secrets(args.secret_file.as_ref())?;
    let pipeline = pipeline::Pipeline::open(&args.db, secrets, pipeline::Tuning::default())?;
    let request = BackfillRequest {
        pages: args.pages,
        forms: args.forms,
        ads: args
            .ads
            .into_iter()
            .map(leadpipe_core::backfill::AdTarget::Id)
            .collect(),
        from: args.from.map(TimeArg::Text),
        to: args.to.map(TimeArg::Text),
        dry_run: args.dry_run,
    };
    let plan = BackfillPlan::from_request(request, &pipeline.configured_pages())
        .map_err(|e| CliError::Settings(e.to_string()))?;
    let summary = pipeline.backfill(&plan).await;
    println!(
        "{}",
        serde_json::to_string_pretty(&summary).unwrap_or_default()
    );
    Ok(())
}

async fn doctor(args: DoctorArgs) -> Result<(), CliError> {
    let secrets = load_secrets(args.secret_file.as_ref())?;
    let env = Env::process();
    let config = leadpipe_core::graph_source::graph_config(&env, &secrets)
        .map_err(|e| CliError::Settings(e.to_string()))?;
    let client =
        leadpipe_graph::GraphClient::new(config).map_err(|e| CliError::Settings(e.to_string()))?;
    let pages: Vec<String> = if args.pages.is_empty() {
        secrets.page_tokens.keys().cloned().collect()
    } else {
        args.pages
    };
    if pages.is_empty() {
        return Err(CliError::Settings(
            "no page to check: add page_tokens to the secret or pass --page".into(),
        ));
    }
    let mut problems = 0;
    for page in &pages {
        println!("page {page}");
        let Some(token) = secrets.token_for_page(page) else {
            println!("  PROBLEM no token: add page_tokens.{page} (or access_token) to the secret");
            problems += 1;
            continue;
        };
        match client.debug_token(token, token).await {
            Ok(info) if info.is_valid => {
                let expiry = match info.expires_at {
                    Some(0) | None => "never expires".to_owned(),
                    Some(at) => format!("expires at unix {at}"),
                };
                println!(
                    "  ok      token valid ({}), {expiry}",
                    info.token_type.as_deref().unwrap_or("unknown type")
                );
                let missing = info.missing_scopes();
                if !missing.is_empty() {
                    problems += 1;
                    println!(
                        "  PROBLEM token lacks {}: grant them and issue a new token",
                        missing.join(", ")
                    );
                }
                match client
                    .has_lead_access(
                        token,
                        page,
                        info.user_id.as_deref().unwrap_or_default(),
                        info.app_id.as_deref(),
                    )
                    .await
                {
                    Ok(access) if access.can_access_lead => println!("  ok      lead access"),
                    Ok(access) => {
                        problems += 1;
                        println!("  PROBLEM {}", access.diagnosis());
                    }
                    Err(e) => {
                        problems += 1;
                        println!("  PROBLEM lead access could not be checked: {e}");
                    }
                }
            }
            Ok(_) => {
                problems += 1;
                println!(
                    "  PROBLEM token is not valid: issue a new one (a system user token does not expire)"
                );
            }
            Err(e) => {
                problems += 1;
                println!("  PROBLEM token check failed: {e}");
            }
        }
        match client.page_subscriptions(token, page).await {
            Ok(apps)
                if apps
                    .iter()
                    .any(|a| a.subscribed_fields.iter().any(|f| f == "leadgen")) =>
            {
                println!("  ok      an app gets this page's leadgen webhooks")
            }
            Ok(_) => {
                problems += 1;
                println!(
                    "  PROBLEM no app is subscribed to leadgen: POST /{page}/subscribed_apps?subscribed_fields=leadgen"
                );
            }
            Err(e) => {
                problems += 1;
                println!("  PROBLEM webhook subscription could not be read: {e}");
            }
        }
    }
    if problems == 0 {
        println!(
            "verdict: ready: leads from {} page(s) can be received and read",
            pages.len()
        );
        Ok(())
    } else {
        Err(CliError::Failed(format!(
            "verdict: {problems} problem(s) above; fix them and run doctor again"
        )))
    }
}
