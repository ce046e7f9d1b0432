//! The compiled `leadpipe-ingest` binary under the Runtime API harness, with moto and an
//! HTTP Graph stand-in, fed an SQS event of `sam local generate-event sqs receive-message`'s shape.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use leadpipe_lambda_harness::RuntimeApi;
use leadpipe_lambda_harness::events::sqs_event_from;
use std::path::Path;
use std::time::Duration;

const BINARY: &str = env!("CARGO_BIN_EXE_leadpipe-ingest");
const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
#[ignore = "needs moto: run scripts/test"]
async fn the_binary_ingests_an_sqs_event_through_the_runtime_api() {
    let moto = Moto::new("ingest").await;
    let graph = graph_stand_in().await;
    let api = RuntimeApi::start("leadpipe-ingest").await.unwrap();
    let mut env = leadpipe_lambda_harness::aws_env();
    env.extend(
        [
            ("QUEUE_URL", moto.queue_url.clone()),
            ("DLQ_URL", moto.dlq_url.clone()),
            ("LEADS_TABLE", moto.leads_table.clone()),
            ("STATE_TABLE", moto.state_table.clone()),
            ("APP_SECRET", APP_SECRET.to_owned()),
            ("ACCESS_TOKEN", ACCESS_TOKEN.to_owned()),
            ("GRAPH_API_BASE", graph.uri()),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    );
    let function = api
        .spawn_function(Path::new(BINARY), "leadpipe-ingest", &env)
        .unwrap();
    api.first_poll(WAIT)
        .await
        .expect("the function polls for work");

    let records = moto
        .deliver(&[
            event_body("7001"),
            event_body("org_7002"),
            event_body("gone_7003"),
        ])
        .await;
    let answer = api
        .invoke(&sqs_event_from(&records), WAIT, WAIT)
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(answer, serde_json::json!({"batchItemFailures": []}));
    let items = moto.items().await;
    assert_eq!(items.len(), 2);
    assert_item_is_lead(&items["7001"], "7001", "webhook");
    assert_item_is_lead(&items["org_7002"], "org_7002", "webhook");
    assert_eq!(moto.dead_letters().await.len(), 1);

    tokio::time::sleep(Duration::from_millis(200)).await;
    let logs = function.logs();
    assert!(logs.iter().any(|l| l.contains("ingest batch")), "{logs:#?}");
    for line in &logs {
        for secret in [
            APP_SECRET,
            ACCESS_TOKEN,
            "7001@example.com",
            "Ada Lovelace",
            "oil change",
            "99213450",
        ] {
            assert!(!line.contains(secret), "{secret} in log: {line}");
        }
    }
}
