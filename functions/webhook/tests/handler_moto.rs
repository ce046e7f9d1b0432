//! The webhook handler with the real SQS adapter against moto's server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use lambda_http::Body;
use leadpipe_aws::SqsEventQueue;
use leadpipe_core::accept::WebhookSecrets;
use leadpipe_lambda_harness::events::{HttpEvent, HttpFront};
use leadpipe_webhook::WebhookApp;
use secrecy::SecretString;

fn app(queue: SqsEventQueue) -> WebhookApp<SqsEventQueue> {
    WebhookApp::new(
        WebhookSecrets {
            app_secret: SecretString::from(APP_SECRET),
            verify_token: SecretString::from(VERIFY_TOKEN),
        },
        queue,
    )
}

async fn call(app: &WebhookApp<SqsEventQueue>, event: HttpEvent<'_>) -> (u16, String) {
    let request = lambda_http::request::from_str(&event.to_json().to_string()).expect("event");
    let response = app.handle(request).await.unwrap();
    let body = match response.body() {
        Body::Text(t) => t.clone(),
        Body::Binary(b) => String::from_utf8_lossy(b).into_owned(),
        _ => String::new(),
    };
    (response.status().as_u16(), body)
}

fn post<'a>(front: HttpFront, headers: &'a [(&'a str, &'a str)], base64: bool) -> HttpEvent<'a> {
    HttpEvent {
        front,
        method: "POST",
        query: &[],
        headers,
        body: POST.as_bytes(),
        base64,
    }
}

#[tokio::test]
#[ignore = "needs moto: run scripts/test"]
async fn signed_post_leaves_exactly_the_contract_messages() {
    let (client, url) = moto_queue().await;
    let app = app(SqsEventQueue::from_client(client.clone(), &url));
    let signature = sign(POST.as_bytes());
    let headers = [("x-hub-signature-256", signature.as_str())];
    for (front, base64) in [(HttpFront::FunctionUrl, true), (HttpFront::HttpApi, false)] {
        let (status, body) = call(&app, post(front, &headers, base64)).await;
        assert_eq!(
            (status, body.as_str()),
            (200, "EVENT_RECEIVED"),
            "{front:?}"
        );
        assert_contract_messages(&drain(&client, &url).await);
    }
}

#[tokio::test]
#[ignore = "needs moto: run scripts/test"]
async fn bad_signatures_leave_nothing_queued() {
    let (client, url) = moto_queue().await;
    let app = app(SqsEventQueue::from_client(client.clone(), &url));
    let good = sign(POST.as_bytes());
    let other_secret = leadpipe_core::signature::sign(b"another-secret", POST.as_bytes()).unwrap();
    let altered = format!(
        "{}{}",
        &good[..good.len() - 1],
        if good.ends_with('0') { '1' } else { '0' }
    );
    let sha1 = format!("sha1={}", &good[7..47]);
    let cases: Vec<Vec<(&str, &str)>> = vec![
        vec![],
        vec![("x-hub-signature", sha1.as_str())],
        vec![("x-hub-signature-256", other_secret.as_str())],
        vec![("x-hub-signature-256", altered.as_str())],
        vec![("x-hub-signature-256", &good[..good.len() - 2])],
    ];
    for headers in &cases {
        let (status, _) = call(&app, post(HttpFront::FunctionUrl, headers, false)).await;
        assert_eq!(status, 403, "{headers:?}");
    }
    // A body altered after signing, with the old signature.
    let tampered = POST.replace("1900000000000001", "1900000000000009");
    let headers = [("x-hub-signature-256", good.as_str())];
    let event = HttpEvent {
        body: tampered.as_bytes(),
        ..post(HttpFront::FunctionUrl, &headers, false)
    };
    assert_eq!(call(&app, event).await.0, 403);
    assert!(drain(&client, &url).await.is_empty());
}

#[tokio::test]
#[ignore = "needs moto: run scripts/test"]
async fn signed_malformed_json_is_400_and_verification_works() {
    let (client, url) = moto_queue().await;
    let app = app(SqsEventQueue::from_client(client.clone(), &url));
    let body = br#"{"object":"page","entry":[{"changes":"#;
    let signature = sign(body);
    let headers = [("x-hub-signature-256", signature.as_str())];
    let event = HttpEvent {
        body,
        ..post(HttpFront::FunctionUrl, &headers, false)
    };
    assert_eq!(call(&app, event).await.0, 400);
    assert!(drain(&client, &url).await.is_empty());

    let query = [
        ("hub.mode", "subscribe"),
        ("hub.verify_token", VERIFY_TOKEN),
        ("hub.challenge", "1158201444"),
    ];
    let get = HttpEvent {
        front: HttpFront::FunctionUrl,
        method: "GET",
        query: &query,
        headers: &[],
        body: b"",
        base64: false,
    };
    assert_eq!(call(&app, get).await, (200, "1158201444".to_owned()));
    let wrong = [
        ("hub.mode", "subscribe"),
        ("hub.verify_token", "nope"),
        ("hub.challenge", "1"),
    ];
    let get = HttpEvent {
        query: &wrong,
        ..get
    };
    assert_eq!(call(&app, get).await.0, 403);
}

#[tokio::test]
#[ignore = "needs moto: run scripts/test"]
async fn unreachable_sqs_is_a_5xx_so_meta_retries() {
    leadpipe_lambda_harness::moto_endpoint().expect("moto");
    let config = leadpipe_aws::sdk_config().await;
    let client = aws_sdk_sqs::Client::from_conf(
        aws_sdk_sqs::config::Builder::from(&config)
            .endpoint_url("http://127.0.0.1:9")
            .build(),
    );
    let app = app(SqsEventQueue::from_client(
        client,
        "http://127.0.0.1:9/123456789012/q",
    ));
    let signature = sign(POST.as_bytes());
    let headers = [("x-hub-signature-256", signature.as_str())];
    let (status, _) = call(&app, post(HttpFront::FunctionUrl, &headers, false)).await;
    assert_eq!(status, 503);
}
