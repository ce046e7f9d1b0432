//! Verify + parse + batch building for a webhook post, the work the webhook does per request
//! before the SQS call. Figures go in BENCHMARKS.md.
#![allow(clippy::expect_used, clippy::panic)]

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use leadpipe_core::event::LeadEvent;
use leadpipe_core::signature::{sign, verify_signature};
use leadpipe_core::webhook::parse_delivery;
use std::hint::black_box;
use time::OffsetDateTime;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

fn payload(changes: usize) -> Vec<u8> {
    let changes: Vec<String> = (0..changes)
        .map(|i| {
            format!(
                r#"{{"field":"leadgen","value":{{"leadgen_id":"{}","page_id":"104857600000001","form_id":"555000111222333","adgroup_id":"238000111222333","ad_id":"238000111222334","created_time":1764390000}}}}"#,
                1_900_000_000_000_000u64 + i as u64
            )
        })
        .collect();
    format!(
        r#"{{"object":"page","entry":[{{"id":"104857600000001","time":1764390001,"changes":[{}]}}]}}"#,
        changes.join(",")
    )
    .into_bytes()
}

/// What the webhook does per post: check, parse, and build the SQS batch bodies.
fn accept(body: &[u8], signature: &str, now: OffsetDateTime) -> usize {
    let mut bytes = 0;
    if verify_signature(SECRET, Some(signature), body).is_err() {
        return 0;
    }
    if let Ok(delivery) = parse_delivery(body, now) {
        for chunk in delivery.events.chunks(10) {
            for event in chunk {
                bytes += LeadEvent::to_message_body(event)
                    .map(|b| b.len())
                    .unwrap_or(0);
            }
        }
    }
    bytes
}

fn bench(c: &mut Criterion) {
    let now = OffsetDateTime::now_utc();
    let mut group = c.benchmark_group("webhook_verify_parse_batch");
    for changes in [1usize, 100] {
        let body = payload(changes);
        let signature = sign(SECRET, &body).expect("signing");
        assert!(accept(&body, &signature, now) > 0);
        group.throughput(Throughput::Elements(changes as u64));
        group.bench_with_input(BenchmarkId::from_parameter(changes), &body, |b, body| {
            b.iter(|| accept(black_box(body), black_box(&signature), now))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
