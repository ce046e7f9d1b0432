//! Log lines of the `leadpipe` binary: JSON, on stderr, so that stdout carries only what a
//! command reports (tables, verdicts, exported leads) and pipes cleanly.

use std::str::FromStr;
use tracing_subscriber::filter::LevelFilter;

/// Installs the subscriber once, at `RUST_LOG`'s level when set, else at `default`.
pub fn init_stderr(default: LevelFilter) {
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| LevelFilter::from_str(v.trim()).ok())
        .unwrap_or(default);
    let _already_set = tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_current_span(true)
        .with_span_list(false)
        .with_target(false)
        .with_ansi(false)
        .try_init();
}
