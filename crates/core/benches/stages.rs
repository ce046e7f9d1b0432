//! Stages to the Conversions API: the rule's own cost per stage (checks, hashing, the
//! event, the split), and Meta requests per stage for each request size and share of
//! events Meta refuses (the whole-request rule: a refused request is split until the
//! refused event stands alone). Figures go in BENCHMARKS.md ("Stages").
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use criterion::{Criterion, criterion_group, criterion_main};
use leadpipe_core::memory::{MemoryConversions, MemoryStageLeads, MemoryStageLedger};
use leadpipe_core::stages::{StageChange, StageLead, StageName, StageSettings, send_stages};
use std::hint::black_box;
use std::sync::atomic::Ordering;

const NOW: i64 = 1_796_200_000;
const STAGES: usize = 1_000;

fn world(refused_every: Option<usize>) -> (MemoryStageLeads, MemoryConversions, Vec<StageChange>) {
    let leads = MemoryStageLeads::default();
    let api = MemoryConversions::default();
    api.now.store(NOW, Ordering::Relaxed);
    let name = StageName::parse("Qualified").unwrap();
    let mut stages = Vec::with_capacity(STAGES);
    for i in 0..STAGES {
        let id = format!("{}", 1_900_000_000_000_000u64 + i as u64);
        leads.insert(
            &id,
            StageLead {
                created_time: NOW - 86_400,
                email: Some(format!("person{i}@example.com")),
                phone: Some(format!("+1212555{:04}", i % 10_000)),
            },
        );
        if refused_every.is_some_and(|every| i % every == every / 2) {
            api.unknown_to_meta.lock().unwrap().insert(id.clone());
        }
        stages.push(StageChange::new(id, name.clone(), NOW - 60, None, None, NOW).unwrap());
    }
    (leads, api, stages)
}

fn requests_per_stage() {
    println!("requests per stage, {STAGES} stages (events per request × one refused in N)");
    for per_request in [10, 50, 100, 250, 500, 1_000] {
        let mut line = format!("  {per_request:>5} per request:");
        for refused_every in [None, Some(1_000), Some(100), Some(20)] {
            let (leads, api, stages) = world(refused_every);
            let ledger = MemoryStageLedger::default();
            let settings = StageSettings {
                events_per_request: per_request,
                ..Default::default()
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let (_, report) =
                runtime.block_on(send_stages(&leads, &ledger, &api, &settings, &stages, NOW));
            let label = refused_every
                .map(|n| format!("1 in {n}"))
                .unwrap_or_else(|| "none".into());
            line.push_str(&format!(
                "  {label}: {:.3} ({} requests, {} sent)",
                report.requests as f64 / STAGES as f64,
                report.requests,
                report.sent
            ));
        }
        println!("{line}");
    }
}

fn bench(c: &mut Criterion) {
    requests_per_stage();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for refused_every in [None, Some(100)] {
        let (leads, api, stages) = world(refused_every);
        let settings = StageSettings::default();
        let name = match refused_every {
            None => "send_stages: 1,000 stages, 100 per request, none refused".to_owned(),
            Some(n) => format!("send_stages: 1,000 stages, 100 per request, 1 in {n} refused"),
        };
        c.bench_function(&name, |b| {
            b.iter(|| {
                // A fresh ledger each time: every stage is sent, none is "already sent".
                let ledger = MemoryStageLedger::default();
                api.taken.lock().unwrap().clear();
                black_box(runtime.block_on(send_stages(
                    &leads,
                    &ledger,
                    &api,
                    &settings,
                    black_box(&stages),
                    NOW,
                )))
            })
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
