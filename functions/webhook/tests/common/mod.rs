#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use leadpipe_lambda_harness::{moto_endpoint, unique_name};

pub const APP_SECRET: &str = "test-app-secret-7f3a9c";
pub const VERIFY_TOKEN: &str = "test-verify-token-19bd";

/// A real-format post (string ids) with two entries, three leadgen changes and one other.
pub const POST: &str = r#"{"object":"page","entry":[{"id":"104857600000001","time":1764390001,"changes":[{"field":"leadgen","value":{"leadgen_id":"1900000000000001","page_id":"104857600000001","form_id":"555000111222333","adgroup_id":"238000111222333","ad_id":"238000111222334","created_time":1764390000}},{"field":"feed","value":{"item":"status"}}]},{"id":"104857600000002","time":1764390002,"changes":[{"field":"leadgen","value":{"leadgen_id":"1900000000000002","page_id":"104857600000002","form_id":"555000111222334","created_time":1764390001}},{"field":"leadgen","value":{"leadgen_id":1900000000000003,"page_id":104857600000002,"form_id":555000111222334,"created_time":1764390002}}]}]}"#;

/// The three messages POST must leave on the queue, without their `received_at`.
pub const EXPECTED_PREFIXES: [&str; 3] = [
    r#"{"leadgen_id":"1900000000000001","page_id":"104857600000001","form_id":"555000111222333","ad_id":"238000111222334","adgroup_id":"238000111222333","created_time":1764390000,"received_at":""#,
    r#"{"leadgen_id":"1900000000000002","page_id":"104857600000002","form_id":"555000111222334","created_time":1764390001,"received_at":""#,
    r#"{"leadgen_id":"1900000000000003","page_id":"104857600000002","form_id":"555000111222334","created_time":1764390002,"received_at":""#,
];

pub fn sign(body: &[u8]) -> String {
    leadpipe_core::signature::sign(APP_SECRET.as_bytes(), body).unwrap()
}

pub async fn moto_queue() -> (aws_sdk_sqs::Client, String) {
    moto_endpoint().expect("moto");
    let config = leadpipe_aws::sdk_config().await;
    let client = aws_sdk_sqs::Client::new(&config);
    let url = client
        .create_queue()
        .queue_name(unique_name("webhook-test"))
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    (client, url)
}

pub async fn drain(client: &aws_sdk_sqs::Client, url: &str) -> Vec<String> {
    let mut bodies = Vec::new();
    loop {
        let out = client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .send()
            .await
            .unwrap();
        if out.messages().is_empty() {
            bodies.sort();
            return bodies;
        }
        for m in out.messages() {
            bodies.push(m.body().unwrap().to_owned());
            client
                .delete_message()
                .queue_url(url)
                .receipt_handle(m.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
        }
    }
}

/// Asserts the queue holds exactly POST's three messages, byte for byte, with a
/// `received_at` that is RFC 3339 UTC.
pub fn assert_contract_messages(bodies: &[String]) {
    assert_eq!(bodies.len(), 3, "{bodies:#?}");
    for (body, prefix) in bodies.iter().zip(EXPECTED_PREFIXES) {
        let rest = body
            .strip_prefix(prefix)
            .unwrap_or_else(|| panic!("{body} does not start with {prefix}"));
        let received_at = rest.strip_suffix("\"}").expect("ends with received_at");
        let parsed = time::OffsetDateTime::parse(
            received_at,
            &time::format_description::well_known::Rfc3339,
        )
        .expect("received_at is RFC 3339");
        assert_eq!(parsed.offset(), time::UtcOffset::UTC);
        assert!(received_at.ends_with('Z'), "{received_at}");
    }
}
