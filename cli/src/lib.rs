//! The `leadpipe` binary: the same use cases as the Lambda functions, on one SQLite file.

#![warn(missing_docs)]
// GraphError is large but only built after a network round trip (see leadpipe-graph).
#![allow(clippy::result_large_err)]

pub mod checks;
pub mod connect;
pub mod demo;
pub mod destinations;
pub mod doctor;
pub mod export;
pub mod forward;
pub mod operate;
pub mod pipeline;
pub mod render;
pub mod report;
pub mod stages;
pub mod status;

use clap::{Parser, Subcommand};
use leadpipe_core::backfill::{BackfillPlan, BackfillRequest, TimeArg};
use leadpipe_core::secrets::AppSecrets;
use leadpipe_core::settings::Env;
use std::path::{Path, PathBuf};

/// leadpipe on one machine.
#[derive(Debug, Parser)]
#[command(
    name = "leadpipe",
    version,
    about = "Facebook Lead Ads leads into your own store, once, fast and private."
)]
pub struct Cli {
    /// More log lines on stderr: -v for info, -vv for debug (RUST_LOG wins when set).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Log lines on stderr as JSON (the default when stderr is not a terminal: a service's
    /// journal, a file); on a terminal they are short text lines.
    #[arg(long, global = true)]
    pub log_json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
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
    /// What the local pipeline holds: queue, dead letters, checkpoints, leads per form.
    Status(status::StatusArgs),
    /// From a person's token to subscribed pages, a written secret and a test lead stored.
    Connect(connect::ConnectArgs),
    /// Erase a person's leads everywhere leadpipe keeps them (by lead id, email or phone).
    Forget(operate::ForgetArgs),
    /// Move dead letters back to the queue (all, or one reason class).
    Redrive(operate::RedriveArgs),
    /// Add lookup keys to leads stored without them, so forget --email/--phone finds them.
    LookupKeys(operate::LookupKeysArgs),
    /// Queue one lead's stage for Meta's Conversions API (`serve` sends it).
    Stage(stages::StageArgs),
    /// Stages in bulk: `stages import FILE.csv`.
    Stages(stages::StagesArgs),
    /// The destinations file: `destinations check FILE [--live]`.
    Destinations(destinations::DestinationsArgs),
    /// Send stored leads to a destination again (`--lead ID` or `--since TIME`).
    Forward(destinations::ForwardArgs),
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Input the person can fix: a missing secret, a bad flag, a file.
    #[error("{0}")]
    Settings(String),
    /// The command ran and found something wrong (the verdict says what).
    #[error("{0}")]
    Failed(String),
    /// A store or service could not be read or reached (AWS, the network).
    #[error("{0}")]
    Unreachable(String),
    /// Writing the command's output failed; a closed pipe (`| head`) is not an error.
    #[error("writing the output: {0}")]
    Output(#[source] std::io::Error),
    /// The SQLite file could not be opened.
    #[error(transparent)]
    Open(#[from] leadpipe_local::OpenError),
    /// Reading or writing the SQLite file failed.
    #[error("the local database: {0}")]
    Local(#[from] leadpipe_local::LocalError),
    /// A setting (flag, environment variable) is missing or unusable.
    #[error(transparent)]
    Setting(#[from] leadpipe_core::settings::SettingsError),
    /// The Graph client could not be built, or a Graph call failed.
    #[error(transparent)]
    Graph(#[from] leadpipe_graph::GraphError),
    /// The secret could not be read or written where it lives.
    #[error(transparent)]
    Secret(#[from] leadpipe_core::secrets::SecretsError),
    /// The leads table could not be read or written.
    #[error("the leads table: {0}")]
    Store(#[from] leadpipe_core::ports::StoreError),
    /// A queue could not be read or written.
    #[error("the queue: {0}")]
    Queue(#[from] leadpipe_core::ports::QueueError),
    /// An on-demand backfill request cannot be run.
    #[error(transparent)]
    Request(#[from] leadpipe_core::backfill::RequestError),
}

impl CliError {
    /// True when the reader of stdout went away (`leadpipe export | head`): the command
    /// then ends quietly with exit 0, as `ls | head` does.
    pub fn is_closed_pipe(&self) -> bool {
        matches!(self, CliError::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }

    /// The process's exit code: 1 when the command ran and a person must act (its
    /// verdict), 2 for an error (bad input, a store or service that could not be reached).
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Failed(_) => 1,
            _ => 2,
        }
    }
}

/// Arguments of `leadpipe backfill`.
#[derive(Debug, clap::Args)]
pub struct BackfillArgs {
    /// The SQLite file.
    #[arg(
        long,
        env = "LEADPIPE_DB",
        hide_env_values = true,
        default_value = "leadpipe.db"
    )]
    pub db: PathBuf,
    /// A JSON secret file in the Secrets Manager shape (else APP_SECRET, ACCESS_TOKEN, ...).
    #[arg(long, env = "LEADPIPE_SECRET_FILE", hide_env_values = true)]
    pub secret_file: Option<PathBuf>,
    /// Only this page (repeat for several; default: every page in page_tokens).
    #[arg(long = "page")]
    pub pages: Vec<String>,
    /// Only this form (repeat for several).
    #[arg(long = "form")]
    pub forms: Vec<String>,
    /// Read this ad's leads (repeat for several; give exactly one --page with it).
    #[arg(long = "ad")]
    pub ads: Vec<String>,
    /// Start of a one-off window, unix seconds or RFC 3339 (a window moves no checkpoint).
    #[arg(long)]
    pub from: Option<String>,
    /// End of the window (exclusive), unix seconds or RFC 3339; default now.
    #[arg(long)]
    pub to: Option<String>,
    /// Read from Graph and count, but store nothing and move no checkpoint.
    #[arg(long)]
    pub dry_run: bool,
}

/// Arguments of `leadpipe doctor`.
#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// A JSON secret file in the Secrets Manager shape (else APP_SECRET, ACCESS_TOKEN, ...).
    #[arg(long, env = "LEADPIPE_SECRET_FILE", hide_env_values = true)]
    pub secret_file: Option<PathBuf>,
    /// Pages to check (default: every page in page_tokens).
    #[arg(long = "page")]
    pub pages: Vec<String>,
}

/// The one message for "no secret here", naming every way to give one.
pub const NO_SECRET: &str = "no secret: give --secret-file PATH (a JSON file in the Secrets Manager shape), or set APP_SECRET with ACCESS_TOKEN and VERIFY_TOKEN; on AWS the functions read SECRET_ARN, which this command does not (download the secret to a file, or use the variables)";

/// The most of a secret or key file that is read: a secret with hundreds of page tokens is
/// a few tens of KB.
pub const MAX_SECRET_FILE_BYTES: u64 = 1 << 20;

/// Reads a small file of settings (a secret, a key): only a regular file (after following
/// a link), at most `max` bytes: `/dev/zero` or a huge file is refused, never read whole.
pub fn read_small_file(path: &std::path::Path, max: u64) -> std::io::Result<String> {
    use std::io::Read;
    // Asked before opening: opening a FIFO would wait for a writer.
    if !std::fs::metadata(path)?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "it is not a regular file",
        ));
    }
    let file = std::fs::File::open(path)?;
    let mut text = String::new();
    file.take(max + 1).read_to_string(&mut text)?;
    if text.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("it is larger than {max} bytes"),
        ));
    }
    Ok(text)
}

/// Writes `text` to `path` readable by its owner only (secrets, keys), all or nothing: a temporary file
/// beside it (created 0600), synced, then renamed over it.
pub fn write_private(path: &Path, text: impl AsRef<[u8]>) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "secret".into());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let result = (|| {
        let mut file = options.open(&tmp)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
        file.write_all(text.as_ref())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Refuses a file of secrets that its group or others can read (or write), as ssh refuses
/// such a key: the fix is one `chmod`, and the message gives it.
pub fn refuse_shared(path: &std::path::Path, what: &str) -> Result<(), CliError> {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(path) else {
        // Not there or not readable: the read that follows names the problem.
        return Ok(());
    };
    let mode = meta.permissions().mode() & 0o777;
    if meta.is_file() && mode & 0o077 != 0 {
        return Err(CliError::Settings(format!(
            "the {what} {} can be read by others (mode {mode:o}): run `chmod 600 {}` and start again",
            path.display(),
            path.display()
        )));
    }
    Ok(())
}

/// The app secrets from `--secret-file`, else `APP_SECRET`/`ACCESS_TOKEN`/`VERIFY_TOKEN`.
/// `SECRET_ARN` is the Lambda functions' way and is not read here: the message says so in
/// the same words whether or not it is set, so the two cases never contradict each other.
pub fn load_secrets(secret_file: Option<&PathBuf>) -> Result<AppSecrets, CliError> {
    if let Some(path) = secret_file {
        refuse_shared(path, "secret file")?;
        let text = read_small_file(path, MAX_SECRET_FILE_BYTES).map_err(|e| {
            CliError::Settings(format!(
                "the secret file {} cannot be read: {e}",
                path.display()
            ))
        })?;
        return AppSecrets::from_json(&text)
            .map_err(|e| CliError::Settings(format!("the secret file {}: {e}", path.display())));
    }
    // Only APP_SECRET can be missing here, and SECRET_ARN is not read: one message for both.
    Env::process()
        .inline_secrets()
        .map_err(|_| CliError::Settings(NO_SECRET.into()))
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    // Reports and tables go to stdout; log lines go to stderr, at warn and above unless -v
    // (serve is a server: its log is its report, so it logs at info). The demo injects
    // faults on purpose: their warnings would bury the progress bars.
    // On a terminal, a person reads stderr: warnings and errors only, as short text (serve
    // prints its own start and stop lines). Elsewhere (a service's journal) JSON lines,
    // serve's at info.
    use std::io::IsTerminal;
    use tracing::level_filters::LevelFilter;
    let person = std::io::stderr().is_terminal() && !cli.log_json;
    let default = match (&cli.command, cli.verbose) {
        (_, 2..) => LevelFilter::DEBUG,
        (_, 1) => LevelFilter::INFO,
        (Command::Serve(_), 0) if !person => LevelFilter::INFO,
        (Command::Demo(_), 0) => LevelFilter::ERROR,
        (_, 0) => LevelFilter::WARN,
    };
    if person {
        leadpipe_telemetry::init_stderr_text(default);
    } else {
        leadpipe_telemetry::init_stderr(default);
    }
    match cli.command {
        Command::Serve(args) => pipeline::serve(args).await,
        Command::Demo(args) => demo::run(args).await.map(|_| ()),
        Command::Backfill(args) => backfill(args).await,
        Command::Export(args) => export::run(args).await,
        Command::Doctor(args) => doctor::run(args).await,
        Command::Status(args) => status::run(args).await,
        Command::Connect(args) => connect::run(args).await,
        Command::Forget(args) => operate::forget(args).await,
        Command::Redrive(args) => operate::redrive(args).await,
        Command::LookupKeys(args) => operate::lookup_keys(args).await,
        Command::Stage(args) => stages::stage(args).await,
        Command::Stages(args) => stages::run(args).await,
        Command::Destinations(args) => destinations::run(args).await,
        Command::Forward(args) => destinations::forward(args).await,
    }
}

async fn backfill(args: BackfillArgs) -> Result<(), CliError> {
    let secrets = load_secrets(args.secret_file.as_ref())?;
    let pipeline = pipeline::Pipeline::open(&args.db, secrets, pipeline::Tuning::default())?
        .with_stages(stages::settings()?);
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
    let plan = BackfillPlan::from_request(
        request,
        &pipeline.configured_pages(),
        time::OffsetDateTime::now_utc(),
    )?;
    let summary = pipeline.backfill(&plan).await;
    render::print(&format!(
        "{}\n",
        serde_json::to_string_pretty(&summary).unwrap_or_default()
    ))?;
    // A run that read no page is a person's problem, not a success.
    use leadpipe_core::backfill::PageStatus;
    let skipped = summary
        .pages
        .iter()
        .filter(|p| p.status == PageStatus::Skipped)
        .count();
    if !summary.pages.is_empty() && skipped == summary.pages.len() {
        return Err(CliError::Failed(format!(
            "every page ({skipped}) was skipped: see each page's reason above; `leadpipe doctor` says what to fix"
        )));
    }
    // A page whose token is dead or dying: its leads wait until a person gives a new one.
    let sick: Vec<&str> = summary
        .page_tokens
        .iter()
        .filter(|t| t.state.needs_a_person())
        .map(|t| t.page_id.as_str())
        .collect();
    if !sick.is_empty() {
        return Err(CliError::Failed(format!(
            "the token of page(s) {} needs a person (page_tokens above): `leadpipe status` says what fixes it",
            sick.join(", ")
        )));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_settings_file_is_read_only_when_it_is_a_small_regular_file() {
        let dir = std::env::temp_dir().join(format!("leadpipe-small-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        // A FIFO with no writer would block an open: it is refused before it is opened.
        if std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .is_ok_and(|s| s.success())
        {
            let err = read_small_file(&fifo, 10).unwrap_err();
            assert!(err.to_string().contains("not a regular file"), "{err}");
        }
        let big = dir.join("big");
        std::fs::write(&big, "x".repeat(11)).unwrap();
        assert!(read_small_file(&big, 10).is_err());
        assert_eq!(read_small_file(&big, 11).unwrap().len(), 11);
        assert!(read_small_file(Path::new("/dev/zero"), 10).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
