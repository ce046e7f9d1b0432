//! The compiled `leadpipe-webhook` binary, run as Lambda runs it, under the project's
//! Runtime API harness, with moto behind it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use leadpipe_lambda_harness::RuntimeApi;
use leadpipe_lambda_harness::events::{HttpEvent, HttpFront};
use std::path::Path;
use std::time::Duration;

const BINARY: &str = env!("CARGO_BIN_EXE_leadpipe-webhook");
const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
#[ignore = "needs moto: run scripts/test"]
async fn the_binary_answers_function_url_requests_through_the_runtime_api() {
    let (client, url) = moto_queue().await;
    let api = RuntimeApi::start("leadpipe-webhook").await.unwrap();
    let mut env = leadpipe_lambda_harness::aws_env();
    env.extend([
        ("QUEUE_URL".to_owned(), url.clone()),
        ("APP_SECRET".to_owned(), APP_SECRET.to_owned()),
        ("VERIFY_TOKEN".to_owned(), VERIFY_TOKEN.to_owned()),
    ]);
    let function = api
        .spawn_function(Path::new(BINARY), "leadpipe-webhook", &env)
        .unwrap();
    api.first_poll(WAIT)
        .await
        .expect("the function polls for work");

    // Verification handshake.
    let query = [
        ("hub.mode", "subscribe"),
        ("hub.verify_token", VERIFY_TOKEN),
        ("hub.challenge", "987654321"),
    ];
    let get = HttpEvent {
        front: HttpFront::FunctionUrl,
        method: "GET",
        query: &query,
        headers: &[],
        body: b"",
        base64: false,
    };
    let answer = api
        .invoke(&get.to_json(), WAIT, WAIT)
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(answer["statusCode"], 200, "{answer}");
    assert_eq!(answer["body"], "987654321");

    // A signed post, base64-encoded by Lambda.
    let signature = sign(POST.as_bytes());
    let headers = [("x-hub-signature-256", signature.as_str())];
    let post = HttpEvent {
        front: HttpFront::FunctionUrl,
        method: "POST",
        query: &[],
        headers: &headers,
        body: POST.as_bytes(),
        base64: true,
    };
    let answer = api
        .invoke(&post.to_json(), WAIT, WAIT)
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(answer["statusCode"], 200, "{answer}");
    assert_contract_messages(&drain(&client, &url).await);

    // A forged post.
    let forged = [(
        "x-hub-signature-256",
        "sha256=0000000000000000000000000000000000000000000000000000000000000000",
    )];
    let post = HttpEvent {
        headers: &forged,
        ..post
    };
    let answer = api
        .invoke(&post.to_json(), WAIT, WAIT)
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(answer["statusCode"], 403, "{answer}");
    assert!(drain(&client, &url).await.is_empty());

    // Give the log collector a moment, then check what the function wrote.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logs = function.logs();
    assert!(
        logs.iter()
            .filter(|l| l.contains("webhook delivery"))
            .count()
            >= 2,
        "{logs:#?}"
    );
    for line in &logs {
        assert!(!line.contains(APP_SECRET), "secret in log: {line}");
        assert!(!line.contains(VERIFY_TOKEN), "verify token in log: {line}");
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|_| panic!("log line is not JSON: {line}"));
    }
}

#[tokio::test]
async fn the_binary_refuses_to_start_without_its_settings() {
    let api = RuntimeApi::start("leadpipe-webhook").await.unwrap();
    let env = [("QUEUE_URL".to_owned(), String::new())];
    let mut function = api
        .spawn_function(Path::new(BINARY), "leadpipe-webhook", &env)
        .unwrap();
    // It must not reach the poll loop; the log says which setting is missing.
    assert!(api.first_poll(Duration::from_secs(3)).await.is_err());
    let logs = function.logs();
    assert!(
        logs.iter().any(|l| l.contains("QUEUE_URL is not set")),
        "{logs:#?}"
    );
    let _ = function.kill().await;
}
