//! One JSON log line per event, set up once per process.
//!
//! Spans carry message and lead ids and counts only. Lead contents and secrets are never
//! given to `tracing` in the first place; nothing here tries to scrub them afterwards.

use tracing_subscriber::EnvFilter;

/// Installs a JSON subscriber on stdout (CloudWatch reads stdout), filtered by `RUST_LOG`
/// (default `info`). Safe to call twice: the second call changes nothing.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _already_set = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(true)
        .with_span_list(false)
        .with_target(false)
        .with_ansi(false)
        .try_init();
}
