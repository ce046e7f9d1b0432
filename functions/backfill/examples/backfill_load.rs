//! Backfill throughput and memory: one form with N leads behind a loopback Graph stand-in
//! that answers each page after a fixed latency, read by the backfill use case with the
//! real Graph client. Leads are generated on the fly by the stand-in and counted (not kept)
//! by the store, so the process's peak RSS is backfill's own working set.
//!
//! ```text
//! cargo run --release -p leadpipe-backfill --example backfill_load -- 100000 20 500
//! ```
//! Arguments: leads, Graph latency in ms, page size.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use axum::extract::{Path, Query, State};
use axum::routing::get;
use leadpipe_core::backfill::{
    BackfillPlan, BackfillPorts, BackfillSettings, Deadline, run_backfill,
};
use leadpipe_core::ports::{
    CheckpointStore, LeadStore, PutOutcome, RunFacts, StoreError, StoredLead,
};
use leadpipe_core::secrets::AppSecrets;
use leadpipe_graph::{GraphClient, GraphConfig};
use leadpipe_graph_source::GraphBackfillSource;
use secrecy::SecretString;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct StandIn {
    leads: u64,
    latency: Duration,
    now: i64,
    requests: AtomicU64,
}

async fn node(
    State(s): State<Arc<StandIn>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> axum::Json<serde_json::Value> {
    s.requests.fetch_add(1, Ordering::Relaxed);
    if id == "debug_token" {
        return axum::Json(
            serde_json::json!({"data": {"user_id": "42", "app_id": "99", "is_valid": true}}),
        );
    }
    let _ = q;
    axum::Json(serde_json::json!({"has_lead_access": {"can_access_lead": true}, "id": id}))
}

async fn edge(
    State(s): State<Arc<StandIn>>,
    Path((id, edge)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> axum::Json<serde_json::Value> {
    s.requests.fetch_add(1, Ordering::Relaxed);
    if edge == "leadgen_forms" {
        return axum::Json(
            serde_json::json!({"data": [{"id": "555", "status": "ACTIVE", "created_time": s.now - s.leads as i64 - 10}]}),
        );
    }
    tokio::time::sleep(s.latency).await;
    let limit: u64 = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(25);
    let offset: u64 = q.get("after").and_then(|a| a.parse().ok()).unwrap_or(0);
    let end = (offset + limit).min(s.leads);
    let data: Vec<serde_json::Value> = (offset..end)
        .map(|i| serde_json::json!({"id": format!("{}", 1_800_000_000_000u64 + i), "created_time": s.now - 1 - i as i64,
            "form_id": id, "field_data": [{"name": "email", "values": ["someone@example.com"]},
            {"name": "full_name", "values": ["A Person"]}, {"name": "phone_number", "values": ["+15550100"]}],
            "is_organic": false, "platform": "fb", "ad_id": "6001"}))
        .collect();
    let mut paging = serde_json::json!({"cursors": {"after": end.to_string()}});
    if end < s.leads {
        let filtering = q.get("filtering").cloned().unwrap_or_default();
        let mut next = url::Url::parse(&format!("http://stand-in/v26.0/{id}/leads")).unwrap();
        next.query_pairs_mut()
            .append_pair("limit", &limit.to_string())
            .append_pair("after", &end.to_string())
            .append_pair("filtering", &filtering)
            .append_pair("fields", q.get("fields").map(String::as_str).unwrap_or(""));
        paging["next"] = serde_json::json!(next.as_str());
    }
    axum::Json(serde_json::json!({"data": data, "paging": paging}))
}

#[derive(Default)]
struct CountingStore(AtomicU64);
impl LeadStore for CountingStore {
    async fn put_leads(&self, leads: &[StoredLead]) -> Result<Vec<PutOutcome>, StoreError> {
        self.0.fetch_add(leads.len() as u64, Ordering::Relaxed);
        Ok(vec![PutOutcome::Inserted; leads.len()])
    }
}

#[derive(Default)]
struct MemoryCheckpoints(Mutex<HashMap<String, i64>>);
impl CheckpointStore for MemoryCheckpoints {
    async fn checkpoint(&self, key: &str) -> Result<Option<i64>, StoreError> {
        Ok(self.0.lock().unwrap().get(key).copied())
    }
    async fn save_checkpoint(
        &self,
        key: &str,
        checkpoint: i64,
        _: &RunFacts,
    ) -> Result<(), StoreError> {
        self.0.lock().unwrap().insert(key.to_owned(), checkpoint);
        Ok(())
    }
}

struct Never;
impl Deadline for Never {
    fn near(&self) -> bool {
        false
    }
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args()
        .skip(1)
        .map(|a| a.parse::<u64>().expect("numbers"));
    let leads = args.next().unwrap_or(100_000);
    let latency = Duration::from_millis(args.next().unwrap_or(20));
    let page_size = args.next().unwrap_or(500) as u32;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();

    let stand_in = Arc::new(StandIn {
        leads,
        latency,
        now,
        requests: AtomicU64::new(0),
    });
    let app = axum::Router::new()
        .route("/v26.0/{id}", get(node))
        .route("/v26.0/{id}/{edge}", get(edge))
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
        access_token: None,
        page_tokens: BTreeMap::from([("7001".to_owned(), SecretString::from("bench-token"))]),
    };
    let client = GraphClient::new(GraphConfig {
        base_url: base,
        ..GraphConfig::default()
    })
    .unwrap();
    let source = GraphBackfillSource::new(client, secrets);
    let store = CountingStore::default();
    let checkpoints = MemoryCheckpoints::default();
    let settings = BackfillSettings {
        page_size,
        slice: Duration::from_secs(10 * 365 * 86_400),
        lookback: Duration::from_secs(10 * 365 * 86_400),
        ..BackfillSettings::default()
    };
    let plan = BackfillPlan::scheduled(&["7001".to_owned()]);
    let rss_before = peak_rss_mib();
    let started = Instant::now();
    let dead_letters = leadpipe_core::memory::MemoryQueueControl::default();
    let ports = BackfillPorts {
        source: &source,
        tokens: &leadpipe_core::tokens::NoRefresh,
        forms: &leadpipe_core::forms::NoForms,
        store: &store,
        checkpoints: &checkpoints,
        dead_letters: &dead_letters,
    };
    let summary = run_backfill(
        &ports,
        &Never,
        &plan,
        &settings,
        time::OffsetDateTime::now_utc(),
    )
    .await;
    let elapsed = started.elapsed();
    assert_eq!(summary.leads_read, leads, "every lead read");
    let pages = leads.div_ceil(page_size as u64);
    let bound = page_size as f64 / latency.as_secs_f64();
    let rate = leads as f64 / elapsed.as_secs_f64();
    println!(
        "backfill: {leads} leads in {:.2} s = {:.0} leads/s over {pages} pages of {page_size}; latency bound {:.0} leads/s ({page_size} per {} ms page): {:.0}% of bound; peak RSS {:.1} MiB (at start {:.1} MiB); Graph requests {}",
        elapsed.as_secs_f64(),
        rate,
        bound,
        latency.as_millis(),
        100.0 * rate / bound,
        peak_rss_mib(),
        rss_before,
        stand_in.requests.load(Ordering::Relaxed)
    );
}
