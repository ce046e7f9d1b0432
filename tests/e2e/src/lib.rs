//! What the end-to-end tests in `tests/` share: the compiled binaries scripts/test built,
//! and a function started under its own Lambda Runtime API. Test support: a failure here
//! is a failed test, so it panics with what went wrong.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod aws;
pub mod aws_path;

use leadpipe_lambda_harness::{FunctionProcess, RuntimeApi};
use std::path::PathBuf;
use std::time::Duration;

/// How long a function may take to start polling its Runtime API.
pub const START: Duration = Duration::from_secs(60);

/// A binary of the workspace, built by scripts/test (`cargo build --workspace --bins`)
/// before the tests run.
pub fn binary(name: &str) -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let path = target.join("debug").join(name);
    assert!(
        path.exists(),
        "{} is not built: run scripts/test",
        path.display()
    );
    path
}

/// A function binary running under its own Runtime API.
pub struct Function {
    /// Where invocations go.
    pub api: RuntimeApi,
    /// The process (killed when dropped); its logs.
    pub process: FunctionProcess,
}

/// Starts the binary `name` as Lambda would, with `env`, and waits for its first poll.
pub async fn start(name: &str, env: &[(String, String)]) -> Function {
    let api = RuntimeApi::start(name).await.unwrap();
    let process = api.spawn_function(&binary(name), name, env).unwrap();
    api.first_poll(START)
        .await
        .unwrap_or_else(|e| panic!("{name} did not start: {e}; {:#?}", process.logs()));
    Function { api, process }
}
