//! Leads per second per destination, and stored-to-delivered times, against the stand-ins
//! (crates/sandbox/src/crm.rs) on loopback: `cargo run --release -p leadpipe-crm --example
//! destinations_rate [LEADS]`. Each destination gets LEADS leads queued at once and core's
//! forwarder drains them round after round, as `serve --destinations` does; the figures are
//! the forwarder's and the adapter's own ceiling (the stand-ins answer at once), not a
//! service's. BENCHMARKS.md, "Destinations", gives the results.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use leadpipe_core::contract::sample_lead_event;
use leadpipe_core::destinations::{
    Destination, DestinationConfig, ForwardLimits, MappedLead, Outcome, forward_round, parse_file,
};
use leadpipe_core::memory::MemoryDeliveries;
use leadpipe_core::secrets::DestinationSecret;
use leadpipe_crm::AnyDestination;
use leadpipe_sandbox::crm::{self, CrmStandIn};
use std::sync::Mutex;
use std::time::Instant;

/// The adapter, timing each call and when each lead was delivered.
struct Timed {
    inner: AnyDestination,
    started: Instant,
    calls_ms: Mutex<Vec<f64>>,
    delivered_ms: Mutex<Vec<f64>>,
}

impl Destination for Timed {
    async fn deliver(&self, leads: &[MappedLead]) -> Vec<Outcome> {
        let call = Instant::now();
        let out = self.inner.deliver(leads).await;
        self.calls_ms
            .lock()
            .unwrap()
            .push(call.elapsed().as_secs_f64() * 1000.0);
        let at = self.started.elapsed().as_secs_f64() * 1000.0;
        let delivered = out
            .iter()
            .filter(|o| matches!(o, Outcome::Delivered(_)))
            .count();
        self.delivered_ms
            .lock()
            .unwrap()
            .extend(std::iter::repeat_n(at, delivered));
        out
    }

    async fn check(&self) -> Result<String, String> {
        self.inner.check().await
    }
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let at = ((values.len() as f64 - 1.0) * p).round() as usize;
    values.get(at).copied().unwrap_or(0.0)
}

#[tokio::main]
async fn main() {
    let leads: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(2000);
    let stand_in = CrmStandIn::start().await.unwrap();
    let base = stand_in.base_url();
    let file = format!(
        "[[destination]]\nname = \"hubspot\"\nkind = \"hubspot\"\nbase_url = \"{base}\"\n\
         [[destination]]\nname = \"salesforce\"\nkind = \"salesforce\"\nlogin_url = \"{base}\"\n\
         [[destination]]\nname = \"pipedrive\"\nkind = \"pipedrive\"\nbase_url = \"{base}\"\nlead_id_field = \"{}\"\n\
         [[destination]]\nname = \"slack\"\nkind = \"slack\"\n",
        crm::PIPEDRIVE_FIELD
    );
    let secret = |pairs: &[(&str, &str)]| -> DestinationSecret {
        let map: serde_json::Map<String, serde_json::Value> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), serde_json::json!(v)))
            .collect();
        serde_json::from_value(serde_json::Value::Object(map)).unwrap()
    };
    let slack_url = stand_in.slack_url();
    let secrets = [
        secret(&[("token", crm::HUBSPOT_TOKEN)]),
        secret(&[
            ("client_id", crm::SALESFORCE_CLIENT_ID),
            ("client_secret", crm::SALESFORCE_CLIENT_SECRET),
        ]),
        secret(&[("token", crm::PIPEDRIVE_TOKEN)]),
        secret(&[("webhook_url", &slack_url)]),
    ];
    let events: Vec<_> = (0..leads)
        .map(|i| {
            sample_lead_event(
                &format!("{}", 90_000_000 + i),
                "55",
                &format!("p{i}@example.org"),
            )
        })
        .collect();
    println!(
        "| destination | leads | leads/s | call p50 ms | call p99 ms | stored→delivered p50 ms | p99 ms |"
    );
    println!("|---|---|---|---|---|---|---|");
    let configs: Vec<DestinationConfig> = parse_file(&file).unwrap();
    for (config, secret) in configs.iter().zip(secrets.iter()) {
        let ledger = MemoryDeliveries::default();
        let started = Instant::now();
        ledger.queue(&config.name, &events, 0);
        let timed = Timed {
            inner: AnyDestination::build(config, Some(secret)).unwrap(),
            started,
            calls_ms: Mutex::default(),
            delivered_ms: Mutex::default(),
        };
        let limits = ForwardLimits::default();
        loop {
            let now = started.elapsed().as_millis() as i64;
            let report = forward_round(&ledger, config, &timed, &limits, now)
                .await
                .unwrap();
            if report.delivered + report.retried + report.dead == 0 {
                break;
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        let mut calls = timed.calls_ms.lock().unwrap().clone();
        let mut delivered = timed.delivered_ms.lock().unwrap().clone();
        assert_eq!(
            delivered.len(),
            leads,
            "{}: every lead delivered",
            config.name
        );
        println!(
            "| {} | {leads} | {:.0} | {:.2} | {:.2} | {:.0} | {:.0} |",
            config.name,
            leads as f64 / seconds,
            percentile(&mut calls, 0.5),
            percentile(&mut calls, 0.99),
            percentile(&mut delivered, 0.5),
            percentile(&mut delivered, 0.99),
        );
    }
}
