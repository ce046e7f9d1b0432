//! `leadpipe forget` and `redrive` against moto, as the real binary: a person found through
//! the `by_email_key` index (the calls recorded at a proxy show a Query and no Scan), their
//! leads and the dead letters naming them erased, TTL set when retention is on; a filtered
//! redrive that loses nothing when some sends fail midway.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use leadpipe_e2e::binary;

use aws_sdk_sqs::types::{MessageAttributeValue, QueueAttributeName};
use leadpipe_aws::DynamoLeadStore;
use leadpipe_core::ports::{LeadSourceKind, LeadStore, StoredLead};
use leadpipe_core::privacy::LeadPolicy;
use leadpipe_lambda_harness::{moto_endpoint, unique_name};
use secrecy::SecretString;
use std::collections::BTreeSet;

const LOOKUP_KEY: &str = "operate-aws-lookup-key";

fn stored(i: usize, email: &str) -> StoredLead {
    StoredLead {
        lead: leadpipe_graph::Lead::from_json(&format!(
            r#"{{"id":"{}","created_time":"2026-11-30T00:00:00+0000","field_data":[
                {{"name":"email","values":["{email}"]}},{{"name":"phone_number","values":["+1555{i:07}"]}}]}}"#,
            7_000_000 + i
        ))
        .unwrap(),
        page_id: "7".into(),
        form_id: Some("5".into()),
        source: LeadSourceKind::Backfill,
        ingested_at: time::OffsetDateTime::now_utc(),
        readable: Default::default(),
    }
}

async fn queue(sqs: &aws_sdk_sqs::Client, name: &str, max_size: Option<&str>) -> String {
    let mut create = sqs.create_queue().queue_name(unique_name(name));
    if let Some(size) = max_size {
        create = create.attributes(QueueAttributeName::MaximumMessageSize, size);
    }
    create.send().await.unwrap().queue_url.unwrap()
}

async fn dead_letter(
    sqs: &aws_sdk_sqs::Client,
    dlq: &str,
    lead: &str,
    class: &str,
    padding: usize,
) {
    let body = format!(
        r#"{{"leadgen_id":"{lead}","page_id":"7","received_at":"2026-11-30T00:00:00Z","pad":"{}"}}"#,
        "x".repeat(padding)
    );
    let attribute = |v: &str| {
        MessageAttributeValue::builder()
            .data_type("String")
            .string_value(v)
            .build()
            .unwrap()
    };
    sqs.send_message()
        .queue_url(dlq)
        .message_body(body)
        .message_attributes("leadpipe_reason_class", attribute(class))
        .message_attributes("leadpipe_reason", attribute("code 190/463"))
        .send()
        .await
        .unwrap();
}

async fn run(args: &[&str], endpoint: &str) -> (bool, String) {
    let out = tokio::process::Command::new(binary("leadpipe"))
        .args(args)
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("LOOKUP_KEY", LOOKUP_KEY)
        .env_remove("LEADPIPE_SECRET_FILE")
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs moto: run scripts/test"]
async fn forget_finds_a_person_through_the_index_and_erases_them_on_the_stack() {
    let moto = moto_endpoint().expect("moto");
    let config = leadpipe_aws::sdk_config().await;
    let ddb = aws_sdk_dynamodb::Client::new(&config);
    let sqs = aws_sdk_sqs::Client::new(&config);
    let table = unique_name("operate-leads");
    leadpipe_aws::dynamo::create_leads_table(&ddb, &table)
        .await
        .unwrap();
    let store = DynamoLeadStore::from_client(ddb.clone(), &table)
        .with_policy(LeadPolicy::new(Some(SecretString::from(LOOKUP_KEY)), 30));
    // 1,000 leads; three of them the same person's (the address written three ways).
    let mut leads: Vec<StoredLead> = (0..1000)
        .map(|i| stored(i, &format!("person{i}@example.org")))
        .collect();
    leads[10] = stored(10, "ada@example.org");
    leads[500] = stored(500, " Ada@Example.org");
    leads[999] = stored(999, "ADA@EXAMPLE.ORG");
    for chunk in leads.chunks(50) {
        store.put_leads(chunk).await.unwrap();
    }
    // Retention on: the TTL attribute is there, 30 days after created_time.
    let item = ddb
        .get_item()
        .table_name(&table)
        .key(
            "lead_id",
            aws_sdk_dynamodb::types::AttributeValue::S("7000010".into()),
        )
        .send()
        .await
        .unwrap()
        .item
        .unwrap();
    assert_eq!(
        item["expires_at"].as_n().unwrap(),
        &(1_795_996_800i64 + 30 * 86_400).to_string()
    );
    assert!(item.contains_key("email_key") && item.contains_key("phone_key"));
    let dlq = queue(&sqs, "operate-dlq", None).await;
    dead_letter(&sqs, &dlq, "7000500", "unreadable", 0).await;
    dead_letter(&sqs, &dlq, "7000001", "unreadable", 0).await;

    // Every call the binary makes goes through a recording proxy.
    let proxy =
        leadpipe_lambda_harness::TcpProxy::start(moto.trim_start_matches("http://").to_owned())
            .await
            .unwrap();
    let (ok, text) = run(
        &[
            "forget",
            "--email",
            "ada@example.org",
            "--leads-table",
            &table,
            "--dlq-url",
            &dlq,
        ],
        &proxy.url,
    )
    .await;
    assert!(ok, "{text}");
    assert!(
        text.contains("forgot 3 lead(s) found by email_key: 7000010, 7000500, 7000999"),
        "{text}"
    );
    assert!(text.contains("dead letters 1"), "{text}");
    assert!(!text.to_lowercase().contains("ada@example.org"), "{text}");
    let calls = proxy.state.aws_calls();
    assert!(calls.contains("dynamodb:Query"), "{calls:?}");
    assert!(
        !calls.contains("dynamodb:Scan"),
        "found without a scan: {calls:?}"
    );
    for id in ["7000010", "7000500", "7000999"] {
        assert!(
            !leadpipe_aws::operate::lead_exists(&ddb, &table, id)
                .await
                .unwrap(),
            "{id}"
        );
    }
    assert!(
        leadpipe_aws::operate::lead_exists(&ddb, &table, "7000011")
            .await
            .unwrap()
    );
    let left = leadpipe_aws::operate::take_all(&sqs, &dlq, 60)
        .await
        .unwrap();
    let named: Vec<Option<String>> = left
        .iter()
        .map(|m| leadpipe_aws::operate::body_lead_id(&m.body))
        .collect();
    assert_eq!(
        named,
        [Some("7000001".to_owned())],
        "only the other lead's dead letter is left"
    );
    // The erased leads stay erased: the write ingest and backfill make (conditional on the
    // id being absent) meets the erasure record, whoever comes first.
    let outcomes = store
        .put_leads(&[leads[10].clone(), leads[11].clone()])
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        [
            leadpipe_core::ports::PutOutcome::AlreadyPresent,
            leadpipe_core::ports::PutOutcome::AlreadyPresent
        ]
    );
    let record = ddb
        .get_item()
        .table_name(&table)
        .key(
            "lead_id",
            aws_sdk_dynamodb::types::AttributeValue::S("7000010".into()),
        )
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
        .unwrap();
    let mut kept: Vec<&str> = record.keys().map(String::as_str).collect();
    kept.sort();
    assert_eq!(
        kept,
        ["erased_at", "lead_id"],
        "ids only, no value of the lead"
    );
    // A lead never stored, forgotten by id: its record keeps a later ingest out too.
    let (ok, text) = run(
        &["forget", "--lead", "7001234", "--leads-table", &table],
        &moto,
    )
    .await;
    assert!(ok && text.contains("forgot 0 lead(s)"), "{text}");
    let late = stored(1234, "late@example.org");
    assert_eq!(
        store.put_leads(&[late]).await.unwrap(),
        [leadpipe_core::ports::PutOutcome::AlreadyPresent]
    );
    assert!(
        !leadpipe_aws::operate::lead_exists(&ddb, &table, "7001234")
            .await
            .unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs moto: run scripts/test"]
async fn a_filtered_redrive_loses_nothing_when_sends_fail_midway() {
    let moto = moto_endpoint().expect("moto");
    let config = leadpipe_aws::sdk_config().await;
    let sqs = aws_sdk_sqs::Client::new(&config);
    let dlq = queue(&sqs, "redrive-dlq", None).await;
    // The queue takes bodies up to 1 KiB: the padded dead letters' sends fail there.
    let queue_url = queue(&sqs, "redrive-queue", Some("1024")).await;
    for i in 0..6 {
        dead_letter(
            &sqs,
            &dlq,
            &format!("80{i}"),
            "token",
            if i % 2 == 0 { 0 } else { 2000 },
        )
        .await;
    }
    dead_letter(&sqs, &dlq, "890", "not_found", 0).await;
    let (ok, text) = run(
        &[
            "redrive",
            "--reason-class",
            "token",
            "--dlq-url",
            &dlq,
            "--queue-url",
            &queue_url,
        ],
        &moto,
    )
    .await;
    assert!(!ok, "failed sends are reported: {text}");
    assert!(
        text.contains("moved 3 dead letter(s) back to the queue; 4 left in the DLQ"),
        "{text}"
    );
    assert!(
        text.contains("3 dead letter(s) could not be sent back"),
        "{text}"
    );
    let moved: Vec<String> = leadpipe_aws::operate::take_all(&sqs, &queue_url, 60)
        .await
        .unwrap()
        .iter()
        .filter_map(|m| leadpipe_aws::operate::body_lead_id(&m.body))
        .collect();
    let mut moved = moved;
    moved.sort();
    assert_eq!(moved, ["800", "802", "804"]);
    let mut left: Vec<String> = leadpipe_aws::operate::take_all(&sqs, &dlq, 60)
        .await
        .unwrap()
        .iter()
        .filter_map(|m| leadpipe_aws::operate::body_lead_id(&m.body))
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["801", "803", "805", "890"],
        "every one not sent is still a dead letter"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs moto: run scripts/test"]
async fn export_reads_the_stacks_table_by_form_or_by_parallel_scan() {
    let moto = moto_endpoint().expect("moto");
    let config = leadpipe_aws::sdk_config().await;
    let ddb = aws_sdk_dynamodb::Client::new(&config);
    let table = unique_name("export-leads");
    leadpipe_aws::dynamo::create_leads_table(&ddb, &table)
        .await
        .unwrap();
    let store = DynamoLeadStore::from_client(ddb.clone(), &table);
    // 300 leads, two forms, one a minute apart going back from 2026-11-30T05:00:00Z.
    let leads: Vec<StoredLead> = (0..300)
        .map(|i| StoredLead {
            lead: leadpipe_graph::Lead::from_json(&format!(
                r#"{{"id":"{}","created_time":{},"form_id":"{}","field_data":[{{"name":"city","values":["Porto"]}},{{"name":"q{}","values":["=1+1"]}}]}}"#,
                9_000_000 + i,
                1_796_014_800 - 60 * i as i64,
                if i % 2 == 0 { "71" } else { "72" },
                i % 3
            ))
            .unwrap(),
            page_id: "7".into(),
            form_id: Some(if i % 2 == 0 { "71" } else { "72" }.into()),
            source: LeadSourceKind::Webhook,
            ingested_at: time::OffsetDateTime::now_utc(),
            readable: Default::default(),
        })
        .collect();
    for chunk in leads.chunks(50) {
        store.put_leads(chunk).await.unwrap();
    }
    let (ok, all) = run(
        &["export", "--leads-table", &table, "--format", "jsonl"],
        &moto,
    )
    .await;
    assert!(ok, "{all}");
    let ids: BTreeSet<String> = all
        .lines()
        .filter(|l| l.starts_with('{') && l.contains("\"lead_id\""))
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["lead_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 300, "every lead once across the scan's segments");
    // Form 71, the last hour (created 04:00:00 to before 05:00:00): 30 leads, CSV.
    let (ok, csv) = run(
        &[
            "export",
            "--leads-table",
            &table,
            "--form",
            "71",
            "--since",
            "2026-11-30T04:00:00Z",
            "--until",
            "1796014800",
        ],
        &moto,
    )
    .await;
    assert!(ok, "{csv}");
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let header: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_owned)
        .collect();
    assert!(
        header.contains(&"field:city".to_owned()) && header.contains(&"field:q2".to_owned()),
        "{header:?}"
    );
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 30);
    assert!(rows.iter().all(|r| &r[3] == "71"));
    assert!(
        csv.contains("'=1+1"),
        "cells a spreadsheet would run are neutralised"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs moto: run scripts/test"]
async fn status_reads_the_stack_by_its_outputs() {
    let moto = moto_endpoint().expect("moto");
    let config = leadpipe_aws::sdk_config().await;
    let ddb = aws_sdk_dynamodb::Client::new(&config);
    let sqs = aws_sdk_sqs::Client::new(&config);
    let leads_table = unique_name("status-leads");
    let state_table = unique_name("status-state");
    leadpipe_aws::dynamo::create_leads_table(&ddb, &leads_table)
        .await
        .unwrap();
    leadpipe_aws::dynamo::create_state_table(&ddb, &state_table)
        .await
        .unwrap();
    let queue_url = queue(&sqs, "status-queue", None).await;
    let dlq = queue(&sqs, "status-dlq", None).await;
    for (lead, class) in [("1", "token"), ("2", "token"), ("3", "not_found")] {
        dead_letter(&sqs, &dlq, lead, class, 0).await;
    }
    sqs.send_message()
        .queue_url(&queue_url)
        .message_body("{}")
        .send()
        .await
        .unwrap();
    let checkpoints = leadpipe_aws::DynamoCheckpointStore::from_client(ddb.clone(), &state_table);
    use leadpipe_core::ports::CheckpointStore;
    checkpoints
        .save_checkpoint(
            "form#71",
            1_796_000_000,
            &leadpipe_core::ports::RunFacts {
                leads_read: 12,
                new: 5,
                already_present: 7,
            },
        )
        .await
        .unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let store = DynamoLeadStore::from_client(ddb.clone(), &leads_table);
    let leads: Vec<StoredLead> = [3_600, 2 * 86_400, 30 * 86_400]
        .iter()
        .enumerate()
        .map(|(i, age)| StoredLead {
            lead: leadpipe_graph::Lead::from_json(&format!(
                r#"{{"id":"{}","created_time":{},"form_id":"71"}}"#,
                9_100_000 + i,
                now - age
            ))
            .unwrap(),
            page_id: "7".into(),
            form_id: Some("71".into()),
            source: LeadSourceKind::Webhook,
            ingested_at: time::OffsetDateTime::now_utc(),
            readable: Default::default(),
        })
        .collect();
    store.put_leads(&leads).await.unwrap();
    // A stack whose outputs name them, as the template's do.
    let stack = unique_name("status-stack");
    let template = serde_json::json!({
        "Resources": {"Marker": {"Type": "AWS::SQS::Queue"}},
        "Outputs": {
            "LeadsTableName": {"Value": leads_table}, "StateTableName": {"Value": state_table},
            "LeadEventsQueueUrl": {"Value": queue_url}, "DeadLetterQueueUrl": {"Value": dlq}
        }
    });
    aws_sdk_cloudformation::Client::new(&config)
        .create_stack()
        .stack_name(&stack)
        .template_body(template.to_string())
        .send()
        .await
        .unwrap();
    let (ok, text) = run(&["status", "--stack", &stack, "--json"], &moto).await;
    assert!(!ok, "dead letters need a person: {text}");
    let report: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(report["target"], "stack");
    assert_eq!(report["queue"]["waiting"], 1, "{report}");
    let classes: BTreeSet<(String, u64)> = report["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["reason_class"].as_str().unwrap().to_owned(),
                d["count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        classes,
        BTreeSet::from([("not_found".to_owned(), 1), ("token".to_owned(), 2)])
    );
    assert_eq!(report["checkpoints"][0]["key"], "form#71");
    assert_eq!(report["checkpoints"][0]["read_to"], "2026-11-30T00:53:20Z");
    assert_eq!(report["checkpoints"][0]["last_run"]["new"], 5);
    assert_eq!(report["checkpoints"][0]["last_run"]["already_present"], 7);
    assert_eq!(report["leads_per_form"][0]["form_id"], "71");
    assert_eq!(report["leads_per_form"][0]["last_24h"], 1);
    assert_eq!(report["leads_per_form"][0]["last_7d"], 2);
    assert_eq!(
        report["needs_a_person"],
        serde_json::json!(["dead_letters"])
    );

    // The same shape on the local file: every key the stack's report has, the local one
    // has, part by part (a part one side cannot read is null there).
    let dir = std::env::temp_dir().join(format!("leadpipe-status-shape-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db_path = dir.join("leads.db");
    {
        let db = leadpipe_local::LocalDb::open(&db_path).unwrap();
        db.put_leads(&leads).await.unwrap();
        db.save_checkpoint(
            "form#71",
            1_796_000_000,
            &leadpipe_core::ports::RunFacts {
                leads_read: 12,
                new: 5,
                already_present: 7,
            },
        )
        .await
        .unwrap();
        use leadpipe_core::ports::QueueControl;
        let control = leadpipe_local::LocalQueueControl {
            db: db.clone(),
            max_delay: std::time::Duration::from_secs(1),
        };
        control
            .dead_letter(
                r#"{"leadgen_id":"1","page_id":"7"}"#,
                &leadpipe_core::ports::DeadLetterReason {
                    class: leadpipe_core::ports::DeadLetterClass::Token,
                    detail: "code 190".into(),
                },
            )
            .await
            .unwrap();
    }
    let out = tokio::process::Command::new(binary("leadpipe"))
        .args(["status", "--json", "--db"])
        .arg(&db_path)
        .output()
        .await
        .unwrap();
    let local: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    fn keys(v: &serde_json::Value) -> BTreeSet<String> {
        match v {
            serde_json::Value::Object(map) => map.keys().cloned().collect(),
            serde_json::Value::Array(items) => items.iter().flat_map(keys).collect(),
            _ => BTreeSet::new(),
        }
    }
    assert_eq!(keys(&local), keys(&report), "{local}\n{report}");
    for part in ["queue", "dead_letters", "checkpoints", "leads_per_form"] {
        assert_eq!(keys(&local[part]), keys(&report[part]), "{part}");
    }
    assert_eq!(
        keys(&local["checkpoints"][0]["last_run"]),
        keys(&report["checkpoints"][0]["last_run"])
    );
    let _ = std::fs::remove_dir_all(&dir);
    // Reading the dead letters gave them back.
    assert_eq!(
        leadpipe_aws::operate::take_all(&sqs, &dlq, 60)
            .await
            .unwrap()
            .len(),
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs moto: run scripts/test"]
async fn lookup_keys_makes_leads_stored_without_them_findable_on_the_stack() {
    let moto = moto_endpoint().expect("moto");
    let config = leadpipe_aws::sdk_config().await;
    let ddb = aws_sdk_dynamodb::Client::new(&config);
    let table = unique_name("keys-leads");
    leadpipe_aws::dynamo::create_leads_table(&ddb, &table)
        .await
        .unwrap();
    // Stored before the secret had a lookup key: no email_key, no phone_key.
    let store = DynamoLeadStore::from_client(ddb.clone(), &table);
    let leads: Vec<StoredLead> = (0..30)
        .map(|i| stored(i, &format!("person{i}@example.org")))
        .collect();
    store.put_leads(&leads).await.unwrap();
    let (ok, text) = run(
        &[
            "forget",
            "--email",
            "person7@example.org",
            "--leads-table",
            &table,
        ],
        &moto,
    )
    .await;
    assert!(ok && text.contains("forgot 0 lead(s)"), "{text}");
    assert!(text.contains("lookup-keys --dry-run"), "{text}");
    let (ok, text) = run(
        &["lookup-keys", "--dry-run", "--leads-table", &table],
        &moto,
    )
    .await;
    assert!(
        ok && text.contains("would add lookup keys to 30 lead(s)"),
        "{text}"
    );
    let (ok, text) = run(&["lookup-keys", "--leads-table", &table], &moto).await;
    assert!(
        ok && text.contains("added lookup keys to 30 lead(s)"),
        "{text}"
    );
    let (ok, text) = run(&["lookup-keys", "--leads-table", &table], &moto).await;
    assert!(
        ok && text.contains("added lookup keys to 0 lead(s)"),
        "{text}"
    );
    let (ok, text) = run(
        &[
            "forget",
            "--email",
            "Person7@Example.org",
            "--leads-table",
            &table,
        ],
        &moto,
    )
    .await;
    assert!(
        ok && text.contains("forgot 1 lead(s) found by email_key: 7000007"),
        "{text}"
    );
}
