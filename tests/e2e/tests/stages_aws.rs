//! Stages back to Meta on the AWS path (docs/stages.md), with the compiled functions under
//! Lambda Runtime APIs and moto for SQS, DynamoDB and EventBridge: `Lead Stage Changed`
//! events put on the stack's bus reach the stage queue through a rule as the template
//! wires it, `POST /stages` goes through the webhook's Function URL event, deliver queues
//! each new lead's initial stage from the leads table's stream, and the stages function
//! sends them. The sandbox's dataset, with Meta's rules, must receive exactly one event
//! per (lead, stage), none before its lead, none older than 7 days, and no good event is
//! lost to the one Meta refuses; each refused stage waits in the stages' DLQ with its class.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use leadpipe_core::ports::{LeadSourceKind, LeadStore, StoredLead};
use leadpipe_e2e::aws::Aws;
use leadpipe_e2e::start;
use leadpipe_lambda_harness::dead_letters;
use leadpipe_lambda_harness::events::{HttpEvent, HttpFront};
use leadpipe_sandbox::{Dataset, DatasetSpec, Faults, Sandbox, conversions};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const APP_SECRET: &str = "stages-e2e-app-secret";
const KEY: &str = "stage-key-e2e-0123456789";
const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs moto: run scripts/test"]
async fn stages_reach_meta_once_from_the_bus_post_and_deliver() {
    let aws = Aws::new().await;
    let config = aws.config.clone();
    let sqs = aws.sqs.clone();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let data = Dataset::generate(&DatasetSpec {
        leads: 24,
        newest: now - 300,
        ..DatasetSpec::default()
    });
    let sandbox = Sandbox::start(data.clone(), Faults::default())
        .await
        .unwrap();

    // ---- the stack: tables, the stage queue and its DLQ, the bus and the rule ----------------
    let (leads_table, state_table) = aws.tables("stages").await;
    let (stages_url, dlq_url) = (
        aws.queue("stages", &[]).await,
        aws.queue("stages-dlq", &[]).await,
    );
    let bus = aws
        .bus_to_queue(
            "stages",
            serde_json::json!({"detail-type": ["Lead Stage Changed"], "source": [{"anything-but": ["leadpipe"]}]}),
            &stages_url,
        )
        .await;
    let eventbridge = aws_sdk_eventbridge::Client::new(&config);

    // ---- the leads, stored as ingest stores them ---------------------------------------------
    let store = leadpipe_aws::DynamoLeadStore::new(&config, leads_table.clone());
    let stored: Vec<StoredLead> = data
        .leads
        .iter()
        .map(|l| {
            let lead =
                leadpipe_graph::Lead::from_json(&sandbox.lead_json(&l.id).unwrap().to_string())
                    .unwrap();
            let readable = leadpipe_core::readable::Readable::of(&lead.field_data, None);
            StoredLead {
                lead,
                page_id: l.page_id.clone(),
                form_id: Some(l.form_id.clone()),
                source: LeadSourceKind::Webhook,
                ingested_at: time::OffsetDateTime::now_utc(),
                readable,
            }
        })
        .collect();
    store.put_leads(&stored).await.unwrap();

    // The stack's secret, as `connect --dataset` and the stage keys leave it.
    let secret_arn = aws
        .secret(
            "stages-secret",
            &serde_json::json!({"app_secret": APP_SECRET, "verify_token": "vt",
                "conversions_token": conversions::TOKEN, "stage_keys": ["old-unused-key-000", KEY]}),
        )
        .await;

    // ---- functions, each behind a recording proxy (the least-privilege test reads it) ----------
    let mut env = leadpipe_lambda_harness::aws_env();
    env.extend(
        [
            ("SECRET_ARN", secret_arn.as_str()),
            ("CONVERSIONS_DATASET_ID", conversions::DATASET_ID),
            ("CONVERSIONS_TEST_EVENT_CODE", "TEST77"),
            ("GRAPH_API_BASE", sandbox.base_url().as_str()),
            ("LEADS_TABLE", leads_table.as_str()),
            ("STATE_TABLE", state_table.as_str()),
            ("DLQ_URL", dlq_url.as_str()),
            ("STAGES_QUEUE_URL", stages_url.as_str()),
            ("QUEUE_URL", stages_url.as_str()),
            ("EVENT_BUS_NAME", bus.as_str()),
            ("RUST_LOG", "info"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    let with_endpoint = |url: &str| {
        let mut env = env.clone();
        env.retain(|(k, _)| k != "AWS_ENDPOINT_URL");
        env.push(("AWS_ENDPOINT_URL".into(), url.to_owned()));
        env
    };
    let stages_proxy = aws.recorder(&aws.endpoint).await;
    let webhook_proxy = aws.recorder(&aws.endpoint).await;
    let deliver_proxy = aws.recorder(&aws.endpoint).await;
    let stages_fn = start("leadpipe-stages", &with_endpoint(&stages_proxy.url)).await;
    let webhook = start("leadpipe-webhook", &with_endpoint(&webhook_proxy.url)).await;
    let deliver = start("leadpipe-deliver", &with_endpoint(&deliver_proxy.url)).await;

    // ---- initial stages: the leads table's stream through deliver ------------------------------
    let streamed = aws.stream_through(&leads_table, &deliver, 1000).await;
    assert_eq!(streamed.records, data.leads.len());
    assert_eq!(streamed.retried, 0, "deliver reported no failed record");

    // ---- CRM stages: on the bus, and through POST /stages ------------------------------------
    // Meta will refuse any request holding lead 3: it alone must wait.
    sandbox.refuse_lead_in_events(&data.leads[3].id);
    let mut entries = Vec::new();
    for lead in &data.leads[..12] {
        entries.push(
            aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
                .event_bus_name(&bus)
                .source("crm.hubspot")
                .detail_type("Lead Stage Changed")
                .detail(serde_json::json!({"lead_id": lead.id, "stage": "Qualified", "stage_time": time::OffsetDateTime::from_unix_timestamp(now - 60).unwrap().format(&time::format_description::well_known::Rfc3339).unwrap()}).to_string())
                .build(),
        );
    }
    // leadpipe's own source never counts as a stage; one before its lead is refused.
    entries.push(
        aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
            .event_bus_name(&bus)
            .source("leadpipe")
            .detail_type("Lead Stage Changed")
            .detail(serde_json::json!({"lead_id": data.leads[0].id, "stage": "Ignored", "stage_time": now - 60}).to_string())
            .build(),
    );
    entries.push(
        aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
            .event_bus_name(&bus)
            .source("crm.salesforce")
            .detail_type("Lead Stage Changed")
            .detail(serde_json::json!({"lead_id": data.leads[1].id, "stage": "Won", "stage_time": data.leads[1].created_time - 100}).to_string())
            .build(),
    );
    for chunk in entries.chunks(10) {
        let put = eventbridge
            .put_events()
            .set_entries(Some(chunk.to_vec()))
            .send()
            .await
            .unwrap();
        assert_eq!(put.failed_entry_count(), 0);
    }
    let body = serde_json::json!({"stages": data.leads[12..].iter().map(|l| serde_json::json!({"lead_id": l.id, "stage": "Converted", "stage_time": now - 30, "value": 100, "currency": "EUR"})).chain([serde_json::json!({"lead_id": "777777777777777", "stage": "Converted", "stage_time": now - 30})]).collect::<Vec<_>>()}).to_string();
    for (key, status) in [("wrong-key", 401), (KEY, 202)] {
        let event = HttpEvent {
            front: HttpFront::FunctionUrl,
            method: "POST",
            query: &[],
            headers: &[("x-leadpipe-key", key)],
            body: body.as_bytes(),
            base64: true,
        }
        .to_json_at("/stages");
        let answer = webhook
            .api
            .invoke(&event, Duration::from_secs(10), WAIT)
            .await
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(answer["statusCode"], status, "{answer}");
    }

    // ---- the stage queue through the stages function, as its event source mapping does ---------
    let expected: BTreeSet<(String, String)> = data
        .leads
        .iter()
        // Lead 3's every event is refused, its initial stage too (sent after the refusal).
        .filter(|l| l.id != data.leads[3].id)
        .map(|l| (l.id.clone(), "Lead".to_owned()))
        .chain(
            data.leads[..12]
                .iter()
                .filter(|l| l.id != data.leads[3].id)
                .map(|l| (l.id.clone(), "Qualified".to_owned())),
        )
        .chain(
            data.leads[12..]
                .iter()
                .map(|l| (l.id.clone(), "Converted".to_owned())),
        )
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut empty = 0;
    while Instant::now() < deadline {
        if aws.pump_once(&stages_url, &stages_fn, 5).await == 0 {
            empty += 1;
            if empty >= 3 && sandbox.conversion_events().len() >= expected.len() {
                break;
            }
            continue;
        }
        empty = 0;
    }

    let mut by: BTreeMap<(String, String), usize> = BTreeMap::new();
    for event in sandbox.conversion_events() {
        assert_eq!(event["action_source"], "system_generated");
        assert_eq!(event["custom_data"]["event_source"], "crm");
        assert_eq!(event["test_event_code"], "TEST77");
        assert!(now + 60 - event["event_time"].as_i64().unwrap() < 7 * 86_400);
        *by.entry((
            event["user_data"]["lead_id"].as_str().unwrap().to_owned(),
            event["event_name"].as_str().unwrap().to_owned(),
        ))
        .or_default() += 1;
    }
    assert_eq!(by.keys().cloned().collect::<BTreeSet<_>>(), expected);
    assert!(by.values().all(|n| *n == 1), "one event per (lead, stage)");
    assert!(
        sandbox.conversion_events_dropped().is_empty(),
        "none before its lead"
    );
    // status on the stack reads the same: queued, sent (the ledger's items), refused by class.
    let names = leadpipe_aws::stack::StackNames {
        state_table: Some(state_table.clone()),
        stages_queue_url: Some(stages_url.clone()),
        stages_dlq_url: Some(dlq_url.clone()),
        ..Default::default()
    };
    let source = leadpipe_aws::status::StackStatus::new(&config, &names);
    let status =
        leadpipe_core::status::pipeline_status(&source, "stack", time::OffsetDateTime::now_utc())
            .await
            .unwrap();
    let stages = status.stages.unwrap();
    assert_eq!((stages.queued, stages.sent), (0, expected.len() as u64));
    let refused: BTreeMap<String, u64> = stages
        .refused
        .iter()
        .map(|g| (g.reason_class.clone(), g.count))
        .collect();
    assert_eq!(
        refused,
        BTreeMap::from([
            ("bad_request".to_owned(), 2),
            ("before_lead".to_owned(), 1),
            ("unknown_lead".to_owned(), 1)
        ])
    );
    assert!(
        status
            .needs_a_person
            .contains(&leadpipe_core::status::Need::StagesRefused)
    );
    // Status gave the dead letters back; wait out their short visibility before reading them.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let letters = dead_letters(&sqs, &dlq_url).await.unwrap();
    let classes: BTreeMap<String, usize> =
        letters
            .iter()
            .fold(BTreeMap::new(), |mut m, (_, class, _)| {
                *m.entry(class.clone()).or_default() += 1;
                m
            });
    assert_eq!(
        classes,
        BTreeMap::from([
            ("bad_request".to_owned(), 2),
            ("before_lead".to_owned(), 1),
            ("unknown_lead".to_owned(), 1)
        ])
    );
    for (_, _, reason) in &letters {
        for private in ["Qualified", "Converted", "Won", conversions::TOKEN] {
            assert!(!reason.contains(private), "{reason}");
        }
    }
    for function in [&stages_fn, &webhook, &deliver] {
        for line in function.process.logs() {
            for private in [conversions::TOKEN, KEY, APP_SECRET] {
                assert!(!line.contains(private), "a log line holds a secret: {line}");
            }
        }
    }

    // What each function called, for the least-privilege comparison (infra/tests).
    if let Ok(path) = std::env::var("LEADPIPE_OBSERVED_ACTIONS") {
        let observed = serde_json::json!({
            "stages": stages_proxy.state.aws_calls(),
            "webhook": webhook_proxy.state.aws_calls(),
            "deliver": deliver_proxy.state.aws_calls(),
        });
        println!("stages e2e: AWS calls per function: {observed}");
        std::fs::write(format!("{path}.stages.json"), observed.to_string()).unwrap();
    }
}
