//! The local pipeline end to end: the demo's drops, duplicates and faults; export round
//! trips; `serve` killed with SIGKILL and restarted loses nothing it answered 200 for.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use leadpipe::demo::{DemoArgs, run};
use leadpipe::export::{FIELD_PREFIX, decode_values, row_json, uncell, write_csv};
use leadpipe_local::LocalDb;
use std::collections::BTreeMap;

fn temp_db(name: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("leadpipe-test-{name}-{}.db", std::process::id()));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_lead_demo_with_drops_duplicates_and_faults_stores_every_lead_once() {
    let db = temp_db("demo");
    let report = run(DemoArgs {
        leads: 1000,
        db: Some(db.clone()),
        ..DemoArgs::default()
    })
    .await
    .unwrap();
    assert_eq!(report.leads, 1000);
    assert!(report.dropped > 50, "drops happened: {report:?}");
    assert!(
        report.duplicated_posts > 10,
        "duplicates happened: {report:?}"
    );
    assert_eq!(report.missing, 0, "{report:?}");
    assert_eq!(report.mismatched, 0, "{report:?}");
    assert_eq!(report.stored, 1000, "once each: {report:?}");
    assert!(
        report.by_backfill >= report.dropped,
        "backfill recovered the dropped ones: {report:?}"
    );
    assert_eq!(report.dead_letters, 0, "{report:?}");
    let (p50, p99) = report
        .received_to_stored_ms
        .expect("speed to lead measured");
    assert!(p50 <= p99, "{report:?}");
    let (created_p50, _) = report.created_to_stored_ms.unwrap();
    assert!(created_p50 >= p50, "created before received: {report:?}");
    // Leads out: the demo's receiver got each stored lead, despite the calls it failed.
    assert_eq!(report.forwarded, 1000, "{report:?}");
    assert!(
        report.forward_failed > 0,
        "failures were injected: {report:?}"
    );
    assert_eq!(
        report.forward_calls,
        report.forward_failed + 1000 + report.forwarded_twice,
        "every failed call was retried, nothing else repeated: {report:?}"
    );
    assert!(report.stored_to_forwarded_ms.is_some(), "{report:?}");

    // Export round trip: every field of every lead comes back.
    let local = LocalDb::open(&db).unwrap();
    let rows = local.leads().unwrap();
    let mut csv_bytes = Vec::new();
    write_csv(&rows, &mut csv_bytes).unwrap();
    let mut reader = csv::Reader::from_reader(csv_bytes.as_slice());
    let header: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(|h| uncell(h).to_owned())
        .collect();
    let records: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    assert_eq!(records.len(), rows.len());
    for (row, record) in rows.iter().zip(&records) {
        let cell = |name: &str| {
            record
                .get(header.iter().position(|h| h == name).unwrap())
                .map(uncell)
                .unwrap()
                .to_owned()
        };
        assert_eq!(cell("lead_id"), row.lead_id);
        assert_eq!(cell("created_time"), row.created_time);
        assert_eq!(cell("raw"), row.raw);
        assert_eq!(cell("is_organic"), row.is_organic.to_string());
        for (column, value) in &row.optional {
            assert_eq!(&cell(column), value);
        }
        let fields: BTreeMap<String, Vec<String>> = header
            .iter()
            .filter_map(|h| h.strip_prefix(FIELD_PREFIX))
            .filter_map(|f| {
                let c = cell(&format!("{FIELD_PREFIX}{f}"));
                (!c.is_empty()).then(|| (f.to_owned(), decode_values(&c)))
            })
            .collect();
        assert_eq!(fields, row.fields, "lead {}", row.lead_id);
        let disclaimers: serde_json::Value =
            serde_json::from_str(&cell("custom_disclaimer_responses")).unwrap();
        assert_eq!(disclaimers, row.custom_disclaimer_responses);
    }
    assert!(
        rows.iter()
            .any(|r| r.fields.get("services").is_some_and(|v| v.len() > 1)),
        "several values exercised"
    );
    for row in &rows {
        let json = row_json(row);
        assert_eq!(json["raw"].as_str().unwrap(), row.raw);
        assert_eq!(serde_json::to_value(&row.fields).unwrap(), json["fields"]);
    }
}
