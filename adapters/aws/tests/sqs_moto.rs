//! The SQS adapter against moto's server (real SQS wire protocol). Run by scripts/test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use leadpipe_aws::SqsEventQueue;
use leadpipe_core::event::LeadEvent;
use leadpipe_core::ports::{EventQueue, QueueError};
use leadpipe_lambda_harness::{moto_endpoint, unique_name};
use time::macros::datetime;

async fn moto_queue() -> (aws_sdk_sqs::Client, String) {
    moto_endpoint().expect("moto");
    let config = leadpipe_aws::sdk_config().await;
    let client = aws_sdk_sqs::Client::new(&config);
    let url = client
        .create_queue()
        .queue_name(unique_name("leadpipe-test"))
        .send()
        .await
        .expect("create queue")
        .queue_url
        .expect("queue url");
    (client, url)
}

async fn drain(client: &aws_sdk_sqs::Client, url: &str) -> Vec<String> {
    let mut bodies = Vec::new();
    loop {
        let out = client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .send()
            .await
            .expect("receive");
        let messages = out.messages();
        if messages.is_empty() {
            return bodies;
        }
        for m in messages {
            bodies.push(m.body().unwrap_or_default().to_owned());
            client
                .delete_message()
                .queue_url(url)
                .receipt_handle(m.receipt_handle().unwrap_or_default())
                .send()
                .await
                .expect("delete");
        }
    }
}

fn event(i: usize) -> LeadEvent {
    LeadEvent {
        leadgen_id: format!("{}", 9_000_000 + i),
        page_id: "111".into(),
        form_id: Some("222".into()),
        ad_id: i.is_multiple_of(2).then(|| "333".into()),
        adgroup_id: None,
        created_time: Some(1_700_000_000 + i as i64),
        received_at: datetime!(2026-11-29 05:00:00 UTC),
    }
}

#[tokio::test]
#[ignore = "needs moto: run scripts/test"]
async fn sends_every_event_in_batches_of_ten_exactly_as_the_contract() {
    let (client, url) = moto_queue().await;
    let queue = SqsEventQueue::from_client(client.clone(), &url);
    let events: Vec<_> = (0..25).map(event).collect();
    queue.enqueue(&events).await.expect("enqueue");

    let mut bodies = drain(&client, &url).await;
    bodies.sort();
    let mut expected: Vec<String> = (0..25usize)
        .map(|i| {
            let ad = if i.is_multiple_of(2) { r#","ad_id":"333""# } else { "" };
            format!(
                r#"{{"leadgen_id":"{}","page_id":"111","form_id":"222"{ad},"created_time":{},"received_at":"2026-11-29T05:00:00Z"}}"#,
                9_000_000 + i,
                1_700_000_000 + i
            )
        })
        .collect();
    expected.sort();
    assert_eq!(bodies, expected);
}

#[tokio::test]
#[ignore = "needs moto: run scripts/test"]
async fn a_missing_queue_is_an_error_not_a_silent_success() {
    let (client, url) = moto_queue().await;
    let missing = format!("{url}-does-not-exist");
    let queue = SqsEventQueue::from_client(client, missing);
    let err = queue.enqueue(&[event(1)]).await.unwrap_err();
    assert!(matches!(err, QueueError::Unavailable(_)), "{err:?}");
}

#[tokio::test]
#[ignore = "needs moto: run scripts/test"]
async fn an_unreachable_endpoint_is_unavailable() {
    moto_endpoint().expect("moto");
    let config = leadpipe_aws::sdk_config().await;
    let sqs_config = aws_sdk_sqs::config::Builder::from(&config)
        .endpoint_url("http://127.0.0.1:9")
        .build();
    let client = aws_sdk_sqs::Client::from_conf(sqs_config);
    let queue = SqsEventQueue::from_client(client, "http://127.0.0.1:9/123456789012/nowhere");
    let err = queue.enqueue(&[event(1), event(2)]).await.unwrap_err();
    assert!(matches!(err, QueueError::Unavailable(_)), "{err:?}");
}

#[tokio::test]
#[ignore = "needs moto: run scripts/test"]
async fn a_large_post_keeps_at_most_eight_sends_in_flight() {
    // Hardening item 16: a 10,000-change post opened ~1,000 SendMessageBatch calls at once.
    let moto = moto_endpoint().expect("moto");
    let proxy =
        leadpipe_lambda_harness::TcpProxy::start(moto.trim_start_matches("http://").to_owned())
            .await
            .unwrap();
    let config = leadpipe_aws::sdk_config().await;
    let (client, url) = moto_queue().await;
    let through_proxy = aws_sdk_sqs::Client::from_conf(
        aws_sdk_sqs::config::Builder::from(&config)
            .endpoint_url(&proxy.url)
            .build(),
    );
    let queue = SqsEventQueue::from_client(through_proxy, &url);
    let events: Vec<_> = (0..300).map(event).collect();
    queue.enqueue(&events).await.expect("enqueue");
    // Connections, not requests, are what the proxy sees: a connection the server is still
    // closing counts a moment longer, so allow twice the bound. Unbounded, 30 calls go out
    // together and open ~30.
    let max = proxy.state.max_active();
    assert_eq!(leadpipe_aws::sqs::MAX_CONCURRENT_SENDS, 8);
    let bound = 16;
    assert!((1..=bound).contains(&max), "{max} connections at once");
    assert_eq!(drain(&client, &url).await.len(), 300, "every event sent");
}
