//! Telemetry at the edges: one JSON log line per event, set up once per process, and
//! CloudWatch embedded-metric-format lines ([`emf`]) from the counts the use cases report.
//!
//! Spans carry message and lead ids and counts only. Lead contents and secrets are never
//! given to `tracing` in the first place; nothing here tries to scrub them afterwards.

#![warn(missing_docs)]
pub mod emf;

use std::str::FromStr;
use tracing_subscriber::filter::LevelFilter;

/// Installs a JSON subscriber on stdout (CloudWatch reads stdout) at the level `RUST_LOG`
/// names (`error`, `warn`, `info`, `debug`, `trace`; default `info`). A plain level rather
/// than per-target directives keeps the regex engine out of every bootstrap. Safe to call
/// twice: the second call changes nothing.
pub fn init() {
    init_with_default(LevelFilter::INFO);
}

/// Like [`init`] with another level when `RUST_LOG` is unset.
pub fn init_with_default(default: LevelFilter) {
    install(default, std::io::stdout);
}

/// Like [`init_with_default`], on stderr: for the `leadpipe` binary, whose stdout carries
/// only what a command reports (tables, verdicts, exported leads).
pub fn init_stderr(default: LevelFilter) {
    install(default, std::io::stderr);
}

/// For a person at a terminal: short text lines on stderr (level and message with its
/// fields, no timestamp, no JSON), at the level `RUST_LOG` names or `default`.
pub fn init_stderr_text(default: LevelFilter) {
    let level = level_or(default);
    let _already_set = tracing_subscriber::fmt()
        .compact()
        .without_time()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false)
        .with_ansi(false)
        .try_init();
}

fn level_or(default: LevelFilter) -> LevelFilter {
    std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| LevelFilter::from_str(v.trim()).ok())
        .unwrap_or(default)
}

fn install<W>(default: LevelFilter, writer: W)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let level = level_or(default);
    let _already_set = tracing_subscriber::fmt()
        .json()
        .with_writer(writer)
        .with_max_level(level)
        .with_current_span(true)
        .with_span_list(false)
        .with_target(false)
        .with_ansi(false)
        .try_init();
}

pub use tracing_subscriber::filter::LevelFilter as Level;

/// The span an invocation's lines carry: Lambda's request id (the id of its own START, END and
/// REPORT lines), named `invoke`. Entered inside lambda_runtime's span, it replaces that span
/// in each line, and with it the X-Ray trace id, about 100 bytes a line that nobody reads:
/// the stack does not turn X-Ray on (BENCHMARKS.md, "Log bytes per lead").
pub fn invocation_span(request_id: &str) -> tracing::Span {
    tracing::info_span!("invoke", requestId = request_id)
}
