//! A lead read against its form (answers by label, the contact normalised, the phone read
//! by libphonenumber's data): the work ingest adds per lead for the readable parts, and
//! the one-time load of the phone data. Figures go in BENCHMARKS.md.
#![allow(clippy::expect_used, clippy::panic)]

use criterion::{Criterion, criterion_group, criterion_main};
use leadpipe_core::contact::{Region, normalise_phone};
use leadpipe_core::forms::Form;
use leadpipe_core::readable::Readable;
use leadpipe_graph::FieldData;
use std::hint::black_box;

fn form() -> Form {
    serde_json::from_value(serde_json::json!({
        "id": "555", "name": "Service quote", "locale": "en_US", "fetched_at": 0,
        "questions": [
            {"key": "full_name", "label": "Full name", "type": "FULL_NAME"},
            {"key": "email", "label": "Email", "type": "EMAIL"},
            {"key": "phone_number", "label": "Phone number", "type": "PHONE"},
            {"key": "city", "label": "City", "type": "CITY"},
            {"key": "services", "label": "Which services?", "type": "CUSTOM",
             "options": [{"key": "oil_change", "value": "Oil change"}, {"key": "tyres", "value": "Tyres"},
                         {"key": "brakes", "value": "Brakes"}]},
            {"key": "vehicle_type", "label": "Vehicle", "type": "CUSTOM",
             "options": [{"key": "car", "value": "Car"}, {"key": "van", "value": "Van"}]},
            {"key": "anything_else", "label": "Anything else?", "type": "CUSTOM"},
            {"key": "appointment", "label": "Pick a time", "type": "DATE_TIME"},
            {"key": "selected_dealer", "label": "Nearest workshop", "type": "STORE_LOOKUP"}
        ]
    }))
    .expect("the form literal parses")
}

fn fields() -> Vec<FieldData> {
    [
        ("full_name", vec!["Ada Lovelace"]),
        ("email", vec![" Ada@Example.com "]),
        ("phone_number", vec!["(212) 555-0142"]),
        ("city", vec!["Austin"]),
        ("services", vec!["tyres", "brakes"]),
        ("vehicle_type", vec!["van"]),
        ("anything_else", vec!["Please call after 6pm"]),
        ("appointment", vec!["2026-12-03T15:00:00+0000"]),
        ("selected_dealer", vec!["99213450"]),
    ]
    .into_iter()
    .map(|(name, values)| FieldData {
        name: name.into(),
        values: values.into_iter().map(str::to_owned).collect(),
    })
    .collect()
}

fn readable(c: &mut Criterion) {
    leadpipe_core::contact::prepare();
    let form = form();
    let fields = fields();
    c.bench_function("readable/nine_answers_against_the_form", |b| {
        b.iter(|| Readable::of(black_box(&fields), Some(black_box(&form))))
    });
    let us = Region::parse("US");
    c.bench_function("readable/phone_to_e164", |b| {
        b.iter(|| normalise_phone(black_box("(212) 555-0142"), us))
    });
}

criterion_group!(benches, readable);
criterion_main!(benches);
