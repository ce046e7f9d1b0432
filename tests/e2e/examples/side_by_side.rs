//! The webhook and ingest functions beside their Python peers (bench/peers/), each under its
//! own Lambda Runtime API (the project's harness), against one moto and the sandbox Graph,
//! interleaved round by round. Not a test: bench/side-by-side.sh runs it and it prints the
//! table BENCHMARKS.md quotes. Every invocation must succeed and every lead must be stored
//! or queued, or it stops: a figure for work not done is no figure.
//!
//! ```text
//! side_by_side RUST_WEBHOOK RUST_INGEST PEER_BOOTSTRAP [ROUNDS] [INVOKES]
//! ```
//! CPU is the process's own: the sum over its threads of `/proc/<pid>/task/*/schedstat`
//! (nanoseconds on CPU), read before and after each phase. Init is spawn to the first
//! `GET /invocation/next`. Peak RSS is `VmHWM`. Log bytes are what the process wrote to
//! stdout and stderr during the warm phases.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use aws_sdk_sqs::types::DeleteMessageBatchRequestEntry;
use leadpipe_core::event::LeadEvent;
use leadpipe_lambda_harness::events::{HttpEvent, HttpFront, sqs_event};
use leadpipe_lambda_harness::{FunctionProcess, RuntimeApi, aws_env, moto_endpoint, unique_name};
use leadpipe_sandbox::sender::post_body;
use leadpipe_sandbox::{DatasetSpec, Faults, Sandbox, SandboxLead};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const APP_SECRET: &str = "bench-app-secret";
const VERIFY_TOKEN: &str = "bench-verify";
const INGEST_BATCH: usize = 10;
const BIG_POST: usize = 100;
const WAIT: Duration = Duration::from_secs(120);

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Side {
    Rust,
    Python,
}

/// One figure per round, per side.
#[derive(Default)]
struct Figures {
    samples: BTreeMap<(Side, &'static str), Vec<f64>>,
}

impl Figures {
    fn add(&mut self, side: Side, what: &'static str, value: f64) {
        self.samples.entry((side, what)).or_default().push(value);
    }
    fn median(&self, side: Side, what: &'static str) -> f64 {
        let mut values = self.samples.get(&(side, what)).cloned().unwrap_or_default();
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
    }
}

/// The bench's switches, read once: the Rust side alone, the 100-change posts per round,
/// SIGTERM before the kill (callgrind writes its data on a fatal signal, not on SIGKILL),
/// and one warm invocation's lines printed (to see what the log bytes are).
struct Knobs {
    rust_only: bool,
    big_posts: Option<usize>,
    term: bool,
    show_logs: bool,
}

impl Knobs {
    fn from_env() -> Self {
        Self {
            rust_only: std::env::var_os("BENCH_RUST_ONLY").is_some(),
            big_posts: std::env::var("BENCH_BIG_POSTS")
                .ok()
                .and_then(|v| v.parse().ok()),
            term: std::env::var_os("BENCH_TERM").is_some(),
            show_logs: std::env::var_os("BENCH_SHOW_LOGS").is_some(),
        }
    }

    /// 100-change posts per round: a tenth of the one-change ones unless BENCH_BIG_POSTS.
    fn big_posts(&self, invokes: usize) -> usize {
        self.big_posts.unwrap_or((invokes / 10).max(1))
    }
}

/// Nanoseconds the process's live threads have spent on a CPU.
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Milliseconds on a CPU since `before` (a [`cpu_ns`] reading).
fn cpu_ms_since(pid: u32, before: u64) -> f64 {
    cpu_ns(pid).saturating_sub(before) as f64 / 1e6
}

/// Peak resident set, MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn log_bytes(process: &FunctionProcess, from_line: usize) -> (usize, usize) {
    let logs = process.logs();
    let lines = logs.get(from_line..).unwrap_or_default();
    let metric = lines
        .iter()
        .filter(|l| l.contains("\"_aws\""))
        .map(|l| l.len() + 1)
        .sum();
    let all: usize = lines.iter().map(|l| l.len() + 1).sum();
    (all - metric, metric)
}

/// SIGTERM and a wait before the kill, when asked (a profiler's data).
async fn stop_gently(knobs: &Knobs, function: &Started) {
    if knobs.term {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &function.pid.to_string()])
            .status();
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// One warm invocation's lines, when asked.
fn show_logs(knobs: &Knobs, side: Side, function: &str, process: &FunctionProcess, from: usize) {
    if knobs.show_logs {
        for line in process.logs().iter().skip(from).take(4) {
            eprintln!("{side:?} {function}: {line}");
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted
        .get(index)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(f64::NAN)
}

struct Started {
    api: RuntimeApi,
    process: FunctionProcess,
    pid: u32,
}

async fn start(
    side: Side,
    program: &Path,
    handler: &str,
    env: &[(String, String)],
) -> (Started, f64, f64) {
    let name = format!("bench-{side:?}-{handler}").to_lowercase();
    let api = RuntimeApi::start(&name).await.unwrap();
    let mut env = env.to_vec();
    env.push(("_HANDLER".into(), handler.into()));
    let process = api.spawn_function(program, &name, &env).unwrap();
    let polled = api.first_poll(WAIT).await.unwrap_or_else(|e| {
        panic!(
            "{side:?} {handler} did not start: {e}; {:#?}",
            process.logs()
        )
    });
    let pid = process.id().unwrap();
    let init_cpu_ms = cpu_ns(pid) as f64 / 1e6;
    let init_wall_ms = polled.duration_since(process.started()).as_secs_f64() * 1000.0;
    (Started { api, process, pid }, init_wall_ms, init_cpu_ms)
}

/// Takes messages off a queue as they arrive (moto's SendMessageBatch slows as a queue fills).
fn drain(
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    stop: Arc<AtomicBool>,
    seen: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let received = sqs
                .receive_message()
                .queue_url(&queue_url)
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .send()
                .await
                .unwrap();
            let messages = received.messages();
            if messages.is_empty() && stop.load(Ordering::Relaxed) {
                return;
            }
            if messages.is_empty() {
                continue;
            }
            seen.fetch_add(messages.len(), Ordering::Relaxed);
            let entries: Vec<DeleteMessageBatchRequestEntry> = messages
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(m.receipt_handle().unwrap())
                        .build()
                        .unwrap()
                })
                .collect();
            sqs.delete_message_batch()
                .queue_url(&queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .unwrap();
        }
    })
}

fn signed_post(leads: &[&SandboxLead]) -> serde_json::Value {
    let body = post_body(leads, 1_764_470_000);
    let signature = leadpipe_core::signature::sign(APP_SECRET.as_bytes(), body.as_bytes()).unwrap();
    HttpEvent {
        front: HttpFront::FunctionUrl,
        method: "POST",
        query: &[],
        headers: &[("x-hub-signature-256", signature.as_str())],
        body: body.as_bytes(),
        base64: false,
    }
    .to_json()
}

struct Bench {
    sqs: aws_sdk_sqs::Client,
    ddb: aws_sdk_dynamodb::Client,
    graph: String,
    page_token: String,
    invokes: usize,
    knobs: Knobs,
    figures: Figures,
}

/// The program that plays `side`.
fn program<'a>(side: Side, rust: &'a Path, peer: &'a Path) -> &'a Path {
    match side {
        Side::Rust => rust,
        Side::Python => peer,
    }
}

impl Bench {
    async fn webhook(&mut self, side: Side, program: &Path, leads: &[SandboxLead]) {
        let queue_url = self
            .sqs
            .create_queue()
            .queue_name(unique_name("bench-webhook"))
            .send()
            .await
            .unwrap()
            .queue_url
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(AtomicUsize::new(0));
        let drainer = drain(
            self.sqs.clone(),
            queue_url.clone(),
            stop.clone(),
            seen.clone(),
        );
        let mut env = aws_env();
        env.extend([
            ("QUEUE_URL".to_owned(), queue_url.clone()),
            ("APP_SECRET".to_owned(), APP_SECRET.to_owned()),
            ("VERIFY_TOKEN".to_owned(), VERIFY_TOKEN.to_owned()),
            ("AWS_DEFAULT_REGION".to_owned(), "us-east-1".to_owned()),
        ]);
        let (function, init_wall, init_cpu) = start(side, program, "webhook.handler", &env).await;
        self.figures.add(side, "webhook init wall ms", init_wall);
        self.figures.add(side, "webhook init cpu ms", init_cpu);
        let posted = AtomicUsize::new(0);
        let invoke = |event: serde_json::Value, changes: usize| {
            let api = &function.api;
            let (posted, seen) = (&posted, &seen);
            async move {
                let started = Instant::now();
                let outcome = api
                    .invoke(&event, Duration::from_secs(30), WAIT)
                    .await
                    .unwrap();
                let status = outcome.json().unwrap()["statusCode"].as_u64();
                assert_eq!(status, Some(200), "{side:?} webhook answered {outcome:?}");
                let took = started.elapsed();
                // Drain as we go: moto's queue calls slow down as a queue fills.
                let posted = posted.fetch_add(changes, Ordering::Relaxed) + changes;
                while posted > seen.load(Ordering::Relaxed) + 200 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                took
            }
        };
        let mut leads = leads.iter();
        let mut next = |n: usize| -> Vec<&SandboxLead> { leads.by_ref().take(n).collect() };
        // The first invocation opens the SDK's connection: part of a cold start, not of the
        // steady per-invoke figure.
        let before = cpu_ns(function.pid);
        invoke(signed_post(&next(1)), 1).await;
        let first = cpu_ms_since(function.pid, before);
        self.figures.add(side, "webhook first invoke cpu ms", first);
        let log_from = function.process.logs().len();
        let before = cpu_ns(function.pid);
        let mut times = Vec::with_capacity(self.invokes);
        for _ in 0..self.invokes {
            times.push(invoke(signed_post(&next(1)), 1).await);
        }
        let cpu = cpu_ms_since(function.pid, before) / self.invokes as f64;
        times.sort();
        let (log, metric) = log_bytes(&function.process, log_from);
        self.figures
            .add(side, "webhook cpu ms per 1-change invoke", cpu);
        self.figures
            .add(side, "webhook p50 ms, 1 change", percentile(&times, 0.5));
        self.figures
            .add(side, "webhook p99 ms, 1 change", percentile(&times, 0.99));
        self.figures.add(
            side,
            "webhook log bytes per lead",
            log as f64 / self.invokes as f64,
        );
        self.figures.add(
            side,
            "webhook metric bytes per lead",
            metric as f64 / self.invokes as f64,
        );
        let big = self.knobs.big_posts(self.invokes);
        let before = cpu_ns(function.pid);
        for _ in 0..big {
            invoke(signed_post(&next(BIG_POST)), BIG_POST).await;
        }
        let cpu = cpu_ms_since(function.pid, before) / big as f64;
        self.figures
            .add(side, "webhook cpu ms per 100-change invoke", cpu);
        show_logs(&self.knobs, side, "webhook", &function.process, log_from);
        stop_gently(&self.knobs, &function).await;
        self.figures
            .add(side, "webhook peak RSS MiB", peak_rss_mib(function.pid));
        drop(function);
        let expected = 1 + self.invokes + big * BIG_POST;
        let waited = Instant::now();
        while seen.load(Ordering::Relaxed) < expected {
            assert!(
                waited.elapsed() < WAIT,
                "{side:?}: {} of {expected} queued",
                seen.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.store(true, Ordering::Relaxed);
        drainer.await.unwrap();
        assert_eq!(
            seen.load(Ordering::Relaxed),
            expected,
            "{side:?}: queued more than posted"
        );
        self.sqs
            .delete_queue()
            .queue_url(queue_url)
            .send()
            .await
            .unwrap();
    }

    async fn ingest(&mut self, side: Side, program: &Path, leads: &[SandboxLead]) {
        let table = unique_name("bench-leads");
        leadpipe_aws::dynamo::create_leads_table(&self.ddb, &table)
            .await
            .unwrap();
        let state = unique_name("bench-state");
        leadpipe_aws::dynamo::create_state_table(&self.ddb, &state)
            .await
            .unwrap();
        let mut env = aws_env();
        env.extend([
            ("LEADS_TABLE".to_owned(), table.clone()),
            ("STATE_TABLE".to_owned(), state),
            (
                "QUEUE_URL".to_owned(),
                "http://127.0.0.1:9/unused".to_owned(),
            ),
            (
                "DLQ_URL".to_owned(),
                "http://127.0.0.1:9/unused-dlq".to_owned(),
            ),
            ("APP_SECRET".to_owned(), APP_SECRET.to_owned()),
            ("ACCESS_TOKEN".to_owned(), self.page_token.clone()),
            ("GRAPH_API_BASE".to_owned(), self.graph.clone()),
            ("AWS_DEFAULT_REGION".to_owned(), "us-east-1".to_owned()),
        ]);
        let (function, init_wall, init_cpu) = start(side, program, "ingest.handler", &env).await;
        self.figures.add(side, "ingest init wall ms", init_wall);
        self.figures.add(side, "ingest init cpu ms", init_cpu);
        let mut chunks = leads.chunks(INGEST_BATCH);
        let mut invoke_next = async || {
            let chunk = chunks.next().unwrap();
            let bodies: Vec<String> = chunk
                .iter()
                .map(|l| {
                    LeadEvent {
                        leadgen_id: l.id.clone(),
                        page_id: l.page_id.clone(),
                        form_id: Some(l.form_id.clone()),
                        ad_id: l.ad_id.clone(),
                        adgroup_id: l.adgroup_id.clone(),
                        created_time: Some(l.created_time),
                        received_at: time::OffsetDateTime::now_utc(),
                    }
                    .to_message_body()
                    .unwrap()
                })
                .collect();
            let started = Instant::now();
            let outcome = function
                .api
                .invoke(&sqs_event(&bodies), Duration::from_secs(60), WAIT)
                .await
                .unwrap();
            let failures = outcome.json().unwrap()["batchItemFailures"]
                .as_array()
                .map(Vec::len);
            assert_eq!(failures, Some(0), "{side:?} ingest answered {outcome:?}");
            started.elapsed()
        };
        let before = cpu_ns(function.pid);
        invoke_next().await;
        let first = cpu_ms_since(function.pid, before);
        self.figures.add(side, "ingest first invoke cpu ms", first);
        let log_from = function.process.logs().len();
        let before = cpu_ns(function.pid);
        let mut times = Vec::with_capacity(self.invokes);
        for _ in 0..self.invokes {
            times.push(invoke_next().await);
        }
        let leads_done = (self.invokes * INGEST_BATCH) as f64;
        let cpu = cpu_ms_since(function.pid, before) / leads_done;
        times.sort();
        let (log, metric) = log_bytes(&function.process, log_from);
        self.figures.add(side, "ingest cpu ms per lead", cpu);
        self.figures.add(
            side,
            "ingest p50 ms per 10-lead batch",
            percentile(&times, 0.5),
        );
        self.figures.add(
            side,
            "ingest p99 ms per 10-lead batch",
            percentile(&times, 0.99),
        );
        self.figures
            .add(side, "ingest log bytes per lead", log as f64 / leads_done);
        self.figures.add(
            side,
            "ingest metric bytes per lead",
            metric as f64 / leads_done,
        );
        self.figures
            .add(side, "ingest peak RSS MiB", peak_rss_mib(function.pid));
        show_logs(&self.knobs, side, "ingest", &function.process, log_from);
        stop_gently(&self.knobs, &function).await;
        drop(function);
        let mut stored = 0;
        let mut pages = self
            .ddb
            .scan()
            .table_name(&table)
            .select(aws_sdk_dynamodb::types::Select::Count)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            stored += page.unwrap().count as usize;
        }
        assert_eq!(
            stored,
            (self.invokes + 1) * INGEST_BATCH,
            "{side:?}: leads stored"
        );
        self.ddb
            .delete_table()
            .table_name(table)
            .send()
            .await
            .unwrap();
    }
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let usage = "usage: side_by_side RUST_WEBHOOK RUST_INGEST PEER_BOOTSTRAP [ROUNDS] [INVOKES]";
    let rust_webhook = PathBuf::from(args.next().expect(usage));
    let rust_ingest = PathBuf::from(args.next().expect(usage));
    let peer = PathBuf::from(args.next().expect(usage));
    let rounds: usize = args.next().map(|r| r.parse().expect(usage)).unwrap_or(5);
    let invokes: usize = args.next().map(|r| r.parse().expect(usage)).unwrap_or(200);
    moto_endpoint().expect("moto");
    let knobs = Knobs::from_env();

    // One page, so one page token serves as ACCESS_TOKEN for both sides.
    let per_side_round = 1 + invokes + knobs.big_posts(invokes) * BIG_POST;
    let ingest_per_side_round = (invokes + 1) * INGEST_BATCH;
    let spec = DatasetSpec {
        pages: 1,
        forms_per_page: 4,
        leads: rounds * 2 * ingest_per_side_round.max(per_side_round),
        ..DatasetSpec::default()
    };
    let sandbox = Sandbox::generate(&spec, Faults::default()).await.unwrap();
    // Posts and queue messages name leads by id only.
    let data = sandbox.leads_by_id();
    let config = aws_config::load_from_env().await;
    let mut bench = Bench {
        sqs: aws_sdk_sqs::Client::new(&config),
        ddb: aws_sdk_dynamodb::Client::new(&config),
        graph: sandbox.base_url(),
        page_token: leadpipe_sandbox::data::page_token(&data.pages[0].0),
        invokes,
        knobs,
        figures: Figures::default(),
    };
    let mut slices = data.leads.chunks(ingest_per_side_round.max(per_side_round));
    for round in 0..rounds {
        // Who goes first alternates, so neither side always runs on a warmer machine.
        let order = if round % 2 == 0 {
            [Side::Rust, Side::Python]
        } else {
            [Side::Python, Side::Rust]
        };
        let rust_only = bench.knobs.rust_only;
        for side in order.into_iter().filter(|s| !rust_only || *s == Side::Rust) {
            let leads = slices.next().unwrap();
            bench
                .webhook(side, program(side, &rust_webhook, &peer), leads)
                .await;
            bench
                .ingest(side, program(side, &rust_ingest, &peer), leads)
                .await;
        }
        eprintln!("round {} of {rounds} done", round + 1);
    }

    println!(
        "{rounds} rounds, interleaved; medians of the rounds. {invokes} warm invocations per phase and round."
    );
    println!();
    println!("| | leadpipe (Rust) | Python peer | ratio |");
    println!("|---|---|---|---|");
    let whats: Vec<&'static str> = bench
        .figures
        .samples
        .keys()
        .filter(|(side, _)| *side == Side::Rust)
        .map(|(_, what)| *what)
        .collect();
    for what in whats {
        let rust = bench.figures.median(Side::Rust, what);
        let python = bench.figures.median(Side::Python, what);
        println!(
            "| {what} | {rust:.3} | {python:.3} | {:.1}× |",
            python / rust
        );
    }
}
