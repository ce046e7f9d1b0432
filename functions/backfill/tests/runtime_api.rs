//! The compiled `leadpipe-backfill` binary under the Runtime API harness, fed the scheduled
//! event `sam local generate-event cloudwatch scheduled-event` makes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use leadpipe_lambda_harness::RuntimeApi;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const BINARY: &str = env!("CARGO_BIN_EXE_leadpipe-backfill");
const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
#[ignore = "needs moto: run scripts/test"]
async fn the_binary_runs_a_scheduled_backfill_through_the_runtime_api() {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let data = Arc::new(Mutex::new(three_forms(now)));
    let graph = graph_stand_in(data).await;
    let moto = Moto::new("bf").await;
    // The SECRET_ARN path: the secret lives in moto's Secrets Manager.
    let config = leadpipe_aws::sdk_config().await;
    let secrets = aws_sdk_secretsmanager_client(&config);
    let secret = serde_json::json!({"app_secret": APP_SECRET, "page_tokens": {PAGE_A: TOKEN_A, PAGE_B: TOKEN_B}});
    let arn = secrets
        .create_secret()
        .name(leadpipe_lambda_harness::unique_name("leadpipe"))
        .secret_string(secret.to_string())
        .send()
        .await
        .unwrap()
        .arn
        .unwrap();

    let api = RuntimeApi::start("leadpipe-backfill").await.unwrap();
    let mut env = leadpipe_lambda_harness::aws_env();
    env.extend(
        [
            ("LEADS_TABLE", moto.leads_table.clone()),
            ("STATE_TABLE", moto.state_table.clone()),
            ("DLQ_URL", moto.dlq_url.clone()),
            ("SECRET_ARN", arn),
            ("GRAPH_API_BASE", graph.uri()),
            ("BACKFILL_PAGE_SIZE", "4".to_owned()),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    );
    let function = api
        .spawn_function(Path::new(BINARY), "leadpipe-backfill", &env)
        .unwrap();
    api.first_poll(WAIT)
        .await
        .expect("the function polls for work");

    let event = leadpipe_lambda_harness::events::scheduled_event();
    let summary = api
        .invoke(&event, Duration::from_secs(300), WAIT)
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(summary["new"], 24, "{summary}");
    assert_eq!(summary["pages"].as_array().unwrap().len(), 2);
    assert_eq!(moto.items().await.len(), 24);

    // A bad on-demand payload is a function error with a clear message.
    let outcome = api
        .invoke(
            &serde_json::json!({"from": "last tuesday"}),
            Duration::from_secs(60),
            WAIT,
        )
        .await
        .unwrap();
    match outcome {
        leadpipe_lambda_harness::Outcome::Error(err) => {
            assert!(err.to_string().contains("RFC 3339"), "{err}");
            assert!(err.to_string().contains("BackfillRequestRefused"), "{err}")
        }
        other => panic!("expected an error, got {other:?}"),
    }

    tokio::time::sleep(Duration::from_millis(200)).await;
    for line in function.logs() {
        for secret in [APP_SECRET, TOKEN_A, TOKEN_B, "@example.org", "+15550100"] {
            assert!(!line.contains(secret), "{secret} in log: {line}");
        }
    }
}

fn aws_sdk_secretsmanager_client(config: &aws_config::SdkConfig) -> aws_sdk_secretsmanager::Client {
    aws_sdk_secretsmanager::Client::new(config)
}
