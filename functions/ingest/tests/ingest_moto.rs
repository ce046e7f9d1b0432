//! Ingest with its real adapters: moto's SQS and DynamoDB, and an HTTP Graph stand-in.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use aws_lambda_events::event::sqs::SqsEvent;
use common::*;
use leadpipe_aws::{DynamoLeadStore, SqsQueueControl};
use leadpipe_core::secrets::AppSecrets;
use leadpipe_graph::{GraphClient, GraphConfig, RetryPolicy};
use leadpipe_graph_source::GraphLeadFetcher;
use leadpipe_ingest::IngestApp;
use leadpipe_lambda_harness::events::sqs_event_from;
use secrecy::SecretString;
use std::collections::BTreeMap;
use std::time::Duration;

type App = IngestApp<GraphLeadFetcher, DynamoLeadStore, SqsQueueControl>;

fn secrets() -> AppSecrets {
    AppSecrets {
        app_secret: SecretString::from(APP_SECRET),
        verify_token: None,
        lookup_key: None,
        conversions_token: None,
        stage_keys: Vec::new(),
        destinations: Default::default(),
        destinations_file: None,
        access_token: Some(SecretString::from(ACCESS_TOKEN)),
        page_tokens: BTreeMap::new(),
    }
}

fn app(moto: &Moto, graph: &wiremock::MockServer, store_client: aws_sdk_dynamodb::Client) -> App {
    let client = GraphClient::new(GraphConfig {
        base_url: graph.uri(),
        app_secret: Some(SecretString::from(APP_SECRET)),
        retry: RetryPolicy {
            max_retries: 1,
            min_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(20),
        },
        ..GraphConfig::default()
    })
    .unwrap();
    IngestApp::new(
        GraphLeadFetcher::new(client, secrets()),
        DynamoLeadStore::from_client(store_client, &moto.leads_table),
        SqsQueueControl::new(moto.sqs.clone(), &moto.queue_url, &moto.dlq_url),
    )
}

fn sqs_event(records: &[(String, String, String)]) -> SqsEvent {
    serde_json::from_value(sqs_event_from(records)).unwrap()
}

fn failures(response: &aws_lambda_events::event::sqs::SqsBatchResponse) -> Vec<String> {
    response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect()
}

fn lambda_event(event: SqsEvent) -> lambda_runtime::LambdaEvent<SqsEvent> {
    lambda_runtime::LambdaEvent::new(event, lambda_runtime::Context::default())
}

#[tokio::test]
#[ignore = "needs moto: run scripts/test"]
async fn a_batch_of_ten_stores_seven_and_reports_exactly_the_failed_ones() {
    let moto = Moto::new("ingest").await;
    let graph = graph_stand_in().await;
    let app = app(&moto, &graph, moto.ddb.clone());

    let good = [
        "1001", "1002", "1003", "org_1004", "1005", "1006", "org_1007",
    ];
    let mut bodies: Vec<String> = good.iter().map(|id| event_body(id)).collect();
    bodies.push(r#"{"leadgen_id": 5, "oops""#.to_owned());
    bodies.push(event_body("gone_2001"));
    bodies.push(event_body("limited_3001"));
    let records = moto.deliver(&bodies).await;
    let id_of = |body: &str| records.iter().find(|r| r.2 == body).unwrap().0.clone();

    let response = app.handle(lambda_event(sqs_event(&records))).await.unwrap();

    // Only the rate-limited message is left for SQS to bring back.
    assert_eq!(failures(&response), [id_of(&event_body("limited_3001"))]);

    let items = moto.items().await;
    assert_eq!(items.len(), 7);
    for id in good {
        assert_item_is_lead(&items[id], id, "webhook");
    }

    // The malformed body and the deleted lead are in the DLQ, each with its reason.
    let mut dead = moto.dead_letters().await;
    dead.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert_eq!(dead[0].1, "malformed");
    assert_eq!(dead[0].0, r#"{"leadgen_id": 5, "oops""#);
    assert_eq!(dead[1].1, "not_found");
    assert_eq!(dead[1].0, event_body("gone_2001"));
    assert!(dead[1].2.contains("code 100/33"), "{}", dead[1].2);

    // The rate-limited message was parked: after the queue's 1 s visibility timeout the
    // other nine come back (nothing deleted them here; Lambda's poller would), it does not.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let back = moto
        .sqs
        .receive_message()
        .queue_url(&moto.queue_url)
        .max_number_of_messages(10)
        .send()
        .await
        .unwrap();
    let back_ids: Vec<&str> = back
        .messages()
        .iter()
        .filter_map(|m| m.message_id())
        .collect();
    assert!(!back_ids.is_empty());
    assert!(
        !back_ids.contains(&id_of(&event_body("limited_3001")).as_str()),
        "{back_ids:?}"
    );
}

#[tokio::test]
#[ignore = "needs moto: run scripts/test"]
async fn the_same_message_twice_leaves_one_item_with_the_first_ingest() {
    let moto = Moto::new("ingest").await;
    let graph = graph_stand_in().await;
    let app = app(&moto, &graph, moto.ddb.clone());
    let records = moto.deliver(&[event_body("4001")]).await;

    let first = app.handle(lambda_event(sqs_event(&records))).await.unwrap();
    assert!(failures(&first).is_empty());
    let before = moto.items().await["4001"].clone();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Duplicated within one batch, and again in a later one.
    let twice = vec![
        records[0].clone(),
        (
            format!("{}-dup", records[0].0),
            records[0].1.clone(),
            records[0].2.clone(),
        ),
    ];
    let second = app.handle(lambda_event(sqs_event(&twice))).await.unwrap();
    assert!(failures(&second).is_empty());

    let items = moto.items().await;
    assert_eq!(items.len(), 1);
    assert_eq!(items["4001"]["ingested_at"], before["ingested_at"]);
    assert_eq!(items["4001"]["source"], before["source"]);
    let report = app.ingest(&sqs_event(&records)).await;
    assert_eq!((report.stored_new(), report.duplicates()), (0, 1));
}

#[tokio::test]
#[ignore = "needs moto: run scripts/test"]
async fn dynamodb_unreachable_fails_every_message_and_stores_nothing() {
    let moto = Moto::new("ingest").await;
    let graph = graph_stand_in().await;
    let config = leadpipe_aws::sdk_config().await;
    let unreachable = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&config)
            .endpoint_url("http://127.0.0.1:9")
            .build(),
    );
    let app = app(&moto, &graph, unreachable);
    let bodies: Vec<String> = ["5001", "5002", "org_5003"]
        .iter()
        .map(|id| event_body(id))
        .collect();
    let records = moto.deliver(&bodies).await;

    let response = app.handle(lambda_event(sqs_event(&records))).await.unwrap();
    let mut failed = failures(&response);
    failed.sort();
    let mut all: Vec<String> = records.iter().map(|r| r.0.clone()).collect();
    all.sort();
    assert_eq!(failed, all);
    assert!(moto.items().await.is_empty());
    assert!(moto.dead_letters().await.is_empty());
}

#[tokio::test]
#[ignore = "needs moto: run scripts/test"]
async fn a_refused_token_dead_letters_with_its_reason() {
    let moto = Moto::new("ingest").await;
    let graph = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(wiremock::ResponseTemplate::new(400).set_body_json(serde_json::json!({"error": {
            "message": "Error validating access token: Session has expired", "type": "OAuthException",
            "code": 190, "error_subcode": 463, "fbtrace_id": "T1"}})))
        .mount(&graph)
        .await;
    let app = app(&moto, &graph, moto.ddb.clone());
    let records = moto
        .deliver(&[event_body("6001"), event_body("6002")])
        .await;
    let response = app.handle(lambda_event(sqs_event(&records))).await.unwrap();
    assert!(failures(&response).is_empty());
    let dead = moto.dead_letters().await;
    assert_eq!(dead.len(), 2);
    assert!(
        dead.iter()
            .all(|d| d.1 == "token" && d.2.contains("190/463")),
        "{dead:?}"
    );
    // One batch call for both leads: they share a page.
    assert_eq!(graph.received_requests().await.unwrap().len(), 1);
}
