//! Ingest throughput: N queued leads through the ingest use case and the real Graph client,
//! against a loopback Graph stand-in that answers each call after a fixed latency, with SQS
//! batches of 10 processed `concurrency` at a time (the event source mapping's maximum
//! concurrency). The store is in memory, so the figure is ingest's own plus Graph's.
//!
//! ```text
//! cargo run --release -p leadpipe-ingest --example ingest_load -- 10000 50 20 10
//! ```
//! Arguments: leads, Graph latency in ms, concurrent batches, SQS messages per batch (the
//! event source mapping's BatchSize: 10 or 50).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use axum::extract::{Form, State};
use axum::routing::post;
use leadpipe_core::ingest::{QueuedMessage, ingest_batch};
use leadpipe_core::memory::{MemoryLeadStore, MemoryQueueControl};
use leadpipe_core::secrets::AppSecrets;
use leadpipe_graph::{GraphClient, GraphConfig};
use leadpipe_graph_source::GraphLeadFetcher;
use secrecy::SecretString;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

struct StandIn {
    latency: Duration,
    requests: AtomicUsize,
}

async fn batch(
    State(s): State<Arc<StandIn>>,
    Form(form): Form<HashMap<String, String>>,
) -> axum::Json<serde_json::Value> {
    s.requests.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(s.latency).await;
    let requests: Vec<serde_json::Value> =
        serde_json::from_str(form.get("batch").map(String::as_str).unwrap_or("[]")).unwrap();
    let answers: Vec<serde_json::Value> = requests
        .iter()
        .map(|r| {
            let id = r["relative_url"].as_str().unwrap().split('?').next().unwrap();
            let lead = serde_json::json!({"id": id, "created_time": "2026-11-29T04:00:00+0000", "form_id": "555",
                "ad_id": "6001", "field_data": [{"name": "email", "values": ["someone@example.com"]},
                {"name": "full_name", "values": ["A Person"]}], "is_organic": false, "platform": "fb"});
            serde_json::json!({"code": 200, "body": lead.to_string()})
        })
        .collect();
    axum::Json(serde_json::Value::Array(answers))
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args()
        .skip(1)
        .map(|a| a.parse::<u64>().expect("numbers"));
    let leads = args.next().unwrap_or(10_000) as usize;
    let latency = Duration::from_millis(args.next().unwrap_or(50));
    let concurrency = args.next().unwrap_or(20) as usize;
    let batch_size = args.next().unwrap_or(10).clamp(1, 10_000) as usize;

    let stand_in = Arc::new(StandIn {
        latency,
        requests: AtomicUsize::new(0),
    });
    let app = axum::Router::new()
        .route("/v26.0/", post(batch))
        .with_state(stand_in.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let secrets = AppSecrets {
        app_secret: SecretString::from("bench-secret"),
        verify_token: None,
        lookup_key: None,
        conversions_token: None,
        stage_keys: Vec::new(),
        destinations: Default::default(),
        destinations_file: None,
        access_token: Some(SecretString::from("bench-token")),
        page_tokens: BTreeMap::new(),
    };
    let client = GraphClient::new(GraphConfig {
        base_url: base,
        app_secret: Some(SecretString::from("bench-secret")),
        ..GraphConfig::default()
    })
    .unwrap();
    let fetcher = Arc::new(GraphLeadFetcher::new(client, secrets));
    let store = Arc::new(MemoryLeadStore::new());
    let queue = Arc::new(MemoryQueueControl::default());

    let bodies: Vec<String> = (0..leads)
        .map(|i| format!(r#"{{"leadgen_id":"{}","page_id":"104857600000001","form_id":"555","created_time":1764390000,"received_at":"2026-11-29T05:00:00Z"}}"#, 1_900_000_000_000_000u64 + i as u64))
        .collect();
    let batches: Vec<Vec<String>> = bodies.chunks(batch_size).map(|c| c.to_vec()).collect();
    let semaphore = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (n, batch) in batches.into_iter().enumerate() {
        let permit = semaphore.clone().acquire_owned().await.unwrap();
        let (fetcher, store, queue) = (fetcher.clone(), store.clone(), queue.clone());
        tasks.push(tokio::spawn(async move {
            let ids: Vec<String> = (0..batch.len()).map(|i| format!("m{n}-{i}")).collect();
            let messages: Vec<QueuedMessage<'_>> = batch
                .iter()
                .zip(&ids)
                .map(|(body, id)| QueuedMessage {
                    message_id: id,
                    receipt_handle: None,
                    body,
                })
                .collect();
            let report = ingest_batch(
                &*fetcher,
                &*store,
                &leadpipe_core::forms::NoForms,
                &leadpipe_core::tokens::NoRefresh,
                &*queue,
                &messages,
                time::OffsetDateTime::now_utc(),
            )
            .await;
            drop(permit);
            report.retried()
        }));
    }
    let mut retried = 0;
    for task in tasks {
        retried += task.await.unwrap();
    }
    let elapsed = started.elapsed();
    let requests = stand_in.requests.load(Ordering::Relaxed);
    let rate = store.len() as f64 / elapsed.as_secs_f64();
    let bound = concurrency as f64 * batch_size as f64 / latency.as_secs_f64();
    println!(
        "ingest: {} leads stored ({} retried) in {:.2} s = {:.0} leads/s; Graph requests {} = {:.2} per lead; latency bound {:.0} leads/s ({} batches x {batch_size} / {} ms): {:.0}% of bound",
        store.len(),
        retried,
        elapsed.as_secs_f64(),
        rate,
        requests,
        requests as f64 / leads as f64,
        bound,
        concurrency,
        latency.as_millis(),
        100.0 * rate / bound
    );
}
