//! Cold-start figures for a function binary: process start to its first Runtime API poll
//! (settings read, secrets resolved, AWS clients built), over several starts.
//!
//! ```text
//! cargo run --release -p leadpipe-lambda-harness --example cold_start -- \
//!     target/release/leadpipe-webhook 20 QUEUE_URL=http://127.0.0.1:1/q APP_SECRET=x VERIFY_TOKEN=y
//! ```
//! Extra `NAME=value` arguments become the function's environment (as Lambda would set it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use leadpipe_lambda_harness::RuntimeApi;
use std::path::PathBuf;
use std::time::Duration;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let binary = PathBuf::from(
        args.next()
            .expect("usage: cold_start BINARY [RUNS] [NAME=value...]"),
    );
    let runs: usize = args
        .next()
        .map(|r| r.parse().expect("RUNS is a number"))
        .unwrap_or(10);
    let env: Vec<(String, String)> = args
        .map(|pair| {
            let (k, v) = pair.split_once('=').expect("NAME=value");
            (k.to_owned(), v.to_owned())
        })
        .collect();
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let api = RuntimeApi::start("cold-start").await.unwrap();
        let mut function = api.spawn_function(&binary, "cold-start", &env).unwrap();
        let polled = api
            .first_poll(Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| {
                panic!("no poll: {e}; logs: {:#?}", function.logs());
            });
        samples.push(polled.duration_since(function.started()));
        function.kill().await.ok();
    }
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let size = std::fs::metadata(&binary).map(|m| m.len()).unwrap_or(0);
    println!(
        "{}: {} starts, size {:.2} MiB, start to first poll: min {:.1} ms, median {:.1} ms, p90 {:.1} ms, max {:.1} ms",
        binary.display(),
        runs,
        size as f64 / (1024.0 * 1024.0),
        ms(samples[0]),
        ms(samples[runs / 2]),
        ms(samples[(runs * 9 / 10).min(runs - 1)]),
        ms(samples[runs - 1]),
    );
}
